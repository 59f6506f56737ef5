//! Bodies the halt layer builds: a request body that keeps a copy of its first bytes, and a
//! response body that replays what inspection already read.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

use crate::body::{BoxError, ProxyBody};

/// The first `limit` bytes of a request body, filled while the body streams upstream.
#[derive(Debug, Clone, Default)]
pub(crate) struct CapturedPrefix(Arc<Mutex<BytesMut>>);

impl CapturedPrefix {
    /// What was captured so far, taken out without copying.
    pub(crate) fn take(&self) -> Bytes {
        std::mem::take(&mut *self.0.lock().expect("capture lock")).freeze()
    }
}

/// Streams a request body through untouched, copying its first `limit` bytes aside.
pub(super) struct Capture {
    inner: ProxyBody,
    prefix: CapturedPrefix,
    limit: usize,
}

impl Capture {
    pub(super) fn new(inner: ProxyBody, limit: usize) -> (Self, CapturedPrefix) {
        let prefix = CapturedPrefix::default();
        (
            Self {
                inner,
                prefix: prefix.clone(),
                limit,
            },
            prefix,
        )
    }
}

impl Body for Capture {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let mut prefix = self.prefix.0.lock().expect("capture lock");
                let room = self.limit.saturating_sub(prefix.len());
                prefix.extend_from_slice(&data[..room.min(data.len())]);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Frames already read from a body, then the rest of it, then a read error if one ended it.
pub(super) struct Replay {
    frames: VecDeque<Frame<Bytes>>,
    rest: Option<ProxyBody>,
    error: Option<BoxError>,
}

impl Replay {
    pub(super) fn new(
        frames: VecDeque<Frame<Bytes>>,
        rest: Option<ProxyBody>,
        error: Option<BoxError>,
    ) -> Self {
        Self {
            frames,
            rest,
            error,
        }
    }
}

impl Body for Replay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(frame) = self.frames.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(rest) = self.rest.as_mut() {
            match Pin::new(rest).poll_frame(cx) {
                Poll::Ready(None) => self.rest = None,
                other => return other,
            }
        }
        Poll::Ready(self.error.take().map(Err))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
            && self.error.is_none()
            && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self
            .frames
            .iter()
            .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
            .sum();
        match &self.rest {
            None => SizeHint::with_exact(buffered),
            Some(rest) => {
                let hint = rest.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(hint.lower() + buffered);
                if let Some(upper) = hint.upper() {
                    out.set_upper(upper + buffered);
                }
                out
            }
        }
    }
}
