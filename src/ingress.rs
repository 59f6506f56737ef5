//! The outermost service: decides whether a request may be forwarded at all, and where.
//!
//! It refuses forward-proxy use (CONNECT, absolute-form naming another host), resolves the
//! route from the first path segment (unknown → 404, a dot segment after the route name → 400,
//! both without any upstream contact), turns forwarding errors into synthetic 502/504 answers,
//! and makes event streams end at shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use http::{Method, Request, Response, Version};
use tower::ServiceExt;
use tower_service::Service;
use tracing::Instrument;

use crate::body::{self, BoxError, ProxyBody};
use crate::forward::{ForwardError, ForwardErrorKind};
use crate::metrics::TrafficStats;
use crate::route::{RouteTable, Unresolved};
use crate::rules::is_event_stream;
use crate::shutdown::{EndOnShutdown, ShutdownSignal};
use crate::synthetic::SyntheticResponse;

/// Entry point of the agent listener. `S` is the rest of the stack; it sees only routed
/// requests, each carrying its [`crate::route::Target`] as an extension.
#[derive(Clone)]
pub struct Ingress<S> {
    inner: S,
    routes: Arc<RouteTable>,
    own_authorities: Arc<[String]>,
    shutdown: ShutdownSignal,
    traffic: Arc<TrafficStats>,
}

impl<S> Ingress<S> {
    /// `own_authorities` are the `host:port` names under which the proxy itself is reached; an
    /// absolute-form request naming one of them is served like an origin-form one.
    pub fn new(
        inner: S,
        routes: Arc<RouteTable>,
        own_authorities: Vec<String>,
        shutdown: ShutdownSignal,
        traffic: Arc<TrafficStats>,
    ) -> Self {
        Self {
            inner,
            routes,
            own_authorities: own_authorities.into(),
            shutdown,
            traffic,
        }
    }
}

impl<S, B> Service<Request<B>> for Ingress<S>
where
    S: Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness of the inner stack is awaited per call on a clone; see `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if let Some(refusal) = self.refusal(&request) {
            let response = refusal.into_response();
            self.traffic.count_unrouted(response.status());
            return Box::pin(async move { Ok(response) });
        }
        let path_and_query = request
            .uri()
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        let target = match self.routes.resolve(path_and_query) {
            Ok(target) => target,
            Err(unresolved) => {
                let refusal = match unresolved {
                    Unresolved::UnknownRoute => SyntheticResponse::unknown_route(request.uri().path()),
                    Unresolved::DotSegment => SyntheticResponse::bad_request(
                        "The path after the route name holds a '.' or '..' segment (in some spelling); \
                         haltgate does not forward paths that could leave the route's base path.",
                    ),
                    Unresolved::BadPath => {
                        SyntheticResponse::bad_request("The path is not a valid upstream path.")
                    }
                };
                let response = refusal.into_response();
                self.traffic.count_unrouted(response.status());
                return Box::pin(async move { Ok(response) });
            }
        };
        let route = target.route.name.clone();
        // One span per routed request, at debug level: formatting its fields costs more than
        // a tenth of the proxy's own work per request, and the events of the halt path name
        // their provider, session and rule themselves. The session id is not a secret;
        // credentials are never recorded. `rule` is filled in on a match.
        let span = tracing::debug_span!(
            "request",
            route = %route,
            session = request
                .headers()
                .get(crate::headers::SESSION)
                .and_then(|v| v.to_str().ok())
                .filter(|v| crate::session::SessionId::check(v).is_ok())
                .unwrap_or("-"),
            rule = tracing::field::Empty,
        );
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(target);
        let request = Request::from_parts(parts, body::boxed(body));

        // The clone that was not driven to readiness is swapped in, as tower's docs advise.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shutdown = self.shutdown.clone();
        let traffic = self.traffic.clone();
        let forwarded = inner.oneshot(request).instrument(span);
        Box::pin(forwarded.map(move |result| {
            let response = match result {
                Ok(response) => response,
                Err(error) => rescue(&error).into_response(),
            };
            traffic.count_request(&route, response.status());
            Ok(end_streams_on_shutdown(response, &shutdown))
        }))
    }
}

impl<S> Ingress<S> {
    fn refusal<B>(&self, request: &Request<B>) -> Option<SyntheticResponse> {
        if request.method() == Method::CONNECT {
            return Some(SyntheticResponse::not_an_open_proxy("CONNECT"));
        }
        // HTTP/2 always carries :authority, so only HTTP/1 absolute-form shows forward-proxy intent.
        let http1 = matches!(
            request.version(),
            Version::HTTP_09 | Version::HTTP_10 | Version::HTTP_11
        );
        if http1 {
            if let Some(authority) = request.uri().authority() {
                let ours = self
                    .own_authorities
                    .iter()
                    .any(|own| own.eq_ignore_ascii_case(authority.as_str()));
                if !ours {
                    return Some(SyntheticResponse::not_an_open_proxy(&format!(
                        "Absolute-form request for {authority}"
                    )));
                }
            }
        }
        None
    }
}

/// Maps a failure of the inner stack to the answer the agent gets.
fn rescue(error: &BoxError) -> SyntheticResponse {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    while let Some(cause) = source {
        if let Some(forward) = cause.downcast_ref::<ForwardError>() {
            let route = &forward.route;
            return match &forward.kind {
                ForwardErrorKind::ConnectTimeout(after) => {
                    SyntheticResponse::gateway_timeout(route, &format!("connect after {after:?}"))
                }
                ForwardErrorKind::ResponseTimeout(after) => SyntheticResponse::gateway_timeout(
                    route,
                    &format!("no response headers after {after:?}"),
                ),
                ForwardErrorKind::Unreachable(detail) | ForwardErrorKind::Exchange(detail) => {
                    SyntheticResponse::bad_gateway(route, detail)
                }
                ForwardErrorKind::Unrouted => SyntheticResponse::bad_gateway(route, "not routed"),
                ForwardErrorKind::RequestBodyTimeout(after) => {
                    SyntheticResponse::request_body_timeout(*after)
                }
            };
        }
        source = cause.source();
    }
    tracing::warn!(error = %error, "Request failed inside the proxy.");
    SyntheticResponse::bad_gateway("?", error)
}

fn end_streams_on_shutdown(
    response: Response<ProxyBody>,
    shutdown: &ShutdownSignal,
) -> Response<ProxyBody> {
    if !is_event_stream(response.headers()) {
        return response;
    }
    let (parts, inner) = response.into_parts();
    Response::from_parts(parts, body::boxed(EndOnShutdown::new(inner, shutdown)))
}
