//! Secrets never leak: a token planted in every place an agent puts credentials, and the
//! control token, must not show up in the binary's logs at trace level, in any answer of the
//! proxy or the control API, or in the state it writes to disk.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use haltgate::body::{self, ProxyBody};
use http::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use support::*;

const PLANTED: &str = "xoxb-REDACTED-PLANTED-1234";
const CONTROL_TOKEN: &str = "ctl-REDACTED-PLANTED-CONTROL-0001";

/// A Slack stand-in: `?mode=` picks the answer.
fn slack_upstream() -> Handler {
    handler(|seen: Seen| async move {
        let query = seen.uri.query().unwrap_or("");
        if query.contains("mode=kick") {
            json(200, json!({"ok": false, "error": "not_in_channel"}))
        } else if query.contains("mode=invalid_auth") {
            json(200, json!({"ok": false, "error": "invalid_auth"}))
        } else {
            json(200, json!({"ok": true, "channel": "C0123ABCD"}))
        }
    })
}

/// `haltgate serve` on the shipped rules, a redb store in `dir` and `routes`, logging at trace.
fn start_binary(dir: &std::path::Path, routes: &[(&str, String)]) -> BinaryProxy {
    let mut command = BinaryProxy::command(dir);
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--control-listen",
            "127.0.0.1:0",
        ])
        .arg("--rules")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/rules"))
        .arg("--store")
        .arg(format!("redb:{}", dir.join("haltgate.redb").display()))
        .env("HALTGATE_LOG", "trace")
        .env("HALTGATE_CONTROL_TOKEN", CONTROL_TOKEN);
    for (name, url) in routes {
        command.arg("--route").arg(format!("{name}={url}"));
    }
    BinaryProxy::spawn(command)
}

/// SIGTERM, then waits for the drain to finish; the whole log.
fn stop(mut server: BinaryProxy) -> String {
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    // Let the reader thread see the end of the pipe.
    std::thread::sleep(Duration::from_millis(100));
    server.log()
}

fn agent_request(agent: SocketAddr, route_path: &str, session: &str) -> Request<ProxyBody> {
    let body = json!({"channel": "C0123ABCD", "text": "hi", "token": PLANTED}).to_string();
    Request::post(format!("http://{agent}{route_path}"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {PLANTED}"))
        .header("cookie", format!("d={PLANTED}; theme=dark"))
        .header("x-api-key", PLANTED)
        .header("x-haltgate-session", session)
        .body(body::full(body))
        .unwrap()
}

/// Status line, headers and body, as one text to search.
async fn transcript(response: http::Response<hyper::body::Incoming>) -> String {
    let head = format!("{:?} {:?}\n", response.status(), response.headers());
    let body = read_body(response).await;
    head + &String::from_utf8_lossy(&body)
}

#[tokio::test]
async fn planted_tokens_never_appear_in_logs_answers_or_state() {
    let upstream = start_upstream(slack_upstream()).await;
    let dead = closed_port().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_binary(
        dir.path(),
        &[
            ("slack", upstream.http_url()),
            ("dead", format!("http://{dead}")),
        ],
    );
    let (agent, control) = server.addresses().await;
    let mut seen = String::new();
    let q = format!("token={PLANTED}");

    // HTTP/1.1: a pass, a lost-access halt, an unreachable upstream and refused paths, all
    // while the planted token is not blocked yet, so each of them is forwarded or answered on
    // its own path; the credential block comes last (below, after HTTP/2).
    for (path, session, status) in [
        (
            format!("/slack/api/chat.postMessage?mode=ok&{q}"),
            "s-pass",
            200,
        ),
        (
            format!("/slack/api/chat.postMessage?mode=kick&{q}"),
            "s-kick",
            SLACK_HALT,
        ),
        (
            format!("/slack/api/chat.postMessage?{q}"),
            "s-kick",
            SLACK_HALT,
        ),
        (format!("/dead/x?{q}"), "s-dead", 502),
        (format!("/slack/api/../admin?{q}"), "s-dots", 400),
        (format!("/nowhere/x?{q}"), "s-none", 404),
    ] {
        let response = client()
            .request(agent_request(agent, &path, session))
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{path}");
        seen += &transcript(response).await;
    }
    let (mut parts, body) = agent_request(agent, "/slack/api/x", "s1").into_parts();
    parts.headers.insert(
        "x-haltgate-session",
        format!("{PLANTED} x").parse().unwrap(),
    );
    let response = client()
        .request(Request::from_parts(parts, body))
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    seen += &transcript(response).await;
    assert!(
        seen.contains("x-haltgate-halt"),
        "the scenario halts: {seen}"
    );

    // The same over HTTP/2.
    let tcp = tokio::net::TcpStream::connect(agent).await.unwrap();
    let (mut h2, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let h2_connection = tokio::spawn(connection);
    for (path, session, status) in [
        (
            format!("/slack/api/chat.postMessage?mode=ok&{q}"),
            "s-h2",
            200,
        ),
        (
            format!("/slack/api/chat.postMessage?mode=kick&{q}"),
            "s-h2",
            SLACK_HALT,
        ),
    ] {
        let response = h2
            .send_request(agent_request(agent, &path, session))
            .await
            .unwrap();
        assert_eq!(response.status(), status, "h2 {path}");
        seen += &transcript(response).await;
    }

    // A credential block, then the blocked credential.
    for (path, session, status) in [
        (
            format!("/slack/api/chat.postMessage?mode=invalid_auth&{q}"),
            "s-auth",
            SLACK_HALT,
        ),
        (
            format!("/slack/api/chat.postMessage?mode=ok&{q}"),
            "s-other",
            SLACK_HALT,
        ),
    ] {
        let response = client()
            .request(agent_request(agent, &path, session))
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{path}");
        seen += &transcript(response).await;
    }
    assert!(seen.contains("credential_invalid"), "{seen}");

    // The control API, with a wrong token (the planted one) and the right one.
    for token in [PLANTED, CONTROL_TOKEN] {
        for path in [
            "/v1/stats",
            "/v1/credentials",
            "/v1/sessions/s-kick",
            "/v1/sessions/s-auth",
            "/v1/events",
            "/metrics",
        ] {
            let request = Request::get(format!("http://{control}{path}"))
                .header("authorization", format!("Bearer {token}"))
                .body(body::empty())
                .unwrap();
            seen += &transcript(client().request(request).await.unwrap()).await;
        }
    }
    assert!(
        seen.contains("fingerprint"),
        "the credential list was read: {seen}"
    );

    let upstream_seen = upstream.last_seen();
    assert!(
        upstream_seen.headers["authorization"]
            .to_str()
            .unwrap()
            .contains(PLANTED),
        "the token really was sent through"
    );

    drop(h2);
    h2_connection.abort();
    // Off the runtime, so connections still open can answer the drain.
    let log = tokio::task::spawn_blocking(move || stop(server))
        .await
        .unwrap();
    assert!(log.contains("TRACE"), "logs were captured at trace level");
    assert!(!log.contains(PLANTED), "planted token in the logs");
    assert!(!log.contains(CONTROL_TOKEN), "control token in the logs");
    assert!(!seen.contains(PLANTED), "planted token in an answer");
    assert!(!seen.contains(CONTROL_TOKEN), "control token in an answer");
    let state = std::fs::read(dir.path().join("haltgate.redb")).unwrap();
    let state = String::from_utf8_lossy(&state);
    assert!(state.contains("s-kick"), "the closure was stored");
    assert!(
        !state.contains(PLANTED),
        "planted token in the stored state"
    );
}
