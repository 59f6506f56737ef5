//! One accepted connection: served by hyper, watched for idleness, abuse and shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use pin_project_lite::pin_project;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tower_service::Service;

use super::activity::{Activity, CloseReason, InFlight};
use super::{Limits, ReadTimeout, RequestBody};
use crate::body::{BoxError, ProxyBody};
use crate::shutdown::ShutdownSignal;

/// Serves one connection to its end. `_permit` is its slot under `max_connections`.
pub(super) async fn run<S>(
    stream: TcpStream,
    peer: SocketAddr,
    builder: auto::Builder<TokioExecutor>,
    service: S,
    limits: Arc<Limits>,
    shutdown: ShutdownSignal,
    _permit: OwnedSemaphorePermit,
) where
    S: Service<Request<RequestBody>, Response = Response<ProxyBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let activity = Activity::new(limits.h2_max_resets_per_10s);
    let service = Tracked {
        inner: service,
        activity: activity.clone(),
        limits: limits.clone(),
    };
    let connection =
        builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
    tokio::pin!(connection);

    let reason = tokio::select! {
        // The connection first: it is what wakes this task, the other two almost never do.
        biased;
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "Connection ended with an error.");
            }
            return;
        }
        reason = activity.until_closable(limits.header_read_timeout, limits.idle_timeout) => {
            Some(reason)
        }
        () = shutdown.triggered() => None,
    };
    // HTTP/1: close after the response in progress; HTTP/2: GOAWAY, open streams may finish.
    connection.as_mut().graceful_shutdown();
    let result = match reason {
        None => connection.await,
        Some(reason) => {
            if reason == CloseReason::TooManyCancels {
                tracing::warn!(
                    %peer,
                    max = limits.h2_max_resets_per_10s,
                    "Client cancelled too many requests before their answer; closing its connection."
                );
            } else {
                tracing::debug!(%peer, ?reason, "Closing an idle connection.");
            }
            // Whatever is still in flight gets one more idle period, no more.
            match tokio::time::timeout(limits.idle_timeout, connection).await {
                Ok(result) => result,
                Err(_) => return,
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "Connection ended with an error.");
    }
}

/// The per-connection service: counts requests for [`Activity`] and bounds body reads.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    limits: Arc<Limits>,
}

impl<S> Service<Request<Incoming>> for Tracked<S>
where
    S: Service<Request<RequestBody>, Response = Response<ProxyBody>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<UntilSent>;
    type Error = Infallible;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.start();
        let timeout = self.limits.body_read_timeout;
        let request = request.map(|body| ReadTimeout::new(body, timeout));
        // Dropped before it completes (HTTP/2 stream reset, HTTP/1 client gone), this future
        // drops the whole stack's future with it, upstream request included, and `in_flight`
        // counts the cancel.
        TrackedFuture {
            answer: self.inner.call(request),
            in_flight: Some(in_flight),
        }
    }
}

pin_project! {
    /// The stack's answer, its body tied to the request's [`InFlight`].
    struct TrackedFuture<F> {
        #[pin]
        answer: F,
        in_flight: Option<InFlight>,
    }
}

impl<F> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, Infallible>>,
{
    type Output = Result<Response<UntilSent>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.answer.poll(cx))?;
        let mut in_flight = this.in_flight.take().expect("polled after completion");
        in_flight.answered();
        Poll::Ready(Ok(response.map(|inner| UntilSent {
            inner,
            _in_flight: in_flight,
        })))
    }
}

/// A response body that keeps its request in flight until hyper is done with it.
pub(super) struct UntilSent {
    inner: ProxyBody,
    _in_flight: InFlight,
}

impl Body for UntilSent {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
