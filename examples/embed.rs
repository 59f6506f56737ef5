//! Embedding haltgate's inspection in your own tower stack.
//!
//! Your service does the upstream call (here a stand-in that answers like Slack does for a
//! bot removed from a channel); `HaltLayer` inspects each response with the shipped Slack
//! rules and calls your hooks on a match. These hooks halt without any session store.
//!
//! To try this:
//! 1. `cargo run --example embed` from the repository root (it reads `rules/`).
//! 2. Read the two printed answers: the first call passes, the second halts.

use std::sync::Arc;

use haltgate::body::{self, ProxyBody};
use haltgate::halt::{
    BoxFuture, HaltLayer, Matched, Outcome, ScopeUnavailable, SessionHeader, SessionHooks,
};
use haltgate::rules::RuleSet;
use http::{Request, Response};
use http_body_util::BodyExt;
use tower::{BoxError, ServiceBuilder, ServiceExt};

/// Halts on every decisive match and prints it; a real deployment closes the session here.
struct PrintAndHalt;

impl SessionHooks for PrintAndHalt {
    fn scope(
        &self,
        _session: &SessionHeader,
    ) -> BoxFuture<'static, Result<Option<serde_json::Value>, ScopeUnavailable>> {
        Box::pin(async { Ok(Some(serde_json::json!({ "slack_channel": "C0123ABCD" }))) })
    }

    fn on_match(&self, matched: Matched) -> BoxFuture<'static, Outcome> {
        println!(
            "hook: {} by {:?}",
            matched.decision.class, matched.decision.rule
        );
        let halt = matched.halt_response();
        Box::pin(async move { Outcome::Halt(halt) })
    }
}

/// Stands in for your own upstream client.
async fn slack(request: Request<ProxyBody>) -> Result<Response<ProxyBody>, BoxError> {
    // Like a real client, send the whole request body; the layer keeps a copy of its start
    // for rules that compare request fields.
    let (parts, body) = request.into_parts();
    body.collect().await?;
    let text = if parts.uri.path().ends_with("auth.test") {
        r#"{"ok":true,"user":"agent"}"#
    } else {
        r#"{"ok":false,"error":"not_in_channel"}"#
    };
    let mut response = Response::new(body::full(text));
    response
        .headers_mut()
        .insert("content-type", "application/json".parse()?);
    Ok::<_, BoxError>(response)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let rules = RuleSet::load_dir("rules".as_ref()).map_err(|e| e.to_string())?;
    let layer = HaltLayer::for_provider("slack", rules).with_hooks(Arc::new(PrintAndHalt));
    let service = ServiceBuilder::new()
        .layer(layer)
        .service(tower::service_fn(slack));

    for (path, body) in [
        ("/api/auth.test", ""),
        (
            "/api/chat.postMessage",
            r#"{"channel":"C0123ABCD","text":"hello"}"#,
        ),
    ] {
        let request = Request::post(path)
            .header(haltgate::headers::SESSION, "demo-session")
            .header("content-type", "application/json")
            .body(body::full(body))?;
        let response = service.clone().oneshot(request).await?;
        let status = response.status();
        let text = response.into_body().collect().await?.to_bytes();
        println!("{path}: {status} {}", String::from_utf8_lossy(&text));
    }
    Ok(())
}
