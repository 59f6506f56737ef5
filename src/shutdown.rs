//! Shutdown signalling: one trigger, many cheap listeners, and a body that ends when it fires.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::watch;

use crate::body::{BoxError, ProxyBody};

/// Fires the shutdown once; dropping it fires it too, so a crashed owner cannot leave
/// listeners waiting forever.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

/// A listener for the shutdown trigger.
#[derive(Debug, Clone)]
pub struct ShutdownSignal(watch::Receiver<bool>);

pub fn channel() -> (ShutdownTrigger, ShutdownSignal) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), ShutdownSignal(rx))
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }

    pub fn signal(&self) -> ShutdownSignal {
        ShutdownSignal(self.0.subscribe())
    }
}

impl Drop for ShutdownTrigger {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

impl ShutdownSignal {
    /// A signal that never fires, for embedders without a shutdown story.
    pub fn never() -> Self {
        let (tx, rx) = watch::channel(false);
        // Keeping the sender alive forever keeps the receiver from seeing a closed channel.
        std::mem::forget(tx);
        Self(rx)
    }

    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes once the trigger fired (or was dropped).
    pub fn triggered(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            let _ = rx.wait_for(|fired| *fired).await;
        }
    }
}

/// A streaming body that ends cleanly when shutdown fires, so open event streams do not hold
/// the drain until its deadline.
pub struct EndOnShutdown {
    inner: ProxyBody,
    fired: Pin<Box<dyn Future<Output = ()> + Send>>,
    done: bool,
}

impl EndOnShutdown {
    pub fn new(inner: ProxyBody, signal: &ShutdownSignal) -> Self {
        let mut rx = signal.0.clone();
        Self {
            inner,
            fired: Box::pin(async move {
                let _ = rx.wait_for(|fired| *fired).await;
            }),
            done: false,
        }
    }
}

impl Body for EndOnShutdown {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        // Data already produced wins over the shutdown, so no complete event is cut.
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if self.fired.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // It may end early, so only the lower bound of zero is certain.
        SizeHint::default()
    }
}
