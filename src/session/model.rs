//! The values sessions are made of: ids, records, closures and wakeups.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use crate::class::Class;

use super::error::StoreError;

/// Largest epoch and timestamp a store accepts: 2^53 - 1. Redis scripts compute in Lua
/// doubles, which are exact up to there, and JSON readers in other languages agree.
pub const MAX_EXACT_INTEGER: u64 = (1 << 53) - 1;
/// A closure's `detail` and `reason` are cut to this many bytes (at a character boundary).
pub const MAX_DETAIL_BYTES: usize = 1024;
/// Longest accepted `rule` name.
pub const MAX_RULE_BYTES: usize = 128;
/// Largest accepted session scope, as serialized JSON.
pub const MAX_SCOPE_BYTES: usize = 16 * 1024;
/// Longest accepted resume id.
pub const MAX_RESUME_BYTES: usize = 1024;
/// Largest accepted wakeup payload, as serialized JSON.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// Milliseconds since the Unix epoch, from the local clock.
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

// === SessionId ===

/// A session id: 1 to 256 bytes of visible ASCII (`!` to `~`, no spaces).
///
/// Cheap to clone. A session that was never registered is open at epoch 0.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(Arc<str>);

/// Why a string is not a [`SessionId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid session id: {0}")]
pub struct InvalidSessionId(&'static str);

impl SessionId {
    pub const MAX_LEN: usize = 256;

    pub fn parse(raw: &str) -> Result<Self, InvalidSessionId> {
        Self::check(raw)?;
        Ok(SessionId(Arc::from(raw)))
    }

    /// What [`SessionId::parse`] checks, without building the id.
    pub fn check(raw: &str) -> Result<(), InvalidSessionId> {
        if raw.is_empty() {
            return Err(InvalidSessionId("empty"));
        }
        if raw.len() > Self::MAX_LEN {
            return Err(InvalidSessionId("longer than 256 bytes"));
        }
        if !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidSessionId(
                "only visible ASCII characters are allowed (no spaces or control characters)",
            ));
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({:?})", &*self.0)
    }
}

impl Borrow<str> for SessionId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl FromStr for SessionId {
    type Err = InvalidSessionId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SessionId::parse(s)
    }
}

impl Serialize for SessionId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SessionId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        SessionId::parse(&raw).map_err(serde::de::Error::custom)
    }
}

// === Status and class ===

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    Open,
    Closed,
}

impl SessionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Open => "open",
            SessionStatus::Closed => "closed",
        }
    }

    pub(crate) fn parse(raw: &str) -> Result<Self, StoreError> {
        match raw {
            "open" => Ok(SessionStatus::Open),
            "closed" => Ok(SessionStatus::Closed),
            other => Err(StoreError::corrupt(format!(
                "unknown session status {other:?}"
            ))),
        }
    }
}

// === Closure ===

/// A request to close a session, as the proxy or the control API makes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Closure {
    /// Generation to close. `None` means the generation current at `at_ms`: if the session
    /// was (re)opened after `at_ms`, the close is fenced (it was about an older generation).
    pub epoch: Option<u64>,
    pub class: Class,
    /// Name of the rule that matched (or e.g. `manual`).
    pub rule: String,
    /// Short human reason.
    pub reason: String,
    /// Capped excerpt of the evidence (the upstream body), at most [`MAX_DETAIL_BYTES`].
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub upstream_status: Option<u16>,
    /// When the closure was observed (unix ms). Kept as `closed_at_ms`, also when the
    /// closure reaches the store later through the outbox.
    pub at_ms: u64,
}

impl Closure {
    pub fn new(class: Class, rule: impl Into<String>, reason: impl Into<String>) -> Self {
        Closure {
            epoch: None,
            class,
            rule: rule.into(),
            reason: reason.into(),
            detail: String::new(),
            upstream_status: None,
            at_ms: unix_ms_now(),
        }
    }

    pub fn at_epoch(mut self, epoch: u64) -> Self {
        self.epoch = Some(epoch);
        self
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    pub fn with_upstream_status(mut self, status: u16) -> Self {
        self.upstream_status = Some(status);
        self
    }

    pub fn observed_at(mut self, at_ms: u64) -> Self {
        self.at_ms = at_ms;
        self
    }

    /// Checks the limits and cuts `detail` and `reason` to [`MAX_DETAIL_BYTES`].
    /// Every store calls this before writing.
    pub fn normalized(&self) -> Result<Closure, StoreError> {
        check_rule(&self.rule)?;
        if let Some(epoch) = self.epoch {
            check_exact("epoch", epoch)?;
        }
        check_exact("at_ms", self.at_ms)?;
        let mut closure = self.clone();
        closure.reason = truncate_at_char(&self.reason, MAX_DETAIL_BYTES).to_owned();
        closure.detail = truncate_at_char(&self.detail, MAX_DETAIL_BYTES).to_owned();
        Ok(closure)
    }
}

pub(crate) fn check_rule(rule: &str) -> Result<(), StoreError> {
    if rule.is_empty() || rule.len() > MAX_RULE_BYTES || rule.chars().any(char::is_control) {
        return Err(StoreError::invalid(format!(
            "rule {rule:?} must be 1 to {MAX_RULE_BYTES} bytes without control characters"
        )));
    }
    Ok(())
}

pub(crate) fn check_exact(what: &str, value: u64) -> Result<(), StoreError> {
    if value > MAX_EXACT_INTEGER {
        return Err(StoreError::invalid(format!(
            "{what} {value} is above the supported maximum {MAX_EXACT_INTEGER}"
        )));
    }
    Ok(())
}

pub(crate) fn truncate_at_char(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// How a closed session ended, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosureInfo {
    pub class: Class,
    pub rule: String,
    pub reason: String,
    pub detail: String,
    pub upstream_status: Option<u16>,
    pub closed_at_ms: u64,
}

impl ClosureInfo {
    pub(crate) fn from_closure(closure: &Closure) -> Self {
        ClosureInfo {
            class: closure.class,
            rule: closure.rule.clone(),
            reason: closure.reason.clone(),
            detail: closure.detail.clone(),
            upstream_status: closure.upstream_status,
            closed_at_ms: closure.at_ms,
        }
    }
}

// === Records ===

/// A session as the store holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: SessionId,
    /// Generation; raised by one on every reopen, or to the epoch of a newer closure.
    pub epoch: u64,
    pub status: SessionStatus,
    /// Free-form JSON the agent platform attached (e.g. the Slack channel).
    pub scope: Option<serde_json::Value>,
    /// The resumable upstream conversation id, cleared by [`SessionStore::reset_resume`](super::SessionStore::reset_resume).
    pub resume: Option<String>,
    /// When the current generation was opened; `None` if it was never opened explicitly.
    pub opened_at_ms: Option<u64>,
    /// Present exactly when `status` is closed.
    pub closure: Option<ClosureInfo>,
}

impl SessionRecord {
    /// The state of a session id the store has never seen: open at epoch 0.
    pub fn unregistered(id: SessionId) -> Self {
        SessionRecord {
            id,
            epoch: 0,
            status: SessionStatus::Open,
            scope: None,
            resume: None,
            opened_at_ms: None,
            closure: None,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.status == SessionStatus::Closed
    }
}

/// What [`SessionStore::open`](super::SessionStore::open) sets besides the status.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OpenSpec {
    /// `Some(value)` replaces the scope; `Some(Value::Null)` clears it; `None` keeps it.
    pub scope: Option<serde_json::Value>,
    /// `Some(id)` replaces the resume id; `Some("")` clears it; `None` keeps it.
    pub resume: Option<String>,
    /// When the open happened (unix ms); `None` takes the local clock.
    pub at_ms: Option<u64>,
}

impl OpenSpec {
    pub fn new() -> Self {
        OpenSpec::default()
    }

    pub fn with_scope(mut self, scope: serde_json::Value) -> Self {
        self.scope = Some(scope);
        self
    }

    pub fn with_resume(mut self, resume: impl Into<String>) -> Self {
        self.resume = Some(resume.into());
        self
    }

    pub fn observed_at(mut self, at_ms: u64) -> Self {
        self.at_ms = Some(at_ms);
        self
    }

    /// Validated form: the scope serialized (empty string = clear), the time filled in.
    pub(crate) fn checked(&self) -> Result<CheckedOpen, StoreError> {
        let scope = match &self.scope {
            None => None,
            Some(serde_json::Value::Null) => Some(String::new()),
            Some(value) => {
                let text = serde_json::to_string(value)
                    .map_err(|e| StoreError::invalid(format!("scope: {e}")))?;
                if text.len() > MAX_SCOPE_BYTES {
                    return Err(StoreError::invalid(format!(
                        "scope is {} bytes, more than {MAX_SCOPE_BYTES}",
                        text.len()
                    )));
                }
                Some(text)
            }
        };
        if let Some(resume) = &self.resume {
            if resume.len() > MAX_RESUME_BYTES {
                return Err(StoreError::invalid(format!(
                    "resume id is {} bytes, more than {MAX_RESUME_BYTES}",
                    resume.len()
                )));
            }
        }
        let at_ms = self.at_ms.unwrap_or_else(unix_ms_now);
        check_exact("at_ms", at_ms)?;
        Ok(CheckedOpen {
            scope,
            resume: self.resume.clone(),
            at_ms,
        })
    }
}

pub(crate) struct CheckedOpen {
    pub scope: Option<String>,
    pub resume: Option<String>,
    pub at_ms: u64,
}

// === Outcomes ===

/// Result of [`SessionStore::close`](super::SessionStore::close).
#[derive(Debug, Clone, PartialEq)]
pub enum CloseOutcome {
    /// This call closed the session; `cancelled_wakeups` pending wakeups were removed.
    Closed {
        record: SessionRecord,
        cancelled_wakeups: u64,
    },
    /// The session was already closed at that epoch; nothing changed, no event. (Redis
    /// rewrites the status unchanged, so confirming this answer also confirms the closure
    /// found: replication is in order.)
    AlreadyClosed { record: SessionRecord },
    /// The closure is about an older generation than the stored one; nothing was written.
    Fenced { current_epoch: u64 },
}

impl CloseOutcome {
    /// The stored record after the call, when there is one to report.
    pub fn record(&self) -> Option<&SessionRecord> {
        match self {
            CloseOutcome::Closed { record, .. } | CloseOutcome::AlreadyClosed { record } => {
                Some(record)
            }
            CloseOutcome::Fenced { .. } => None,
        }
    }
}

/// Where a write went, for [`SessionStore::replicated`](super::SessionStore::replicated):
/// `WAIT` confirms only the writes of its own connection, so Redis notes the connection the
/// write went through (and, with Cluster, the slot whose master took it). Stores that are
/// durable on their own hand back an empty one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receipt {
    /// `CLIENT INFO`'s id and both addresses of the connection; `None` from a store that
    /// needs no confirmation.
    pub(crate) connection: Option<String>,
    /// Redis Cluster: the route of the write's keys, so the confirmation asks the same node.
    pub(crate) route: Option<redis::cluster_routing::Route>,
}

/// A scheduled wakeup of a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Wakeup {
    pub id: String,
    pub session: SessionId,
    /// The session generation it belongs to (wakeups never outlive their generation).
    pub epoch: u64,
    pub due_ms: u64,
    pub payload: serde_json::Value,
}

/// Result of [`SessionStore::add_wakeup`](super::SessionStore::add_wakeup).
#[derive(Debug, Clone, PartialEq)]
pub enum AddWakeup {
    Added(Wakeup),
    /// The session is closed; nothing was scheduled.
    SessionClosed,
}

/// A due wakeup handed out by [`SessionStore::claim_due`](super::SessionStore::claim_due)
/// (already removed from the store: the claimer owns it) or by
/// [`SessionStore::lease_due`](super::SessionStore::lease_due) (kept until acknowledged).
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedWakeup {
    pub wakeup: Wakeup,
    pub claimed_at_ms: u64,
    /// For a lease: when the wakeup is due again unless acknowledged first.
    pub leased_until_ms: Option<u64>,
}

/// Longest lease of a wakeup: a day.
pub const MAX_LEASE_MS: u64 = 24 * 60 * 60 * 1000;

/// When a lease taken at `now_ms` for `lease_ms` ends (`None`: claimed without a lease).
pub(crate) fn lease_end(now_ms: u64, lease_ms: Option<u64>) -> Result<Option<u64>, StoreError> {
    check_exact("now_ms", now_ms)?;
    let Some(lease_ms) = lease_ms else {
        return Ok(None);
    };
    check_lease(lease_ms)?;
    let until = now_ms + lease_ms;
    check_exact("lease end", until)?;
    Ok(Some(until))
}

pub(crate) fn check_lease(lease_ms: u64) -> Result<(), StoreError> {
    if lease_ms == 0 || lease_ms > MAX_LEASE_MS {
        return Err(StoreError::invalid(format!(
            "lease_ms must be between 1 and {MAX_LEASE_MS}"
        )));
    }
    Ok(())
}

pub(crate) fn check_payload(payload: &serde_json::Value) -> Result<String, StoreError> {
    let text =
        serde_json::to_string(payload).map_err(|e| StoreError::invalid(format!("payload: {e}")))?;
    if text.len() > MAX_PAYLOAD_BYTES {
        return Err(StoreError::invalid(format!(
            "wakeup payload is {} bytes, more than {MAX_PAYLOAD_BYTES}",
            text.len()
        )));
    }
    Ok(text)
}

/// A fresh random wakeup id: 32 lowercase hex characters.
pub(crate) fn new_wakeup_id() -> Result<String, StoreError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| StoreError::Failed("the system random generator failed".into()))?;
    Ok(hex(&bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_id_accepts_visible_ascii_up_to_256_bytes() {
        assert!(SessionId::parse("slack:T01/C02-thread.17").is_ok());
        assert!(SessionId::parse(&"a".repeat(256)).is_ok());
    }

    #[test]
    fn session_id_rejects_empty_long_spaces_and_non_ascii() {
        assert!(SessionId::parse("").is_err());
        assert!(SessionId::parse(&"a".repeat(257)).is_err());
        assert!(SessionId::parse("a b").is_err());
        assert!(SessionId::parse("a\nb").is_err());
        assert!(SessionId::parse("caf\u{e9}").is_err());
    }

    #[test]
    fn close_class_round_trips_and_rejects_odd_names() {
        for name in [
            "lost_access",
            "credential_invalid",
            "manual",
            "superseded",
            "quota_gone",
        ] {
            assert_eq!(Class::from_name(name).unwrap().as_str(), name);
        }
        assert!(Class::from_name("Lost").is_err());
        assert!(Class::from_name("").is_err());
        assert!(Class::from_name("9lives").is_err());
    }

    #[test]
    fn normalized_closure_cuts_detail_at_a_char_boundary() {
        let detail = "\u{e9}".repeat(600); // 1200 bytes
        let closure = Closure::new(Class::LostAccess, "slack.not_in_channel", "kicked")
            .with_detail(detail)
            .normalized()
            .unwrap();
        assert_eq!(closure.detail.len(), 1024);
        assert!(closure.detail.chars().all(|c| c == '\u{e9}'));
    }

    #[test]
    fn normalized_closure_rejects_bad_rule_and_huge_epoch() {
        assert!(Closure::new(Class::Manual, "", "x").normalized().is_err());
        assert!(Closure::new(Class::Manual, "r", "x")
            .at_epoch(MAX_EXACT_INTEGER + 1)
            .normalized()
            .is_err());
    }

    #[test]
    fn open_spec_limits_scope_and_resume() {
        let big = serde_json::Value::String("x".repeat(MAX_SCOPE_BYTES));
        assert!(OpenSpec::new().with_scope(big).checked().is_err());
        assert!(OpenSpec::new()
            .with_resume("r".repeat(MAX_RESUME_BYTES + 1))
            .checked()
            .is_err());
        let cleared = OpenSpec::new()
            .with_scope(serde_json::Value::Null)
            .checked()
            .unwrap();
        assert_eq!(cleared.scope.as_deref(), Some(""));
    }
}
