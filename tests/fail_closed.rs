//! Fail closed: a closed session or a blocked credential never reaches a provider — while the
//! state loads, with Redis down, cut, slow or full, after restarts, with a damaged store, or
//! through epoch and credential spellings. Real redis-server processes behind a TCP fault
//! proxy, real redb files, real sockets.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use haltgate::app::App;
use haltgate::body::{self, ProxyBody};
use haltgate::config::{Config, ConfigSpec, Overrides};
use haltgate::session::{Class, Closure, SessionId, SessionStore};
use http::Request;
use serde_json::{json, Value};
use support::fault_proxy::{Fault, FaultProxy};
use support::redis_server::RedisServer;
use support::*;

const TOKEN: &str = "xoxb-REDACTED-1";

struct Call<'a> {
    session: Option<&'a str>,
    epoch: Option<&'a str>,
    mode: &'a str,
    channel: &'a str,
    headers: Vec<(&'a str, String)>,
    form: Option<String>,
    query: String,
}

impl<'a> Call<'a> {
    fn new(session: Option<&'a str>, mode: &'a str) -> Self {
        Call {
            session,
            epoch: None,
            mode,
            channel: CHANNEL,
            headers: vec![("authorization", format!("Bearer {TOKEN}"))],
            form: None,
            query: String::new(),
        }
    }

    fn request(&self, agent: SocketAddr) -> Request<ProxyBody> {
        let marker = self.session.unwrap_or("none");
        let mut builder = Request::post(format!(
            "http://{agent}/slack/api/chat.postMessage?mode={}&marker={marker}{}",
            self.mode, self.query
        ));
        if let Some(session) = self.session {
            builder = builder.header("x-haltgate-session", session);
        }
        if let Some(epoch) = self.epoch {
            builder = builder.header("x-haltgate-epoch", epoch);
        }
        for (name, value) in &self.headers {
            builder = builder.header(*name, value);
        }
        match &self.form {
            Some(form) => builder
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body::full(form.clone()))
                .unwrap(),
            None => builder
                .header("content-type", "application/json")
                .body(body::full(
                    json!({"channel": self.channel, "text": "hi"}).to_string(),
                ))
                .unwrap(),
        }
    }
}

async fn make(agent: SocketAddr, call: &Call<'_>) -> (u16, http::HeaderMap, Value) {
    send(call.request(agent)).await
}

/// A proxy over `dir` whose store is `store` (default: redb in `dir`), not yet ready.
async fn start_unready(upstream: &Upstream, dir: &std::path::Path, store: Option<String>) -> App {
    let mut flags = proxy_flags(&[("slack", upstream.http_url())]);
    flags.store =
        Some(store.unwrap_or_else(|| format!("redb:{}", dir.join("state.redb").display())));
    flags.outbox = Some(dir.join("outbox.redb"));
    flags.local_copy = Some(dir.join("local.redb"));
    let spec = ConfigSpec {
        store_startup_wait: Some("300ms".into()),
        ..ConfigSpec::default()
    };
    let config = Config::resolve(spec, flags, "test").expect("valid config");
    App::start(config).await.expect("proxy starts")
}

async fn start_ready(upstream: &Upstream, dir: &std::path::Path, store: Option<String>) -> App {
    let app = start_unready(upstream, dir, store).await;
    wait_until("ready", Duration::from_secs(10), || app.is_ready()).await;
    app
}

async fn wait_until_async_empty(outbox: &haltgate::session::Outbox) {
    eventually("outbox drained", Duration::from_secs(15), async || {
        outbox.len().await.unwrap() == 0
    })
    .await;
}

async fn stop(app: App) {
    app.shutdown();
    app.wait().await;
}

async fn wait_until(what: &str, limit: Duration, condition: impl Fn() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn sid(s: &str) -> SessionId {
    SessionId::parse(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_a_large_state_forwards_no_closed_session_while_it_loads() {
    let redis = RedisServer::start();
    let upstream = start_upstream(slack_upstream()).await;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn SessionStore> = haltgate::session::open_store(&redis.url()).await.unwrap();
    // 20,000 closed sessions, written concurrently.
    let ids: Vec<String> = (0..20_000).map(|i| format!("closed-{i}")).collect();
    for chunk in ids.chunks(500) {
        let writes = chunk.iter().map(|id| {
            let store = store.clone();
            let id = sid(id);
            async move {
                store
                    .close(
                        &id,
                        Closure::new(Class::LostAccess, "slack.not_in_channel", "x"),
                    )
                    .await
                    .unwrap()
            }
        });
        futures_util::future::join_all(writes).await;
    }

    // From the moment the agent port exists, closed sessions are hammered; a slow link to
    // Redis until the first refusal makes sure requests land while the state loads.
    let fault = FaultProxy::start(([127, 0, 0, 1], redis.port()).into()).await;
    fault.set(Fault::Delay(Duration::from_millis(100)));
    let app = start_unready(&upstream, dir.path(), Some(fault.redis_url())).await;
    let agent = app.agent_addr();
    let refused = Arc::new(AtomicUsize::new(0));
    let halted = Arc::new(AtomicUsize::new(0));
    let mut sent = 0;
    let mut seen_ready = None;
    let started = Instant::now();
    while seen_ready.is_none_or(|at: Instant| at.elapsed() < Duration::from_millis(300)) {
        assert!(started.elapsed() < Duration::from_secs(20), "never ready");
        if seen_ready.is_none() && app.is_ready() {
            seen_ready = Some(Instant::now());
        }
        let id = &ids[(sent * 7919) % ids.len()];
        let (status, headers, _) = make(agent, &Call::new(Some(id), "ok")).await;
        match status {
            503 => {
                // One request is known to have landed while loading: the link may be fast now.
                fault.set(Fault::Pass);
                assert_eq!(headers["x-haltgate-error"], "not_ready");
                assert_eq!(headers["retry-after"], "1");
                refused.fetch_add(1, Ordering::Relaxed);
            }
            SLACK_HALT if headers.contains_key("x-haltgate-halt") => {
                halted.fetch_add(1, Ordering::Relaxed);
            }
            other => panic!("closed session {id} answered {other} while loading"),
        }
        sent += 1;
    }
    eprintln!(
        "{sent} requests of closed sessions: {} refused while loading, {} halted; ready after {:?}",
        refused.load(Ordering::Relaxed),
        halted.load(Ordering::Relaxed),
        seen_ready.unwrap().duration_since(started)
    );
    assert_eq!(
        upstream.hits(),
        0,
        "no request of a closed session reached upstream"
    );
    assert!(
        refused.load(Ordering::Relaxed) > 0,
        "requests landed while the state loaded"
    );
    assert!(halted.load(Ordering::Relaxed) > 0);
    stop(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_with_redis_down_and_nothing_local_refuses_session_and_credential_traffic() {
    let redis = RedisServer::start();
    let fault = FaultProxy::start(([127, 0, 0, 1], redis.port()).into()).await;
    fault.set(Fault::Refuse);
    let upstream = start_upstream(slack_upstream()).await;
    let dir = tempfile::tempdir().unwrap();
    let app = start_unready(&upstream, dir.path(), Some(fault.redis_url())).await;

    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!app.is_ready(), "no local copy and no store: never ready");
    let (status, _) = control(&app, "GET", "/readyz", None).await;
    assert_eq!(status, 503);
    for call in [
        Call::new(Some("s1"), "ok"),
        Call::new(None, "ok"),
        Call {
            headers: vec![("x-api-key", TOKEN.into())],
            ..Call::new(None, "ok")
        },
        Call {
            headers: vec![],
            form: Some(format!("channel={CHANNEL}&token={TOKEN}")),
            ..Call::new(None, "ok")
        },
    ] {
        let (status, headers, _) = make(app.agent_addr(), &call).await;
        assert_eq!(status, 503);
        assert_eq!(headers["x-haltgate-error"], "not_ready");
    }
    // Nothing names a session or a credential: nothing to protect.
    let anonymous = Call {
        headers: vec![],
        ..Call::new(None, "ok")
    };
    assert_eq!(make(app.agent_addr(), &anonymous).await.0, 200);
    assert_eq!(upstream.hits(), 1);

    fault.set(Fault::Pass);
    wait_until("ready once Redis answers", Duration::from_secs(10), || {
        app.is_ready()
    })
    .await;
    assert_eq!(control(&app, "GET", "/readyz", None).await.0, 200);
    assert_eq!(
        make(app.agent_addr(), &Call::new(Some("s1"), "ok")).await.0,
        200
    );
    stop(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_with_redis_down_halts_what_the_local_copy_and_outbox_knew() {
    let redis = RedisServer::start();
    let fault = FaultProxy::start(([127, 0, 0, 1], redis.port()).into()).await;
    let upstream = start_upstream(slack_upstream()).await;
    let dir = tempfile::tempdir().unwrap();

    let first = start_ready(&upstream, dir.path(), Some(fault.redis_url())).await;
    let agent = first.agent_addr();
    assert_eq!(
        make(agent, &Call::new(Some("kicked"), "kick")).await.0,
        SLACK_HALT
    );
    let blocked = Call {
        headers: vec![("authorization", "Bearer xoxb-REDACTED-2".into())],
        ..Call::new(Some("uses-bad-token"), "invalid_auth")
    };
    assert_eq!(make(agent, &blocked).await.0, SLACK_HALT);
    // Redis goes away; this closure can only wait in the outbox. (A rule that needs no
    // session scope: scoped rules cannot decide while the scope cannot be read.)
    fault.set(Fault::Refuse);
    let revoked = Call {
        headers: vec![("authorization", "Bearer xoxb-REDACTED-3".into())],
        ..Call::new(Some("closed-while-down"), "invalid_auth")
    };
    let (status, _, body) = make(agent, &revoked).await;
    assert_eq!(
        (status, body["haltgate"]["rule"].as_str()),
        (SLACK_HALT, Some("slack.invalid_auth"))
    );
    stop(first).await;
    let before = upstream.hits();

    let second = start_unready(&upstream, dir.path(), Some(fault.redis_url())).await;
    wait_until("ready from the local copy", Duration::from_secs(10), || {
        second.is_ready()
    })
    .await;
    let agent = second.agent_addr();
    for (session, class) in [
        ("kicked", "lost_access"),
        ("closed-while-down", "credential_invalid"),
    ] {
        let (status, headers, _) = make(agent, &Call::new(Some(session), "ok")).await;
        assert_eq!(status, SLACK_HALT, "{session}");
        assert_eq!(headers["x-haltgate-halt"], class);
    }
    let reused = Call {
        headers: vec![("authorization", "bearer   xoxb-REDACTED-2".into())],
        ..Call::new(Some("another"), "ok")
    };
    assert_eq!(
        make(agent, &reused).await.0,
        SLACK_HALT,
        "the block was kept"
    );
    assert_eq!(
        upstream.hits(),
        before,
        "nothing known closed reached upstream"
    );
    assert_eq!(make(agent, &Call::new(Some("fresh"), "ok")).await.0, 200);

    // Redis returns: the outbox lands, and the store then holds the closure.
    fault.set(Fault::Pass);
    let store = haltgate::session::open_store(&redis.url()).await.unwrap();
    let landed = Instant::now();
    loop {
        if let Ok(Some(record)) = store.get(&sid("closed-while-down")).await {
            if record.is_closed() {
                break;
            }
        }
        assert!(
            landed.elapsed() < Duration::from_secs(15),
            "outbox never landed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let outbox = second.gate().outbox().unwrap().clone();
    wait_until_async_empty(&outbox).await;
    let record = store.get(&sid("another")).await.unwrap().unwrap();
    assert!(
        record.is_closed(),
        "the blocked credential closed its session too"
    );
    stop(second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_still_lets_an_instance_become_ready() {
    let redis =
        RedisServer::start_with(&["--maxmemory", "3mb", "--maxmemory-policy", "noeviction"]);
    let upstream = start_upstream(slack_upstream()).await;
    let dir = tempfile::tempdir().unwrap();
    let first = start_ready(&upstream, dir.path(), Some(redis.url())).await;
    stop(first).await;
    let filler = "x".repeat(64 * 1024);
    let mut full = false;
    for i in 0..200 {
        let reply = redis.cli(&["SET", &format!("fill:{i}"), &filler]);
        if reply.contains("OOM") {
            full = true;
            break;
        }
    }
    assert!(full, "Redis never refused a write");
    // A fresh instance (no local copy) must read its way to ready.
    let fresh = tempfile::tempdir().unwrap();
    let second = start_unready(&upstream, fresh.path(), Some(redis.url())).await;
    wait_until(
        "ready against a full Redis",
        Duration::from_secs(10),
        || second.is_ready(),
    )
    .await;
    stop(second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_that_cannot_be_read_closes_nothing() {
    let redis = RedisServer::start();
    let fault = FaultProxy::start(([127, 0, 0, 1], redis.port()).into()).await;
    let upstream = start_upstream(slack_upstream()).await;
    let dir = tempfile::tempdir().unwrap();
    let app = start_ready(&upstream, dir.path(), Some(fault.redis_url())).await;
    let (status, _) = control(
        &app,
        "PUT",
        "/v1/sessions/scoped",
        Some(json!({"scope": {"slack_channel": CHANNEL}})),
    )
    .await;
    assert_eq!(status, 200);

    for fault_kind in [
        Fault::Blackhole,
        Fault::Refuse,
        Fault::Delay(Duration::from_millis(1500)),
        Fault::Reset,
    ] {
        fault.set(fault_kind);
        // A write to another channel failed: only the scope could say whether this
        // session's channel is gone, and the scope cannot be read.
        let other = Call {
            channel: "C_OTHER",
            ..Call::new(Some("scoped"), "kick")
        };
        let (status, headers, body) = make(app.agent_addr(), &other).await;
        assert_eq!(status, 200, "{fault_kind:?}: passed unchanged");
        assert!(headers.get("x-haltgate-halt").is_none());
        assert_eq!(body["error"], "not_in_channel");
        assert!(app.gate().closed().check(&sid("scoped"), None).is_none());
    }
    assert_eq!(app.stats().undecided.get(), 4);
    fault.set(Fault::Pass);
    let (_, record) = control(&app, "GET", "/v1/sessions/scoped", None).await;
    assert_eq!(record["status"], "open", "nothing was replayed into Redis");
    // With the scope readable, this session's own channel still halts.
    assert_eq!(
        make(app.agent_addr(), &Call::new(Some("scoped"), "kick"))
            .await
            .0,
        SLACK_HALT
    );
    stop(app).await;
}

#[tokio::test]
async fn epochs_are_exact_integers_and_a_later_epoch_never_reopens() {
    let upstream = start_upstream(slack_upstream()).await;
    let dir = tempfile::tempdir().unwrap();
    let app = start_ready(&upstream, dir.path(), None).await;
    let agent = app.agent_addr();
    for bad in ["9007199254740992", "18446744073709551615", "-1", "1e3", ""] {
        let call = Call {
            epoch: Some(bad),
            ..Call::new(Some("e"), "ok")
        };
        assert_eq!(make(agent, &call).await.0, 400, "epoch {bad:?}");
    }
    let max = Call {
        epoch: Some("9007199254740991"),
        ..Call::new(Some("e"), "ok")
    };
    assert_eq!(
        make(agent, &max).await.0,
        200,
        "an open session is open at any epoch"
    );

    assert_eq!(
        make(agent, &Call::new(Some("e"), "kick")).await.0,
        SLACK_HALT
    );
    let before = upstream.hits();
    for later in ["1", "5", "9007199254740991"] {
        let call = Call {
            epoch: Some(later),
            ..Call::new(Some("e"), "ok")
        };
        assert_eq!(make(agent, &call).await.0, SLACK_HALT, "epoch {later}");
    }
    assert_eq!(upstream.hits(), before);

    let (status, _) = control(
        &app,
        "POST",
        "/v1/sessions/m/close",
        Some(json!({"reason": "x", "epoch": 9007199254740992u64})),
    )
    .await;
    assert_eq!(status, 400);
    let (status, body) = control(
        &app,
        "POST",
        "/v1/sessions/m/close",
        Some(json!({"reason": "x", "epoch": 9007199254740991u64})),
    )
    .await;
    assert_eq!((status, body["session"]["epoch"].as_u64()), (200, Some(0)));
    let (status, body) = control(&app, "PUT", "/v1/sessions/m", None).await;
    assert_eq!(
        (status, body["epoch"].as_u64()),
        (200, Some(1)),
        "reopen works"
    );
    let (status, body) = control(&app, "PUT", "/v1/sessions/e", None).await;
    assert_eq!((status, body["epoch"].as_u64()), (200, Some(1)));
    let current = Call {
        epoch: Some("1"),
        ..Call::new(Some("e"), "ok")
    };
    assert_eq!(make(agent, &current).await.0, 200);
    let old = Call {
        epoch: Some("0"),
        ..Call::new(Some("e"), "ok")
    };
    assert_eq!(make(agent, &old).await.0, SLACK_HALT);
    stop(app).await;
}

#[tokio::test]
async fn every_spelling_and_place_of_a_blocked_credential_is_refused() {
    let upstream = start_upstream(slack_upstream()).await;
    let dir = tempfile::tempdir().unwrap();
    let app = start_ready(&upstream, dir.path(), None).await;
    let agent = app.agent_addr();
    let (status, headers, _) = make(agent, &Call::new(None, "invalid_auth")).await;
    assert_eq!(status, SLACK_HALT);
    assert_eq!(headers["x-haltgate-halt"], "credential_invalid");
    let before = upstream.hits();
    let spellings: Vec<(&str, String)> = vec![
        ("authorization", format!("Bearer {TOKEN}")),
        ("authorization", format!("bearer {TOKEN}")),
        ("authorization", format!("BEARER {TOKEN}")),
        ("authorization", format!("Bearer  {TOKEN}")),
        ("authorization", format!("Bearer\t{TOKEN}")),
        ("authorization", format!("token {TOKEN}")),
        ("authorization", TOKEN.to_owned()),
        ("x-api-key", TOKEN.to_owned()),
    ];
    for (name, value) in spellings {
        let call = Call {
            headers: vec![(name, value.clone())],
            ..Call::new(None, "ok")
        };
        let (status, headers, body) = make(agent, &call).await;
        assert_eq!(status, SLACK_HALT, "{name}: {value:?}");
        assert_eq!(headers["x-haltgate-halt"], "credential_invalid");
        assert!(
            !body.to_string().contains(TOKEN),
            "the halt never echoes the token"
        );
    }
    let in_query = Call {
        headers: vec![],
        query: format!("&token={TOKEN}"),
        ..Call::new(None, "ok")
    };
    assert_eq!(
        make(agent, &in_query).await.0,
        SLACK_HALT,
        "token query parameter"
    );
    let in_form = Call {
        headers: vec![],
        form: Some(format!(
            "channel={CHANNEL}&token={}",
            TOKEN.replace('-', "%2D")
        )),
        ..Call::new(None, "ok")
    };
    assert_eq!(
        make(agent, &in_form).await.0,
        SLACK_HALT,
        "token form field"
    );
    // A form the proxy cannot read through is refused, not forwarded unchecked.
    let past_the_limit = Call {
        headers: vec![],
        form: Some(format!("text={}&token={TOKEN}", "x".repeat(70 * 1024))),
        ..Call::new(None, "ok")
    };
    let (status, headers, _) = make(agent, &past_the_limit).await;
    assert_eq!(status, 413);
    assert_eq!(headers["x-haltgate-error"], "body_not_checkable");
    let encoded = Call {
        headers: vec![("content-encoding", "gzip".into())],
        form: Some("not really gzip".into()),
        ..Call::new(None, "ok")
    };
    assert_eq!(make(agent, &encoded).await.0, 415, "an encoded form");
    assert_eq!(upstream.hits(), before, "no spelling reached upstream");

    let other_form = Call {
        headers: vec![],
        form: Some(format!(
            "channel={CHANNEL}&token=xoxb-REDACTED-other&text=hi"
        )),
        ..Call::new(None, "ok")
    };
    assert_eq!(make(agent, &other_form).await.0, 200);
    assert_eq!(
        upstream.last_seen().body,
        format!("channel={CHANNEL}&token=xoxb-REDACTED-other&text=hi"),
        "a form read for the check is forwarded byte-exact"
    );
    stop(app).await;
}

async fn blocked_credential_closes_its_session(store: Option<String>) {
    let upstream = start_upstream(slack_upstream()).await;
    let dir = tempfile::tempdir().unwrap();
    let app = start_ready(&upstream, dir.path(), store).await;
    let agent = app.agent_addr();
    assert_eq!(
        make(agent, &Call::new(Some("first"), "invalid_auth"))
            .await
            .0,
        SLACK_HALT
    );

    let past = haltgate::session::unix_ms_now() - 1_000;
    assert_eq!(
        control(&app, "PUT", "/v1/sessions/second", None).await.0,
        200
    );
    for due in [past, past + 1] {
        let (status, _) = control(
            &app,
            "POST",
            "/v1/sessions/second/wakeups",
            Some(json!({"due_ms": due, "payload": {"wake": "second"}})),
        )
        .await;
        assert_eq!(status, 201);
    }
    let before = upstream.hits();
    let (status, headers, body) = make(agent, &Call::new(Some("second"), "ok")).await;
    assert_eq!(status, SLACK_HALT);
    assert_eq!(headers["x-haltgate-halt"], "credential_invalid");
    assert_eq!(body["haltgate"]["session"], "second");
    assert_eq!(upstream.hits(), before);

    let (_, record) = control(&app, "GET", "/v1/sessions/second", None).await;
    assert_eq!(record["status"], "closed", "{record}");
    assert_eq!(record["class"], "credential_invalid");
    assert_eq!(record["rule"], "slack.invalid_auth");
    let (_, wakeups) = control(&app, "GET", "/v1/sessions/second/wakeups", None).await;
    assert_eq!(wakeups["wakeups"], json!([]));
    // An open session's due wakeup is handed out, so the claim is not empty by accident.
    assert_eq!(
        control(&app, "PUT", "/v1/sessions/third", None).await.0,
        200
    );
    let (status, _) = control(
        &app,
        "POST",
        "/v1/sessions/third/wakeups",
        Some(json!({"due_ms": past, "payload": {"wake": "third"}})),
    )
    .await;
    assert_eq!(status, 201);
    let (_, claimed) = control(
        &app,
        "POST",
        "/v1/wakeups/claim",
        Some(json!({"limit": 100})),
    )
    .await;
    let claimed = claimed["wakeups"].as_array().unwrap();
    assert!(
        claimed.iter().any(|w| w["session"] == "third"),
        "{claimed:?}"
    );
    assert!(
        claimed.iter().all(|w| w["session"] != "second"),
        "{claimed:?}"
    );
    // Without the credential header the session is still closed.
    let bare = Call {
        headers: vec![],
        ..Call::new(Some("second"), "ok")
    };
    assert_eq!(make(agent, &bare).await.0, SLACK_HALT);
    stop(app).await;
}

#[tokio::test]
async fn a_blocked_credential_closes_its_session_and_cancels_its_wakeups_with_redb() {
    blocked_credential_closes_its_session(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_credential_closes_its_session_and_cancels_its_wakeups_with_redis() {
    let redis = RedisServer::start();
    blocked_credential_closes_its_session(Some(redis.url())).await;
}

#[tokio::test]
async fn a_zero_byte_store_file_stops_the_start_with_a_clear_error() {
    let upstream = start_upstream(slack_upstream()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    std::fs::write(&path, b"").unwrap();
    let mut flags: Overrides = proxy_flags(&[("slack", upstream.http_url())]);
    flags.store = Some(format!("redb:{}", path.display()));
    flags.outbox = Some(dir.path().join("outbox.redb"));
    flags.local_copy = Some(dir.path().join("local.redb"));
    let config = Config::resolve(ConfigSpec::default(), flags, "test").unwrap();
    let error = match App::start(config).await {
        Ok(_) => panic!("a 0-byte store must not start"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains(&path.display().to_string()), "{error}");
    assert!(error.contains("empty"), "{error}");
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        0,
        "the file is left as it was"
    );
}
