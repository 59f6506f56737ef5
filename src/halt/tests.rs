//! `Halt` driven by hand with a mock inner service: what it asks of the inner service and
//! what it answers. The socket-level behaviour is in `tests/proxy.rs`.

use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use tower_test::mock;

use super::*;
use crate::body::{self, ProxyBody};
use crate::rules::RuleSet;

fn shipped_rules() -> RuleSet {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    RuleSet::load_dir(&dir).unwrap_or_else(|errors| panic!("{errors}"))
}

/// The session's channel is `C1`; every decisive match halts; a session named `closed` is
/// refused before forwarding.
struct ScopedHalts;

impl SessionHooks for ScopedHalts {
    fn before_forward(&self, request: &RequestInfo<'_>) -> Admission {
        match request.session {
            Some(session) if session.id.as_str() == "closed" => {
                Admission::Refuse(Refusal::Halt(HaltResponse::session_closed(
                    crate::class::Class::LostAccess,
                    "slack.not_in_channel",
                    "closed",
                    0,
                )))
            }
            _ => Admission::Forward,
        }
    }

    fn scope(
        &self,
        _session: &SessionHeader,
    ) -> BoxFuture<'static, Result<Option<serde_json::Value>, ScopeUnavailable>> {
        Box::pin(async { Ok(Some(serde_json::json!({ "slack_channel": "C1" }))) })
    }

    fn on_match(&self, matched: Matched) -> BoxFuture<'static, Outcome> {
        let halt = matched.halt_response();
        Box::pin(async move { Outcome::Halt(halt) })
    }
}

type Inner = mock::Mock<Request<ProxyBody>, Response<ProxyBody>>;
type Handle = mock::Handle<Request<ProxyBody>, Response<ProxyBody>>;

fn slack_halt() -> (mock::Spawn<Halt<Inner, FixedProvider>>, Handle) {
    let layer = HaltLayer::for_provider("slack", shipped_rules()).with_hooks(Arc::new(ScopedHalts));
    mock::spawn_layer(layer)
}

fn post(session: &str, body: &'static str) -> Request<ProxyBody> {
    Request::post("/api/chat.postMessage")
        .header(crate::headers::SESSION, session)
        .header("content-type", "application/json")
        .body(body::full(body))
        .unwrap()
}

fn json_response(body: impl Into<Bytes>) -> Response<ProxyBody> {
    Response::builder()
        .header("content-type", "application/json")
        .body(body::full(body.into()))
        .unwrap()
}

#[tokio::test]
async fn readiness_is_the_inner_services() {
    let (mut service, mut handle) = slack_halt();
    handle.allow(0);
    assert!(service.poll_ready::<Request<ProxyBody>>().is_pending());
    handle.allow(1);
    assert!(service.is_woken());
    assert!(matches!(
        service.poll_ready::<Request<ProxyBody>>(),
        Poll::Ready(Ok(()))
    ));
    handle.send_error("inner failed");
    match service.poll_ready::<Request<ProxyBody>>() {
        Poll::Ready(Err(error)) => assert_eq!(error.to_string(), "inner failed"),
        other => panic!("expected the inner error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_closed_session_is_answered_without_calling_the_inner_service() {
    let (mut service, mut handle) = slack_halt();
    handle.allow(1);
    assert!(matches!(
        service.poll_ready::<Request<ProxyBody>>(),
        Poll::Ready(Ok(()))
    ));
    let response = service.call(post("closed", "{}")).await.unwrap();
    // Slack's dialect answers a halt with 200 and `ok: false`.
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[crate::headers::HALT], "lost_access");
    assert!(
        handle.poll_request().is_pending(),
        "nothing reached the inner service"
    );
}

#[tokio::test]
async fn bodies_pass_byte_for_byte_both_ways() {
    let (mut service, mut handle) = slack_halt();
    handle.allow(1);
    assert!(matches!(
        service.poll_ready::<Request<ProxyBody>>(),
        Poll::Ready(Ok(()))
    ));
    let sent = r#"{"channel":"C1","text":"h\u00e9llo"}"#;
    let call = tokio::spawn(service.call(post("s1", sent)));
    let (request, respond) = handle.next_request().await.unwrap();
    let forwarded = request.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(forwarded, sent.as_bytes());

    // A body in several frames, one of them empty, that no rule matches.
    let frames = ["{\"ok\":true,", "", "\"ts\":\"1.2\"}"]
        .map(|part| Ok::<_, crate::body::BoxError>(http_body::Frame::data(Bytes::from(part))));
    let streamed = StreamBody::new(futures_util::stream::iter(frames));
    let mut response = Response::new(body::boxed(streamed));
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    respond.send_response(response);
    let response = call.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(!response.headers().contains_key(crate::headers::HALT));
    let received = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(received, r#"{"ok":true,"ts":"1.2"}"#.as_bytes());
}

#[tokio::test]
async fn a_matching_response_becomes_a_halt() {
    let (mut service, mut handle) = slack_halt();
    handle.allow(1);
    assert!(matches!(
        service.poll_ready::<Request<ProxyBody>>(),
        Poll::Ready(Ok(()))
    ));
    let call = tokio::spawn(service.call(post("s1", r#"{"channel":"C1","text":"x"}"#)));
    let (request, respond) = handle.next_request().await.unwrap();
    request.into_body().collect().await.unwrap();
    respond.send_response(json_response(r#"{"ok":false,"error":"not_in_channel"}"#));
    let response = call.await.unwrap().unwrap();
    // Slack's dialect answers a halt with 200 and `ok: false`.
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[crate::headers::HALT], "lost_access");
    assert_eq!(
        response.headers()[crate::headers::RULE],
        "slack.not_in_channel"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["ok"], false);
    assert_eq!(json["haltgate"]["halted"], true);
    assert_eq!(json["haltgate"]["upstream_status"], 200);

    // Another channel's error says nothing about this session: it passes unchanged.
    handle.allow(1);
    assert!(matches!(
        service.poll_ready::<Request<ProxyBody>>(),
        Poll::Ready(Ok(()))
    ));
    let call = tokio::spawn(service.call(post("s1", r#"{"channel":"C2","text":"x"}"#)));
    let (request, respond) = handle.next_request().await.unwrap();
    request.into_body().collect().await.unwrap();
    let upstream = r#"{"ok":false,"error":"not_in_channel"}"#;
    respond.send_response(json_response(upstream));
    let response = call.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, upstream.as_bytes());
}
