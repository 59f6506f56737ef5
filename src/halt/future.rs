//! [`ResponseFuture`]: the response of one request through [`Halt`](super::Halt).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;

use super::service::{head, inspect, RequestSnapshot, Shared, SlowPath};
use crate::body::{self, BoxError, ProxyBody};

pin_project! {
    /// Response future of [`Halt`](super::Halt).
    ///
    /// A response no rule could match, and an answer given without calling the inner service,
    /// resolve without allocating a future; only a response that is inspected (or a request
    /// whose admission waits for its body or the store) is boxed.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        /// Answered without the inner service (bad session header, refusal, halt).
        Ready { response: Option<Response<ProxyBody>> },
        /// No provider: the inner response as is.
        Passthrough { #[pin] future: F },
        /// Waiting for the inner response, then deciding whether to inspect it.
        Forwarding {
            #[pin]
            future: F,
            inspection: Option<(RequestSnapshot, Arc<Shared>)>,
        },
        /// Reading a body, waiting for the store or the hooks.
        Slow { future: SlowPath },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn ready(response: Response<ProxyBody>) -> Self {
        Self {
            state: State::Ready {
                response: Some(response),
            },
        }
    }

    pub(crate) fn passthrough(future: F) -> Self {
        Self {
            state: State::Passthrough { future },
        }
    }

    pub(crate) fn forwarding(future: F, snapshot: RequestSnapshot, shared: Arc<Shared>) -> Self {
        Self {
            state: State::Forwarding {
                future,
                inspection: Some((snapshot, shared)),
            },
        }
    }

    pub(crate) fn boxed(future: SlowPath) -> Self {
        Self {
            state: State::Slow { future },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ProxyBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Ready { response } => {
                    let response = response.take().expect("polled after completion");
                    return Poll::Ready(Ok(response));
                }
                StateProj::Passthrough { future } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    return Poll::Ready(Ok(response.map(body::boxed)));
                }
                StateProj::Forwarding { future, inspection } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    let response = response.map(body::boxed);
                    let (snapshot, shared) = inspection.take().expect("polled after completion");
                    let rules = snapshot.rules.clone();
                    let (parts, body) = response.into_parts();
                    if !rules.needs_body(&head(&snapshot, &parts)) {
                        // The common case: nothing to read, nothing boxed.
                        return Poll::Ready(Ok(Response::from_parts(parts, body)));
                    }
                    let response = Response::from_parts(parts, body);
                    let future =
                        Box::pin(async move { Ok(inspect(response, snapshot, shared).await) });
                    state.set(State::Slow { future });
                }
                StateProj::Slow { future } => return future.as_mut().poll(cx),
            }
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
