//! The durable event log: what changed, in order, for catch-up readers.
//!
//! Every state change that matters to other instances (open, reopen, close, resume reset,
//! credential block and unblock) is appended in the same atomic step as the change itself,
//! and announced live through [`SessionStore::watch`](super::SessionStore::watch).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::credential::{CredentialBlock, Fingerprint};
use super::model::{Class, SessionId, SessionStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A session was registered, or its scope/resume updated (epoch unchanged).
    Opened,
    /// A closed session was opened again at `epoch` (one more than the closed one).
    Reopened,
    Closed,
    ResumeReset,
    CredentialBlocked,
    CredentialUnblocked,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Opened => "opened",
            EventKind::Reopened => "reopened",
            EventKind::Closed => "closed",
            EventKind::ResumeReset => "resume_reset",
            EventKind::CredentialBlocked => "credential_blocked",
            EventKind::CredentialUnblocked => "credential_unblocked",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "opened" => EventKind::Opened,
            "reopened" => EventKind::Reopened,
            "closed" => EventKind::Closed,
            "resume_reset" => EventKind::ResumeReset,
            "credential_blocked" => EventKind::CredentialBlocked,
            "credential_unblocked" => EventKind::CredentialUnblocked,
            _ => return None,
        })
    }
}

/// One entry of the event log. Serialized as a flat JSON object; absent fields are omitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateEvent {
    /// Position in the log, backend specific (redb: a sequence number; Redis:
    /// `partition/stream-id`). Unique within one store.
    pub id: String,
    pub kind: EventKind,
    /// Set for session events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionId>,
    /// Set for credential events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<Fingerprint>,
    /// Session events: the session epoch after the change. Credential events: the
    /// credential's generation, raised by one on every block and unblock.
    pub epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<Class>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    /// Closed events: how many pending wakeups the close removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled: Option<u64>,
    /// When the change was observed (unix ms, the caller's clock).
    pub at_ms: u64,
}

impl StateEvent {
    pub(crate) fn bare(kind: EventKind, epoch: u64, at_ms: u64) -> Self {
        StateEvent {
            id: String::new(),
            kind,
            session: None,
            fingerprint: None,
            epoch,
            class: None,
            rule: None,
            reason: None,
            detail: None,
            upstream_status: None,
            cancelled: None,
            at_ms,
        }
    }
}

/// Where a reader stopped in the event log. Opaque; only the store that produced it
/// understands it. Its text form ([`EventCursor::as_str`]) can be persisted and given back
/// through [`EventCursor::from_token`].
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventCursor(String);

impl EventCursor {
    pub fn from_token(token: impl Into<String>) -> Self {
        EventCursor(token.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for EventCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventCursor({})", self.0)
    }
}

/// One page of [`SessionStore::events_after`](super::SessionStore::events_after).
#[derive(Debug, Clone, PartialEq)]
pub struct EventPage {
    /// In log order; at most the requested limit. Fewer than the limit means the reader
    /// reached the end of the log.
    pub events: Vec<StateEvent>,
    /// Pass this to the next call to continue after the last event of this page.
    pub cursor: EventCursor,
    /// True when events after the given cursor were trimmed away before being read: the
    /// reader missed some and must rebuild from [`SessionStore::snapshot`](super::SessionStore::snapshot).
    pub gap: bool,
}

/// A live notification from [`SessionStore::watch`](super::SessionStore::watch).
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    Event(StateEvent),
    /// The live feed (re)started or may have missed events: re-run the catch-up from the
    /// last cursor. Always the first notice of a watch.
    Resync,
}

/// What a closed session's last closure was, as the snapshot and the closed set keep it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosureSummary {
    /// The epoch that was closed.
    pub epoch: u64,
    pub class: Class,
    pub rule: String,
    pub reason: String,
    pub closed_at_ms: u64,
}

/// A session with closure history (closed now, or reopened after a closure).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionMark {
    pub session: SessionId,
    pub epoch: u64,
    pub status: SessionStatus,
    pub last_closure: Option<ClosureSummary>,
}

/// A credential that was ever blocked: its generation, and the block if it is blocked now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialMark {
    pub fingerprint: Fingerprint,
    pub generation: u64,
    pub block: Option<CredentialBlock>,
}

/// Everything the closed set needs, read from the store's indexes, with the log position
/// it is consistent with: replaying events after `cursor` on top of it gives the current state.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub cursor: EventCursor,
    pub sessions: Vec<SessionMark>,
    pub credentials: Vec<CredentialMark>,
}

/// One page of [`SessionStore::snapshot_page`](super::SessionStore::snapshot_page).
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotPage {
    /// The log position the whole snapshot is consistent with, when read from the first page
    /// (later pages repeat a position at least as new; readers keep the first).
    pub cursor: EventCursor,
    pub sessions: Vec<SessionMark>,
    pub credentials: Vec<CredentialMark>,
    /// Pass back to read the next page; `None` on the last one.
    pub next: Option<String>,
}
