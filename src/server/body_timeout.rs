//! A request body that fails when its client stops sending.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::body::BoxError;

/// The client sent no body data for the configured time.
#[derive(Debug, thiserror::Error)]
#[error("no request body data for {0:?}")]
pub struct BodyReadTimeout(pub Duration);

/// Wraps a request body: while a reader waits for the next frame, at most `timeout` may
/// pass. The clock runs only while someone reads, so a body the upstream reads slowly does
/// not fail.
pub struct ReadTimeout<B> {
    inner: B,
    timeout: Duration,
    /// Allocated on the first wait, reset for each later one.
    deadline: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

impl<B> ReadTimeout<B> {
    pub fn new(inner: B, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            deadline: None,
            waiting: false,
        }
    }
}

impl<B> Body for ReadTimeout<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.waiting = false;
            return Poll::Ready(frame.map(|result| result.map_err(Into::into)));
        }
        if !this.waiting {
            this.waiting = true;
            let at = Instant::now() + this.timeout;
            match &mut this.deadline {
                Some(deadline) => deadline.as_mut().reset(at),
                None => this.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        let deadline = this.deadline.as_mut().expect("set above");
        if deadline.as_mut().poll(cx).is_ready() {
            this.waiting = false;
            return Poll::Ready(Some(Err(BodyReadTimeout(this.timeout).into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
