//! Hot reload of rule files against real sockets, real files and the real binary: edits under
//! steady load, rename-writes, ConfigMap symlink swaps, refused edits, SIGHUP and the control
//! API, the last good copy at start, and the route ↔ rule file warnings.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use haltgate::app::{App, StartError};
use haltgate::body;
use haltgate::config::{Config, ConfigSpec, Overrides, RulesReloadSpec};
use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use support::*;

const SESSION: &str = "s-reload-1";

/// One `stale_session` rule matching `{"error": MARKER}`: a match forwards the answer with
/// `x-haltgate-action: reset`, so a test sees which rules are live without closing anything.
fn rule(id: &str, marker: &str, enabled: bool) -> String {
    format!(
        r#"
[[rule]]
id = "{id}"
class = "stale_session"
description = "Test rule."
enabled = {enabled}
[rule.when]
all = [{{ source = "status", equals = 200 }}, {{ source = "json", path = "error", equals = "{marker}" }}]
"#
    )
}

fn rule_file(rules: &[String]) -> String {
    format!("schema = 2\n{}", rules.concat())
}

fn edits(marker: &str) -> String {
    rule_file(&[rule("edits.marker", marker, true)])
}

/// Answers 200 `{"ok": false, "error": E}` for `?e=E`; `&pad=N` adds N bytes.
fn echo_upstream() -> Handler {
    handler(|seen: Seen| async move {
        let query = seen.uri.query().unwrap_or("");
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .unwrap_or("")
                .to_owned()
        };
        let pad = "x".repeat(param("pad").parse().unwrap_or(0));
        json(200, json!({"ok": false, "error": param("e"), "pad": pad}))
    })
}

fn rules_dir(files: &[(&str, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn flags(rules: &Path, routes: &[(&str, String)]) -> Overrides {
    Overrides {
        rules: Some(rules.to_owned()),
        ..proxy_flags(routes)
    }
}

/// Reloads only when asked (API or SIGHUP), so a test decides when.
fn manual_reload() -> ConfigSpec {
    ConfigSpec {
        rules_reload: RulesReloadSpec {
            watch: Some(false),
            poll_interval: Some("0".into()),
            last_good_dir: None,
        },
        ..ConfigSpec::default()
    }
}

/// Watch only: what the watch alone achieves.
fn watch_only() -> ConfigSpec {
    ConfigSpec {
        rules_reload: RulesReloadSpec {
            watch: Some(true),
            poll_interval: Some("0".into()),
            last_good_dir: None,
        },
        ..ConfigSpec::default()
    }
}

/// Whether the rule matching `marker` on route `route` is live: its answer says `reset`.
async fn live(agent: std::net::SocketAddr, route: &str, marker: &str, pad: usize) -> bool {
    let request = Request::get(format!("http://{agent}/{route}/x?e={marker}&pad={pad}"))
        .header("x-haltgate-session", SESSION)
        .body(body::empty())
        .unwrap();
    let (status, headers, _) = send(request).await;
    assert_eq!(status, 200);
    headers
        .get("x-haltgate-action")
        .is_some_and(|value| value == "reset")
}

async fn reload(app: &App) -> (u16, Value) {
    control(app, "POST", "/v1/rules/reload", None).await
}

async fn rules_status(app: &App) -> Value {
    let (status, body) = control(app, "GET", "/v1/rules", None).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn file_status<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|file| file["file"].as_str().unwrap().ends_with(name))
        .unwrap_or_else(|| panic!("no status for {name}: {status}"))
}

/// One keep-alive connection sending requests back to back until `stop`; (answered, failed).
/// A dropped connection fails every request after it, so it cannot go unnoticed.
async fn steady_load(
    agent: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    marker: Arc<AtomicUsize>,
) -> (usize, usize) {
    let stream = tokio::net::TcpStream::connect(agent).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let (mut answered, mut failed) = (0, 0);
    while !stop.load(Ordering::Relaxed) {
        let n = marker.load(Ordering::Relaxed);
        // Half the requests match the rule in force, half match nothing.
        let e = if answered % 2 == 0 {
            format!("e{n}")
        } else {
            "load".into()
        };
        let request = Request::get(format!("/edits/x?e={e}"))
            .header("host", agent.to_string())
            .body(body::empty())
            .unwrap();
        let outcome = async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let bytes = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, bytes))
        }
        .await;
        match outcome {
            Ok((status, bytes)) if status == 200 && bytes.starts_with(b"{") => answered += 1,
            Ok(_) => failed += 1,
            Err(_) => {
                failed += 1;
                break;
            }
        }
    }
    (answered, failed)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_edits_under_steady_load_fail_no_request_and_go_live_quickly() {
    let upstream = start_upstream(echo_upstream()).await;
    let dir = rules_dir(&[("edits.toml", edits("e0"))]);
    let proxy = start_proxy_with(
        watch_only(),
        flags(dir.path(), &[("edits", upstream.http_url())]),
        tempfile::tempdir().unwrap(),
    )
    .await;
    let agent = proxy.agent_addr();
    assert!(live(agent, "edits", "e0", 0).await);

    let stop = Arc::new(AtomicBool::new(false));
    let marker = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..4)
        .map(|_| tokio::spawn(steady_load(agent, stop.clone(), marker.clone())))
        .collect();
    let mut latencies = Vec::new();
    for edit in 1..=50 {
        let marker_text = format!("e{edit}");
        // An editor's in-place save: truncate, then write.
        std::fs::write(dir.path().join("edits.toml"), edits(&marker_text)).unwrap();
        let written = Instant::now();
        while !live(agent, "edits", &marker_text, 0).await {
            assert!(
                written.elapsed() < Duration::from_secs(10),
                "edit {edit} not live within 10 s"
            );
        }
        latencies.push(written.elapsed());
        marker.store(edit, Ordering::Relaxed);
        assert!(!live(agent, "edits", &format!("e{}", edit - 1), 0).await);
    }
    stop.store(true, Ordering::Relaxed);
    let (mut answered, mut failed) = (0, 0);
    for task in load {
        let (a, f) = task.await.unwrap();
        answered += a;
        failed += f;
    }
    latencies.sort();
    println!(
        "edit-to-live over {} edits: p50 {:?}, p99 {:?}, max {:?}; {answered} requests under load",
        latencies.len(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().unwrap()
    );
    assert_eq!(
        failed, 0,
        "requests failed or connections dropped under reloads"
    );
    assert!(answered > 0);
    let status = rules_status(&proxy).await;
    assert_eq!(file_status(&status, "edits.toml")["state"], "live");
}

#[tokio::test]
async fn rename_writes_and_configmap_symlink_swaps_are_picked_up() {
    let upstream = start_upstream(echo_upstream()).await;
    // A ConfigMap volume: edits.toml -> ..data/edits.toml, ..data -> ..v1.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("..v1")).unwrap();
    std::fs::write(root.join("..v1/edits.toml"), edits("e1")).unwrap();
    std::fs::write(
        root.join("..v1/other.toml"),
        rule_file(&[rule("other.marker", "o1", true)]),
    )
    .unwrap();
    std::os::unix::fs::symlink("..v1", root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/edits.toml", root.join("edits.toml")).unwrap();
    // A plain file beside the links, edited by rename.
    std::fs::write(
        root.join("plain.toml"),
        rule_file(&[rule("plain.marker", "p1", true)]),
    )
    .unwrap();
    let routes = [
        ("edits", upstream.http_url()),
        ("plain", upstream.http_url()),
    ];
    let proxy = start_proxy_with(
        watch_only(),
        flags(root, &routes),
        tempfile::tempdir().unwrap(),
    )
    .await;
    let agent = proxy.agent_addr();
    assert!(live(agent, "edits", "e1", 0).await);
    assert!(live(agent, "plain", "p1", 0).await);

    // The kubelet's update: a new timestamped directory, `..data` swapped by rename, the old
    // directory removed.
    std::fs::create_dir(root.join("..v2")).unwrap();
    std::fs::write(root.join("..v2/edits.toml"), edits("e2")).unwrap();
    std::os::unix::fs::symlink("..v2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join("..v1")).unwrap();
    eventually(
        "the symlink swap is live",
        Duration::from_secs(5),
        async || live(agent, "edits", "e2", 0).await,
    )
    .await;
    assert!(!live(agent, "edits", "e1", 0).await);

    // An editor's save: a new file renamed over the old one.
    let temporary = root.join(".plain.toml.swp");
    std::fs::write(&temporary, rule_file(&[rule("plain.marker", "p2", true)])).unwrap();
    std::fs::rename(&temporary, root.join("plain.toml")).unwrap();
    eventually(
        "the rename-write is live",
        Duration::from_secs(5),
        async || live(agent, "plain", "p2", 0).await,
    )
    .await;
    // And a second save by rename, which a watch on the file itself would miss.
    std::fs::write(&temporary, rule_file(&[rule("plain.marker", "p3", true)])).unwrap();
    std::fs::rename(&temporary, root.join("plain.toml")).unwrap();
    eventually(
        "the second rename-write is live",
        Duration::from_secs(5),
        async || live(agent, "plain", "p3", 0).await,
    )
    .await;
}

#[tokio::test]
async fn the_hash_poll_alone_picks_up_an_edit() {
    let upstream = start_upstream(echo_upstream()).await;
    let dir = rules_dir(&[("edits.toml", edits("e1"))]);
    let poll_only = ConfigSpec {
        rules_reload: RulesReloadSpec {
            watch: Some(false),
            poll_interval: Some("100ms".into()),
            last_good_dir: None,
        },
        ..ConfigSpec::default()
    };
    let proxy = start_proxy_with(
        poll_only,
        flags(dir.path(), &[("edits", upstream.http_url())]),
        tempfile::tempdir().unwrap(),
    )
    .await;
    std::fs::write(dir.path().join("edits.toml"), edits("e2")).unwrap();
    eventually("the poll reloads", Duration::from_secs(5), async || {
        live(proxy.agent_addr(), "edits", "e2", 0).await
    })
    .await;
    assert_eq!(rules_status(&proxy).await["last_reload"]["trigger"], "poll");
}

#[tokio::test]
async fn a_broken_edit_keeps_its_old_version_names_its_line_and_lets_other_files_go_live() {
    let upstream = start_upstream(echo_upstream()).await;
    let dir = rules_dir(&[
        ("edits.toml", edits("e1")),
        ("other.toml", rule_file(&[rule("other.marker", "o1", true)])),
    ]);
    let routes = [
        ("edits", upstream.http_url()),
        ("other", upstream.http_url()),
    ];
    let proxy = start_proxy_with(
        manual_reload(),
        flags(dir.path(), &routes),
        tempfile::tempdir().unwrap(),
    )
    .await;
    let agent = proxy.agent_addr();
    let version = rules_status(&proxy).await["version"].clone();

    // Line 9 lost its value.
    let broken = edits("e2").replace(r#"equals = "e2" "#, "equals = ");
    assert_eq!(
        broken.lines().nth(8).unwrap(),
        r#"all = [{ source = "status", equals = 200 }, { source = "json", path = "error", equals = }]"#
    );
    std::fs::write(dir.path().join("edits.toml"), broken).unwrap();
    std::fs::write(
        dir.path().join("other.toml"),
        rule_file(&[rule("other.marker", "o2", true)]),
    )
    .unwrap();
    let (status, report) = reload(&proxy).await;
    assert_eq!(status, 422, "{report}");
    assert_eq!(report["outcome"], "partial");
    assert_ne!(report["version"], version);
    assert!(
        report["changed"][0]
            .as_str()
            .unwrap()
            .ends_with("other.toml"),
        "{report}"
    );
    let error = &report["errors"][0];
    assert!(
        error["file"].as_str().unwrap().ends_with("edits.toml"),
        "{report}"
    );
    assert_eq!(error["line"], 9, "{report}");
    assert!(
        error["location"]
            .as_str()
            .unwrap()
            .contains("edits.toml:9:"),
        "{report}"
    );
    assert!(live(agent, "edits", "e1", 0).await, "the old version stays");
    assert!(!live(agent, "edits", "e2", 0).await);
    assert!(
        live(agent, "other", "o2", 0).await,
        "the other file went live"
    );
    let status = rules_status(&proxy).await;
    assert_eq!(file_status(&status, "edits.toml")["state"], "kept");
    assert_eq!(file_status(&status, "other.toml")["state"], "live");
    assert_eq!(status["last_reload"]["outcome"], "partial");
    assert_eq!(status["last_reload"]["errors"][0]["line"], 9);

    // A sound file whose recorded case no longer passes is refused too.
    let cases = dir.path().join("tests/edits");
    std::fs::create_dir_all(&cases).unwrap();
    std::fs::write(
        cases.join("marker.json"),
        json!({
            "provider": "edits",
            "request": {"method": "GET", "url": "https://edits.example/x"},
            "response": {"status": 200, "headers": {"content-type": "application/json"},
                         "body": "{\"ok\":false,\"error\":\"e1\"}"},
            "expect": {"class": "stale_session", "rule": "edits.marker"}
        })
        .to_string(),
    )
    .unwrap();
    std::fs::write(dir.path().join("edits.toml"), edits("e3")).unwrap();
    let (status, report) = reload(&proxy).await;
    assert_eq!(status, 422, "{report}");
    assert_eq!(report["outcome"], "rejected");
    let message = report["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("case failed") && message.contains("marker.json"),
        "{report}"
    );
    assert!(live(agent, "edits", "e1", 0).await);

    // Fixed: it goes live.
    std::fs::write(
        dir.path().join("edits.toml"),
        edits("e1").replace("Test rule.", "Fixed."),
    )
    .unwrap();
    let (status, report) = reload(&proxy).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["outcome"], "applied");
    assert_eq!(
        file_status(&rules_status(&proxy).await, "edits.toml")["state"],
        "live"
    );
}

#[tokio::test]
async fn an_emptied_file_or_a_vanished_rule_is_refused_an_explicit_removal_is_not() {
    let upstream = start_upstream(echo_upstream()).await;
    let both = |second_enabled: bool| {
        rule_file(&[
            rule("edits.marker", "e1", true),
            rule("edits.second", "e9", second_enabled),
        ])
    };
    let dir = rules_dir(&[
        ("edits.toml", both(true)),
        ("other.toml", rule_file(&[rule("other.marker", "o1", true)])),
    ]);
    let routes = [
        ("edits", upstream.http_url()),
        ("other", upstream.http_url()),
    ];
    let proxy = start_proxy_with(
        manual_reload(),
        flags(dir.path(), &routes),
        tempfile::tempdir().unwrap(),
    )
    .await;
    let agent = proxy.agent_addr();
    let path = dir.path().join("edits.toml");

    std::fs::write(&path, "").unwrap();
    let (status, report) = reload(&proxy).await;
    assert_eq!(status, 422, "{report}");
    assert_eq!(report["outcome"], "rejected");
    assert!(
        report["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("empty"),
        "{report}"
    );
    assert!(live(agent, "edits", "e1", 0).await);
    assert!(live(agent, "edits", "e9", 0).await);

    // A write cut after the first rule.
    std::fs::write(&path, edits("e1")).unwrap();
    let (status, report) = reload(&proxy).await;
    assert_eq!(status, 422, "{report}");
    assert!(
        report["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("`edits.second` would disappear"),
        "{report}"
    );
    assert!(live(agent, "edits", "e9", 0).await);

    // Disabled first, then removed: both go live.
    std::fs::write(&path, both(false)).unwrap();
    let (status, report) = reload(&proxy).await;
    assert_eq!(
        (status, &report["outcome"]),
        (200, &json!("applied")),
        "{report}"
    );
    assert!(!live(agent, "edits", "e9", 0).await);
    std::fs::write(&path, edits("e1")).unwrap();
    let (status, report) = reload(&proxy).await;
    assert_eq!(
        (status, &report["outcome"]),
        (200, &json!("applied")),
        "{report}"
    );

    // Deleting a file is explicit; deleting every file is not taken.
    std::fs::remove_file(dir.path().join("other.toml")).unwrap();
    let (status, report) = reload(&proxy).await;
    assert_eq!(
        (status, &report["outcome"]),
        (200, &json!("applied")),
        "{report}"
    );
    assert!(!live(agent, "other", "o1", 0).await);
    std::fs::remove_file(&path).unwrap();
    let (status, report) = reload(&proxy).await;
    assert_eq!(status, 422, "{report}");
    assert!(
        live(agent, "edits", "e1", 0).await,
        "the last file's rules stay"
    );

    // Nothing changed: unchanged, and the version is the same.
    std::fs::write(&path, edits("e1")).unwrap();
    let (status, report) = reload(&proxy).await;
    assert_eq!(
        (status, &report["outcome"]),
        (200, &json!("unchanged")),
        "{report}"
    );
    assert_eq!(report["version"], report["previous_version"]);
}

#[tokio::test]
async fn max_body_bytes_survives_a_reload() {
    let upstream = start_upstream(echo_upstream()).await;
    let dir = rules_dir(&[("edits.toml", edits("e1"))]);
    let proxy = start_proxy_with(
        manual_reload(),
        Overrides {
            max_body_bytes: Some(256),
            ..flags(dir.path(), &[("edits", upstream.http_url())])
        },
        tempfile::tempdir().unwrap(),
    )
    .await;
    let agent = proxy.agent_addr();
    for round in 0..2 {
        let uninspected = proxy.stats().uninspected.get();
        assert!(live(agent, "edits", "e1", 10).await, "round {round}");
        assert!(
            !live(agent, "edits", "e1", 1000).await,
            "round {round}: a body over the limit is not inspected"
        );
        assert_eq!(proxy.stats().uninspected.get(), uninspected + 1);
        std::fs::write(
            dir.path().join("edits.toml"),
            edits("e1").replace("Test rule.", &format!("Edit {round}.")),
        )
        .unwrap();
        let (status, report) = reload(&proxy).await;
        assert_eq!(
            (status, &report["outcome"]),
            (200, &json!("applied")),
            "{report}"
        );
    }
}

#[tokio::test]
async fn a_start_with_a_broken_file_uses_the_last_good_copy_and_says_so() {
    let upstream = start_upstream(echo_upstream()).await;
    let dir = rules_dir(&[("edits.toml", edits("e1"))]);
    let state = tempfile::tempdir().unwrap();
    let routes = [("edits", upstream.http_url())];
    let spec = || manual_reload();
    let proxy = start_proxy_with(spec(), flags(dir.path(), &routes), state).await;
    let state = proxy.stop().await;
    let kept = state.path().join("haltgate-rules-last-good/edits.toml");
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), edits("e1"));

    std::fs::write(dir.path().join("edits.toml"), "schema = 2\n[[rule]\n").unwrap();
    let proxy = start_proxy_with(spec(), flags(dir.path(), &routes), state).await;
    assert!(live(proxy.agent_addr(), "edits", "e1", 0).await);
    let status = rules_status(&proxy).await;
    let file = file_status(&status, "edits.toml");
    assert_eq!(file["state"], "kept", "{status}");
    assert_eq!(file["errors"][0]["line"], 2, "{status}");
    assert_eq!(status["last_reload"]["trigger"], "start");
    assert_eq!(status["last_reload"]["outcome"], "partial");
    let state = proxy.stop().await;

    // A broken file with no last good copy refuses the start.
    std::fs::write(dir.path().join("fresh.toml"), "schema = 2\n[[rule]\n").unwrap();
    let mut flags = flags(dir.path(), &routes);
    flags.store = Some(format!(
        "redb:{}",
        state.path().join("haltgate.redb").display()
    ));
    flags.outbox = Some(state.path().join("outbox.redb"));
    flags.local_copy = Some(state.path().join("local.redb"));
    let config = Config::resolve(spec(), flags, "test").unwrap();
    match App::start(config).await {
        Err(StartError::Rules { refused, .. }) => {
            assert!(refused.to_string().contains("fresh.toml:2"), "{refused}")
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("started with a broken file and no last good copy"),
    }
}

#[tokio::test]
async fn routes_without_rules_and_rule_files_without_routes_warn_and_strict_refuses() {
    let upstream = start_upstream(echo_upstream()).await;
    let dir = rules_dir(&[
        ("edits.toml", edits("e1")),
        ("jira.toml", rule_file(&[rule("jira.marker", "j1", true)])),
    ]);
    let routes = [
        ("edits", upstream.http_url()),
        ("gitlab", upstream.http_url()),
    ];
    let proxy = start_proxy_with(
        manual_reload(),
        flags(dir.path(), &routes),
        tempfile::tempdir().unwrap(),
    )
    .await;
    let status = rules_status(&proxy).await;
    let warnings = status["warnings"].to_string();
    assert!(warnings.contains("route `gitlab`"), "{status}");
    assert!(
        warnings.contains("jira.toml is reached by no route"),
        "{status}"
    );
    assert!(!warnings.contains("route `edits`"), "{status}");
    let gitlab = status["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "gitlab")
        .unwrap();
    assert_eq!(gitlab["has_rules"], false);
    let rules: Vec<&Value> = status["rules"].as_array().unwrap().iter().collect();
    let marker = rules.iter().find(|r| r["id"] == "edits.marker").unwrap();
    assert_eq!(marker["provider"], "edits");
    assert_eq!(marker["class"], "stale_session");
    assert_eq!(marker["mode"], "enforce");
    assert!(marker["file"].as_str().unwrap().ends_with("edits.toml"));
    drop(proxy);

    let state = tempfile::tempdir().unwrap();
    let mut strict = flags(dir.path(), &routes);
    strict.strict = true;
    strict.store = Some(format!(
        "redb:{}",
        state.path().join("haltgate.redb").display()
    ));
    strict.outbox = Some(state.path().join("outbox.redb"));
    strict.local_copy = Some(state.path().join("local.redb"));
    let config = Config::resolve(manual_reload(), strict, "test").unwrap();
    match App::start(config).await {
        Err(StartError::Strict(warnings)) => assert_eq!(warnings.len(), 2, "{warnings:?}"),
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("--strict started with mismatched routes and rule files"),
    }
}

// === The binary: SIGHUP, the control API with a token, `rules diff` ===

const CONTROL_TOKEN: &str = "ctl-REDACTED-reload-token-00001";

/// The binary with a config that leaves reloads to SIGHUP and the API.
fn start_binary(state: &Path, rules: &Path, upstream: &Upstream, extra: &[&str]) -> BinaryProxy {
    std::fs::write(
        state.join("haltgate.toml"),
        "[rules_reload]\nwatch = false\npoll_interval = \"0\"\n",
    )
    .unwrap();
    let mut command = BinaryProxy::command(state);
    command
        .args(["--log-format", "json", "serve"])
        .args(["--listen", "127.0.0.1:0", "--control-listen", "127.0.0.1:0"])
        .arg("--rules")
        .arg(rules)
        .arg("--route")
        .arg(format!("edits={}", upstream.http_url()))
        .args(extra)
        .env("HALTGATE_CONTROL_TOKEN", CONTROL_TOKEN);
    BinaryProxy::spawn(command)
}

async fn post_reload(control: std::net::SocketAddr, token: Option<&str>) -> (u16, Value) {
    let mut request = Request::post(format!("http://{control}/v1/rules/reload"))
        .header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let (status, _, body) = send(request.body(body::empty()).unwrap()).await;
    (status, body)
}

#[tokio::test]
async fn sighup_and_the_control_api_reload_the_running_binary() {
    let upstream = start_upstream(echo_upstream()).await;
    let rules = rules_dir(&[("edits.toml", edits("e1"))]);
    let state = tempfile::tempdir().unwrap();
    let server = start_binary(state.path(), rules.path(), &upstream, &[]);
    let (agent, control) = server.addresses().await;
    eventually("ready", Duration::from_secs(10), async || {
        client()
            .request(get(&format!("http://{control}/readyz")))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(live(agent, "edits", "e1", 0).await);

    std::fs::write(rules.path().join("edits.toml"), edits("e2")).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        live(agent, "edits", "e1", 0).await,
        "no watch, no poll: nothing yet"
    );
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    eventually("SIGHUP reloads", Duration::from_secs(5), async || {
        live(agent, "edits", "e2", 0).await
    })
    .await;

    std::fs::write(rules.path().join("edits.toml"), edits("e3")).unwrap();
    let (status, body) = post_reload(control, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(live(agent, "edits", "e2", 0).await);
    let (status, report) = post_reload(control, Some(CONTROL_TOKEN)).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["outcome"], "applied");
    assert_eq!(report["trigger"], "api");
    // The answer comes once the new rules are in force.
    assert!(live(agent, "edits", "e3", 0).await);

    let metrics = client()
        .request(
            Request::get(format!("http://{control}/metrics"))
                .header("authorization", format!("Bearer {CONTROL_TOKEN}"))
                .body(body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let text = String::from_utf8(read_body(metrics).await.to_vec()).unwrap();
    assert!(
        text.contains("haltgate_rules_reloads_total{outcome=\"applied\"} 3"),
        "{text}"
    );
    let version = report["version"].as_str().unwrap();
    assert!(
        text.contains(&format!(
            "haltgate_rules_version_info{{version=\"{version}\"}} 1"
        )),
        "{text}"
    );
    assert!(
        text.contains("haltgate_rules_last_reload_timestamp_seconds"),
        "{text}"
    );
}

#[tokio::test]
async fn strict_refuses_to_start_the_binary_on_a_route_without_rules() {
    let upstream = start_upstream(echo_upstream()).await;
    let rules = rules_dir(&[("other.toml", rule_file(&[rule("other.marker", "o1", true)]))]);
    let state = tempfile::tempdir().unwrap();
    let mut server = start_binary(state.path(), rules.path(), &upstream, &["--strict"]);
    let status = within(Duration::from_secs(20), async {
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(!status.success());
    let stderr = server.log();
    assert!(stderr.contains("route `edits`"), "{stderr}");
    assert!(
        stderr.contains("other.toml is reached by no route"),
        "{stderr}"
    );
}

fn corpus_line(id: u32, marker: &str) -> String {
    json!({
        "id": id,
        "provider": "edits",
        "request": {"method": "GET", "url": "https://edits.example/x"},
        "response": {"status": 200, "headers": {"content-type": "application/json"},
                     "body": json!({"ok": false, "error": marker}).to_string()}
    })
    .to_string()
}

fn rules_diff(old: &Path, new: &Path, corpus: &Path) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_haltgate"))
        .args(["rules", "diff"])
        .args([old, new])
        .arg("--corpus")
        .arg(corpus)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
    )
}

#[test]
fn rules_diff_shows_the_recorded_responses_that_change_class() {
    let old = rules_dir(&[("edits.toml", edits("e1"))]);
    let new = rules_dir(&[("edits.toml", edits("e2"))]);
    let corpus_dir = tempfile::tempdir().unwrap();
    let corpus: PathBuf = corpus_dir.path().join("corpus.jsonl");
    let lines = [
        corpus_line(1, "e1"),
        corpus_line(2, "e2"),
        corpus_line(3, "e3"),
    ];
    std::fs::write(
        &corpus,
        format!("{}\n\n{}\n{}\n", lines[0], lines[1], lines[2]),
    )
    .unwrap();

    let (ok, out) = rules_diff(old.path(), new.path(), &corpus);
    assert!(!ok, "a class change exits 1:\n{out}");
    let diffs: Vec<Value> = out
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    assert_eq!(diffs.len(), 2, "{out}");
    assert_eq!(diffs[0]["id"], 1);
    assert_eq!(diffs[0]["line"], 1);
    assert_eq!(diffs[0]["old"]["class"], "stale_session");
    assert_eq!(diffs[0]["new"]["class"], "pass");
    assert_eq!(diffs[1]["id"], 2);
    assert_eq!(diffs[1]["line"], 3, "blank lines keep their numbers");
    assert_eq!(diffs[1]["new"]["rule"], "edits.marker");
    assert!(
        out.contains("2 of 3 recorded responses change class"),
        "{out}"
    );

    let (ok, out) = rules_diff(old.path(), old.path(), &corpus);
    assert!(ok, "{out}");
    assert!(
        out.contains("0 of 3 recorded responses change class"),
        "{out}"
    );
}
