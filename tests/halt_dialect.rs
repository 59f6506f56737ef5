//! Halts in the provider's dialect through the whole proxy: an MCP route answers a halt as a
//! JSON-RPC error carrying the request's own id, both when an upstream answer matched and when
//! the closed session's request was refused before reaching the server.

mod support;

use haltgate::body;
use http::Request;
use serde_json::{json, Value};
use support::*;

/// An MCP server whose bearer token was revoked (RFC 6750 `invalid_token`).
fn revoked_mcp_server() -> Handler {
    handler(|_seen: Seen| async move {
        let mut response = json(
            401,
            json!({"error": "invalid_token", "error_description": "Token has been revoked"}),
        );
        response.headers_mut().insert(
            "www-authenticate",
            r#"Bearer error="invalid_token", error_description="Token has been revoked""#
                .parse()
                .unwrap(),
        );
        response
    })
}

fn rpc(proxy: &TestProxy, id: Value, accept: &str) -> Request<haltgate::body::ProxyBody> {
    Request::post(format!("http://{}/files/mcp", proxy.agent_addr()))
        .header("content-type", "application/json")
        .header("accept", accept)
        .header("authorization", "Bearer mcp-REDACTED")
        .header("x-haltgate-session", "agent-1")
        .body(body::full(
            json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                   "params": {"name": "echo", "arguments": {"text": "hi"}}})
            .to_string(),
        ))
        .unwrap()
}

#[tokio::test]
async fn an_mcp_halt_is_a_json_rpc_error_with_the_request_id() {
    let upstream = start_upstream(revoked_mcp_server()).await;
    let proxy = start_proxy(proxy_flags(&[("files:mcp", upstream.http_url())])).await;
    let both = "application/json, text/event-stream";

    // The server rejects the token: the answer is the JSON-RPC error for request 7.
    let (status, headers, reply) = send(rpc(&proxy, json!(7), both)).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-haltgate-halt"], "credential_invalid");
    assert_eq!(headers["x-haltgate-rule"], "mcp.invalid_token");
    assert_eq!(reply["jsonrpc"], "2.0");
    assert_eq!(reply["id"], 7);
    assert_eq!(reply["error"]["code"], haltgate::halt::MCP_HALT_CODE);
    assert!(reply["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Do not retry"));
    assert_eq!(reply["error"]["data"]["haltgate"]["session"], "agent-1");
    assert_eq!(upstream.hits(), 1);

    // The session is closed: the next request is answered without the server, still with its
    // own id, read from the body the proxy never forwarded.
    let (status, headers, reply) = send(rpc(&proxy, json!("call-2"), both)).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-haltgate-halt"], "credential_invalid");
    assert_eq!(reply["jsonrpc"], "2.0");
    assert_eq!(reply["error"]["code"], haltgate::halt::MCP_HALT_CODE);
    assert_eq!(reply["id"], "call-2");
    assert_eq!(upstream.hits(), 1);

    // A client that accepts only a stream gets the error as one server-sent event.
    let response = client()
        .request(rpc(&proxy, json!(9), "text/event-stream"))
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = String::from_utf8(read_body(response).await.to_vec()).unwrap();
    let data = text
        .strip_prefix("event: message\ndata: ")
        .and_then(|rest| rest.strip_suffix("\n\n"))
        .unwrap_or_else(|| panic!("one SSE message event: {text:?}"));
    let reply: Value = serde_json::from_str(data).unwrap();
    assert_eq!(reply["id"], 9);
    assert_eq!(reply["error"]["code"], haltgate::halt::MCP_HALT_CODE);
    assert_eq!(upstream.hits(), 1);
}
