//! Responses the proxy writes itself, as values with named constructors.
//!
//! Every synthetic response is JSON with one `error` object, so an agent or its SDK can tell a
//! proxy-made answer from an upstream one: `x-haltgate-error` names the kind.

use http::{header, HeaderValue, Response, StatusCode};
use serde_json::json;

use crate::body::{self, ProxyBody};

/// A response made by the proxy, not by an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticResponse {
    pub status: StatusCode,
    /// Machine-readable kind, e.g. `unknown_route`; also sent as `x-haltgate-error`.
    pub kind: &'static str,
    /// One plain sentence saying what failed.
    pub message: String,
    /// Sent as `Retry-After` (seconds) when the condition is expected to clear.
    pub retry_after_secs: Option<u32>,
}

impl SyntheticResponse {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    /// No route is configured under the request's first path segment.
    pub fn unknown_route(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown_route",
            format!("No route is configured for {path:?}; requests go to /ROUTE/PATH."),
        )
    }

    /// The request asked the proxy to act as a forward proxy (CONNECT, or absolute-form naming
    /// another host). haltgate only forwards to its configured upstreams.
    pub fn not_an_open_proxy(what: &str) -> Self {
        let status = if what == "CONNECT" {
            StatusCode::METHOD_NOT_ALLOWED
        } else {
            StatusCode::FORBIDDEN
        };
        Self::new(
            status,
            "not_an_open_proxy",
            format!("{what} refused: haltgate forwards only to its configured routes."),
        )
    }

    /// The request itself is malformed for the proxy (e.g. a bad `x-haltgate-*` header).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// The upstream could not be reached or broke the exchange.
    pub fn bad_gateway(route: &str, cause: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "upstream_unreachable",
            format!("Upstream of route {route:?} failed: {cause}."),
        )
    }

    /// The upstream did not connect, or did not send response headers, in time.
    pub fn gateway_timeout(route: &str, what: &str) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            format!("Upstream of route {route:?} timed out: {what}."),
        )
    }

    /// The agent stopped sending its request body; the upstream request was abandoned.
    pub fn request_body_timeout(after: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_body_timeout",
            format!("No request body data arrived for {after:?}."),
        )
    }

    /// A credential is blocked and this request's body may carry one, but the body cannot be
    /// read through to check it (too large, or encoded): refused rather than forwarded unseen.
    pub fn body_not_checkable(why: &str) -> Self {
        let status = if why == "encoded" {
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        } else {
            StatusCode::PAYLOAD_TOO_LARGE
        };
        Self::new(
            status,
            "body_not_checkable",
            format!(
                "The request body may carry a credential, and it is {why}: haltgate cannot check \
                 it against blocked credentials, so it does not forward it."
            ),
        )
    }

    /// The proxy is shutting down and takes no new requests on this connection.
    pub fn shutting_down() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "haltgate is shutting down.",
        )
    }

    /// The proxy does not know yet which sessions are closed and which credentials are
    /// blocked (its local view is still loading, or nothing can be read: no local copy and no
    /// store). A request that names a session or carries a credential is refused rather than
    /// forwarded blindly.
    pub fn not_ready() -> Self {
        Self {
            retry_after_secs: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "haltgate is loading its session state; retry shortly.",
            )
        }
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        let body = json!({ "error": { "kind": self.kind, "message": self.message } });
        let mut response = json_response(self.status, body);
        let headers = response.headers_mut();
        headers.insert(crate::headers::ERROR, HeaderValue::from_static(self.kind));
        if let Some(seconds) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A response with `status` and `value` as its JSON body: every answer the proxy writes
/// itself is built here.
pub fn json_response(status: StatusCode, value: serde_json::Value) -> Response<ProxyBody> {
    let mut response = Response::new(body::full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
