//! The innermost service: sends a routed request to its upstream and streams the answer back.
//!
//! Forwarding is transparent: bodies stream untouched both ways, path and query are copied
//! byte-exact, end-to-end headers pass as they are. Only what RFC 9110 §7.6.1 calls hop-by-hop
//! is dropped, `Host` becomes the upstream's, and every `x-haltgate-*` request header stays here.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response};
use tower_service::Service;

use crate::body::{self, BoxError, ProxyBody};
use crate::headers;
use crate::metrics::TrafficStats;
use crate::route::Target;
use crate::server::BodyReadTimeout;
use crate::upstream::UpstreamClient;

/// Why a request did not get an upstream response.
#[derive(Debug, thiserror::Error)]
#[error("route {route}: {kind}")]
pub struct ForwardError {
    pub route: Arc<str>,
    pub kind: ForwardErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardErrorKind {
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("no response headers within {0:?}")]
    ResponseTimeout(Duration),
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    #[error("upstream exchange failed: {0}")]
    Exchange(String),
    #[error("request was not routed")]
    Unrouted,
    /// The agent stopped sending its request body.
    #[error("the agent sent no request body data for {0:?}")]
    RequestBodyTimeout(Duration),
}

/// Sends requests carrying a [`Target`] extension to their upstream.
#[derive(Clone)]
pub struct Forward {
    client: UpstreamClient,
    response_header_timeout: Duration,
    connect_timeout: Duration,
    traffic: Arc<TrafficStats>,
}

impl Forward {
    pub fn new(
        client: UpstreamClient,
        connect_timeout: Duration,
        response_header_timeout: Duration,
        traffic: Arc<TrafficStats>,
    ) -> Self {
        Self {
            client,
            connect_timeout,
            response_header_timeout,
            traffic,
        }
    }
}

impl Service<Request<ProxyBody>> for Forward {
    type Response = Response<ProxyBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The pooled client queues internally; readiness is always immediate.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ProxyBody>) -> Self::Future {
        let response_header_timeout = self.response_header_timeout;
        let connect_timeout = self.connect_timeout;
        let traffic = self.traffic.clone();
        let Some(target) = request.extensions().get::<Target>() else {
            return Box::pin(std::future::ready(Err(ForwardError {
                route: "".into(),
                kind: ForwardErrorKind::Unrouted,
            }
            .into())));
        };
        let route = target.route.name.clone();
        let upstream_request = upstream_request(request);
        // The client's future owns what it needs: no clone of the client per request.
        let sent = self.client.request(upstream_request);
        Box::pin(async move {
            let started = std::time::Instant::now();
            let sent = tokio::time::timeout(response_header_timeout, sent);
            let response = match sent.await {
                Err(_) => {
                    return Err(ForwardError {
                        route,
                        kind: ForwardErrorKind::ResponseTimeout(response_header_timeout),
                    }
                    .into())
                }
                Ok(Err(error)) => {
                    return Err(ForwardError {
                        route,
                        kind: classify_client_error(&error, connect_timeout),
                    }
                    .into())
                }
                Ok(Ok(response)) => response,
            };
            traffic.observe_upstream(&route, started.elapsed());
            let (mut parts, incoming) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Ok(Response::from_parts(parts, body::boxed(incoming)))
        })
    }
}

fn upstream_request(request: Request<ProxyBody>) -> Request<ProxyBody> {
    let (mut parts, body) = request.into_parts();
    let target = parts
        .extensions
        .get::<Target>()
        .expect("only routed requests are forwarded");
    parts.uri = target.uri.clone();
    // The upstream speaks whatever version the pool negotiated; HTTP/2 from the agent must not
    // force HTTP/2 on an HTTP/1.1-only upstream.
    parts.version = http::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    strip_haltgate_headers(&mut parts.headers);
    parts
        .headers
        .insert(header::HOST, target.route.host.clone());
    Request::from_parts(parts, body)
}

fn classify_client_error(
    error: &hyper_util::client::legacy::Error,
    connect_timeout: Duration,
) -> ForwardErrorKind {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if let Some(BodyReadTimeout(after)) = cause.downcast_ref::<BodyReadTimeout>() {
            return ForwardErrorKind::RequestBodyTimeout(*after);
        }
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::TimedOut && error.is_connect() {
                return ForwardErrorKind::ConnectTimeout(connect_timeout);
            }
        }
        source = cause.source();
    }
    let detail = error_chain(error);
    if error.is_connect() {
        ForwardErrorKind::Unreachable(detail)
    } else {
        ForwardErrorKind::Exchange(detail)
    }
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Whether a header is hop-by-hop on its own (headers that `Connection` names are only so
/// because it names them). Header names are stored lowercase, so a plain match does.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
    ) || name.as_str().starts_with("proxy-")
}

/// Whether a token of a `Connection` value names a header [`is_hop_by_hop`] removes anyway.
fn names_fixed_hop_by_hop(token: &str) -> bool {
    HOP_BY_HOP.iter().any(|hop| hop.eq_ignore_ascii_case(token))
        || token
            .get(..6)
            .is_some_and(|start| start.eq_ignore_ascii_case("proxy-"))
}

/// Removes `Connection`, every header it names, and the fixed hop-by-hop set, `proxy-*` included.
///
/// Runs on every request and response, most of which carry at most `Connection: keep-alive`:
/// nothing is allocated unless `Connection` names a header outside the fixed set.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|token| !token.is_empty() && !names_fixed_hop_by_hop(token))
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    while let Some(name) = headers.keys().find(|name| is_hop_by_hop(name)).cloned() {
        headers.remove(name);
    }
}

/// Removes every `x-haltgate-*` header: they are addressed to the proxy only.
pub fn strip_haltgate_headers(headers: &mut HeaderMap) {
    if headers
        .keys()
        .any(|k| k.as_str().starts_with(headers::PREFIX))
    {
        let ours: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with(headers::PREFIX))
            .cloned()
            .collect();
        for name in ours {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_connection_named_and_fixed_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, X-Custom-Hop".parse().unwrap());
        h.insert("x-custom-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("trailer", "x-t".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("upgrade", "h2c".parse().unwrap());
        h.insert("proxy-authorization", "Basic REDACTED".parse().unwrap());
        h.insert("proxy-foo", "1".parse().unwrap());
        h.insert("authorization", "Bearer xoxb-REDACTED".parse().unwrap());
        h.insert("x-end-to-end", "kept".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(h.contains_key("authorization") && h.contains_key("x-end-to-end"));
    }

    #[test]
    fn keep_alive_alone_is_stripped_and_other_headers_stay() {
        let mut h = HeaderMap::new();
        h.insert("connection", "Keep-Alive".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        h.append("set-cookie", "a=1".parse().unwrap());
        h.append("set-cookie", "b=2".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 3, "{h:?}");
        assert_eq!(h.get_all("set-cookie").iter().count(), 2);

        let mut untouched = h.clone();
        strip_hop_by_hop(&mut untouched);
        assert_eq!(untouched, h);
    }

    #[test]
    fn strips_every_haltgate_header() {
        let mut h = HeaderMap::new();
        h.insert(headers::SESSION, "s1".parse().unwrap());
        h.insert(headers::EPOCH, "2".parse().unwrap());
        h.insert("x-haltgate", "not a prefix match".parse().unwrap());
        strip_haltgate_headers(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-haltgate"));
    }
}
