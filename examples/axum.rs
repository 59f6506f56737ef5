//! An axum application whose outbound provider calls go through `HaltLayer`.
//!
//! The application's handler posts to Slack through a hyper-util client wrapped in
//! `ServiceBuilder::new().layer(HaltLayer::for_provider("slack", ..))`. Here "Slack" is a local
//! fake on port 0 that answers like Slack does for a bot removed from the channel, so the
//! layer answers the handler with a halt instead of the upstream's `not_in_channel`.
//!
//! To try this: `cargo run --example axum` from the repository root (it reads `rules/`); it
//! exits 0 once the halt came back. `cargo test` runs the same steps.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use haltgate::body::{self, BoxError, ProxyBody};
use haltgate::halt::{
    BoxFuture, FixedProvider, Halt, HaltLayer, Matched, Outcome, ScopeUnavailable, SessionHeader,
    SessionHooks,
};
use haltgate::rules::RuleSet;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};

/// The session this application acts in, and its Slack channel.
const SESSION: &str = "demo-session";
const CHANNEL: &str = "C0123ABCD";

/// Halts on every decisive match; a real deployment closes the session here too.
struct HaltOnMatch;

impl SessionHooks for HaltOnMatch {
    fn scope(
        &self,
        _session: &SessionHeader,
    ) -> BoxFuture<'static, Result<Option<serde_json::Value>, ScopeUnavailable>> {
        Box::pin(async { Ok(Some(serde_json::json!({ "slack_channel": CHANNEL }))) })
    }

    fn on_match(&self, matched: Matched) -> BoxFuture<'static, Outcome> {
        let halt = matched.halt_response();
        Box::pin(async move { Outcome::Halt(halt) })
    }
}

/// The outbound client: hyper-util's pooled client behind the halt layer.
type Outbound = Halt<Client<HttpConnector, ProxyBody>, FixedProvider>;

#[derive(Clone)]
struct AppState {
    slack: Outbound,
    slack_base: String,
}

/// `POST /notify`: posts the given text to the session's channel and reports what came back.
async fn notify(
    State(state): State<AppState>,
    Json(text): Json<String>,
) -> Result<Response<ProxyBody>, (StatusCode, String)> {
    let message = serde_json::json!({ "channel": CHANNEL, "text": text });
    let request = Request::post(format!("{}/api/chat.postMessage", state.slack_base))
        .header(haltgate::headers::SESSION, SESSION)
        .header("content-type", "application/json")
        .body(body::full(message.to_string()))
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    send(state.slack, request)
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))
}

/// The call as a boxed `Send` future, made outside the handler's `async fn`: rustc cannot yet
/// prove such a handler `Send` when it awaits a future whose types hold a `Box<dyn Error>`,
/// and axum needs it to be.
fn send(
    slack: Outbound,
    request: Request<ProxyBody>,
) -> BoxFuture<'static, Result<Response<ProxyBody>, BoxError>> {
    Box::pin(slack.oneshot(request))
}

/// Stands in for slack.com: the bot was removed from every channel.
async fn fake_slack() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "ok": false, "error": "not_in_channel" }))
}

async fn serve(router: Router) -> Result<SocketAddr, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(addr)
}

/// Starts the fake provider and the application, calls `/notify` once, and returns the
/// status and body the application answered.
async fn run() -> Result<(StatusCode, serde_json::Value), BoxError> {
    let rules_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let rules = RuleSet::load_dir(&rules_dir).map_err(|e| e.to_string())?;

    let slack = serve(Router::new().route("/api/chat.postMessage", post(fake_slack))).await?;
    let client = Client::builder(TokioExecutor::new()).build_http::<ProxyBody>();
    let outbound = ServiceBuilder::new()
        .layer(HaltLayer::for_provider("slack", rules).with_hooks(Arc::new(HaltOnMatch)))
        .service(client);
    let state = AppState {
        slack: outbound,
        slack_base: format!("http://{slack}"),
    };
    let app = serve(
        Router::new()
            .route("/notify", post(notify))
            .with_state(state),
    )
    .await?;

    let caller = Client::builder(TokioExecutor::new()).build_http::<ProxyBody>();
    let request = Request::post(format!("http://{app}/notify"))
        .header("content-type", "application/json")
        .body(body::full("\"hello\""))?;
    let response = caller.request(request).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok((status, serde_json::from_slice(&bytes)?))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let (status, body) = run().await?;
    println!("/notify answered {status}: {body}");
    // Slack's dialect: HTTP 200 with `ok: false`, the halt's fields under `haltgate`.
    if body["ok"] != false || body["haltgate"]["rule"] != "slack.not_in_channel" {
        return Err("expected the halt for slack.not_in_channel".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_outbound_call_comes_back_as_a_halt() {
        let (status, body) = super::run().await.unwrap();
        // Slack SDKs raise `ok: false` at once and never retry it.
        assert_eq!(status, http::StatusCode::OK);
        assert_eq!(body["ok"], false);
        assert_eq!(body["error"], "haltgate_lost_access");
        let halt = &body["haltgate"];
        assert_eq!(halt["halted"], true);
        assert_eq!(halt["class"], "lost_access");
        assert_eq!(halt["rule"], "slack.not_in_channel");
        assert_eq!(halt["upstream_status"], 200);
    }
}
