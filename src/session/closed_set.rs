//! [`ClosedSet`]: this instance's copy of which sessions are closed and which credentials are
//! blocked, consulted on every request with no I/O.
//!
//! Closure facts only grow: once `(session, closed at epoch E)` holds, it holds forever, and
//! a reopen is a move to a higher epoch. The set is therefore a per-session max over
//! `(epoch, closed)` (closed above open at the same epoch), and applying the same fact twice
//! or out of order gives the same result. That is what lets it be fed from several sources
//! at once without coordination:
//! 1. this instance's own closures ([`ClosedSet::insert_closure`], [`ClosedSet::record_outcome`]), at once;
//! 2. the store's live notifications ([`SessionStore::watch`]);
//! 3. catch-up reads of the store's event log after a cursor ([`ClosedSet::catch_up`]), at
//!    startup, on every [`Notice::Resync`] (a reconnect) and on a timer; when the log was
//!    trimmed past the cursor, a full [`SessionStore::snapshot`] instead.
//!
//! Credentials work the same way with a generation counter that every block and unblock raises.
//!
//! Reads take one shard's read lock (64 shards) or, for credentials, an `ArcSwap` load.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::task::JoinHandle;

use super::credential::{CredentialBlock, Fingerprint};
use super::error::StoreError;
use super::event::{ClosureSummary, EventCursor, EventKind, Notice, Snapshot, StateEvent};
use super::model::{CloseClass, CloseOutcome, Closure, SessionId, SessionRecord, SessionStatus};
use super::SessionStore;

const SHARDS: usize = 64;
const CATCH_UP_PAGE: usize = 512;
/// Resyncs tolerated within one catch-up before accepting a page despite a gap (the log is
/// trimmed faster than a snapshot can be read: retention is set far too low).
const MAX_RESYNCS_PER_CATCH_UP: usize = 3;

/// Why a request is halted: the closure that ended its generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedEntry {
    pub session: SessionId,
    /// The epoch that was closed.
    pub epoch: u64,
    pub class: CloseClass,
    pub rule: String,
    pub reason: String,
    pub closed_at_ms: u64,
}

#[derive(Debug, Default)]
struct Mark {
    /// Latest epoch known.
    epoch: u64,
    /// Whether `epoch` is closed.
    closed: bool,
    /// The newest closure known; after a reopen it still halts requests of older epochs.
    last_closure: Option<Arc<ClosedEntry>>,
}

#[derive(Debug, Clone)]
struct CredentialState {
    generation: u64,
    block: Option<Arc<CredentialBlock>>,
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

/// The instance-local set of closed sessions and blocked credentials. See the module docs.
pub struct ClosedSet {
    shards: Box<[RwLock<HashMap<SessionId, Mark>>]>,
    hasher: RandomState,
    credentials: ArcSwap<HashMap<Fingerprint, CredentialState>>,
    credentials_write: Mutex<()>,
    /// Credentials blocked right now, so requests skip fingerprinting while there are none.
    blocked_count: AtomicUsize,
    ready: AtomicBool,
    cursor: tokio::sync::Mutex<Option<EventCursor>>,
}

impl Default for ClosedSet {
    fn default() -> Self {
        Self::new()
    }
}

impl ClosedSet {
    pub fn new() -> Self {
        ClosedSet {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            credentials: ArcSwap::from_pointee(HashMap::new()),
            credentials_write: Mutex::new(()),
            blocked_count: AtomicUsize::new(0),
            ready: AtomicBool::new(false),
            cursor: tokio::sync::Mutex::new(None),
        }
    }

    fn shard(&self, id: &str) -> &RwLock<HashMap<SessionId, Mark>> {
        &self.shards[(self.hasher.hash_one(id) as usize) % SHARDS]
    }

    /// True once the first catch-up (the bootstrap) has completed.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Whether a request of `id` must be halted, and why.
    ///
    /// - no epoch: halted if the session is closed at its latest known epoch;
    /// - epoch `e`: halted if a closure at an epoch `>= e` is known, or if the session is
    ///   known to have moved past `e` (every generation before the current one ended).
    ///   A reopen at `e + 1` therefore lets requests at `e + 1` through, while requests at
    ///   `e` stay halted.
    pub fn check(&self, id: &SessionId, request_epoch: Option<u64>) -> Option<Arc<ClosedEntry>> {
        let shard = self
            .shard(id.as_str())
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mark = shard.get(id.as_str())?;
        match request_epoch {
            None if mark.closed => Some(
                mark.last_closure
                    .clone()
                    .filter(|c| c.epoch == mark.epoch)
                    .unwrap_or_else(|| superseded(id, mark.epoch)),
            ),
            None => None,
            Some(epoch) => {
                if let Some(closure) = mark.last_closure.as_ref().filter(|c| c.epoch >= epoch) {
                    return Some(closure.clone());
                }
                if epoch < mark.epoch || (mark.closed && epoch == mark.epoch) {
                    return Some(superseded(id, mark.epoch.saturating_sub(1)));
                }
                None
            }
        }
    }

    /// The latest epoch known for the session, if any is known beyond "open at 0".
    pub fn latest_epoch(&self, id: &SessionId) -> Option<u64> {
        let shard = self
            .shard(id.as_str())
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        shard.get(id.as_str()).map(|m| m.epoch)
    }

    /// Number of sessions currently closed at their latest known epoch.
    pub fn closed_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .values()
                    .filter(|m| m.closed)
                    .count()
            })
            .sum()
    }

    /// Whether any credential is blocked right now; when none is, callers skip
    /// fingerprinting the request's credential altogether.
    pub fn any_blocked(&self) -> bool {
        self.blocked_count.load(Ordering::Acquire) > 0
    }

    pub fn is_blocked(&self, fingerprint: &Fingerprint) -> bool {
        self.blocked(fingerprint).is_some()
    }

    pub fn blocked(&self, fingerprint: &Fingerprint) -> Option<Arc<CredentialBlock>> {
        self.credentials
            .load()
            .get(fingerprint)
            .and_then(|c| c.block.clone())
    }

    /// Records this instance's own closure at once (before the store confirms it).
    /// `epoch` is the generation the closure is about; use [`ClosedSet::epoch_for`] when the
    /// request carried none.
    pub fn insert_closure(&self, id: &SessionId, epoch: u64, closure: &Closure) {
        let entry = ClosedEntry {
            session: id.clone(),
            epoch,
            class: closure.class.clone(),
            rule: closure.rule.clone(),
            reason: closure.reason.clone(),
            closed_at_ms: closure.at_ms,
        };
        self.merge_session(id, epoch, true, Some(Arc::new(entry)));
    }

    /// The epoch to record a local closure under when the request carried none: the latest
    /// known epoch, or 0. For the local set only; the store gets the closure without an epoch
    /// (see [`close_or_enqueue`](super::close_or_enqueue)).
    pub fn epoch_for(&self, id: &SessionId, request_epoch: Option<u64>) -> u64 {
        request_epoch.unwrap_or_else(|| self.latest_epoch(id).unwrap_or(0))
    }

    /// Applies what the store answered to a close (or reopen) of this instance.
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
        let closure = record.closure.as_ref().map(|c| {
            Arc::new(ClosedEntry {
                session: record.id.clone(),
                epoch: record.epoch,
                class: c.class.clone(),
                rule: c.rule.clone(),
                reason: c.reason.clone(),
                closed_at_ms: c.closed_at_ms,
            })
        });
        self.merge_session(&record.id, record.epoch, record.is_closed(), closure);
    }

    /// Records this instance's own credential block at once.
    pub fn insert_block(&self, block: &CredentialBlock) {
        let generation = self
            .credentials
            .load()
            .get(&block.fingerprint)
            .map_or(0, |c| c.generation);
        self.merge_credential(
            &block.fingerprint,
            generation,
            Some(Arc::new(block.clone())),
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
                    let entry = ClosedEntry {
                        session: id.clone(),
                        epoch: event.epoch,
                        class: event.class.clone().unwrap_or(CloseClass::Manual),
                        rule: event.rule.clone().unwrap_or_default(),
                        reason: event.reason.clone().unwrap_or_default(),
                        closed_at_ms: event.at_ms,
                    };
                    self.merge_session(id, event.epoch, true, Some(Arc::new(entry)));
                }
            }
            EventKind::ResumeReset => {}
            EventKind::CredentialBlocked => {
                if let Some(fingerprint) = &event.fingerprint {
                    let block = CredentialBlock {
                        fingerprint: fingerprint.clone(),
                        class: event.class.clone().unwrap_or(CloseClass::CredentialInvalid),
                        rule: event.rule.clone().unwrap_or_default(),
                        reason: event.reason.clone().unwrap_or_default(),
                        blocked_at_ms: event.at_ms,
                    };
                    self.merge_credential(fingerprint, event.epoch, Some(Arc::new(block)));
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
                .map(|c| Arc::new(entry_from_summary(&mark.session, c)));
            self.merge_session(
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
                credential.block.clone().map(Arc::new),
            );
        }
    }

    fn merge_session(
        &self,
        id: &SessionId,
        epoch: u64,
        closed: bool,
        closure: Option<Arc<ClosedEntry>>,
    ) {
        let mut shard = self
            .shard(id.as_str())
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if !shard.contains_key(id.as_str()) && epoch == 0 && !closed && closure.is_none() {
            // "Open at epoch 0" is what an absent entry already means.
            return;
        }
        let mark = shard.entry(id.clone()).or_default();
        if epoch > mark.epoch || (epoch == mark.epoch && closed && !mark.closed) {
            mark.epoch = epoch;
            mark.closed = closed;
        }
        if let Some(closure) = closure {
            if mark
                .last_closure
                .as_ref()
                .is_none_or(|known| closure.epoch > known.epoch)
            {
                mark.last_closure = Some(closure);
            }
        }
    }

    fn merge_credential(
        &self,
        fingerprint: &Fingerprint,
        generation: u64,
        block: Option<Arc<CredentialBlock>>,
    ) {
        let _writer = self
            .credentials_write
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.credentials.load();
        let newer = match current.get(fingerprint) {
            None => true,
            // At the same generation a block wins: a local block is recorded at the
            // generation before the store's, and must not be undone by an older unblock.
            Some(known) => {
                generation > known.generation
                    || (generation == known.generation && block.is_some() && known.block.is_none())
            }
        };
        if !newer {
            return;
        }
        let mut next = HashMap::clone(&current);
        next.insert(fingerprint.clone(), CredentialState { generation, block });
        let blocked = next.values().filter(|c| c.block.is_some()).count();
        self.credentials.store(Arc::new(next));
        self.blocked_count.store(blocked, Ordering::Release);
    }

    /// Reads the store's log from this set's cursor to the end and applies it; the first call
    /// (and any call that finds the log trimmed past the cursor) loads a snapshot first.
    /// Marks the set ready when it succeeds. Concurrent calls run one after the other.
    pub async fn catch_up(&self, store: &dyn SessionStore) -> Result<CatchUp, StoreError> {
        let mut cursor = self.cursor.lock().await;
        let mut report = CatchUp::default();
        let mut resyncs = 0;
        if cursor.is_none() {
            let snapshot = store.snapshot().await?;
            self.apply_snapshot(&snapshot);
            *cursor = Some(snapshot.cursor);
            report.resynced = true;
            resyncs += 1;
        }
        loop {
            let page = store.events_after(cursor.as_ref(), CATCH_UP_PAGE).await?;
            if page.gap && resyncs < MAX_RESYNCS_PER_CATCH_UP {
                tracing::info!(
                    "Event log was trimmed past this instance's cursor; reloading the closed set."
                );
                let snapshot = store.snapshot().await?;
                self.apply_snapshot(&snapshot);
                *cursor = Some(snapshot.cursor);
                report.resynced = true;
                resyncs += 1;
                continue;
            }
            for event in &page.events {
                self.apply_event(event);
            }
            report.events += page.events.len();
            *cursor = Some(page.cursor);
            if page.events.len() < CATCH_UP_PAGE {
                break;
            }
        }
        self.ready.store(true, Ordering::Release);
        Ok(report)
    }

    /// Starts the background task that keeps the set fed from `store`: a catch-up at once and
    /// every `catch_up_interval`, live events as they come, and a catch-up on every
    /// [`Notice::Resync`]. The task ends when the set is dropped (or when aborted).
    pub fn spawn_feed(
        self: &Arc<Self>,
        store: Arc<dyn SessionStore>,
        config: FeedConfig,
    ) -> JoinHandle<()> {
        let set = Arc::downgrade(self);
        tokio::spawn(feed(set, store, config))
    }
}

enum Wake {
    Notice(Option<Notice>),
    Tick,
}

/// First retry delay after a failed catch-up; doubled per failure up to the catch-up interval.
const RETRY_MIN: Duration = Duration::from_millis(100);

async fn feed(set: Weak<ClosedSet>, store: Arc<dyn SessionStore>, config: FeedConfig) {
    let mut notices = store.watch();
    let mut timer = tokio::time::interval(config.catch_up_interval);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A failed catch-up (typically the first call on a connection the store just lost) is
    // retried soon rather than at the next tick.
    let retry = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(retry);
    let mut retry_pending = false;
    let mut retry_delay = RETRY_MIN;
    let mut failing = false;
    loop {
        let wake = tokio::select! {
            notice = notices.recv() => Wake::Notice(notice),
            _ = timer.tick() => Wake::Tick,
            _ = &mut retry, if retry_pending => Wake::Tick,
        };
        let Some(set) = set.upgrade() else {
            return;
        };
        match wake {
            Wake::Notice(Some(Notice::Event(event))) => {
                set.apply_event(&event);
                continue;
            }
            Wake::Notice(None) => {
                // The watch task ended (it only does when its receiver is gone or the store
                // handle was dropped); start a new one.
                notices = store.watch();
                continue;
            }
            Wake::Notice(Some(Notice::Resync)) | Wake::Tick => {}
        }
        match set.catch_up(store.as_ref()).await {
            Ok(report) => {
                if failing {
                    tracing::info!(
                        events = report.events,
                        "Closed set caught up with the store again."
                    );
                }
                failing = false;
                retry_pending = false;
                retry_delay = RETRY_MIN;
            }
            Err(err) => {
                if !failing {
                    tracing::warn!(error = %err, ready = set.is_ready(), "Closed set could not catch up with the store; retrying.");
                }
                failing = true;
                retry
                    .as_mut()
                    .reset(tokio::time::Instant::now() + retry_delay);
                retry_pending = true;
                retry_delay = (retry_delay * 2).min(config.catch_up_interval.max(RETRY_MIN));
            }
        }
    }
}

fn entry_from_summary(session: &SessionId, summary: &ClosureSummary) -> ClosedEntry {
    ClosedEntry {
        session: session.clone(),
        epoch: summary.epoch,
        class: summary.class.clone(),
        rule: summary.rule.clone(),
        reason: summary.reason.clone(),
        closed_at_ms: summary.closed_at_ms,
    }
}

/// For a request of an epoch the set knows ended, without knowing how.
fn superseded(session: &SessionId, epoch: u64) -> Arc<ClosedEntry> {
    Arc::new(ClosedEntry {
        session: session.clone(),
        epoch,
        class: CloseClass::Superseded,
        rule: String::new(),
        reason: "the session moved on to a newer epoch".to_owned(),
        closed_at_ms: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(s: &str) -> SessionId {
        SessionId::parse(s).unwrap()
    }

    fn closed_event(id: &str, epoch: u64) -> StateEvent {
        let mut event = StateEvent::bare(EventKind::Closed, epoch, 10);
        event.session = Some(sid(id));
        event.class = Some(CloseClass::LostAccess);
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
        assert!(set.check(&sid("a"), Some(3)).is_none());
        assert!(set.check(&sid("b"), None).is_none());
    }

    #[test]
    fn reopen_lets_the_new_epoch_through_and_keeps_the_old_one_halted() {
        let set = ClosedSet::new();
        set.apply_event(&closed_event("a", 0));
        set.apply_event(&reopened_event("a", 1));
        assert!(set.check(&sid("a"), None).is_none());
        assert!(set.check(&sid("a"), Some(1)).is_none());
        let old = set.check(&sid("a"), Some(0)).unwrap();
        assert_eq!((old.epoch, old.rule.as_str()), (0, "slack.not_in_channel"));
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
            CloseClass::Superseded
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
        let block = CredentialBlock::new(fp.clone(), CloseClass::CredentialInvalid, "r", "x");
        set.insert_block(&block);
        assert!(
            set.is_blocked(&fp),
            "a local block wins at the known generation"
        );
    }
}
