//! The storm breaker through the proxy: a Slack outage that answers `invalid_auth` to every
//! credential closes at most the configured number of sessions; later matches pass through as
//! shadow until the cool-down ends or an operator resets the breaker.

mod support;

use std::time::Duration;

use haltgate::body;
use http::Request;
use serde_json::{json, Value};
use support::*;

const LIMIT: u32 = 3;

fn post_message(proxy: &TestProxy, session: &str) -> Request<haltgate::body::ProxyBody> {
    Request::post(format!(
        "http://{}/slack/api/chat.postMessage?mode=invalid_auth",
        proxy.agent_addr()
    ))
    .header("content-type", "application/json; charset=utf-8")
    .header("authorization", format!("Bearer xoxb-REDACTED-{session}"))
    .header("x-haltgate-session", session)
    .body(body::full(
        json!({"channel": CHANNEL, "text": "hello"}).to_string(),
    ))
    .unwrap()
}

async fn storm_proxy(upstream: &Upstream, cool_down: &str) -> TestProxy {
    let mut flags = proxy_flags(&[("slack", upstream.http_url())]);
    flags.storm_max_closures_per_minute = Some(LIMIT);
    flags.storm_cool_down = Some(cool_down.to_owned());
    let proxy = start_proxy(flags).await;
    wait_ready(&proxy).await;
    proxy
}

/// Sends one outage answer for a fresh session; whether it was halted, and the session status.
async fn call(proxy: &TestProxy, session: &str) -> (bool, Value, Value) {
    open_session(proxy, session).await;
    let (_, headers, body) = send(post_message(proxy, session)).await;
    let (_, record) = control(proxy, "GET", &format!("/v1/sessions/{session}"), None).await;
    (
        headers.contains_key("x-haltgate-halt"),
        body,
        record["status"].clone(),
    )
}

async fn metric(proxy: &TestProxy, name: &str) -> f64 {
    let response = client()
        .request(get(&format!("http://{}/metrics", proxy.control_addr())))
        .await
        .unwrap();
    let text = String::from_utf8(read_body(response).await.to_vec()).unwrap();
    text.lines()
        .find(|line| line.starts_with(&format!("{name}{{")) && line.contains("provider=\"slack\""))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("{name} is exported for slack:\n{text}"))
}

#[tokio::test]
async fn an_outage_closes_at_most_the_limit_then_passes_as_shadow_until_reset() {
    let upstream = start_upstream(slack_upstream()).await;
    let proxy = storm_proxy(&upstream, "10m").await;

    for i in 0..LIMIT {
        let (halted, _, status) = call(&proxy, &format!("s{i}")).await;
        assert!(halted, "closure {i} is within the limit");
        assert_eq!(status, "closed");
    }
    assert_eq!(metric(&proxy, "haltgate_storm_breaker_open").await, 0.0);
    for i in LIMIT..LIMIT + 3 {
        let (halted, body, status) = call(&proxy, &format!("s{i}")).await;
        assert!(!halted, "session {i} passes while the breaker is open");
        assert_eq!(
            body["error"], "invalid_auth",
            "the agent gets the provider's answer"
        );
        assert_eq!(status, "open");
    }
    assert_eq!(upstream.hits(), (LIMIT + 3) as usize);
    assert_eq!(metric(&proxy, "haltgate_storm_breaker_open").await, 1.0);
    assert_eq!(
        metric(&proxy, "haltgate_storm_breaker_trips_total").await,
        1.0
    );
    assert_eq!(
        metric(&proxy, "haltgate_storm_breaker_shadowed_total").await,
        3.0
    );
    let (_, stats) = control(&proxy, "GET", "/v1/stats", None).await;
    assert_eq!(
        stats["storm"]["providers"]["slack"]["open"], true,
        "{stats}"
    );
    let ready = client()
        .request(get(&format!("http://{}/readyz", proxy.control_addr())))
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        200,
        "an open breaker does not fail readiness"
    );
    let ready: Value = serde_json::from_slice(&read_body(ready).await).unwrap();
    assert_eq!(ready["storm"]["providers"]["slack"]["open"], true);

    // The operator command resets it through the control API.
    let operator =
        haltgate::operator::ControlClient::new(&format!("http://{}", proxy.control_addr()), None)
            .unwrap();
    let mut printed = Vec::new();
    haltgate::operator::run(
        &operator,
        haltgate::operator::Operation::StormStatus,
        false,
        &mut printed,
    )
    .await
    .unwrap();
    let printed = String::from_utf8(printed).unwrap();
    assert!(printed.contains("slack  OPEN"), "{printed}");
    let mut printed = Vec::new();
    haltgate::operator::run(
        &operator,
        haltgate::operator::Operation::StormReset("slack".into()),
        true,
        &mut printed,
    )
    .await
    .unwrap();
    let answer: Value = serde_json::from_slice(&printed).unwrap();
    assert_eq!(answer["was_open"], true, "{answer}");
    assert_eq!(metric(&proxy, "haltgate_storm_breaker_open").await, 0.0);
    let (halted, _, status) = call(&proxy, "after-reset").await;
    assert!(halted, "halting resumes after the reset");
    assert_eq!(status, "closed");
    let (status, _) = control(&proxy, "POST", "/v1/storm/slack/nonsense", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn halting_resumes_after_the_cool_down() {
    let upstream = start_upstream(slack_upstream()).await;
    let proxy = storm_proxy(&upstream, "1s").await;
    for i in 0..LIMIT {
        assert!(call(&proxy, &format!("s{i}")).await.0);
    }
    assert!(!call(&proxy, "shadowed").await.0);
    eventually("the breaker closes", Duration::from_secs(5), async || {
        metric(&proxy, "haltgate_storm_breaker_open").await == 0.0
    })
    .await;
    let (halted, _, status) = call(&proxy, "after-cool-down").await;
    assert!(halted);
    assert_eq!(status, "closed");
}

/// One bot token removed from every session's channel is one credential, not an outage:
/// every session that used it closes, however many there are, and the breaker stays shut.
#[tokio::test]
async fn one_credential_closing_many_sessions_never_trips_the_breaker() {
    let upstream = start_upstream(slack_upstream()).await;
    let proxy = storm_proxy(&upstream, "10m").await;

    for i in 0..LIMIT * 3 {
        let session = format!("kicked-{i}");
        open_session(&proxy, &session).await;
        let request = Request::post(format!(
            "http://{}/slack/api/chat.postMessage?mode=kick",
            proxy.agent_addr()
        ))
        .header("content-type", "application/json; charset=utf-8")
        .header("authorization", "Bearer xoxb-REDACTED-one-bot")
        .header("x-haltgate-session", &session)
        .body(body::full(
            json!({"channel": CHANNEL, "text": "hello"}).to_string(),
        ))
        .unwrap();
        let (_, headers, _) = send(request).await;
        assert_eq!(headers["x-haltgate-halt"], "lost_access", "session {i}");
        let (_, record) = control(&proxy, "GET", &format!("/v1/sessions/{session}"), None).await;
        assert_eq!(record["status"], "closed", "session {i}");
    }
    assert_eq!(metric(&proxy, "haltgate_storm_breaker_open").await, 0.0);
    assert_eq!(
        metric(&proxy, "haltgate_storm_breaker_trips_total").await,
        0.0
    );
}
