//! Operating haltgate: metrics, readiness checks, wakeup leases, observe, the event feed and
//! the operator CLI, against real sockets, redb files and `redis-server` processes.

mod support;

use std::collections::HashMap;

use haltgate::body;
use http::Request;
use serde_json::{json, Value};
use support::*;

/// A shadow rule next to the shipped Slack rules: it watches successful posts.
const SHADOW_RULE: &str = r#"
[[rule]]
id = "slack.watch_ok"
class = "lost_access"
mode = "shadow"
description = "Watches successful posts (test only)."
[rule.when]
all = [{ source = "json", path = "ok", equals = true }]
"#;

/// The shipped rules plus [`SHADOW_RULE`], in a directory of their own.
fn rules_with_shadow() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/rules");
    for entry in std::fs::read_dir(shipped).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let mut text = std::fs::read_to_string(&path).unwrap();
            if path.file_stem().unwrap() == "slack" {
                text.push_str(SHADOW_RULE);
            }
            std::fs::write(dir.path().join(path.file_name().unwrap()), text).unwrap();
        }
    }
    dir
}

fn post_message(proxy: &TestProxy, session: &str, mode: &str) -> Request<body::ProxyBody> {
    Request::post(format!(
        "http://{}/slack/api/chat.postMessage?mode={mode}",
        proxy.agent_addr()
    ))
    .header("content-type", "application/json; charset=utf-8")
    .header("authorization", "Bearer xoxb-REDACTED")
    .header("x-haltgate-session", session)
    .body(body::full(
        json!({"channel": CHANNEL, "text": "hello"}).to_string(),
    ))
    .unwrap()
}

/// `/metrics` parsed with a Prometheus text parser.
struct Scrape(prometheus_parse::Scrape);

impl Scrape {
    async fn read(proxy: &TestProxy) -> Scrape {
        let response = client()
            .request(get(&format!("http://{}/metrics", proxy.control_addr())))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(content_type.contains("openmetrics-text"), "{content_type}");
        let text = String::from_utf8(read_body(response).await.to_vec()).unwrap();
        let lines = text.lines().map(|line| Ok(line.to_owned()));
        Scrape(prometheus_parse::Scrape::parse(lines).expect("valid exposition"))
    }

    /// The value of the counter or gauge `name` whose labels include `labels`; 0 when absent.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = self
            .0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                other => panic!("{name} is not a plain value: {other:?}"),
            })
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?} names several series");
        found.first().copied().unwrap_or(0.0)
    }

    /// Observations of the histogram `name` with `labels`.
    fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Histogram(buckets) => {
                    buckets.iter().map(|b| b.count).fold(0.0, f64::max)
                }
                other => panic!("{name} is not a histogram: {other:?}"),
            })
            .sum()
    }
}

#[tokio::test]
async fn metrics_count_requests_matches_halts_and_closures_as_they_happen() {
    let upstream = start_upstream(slack_upstream()).await;
    let rules = rules_with_shadow();
    let mut flags = proxy_flags(&[("slack", upstream.http_url())]);
    flags.rules = Some(rules.path().to_owned());
    let proxy = start_proxy(flags).await;
    open_session(&proxy, "m1").await;

    let before = Scrape::read(&proxy).await;
    assert_eq!(before.value("haltgate_requests_total", &[]), 0.0);
    assert_eq!(before.value("haltgate_closures_total", &[]), 0.0);
    let shipped = haltgate::rules::RuleSet::load_dir(rules.path()).unwrap();
    assert_eq!(
        before.value("haltgate_rules_loaded", &[]),
        shipped.rule_count() as f64
    );

    // A successful post (the shadow rule sees it), a kick (closes and halts), a call of the
    // closed session (halted before the upstream) and a request for no route.
    let (status, _, _) = send(post_message(&proxy, "m1", "ok")).await;
    assert_eq!(status, 200);
    let (status, _, _) = send(post_message(&proxy, "m1", "kick")).await;
    assert_eq!(status, SLACK_HALT);
    let (status, _, _) = send(post_message(&proxy, "m1", "ok")).await;
    assert_eq!(status, SLACK_HALT);
    let (status, _, _) = send(get(&format!("http://{}/nowhere/x", proxy.agent_addr()))).await;
    assert_eq!(status, 404);
    assert_eq!(upstream.hits(), 2);

    let after = Scrape::read(&proxy).await;
    let requests = |route, class| {
        after.value(
            "haltgate_requests_total",
            &[("route", route), ("status_class", class)],
        )
    };
    // Slack's halts are its own `ok: false` envelope, a 200.
    assert_eq!(requests("slack", "2xx"), 3.0);
    assert_eq!(requests("slack", "4xx"), 0.0);
    assert_eq!(requests("-", "4xx"), 1.0);
    assert_eq!(
        after.histogram_count("haltgate_upstream_latency_seconds", &[("route", "slack")]),
        2.0
    );
    assert_eq!(
        after.value(
            "haltgate_rule_matches_total",
            &[
                ("rule", "slack.watch_ok"),
                ("class", "lost_access"),
                ("mode", "shadow")
            ]
        ),
        1.0
    );
    assert_eq!(
        after.value(
            "haltgate_rule_matches_total",
            &[
                ("rule", "slack.not_in_channel"),
                ("class", "lost_access"),
                ("mode", "enforce")
            ]
        ),
        1.0
    );
    assert_eq!(
        after.value("haltgate_halts_total", &[("class", "lost_access")]),
        1.0
    );
    assert_eq!(after.value("haltgate_short_circuits_total", &[]), 1.0);
    assert_eq!(after.value("haltgate_bodies_inspected_total", &[]), 2.0);
    assert_eq!(
        after.value(
            "haltgate_bodies_uninspected_total",
            &[("reason", "too_large")]
        ),
        0.0
    );
    assert_eq!(
        after.value("haltgate_closures_total", &[("class", "lost_access")]),
        1.0
    );
    assert_eq!(after.value("haltgate_closed_sessions", &[]), 1.0);
    assert_eq!(after.value("haltgate_store_errors_total", &[]), 0.0);
    assert_eq!(after.value("haltgate_outbox_depth", &[]), 0.0);

    // A manual close counts as a closure of its class.
    let (status, _) = control(
        &proxy,
        "POST",
        "/v1/sessions/m2/close",
        Some(json!({"reason": "operator"})),
    )
    .await;
    assert_eq!(status, 200);
    let last = Scrape::read(&proxy).await;
    assert_eq!(
        last.value("haltgate_closures_total", &[("class", "manual")]),
        1.0
    );
}

#[tokio::test]
async fn readyz_names_every_check() {
    let upstream = start_upstream(slack_upstream()).await;
    let proxy = start_proxy(proxy_flags(&[("slack", upstream.http_url())])).await;
    let (status, body) = control(&proxy, "GET", "/readyz", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");
    let checks: HashMap<String, Value> = serde_json::from_value(body["checks"].clone()).unwrap();
    for check in ["serving", "closed_set_loaded", "credential_key_loaded"] {
        assert_eq!(checks[check], true, "{check}");
    }
    assert_eq!(body["failing"], json!([]));
}

#[tokio::test]
async fn readyz_names_the_failing_checks_while_the_store_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let mut flags = proxy_flags(&[]);
    flags.store = Some(format!("redis://{}", closed_port().await));
    flags.outbox = Some(dir.path().join("outbox.redb"));
    flags.local_copy = Some(dir.path().join("local.redb"));
    let config = haltgate::config::Config::resolve(Default::default(), flags, "test").unwrap();
    let app = haltgate::app::App::start(config).await.unwrap();
    let (status, body) = control(&app, "GET", "/readyz", None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["serving"], true);
    assert_eq!(
        body["failing"],
        json!(["closed_set_loaded", "credential_key_loaded"])
    );
}

// === Wakeup leases ===

async fn add_wakeup(proxy: &TestProxy, session: &str, payload: Value) -> String {
    let due = haltgate::session::unix_ms_now() - 1_000;
    let (status, body) = control(
        proxy,
        "POST",
        &format!("/v1/sessions/{session}/wakeups"),
        Some(json!({"due_ms": due, "payload": payload})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

async fn claim(proxy: &TestProxy, lease_ms: u64) -> Vec<Value> {
    let (status, body) = control(
        proxy,
        "POST",
        "/v1/wakeups/claim",
        Some(json!({"limit": 10, "lease_ms": lease_ms})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["wakeups"].as_array().unwrap().clone()
}

async fn ack(proxy: &TestProxy, session: &str, wakeup: &str) -> u16 {
    let (status, _) = control(
        proxy,
        "POST",
        &format!("/v1/wakeups/{wakeup}/ack"),
        Some(json!({ "session": session })),
    )
    .await;
    status
}

/// A leased wakeup comes back after its lease unless acknowledged, and never once its
/// session is closed.
async fn leases_deliver_at_least_once_and_never_after_a_close(proxy: &TestProxy) {
    open_session(proxy, "lease-a").await;
    open_session(proxy, "lease-b").await;
    let acked = add_wakeup(proxy, "lease-a", json!({"n": 1})).await;
    let unacked = add_wakeup(proxy, "lease-a", json!({"n": 2})).await;
    let of_closed = add_wakeup(proxy, "lease-b", json!({"n": 3})).await;

    // Long enough that the claims and acks below finish inside it on a loaded machine.
    let lease_ms = 3_000;
    let leased = claim(proxy, lease_ms).await;
    let mut ids: Vec<&str> = leased.iter().map(|w| w["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    let mut expected = vec![acked.as_str(), unacked.as_str(), of_closed.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected);
    let lease_end = leased
        .iter()
        .map(|w| w["leased_until_ms"].as_u64().unwrap())
        .max()
        .unwrap();
    // Leased wakeups are not handed out again while the lease runs.
    assert!(claim(proxy, lease_ms).await.is_empty());

    assert_eq!(ack(proxy, "lease-a", &acked).await, 200);
    assert_eq!(ack(proxy, "lease-a", &acked).await, 404);
    let (status, closed) = control(
        proxy,
        "POST",
        "/v1/sessions/lease-b/close",
        Some(json!({"reason": "done"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        closed["cancelled_wakeups"], 1,
        "a leased wakeup is cancelled too"
    );

    within(std::time::Duration::from_secs(10), async {
        while haltgate::session::unix_ms_now() <= lease_end {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let again = claim(proxy, 60_000).await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0]["id"], unacked.as_str());
    assert_eq!(again[0]["session"], "lease-a");
    assert_eq!(again[0]["payload"], json!({"n": 2}));
    assert_eq!(ack(proxy, "lease-b", &of_closed).await, 404);
    assert_eq!(ack(proxy, "lease-a", &unacked).await, 200);
    let (_, pending) = control(proxy, "GET", "/v1/sessions/lease-a/wakeups", None).await;
    assert_eq!(pending["wakeups"], json!([]));
    assert!(claim(proxy, 60_000).await.is_empty());
}

#[tokio::test]
async fn wakeup_leases_with_redb() {
    let proxy = start_proxy(proxy_flags(&[])).await;
    leases_deliver_at_least_once_and_never_after_a_close(&proxy).await;
}

#[tokio::test]
async fn wakeup_leases_with_redis() {
    let redis = support::redis_server::RedisServer::start();
    let mut flags = proxy_flags(&[]);
    flags.store = Some(redis.url());
    let proxy = start_proxy(flags).await;
    leases_deliver_at_least_once_and_never_after_a_close(&proxy).await;
}

/// On a cluster every lease script must touch one slot; the store is used directly because
/// the proxy's configuration takes standalone Redis URLs.
#[tokio::test]
async fn wakeup_leases_with_redis_cluster() {
    use haltgate::session::{open_store, AddWakeup, Class, Closure, SessionId};
    let cluster = support::redis_server::RedisCluster::start(3);
    let store = open_store(&cluster.store_url()).await.unwrap();
    let (a, b) = (
        SessionId::parse("lease-a").unwrap(),
        SessionId::parse("lease-b").unwrap(),
    );
    let mut ids = Vec::new();
    for session in [&a, &a, &b] {
        let AddWakeup::Added(wakeup) = store.add_wakeup(session, 1_000, json!({})).await.unwrap()
        else {
            panic!("session is open");
        };
        ids.push(wakeup.id);
    }
    let leased = store.lease_due(2_000, 10, 500).await.unwrap();
    assert_eq!(leased.len(), 3);
    assert!(leased.iter().all(|c| c.leased_until_ms == Some(2_500)));
    assert!(store.lease_due(2_400, 10, 500).await.unwrap().is_empty());
    assert!(store.ack_wakeup(&a, &ids[0]).await.unwrap());
    let closure = Closure::new(Class::Manual, "manual", "done");
    store.close(&b, closure).await.unwrap();
    let again = store.lease_due(2_500, 10, 500).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].wakeup.id, ids[1]);
    assert!(!store.ack_wakeup(&b, &ids[2]).await.unwrap());
}

// === Observe ===

/// One `haltgate classify` line: an Anthropic call and its answer.
fn anthropic_line(status: u16, body: Value) -> Value {
    json!({
        "id": "recorded-1",
        "provider": "anthropic",
        "request": {
            "method": "POST",
            "url": "https://api.anthropic.com/v1/messages",
            "headers": {"x-api-key": "sk-ant-REDACTED-observe", "content-type": "application/json"},
            "body": "{\"model\":\"claude\"}"
        },
        "response": {
            "status": status,
            "headers": {"content-type": "application/json"},
            "body": body.to_string()
        }
    })
}

#[tokio::test]
async fn observe_resets_a_stale_resume_and_keeps_the_session_open() {
    let proxy = start_proxy(proxy_flags(&[])).await;
    let (status, _) = control(
        &proxy,
        "PUT",
        "/v1/sessions/o1",
        Some(json!({"resume": "claude-session-1"})),
    )
    .await;
    assert_eq!(status, 200);
    add_wakeup(&proxy, "o1", json!({})).await;
    let stale = anthropic_line(
        200,
        json!({"type": "result", "subtype": "error_during_execution", "is_error": true,
               "errors": ["No conversation found with session ID: claude-session-1"]}),
    );
    let (status, observed) = control(&proxy, "POST", "/v1/sessions/o1/observe", Some(stale)).await;
    assert_eq!(status, 200, "{observed}");
    assert_eq!(
        observed,
        json!({"class": "stale_session", "rule": "anthropic.resume_session_not_found", "action": "reset_resume"})
    );
    let (_, record) = control(&proxy, "GET", "/v1/sessions/o1", None).await;
    assert_eq!(record["status"], "open");
    assert_eq!(record["resume"], Value::Null);
    let (_, wakeups) = control(&proxy, "GET", "/v1/sessions/o1/wakeups", None).await;
    assert_eq!(wakeups["wakeups"].as_array().unwrap().len(), 1);

    // An answer no rule decides changes nothing.
    let fine = anthropic_line(200, json!({"type": "message", "content": []}));
    let (status, observed) = control(&proxy, "POST", "/v1/sessions/o1/observe", Some(fine)).await;
    assert_eq!(status, 200);
    assert_eq!(observed["action"], "none");
    let (status, _) = control(
        &proxy,
        "POST",
        "/v1/sessions/o1/observe",
        Some(json!({"provider": "anthropic"})),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn observe_of_a_backend_401_closes_the_session_cancels_wakeups_and_blocks_the_key() {
    let proxy = start_proxy(proxy_flags(&[])).await;
    open_session(&proxy, "o2").await;
    add_wakeup(&proxy, "o2", json!({"n": 1})).await;
    add_wakeup(&proxy, "o2", json!({"n": 2})).await;
    let rejected = anthropic_line(
        401,
        json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}),
    );
    let (status, observed) =
        control(&proxy, "POST", "/v1/sessions/o2/observe", Some(rejected)).await;
    assert_eq!(status, 200, "{observed}");
    assert_eq!(
        observed,
        json!({"class": "credential_invalid", "rule": "anthropic.authentication_error", "action": "block_credential"})
    );
    let (_, record) = control(&proxy, "GET", "/v1/sessions/o2", None).await;
    assert_eq!(record["status"], "closed");
    assert_eq!(record["rule"], "anthropic.authentication_error");
    let (_, wakeups) = control(&proxy, "GET", "/v1/sessions/o2/wakeups", None).await;
    assert_eq!(wakeups["wakeups"], json!([]));
    assert!(claim(&proxy, 60_000).await.is_empty());
    let (_, blocked) = control(&proxy, "GET", "/v1/credentials", None).await;
    assert_eq!(blocked["credentials"].as_array().unwrap().len(), 1);
    assert!(!blocked.to_string().contains("sk-ant-REDACTED-observe"));
}

// === Events ===

async fn close(proxy: &TestProxy, session: &str) {
    let (status, body) = control(
        proxy,
        "POST",
        &format!("/v1/sessions/{session}/close"),
        Some(json!({"reason": "access lost"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// Reads `/v1/events` a page of `limit` at a time until the end of the log.
async fn all_events(proxy: &TestProxy, limit: usize) -> Vec<Value> {
    let mut events = Vec::new();
    let mut after = String::new();
    loop {
        let path = format!("/v1/events?after={after}&limit={limit}");
        let (status, page) = control(proxy, "GET", &path, None).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["gap"], false);
        let batch = page["events"].as_array().unwrap().clone();
        after = page["cursor"].as_str().unwrap().to_owned();
        let done = batch.len() < limit;
        events.extend(batch);
        if done {
            return events;
        }
    }
}

async fn events_list_every_closure_once(proxy: &TestProxy) {
    for session in ["e1", "e2", "e3"] {
        open_session(proxy, session).await;
        close(proxy, session).await;
    }
    let events = all_events(proxy, 2).await;
    let closed: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "closed")
        .map(|e| e["session"].as_str().unwrap())
        .collect();
    let mut sorted = closed.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, ["e1", "e2", "e3"], "{events:?}");
    let first = events.iter().find(|e| e["kind"] == "closed").unwrap();
    assert_eq!(first["v"], 1);
    assert_eq!(first["class"], "manual");
    assert_eq!(first["reason"], "access lost");
    assert!(first["id"].is_string() && first["at_ms"].is_u64());
    let (status, _) = control(proxy, "GET", "/v1/events?limit=0", None).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn events_page_through_the_log_with_redb() {
    let proxy = start_proxy(proxy_flags(&[])).await;
    events_list_every_closure_once(&proxy).await;
}

#[tokio::test]
async fn events_page_through_the_log_with_redis() {
    let redis = support::redis_server::RedisServer::start();
    let mut flags = proxy_flags(&[]);
    flags.store = Some(redis.url());
    let proxy = start_proxy(flags).await;
    events_list_every_closure_once(&proxy).await;
}

/// The event streams as the README tells the platform to consume them: one consumer group
/// over the 16 partition streams, XREADGROUP then XACK once an event is handled.
mod consumer {
    use redis::streams::{StreamReadOptions, StreamReadReply};
    use redis::AsyncCommands;

    pub const GROUP: &str = "platform";

    pub fn streams() -> Vec<String> {
        (0..16).map(|p| format!("hg:{{{p}}}:events")).collect()
    }

    pub async fn create_group(connection: &mut redis::aio::MultiplexedConnection) {
        for stream in streams() {
            let _: () = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&stream)
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(connection)
                .await
                .unwrap();
        }
    }

    /// Entries for `consumer`: `"0"` re-reads its delivered but unacknowledged ones, `">"`
    /// reads new ones. Each entry as (stream, id, kind, session).
    pub async fn read(
        connection: &mut redis::aio::MultiplexedConnection,
        consumer: &str,
        from: &str,
        count: usize,
    ) -> Vec<(String, String, String, String)> {
        let streams = streams();
        let ids = vec![from; streams.len()];
        let options = StreamReadOptions::default()
            .group(GROUP, consumer)
            .count(count);
        let reply: StreamReadReply = connection
            .xread_options(&streams, &ids, &options)
            .await
            .unwrap();
        let mut entries = Vec::new();
        for key in reply.keys {
            for entry in key.ids {
                let field = |name: &str| entry.get::<String>(name).unwrap_or_default();
                entries.push((
                    key.key.clone(),
                    entry.id.clone(),
                    field("kind"),
                    field("session"),
                ));
            }
        }
        entries
    }

    pub async fn ack(connection: &mut redis::aio::MultiplexedConnection, stream: &str, id: &str) {
        let acked: i64 = connection.xack(stream, GROUP, &[id]).await.unwrap();
        assert_eq!(acked, 1);
    }
}

#[tokio::test]
async fn a_consumer_group_handles_every_closure_exactly_once_across_a_consumer_restart() {
    let redis = support::redis_server::RedisServer::start();
    let mut flags = proxy_flags(&[]);
    flags.store = Some(redis.url());
    let proxy = start_proxy(flags).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut setup = client.get_multiplexed_async_connection().await.unwrap();
    consumer::create_group(&mut setup).await;

    let sessions = ["g1", "g2", "g3", "g4", "g5"];
    for session in sessions {
        close(&proxy, session).await;
    }

    // The first consumer handles two events, then takes one more and dies before its XACK.
    let mut handled: Vec<String> = Vec::new();
    let mut first = client.get_multiplexed_async_connection().await.unwrap();
    let mut taken = 0;
    while taken < 3 {
        let batch = consumer::read(&mut first, "worker-1", ">", 1).await;
        assert!(!batch.is_empty());
        for (stream, id, kind, session) in batch {
            taken += 1;
            if taken == 3 {
                break; // delivered, not acknowledged: the crash
            }
            if kind == "closed" {
                handled.push(session);
            }
            consumer::ack(&mut first, &stream, &id).await;
        }
    }
    drop(first);

    // Restarted under the same name: first what it had been given, then what is new.
    let mut restarted = client.get_multiplexed_async_connection().await.unwrap();
    for from in ["0", ">"] {
        loop {
            let batch = consumer::read(&mut restarted, "worker-1", from, 10).await;
            if batch.is_empty() {
                break;
            }
            for (stream, id, kind, session) in batch {
                if kind == "closed" {
                    handled.push(session);
                }
                consumer::ack(&mut restarted, &stream, &id).await;
            }
        }
    }
    handled.sort_unstable();
    assert_eq!(handled, sessions);

    // A closure after the restart reaches the group once too; nothing is left pending.
    close(&proxy, "g6").await;
    let batch = consumer::read(&mut restarted, "worker-1", ">", 10).await;
    assert_eq!(batch.len(), 1);
    assert_eq!((batch[0].2.as_str(), batch[0].3.as_str()), ("closed", "g6"));
    consumer::ack(&mut restarted, &batch[0].0, &batch[0].1).await;
    for stream in consumer::streams() {
        let pending: redis::Value = redis::cmd("XPENDING")
            .arg(&stream)
            .arg(consumer::GROUP)
            .query_async(&mut setup)
            .await
            .unwrap();
        let redis::Value::Array(summary) = pending else {
            panic!("XPENDING summary: {pending:?}");
        };
        assert_eq!(summary[0], redis::Value::Int(0), "{stream}");
    }
}

// === The binary: JSON logs and the operator CLI ===

const CONTROL_TOKEN: &str = "ctl-REDACTED-operate-token-0001";
const PLANTED: &str = "xoxb-REDACTED-PLANTED-operate";

/// `haltgate --log-format json serve` on the shipped rules and a redb store in `dir`.
fn start_binary(dir: &std::path::Path, upstream: &Upstream) -> BinaryProxy {
    let mut command = BinaryProxy::command(dir);
    command
        .args(["--log-format", "json", "serve"])
        .args(["--listen", "127.0.0.1:0", "--control-listen", "127.0.0.1:0"])
        .arg("--rules")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/rules"))
        .arg("--store")
        .arg(format!("redb:{}", dir.join("haltgate.redb").display()))
        .arg("--route")
        .arg(format!("slack={}", upstream.http_url()))
        .env("HALTGATE_LOG", "debug")
        .env("HALTGATE_CONTROL_TOKEN", CONTROL_TOKEN);
    BinaryProxy::spawn(command)
}

/// Runs `haltgate ARGS --control URL` with the control token; exit success, stdout, stderr.
async fn cli(
    control: std::net::SocketAddr,
    token: Option<&str>,
    args: &[&str],
) -> (bool, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_haltgate"));
    command
        .args(args)
        .args(["--control", &format!("http://{control}")])
        .env_remove("HALTGATE_CONTROL_TOKEN");
    if let Some(token) = token {
        command.env("HALTGATE_CONTROL_TOKEN", token);
    }
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

fn agent_post(agent: std::net::SocketAddr, session: &str, mode: &str) -> Request<body::ProxyBody> {
    Request::post(format!(
        "http://{agent}/slack/api/chat.postMessage?mode={mode}"
    ))
    .header("content-type", "application/json")
    .header("authorization", format!("Bearer {PLANTED}"))
    .header("x-haltgate-session", session)
    .body(body::full(
        json!({"channel": CHANNEL, "text": "hi"}).to_string(),
    ))
    .unwrap()
}

#[tokio::test]
async fn json_logs_carry_the_request_span_and_the_cli_drives_the_control_api() {
    let upstream = start_upstream(slack_upstream()).await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_binary(dir.path(), &upstream);
    let (agent, control) = server.addresses().await;
    let token = Some(CONTROL_TOKEN);
    within(std::time::Duration::from_secs(10), async {
        let readyz = format!("http://{control}/readyz");
        while client().request(get(&readyz)).await.unwrap().status() != 200 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;

    let (status, _, _) = send(agent_post(agent, "cli-kick", "kick")).await;
    assert_eq!(status, SLACK_HALT);
    let (status, _, _) = send(agent_post(agent, "cli-auth", "invalid_auth")).await;
    assert_eq!(status, SLACK_HALT);

    // sessions get: text for people, the record with --json.
    let (ok, out, err) = cli(control, token, &["sessions", "get", "cli-kick"]).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("cli-kick  closed  epoch 0"), "{out}");
    assert!(out.contains("rule slack.write_to_gone_channel"), "{out}");
    let (ok, out, _) = cli(control, token, &["sessions", "get", "cli-kick", "--json"]).await;
    assert!(ok);
    let record: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(record["status"], "closed");

    // wakeups, close, reopen.
    let (ok, out, err) = cli(control, token, &["sessions", "reopen", "cli-open"]).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("cli-open  open  epoch 0"), "{out}");
    let due = haltgate::session::unix_ms_now() + 60_000;
    let request = Request::post(format!("http://{control}/v1/sessions/cli-open/wakeups"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {CONTROL_TOKEN}"))
        .body(body::full(
            json!({"due_ms": due, "payload": {"k": 1}}).to_string(),
        ))
        .unwrap();
    assert_eq!(send(request).await.0, 201);
    let (ok, out, _) = cli(control, token, &["sessions", "wakeups", "cli-open"]).await;
    assert!(ok);
    assert!(out.starts_with("1 pending wakeups of cli-open"), "{out}");
    let (ok, out, _) = cli(
        control,
        token,
        &["sessions", "close", "cli-open", "--reason", "done here"],
    )
    .await;
    assert!(ok);
    assert_eq!(out.trim(), "closed cli-open (1 wakeups cancelled)");
    let (ok, out, _) = cli(
        control,
        token,
        &["sessions", "reopen", "cli-open", "--json"],
    )
    .await;
    assert!(ok);
    let record: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (record["status"].as_str(), record["epoch"].as_u64()),
        (Some("open"), Some(1))
    );

    // credentials list and unblock.
    let (ok, out, _) = cli(control, token, &["credentials", "list", "--json"]).await;
    assert!(ok);
    let listed: Value = serde_json::from_str(&out).unwrap();
    let fingerprint = listed["credentials"][0]["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    let (ok, out, _) = cli(control, token, &["credentials", "list"]).await;
    assert!(ok);
    assert!(
        out.starts_with("1 blocked credentials") && out.contains(&fingerprint),
        "{out}"
    );
    let (ok, out, _) = cli(control, token, &["credentials", "unblock", &fingerprint]).await;
    assert!(ok);
    assert_eq!(out.trim(), format!("unblocked {fingerprint}"));

    // events tail: every closure, one JSON object a line.
    let (ok, out, _) = cli(control, token, &["events", "tail", "--json"]).await;
    assert!(ok);
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let closed: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "closed")
        .map(|e| e["session"].as_str().unwrap())
        .collect();
    assert_eq!(closed, ["cli-kick", "cli-auth", "cli-open"]);
    let (ok, out, _) = cli(control, token, &["events", "tail"]).await;
    assert!(ok);
    assert!(
        out.lines().any(|l| l.contains("closed  session=cli-kick")),
        "{out}"
    );

    // Without the token the API refuses, and the command says so.
    let (ok, _, err) = cli(control, None, &["sessions", "get", "cli-kick"]).await;
    assert!(!ok);
    assert!(err.contains("401"), "{err}");

    // The match was logged inside its request's span (debug level here), with no credential
    // anywhere.
    let lines = server.log_lines();
    let matched = lines
        .iter()
        .find(|l| l["fields"]["message"] == "Rule matched." && l["span"]["session"] == "cli-kick")
        .unwrap_or_else(|| panic!("no match line in {lines:?}"));
    assert_eq!(matched["span"]["name"], "request");
    assert_eq!(matched["span"]["route"], "slack");
    assert_eq!(matched["span"]["rule"], "slack.write_to_gone_channel");
    // The span is there at debug level only; the event names its session and rule itself.
    assert_eq!(matched["fields"]["session"], "cli-kick");
    assert_eq!(matched["fields"]["rule"], "slack.write_to_gone_channel");
    let log = server.log();
    assert!(!log.contains(PLANTED), "planted token in the logs");
    assert!(!log.contains(CONTROL_TOKEN), "control token in the logs");
}

// === Webhook sink ===

#[tokio::test]
async fn the_webhook_delivers_every_event_signed_retries_failures_and_resumes_after_a_restart() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let attempts = Arc::new(AtomicUsize::new(0));
    let delivered: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let (a, d) = (attempts.clone(), delivered.clone());
    // The receiver fails its first two requests, then accepts.
    let receiver = start_upstream(handler(move |seen: Seen| {
        let attempt = a.fetch_add(1, Ordering::SeqCst);
        let delivered = d.clone();
        async move {
            if attempt < 2 {
                return text(500, "not now");
            }
            delivered.lock().unwrap().push(seen);
            text(204, "")
        }
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let secret = "whsec-REDACTED-0123456789";
    std::fs::write(dir.path().join("webhook.secret"), format!("{secret}\n")).unwrap();
    let cursor_file = dir.path().join("webhook.cursor");
    let spec = || haltgate::config::ConfigSpec {
        webhook: Some(haltgate::webhook::WebhookSpec {
            url: format!("{}/events", receiver.http_url()),
            secret_file: dir.path().join("webhook.secret"),
            cursor_file: Some(cursor_file.clone()),
        }),
        ..Default::default()
    };
    let state = tempfile::tempdir().unwrap();
    let proxy = start_proxy_with(spec(), proxy_flags(&[]), state).await;
    close(&proxy, "w1").await;
    close(&proxy, "w2").await;

    let delivered_ids = |count: usize| {
        let delivered = delivered.clone();
        async move {
            within(std::time::Duration::from_secs(20), async {
                loop {
                    let ids: Vec<String> = delivered
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|s| {
                            s.headers["x-haltgate-event-id"]
                                .to_str()
                                .unwrap()
                                .to_owned()
                        })
                        .collect();
                    if ids.len() >= count {
                        return ids;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            })
            .await
        }
    };
    let ids = delivered_ids(2).await;
    assert!(
        attempts.load(Ordering::SeqCst) >= 4,
        "the failures were retried"
    );

    // Each delivery is the event, signed over timestamp and body.
    for seen in delivered.lock().unwrap().iter() {
        let timestamp = seen.headers["x-haltgate-timestamp"].to_str().unwrap();
        let signature = seen.headers["x-haltgate-signature"].to_str().unwrap();
        let tag = signature.strip_prefix("v1=").unwrap();
        let tag: Vec<u8> = (0..tag.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&tag[i..i + 2], 16).unwrap())
            .collect();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        let mut signed = format!("{timestamp}.").into_bytes();
        signed.extend_from_slice(&seen.body);
        ring::hmac::verify(&key, &signed, &tag).expect("valid signature");
        let event: Value = serde_json::from_slice(&seen.body).unwrap();
        assert_eq!(event["v"], 1);
        assert_eq!(event["kind"], "closed");
        assert_eq!(
            event["id"],
            seen.headers["x-haltgate-event-id"].to_str().unwrap()
        );
    }
    let sessions: Vec<Value> = delivered
        .lock()
        .unwrap()
        .iter()
        .map(|s| serde_json::from_slice::<Value>(&s.body).unwrap()["session"].clone())
        .collect();
    assert_eq!(sessions, [json!("w1"), json!("w2")]);

    // Wait for the cursor to pass the second event, then restart: only new events follow.
    let (_, page) = control(&proxy, "GET", "/v1/events?limit=1000", None).await;
    let end = page["cursor"].as_str().unwrap().to_owned();
    within(std::time::Duration::from_secs(10), async {
        while std::fs::read_to_string(&cursor_file).unwrap_or_default() != end {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let state = proxy.stop().await;
    let proxy = start_proxy_with(spec(), proxy_flags(&[]), state).await;
    close(&proxy, "w3").await;
    let after = delivered_ids(3).await;
    assert_eq!(after.len(), 3, "{after:?}");
    assert_eq!(after[..2], ids[..]);
    let third: Value = serde_json::from_slice(&delivered.lock().unwrap()[2].body).unwrap();
    assert_eq!(third["session"], "w3");
}
