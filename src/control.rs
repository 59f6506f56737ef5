//! The control listener: health, readiness, and the session-state API (JSON in and out).
//!
//! | method and path | does |
//! | --- | --- |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 once every check passes, else 503; the body names each check and the failing ones |
//! | `GET /v1/stats` | counters of the halt layer and the closed set |
//! | `GET /metrics` | every metric in the Prometheus text format (see [`crate::metrics`]) |
//! | `PUT /v1/sessions/{id}` | create open, or reopen a closed one at epoch + 1; 503 while replicas do not confirm it (repeat the call) |
//! | `GET /v1/sessions/{id}` | the record; 404 if unknown |
//! | `POST /v1/sessions/{id}/close` | manual close, same atomic path as a rule match |
//! | `POST /v1/sessions/{id}/observe` | decide an exchange seen elsewhere and act on it (see [`crate::observe`]) |
//! | `POST /v1/sessions/{id}/wakeups` | schedule a wakeup; 409 if the session is closed |
//! | `GET /v1/sessions/{id}/wakeups` | pending wakeups |
//! | `POST /v1/wakeups/claim` | lease due wakeups (at-least-once), never of a closed session |
//! | `POST /v1/wakeups/{id}/ack` | remove a leased wakeup once its work is done |
//! | `GET /v1/events?after=CURSOR&limit=N` | one page of the durable event log |
//! | `GET /v1/credentials` | blocked credentials |
//! | `DELETE /v1/credentials/{fingerprint}` | unblock; 503 while replicas do not confirm it, 404 when not blocked |
//! | `GET /v1/rules` | rules in force: version, rules, per-file status, last reload, route map and warnings |
//! | `POST /v1/rules/reload` | reload the rule files now; answers the outcome (422 when a file was refused) |
//! | `POST /v1/storm/{provider}/reset` | close a provider's storm breaker (see [`crate::storm`]) |
//!
//! Every endpoint but `/healthz` and `/readyz` goes through [`ControlAuth`] first: token,
//! browser origin, JSON content type.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use serde_json::{json, Value};
use tower_service::Service;

use crate::body::{BoxError, ProxyBody};
use crate::control_auth::ControlAuth;
use crate::halt::HaltStats;
use crate::metrics::{Metrics, ScrapeGauges, METRICS_CONTENT_TYPE};
use crate::observe::{observe, ObserveBody, ObserveError};
use crate::rule_reload::{RuleReloader, Trigger};
use crate::rules::RuleSet;
use crate::session::{
    AddWakeup, Class, CloseDisposition, CloseOutcome, Closure, CredentialBlock, EventCursor,
    Fingerprint, OpenSpec, Receipt, SessionId, SessionRecord, SessionStore, StoreError,
};
use crate::session_gate::SessionGate;
use crate::storm::StormBreaker;
use crate::synthetic::json_response;

/// Largest JSON body the control API reads.
const MAX_CONTROL_BODY: usize = 1024 * 1024;

/// Whether this instance should receive traffic.
#[derive(Clone)]
pub struct Readiness {
    serving: Arc<AtomicBool>,
    gate: Arc<SessionGate>,
}

impl Readiness {
    pub fn new(gate: Arc<SessionGate>) -> Self {
        Self {
            serving: Arc::default(),
            gate,
        }
    }

    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::Release);
    }

    /// Every check passes; `/readyz` and the agent port read the same checks.
    pub fn is_ready(&self) -> bool {
        self.checks().iter().all(|(_, passed)| *passed)
    }

    /// Each check by name, in the order they are passed at start.
    pub fn checks(&self) -> [(&'static str, bool); 3] {
        [
            ("serving", self.serving.load(Ordering::Acquire)),
            ("closed_set_loaded", self.gate.closed().is_ready()),
            ("credential_key_loaded", self.gate.credential_key_loaded()),
        ]
    }
}

/// Service for the control listener.
#[derive(Clone)]
pub struct Control {
    readiness: Readiness,
    gate: Arc<SessionGate>,
    stats: Arc<HaltStats>,
    auth: Arc<ControlAuth>,
    metrics: Option<Arc<Metrics>>,
    rules: Option<RulesInForce>,
    reloader: Option<Arc<RuleReloader>>,
    storm: Option<Arc<StormBreaker>>,
}

/// The rules `observe` decides with, and the hosts that name a provider.
#[derive(Clone)]
struct RulesInForce {
    rules: Arc<ArcSwap<RuleSet>>,
    hosts: Arc<[(String, String)]>,
    max_body_bytes: usize,
}

impl Control {
    pub fn new(
        readiness: Readiness,
        gate: Arc<SessionGate>,
        stats: Arc<HaltStats>,
        auth: ControlAuth,
    ) -> Self {
        Self {
            readiness,
            gate,
            stats,
            auth: Arc::new(auth),
            metrics: None,
            rules: None,
            reloader: None,
            storm: None,
        }
    }

    /// Serves `/metrics` from `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Decides `observe` requests with `rules`; `hosts` (host, provider) name the provider of
    /// an exchange that does not; a body over `max_body_bytes` is uninspected, as in the proxy.
    pub fn with_rules(
        mut self,
        rules: Arc<ArcSwap<RuleSet>>,
        hosts: Vec<(String, String)>,
        max_body_bytes: usize,
    ) -> Self {
        self.rules = Some(RulesInForce {
            rules,
            hosts: hosts.into(),
            max_body_bytes,
        });
        self
    }
}

impl<B> Service<Request<B>> for Control
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let health = matches!(request.uri().path(), "/healthz" | "/readyz");
        if !health {
            if let Err(refusal) = self.auth.check(request.method(), request.headers()) {
                let response = refusal.into_response();
                return Box::pin(async move { Ok(response) });
            }
        }
        let this = self.clone();
        Box::pin(async move {
            let response = match this.route(request).await {
                Ok(response) => response,
                Err(problem) => problem.into_response(),
            };
            Ok(response)
        })
    }
}

/// An error answer of the control API.
#[derive(Debug)]
struct Problem {
    status: StatusCode,
    message: String,
}

impl Problem {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn into_response(self) -> Response<ProxyBody> {
        json_response(self.status, json!({ "error": self.message }))
    }
}

impl From<StoreError> for Problem {
    fn from(error: StoreError) -> Self {
        let status = match &error {
            StoreError::InvalidInput(_) | StoreError::InvalidCursor { .. } => {
                StatusCode::BAD_REQUEST
            }
            StoreError::Unavailable(_) | StoreError::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, error.to_string())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenBody {
    scope: Option<Value>,
    resume: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CloseBody {
    reason: String,
    epoch: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WakeupBody {
    due_ms: u64,
    payload: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimBody {
    limit: usize,
    lease_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    session: String,
}

/// How long a claimed wakeup stays with its claimer before it is due again.
const DEFAULT_LEASE_MS: u64 = 30_000;

impl Control {
    async fn metrics(&self) -> Result<Response<ProxyBody>, Problem> {
        let Some(metrics) = &self.metrics else {
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                "this control listener serves no metrics",
            ));
        };
        let outbox_depth = match self.gate.outbox() {
            Some(outbox) => outbox.len().await.unwrap_or(0),
            None => 0,
        };
        let closed = self.gate.closed();
        let text = metrics.encode(ScrapeGauges {
            outbox_depth: outbox_depth as i64,
            rules_loaded: self
                .rules
                .as_ref()
                .map_or(0, |r| r.rules.load().rule_count() as i64),
            closed_sessions: closed.closed_count() as i64,
            blocked_credentials: closed.blocked_count() as i64,
            store_replicas_to_ack: self.gate.store().replicas_to_ack().map_or(-1, i64::from),
        });
        Response::builder()
            .header(http::header::CONTENT_TYPE, METRICS_CONTENT_TYPE)
            .body(crate::body::full(text))
            .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    }

    async fn observe<B>(&self, id: &str, body: B) -> Result<Response<ProxyBody>, Problem>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let Some(rules) = &self.rules else {
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                "this control listener has no rules to observe with",
            ));
        };
        let id = session_id(id)?;
        let body: ObserveBody = read_json(body, false).await?;
        let rule_set = rules.rules.load_full();
        let observed = observe(
            &rule_set,
            &rules.hosts,
            rules.max_body_bytes,
            &self.gate,
            &self.stats,
            id,
            body,
        );
        match observed.await {
            Ok(observed) => Ok(json_response(StatusCode::OK, json!(observed))),
            Err(ObserveError::Input(message)) => Err(Problem::bad_request(message)),
            Err(ObserveError::Store(error)) => Err(error.into()),
        }
    }

    async fn route<B>(&self, request: Request<B>) -> Result<Response<ProxyBody>, Problem>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (&method, segments.as_slice()) {
            (&Method::GET, ["healthz"]) => {
                Ok(json_response(StatusCode::OK, json!({"status": "ok"})))
            }
            (&Method::GET, ["readyz"]) => {
                let checks = self.readiness.checks();
                let failing: Vec<&str> = checks
                    .iter()
                    .filter(|(_, passed)| !passed)
                    .map(|(name, _)| *name)
                    .collect();
                let checks: serde_json::Map<String, Value> = checks
                    .iter()
                    .map(|(name, passed)| ((*name).to_owned(), json!(passed)))
                    .collect();
                // How a closure counts as stored, so an operator sees it where readiness is.
                let replicas = self.gate.store().replicas_to_ack();
                let (status, word) = if failing.is_empty() {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting")
                };
                let mut body = json!({"status": word, "checks": checks, "failing": failing,
                                      "store_replicas_to_ack": replicas});
                self.add_storm_detail(&mut body);
                Ok(json_response(status, body))
            }
            (&Method::GET, ["metrics"]) => {
                if let Some(storm) = &self.storm {
                    storm.refresh(std::time::Instant::now());
                }
                self.metrics().await
            }
            (&Method::GET, ["v1", "stats"]) => {
                let mut stats = self.stats.to_json();
                stats["closed_sessions"] = json!(self.gate.closed().closed_count());
                stats["blocked_credentials"] = json!(self.gate.closed().blocked_count());
                stats["store_replicas_to_ack"] = json!(self.gate.store().replicas_to_ack());
                if let Some(outbox) = self.gate.outbox() {
                    stats["outbox_pending"] = json!(outbox.len().await.ok());
                }
                self.add_storm_detail(&mut stats);
                Ok(json_response(StatusCode::OK, stats))
            }
            (&Method::GET, ["v1", "rules"]) | (&Method::POST, ["v1", "rules", "reload"]) => {
                self.rules_api(&method).await
            }
            (_, ["v1", "storm", ..]) => self.storm_api(&method, &segments[2..]),
            (&Method::POST, ["v1", "sessions", id, "observe"]) => {
                self.observe(id, request.into_body()).await
            }
            (&Method::GET, ["v1", "events"]) => {
                let query = request.uri().query().unwrap_or("");
                events_page(self.gate.store().as_ref(), query).await
            }
            (_, ["v1", ..]) => {
                sessions_api(&self.gate, &method, &segments[1..], request.into_body()).await
            }
            _ => Err(Problem::new(
                StatusCode::NOT_FOUND,
                format!("no control endpoint {method} {path}"),
            )),
        }
    }
}

// === Rule reloads: `GET /v1/rules`, `POST /v1/rules/reload` ===

impl Control {
    /// Serves `GET /v1/rules` and `POST /v1/rules/reload` from `reloader`.
    pub fn with_reloader(mut self, reloader: Arc<RuleReloader>) -> Self {
        self.reloader = Some(reloader);
        self
    }

    async fn rules_api(&self, method: &Method) -> Result<Response<ProxyBody>, Problem> {
        let Some(reloader) = &self.reloader else {
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                "this control listener does not reload rules",
            ));
        };
        if method == Method::GET {
            return Ok(json_response(StatusCode::OK, reloader.status_json()));
        }
        // The API always judges the files again, so it always has a report.
        let report = reloader
            .reload(Trigger::Api)
            .await
            .unwrap_or_else(|| reloader.last_reload());
        let status = if report.outcome.refused_something() {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::OK
        };
        Ok(json_response(status, json!(report)))
    }
}

/// The storm breaker on the control API: shown in `/v1/stats` and `/readyz` (never failing
/// readiness), reset by `POST /v1/storm/{provider}/reset`.
impl Control {
    /// Closes provider storm breakers through `storm`.
    pub fn with_storm_breaker(mut self, storm: Arc<StormBreaker>) -> Self {
        self.storm = Some(storm);
        self
    }

    fn add_storm_detail(&self, body: &mut Value) {
        if let Some(storm) = &self.storm {
            body["storm"] = storm.to_json(std::time::Instant::now());
        }
    }

    fn storm_api(&self, method: &Method, path: &[&str]) -> Result<Response<ProxyBody>, Problem> {
        let Some(storm) = &self.storm else {
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                "this control listener has no storm breaker",
            ));
        };
        match (method, path) {
            (&Method::POST, [provider, "reset"]) => {
                let provider = percent_decode(provider)?;
                let was_open = storm.reset(&provider);
                Ok(json_response(
                    StatusCode::OK,
                    json!({"provider": provider, "reset": true, "was_open": was_open}),
                ))
            }
            _ => Err(Problem::new(
                StatusCode::NOT_FOUND,
                format!("no control endpoint {method} /v1/storm/{}", path.join("/")),
            )),
        }
    }
}

async fn sessions_api<B>(
    gate: &Arc<SessionGate>,
    method: &Method,
    path: &[&str],
    body: B,
) -> Result<Response<ProxyBody>, Problem>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let store = gate.store();
    match (method, path) {
        (&Method::PUT, ["sessions", id]) => {
            let id = session_id(id)?;
            let body: OpenBody = read_json(body, true).await?;
            let mut spec = OpenSpec::new();
            if let Some(scope) = body.scope {
                if !scope.is_object() {
                    return Err(Problem::bad_request("scope must be a JSON object"));
                }
                spec = spec.with_scope(scope);
            }
            if let Some(resume) = body.resume {
                spec = spec.with_resume(resume);
            }
            let (record, receipt) = store.open_with_receipt(&id, spec).await?;
            // A reopen lost with a failed master would let traffic through for a session the
            // store still has closed: it counts (and is applied here) once replicated.
            confirm_replicated(store.as_ref(), receipt, &format!("session {id}")).await?;
            gate.closed().record(&record);
            Ok(json_response(StatusCode::OK, record_json(&record)))
        }
        (&Method::GET, ["sessions", id]) => {
            let id = session_id(id)?;
            match store.get(&id).await? {
                Some(record) => Ok(json_response(StatusCode::OK, record_json(&record))),
                None => Err(Problem::new(
                    StatusCode::NOT_FOUND,
                    format!("no session {id}"),
                )),
            }
        }
        (&Method::POST, ["sessions", id, "close"]) => {
            let id = session_id(id)?;
            let body: CloseBody = read_json(body, false).await?;
            if body.reason.trim().is_empty() {
                return Err(Problem::bad_request("reason must not be empty"));
            }
            let mut closure = Closure::new(Class::Manual, "manual", body.reason);
            if let Some(epoch) = body.epoch {
                closure = closure.at_epoch(epoch);
            }
            match gate.close(&id, closure).await? {
                CloseDisposition::Stored(outcome) => Ok(close_response(&outcome)),
                CloseDisposition::Queued { entry, cause } => Ok(json_response(
                    StatusCode::ACCEPTED,
                    json!({"outcome": "queued", "outbox_entry": entry, "cause": cause.to_string()}),
                )),
            }
        }
        (&Method::POST, ["sessions", id, "wakeups"]) => {
            let id = session_id(id)?;
            let body: WakeupBody = read_json(body, false).await?;
            match store.add_wakeup(&id, body.due_ms, body.payload).await? {
                AddWakeup::Added(wakeup) => Ok(json_response(
                    StatusCode::CREATED,
                    json!({"id": wakeup.id, "epoch": wakeup.epoch, "due_ms": wakeup.due_ms}),
                )),
                AddWakeup::SessionClosed => Err(Problem::new(
                    StatusCode::CONFLICT,
                    format!("session {id} is closed; no wakeup was scheduled"),
                )),
            }
        }
        (&Method::GET, ["sessions", id, "wakeups"]) => {
            let id = session_id(id)?;
            let wakeups: Vec<Value> = store
                .pending_wakeups(&id)
                .await?
                .into_iter()
                .map(|w| json!({"id": w.id, "epoch": w.epoch, "due_ms": w.due_ms, "payload": w.payload}))
                .collect();
            Ok(json_response(StatusCode::OK, json!({ "wakeups": wakeups })))
        }
        (&Method::POST, ["wakeups", "claim"]) => {
            let body: ClaimBody = read_json(body, false).await?;
            if body.limit == 0 || body.limit > 10_000 {
                return Err(Problem::bad_request("limit must be between 1 and 10000"));
            }
            let lease_ms = body.lease_ms.unwrap_or(DEFAULT_LEASE_MS);
            let claimed: Vec<Value> = store
                .lease_due(crate::session::unix_ms_now(), body.limit, lease_ms)
                .await?
                .into_iter()
                .map(|c| {
                    let w = c.wakeup;
                    json!({"id": w.id, "session": w.session.as_str(), "epoch": w.epoch,
                           "due_ms": w.due_ms, "payload": w.payload,
                           "leased_until_ms": c.leased_until_ms})
                })
                .collect();
            Ok(json_response(StatusCode::OK, json!({ "wakeups": claimed })))
        }
        (&Method::POST, ["wakeups", wakeup_id, "ack"]) => {
            let body: AckBody = read_json(body, false).await?;
            let id = session_id(&body.session)?;
            let wakeup_id = percent_decode(wakeup_id)?;
            if store.ack_wakeup(&id, &wakeup_id).await? {
                Ok(json_response(
                    StatusCode::OK,
                    json!({"id": wakeup_id, "session": id.as_str(), "acked": true}),
                ))
            } else {
                Err(Problem::new(
                    StatusCode::NOT_FOUND,
                    format!("no wakeup {wakeup_id} of session {id}: acknowledged already, or cancelled by a close"),
                ))
            }
        }
        (&Method::GET, ["credentials"]) => {
            let blocks: Vec<Value> = store
                .blocked_credentials()
                .await?
                .iter()
                .map(credential_json)
                .collect();
            Ok(json_response(
                StatusCode::OK,
                json!({ "credentials": blocks }),
            ))
        }
        (&Method::DELETE, ["credentials", fingerprint]) => {
            let fingerprint = Fingerprint::parse(fingerprint).map_err(|_| {
                Problem::bad_request(format!("{fingerprint:?} is not a credential fingerprint"))
            })?;
            let (unblocked, receipt) = store.unblock_credential_with_receipt(&fingerprint).await?;
            if unblocked {
                confirm_replicated(
                    store.as_ref(),
                    receipt,
                    &format!("the unblock of {}", fingerprint.as_str()),
                )
                .await?;
                // This instance stops refusing the credential before the answer goes out.
                if let Err(error) = gate.closed().catch_up(store.as_ref()).await {
                    tracing::warn!(%error, "Unblock stored; this instance learns it with the next catch-up.");
                }
                Ok(json_response(
                    StatusCode::OK,
                    json!({"fingerprint": fingerprint.as_str(), "unblocked": true}),
                ))
            } else {
                Err(Problem::new(
                    StatusCode::NOT_FOUND,
                    format!("credential {} is not blocked", fingerprint.as_str()),
                ))
            }
        }
        _ => Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("no control endpoint {method} /v1/{}", path.join("/")),
        )),
    }
}

/// An operator's write is reported done only once replicated the configured way (Redis
/// `WAIT`; at once for redb). Otherwise 503: the write may or may not survive a failover, and
/// the same call can be repeated (a reopen of a session already open changes nothing).
async fn confirm_replicated(
    store: &dyn SessionStore,
    receipt: Receipt,
    what: &str,
) -> Result<(), Problem> {
    match store.replicated(&[receipt]).await {
        Ok(()) => Ok(()),
        Err(error) if error.is_retryable() => Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{what} was written but the store's replicas have not confirmed it ({error}); it counts only once they do: repeat the call"
            ),
        )),
        Err(error) => Err(error.into()),
    }
}

/// Version of the event format the control API and the stores write; see the README's
/// "Events for the platform". Fields may be added within a version, never renamed or retyped.
pub const EVENT_FORMAT_VERSION: u64 = 1;

/// An event as the control API and the webhook send it: its fields plus `"v"`.
pub fn event_json(event: &crate::session::StateEvent) -> Value {
    let mut value = json!(event);
    value["v"] = json!(EVENT_FORMAT_VERSION);
    value
}

const DEFAULT_EVENTS_LIMIT: usize = 100;
const MAX_EVENTS_LIMIT: usize = 1000;

/// `GET /v1/events?after=CURSOR&limit=N`: one page of the durable event log.
async fn events_page(
    store: &dyn crate::session::SessionStore,
    query: &str,
) -> Result<Response<ProxyBody>, Problem> {
    let mut after = None;
    let mut limit = DEFAULT_EVENTS_LIMIT;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value)?;
        match name {
            "after" if !value.is_empty() => after = Some(EventCursor::from_token(value)),
            "after" => {}
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_EVENTS_LIMIT).contains(n))
                    .ok_or_else(|| {
                        Problem::bad_request(format!(
                            "limit must be between 1 and {MAX_EVENTS_LIMIT}"
                        ))
                    })?
            }
            other => return Err(Problem::bad_request(format!("unknown parameter {other:?}"))),
        }
    }
    let page = store.events_after(after.as_ref(), limit).await?;
    let events: Vec<Value> = page.events.iter().map(event_json).collect();
    Ok(json_response(
        StatusCode::OK,
        json!({"events": events, "cursor": page.cursor.as_str(), "gap": page.gap}),
    ))
}

fn session_id(raw: &str) -> Result<SessionId, Problem> {
    let decoded = percent_decode(raw)?;
    SessionId::parse(&decoded).map_err(|e| Problem::bad_request(format!("bad session id: {e}")))
}

/// Session ids are visible ASCII, so `%XX` escapes are the only decoding a path needs.
fn percent_decode(raw: &str) -> Result<String, Problem> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Problem::bad_request("bad percent-escape in the path"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Problem::bad_request("session id is not UTF-8"))
}

async fn read_json<T, B>(body: B, empty_is_object: bool) -> Result<T, Problem>
where
    T: serde::de::DeserializeOwned,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let bytes = Limited::new(body, MAX_CONTROL_BODY)
        .collect()
        .await
        .map_err(|e| Problem::bad_request(format!("cannot read the body: {e}")))?
        .to_bytes();
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) && empty_is_object {
        b"{}"
    } else {
        &bytes
    };
    serde_json::from_slice(text)
        .map_err(|e| Problem::bad_request(format!("invalid JSON body: {e}")))
}

fn close_response(outcome: &CloseOutcome) -> Response<ProxyBody> {
    match outcome {
        CloseOutcome::Closed {
            record,
            cancelled_wakeups,
        } => json_response(
            StatusCode::OK,
            json!({"outcome": "closed", "cancelled_wakeups": cancelled_wakeups, "session": record_json(record)}),
        ),
        CloseOutcome::AlreadyClosed { record } => json_response(
            StatusCode::OK,
            json!({"outcome": "already_closed", "session": record_json(record)}),
        ),
        CloseOutcome::Fenced { current_epoch } => json_response(
            StatusCode::CONFLICT,
            json!({"outcome": "fenced", "current_epoch": current_epoch,
                   "error": "the closure names an older epoch than the session's"}),
        ),
    }
}

/// A session record as the API shows it: closure fields at the top level.
pub fn record_json(record: &SessionRecord) -> Value {
    let mut value = json!({
        "id": record.id.as_str(),
        "epoch": record.epoch,
        "status": record.status.as_str(),
        "scope": record.scope,
        "resume": record.resume,
        "opened_at_ms": record.opened_at_ms,
    });
    if let Some(closure) = &record.closure {
        value["class"] = json!(closure.class.as_str());
        value["rule"] = json!(closure.rule);
        value["reason"] = json!(closure.reason);
        value["detail"] = json!(closure.detail);
        value["upstream_status"] = json!(closure.upstream_status);
        value["closed_at"] = json!(closure.closed_at_ms);
    }
    value
}

fn credential_json(block: &CredentialBlock) -> Value {
    json!({
        "fingerprint": block.fingerprint.as_str(),
        "class": block.class.as_str(),
        "rule": block.rule,
        "reason": block.reason,
        "blocked_at": block.blocked_at_ms,
    })
}
