//! Hook points where session state plugs into the halt layer.
//!
//! The layer itself only decides; what a decision does to a session (close it, cancel its
//! wakeups, block a credential, clear a resume id) lives behind [`SessionHooks`]. Without
//! state, [`LogOnly`] logs every match and lets every response through.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::HeaderMap;

use super::response::HaltResponse;
use crate::rules::Decision;
use crate::session::{Presented, SessionId};
use crate::synthetic::SyntheticResponse;

/// A boxed `Send` future, as the hooks return them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The session a request belongs to, from `x-haltgate-session` and `x-haltgate-epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionHeader {
    /// The session's id.
    pub id: SessionId,
    /// Generation the agent acts in; `None` means "the current one".
    pub epoch: Option<u64>,
}

/// What the hooks see of a request.
#[derive(Debug)]
pub struct RequestInfo<'a> {
    /// The provider whose rules apply.
    pub provider: &'a str,
    /// The session named by the request's headers.
    pub session: Option<&'a SessionHeader>,
    /// The request's headers.
    pub headers: &'a HeaderMap,
    /// The request's query string.
    pub query: Option<&'a str>,
    /// The start of the body (at most `max_body_bytes`), once a hook asked for it with
    /// [`Admission::NeedsBody`].
    pub body: Option<&'a [u8]>,
}

/// What [`SessionHooks::before_forward`] decided about a request.
pub enum Admission {
    /// Send the request upstream.
    Forward,
    /// Call again with [`RequestInfo::body`] set: the decision depends on the body.
    NeedsBody,
    /// Answer in the upstream's place; nothing is sent upstream.
    Refuse(Refusal),
}

/// The answer to a request that is not forwarded.
pub enum Refusal {
    /// Answer with this halt.
    Halt(HaltResponse),
    /// The halt, once the future completes (e.g. the session of a blocked credential is
    /// closed first).
    HaltAfter(BoxFuture<'static, HaltResponse>),
    /// This instance does not know yet which sessions are closed: `503 not_ready`.
    NotReady,
    /// A proxy error.
    Error(SyntheticResponse),
}

/// Why the session scope could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("session scope unavailable: {0}")]
pub struct ScopeUnavailable(pub String);

/// A decisive rule match on one upstream response.
#[derive(Debug, Clone)]
pub struct Matched {
    /// The provider whose rule matched.
    pub provider: Arc<str>,
    /// The request's session, if it named one.
    pub session: Option<SessionHeader>,
    /// What the rules decided.
    pub decision: Decision,
    /// Status of the upstream response that matched.
    pub upstream_status: u16,
    /// When the request arrived (unix ms): a closure without an epoch applies to the
    /// generation current then, not to one opened while the request was under way.
    pub started_ms: u64,
    /// [`SessionHooks::known_epoch`] at admission, for a request that named no epoch.
    pub admitted_epoch: Option<u64>,
    /// The credentials the request presented, in the order the provider reads them; a
    /// credential block applies to the first.
    pub credentials: Vec<Presented>,
    /// A capped excerpt of the matched body, recorded as the closure's detail.
    pub detail: String,
}

impl Matched {
    /// The halt for this match, naming the session and epoch as the request did: what a hook
    /// that keeps no session state of its own answers.
    pub fn halt_response(&self) -> HaltResponse {
        HaltResponse::rule_matched(
            self.decision.class,
            self.decision.rule.as_deref().unwrap_or("-"),
            self.session.as_ref().map(|s| s.id.as_str()),
            self.session.as_ref().and_then(|s| s.epoch),
            self.upstream_status,
        )
    }
}

/// What happens to the response after a match.
#[derive(Debug)]
pub enum Outcome {
    /// Answer with this instead of the upstream response.
    Halt(HaltResponse),
    /// Let the upstream response through, adding `x-haltgate-action: <action>` if given.
    Forward {
        /// The value of `x-haltgate-action`, if any.
        action: Option<&'static str>,
    },
}

/// Decision points of the halt layer. Only [`SessionHooks::on_match`] must be written; every
/// other method has a default that suits a layer without session state.
pub trait SessionHooks: Send + Sync + 'static {
    /// Runs before forwarding, on every request. Must be local and cheap (no I/O): it is the
    /// hot path. Anything but [`Admission::Forward`] answers the request without sending it
    /// upstream.
    ///
    /// Default: forward every request.
    fn before_forward(&self, _request: &RequestInfo<'_>) -> Admission {
        Admission::Forward
    }

    /// The generation this instance knows as current for `session` when its request is
    /// admitted. A closure of a request that named no epoch is recorded locally at most at
    /// this one, so a reopen learned while the request ran is not closed by it.
    ///
    /// Default: `None` (no generations known).
    fn known_epoch(&self, _session: &SessionHeader) -> Option<u64> {
        None
    }

    /// Runs only when a rule that compares with the session scope would decide. Returns the
    /// session's scope, or `None` when it has none (then scope comparisons do not hold). An
    /// error means it cannot be known: the response then passes undecided and nothing is
    /// closed.
    ///
    /// Default: `Ok(None)` (no session has a scope).
    fn scope(
        &self,
        _session: &SessionHeader,
    ) -> BoxFuture<'static, Result<Option<serde_json::Value>, ScopeUnavailable>> {
        Box::pin(async { Ok(None) })
    }

    /// Runs once per response that an `enforce` rule matched, in a task of its own: it
    /// completes even if the agent disconnects. `lost_access` and
    /// `credential_invalid` normally close the session and halt; `stale_session` clears the
    /// resume id and forwards with `x-haltgate-action: reset`.
    fn on_match(&self, matched: Matched) -> BoxFuture<'static, Outcome>;
}

/// Hooks without session state: every match is logged and the response goes through.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogOnly;

impl SessionHooks for LogOnly {
    fn on_match(&self, matched: Matched) -> BoxFuture<'static, Outcome> {
        tracing::warn!(
            provider = %matched.provider,
            class = %matched.decision.class,
            rule = matched.decision.rule.as_deref().unwrap_or("-"),
            session = matched.session.as_ref().map(|s| s.id.as_str()).unwrap_or("-"),
            upstream_status = matched.upstream_status,
            "Rule matched; no session state is attached, so the response goes through."
        );
        Box::pin(async { Outcome::Forward { action: None } })
    }
}
