//! Halt responses in each provider's own error dialect.
//!
//! An agent meets a halt through its SDK, and each SDK decides from the shape of an error
//! whether to retry it and what to tell the caller. A halt written in the provider's own
//! dialect is raised by the SDK as its ordinary, non-retryable error on the first attempt,
//! with the halt sentence as the error's message. Every dialect keeps the `x-haltgate-halt`
//! and `x-haltgate-rule` headers and carries the machine-readable fields (class, rule,
//! session, epoch) in the body.
//!
//! | dialect | status | body |
//! | --- | --- | --- |
//! | `generic` | 410 | `{"halted": true, "class", "rule", …, "message"}` |
//! | `slack` | 200 | `{"ok": false, "error": "haltgate_<class>", "haltgate": {…}}` |
//! | `github` | 410 | REST `{"message", "documentation_url", "status", "haltgate"}`; `/graphql` as `graphql` |
//! | `graphql` | 200 | `{"data": null, "errors": [{"message", "extensions": {"type", "code", "haltgate"}}]}` |
//! | `anthropic` | 403 / 401 | `{"type": "error", "error": {"type", "message"}, "haltgate"}`, `x-should-retry: false` |
//! | `mcp` | 200 | JSON-RPC error with the request's `id`; SSE-framed for a stream-only client |

use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use serde_json::{json, Value};

use super::response::{HaltResponse, HALT_STATUS};
use crate::body::ProxyBody;
use crate::class::Class;
use crate::synthetic::json_response;

/// JSON-RPC error code of an MCP halt, in the range JSON-RPC leaves to servers and apart from
/// the codes the MCP SDKs give a meaning of their own (-32000 connection closed, -32001
/// request timeout, -32002 resource not found, -32042 URL elicitation).
pub const MCP_HALT_CODE: i64 = -32010;

/// Where GitHub documents the errors of its REST API, for the `documentation_url` its SDKs show.
const GITHUB_DOCS: &str = "https://docs.github.com/rest";

/// How a provider's SDKs expect an error to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// haltgate's own 410 JSON, for providers it has no dialect for.
    Generic,
    /// Slack's Web API: HTTP 200 with `{"ok": false, "error": ...}`.
    Slack,
    /// GitHub REST, and GitHub GraphQL for requests to a `/graphql` path.
    GitHub,
    /// A GraphQL API such as Linear's.
    GraphQl,
    /// The Anthropic API's `{"type": "error", "error": {...}}` envelope.
    Anthropic,
    /// An MCP server over the Streamable HTTP transport (JSON-RPC).
    Mcp,
}

impl Dialect {
    /// Every dialect name a route may set.
    pub const NAMES: [&'static str; 6] =
        ["generic", "slack", "github", "graphql", "anthropic", "mcp"];

    /// The dialect named `name` (one of [`Dialect::NAMES`]).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "generic" => Self::Generic,
            "slack" => Self::Slack,
            "github" => Self::GitHub,
            "graphql" => Self::GraphQl,
            "anthropic" => Self::Anthropic,
            "mcp" => Self::Mcp,
            _ => return None,
        })
    }

    /// The built-in dialect of a provider: the known providers speak their own (Linear is
    /// GraphQL), any other provider gets the generic one.
    pub fn for_provider(provider: &str) -> Self {
        match provider {
            "linear" => Self::GraphQl,
            other => Self::parse(other).unwrap_or(Self::Generic),
        }
    }

    /// The dialect's name, as a route sets it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Generic => "generic",
            Self::Slack => "slack",
            Self::GitHub => "github",
            Self::GraphQl => "graphql",
            Self::Anthropic => "anthropic",
            Self::Mcp => "mcp",
        }
    }

    /// Whether a halt in this dialect quotes the request body (the JSON-RPC `id`), so a request
    /// refused before forwarding has its body start read first.
    pub fn reads_request_body(self) -> bool {
        self == Self::Mcp
    }
}

/// What of the request shapes its halt response.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HaltRequest {
    /// The request went to a GraphQL endpoint (a path ending in `/graphql`).
    pub graphql: bool,
    /// The client accepts only an event stream, so the answer must be one.
    pub stream_only: bool,
    /// The JSON-RPC `id` of the request (`null` for a notification or an unreadable body).
    pub rpc_id: Value,
}

impl HaltRequest {
    /// Reads the path, the `Accept` header and the start of the body.
    pub fn read(path_and_query: &str, headers: &HeaderMap, body: &[u8]) -> Self {
        let path = path_and_query.split('?').next().unwrap_or_default();
        let accepts = |wanted: &str| {
            headers.get_all(header::ACCEPT).iter().any(|value| {
                value
                    .to_str()
                    .is_ok_and(|v| v.split(',').any(|t| media_type(t) == wanted))
            })
        };
        Self {
            graphql: path.trim_end_matches('/').ends_with("/graphql"),
            stream_only: accepts("text/event-stream")
                && !accepts("application/json")
                && !accepts("*/*"),
            rpc_id: rpc_id(body),
        }
    }
}

fn media_type(text: &str) -> String {
    text.split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// The `id` of a JSON-RPC request, or of the first request of a batch; `null` when there is
/// none or the body is not JSON-RPC.
fn rpc_id(body: &[u8]) -> Value {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return Value::Null;
    };
    let first = match &value {
        Value::Array(batch) => batch.iter().find(|m| m.get("id").is_some()),
        other => Some(other),
    };
    match first.and_then(|m| m.get("id")) {
        Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
        _ => Value::Null,
    }
}

impl HaltResponse {
    /// The halt as a complete response in `dialect`.
    pub fn into_response(self, dialect: Dialect, request: &HaltRequest) -> Response<ProxyBody> {
        let fields = self.to_json();
        let (status, body) = match dialect {
            Dialect::Generic => (HALT_STATUS, fields),
            // Slack SDKs raise `ok: false` as a platform error and never retry it; the code
            // names no condition they treat specially (rate limits, fatal/internal errors).
            // `[ERROR] …` in `response_metadata.messages` is how Slack words a sentence for
            // people; the Node SDK logs it as an error.
            Dialect::Slack => (
                StatusCode::OK,
                json!({
                    "ok": false,
                    "error": format!("haltgate_{}", self.class.as_str()),
                    "response_metadata": { "messages": [format!("[ERROR] {}", self.message)] },
                    "haltgate": fields,
                }),
            ),
            Dialect::GitHub if request.graphql => (StatusCode::OK, self.graphql_body(fields)),
            // 410 is in Octokit's never-retry list, and PyGithub retries only 5xx and rate
            // limits.
            Dialect::GitHub => (
                HALT_STATUS,
                json!({
                    "message": self.message,
                    "documentation_url": GITHUB_DOCS,
                    "status": HALT_STATUS.as_str(),
                    "haltgate": fields,
                }),
            ),
            // A 200 with `errors` is a GraphQL error to every GraphQL client, which none
            // retries; `@linear/sdk` types it by `extensions.type`.
            Dialect::GraphQl => (StatusCode::OK, self.graphql_body(fields)),
            Dialect::Anthropic => (self.anthropic_status(), self.anthropic_body(fields)),
            Dialect::Mcp if request.stream_only => {
                let mut response = Response::new(crate::body::full(self.mcp_event(request)));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream"),
                );
                return self.with_halt_headers(response);
            }
            Dialect::Mcp => (StatusCode::OK, self.mcp_message(request)),
        };
        let mut response = json_response(status, body);
        if dialect == Dialect::Anthropic {
            // Both Anthropic SDKs obey this before looking at the status.
            response
                .headers_mut()
                .insert("x-should-retry", HeaderValue::from_static("false"));
        }
        self.with_halt_headers(response)
    }

    /// The halt as the last event of an event stream that was already under way, in the
    /// stream's own error event where the dialect has one.
    pub fn to_sse_event(&self, dialect: Dialect, request: &HaltRequest) -> bytes::Bytes {
        match dialect {
            Dialect::Anthropic => format!(
                "event: error\ndata: {}\n\n",
                self.anthropic_body(self.to_json())
            )
            .into(),
            Dialect::Mcp => self.mcp_event(request).into(),
            _ => format!("event: haltgate.halt\ndata: {}\n\n", self.to_json()).into(),
        }
    }

    fn with_halt_headers(&self, mut response: Response<ProxyBody>) -> Response<ProxyBody> {
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(
            crate::headers::HALT,
            HeaderValue::from_static(self.class.as_str()),
        );
        if let Ok(rule) = HeaderValue::from_str(&self.rule) {
            headers.insert(crate::headers::RULE, rule);
        }
        response
    }

    fn is_credential(&self) -> bool {
        self.class == Class::CredentialInvalid
    }

    fn graphql_body(&self, fields: Value) -> Value {
        // Linear's error types and GitHub's: both SDKs name the error after them.
        let (linear_type, github_type, code) = if self.is_credential() {
            (
                "authentication error",
                "UNAUTHENTICATED",
                "AUTHENTICATION_ERROR",
            )
        } else {
            ("forbidden", "FORBIDDEN", "FORBIDDEN")
        };
        json!({
            "data": null,
            "errors": [{
                "message": self.message,
                "type": github_type,
                "extensions": {
                    "type": linear_type,
                    "code": code,
                    "userPresentableMessage": self.message,
                    "haltgate": fields,
                },
            }],
        })
    }

    fn anthropic_status(&self) -> StatusCode {
        if self.is_credential() {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::FORBIDDEN
        }
    }

    fn anthropic_body(&self, fields: Value) -> Value {
        let kind = if self.is_credential() {
            "authentication_error"
        } else {
            "permission_error"
        };
        json!({
            "type": "error",
            "error": { "type": kind, "message": self.message },
            "haltgate": fields,
        })
    }

    fn mcp_message(&self, request: &HaltRequest) -> Value {
        json!({
            "jsonrpc": "2.0",
            "id": request.rpc_id,
            "error": {
                "code": MCP_HALT_CODE,
                "message": self.message,
                "data": { "haltgate": self.to_json() },
            },
        })
    }

    fn mcp_event(&self, request: &HaltRequest) -> String {
        format!("event: message\ndata: {}\n\n", self.mcp_message(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn halt(class: &str) -> HaltResponse {
        let class = Class::from_name(class).unwrap();
        HaltResponse::rule_matched(class, "p.rule", Some("s1"), Some(3), 200)
    }

    async fn render(
        halt: HaltResponse,
        dialect: Dialect,
        request: &HaltRequest,
    ) -> (StatusCode, HeaderMap, Value) {
        let response = halt.into_response(dialect, request);
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let body = match parts
            .headers
            .get(header::CONTENT_TYPE)
            .unwrap()
            .to_str()
            .unwrap()
        {
            "text/event-stream" => {
                let text = std::str::from_utf8(&bytes).unwrap();
                let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
                serde_json::from_str(data).unwrap()
            }
            _ => serde_json::from_slice(&bytes).unwrap(),
        };
        (parts.status, parts.headers, body)
    }

    fn assert_fields(fields: &Value, class: &str) {
        assert_eq!(fields["class"], class);
        assert_eq!(fields["rule"], "p.rule");
        assert_eq!(fields["session"], "s1");
        assert_eq!(fields["epoch"], 3);
    }

    #[tokio::test]
    async fn every_dialect_keeps_the_halt_headers_and_fields() {
        let plain = HaltRequest::default();
        let graphql = HaltRequest::read("/graphql", &HeaderMap::new(), b"");
        for (dialect, request, pointer) in [
            (Dialect::Generic, &plain, ""),
            (Dialect::Slack, &plain, "/haltgate"),
            (Dialect::GitHub, &plain, "/haltgate"),
            (Dialect::GitHub, &graphql, "/errors/0/extensions/haltgate"),
            (Dialect::GraphQl, &plain, "/errors/0/extensions/haltgate"),
            (Dialect::Anthropic, &plain, "/haltgate"),
            (Dialect::Mcp, &plain, "/error/data/haltgate"),
        ] {
            for class in ["lost_access", "credential_invalid"] {
                let (_, headers, body) = render(halt(class), dialect, request).await;
                assert_eq!(headers["x-haltgate-halt"], class, "{dialect:?}");
                assert_eq!(headers["x-haltgate-rule"], "p.rule", "{dialect:?}");
                assert_eq!(headers[header::CACHE_CONTROL], "no-store");
                assert_fields(body.pointer(pointer).unwrap(), class);
            }
        }
    }

    #[tokio::test]
    async fn each_dialect_has_the_shape_and_status_its_sdks_do_not_retry() {
        let plain = HaltRequest::default();
        let (status, _, body) = render(halt("lost_access"), Dialect::Generic, &plain).await;
        assert_eq!((status, &body["halted"]), (StatusCode::GONE, &json!(true)));

        let (status, _, body) = render(halt("lost_access"), Dialect::Slack, &plain).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["ok"], false);
        assert_eq!(body["error"], "haltgate_lost_access");
        assert_eq!(
            body["response_metadata"]["messages"][0],
            "[ERROR] Access to this resource was lost; this session is closed. Do not retry."
        );

        let (status, _, body) = render(halt("lost_access"), Dialect::GitHub, &plain).await;
        assert_eq!(status, StatusCode::GONE);
        assert!(body["message"].as_str().unwrap().contains("Do not retry"));
        assert_eq!(body["documentation_url"], GITHUB_DOCS);

        let (status, _, body) = render(halt("credential_invalid"), Dialect::GraphQl, &plain).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["data"], Value::Null);
        assert_eq!(
            body["errors"][0]["extensions"]["type"],
            "authentication error"
        );
        assert_eq!(body["errors"][0]["type"], "UNAUTHENTICATED");

        let (status, headers, body) = render(halt("lost_access"), Dialect::Anthropic, &plain).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(headers["x-should-retry"], "false");
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "permission_error");
        let (status, _, body) =
            render(halt("credential_invalid"), Dialect::Anthropic, &plain).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"]["type"], "authentication_error");
    }

    #[tokio::test]
    async fn mcp_answers_the_request_id_and_streams_for_a_stream_only_client() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        let body = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{}}"#;
        let request = HaltRequest::read("/mcp", &headers, body);
        assert!(!request.stream_only);
        let (status, headers_out, reply) =
            render(halt("lost_access"), Dialect::Mcp, &request).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers_out[header::CONTENT_TYPE], "application/json");
        assert_eq!(reply["jsonrpc"], "2.0");
        assert_eq!(reply["id"], 7);
        assert_eq!(reply["error"]["code"], MCP_HALT_CODE);
        assert!(reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Do not retry"));

        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        let request = HaltRequest::read(
            "/mcp",
            &headers,
            br#"[{"jsonrpc":"2.0","id":"a-1","method":"x"}]"#,
        );
        assert!(request.stream_only);
        let (_, headers_out, reply) = render(halt("lost_access"), Dialect::Mcp, &request).await;
        assert_eq!(headers_out[header::CONTENT_TYPE], "text/event-stream");
        assert_eq!(reply["id"], "a-1");

        for body in [
            &b"not json"[..],
            br#"{"jsonrpc":"2.0","method":"notifications/x"}"#,
            b"",
        ] {
            assert_eq!(
                HaltRequest::read("/mcp", &HeaderMap::new(), body).rpc_id,
                Value::Null
            );
        }
    }

    #[test]
    fn stream_errors_use_the_stream_own_error_event() {
        let request = HaltRequest {
            rpc_id: json!(4),
            ..HaltRequest::default()
        };
        let event = halt("lost_access").to_sse_event(Dialect::Anthropic, &request);
        let text = std::str::from_utf8(&event).unwrap();
        assert!(text.starts_with("event: error\ndata: {"), "{text}");
        let event = halt("lost_access").to_sse_event(Dialect::Mcp, &request);
        let text = std::str::from_utf8(&event).unwrap();
        assert!(text.starts_with("event: message\ndata: {"), "{text}");
        assert!(text.contains(r#""id":4"#), "{text}");
        let event = halt("lost_access").to_sse_event(Dialect::Generic, &request);
        assert!(event.starts_with(b"event: haltgate.halt\n"));
    }

    #[test]
    fn providers_default_to_their_dialect() {
        assert_eq!(Dialect::for_provider("linear"), Dialect::GraphQl);
        assert_eq!(Dialect::for_provider("mcp"), Dialect::Mcp);
        assert_eq!(Dialect::for_provider("echo"), Dialect::Generic);
        for name in Dialect::NAMES {
            assert_eq!(Dialect::parse(name).unwrap().as_str(), name);
        }
    }
}
