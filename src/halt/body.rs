//! Bodies the halt layer builds: a request body that keeps a copy of its first bytes, a response
//! body that replays what inspection already read, and an event stream inspected as it flows.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

use crate::body::{BoxError, ProxyBody};

/// The first `limit` bytes of a request body, filled while the body streams upstream.
#[derive(Debug, Clone, Default)]
pub struct CapturedPrefix(Arc<Mutex<BytesMut>>);

impl CapturedPrefix {
    pub fn bytes(&self) -> Bytes {
        self.0.lock().expect("capture lock").clone().freeze()
    }
}

/// Streams a request body through untouched, copying its first `limit` bytes aside.
pub struct Capture {
    inner: ProxyBody,
    prefix: CapturedPrefix,
    limit: usize,
}

impl Capture {
    pub fn new(inner: ProxyBody, limit: usize) -> (Self, CapturedPrefix) {
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
pub struct Replay {
    frames: VecDeque<Frame<Bytes>>,
    rest: Option<ProxyBody>,
    error: Option<BoxError>,
}

impl Replay {
    pub fn new(
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

/// Splits a byte stream into server-sent events and yields each event's `data` (its data
/// lines joined by `\n`), as the WHATWG event-stream format defines. Events larger than
/// `limit` are skipped whole, so one oversized event cannot grow the buffer without bound.
#[derive(Debug)]
pub struct EventSplitter {
    pending: BytesMut,
    data: BytesMut,
    has_data: bool,
    oversized: bool,
    limit: usize,
}

impl EventSplitter {
    pub fn new(limit: usize) -> Self {
        Self {
            pending: BytesMut::new(),
            data: BytesMut::new(),
            has_data: false,
            oversized: false,
            limit,
        }
    }

    /// Feeds a chunk; calls `on_event` for each complete event's data.
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(&[u8])) {
        self.pending.extend_from_slice(chunk);
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n' || b == b'\r') {
            let terminator = self.pending[end];
            // A CR at the very end may be the first half of a CRLF: wait for the next chunk.
            if terminator == b'\r' && end + 1 == self.pending.len() {
                break;
            }
            let mut line = self.pending.split_to(end + 1);
            line.truncate(end);
            if terminator == b'\r' && self.pending.first() == Some(&b'\n') {
                let _ = self.pending.split_to(1);
            }
            self.line(&line, &mut on_event);
        }
        if self.pending.len() > self.limit {
            self.pending.clear();
            self.oversized = true;
        }
    }

    fn line(&mut self, line: &[u8], on_event: &mut impl FnMut(&[u8])) {
        if line.is_empty() {
            if self.has_data && !self.oversized {
                on_event(&self.data);
            }
            self.data.clear();
            self.has_data = false;
            self.oversized = false;
            return;
        }
        if let Some(value) = line.strip_prefix(b"data") {
            let value = match value.first() {
                None => &[][..],
                Some(b':') => value[1..].strip_prefix(b" ").unwrap_or(&value[1..]),
                // "database: x" is a field named "database", not data.
                Some(_) => return,
            };
            if self.has_data {
                self.data.extend_from_slice(b"\n");
            }
            self.data.extend_from_slice(value);
            self.has_data = true;
            if self.data.len() > self.limit {
                self.data.clear();
                self.oversized = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&[u8]]) -> Vec<String> {
        let mut splitter = EventSplitter::new(1024);
        let mut out = Vec::new();
        for chunk in chunks {
            splitter.feed(chunk, |data| {
                out.push(String::from_utf8_lossy(data).into_owned())
            });
        }
        out
    }

    #[test]
    fn splits_events_across_chunks_and_line_endings() {
        assert_eq!(events(&[b"data: {\"a\":1}\n\n"]), vec!["{\"a\":1}"]);
        assert_eq!(events(&[b"data: a\r", b"\ndata: b\r\n\r\n"]), vec!["a\nb"]);
        assert_eq!(
            events(&[b"event: x\nid: 1\ndata:x\r\rdata: y\n", b"\n"]),
            vec!["x", "y"]
        );
        assert_eq!(
            events(&[b": comment\n\n", b"retry: 5\n\n"]),
            Vec::<String>::new()
        );
        assert_eq!(events(&[b"database: 1\ndata\n\n"]), vec![""]);
    }

    #[test]
    fn skips_oversized_events_whole() {
        let mut splitter = EventSplitter::new(8);
        let mut out = Vec::new();
        splitter.feed(b"data: 0123456789abcdef\n\ndata: ok\n\n", |d| {
            out.push(d.to_vec())
        });
        assert_eq!(out, vec![b"ok".to_vec()]);
    }
}
