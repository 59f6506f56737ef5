//! Session state end to end: rule matches through the proxy close sessions, cancel wakeups,
//! block credentials and reset resume ids, with redb and with real Redis servers.

mod support;

use std::time::{Duration, Instant};

use haltgate::body;
use http::Request;
use serde_json::{json, Value};
use support::redis_server::RedisServer;
use support::*;

fn post_message(
    proxy: &TestProxy,
    session: &str,
    epoch: Option<u64>,
    mode: &str,
    token: &str,
) -> Request<haltgate::body::ProxyBody> {
    let mut builder = Request::post(format!(
        "http://{}/slack/api/chat.postMessage?mode={mode}",
        proxy.agent_addr()
    ))
    .header("content-type", "application/json; charset=utf-8")
    .header("authorization", format!("Bearer {token}"))
    .header("x-haltgate-session", session);
    if let Some(epoch) = epoch {
        builder = builder.header("x-haltgate-epoch", epoch.to_string());
    }
    builder
        .body(body::full(
            json!({"channel": CHANNEL, "text": "hello"}).to_string(),
        ))
        .unwrap()
}

async fn control_raw(proxy: &TestProxy, method: &str, path: &str, body: &str) -> u16 {
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", proxy.control_addr()))
        .header("content-type", "application/json")
        .body(haltgate::body::full(body.to_owned()))
        .unwrap();
    client().request(request).await.unwrap().status().as_u16()
}

async fn slack_proxy(upstream: &Upstream, store: Option<String>) -> TestProxy {
    let mut flags = proxy_flags(&[("slack", upstream.http_url())]);
    flags.store = store;
    let proxy = start_proxy(flags).await;
    wait_ready(&proxy).await;
    proxy
}

#[tokio::test]
async fn not_in_channel_closes_the_session_cancels_wakeups_and_halts_every_later_call() {
    let upstream = start_upstream(slack_upstream()).await;
    let proxy = slack_proxy(&upstream, None).await;
    open_session(&proxy, "s1").await;
    open_session(&proxy, "s2").await;
    let past = haltgate::session::unix_ms_now() - 1_000;
    for (session, due) in [("s1", past), ("s1", past + 10), ("s2", past)] {
        let (status, _) = control(
            &proxy,
            "POST",
            &format!("/v1/sessions/{session}/wakeups"),
            Some(json!({"due_ms": due, "payload": {"wake": session}})),
        )
        .await;
        assert_eq!(status, 201);
    }

    // Transient and look-alike answers change nothing.
    let (status, _, _) = send(post_message(
        &proxy,
        "s1",
        None,
        "ratelimit",
        "xoxb-REDACTED",
    ))
    .await;
    assert_eq!(status, 429);
    let (status, _, body) = send(post_message(&proxy, "s1", None, "quote", "xoxb-REDACTED")).await;
    assert_eq!(status, 200);
    assert_eq!(body["ok"], true);
    let (_, record) = control(&proxy, "GET", "/v1/sessions/s1", None).await;
    assert_eq!(record["status"], "open");
    let (_, wakeups) = control(&proxy, "GET", "/v1/sessions/s1/wakeups", None).await;
    assert_eq!(wakeups["wakeups"].as_array().unwrap().len(), 2);

    // The bot was kicked: the first occurrence halts.
    let (status, headers, body) =
        send(post_message(&proxy, "s1", None, "kick", "xoxb-REDACTED")).await;
    assert_eq!(status, SLACK_HALT);
    assert_eq!(headers["x-haltgate-halt"], "lost_access");
    assert_eq!(headers["x-haltgate-rule"], "slack.not_in_channel");
    assert_eq!(body["haltgate"]["class"], "lost_access");
    assert_eq!(body["haltgate"]["rule"], "slack.not_in_channel");
    assert_eq!(body["haltgate"]["session"], "s1");
    assert_eq!(body["haltgate"]["epoch"], 0);
    assert_eq!(body["haltgate"]["upstream_status"], 200);
    assert!(body["haltgate"]["message"]
        .as_str()
        .unwrap()
        .contains("Do not retry"));

    let (_, record) = control(&proxy, "GET", "/v1/sessions/s1", None).await;
    assert_eq!(record["status"], "closed");
    assert_eq!(record["class"], "lost_access");
    assert_eq!(record["rule"], "slack.not_in_channel");
    assert_eq!(record["upstream_status"], 200);
    assert!(record["closed_at"].as_u64().is_some());
    let (_, wakeups) = control(&proxy, "GET", "/v1/sessions/s1/wakeups", None).await;
    assert_eq!(wakeups["wakeups"], json!([]));
    let (status, _) = control(
        &proxy,
        "POST",
        "/v1/sessions/s1/wakeups",
        Some(json!({"due_ms": past, "payload": {}})),
    )
    .await;
    assert_eq!(status, 409);

    // The next 1,000 calls of the session never reach Slack.
    let hits = upstream.hits();
    for _ in 0..1000 {
        let (status, headers, _) =
            send(post_message(&proxy, "s1", None, "ok", "xoxb-REDACTED")).await;
        assert_eq!(status, SLACK_HALT);
        assert_eq!(headers["x-haltgate-halt"], "lost_access");
    }
    assert_eq!(upstream.hits(), hits);

    // Another session is unaffected, and only its wakeup is handed out.
    let (status, _, _) = send(post_message(&proxy, "s2", None, "ok", "xoxb-REDACTED")).await;
    assert_eq!(status, 200);
    assert_eq!(upstream.hits(), hits + 1);
    let (status, claimed) = control(
        &proxy,
        "POST",
        "/v1/wakeups/claim",
        Some(json!({"limit": 10})),
    )
    .await;
    assert_eq!(status, 200);
    let claimed = claimed["wakeups"].as_array().unwrap().clone();
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    assert_eq!(claimed[0]["session"], "s2");
    assert_eq!(claimed[0]["payload"], json!({"wake": "s2"}));
    let (_, again) = control(
        &proxy,
        "POST",
        "/v1/wakeups/claim",
        Some(json!({"limit": 10})),
    )
    .await;
    assert_eq!(again["wakeups"], json!([]));
}

#[tokio::test]
async fn a_closure_holds_across_a_restart() {
    let upstream = start_upstream(slack_upstream()).await;
    let proxy = slack_proxy(&upstream, None).await;
    open_session(&proxy, "r1").await;
    let (status, _, _) = send(post_message(&proxy, "r1", None, "kick", "xoxb-REDACTED")).await;
    assert_eq!(status, SLACK_HALT);
    let dir = proxy.stop().await;

    let proxy = start_proxy_in(proxy_flags(&[("slack", upstream.http_url())]), dir).await;
    wait_ready(&proxy).await;
    let hits = upstream.hits();
    let (status, headers, _) = send(post_message(&proxy, "r1", None, "ok", "xoxb-REDACTED")).await;
    assert_eq!(status, SLACK_HALT);
    assert_eq!(headers["x-haltgate-rule"], "slack.not_in_channel");
    assert_eq!(upstream.hits(), hits);
}

#[tokio::test]
async fn a_stale_generation_cannot_close_a_reopened_session() {
    let (release, held) = tokio::sync::watch::channel(false);
    let upstream = start_upstream(slack_upstream_held(held)).await;
    let proxy = slack_proxy(&upstream, None).await;
    open_session(&proxy, "f1").await;
    let (status, _) = control(
        &proxy,
        "POST",
        "/v1/sessions/f1/close",
        Some(json!({"reason": "rotate"})),
    )
    .await;
    assert_eq!(status, 200);
    let record = open_session(&proxy, "f1").await;
    assert_eq!(record["epoch"], 1);

    // A request of epoch 1 is in flight while the platform rotates the session to epoch 2.
    let in_flight = tokio::spawn(send(post_message(
        &proxy,
        "f1",
        Some(1),
        "held_kick",
        "xoxb-REDACTED",
    )));
    while upstream.hits() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, _) = control(
        &proxy,
        "POST",
        "/v1/sessions/f1/close",
        Some(json!({"reason": "rotate", "epoch": 1})),
    )
    .await;
    assert_eq!(status, 200);
    let record = open_session(&proxy, "f1").await;
    assert_eq!(record["epoch"], 2);
    // Only now does the epoch-1 request get its lost-access answer.
    release.send_replace(true);
    let (status, _, _) = in_flight.await.unwrap();
    assert_eq!(status, SLACK_HALT, "the stale request itself still halts");

    let (_, record) = control(&proxy, "GET", "/v1/sessions/f1", None).await;
    assert_eq!(record["status"], "open");
    assert_eq!(record["epoch"], 2);
    let (status, _, _) = send(post_message(&proxy, "f1", Some(2), "ok", "xoxb-REDACTED")).await;
    assert_eq!(status, 200);
    let (status, _, _) = send(post_message(&proxy, "f1", None, "ok", "xoxb-REDACTED")).await;
    assert_eq!(status, 200);
    let (status, _, _) = send(post_message(&proxy, "f1", Some(1), "ok", "xoxb-REDACTED")).await;
    assert_eq!(status, SLACK_HALT, "epoch 1 is over");
}

#[tokio::test]
async fn a_request_without_an_epoch_admitted_before_a_reopen_does_not_close_the_new_generation() {
    let (release, held) = tokio::sync::watch::channel(false);
    let upstream = start_upstream(slack_upstream_held(held)).await;
    let proxy = slack_proxy(&upstream, None).await;
    open_session(&proxy, "f2").await;
    // Admitted at epoch 0, answered only after the session was closed and reopened at 1.
    let in_flight = tokio::spawn(send(post_message(
        &proxy,
        "f2",
        None,
        "held_kick",
        "xoxb-REDACTED",
    )));
    while upstream.hits() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, _) = control(
        &proxy,
        "POST",
        "/v1/sessions/f2/close",
        Some(json!({"reason": "rotate"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(open_session(&proxy, "f2").await["epoch"], 1);
    release.send_replace(true);
    let (status, _, _) = in_flight.await.unwrap();
    assert_eq!(status, SLACK_HALT, "the stale request itself still halts");

    let (_, record) = control(&proxy, "GET", "/v1/sessions/f2", None).await;
    assert_eq!(
        (record["status"].as_str(), record["epoch"].as_u64()),
        (Some("open"), Some(1))
    );
    let (status, _, _) = send(post_message(&proxy, "f2", None, "ok", "xoxb-REDACTED")).await;
    assert_eq!(
        status, 200,
        "this instance does not halt the reopened generation"
    );
}

#[tokio::test]
async fn an_invalid_credential_is_blocked_for_every_session_until_unblocked() {
    let upstream = start_upstream(slack_upstream()).await;
    let proxy = slack_proxy(&upstream, None).await;
    let (status, headers, _) = send(post_message(
        &proxy,
        "c1",
        None,
        "invalid_auth",
        "xoxb-REVOKED",
    ))
    .await;
    assert_eq!(status, SLACK_HALT);
    assert_eq!(headers["x-haltgate-halt"], "credential_invalid");

    let hits = upstream.hits();
    let (status, headers, _) = send(post_message(&proxy, "c2", None, "ok", "xoxb-REVOKED")).await;
    assert_eq!(status, SLACK_HALT);
    assert_eq!(headers["x-haltgate-halt"], "credential_invalid");
    assert_eq!(upstream.hits(), hits);
    let (status, _, _) = send(post_message(&proxy, "c3", None, "ok", "xoxb-OTHER")).await;
    assert_eq!(status, 200);
    let (_, record) = control(&proxy, "GET", "/v1/sessions/c2", None).await;
    assert_eq!(
        record["status"], "closed",
        "a session using a blocked credential is closed"
    );
    assert_eq!(record["rule"], "slack.invalid_auth");

    let (_, listed) = control(&proxy, "GET", "/v1/credentials", None).await;
    let listed = listed["credentials"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 1);
    let fingerprint = listed[0]["fingerprint"].as_str().unwrap().to_owned();
    assert!(!fingerprint.contains("REVOKED"));
    let (status, _) = control(
        &proxy,
        "DELETE",
        &format!("/v1/credentials/{fingerprint}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    for attempt in 0.. {
        // A session that used the token while it was still blocked is closed: each try
        // is a new session.
        let session = format!("c4-{attempt}");
        let (status, _, _) = send(post_message(&proxy, &session, None, "ok", "xoxb-REVOKED")).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "unblock never took effect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, record) = control(&proxy, "GET", "/v1/sessions/c1", None).await;
    assert_eq!(record["status"], "closed");
    assert_eq!(record["class"], "credential_invalid");
}

#[tokio::test]
async fn a_stale_mcp_session_resets_resume_and_passes_the_response_through() {
    let upstream = start_upstream(handler(|seen: Seen| async move {
        if seen.headers.contains_key("mcp-session-id") {
            let mut r = json(404, json!({"jsonrpc": "2.0", "error": {"code": -32001, "message": "Session not found"}, "id": null}));
            r.headers_mut().remove("content-type");
            r
        } else {
            json(200, json!({"jsonrpc": "2.0", "result": {}, "id": 1}))
        }
    }))
    .await;
    let mut flags = proxy_flags(&[("mcp", upstream.http_url())]);
    flags.store = None;
    let proxy = start_proxy(flags).await;
    wait_ready(&proxy).await;
    let (status, record) = control(
        &proxy,
        "PUT",
        "/v1/sessions/m1",
        Some(json!({"resume": "conv-123"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(record["resume"], "conv-123");

    let request = Request::post(format!("http://{}/mcp/mcp", proxy.agent_addr()))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", "stale-session-1")
        .header("x-haltgate-session", "m1")
        .body(body::full(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        ))
        .unwrap();
    let (status, headers, body) = send(request).await;
    assert_eq!(status, 404);
    assert_eq!(headers["x-haltgate-action"], "reset");
    assert_eq!(body["error"]["code"], -32001);
    let (_, record) = control(&proxy, "GET", "/v1/sessions/m1", None).await;
    assert_eq!(record["status"], "open");
    assert_eq!(record["resume"], Value::Null);
}

#[tokio::test]
async fn the_control_api_rejects_bad_input_and_changes_nothing() {
    let upstream = start_upstream(slack_upstream()).await;
    let proxy = slack_proxy(&upstream, None).await;
    assert_eq!(
        control_raw(&proxy, "PUT", "/v1/sessions/x1", "{not json").await,
        400
    );
    assert_eq!(
        control_raw(
            &proxy,
            "PUT",
            "/v1/sessions/x1",
            r#"{"scope": {}, "colour": 1}"#
        )
        .await,
        400
    );
    assert_eq!(
        control_raw(&proxy, "PUT", "/v1/sessions/x1", r#"{"scope": [1]}"#).await,
        400
    );
    let long = "a".repeat(300);
    assert_eq!(
        control_raw(&proxy, "PUT", &format!("/v1/sessions/{long}"), "{}").await,
        400
    );
    assert_eq!(
        control_raw(&proxy, "POST", "/v1/sessions/x1/close", r#"{"why": "x"}"#).await,
        400
    );
    assert_eq!(
        control_raw(
            &proxy,
            "POST",
            "/v1/sessions/x1/wakeups",
            r#"{"due_ms": "soon"}"#
        )
        .await,
        400
    );
    assert_eq!(
        control_raw(&proxy, "POST", "/v1/wakeups/claim", r#"{"limit": 0}"#).await,
        400
    );
    assert_eq!(
        control_raw(&proxy, "DELETE", "/v1/credentials/not-a-fingerprint", "").await,
        400
    );
    let (status, _) = control(&proxy, "GET", "/v1/sessions/x1", None).await;
    assert_eq!(status, 404, "nothing was created");

    // A malformed session header is the agent's error, answered by the proxy itself.
    let request = Request::get(format!("http://{}/slack/api/auth.test", proxy.agent_addr()))
        .header("x-haltgate-session", "has space")
        .body(body::empty())
        .unwrap();
    let (status, _, _) = send(request).await;
    assert_eq!(status, 400);
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn a_closure_on_one_instance_short_circuits_on_another_sharing_redis() {
    let redis = RedisServer::start();
    let upstream = start_upstream(slack_upstream()).await;
    // 200 closures in a few seconds is what the storm breaker stops; this measures propagation.
    let unbroken = || {
        let mut flags = proxy_flags(&[("slack", upstream.http_url())]);
        flags.store = Some(redis.url());
        flags.storm_max_closures_per_minute = Some(0);
        flags
    };
    let a = start_proxy(unbroken()).await;
    let b = start_proxy(unbroken()).await;
    wait_ready(&a).await;
    wait_ready(&b).await;

    let trials = 200;
    let mut delays = Vec::with_capacity(trials);
    let mut from_request = Vec::with_capacity(trials);
    for i in 0..trials {
        let id = format!("x{i}");
        let sent_at = Instant::now();
        let (status, _, _) = send(post_message(&a, &id, None, "kick", "xoxb-REDACTED")).await;
        assert_eq!(status, SLACK_HALT);
        let closed_at = Instant::now();
        let session = haltgate::session::SessionId::parse(&id).unwrap();
        loop {
            if b.gate().closed().check(&session, None).is_some() {
                break;
            }
            assert!(
                closed_at.elapsed() < Duration::from_secs(5),
                "instance B never learned of {id}"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        delays.push(closed_at.elapsed());
        from_request.push(sent_at.elapsed());
    }
    delays.sort();
    from_request.sort();
    println!(
        "from the halting request's start: p50 {:?}, p99 {:?}",
        from_request[trials / 2],
        from_request[trials * 99 / 100]
    );
    let p50 = delays[trials / 2];
    let p99 = delays[trials * 99 / 100];
    println!(
        "cross-instance closure delay over {trials} trials: p50 {p50:?}, p99 {p99:?}, max {:?}",
        delays[trials - 1]
    );
    assert!(p99 <= Duration::from_millis(100), "p99 {p99:?}");

    // B short-circuits without calling upstream.
    let hits = upstream.hits();
    let (status, headers, _) = send(post_message(&b, "x0", None, "ok", "xoxb-REDACTED")).await;
    assert_eq!(status, SLACK_HALT);
    // x0 has no scope: the write to a channel that is gone for the bot decides.
    assert_eq!(headers["x-haltgate-rule"], "slack.write_to_gone_channel");
    assert_eq!(upstream.hits(), hits);
}

#[tokio::test]
async fn a_closure_while_redis_is_down_halts_at_once_and_lands_when_redis_returns() {
    let mut redis = RedisServer::start();
    let upstream = start_upstream(slack_upstream()).await;
    let proxy = slack_proxy(&upstream, Some(redis.url())).await;
    open_session(&proxy, "d1").await;

    redis.kill();
    // Rules that compare with the session scope cannot decide while it cannot be read; a
    // revoked token needs no scope.
    let (status, _, body) = send(post_message(&proxy, "d1", None, "kick", "xoxb-REDACTED")).await;
    assert_eq!(
        status, 200,
        "unknown scope: passed unchanged, nothing closed"
    );
    assert_eq!(body["error"], "not_in_channel");
    let started = Instant::now();
    let (status, headers, _) = send(post_message(
        &proxy,
        "d1",
        None,
        "invalid_auth",
        "xoxb-REDACTED",
    ))
    .await;
    assert_eq!(status, SLACK_HALT);
    assert_eq!(headers["x-haltgate-halt"], "credential_invalid");
    println!("halt while Redis is down took {:?}", started.elapsed());
    let hits = upstream.hits();
    let (status, _, _) = send(post_message(&proxy, "d1", None, "ok", "xoxb-REDACTED")).await;
    assert_eq!(status, SLACK_HALT, "halted locally while Redis is down");
    assert_eq!(upstream.hits(), hits);
    let outbox = proxy.gate().outbox().unwrap();
    assert_eq!(outbox.pending().await.unwrap().len(), 1, "the closure");
    assert_eq!(
        outbox.pending_blocks().await.unwrap().len(),
        1,
        "the credential block"
    );

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, record) = control(&proxy, "GET", "/v1/sessions/d1", None).await;
        if status == 200 && record["status"] == "closed" {
            assert_eq!(record["rule"], "slack.invalid_auth");
            assert_eq!(record["class"], "credential_invalid");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "closure never reached Redis: {status} {record}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.gate().outbox().unwrap().len().await.unwrap() != 0 {
        assert!(Instant::now() < deadline, "outbox not drained");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, listed) = control(&proxy, "GET", "/v1/credentials", None).await;
    assert_eq!(
        listed["credentials"].as_array().unwrap().len(),
        1,
        "the queued block reached Redis"
    );
}

#[tokio::test]
async fn a_stale_resume_inside_an_event_stream_resets_resume_and_streams_on() {
    let case: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/rules/tests/anthropic/resume_session_not_found_sse.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let stream = case["response"]["body"].as_str().unwrap().to_owned();
    let sent = stream.clone();
    let upstream = start_upstream(handler(move |_seen: Seen| {
        let sent = sent.clone();
        async move {
            let mut r = http::Response::new(body::full(sent));
            r.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            r
        }
    }))
    .await;
    let proxy = start_proxy(proxy_flags(&[("anthropic", upstream.http_url())])).await;
    wait_ready(&proxy).await;
    let (status, _) = control(
        &proxy,
        "PUT",
        "/v1/sessions/a1",
        Some(json!({"resume": "3f6d2a9e-8b41-4c7a-9e15-0d2c7b4a6e83"})),
    )
    .await;
    assert_eq!(status, 200);

    let request = Request::post(format!("http://{}/anthropic/v1/query", proxy.agent_addr()))
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-ant-REDACTED")
        .header("x-haltgate-session", "a1")
        .body(body::full(match &case["request"]["body"] {
            Value::String(text) => text.clone(),
            structured => structured.to_string(),
        }))
        .unwrap();
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        read_body(response).await,
        stream.as_bytes(),
        "the stream reaches the agent intact"
    );

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, record) = control(&proxy, "GET", "/v1/sessions/a1", None).await;
        assert_eq!(record["status"], "open");
        if record["resume"].is_null() {
            break;
        }
        assert!(Instant::now() < deadline, "resume never reset: {record}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
