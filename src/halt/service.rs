use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use futures_util::TryFutureExt;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tower_service::Service;
use tracing::Instrument;

use super::body::{Capture, CapturedPrefix, Replay};
use super::decode::{self, Uninspected};
use super::dialect::{Dialect, HaltRequest};
use super::events::InspectEvents;
use super::future::ResponseFuture;
use super::hooks::{
    Admission, BoxFuture, Matched, Outcome, Refusal, RequestInfo, SessionHeader, SessionHooks,
};
use super::layer::HaltConfig;
use super::provider::ProviderOf;
use super::stats::HaltStats;
use crate::body::{self, BoxError, ProxyBody};
use crate::headers;
use crate::rules::{
    is_event_stream, Class, Decision, Exchange, ExchangeHead, ResponseBody, RuleSet, Scope, Verdict,
};
use crate::session::{unix_ms_now, Presented, SessionId, MAX_DETAIL_BYTES, MAX_EXACT_INTEGER};
use crate::synthetic::SyntheticResponse;

/// What every service a layer made shares.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) rules: Arc<ArcSwap<RuleSet>>,
    pub(crate) hooks: Arc<dyn SessionHooks>,
    pub(crate) config: HaltConfig,
    pub(crate) stats: Arc<HaltStats>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("rules", &self.rules.load().rule_count())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Inspects every response of the inner service. See the [module docs](super).
///
/// The inner service sees `Request<ProxyBody>` (the request body streams through untouched,
/// its start copied aside for the rules) and may answer with any body; responses come back as
/// `Response<ProxyBody>`.
#[derive(Clone)]
pub struct Halt<S, P> {
    inner: S,
    provider: P,
    shared: Arc<Shared>,
}

impl<S, P> Halt<S, P> {
    pub(crate) fn new(inner: S, provider: P, shared: Arc<Shared>) -> Self {
        Self {
            inner,
            provider,
            shared,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug, P> fmt::Debug for Halt<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Halt")
            .field("inner", &self.inner)
            .field("provider", &std::any::type_name::<P>())
            .field("shared", &self.shared)
            .finish()
    }
}

/// What inspection needs of the request once the response is back.
pub(crate) struct RequestSnapshot {
    pub(crate) provider: Arc<str>,
    pub(crate) dialect: Dialect,
    pub(crate) method: Method,
    pub(crate) path_and_query: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: CapturedPrefix,
    pub(crate) session: Option<SessionHeader>,
    pub(crate) started_ms: u64,
    pub(crate) admitted_epoch: Option<u64>,
    /// The rules this request is decided by, loaded once: a reload during the request (or
    /// during a streamed response) never mixes two versions in one decision.
    pub(crate) rules: Arc<RuleSet>,
}

impl<S, P, ReqBody, ResBody> Service<Request<ReqBody>> for Halt<S, P>
where
    S: Service<Request<ProxyBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    P: ProviderOf<ReqBody>,
{
    type Response = Response<ProxyBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let Some(provider) = self.provider.provider(&request) else {
            return ResponseFuture::passthrough(self.inner.call(request.map(body::boxed)));
        };
        let dialect = self.provider.dialect(&request, &provider);
        let path_and_query = self.provider.path_and_query(&request).to_owned();
        let request = request.map(body::boxed);
        let session = match session_header(request.headers()) {
            Ok(session) => session,
            Err(message) => {
                return ResponseFuture::ready(
                    SyntheticResponse::bad_request(message).into_response(),
                )
            }
        };
        let shared = &self.shared;
        let admission = shared.hooks.before_forward(&RequestInfo {
            provider: &provider,
            session: session.as_ref(),
            headers: request.headers(),
            query: request.uri().query(),
            body: None,
        });
        let pending = Pending {
            provider,
            dialect,
            path_and_query,
            session,
        };
        match admission {
            Admission::Forward => {
                let (request, snapshot) = pending.forward(request, shared);
                ResponseFuture::forwarding(self.inner.call(request), snapshot, shared.clone())
            }
            Admission::NeedsBody => {
                // The service is ready now; a clone takes its place for the next call.
                let clone = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, clone);
                let send: SendRequest = Box::new(move |request| {
                    Box::pin(
                        ready
                            .call(request)
                            .map_ok(|response| response.map(body::boxed))
                            .map_err(Into::into),
                    )
                });
                ResponseFuture::boxed(Box::pin(pending.admit_with_body(
                    send,
                    request,
                    shared.clone(),
                )))
            }
            Admission::Refuse(refusal) => pending.refuse(refusal, request, shared),
        }
    }
}

/// Sends a request to the inner service once admission allows it. Boxed, so the slow path
/// that reads the request body first is not generic over the inner service.
type SendRequest = Box<dyn FnOnce(Request<ProxyBody>) -> SlowPath + Send>;

/// What is known of a request between admission and forwarding.
struct Pending {
    provider: Arc<str>,
    dialect: Dialect,
    path_and_query: String,
    session: Option<SessionHeader>,
}

impl Pending {
    /// Answers a request the hooks refused before its body was read; a dialect that quotes
    /// the request (MCP's JSON-RPC id) reads the body start first.
    fn refuse<F>(
        self,
        refusal: Refusal,
        request: Request<ProxyBody>,
        shared: &Arc<Shared>,
    ) -> ResponseFuture<F> {
        let (parts, mut body) = request.into_parts();
        if !self.dialect.reads_request_body() || body.is_end_stream() {
            let request = HaltRequest::read(&self.path_and_query, &parts.headers, &[]);
            return answer(refusal, self.dialect, request, shared).into_future();
        }
        let shared = shared.clone();
        ResponseFuture::boxed(Box::pin(async move {
            let prefix = Buffered::read(&mut body, shared.config.max_body_bytes)
                .await
                .data();
            let request = HaltRequest::read(&self.path_and_query, &parts.headers, &prefix);
            answer(refusal, self.dialect, request, &shared)
                .resolve()
                .await
        }))
    }

    /// Reads the start of the request body, asks the hooks again with it, then forwards the
    /// whole body unchanged or answers in its place.
    async fn admit_with_body(
        self,
        send: SendRequest,
        request: Request<ProxyBody>,
        shared: Arc<Shared>,
    ) -> Result<Response<ProxyBody>, BoxError> {
        let limit = shared.config.max_body_bytes;
        let (parts, mut body) = request.into_parts();
        // The decision depends on the body: one that cannot be read through whole is refused,
        // never forwarded with a credential nobody looked at.
        let encoded = parts
            .headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        if encoded {
            let refusal = SyntheticResponse::body_not_checkable("encoded");
            return Ok(refusal.into_response());
        }
        let buffered = Buffered::read(&mut body, limit).await;
        match buffered.end {
            BufferEnd::Ended => {}
            BufferEnd::Cut => {
                let refusal = SyntheticResponse::body_not_checkable("larger than max_body_bytes");
                return Ok(refusal.into_response());
            }
            BufferEnd::Failed(error) => return Err(error),
        }
        let prefix = buffered.data();
        let admission = shared.hooks.before_forward(&RequestInfo {
            provider: &self.provider,
            session: self.session.as_ref(),
            headers: &parts.headers,
            query: parts.uri.query(),
            body: Some(&prefix),
        });
        match admission {
            Admission::NeedsBody => {
                let refusal = SyntheticResponse::body_not_checkable("not readable as a form");
                Ok(refusal.into_response())
            }
            Admission::Forward => {
                let body = body::boxed(buffered.into_replay(body));
                let (request, snapshot) = self.forward(Request::from_parts(parts, body), &shared);
                let response = send(request).await?;
                Ok(respond(response, snapshot, shared).await)
            }
            Admission::Refuse(refusal) => {
                let request = HaltRequest::read(&self.path_and_query, &parts.headers, &prefix);
                answer(refusal, self.dialect, request, &shared)
                    .resolve()
                    .await
            }
        }
    }

    /// The request to send on (its body copied aside up to the limit for the rules), and what
    /// inspecting its response will need.
    fn forward(
        self,
        request: Request<ProxyBody>,
        shared: &Shared,
    ) -> (Request<ProxyBody>, RequestSnapshot) {
        let limit = shared.config.max_body_bytes;
        let (parts, body) = request.into_parts();
        let (body, captured) = if body.is_end_stream() {
            (body, CapturedPrefix::default())
        } else {
            let (capture, prefix) = Capture::new(body, limit);
            (body::boxed(capture), prefix)
        };
        let admitted_epoch = self
            .session
            .as_ref()
            .filter(|s| s.epoch.is_none())
            .and_then(|s| shared.hooks.known_epoch(s));
        let snapshot = RequestSnapshot {
            provider: self.provider,
            dialect: self.dialect,
            method: parts.method.clone(),
            path_and_query: self.path_and_query,
            headers: parts.headers.clone(),
            body: captured,
            session: self.session,
            started_ms: unix_ms_now(),
            admitted_epoch,
            rules: shared.rules.load_full(),
        };
        (Request::from_parts(parts, body), snapshot)
    }
}

/// The answer to a request the hooks did not admit.
enum Answer {
    Now(Response<ProxyBody>),
    /// A halt that waits for the hooks (e.g. a closure stored first).
    Later(SlowPath),
}

impl Answer {
    fn into_future<F>(self) -> ResponseFuture<F> {
        match self {
            Answer::Now(response) => ResponseFuture::ready(response),
            Answer::Later(future) => ResponseFuture::boxed(future),
        }
    }

    async fn resolve(self) -> Result<Response<ProxyBody>, BoxError> {
        match self {
            Answer::Now(response) => Ok(response),
            Answer::Later(future) => future.await,
        }
    }
}

fn answer(refusal: Refusal, dialect: Dialect, request: HaltRequest, shared: &Shared) -> Answer {
    let response = match refusal {
        Refusal::Halt(halt) => {
            shared.stats.short_circuited.inc();
            tracing::Span::current().record("rule", halt.rule.as_str());
            halt.into_response(dialect, &request)
        }
        Refusal::HaltAfter(halt) => {
            shared.stats.short_circuited.inc();
            return Answer::Later(Box::pin(async move {
                let halt = halt.await;
                tracing::Span::current().record("rule", halt.rule.as_str());
                Ok(halt.into_response(dialect, &request))
            }));
        }
        Refusal::NotReady => {
            shared.stats.not_ready.inc();
            SyntheticResponse::not_ready().into_response()
        }
        Refusal::Error(error) => error.into_response(),
    };
    Answer::Now(response)
}

/// An upstream response, inspected when a rule could match it.
pub(crate) async fn respond(
    response: Response<ProxyBody>,
    snapshot: RequestSnapshot,
    shared: Arc<Shared>,
) -> Response<ProxyBody> {
    let (parts, body) = response.into_parts();
    if !snapshot.rules.needs_body(&head(&snapshot, &parts)) {
        return Response::from_parts(parts, body);
    }
    inspect(Response::from_parts(parts, body), snapshot, shared).await
}

/// A future that resolves to the response of a request, boxed (the paths that wait for the
/// request body, the store or the response body).
pub(crate) type SlowPath = BoxFuture<'static, Result<Response<ProxyBody>, BoxError>>;

/// Reads `x-haltgate-session` and `x-haltgate-epoch`.
pub fn session_header(map: &HeaderMap) -> Result<Option<SessionHeader>, String> {
    use crate::headers::{EPOCH, SESSION};
    let Some(id) = map.get(SESSION) else {
        if map.contains_key(EPOCH) {
            return Err(format!("{EPOCH} needs {SESSION}"));
        }
        return Ok(None);
    };
    let id = id
        .to_str()
        .ok()
        .and_then(|id| SessionId::parse(id).ok())
        .ok_or_else(|| format!("{SESSION} must be 1-256 bytes of visible ASCII"))?;
    let epoch = match map.get(EPOCH) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|&epoch| epoch <= MAX_EXACT_INTEGER)
                .ok_or_else(|| {
                    format!("{EPOCH} must be an integer from 0 to {MAX_EXACT_INTEGER}")
                })?,
        ),
    };
    Ok(Some(SessionHeader { id, epoch }))
}

/// Inspects a response some rule could match: reads its body up to the limit (or classifies
/// a stream event by event), decides, and acts on a decisive match.
pub(crate) async fn inspect(
    response: Response<ProxyBody>,
    request: RequestSnapshot,
    shared: Arc<Shared>,
) -> Response<ProxyBody> {
    let rules = request.rules.clone();
    let (mut parts, body) = response.into_parts();
    if is_event_stream(&parts.headers) {
        // A halt appends a final event, so the declared length would be wrong.
        parts.headers.remove(header::CONTENT_LENGTH);
        let request_body = request.body.take();
        let events = InspectEvents::new(
            body,
            parts.status,
            parts.headers.clone(),
            request,
            request_body,
            shared,
        );
        return Response::from_parts(parts, body::boxed(events));
    }

    let limit = shared.config.max_body_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = body;
    let buffered = if declared.is_some_and(|len| len > limit as u64) {
        Buffered::skipped()
    } else {
        Buffered::read(&mut body, limit).await
    };
    // The rules read a decoded copy; the agent gets the bytes as they came.
    let complete = match buffered.complete() {
        Some(raw) => decode::for_rules(&parts.headers, raw, limit).map_err(Some),
        None => Err(None),
    };
    match &complete {
        Ok(_) => {
            shared.stats.inspected.inc();
        }
        Err(reason) => shared
            .stats
            .count_uninspected(reason.unwrap_or(match buffered.end {
                BufferEnd::Failed(_) => Uninspected::ReadFailed,
                _ => Uninspected::TooLarge,
            })),
    }
    let complete = complete.ok();
    let response_body = match &complete {
        Some(bytes) => ResponseBody::Complete(bytes),
        None => ResponseBody::Uninspected,
    };
    let request_body = request.body.take();
    let decision = decide(
        &rules,
        &request,
        &parts,
        &request_body,
        response_body,
        &shared,
    )
    .await;
    let replay = body::boxed(buffered.into_replay(body));
    let Some(decision) = decision else {
        return Response::from_parts(parts, replay);
    };
    let detail = excerpt(complete.as_deref().unwrap_or_default());
    match act(
        decision,
        &request,
        &request_body,
        parts.status.as_u16(),
        detail,
        &shared,
    )
    .await
    {
        Outcome::Halt(halt) => {
            shared.stats.count_halt(halt.class);
            let halt_request =
                HaltRequest::read(&request.path_and_query, &request.headers, &request_body);
            halt.into_response(request.dialect, &halt_request)
        }
        Outcome::Forward { action } => {
            if let Some(action) = action {
                parts
                    .headers
                    .insert(headers::ACTION, HeaderValue::from_static(action));
            }
            Response::from_parts(parts, replay)
        }
    }
}

pub(crate) fn head<'a>(
    request: &'a RequestSnapshot,
    parts: &'a http::response::Parts,
) -> ExchangeHead<'a> {
    ExchangeHead {
        provider: &request.provider,
        method: &request.method,
        path_and_query: &request.path_and_query,
        request_headers: &request.headers,
        status: parts.status,
        response_headers: &parts.headers,
    }
}

/// Classifies, loading the session scope only when a scope rule asks for it. Logs and counts
/// shadow matches. Returns the decision when an enforce rule matched.
async fn decide(
    rules: &RuleSet,
    request: &RequestSnapshot,
    parts: &http::response::Parts,
    request_body: &[u8],
    response_body: ResponseBody<'_>,
    shared: &Shared,
) -> Option<Decision> {
    let mut exchange = Exchange {
        head: head(request, parts),
        request_body,
        response_body,
        scope: Scope::Unknown,
    };
    let decision = match rules.classify(&exchange) {
        Verdict::Decided(decision) => decision,
        Verdict::NeedsScope => {
            let scope = match &request.session {
                Some(session) => match shared.hooks.scope(session).await {
                    Ok(scope) => scope,
                    Err(unavailable) => {
                        // Unknown is not absent: a rule that compares with the scope cannot
                        // decide, so nothing is closed on a guess.
                        shared.stats.undecided.inc();
                        tracing::warn!(
                            provider = %request.provider,
                            session = %session.id,
                            error = %unavailable,
                            upstream_status = parts.status.as_u16(),
                            "Response left undecided: a rule needs the session scope."
                        );
                        return None;
                    }
                },
                None => None,
            };
            exchange.scope = Scope::Known(scope.as_ref());
            match rules.classify(&exchange) {
                Verdict::Decided(decision) => decision,
                Verdict::NeedsScope => return None,
            }
        }
    };
    note_shadow(
        rules,
        &decision,
        request,
        parts.status.as_u16(),
        &shared.stats,
    );
    (decision.class != Class::Pass).then_some(decision)
}

pub(crate) fn note_shadow(
    rules: &RuleSet,
    decision: &Decision,
    request: &RequestSnapshot,
    status: u16,
    stats: &HaltStats,
) {
    for rule in &decision.shadow {
        let class = rules.class_of(&request.provider, rule);
        stats.count_match(rule, class.map_or("-", Class::as_str), "shadow");
        tracing::info!(
            provider = %request.provider,
            rule = %rule,
            session = request.session.as_ref().map(|s| s.id.as_str()).unwrap_or("-"),
            upstream_status = status,
            "Shadow rule matched; no action taken."
        );
    }
}

/// Hands a decisive match to the hooks. They run in a task of their own, so the closure
/// completes even when the agent disconnects or stops reading the response.
pub(crate) fn act(
    decision: Decision,
    request: &RequestSnapshot,
    request_body: &[u8],
    upstream_status: u16,
    detail: String,
    shared: &Shared,
) -> impl Future<Output = Outcome> + Send + 'static {
    tracing::Span::current().record("rule", decision.rule.as_deref().unwrap_or("-"));
    shared.stats.count_match(
        decision.rule.as_deref().unwrap_or("-"),
        decision.class.as_str(),
        "enforce",
    );
    let credentials =
        Presented::in_request(&request.headers, &request.path_and_query, request_body);
    tracing::info!(
        provider = %request.provider,
        class = %decision.class,
        rule = decision.rule.as_deref().unwrap_or("-"),
        session = request.session.as_ref().map(|s| s.id.as_str()).unwrap_or("-"),
        upstream_status,
        "Rule matched."
    );
    // The hook's own logs (closure stored, store errors) keep the request's span.
    let task = tokio::spawn(
        shared
            .hooks
            .on_match(Matched {
                provider: request.provider.clone(),
                session: request.session.clone(),
                decision,
                upstream_status,
                started_ms: request.started_ms,
                admitted_epoch: request.admitted_epoch,
                credentials,
                detail,
            })
            .instrument(tracing::Span::current()),
    );
    async move {
        task.await.unwrap_or_else(|error| {
            tracing::error!(%error, "Match hook failed; the response goes through.");
            Outcome::Forward { action: None }
        })
    }
}

/// The start of a matched body, for the closure's detail (the store keeps no more).
pub(crate) fn excerpt(body: &[u8]) -> String {
    let cut = &body[..body.len().min(MAX_DETAIL_BYTES)];
    String::from_utf8_lossy(cut).into_owned()
}

/// What inspection read of a body before deciding; the frames are replayed as they came.
struct Buffered {
    frames: VecDeque<Frame<Bytes>>,
    len: usize,
    end: BufferEnd,
}

enum BufferEnd {
    /// The body ended within the limit.
    Ended,
    /// More than the limit, or trailers: the rest streams on uninspected.
    Cut,
    /// Reading failed; the error is passed on after the frames.
    Failed(BoxError),
}

impl Buffered {
    /// Nothing read: the declared length is already over the limit.
    fn skipped() -> Self {
        Self {
            frames: VecDeque::new(),
            len: 0,
            end: BufferEnd::Cut,
        }
    }

    /// Reads frames until the body ends or more than `limit` bytes arrived.
    async fn read(body: &mut ProxyBody, limit: usize) -> Self {
        let mut buffered = Self {
            frames: VecDeque::new(),
            len: 0,
            end: BufferEnd::Ended,
        };
        while let Some(frame) = body.frame().await {
            match frame {
                Err(error) => {
                    buffered.end = BufferEnd::Failed(error);
                    break;
                }
                Ok(frame) => {
                    // Trailers mean the body is not plain data; pass it on uninspected.
                    let data_len = frame.data_ref().map(Bytes::len);
                    buffered.len += data_len.unwrap_or(0);
                    buffered.frames.push_back(frame);
                    if data_len.is_none() || buffered.len > limit {
                        buffered.end = BufferEnd::Cut;
                        break;
                    }
                }
            }
        }
        buffered
    }

    /// Every data byte read so far, whether or not the body ended.
    fn data(&self) -> Bytes {
        let mut data = BytesMut::with_capacity(self.len);
        for frame in &self.frames {
            if let Some(bytes) = frame.data_ref() {
                data.extend_from_slice(bytes);
            }
        }
        data.freeze()
    }

    /// The whole body, when it ended within the limit; one frame is shared, not copied.
    fn complete(&self) -> Option<Bytes> {
        if !matches!(self.end, BufferEnd::Ended) {
            return None;
        }
        match self.frames.len() {
            0 => Some(Bytes::new()),
            1 => self.frames[0].data_ref().cloned(),
            _ => {
                let mut whole = BytesMut::with_capacity(self.len);
                for frame in &self.frames {
                    whole.extend_from_slice(frame.data_ref()?);
                }
                Some(whole.freeze())
            }
        }
    }

    fn into_replay(self, rest: ProxyBody) -> Replay {
        match self.end {
            BufferEnd::Ended => Replay::new(self.frames, None, None),
            BufferEnd::Cut => Replay::new(self.frames, Some(rest), None),
            BufferEnd::Failed(error) => Replay::new(self.frames, None, Some(error)),
        }
    }
}
