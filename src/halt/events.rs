//! Inspection of `text/event-stream` responses while they stream: every event reaches the
//! agent as soon as it arrives; each event's data is classified on the way.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame, SizeHint};

use super::hooks::Outcome;
use super::service::{act, excerpt, note_shadow, RequestSnapshot, Shared};
use crate::body::{BoxError, ProxyBody};
use crate::rules::{
    Class, Decision, Exchange, ExchangeHead, ResponseBody, Scope, SseStream, Verdict,
};

/// An event stream passed through untouched, with each event classified. When an event
/// decides `lost_access` or `credential_invalid` and the hooks halt, the stream ends with a
/// final `haltgate.halt` event; a `stale_session` event lets the stream go on.
pub(super) struct InspectEvents {
    inner: Option<ProxyBody>,
    splitter: SseStream,
    status: StatusCode,
    response_headers: HeaderMap,
    request: RequestSnapshot,
    request_body: Bytes,
    shared: Arc<Shared>,
    /// The hooks acting on a match; the stream waits for them before going on.
    acting: Option<BoxFuture<'static, Outcome>>,
    /// A final event to send before ending.
    closing: Option<Bytes>,
}

impl InspectEvents {
    pub(crate) fn new(
        inner: ProxyBody,
        status: StatusCode,
        response_headers: HeaderMap,
        request: RequestSnapshot,
        request_body: Bytes,
        shared: Arc<Shared>,
    ) -> Self {
        let limit = shared.config.max_body_bytes;
        Self {
            inner: Some(inner),
            splitter: SseStream::new(limit),
            status,
            response_headers,
            request,
            request_body,
            shared,
            acting: None,
            closing: None,
        }
    }

    /// Classifies the events completed by `chunk`; returns the first decisive match.
    fn classify_chunk(&mut self, chunk: &[u8]) -> Option<(Decision, String)> {
        let rules = self.shared.rules.load();
        let mut found = None;
        let request = &self.request;
        let head = ExchangeHead {
            provider: &request.provider,
            method: &request.method,
            path_and_query: &request.path_and_query,
            request_headers: &request.headers,
            status: self.status,
            response_headers: &self.response_headers,
        };
        let request_body = &self.request_body;
        let stats = &self.shared.stats;
        let status = self.status.as_u16();
        self.splitter.feed(chunk, |data| {
            if found.is_some() {
                return;
            }
            let exchange = Exchange {
                head,
                request_body,
                response_body: ResponseBody::SseEvent(data),
                // Scope rules target unary provider APIs; streams are decided without scope.
                scope: Scope::Known(None),
            };
            if let Verdict::Decided(decision) = rules.classify(&exchange) {
                note_shadow(&rules, &decision, request, status, stats);
                if decision.class != Class::Pass {
                    found = Some((decision, excerpt(data)));
                }
            }
        });
        found
    }
}

impl Body for InspectEvents {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(acting) = this.acting.as_mut() {
            let outcome = std::task::ready!(acting.as_mut().poll(cx));
            this.acting = None;
            if let Outcome::Halt(halt) = outcome {
                this.shared.stats.count_halt(halt.class);
                this.inner = None;
                this.closing = Some(halt.to_sse_event());
            }
        }
        if let Some(last) = this.closing.take() {
            return Poll::Ready(Some(Ok(Frame::data(last))));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = std::task::ready!(Pin::new(inner).poll_frame(cx));
        if let Some(Ok(frame)) = &polled {
            if let Some(data) = frame.data_ref() {
                if let Some((decision, detail)) = this.classify_chunk(data) {
                    let status = this.status.as_u16();
                    this.acting = Some(Box::pin(act(
                        decision,
                        &this.request,
                        &this.request_body,
                        status,
                        detail,
                        &this.shared,
                    )));
                }
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.acting.is_none()
            && self.closing.is_none()
            && self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        // A halt event may be appended.
        SizeHint::default()
    }
}
