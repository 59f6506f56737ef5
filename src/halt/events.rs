//! Inspection of `text/event-stream` responses while they stream: every event reaches the
//! agent as soon as it arrives; each event's data is classified on the way.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame, SizeHint};

use super::decode::StreamDecoder;
use super::dialect::HaltRequest;
use super::hooks::Outcome;
use super::service::{act, excerpt, note_shadow, RequestSnapshot, Shared};
use crate::body::{BoxError, ProxyBody};
use crate::rules::{
    Class, Decision, Exchange, ExchangeHead, ResponseBody, Scope, SseStream, Verdict,
};

/// An event stream passed through untouched, with each event classified. When an event
/// decides `lost_access` or `credential_invalid` and the hooks halt, the stream ends with a
/// final event: the stream's own error event in the route's dialect (Anthropic `event: error`,
/// an MCP JSON-RPC error), else `haltgate.halt`. A `stale_session` event lets the stream go on.
pub(super) struct InspectEvents {
    inner: Option<ProxyBody>,
    splitter: SseStream,
    /// Present for an encoded stream: the splitter reads its decoded bytes.
    decoder: Option<StreamDecoder>,
    /// False once the stream cannot be decoded: the rest passes unclassified.
    classifying: bool,
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
        let decoder = StreamDecoder::for_headers(&response_headers, limit)
            .inspect_err(|reason| shared.stats.count_uninspected(*reason));
        Self {
            inner: Some(inner),
            splitter: SseStream::new(limit),
            classifying: decoder.is_ok(),
            decoder: decoder.ok().flatten(),
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
        let rules = &self.request.rules;
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
        if !self.classifying {
            return None;
        }
        let splitter = &mut self.splitter;
        let mut classify = |data: &[u8]| {
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
                note_shadow(rules, &decision, request, status, stats);
                if decision.class != Class::Pass {
                    found = Some((decision, excerpt(data)));
                }
            }
        };
        match self.decoder.as_mut() {
            None => splitter.feed(chunk, classify),
            Some(decoder) => {
                let decoded = decoder.feed(chunk, |bytes| splitter.feed(bytes, &mut classify));
                if let Err(reason) = decoded {
                    stats.count_uninspected(reason);
                    self.classifying = false;
                }
            }
        }
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
                let request = HaltRequest::read(
                    &this.request.path_and_query,
                    &this.request.headers,
                    &this.request_body,
                );
                this.closing = Some(halt.to_sse_event(this.request.dialect, &request));
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
