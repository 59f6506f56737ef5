//! [`ClosedSet`]: this instance's copy of which sessions are closed and which credentials are
//! blocked, consulted on every request with no I/O.
//!
//! Closure facts only grow: once `(session, closed at epoch E)` holds, it holds forever, and
//! a reopen is a move to a higher epoch. The set is therefore a per-session max over
//! `(epoch, closed)` (closed above open at the same epoch), and applying the same fact twice
//! or out of order gives the same result. That is what lets it be fed from several sources
//! at once without coordination:
//! 1. this instance's own closures ([`ClosedSet::insert_closure`], [`ClosedSet::record_outcome`]), at once;
//! 2. the store's live notifications ([`SessionStore::watch`](super::SessionStore::watch));
//! 3. catch-up reads of the store's event log after a cursor ([`ClosedSet::catch_up`]), at
//!    startup, on every [`Notice::Resync`](super::Notice::Resync) (a reconnect) and on a
//!    timer; when the log was trimmed past the cursor, a full snapshot instead;
//! 4. the instance's local copy ([`LocalView`](super::LocalView)) at a cold start.
//!
//! Credentials work the same way with a generation counter that every block and unblock raises.
//!
//! # Memory
//! An entry is a 128-bit keyed hash of the id and one packed `u64` (epoch, closed flag,
//! interned class and rule): about 50 bytes per closed session or blocked credential with the
//! map's own overhead. Reasons and evidence stay in the store. Reads take one shard's read
//! lock (64 shards); every write is O(1).

mod feed;
mod packed;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use super::credential::{CredentialBlock, Fingerprint};
use super::event::{EventCursor, EventKind, Snapshot, StateEvent};
use super::model::{Class, CloseOutcome, Closure, SessionId, SessionRecord, SessionStatus};

pub use packed::Detail;
use packed::{credential_key, DetailRef, Details, Key, KeyMap, Mark, SessionKeys};

const SHARDS: usize = 64;

/// Why a request is halted: the closure that ended its generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedEntry {
    /// The epoch that was closed.
    pub epoch: u64,
    pub class: Class,
    pub rule: Arc<str>,
}

/// What one [`ClosedSet::catch_up`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatchUp {
    /// Log events applied.
    pub events: usize,
    /// Whether the set was (re)built from a snapshot (first run, or a gap in the log).
    pub resynced: bool,
}

/// Settings of the background feed.
#[derive(Debug, Clone)]
pub struct FeedConfig {
    /// How often the log is read even without a notice: the repair path for notices lost
    /// on a connection that failed silently, and the retry while the store is down.
    pub catch_up_interval: Duration,
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig {
            catch_up_interval: Duration::from_secs(1),
        }
    }
}

/// A fact the set learned, as the local copy records it (see [`ClosedSet::with_journal`]).
#[derive(Debug, Clone, PartialEq)]
pub enum ViewChange {
    Session {
        id: SessionId,
        epoch: u64,
        closed: bool,
        /// The closure this fact carried: its epoch and what it names.
        closure: Option<(u64, Arc<Detail>)>,
    },
    Credential {
        fingerprint: Fingerprint,
        generation: u64,
        block: Option<Arc<Detail>>,
    },
}

/// The instance-local set of closed sessions and blocked credentials. See the module docs.
pub struct ClosedSet {
    keys: SessionKeys,
    sessions: Box<[RwLock<KeyMap<Mark>>]>,
    /// The newest closure of sessions that have since been reopened (reopens are rare), so a
    /// request of the old generation still names the rule that ended it.
    history: RwLock<KeyMap<(u64, Arc<Detail>)>>,
    credentials: Box<[RwLock<KeyMap<Mark>>]>,
    details: Details,
    closed_count: AtomicUsize,
    /// Credentials blocked right now, so requests skip fingerprinting while there are none.
    blocked_count: AtomicUsize,
    ready: AtomicBool,
    cursor: tokio::sync::Mutex<Option<EventCursor>>,
    journal: Option<Mutex<Vec<ViewChange>>>,
    /// Off while the journal's own copy is loaded back, so loading writes nothing.
    journaling: AtomicBool,
}

impl Default for ClosedSet {
    fn default() -> Self {
        Self::new()
    }
}

fn shards() -> Box<[RwLock<KeyMap<Mark>>]> {
    (0..SHARDS)
        .map(|_| RwLock::new(KeyMap::default()))
        .collect()
}

impl ClosedSet {
    pub fn new() -> Self {
        ClosedSet {
            keys: SessionKeys::new(),
            sessions: shards(),
            history: RwLock::new(KeyMap::default()),
            credentials: shards(),
            details: Details::new(),
            closed_count: AtomicUsize::new(0),
            blocked_count: AtomicUsize::new(0),
            ready: AtomicBool::new(false),
            cursor: tokio::sync::Mutex::new(None),
            journal: None,
            journaling: AtomicBool::new(false),
        }
    }

    /// A set that also records every change it learns, for [`ClosedSet::drain_journal`]: the
    /// local copy persists them. Recording starts with [`ClosedSet::start_journal`], after
    /// the copy was loaded back.
    pub fn with_journal() -> Self {
        ClosedSet {
            journal: Some(Mutex::new(Vec::new())),
            ..ClosedSet::new()
        }
    }

    pub fn start_journal(&self) {
        self.journaling.store(true, Ordering::Release);
    }

    /// Puts back changes that could not be written, ahead of newer ones.
    pub fn requeue_journal(&self, mut changes: Vec<ViewChange>) {
        if let Some(journal) = &self.journal {
            let mut journal = journal.lock().unwrap_or_else(PoisonError::into_inner);
            changes.append(&mut journal);
            *journal = changes;
        }
    }

    /// Changes learned since the last call (empty without a journal).
    pub fn drain_journal(&self) -> Vec<ViewChange> {
        match &self.journal {
            Some(journal) => {
                std::mem::take(&mut *journal.lock().unwrap_or_else(PoisonError::into_inner))
            }
            None => Vec::new(),
        }
    }

    fn note(&self, change: impl FnOnce() -> ViewChange) {
        if !self.journaling.load(Ordering::Acquire) {
            return;
        }
        if let Some(journal) = &self.journal {
            journal
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(change());
        }
    }

    fn shard_of(shards: &[RwLock<KeyMap<Mark>>], key: Key) -> &RwLock<KeyMap<Mark>> {
        // The map hashes with the first word; shards use the second so both spread.
        &shards[(key.0[1] as usize) % SHARDS]
    }

    /// True once the view is complete: the first catch-up with the store, or a load of the
    /// local copy, finished.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Declares the view complete without the store (a local copy was loaded while the store
    /// is unreachable).
    pub fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// The log position the set has applied, if any.
    pub async fn cursor(&self) -> Option<EventCursor> {
        self.cursor.lock().await.clone()
    }

    /// Resumes catch-up after `cursor` (saved with a local copy) instead of a full snapshot.
    pub async fn resume_from(&self, cursor: EventCursor) {
        *self.cursor.lock().await = Some(cursor);
    }

    /// Whether a request of `id` must be halted, and why.
    ///
    /// - no epoch, or the current epoch or a later one: halted if the session is closed at
    ///   its latest known epoch (a closed session stays closed for every epoch until reopened);
    /// - an older epoch: halted, since that generation ended; the answer names its closure
    ///   when one is known. A reopen at `e + 1` lets requests at `e + 1` through, while
    ///   requests at `e` stay halted.
    pub fn check(&self, id: &SessionId, request_epoch: Option<u64>) -> Option<ClosedEntry> {
        let key = self.keys.key(id.as_str());
        let mark = *Self::shard_of(&self.sessions, key)
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)?;
        let current = || self.entry(key, mark.epoch(), mark.detail());
        match request_epoch {
            Some(epoch) if epoch < mark.epoch() => {
                if mark.closed() {
                    return Some(current());
                }
                let history = self.history.read().unwrap_or_else(PoisonError::into_inner);
                Some(match history.get(&key) {
                    Some((closed_epoch, detail)) if *closed_epoch >= epoch => ClosedEntry {
                        epoch: *closed_epoch,
                        class: detail.class,
                        rule: detail.rule.clone(),
                    },
                    _ => superseded(mark.epoch() - 1),
                })
            }
            _ => mark.closed().then(current),
        }
    }

    fn entry(&self, key: Key, epoch: u64, detail: DetailRef) -> ClosedEntry {
        match self.details.get(key, detail) {
            Some(detail) => ClosedEntry {
                epoch,
                class: detail.class,
                rule: detail.rule.clone(),
            },
            None => ClosedEntry {
                epoch,
                class: Class::Manual,
                rule: Arc::from(""),
            },
        }
    }

    /// The latest epoch known for the session, if any is known beyond "open at 0".
    pub fn latest_epoch(&self, id: &SessionId) -> Option<u64> {
        let key = self.keys.key(id.as_str());
        Self::shard_of(&self.sessions, key)
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .map(|m| m.epoch())
    }

    /// Number of sessions currently closed at their latest known epoch.
    pub fn closed_count(&self) -> usize {
        self.closed_count.load(Ordering::Relaxed)
    }

    /// Number of credentials blocked right now.
    pub fn blocked_count(&self) -> usize {
        self.blocked_count.load(Ordering::Relaxed)
    }

    /// Whether any credential is blocked right now; when none is, callers skip
    /// fingerprinting the request's credential altogether.
    pub fn any_blocked(&self) -> bool {
        self.blocked_count.load(Ordering::Acquire) > 0
    }

    pub fn is_blocked(&self, fingerprint: &Fingerprint) -> bool {
        self.blocked(fingerprint).is_some()
    }

    /// The class and rule of the block on this credential, if it is blocked.
    pub fn blocked(&self, fingerprint: &Fingerprint) -> Option<Arc<Detail>> {
        let key = credential_key(fingerprint);
        let mark = *Self::shard_of(&self.credentials, key)
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)?;
        if !mark.closed() {
            return None;
        }
        Some(self.details.get(key, mark.detail()).unwrap_or_else(|| {
            Arc::new(Detail {
                class: Class::CredentialInvalid,
                rule: Arc::from(""),
            })
        }))
    }

    /// Records this instance's own closure at once (before the store confirms it).
    /// `epoch` is the generation the closure is about; use [`ClosedSet::epoch_for`].
    pub fn insert_closure(&self, id: &SessionId, epoch: u64, closure: &Closure) {
        self.merge_session_parts(
            id,
            epoch,
            true,
            Some((epoch, &closure.class, &closure.rule)),
        );
    }

    /// The epoch to record a local closure under: the request's, but never beyond the latest
    /// known one (the store closes its current generation for a later epoch), or 0.
    pub fn epoch_for(&self, id: &SessionId, request_epoch: Option<u64>) -> u64 {
        let known = self.latest_epoch(id).unwrap_or(0);
        request_epoch.map_or(known, |epoch| epoch.min(known))
    }

    /// Applies what the store answered to a close of this instance.
    pub fn record_outcome(&self, id: &SessionId, outcome: &CloseOutcome) {
        match outcome {
            CloseOutcome::Closed { record, .. } | CloseOutcome::AlreadyClosed { record } => {
                self.record(record)
            }
            CloseOutcome::Fenced { current_epoch } => {
                self.merge_session(id, *current_epoch, false, None)
            }
        }
    }

    /// Applies a stored record (e.g. the answer of `open` or `get`).
    pub fn record(&self, record: &SessionRecord) {
        let closure = record
            .closure
            .as_ref()
            .map(|c| (record.epoch, &c.class, c.rule.as_str()));
        self.merge_session_parts(&record.id, record.epoch, record.is_closed(), closure);
    }

    /// Records this instance's own credential block at once.
    pub fn insert_block(&self, block: &CredentialBlock) {
        let key = credential_key(&block.fingerprint);
        let generation = Self::shard_of(&self.credentials, key)
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .map_or(0, |m| m.epoch());
        self.merge_credential(
            &block.fingerprint,
            generation,
            Some(detail(&block.class, &block.rule)),
        );
    }

    pub fn apply_event(&self, event: &StateEvent) {
        match event.kind {
            EventKind::Opened | EventKind::Reopened => {
                if let Some(id) = &event.session {
                    self.merge_session(id, event.epoch, false, None);
                }
            }
            EventKind::Closed => {
                if let Some(id) = &event.session {
                    let class = event.class.as_ref().unwrap_or(&Class::Manual);
                    let rule = event.rule.as_deref().unwrap_or_default();
                    self.merge_session_parts(
                        id,
                        event.epoch,
                        true,
                        Some((event.epoch, class, rule)),
                    );
                }
            }
            EventKind::ResumeReset => {}
            EventKind::CredentialBlocked => {
                if let Some(fingerprint) = &event.fingerprint {
                    let block = detail(
                        event.class.as_ref().unwrap_or(&Class::CredentialInvalid),
                        event.rule.as_deref().unwrap_or_default(),
                    );
                    self.merge_credential(fingerprint, event.epoch, Some(block));
                }
            }
            EventKind::CredentialUnblocked => {
                if let Some(fingerprint) = &event.fingerprint {
                    self.merge_credential(fingerprint, event.epoch, None);
                }
            }
        }
    }

    pub fn apply_snapshot(&self, snapshot: &Snapshot) {
        for mark in &snapshot.sessions {
            let closure = mark
                .last_closure
                .as_ref()
                .map(|c| (c.epoch, &c.class, c.rule.as_str()));
            self.merge_session_parts(
                &mark.session,
                mark.epoch,
                mark.status == SessionStatus::Closed,
                closure,
            );
        }
        for credential in &snapshot.credentials {
            self.merge_credential(
                &credential.fingerprint,
                credential.generation,
                credential.block.as_ref().map(|b| detail(&b.class, &b.rule)),
            );
        }
    }

    /// Merges one session fact: `(epoch, closed)` by max, and the closure it carries.
    pub fn merge_session(
        &self,
        id: &SessionId,
        epoch: u64,
        closed: bool,
        closure: Option<(u64, Arc<Detail>)>,
    ) {
        let closure = closure
            .as_ref()
            .map(|(at, detail)| (*at, &detail.class, &*detail.rule));
        self.merge_session_parts(id, epoch, closed, closure);
    }

    /// [`ClosedSet::merge_session`] with the closure's class and rule borrowed: a snapshot of
    /// a million sessions allocates nothing per row for them.
    fn merge_session_parts(
        &self,
        id: &SessionId,
        epoch: u64,
        closed: bool,
        closure: Option<(u64, &Class, &str)>,
    ) {
        let key = self.keys.key(id.as_str());
        let mut shard = Self::shard_of(&self.sessions, key)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let known = shard.get(&key).copied();
        if known.is_none() && epoch == 0 && !closed && closure.is_none() {
            // "Open at epoch 0" is what an absent entry already means.
            return;
        }
        let before = known.unwrap_or_default();
        let (mut at, mut is_closed, mut detail_ref) =
            (before.epoch(), before.closed(), before.detail());
        // The closure of a generation this fact moves past, for `history`.
        let mut past: Option<(u64, Arc<Detail>)> = None;
        if epoch > at || (epoch == at && closed && !is_closed) {
            if epoch > at && is_closed {
                past = self.details.get(key, detail_ref).map(|d| (at, d));
            }
            if epoch > at {
                detail_ref = DetailRef::NONE;
            }
            at = epoch;
            is_closed = closed;
        }
        if let Some((closure_epoch, class, rule)) = closure {
            if closure_epoch > at {
                if is_closed {
                    past = self.details.get(key, detail_ref).map(|d| (at, d));
                }
                (at, is_closed) = (closure_epoch, true);
                detail_ref = self.details.intern(key, class, rule);
            } else if closure_epoch == at && is_closed {
                if detail_ref == DetailRef::NONE {
                    detail_ref = self.details.intern(key, class, rule);
                }
            } else if past.as_ref().is_none_or(|(e, _)| closure_epoch > *e) {
                past = Some((closure_epoch, detail(class, rule)));
            }
        }
        let after = Mark::new(at, is_closed, detail_ref);
        if known != Some(after) {
            shard.insert(key, after);
            match (before.closed(), is_closed) {
                (false, true) => {
                    self.closed_count.fetch_add(1, Ordering::Relaxed);
                }
                (true, false) => {
                    self.closed_count.fetch_sub(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        drop(shard);
        let mut history_changed = false;
        if let Some(past) = past {
            let mut history = self.history.write().unwrap_or_else(PoisonError::into_inner);
            if history.get(&key).is_none_or(|(e, _)| past.0 > *e) {
                history.insert(key, past);
                history_changed = true;
            }
        }
        if known != Some(after) || history_changed {
            self.note(|| ViewChange::Session {
                id: id.clone(),
                epoch,
                closed,
                closure: closure.map(|(at, class, rule)| (at, detail(class, rule))),
            });
        }
    }

    /// Merges one credential fact; at the same generation a block wins (a local block is
    /// recorded at the generation before the store's, and must not be undone by an older
    /// unblock).
    pub fn merge_credential(
        &self,
        fingerprint: &Fingerprint,
        generation: u64,
        block: Option<Arc<Detail>>,
    ) {
        let key = credential_key(fingerprint);
        let mut shard = Self::shard_of(&self.credentials, key)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let known = shard.get(&key).copied();
        let newer = match known {
            None => true,
            Some(known) => {
                generation > known.epoch()
                    || (generation == known.epoch() && block.is_some() && !known.closed())
            }
        };
        if !newer {
            return;
        }
        let detail_ref = block.as_ref().map_or(DetailRef::NONE, |d| {
            self.details.intern(key, &d.class, &d.rule)
        });
        shard.insert(key, Mark::new(generation, block.is_some(), detail_ref));
        match (known.is_some_and(|k| k.closed()), block.is_some()) {
            (false, true) => {
                self.blocked_count.fetch_add(1, Ordering::Release);
            }
            (true, false) => {
                self.blocked_count.fetch_sub(1, Ordering::Release);
            }
            _ => {}
        }
        drop(shard);
        self.note(|| ViewChange::Credential {
            fingerprint: fingerprint.clone(),
            generation,
            block,
        });
    }
}

fn detail(class: &Class, rule: &str) -> Arc<Detail> {
    Arc::new(Detail {
        class: *class,
        rule: Arc::from(rule),
    })
}

/// For a request of an epoch the set knows ended, without knowing how.
fn superseded(epoch: u64) -> ClosedEntry {
    ClosedEntry {
        epoch,
        class: Class::Superseded,
        rule: Arc::from(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::MAX_EXACT_INTEGER;

    fn sid(s: &str) -> SessionId {
        SessionId::parse(s).unwrap()
    }

    fn closed_event(id: &str, epoch: u64) -> StateEvent {
        let mut event = StateEvent::bare(EventKind::Closed, epoch, 10);
        event.session = Some(sid(id));
        event.class = Some(Class::LostAccess);
        event.rule = Some("slack.not_in_channel".into());
        event
    }

    fn reopened_event(id: &str, epoch: u64) -> StateEvent {
        let mut event = StateEvent::bare(EventKind::Reopened, epoch, 20);
        event.session = Some(sid(id));
        event
    }

    #[test]
    fn closed_session_halts_requests_of_its_epoch_and_older() {
        let set = ClosedSet::new();
        set.apply_event(&closed_event("a", 2));
        assert_eq!(set.check(&sid("a"), None).unwrap().epoch, 2);
        assert!(set.check(&sid("a"), Some(2)).is_some());
        assert!(set.check(&sid("a"), Some(1)).is_some());
        assert!(
            set.check(&sid("a"), Some(3)).is_some(),
            "a later epoch does not get around a closure"
        );
        assert!(set.check(&sid("a"), Some(MAX_EXACT_INTEGER)).is_some());
        assert!(set.check(&sid("b"), None).is_none());
        assert!(set.check(&sid("b"), Some(7)).is_none());
    }

    #[test]
    fn a_local_closure_is_recorded_at_the_latest_known_epoch_at_most() {
        let set = ClosedSet::new();
        set.apply_event(&reopened_event("a", 2));
        assert_eq!(set.epoch_for(&sid("a"), Some(9)), 2);
        assert_eq!(set.epoch_for(&sid("a"), Some(1)), 1);
        assert_eq!(set.epoch_for(&sid("a"), None), 2);
        assert_eq!(set.epoch_for(&sid("new"), Some(5)), 0);
    }

    #[test]
    fn counters_follow_closes_reopens_blocks_and_unblocks() {
        let set = ClosedSet::new();
        set.apply_event(&closed_event("a", 0));
        set.apply_event(&closed_event("a", 0));
        set.apply_event(&closed_event("b", 0));
        assert_eq!(set.closed_count(), 2);
        set.apply_event(&reopened_event("a", 1));
        assert_eq!(set.closed_count(), 1);
        let fp = Fingerprint::parse(&"cd".repeat(32)).unwrap();
        let block = CredentialBlock::new(fp.clone(), Class::CredentialInvalid, "r", "x");
        set.insert_block(&block);
        set.insert_block(&block);
        assert_eq!(set.blocked_count(), 1);
        assert_eq!(&*set.blocked(&fp).unwrap().rule, "r");
        set.merge_credential(&fp, 1, None);
        assert_eq!(set.blocked_count(), 0);
        assert!(!set.any_blocked());
    }

    #[test]
    fn the_journal_records_only_changes() {
        let set = ClosedSet::with_journal();
        set.apply_event(&closed_event("before", 0));
        set.start_journal();
        set.apply_event(&closed_event("a", 0));
        set.apply_event(&closed_event("a", 0));
        set.apply_event(&reopened_event("a", 1));
        let changes = set.drain_journal();
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(set.drain_journal().is_empty());
    }

    #[test]
    fn reopen_lets_the_new_epoch_through_and_keeps_the_old_one_halted() {
        let set = ClosedSet::new();
        set.apply_event(&closed_event("a", 0));
        set.apply_event(&reopened_event("a", 1));
        assert!(set.check(&sid("a"), None).is_none());
        assert!(set.check(&sid("a"), Some(1)).is_none());
        let old = set.check(&sid("a"), Some(0)).unwrap();
        assert_eq!((old.epoch, &*old.rule), (0, "slack.not_in_channel"));
    }

    #[test]
    fn facts_applied_out_of_order_give_the_same_state() {
        let events = [
            closed_event("a", 0),
            reopened_event("a", 1),
            closed_event("a", 1),
            reopened_event("a", 2),
        ];
        let forward = ClosedSet::new();
        events.iter().for_each(|e| forward.apply_event(e));
        let backward = ClosedSet::new();
        events.iter().rev().for_each(|e| backward.apply_event(e));
        for set in [&forward, &backward] {
            assert!(set.check(&sid("a"), None).is_none());
            assert!(set.check(&sid("a"), Some(2)).is_none());
            assert_eq!(set.check(&sid("a"), Some(1)).unwrap().epoch, 1);
            assert_eq!(set.latest_epoch(&sid("a")), Some(2));
        }
    }

    #[test]
    fn stale_generation_without_closure_details_is_superseded() {
        let set = ClosedSet::new();
        set.apply_event(&reopened_event("a", 3));
        assert_eq!(
            set.check(&sid("a"), Some(2)).unwrap().class,
            Class::Superseded
        );
        assert!(set.check(&sid("a"), Some(3)).is_none());
    }

    #[test]
    fn opens_at_epoch_zero_do_not_grow_the_set() {
        let set = ClosedSet::new();
        let mut event = StateEvent::bare(EventKind::Opened, 0, 1);
        event.session = Some(sid("a"));
        set.apply_event(&event);
        assert_eq!(set.latest_epoch(&sid("a")), None);
    }

    #[test]
    fn credential_generations_order_blocks_and_unblocks() {
        let set = ClosedSet::new();
        let fp = Fingerprint::parse(&"ab".repeat(32)).unwrap();
        let mut blocked = StateEvent::bare(EventKind::CredentialBlocked, 1, 5);
        blocked.fingerprint = Some(fp.clone());
        let mut unblocked = StateEvent::bare(EventKind::CredentialUnblocked, 2, 6);
        unblocked.fingerprint = Some(fp.clone());
        set.apply_event(&unblocked);
        set.apply_event(&blocked);
        assert!(
            !set.is_blocked(&fp),
            "an older block must not undo a newer unblock"
        );
        let block = CredentialBlock::new(fp.clone(), Class::CredentialInvalid, "r", "x");
        set.insert_block(&block);
        assert!(
            set.is_blocked(&fp),
            "a local block wins at the known generation"
        );
    }
}
