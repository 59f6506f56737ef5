//! The control listener: health, readiness and (with the state layer) the session API.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use serde_json::json;
use tower_service::Service;

use crate::body::{self, ProxyBody};

/// Whether this instance should receive traffic; shared by everything that gates readiness.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    serving: Arc<AtomicBool>,
}

impl Readiness {
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.serving.load(Ordering::Acquire)
    }
}

/// Service for the control listener.
#[derive(Clone)]
pub struct Control {
    readiness: Readiness,
}

impl Control {
    pub fn new(readiness: Readiness) -> Self {
        Self { readiness }
    }
}

impl<B> Service<Request<B>> for Control
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let response = match (request.method(), request.uri().path()) {
            (&Method::GET, "/healthz") => json_response(StatusCode::OK, json!({"status": "ok"})),
            (&Method::GET, "/readyz") => {
                if self.readiness.is_ready() {
                    json_response(StatusCode::OK, json!({"status": "ready"}))
                } else {
                    json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        json!({"status": "starting"}),
                    )
                }
            }
            (_, path) => json_response(
                StatusCode::NOT_FOUND,
                json!({"error": format!("no control endpoint {path}")}),
            ),
        };
        Box::pin(async move { Ok(response) })
    }
}

pub fn json_response(status: StatusCode, value: serde_json::Value) -> Response<ProxyBody> {
    let mut response = Response::new(body::full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
