//! Session state: the durable record of which agent sessions are closed, their pending
//! wakeups, blocked credentials, and the event log every proxy instance follows.
//!
//! # Pieces
//! - [`SessionStore`]: the trait the proxy and the control API call. Two backends:
//!   [`RedbStore`] (one node, an embedded file) and [`RedisStore`] (a fleet; standalone Redis,
//!   Redis Sentinel or Redis Cluster). [`open_store`] picks one from a URL.
//! - [`ClosedSet`]: the instance-local copy of "which sessions are closed, which credentials
//!   are blocked", read on every request with no I/O, fed by the store's log.
//! - [`Outbox`]: a local durable queue of closures and credential blocks the shared store
//!   could not take (it was down or slow) or its replicas did not confirm; a relay replays
//!   them until the store confirms.
//! - [`LocalCopy`]: with a shared store, this instance's durable copy of its closed set, so
//!   a start while the store is down still knows every closure and block it had seen.
//!
//! # How the proxy uses it
//! - At startup: `open_store(url)`; with Redis, `LocalCopy::load_into` and the outbox's
//!   pending closures and blocks first; then `ClosedSet::spawn_feed` (readiness is
//!   [`ClosedSet::is_ready`]: nothing that names a session or carries a credential is
//!   forwarded before), `Outbox::spawn_relay` and `LocalCopy::spawn_flusher`.
//! - Before forwarding a request: [`ClosedSet::check`] and [`ClosedSet::is_blocked`], no I/O.
//! - On a lost-access match: [`ClosedSet::insert_closure`] (halts the next request at once),
//!   then [`close_or_enqueue`] with the request's epoch (or none; a closure the store took
//!   is confirmed by its replicas in the background, see [`SessionStore::replicated`]), then
//!   [`ClosedSet::record_outcome`] if the store answered.
//!
//! # The model
//! A session id that was never registered is **open at epoch 0**. [`SessionStore::open`]
//! registers it at epoch 0; reopening a closed session moves it to `epoch + 1`. A closure
//! names the epoch it is about and is fenced if that epoch is older than the stored one
//! (an older generation can never close a newer one). Closing removes every pending wakeup
//! in the same atomic step, so no wakeup of a closed session is ever handed out.
//!
//! # Store URLs
//! - `redb:PATH`: embedded database file, created only where no file exists; an empty,
//!   truncated or damaged file is refused (`haltgate store check|repair PATH`).
//! - `redis://[user:pass@]HOST:PORT[/DB][?options]`: standalone Redis.
//! - `redis+cluster://[user:pass@]HOST:PORT,HOST:PORT[?options]`, or `redis://HOST:PORT?cluster=true`:
//!   Redis Cluster, seeded from the listed nodes.
//! - `redis+sentinel://[user:pass@]HOST:PORT,HOST:PORT/MASTER_NAME[/DB][?options]`: the master
//!   the listed sentinels monitor under `MASTER_NAME`, followed through failovers. The user
//!   and password are the master's; `sentinel_auth=true` sends them to the sentinels too.
//!
//! Redis options: `prefix` (key prefix, default `hg`), `timeout_ms` (per operation, default
//! 1000), `connect_timeout_ms` (default 500), `event_retention` (approximate entries kept per
//! event stream partition, default 10000), `replicas_to_ack` (`auto` or a number: replicas a
//! write must reach to count as stored), `replica_ack_timeout_ms` (default 500).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

mod closed_set;
mod credential;
mod error;
mod event;
mod local_copy;
mod mark_row;
mod model;
mod outbox;
mod redb_file;
mod redb_store;
mod redis_store;
mod store_url;

pub use closed_set::{CatchUp, ClosedEntry, ClosedSet, Detail, FeedConfig, ViewChange};
pub use credential::{
    CredentialBlock, CredentialKey, CredentialPlace, Fingerprint, InvalidFingerprint, Presented,
};
pub use error::StoreError;
pub use event::{
    ClosureSummary, CredentialMark, EventCursor, EventKind, EventPage, Notice, SessionMark,
    Snapshot, SnapshotPage, StateEvent,
};
pub use local_copy::{LoadedCopy, LocalCopy};
pub(crate) use model::hex;
pub use model::{
    unix_ms_now, AddWakeup, ClaimedWakeup, Class, CloseOutcome, Closure, ClosureInfo,
    InvalidSessionId, OpenSpec, Receipt, SessionId, SessionRecord, SessionStatus, Wakeup,
    MAX_DETAIL_BYTES, MAX_EXACT_INTEGER, MAX_LEASE_MS, MAX_PAYLOAD_BYTES, MAX_RESUME_BYTES,
    MAX_RULE_BYTES, MAX_SCOPE_BYTES,
};
pub use outbox::{
    block_or_enqueue, close_or_enqueue, confirm_block, confirm_closure, BlockDisposition,
    BlockEntry, CloseDisposition, DeadBlock, DeadLetter, Outbox, OutboxEntry, RelayConfig,
};
pub use redb_file::{check_store_file, repair_store_file};
pub use redb_store::{RedbOptions, RedbStore};
pub use redis_store::{RedisOptions, RedisStore, RedisTarget, SentinelTarget};
pub use store_url::StoreLocator;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The durable session state, shared by every proxy instance that uses the same store.
///
/// Every write is idempotent or fenced, so a caller that got [`StoreError::Timeout`] or
/// [`StoreError::Unavailable`] (outcome unknown) may simply retry.
pub trait SessionStore: Send + Sync + 'static {
    /// The stored record; `None` for an id never registered (that session is open at epoch 0,
    /// see [`SessionRecord::unregistered`]).
    fn get(&self, id: &SessionId) -> BoxFuture<'_, Result<Option<SessionRecord>, StoreError>>;

    /// Registers an unknown session (open at **epoch 0**), reopens a closed one at
    /// `epoch + 1` (clearing its closure fields, keeping scope and resume unless `spec` sets
    /// them), or updates scope/resume of an open one (epoch unchanged). Appends an `Opened`
    /// or `Reopened` event.
    fn open(
        &self,
        id: &SessionId,
        spec: OpenSpec,
    ) -> BoxFuture<'_, Result<SessionRecord, StoreError>>;

    /// Closes the session, cancels all its pending wakeups, appends a `Closed` event and
    /// notifies watchers, in one atomic step.
    ///
    /// - epoch older than stored → [`CloseOutcome::Fenced`], nothing written;
    /// - epoch equal to stored and already closed → [`CloseOutcome::AlreadyClosed`], no event;
    /// - epoch newer than stored → the **current** generation is closed (only a reopen
    ///   starts a generation, so a later epoch names nothing that exists; a closed session
    ///   stays closed for every epoch until reopened, and a reopen always has room);
    /// - epoch `None` → the current epoch, unless the current generation was opened after
    ///   `closure.at_ms` (then `Fenced`: the closure was observed on an older generation).
    fn close(
        &self,
        id: &SessionId,
        closure: Closure,
    ) -> BoxFuture<'_, Result<CloseOutcome, StoreError>>;

    /// Clears `resume` if the session is at `epoch` (`None` = current) and has one. Appends a
    /// `ResumeReset` event only when something changed; returns whether it did.
    fn reset_resume(
        &self,
        id: &SessionId,
        epoch: Option<u64>,
        rule: &str,
    ) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Schedules a wakeup for the current generation. Refused with
    /// [`AddWakeup::SessionClosed`] when the session is closed.
    fn add_wakeup(
        &self,
        id: &SessionId,
        due_ms: u64,
        payload: serde_json::Value,
    ) -> BoxFuture<'_, Result<AddWakeup, StoreError>>;

    /// Pending wakeups of the session, earliest first.
    fn pending_wakeups(&self, id: &SessionId) -> BoxFuture<'_, Result<Vec<Wakeup>, StoreError>>;

    /// Hands out up to `limit` wakeups with `due_ms <= now_ms`, each exactly once (it is
    /// removed as it is claimed), never one of a closed session: the status check and the
    /// removal are one atomic step. Wakeups not yet due stay.
    fn claim_due(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ClaimedWakeup>, StoreError>>;

    /// Leases up to `limit` wakeups with `due_ms <= now_ms` for `lease_ms`: each is handed out
    /// and its due time moved to `now_ms + lease_ms`, so one not acknowledged
    /// ([`SessionStore::ack_wakeup`]) by then is handed out again (at-least-once delivery).
    /// Never one of a closed session: the status check and the lease are one atomic step,
    /// and closing removes leased wakeups with the pending ones.
    fn lease_due(
        &self,
        now_ms: u64,
        limit: usize,
        lease_ms: u64,
    ) -> BoxFuture<'_, Result<Vec<ClaimedWakeup>, StoreError>>;

    /// Removes a wakeup of `id` (a leased one whose work is done); true if it was there.
    fn ack_wakeup(
        &self,
        id: &SessionId,
        wakeup_id: &str,
    ) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Blocks a credential; true if it was not blocked before (then a `CredentialBlocked`
    /// event is appended).
    fn block_credential(&self, block: CredentialBlock) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Unblocks a credential; true if it was blocked (then a `CredentialUnblocked` event is
    /// appended).
    fn unblock_credential(
        &self,
        fingerprint: &Fingerprint,
    ) -> BoxFuture<'_, Result<bool, StoreError>>;

    fn blocked_credentials(&self) -> BoxFuture<'_, Result<Vec<CredentialBlock>, StoreError>>;

    /// Reads the event log after `cursor` (`None` = from the oldest retained entry), at most
    /// `limit` events. Events of one session (or one credential) are always in the order they
    /// happened; across sessions the Redis backend orders by commit time at millisecond
    /// resolution. See [`EventPage`] for the end-of-log and gap rules.
    fn events_after(
        &self,
        cursor: Option<&EventCursor>,
        limit: usize,
    ) -> BoxFuture<'_, Result<EventPage, StoreError>>;

    /// Every session with closure history and every credential ever blocked, with the log
    /// position the read is consistent with. Used to bootstrap and after a gap.
    fn snapshot(&self) -> BoxFuture<'_, Result<Snapshot, StoreError>>;

    /// The same snapshot in pages (`from`: the previous page's `next`), so a large state is
    /// never held twice in memory. The default is one page.
    fn snapshot_page(
        &self,
        from: Option<String>,
    ) -> BoxFuture<'_, Result<SnapshotPage, StoreError>> {
        Box::pin(async move {
            if let Some(from) = from {
                return Err(StoreError::InvalidCursor {
                    cursor: from,
                    reason: "this store reads its snapshot in one page".into(),
                });
            }
            let snapshot = self.snapshot().await?;
            Ok(SnapshotPage {
                cursor: snapshot.cursor,
                sessions: snapshot.sessions,
                credentials: snapshot.credentials,
                next: None,
            })
        })
    }

    /// Clears the evidence excerpt (`detail`) of closures made before `closed_before_ms`; the
    /// fact of the closure and its class, rule, reason and time stay. Returns how many were
    /// cleared. Each call resumes where the previous one ended, so it is cheap to repeat.
    fn prune_closure_details(
        &self,
        closed_before_ms: u64,
    ) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// [`SessionStore::close`], with the [`Receipt`] that [`SessionStore::replicated`]
    /// confirms. On Redis the receipt comes in the same round trip as the write.
    fn close_with_receipt(
        &self,
        id: &SessionId,
        closure: Closure,
    ) -> BoxFuture<'_, Result<(CloseOutcome, Receipt), StoreError>> {
        let id = id.clone();
        Box::pin(async move { Ok((self.close(&id, closure).await?, Receipt::default())) })
    }

    /// [`SessionStore::open`], with its [`Receipt`].
    fn open_with_receipt(
        &self,
        id: &SessionId,
        spec: OpenSpec,
    ) -> BoxFuture<'_, Result<(SessionRecord, Receipt), StoreError>> {
        let id = id.clone();
        Box::pin(async move { Ok((self.open(&id, spec).await?, Receipt::default())) })
    }

    /// [`SessionStore::block_credential`], with its [`Receipt`].
    fn block_credential_with_receipt(
        &self,
        block: CredentialBlock,
    ) -> BoxFuture<'_, Result<(bool, Receipt), StoreError>> {
        Box::pin(async move { Ok((self.block_credential(block).await?, Receipt::default())) })
    }

    /// [`SessionStore::unblock_credential`], with its [`Receipt`].
    fn unblock_credential_with_receipt(
        &self,
        fingerprint: &Fingerprint,
    ) -> BoxFuture<'_, Result<(bool, Receipt), StoreError>> {
        let fingerprint = fingerprint.clone();
        Box::pin(async move {
            Ok((
                self.unblock_credential(&fingerprint).await?,
                Receipt::default(),
            ))
        })
    }

    /// Waits until the writes of `receipts` are replicated the configured way (Redis: `WAIT`
    /// for `replicas_to_ack` replicas, on the connection each write went through). A
    /// retryable error means they are not confirmed yet, also when that connection was
    /// replaced meanwhile: the caller keeps the writes in its outbox, whose replay confirms
    /// them. With no receipts it only learns how many replicas are required. Stores that are
    /// durable on their own (redb fsyncs every write) answer at once.
    fn replicated(&self, receipts: &[Receipt]) -> BoxFuture<'_, Result<(), StoreError>> {
        let _ = receipts;
        Box::pin(async { Ok(()) })
    }

    /// Replicas a write must reach to count as stored, when known.
    fn replicas_to_ack(&self) -> Option<u32> {
        None
    }

    /// Live notifications of every instance's changes. Must be called inside a Tokio runtime:
    /// it starts a task that ends when the receiver is dropped. The first notice is always
    /// [`Notice::Resync`], sent once the subscription is live; another `Resync` follows every
    /// reconnect or overflow, after which the caller re-runs its catch-up. Delivery between
    /// two `Resync`s is in order but best effort; the log is the source of truth.
    fn watch(&self) -> tokio::sync::mpsc::Receiver<Notice>;

    /// The per-deployment secret for [`CredentialKey`], generated once and kept in the store
    /// so every instance on the same store agrees.
    fn deployment_secret(&self) -> BoxFuture<'_, Result<Vec<u8>, StoreError>>;
}

/// Opens the store a URL names (see the module docs for the forms). Redis connections are
/// made lazily, so this succeeds while Redis is down; the first operation then fails fast.
pub async fn open_store(url: &str) -> Result<Arc<dyn SessionStore>, StoreError> {
    match StoreLocator::parse(url)? {
        StoreLocator::Redb { path, options } => {
            let store = tokio::task::spawn_blocking(move || RedbStore::open(&path, options))
                .await
                .map_err(|e| {
                    StoreError::Failed(format!("opening the redb store panicked: {e}"))
                })??;
            Ok(Arc::new(store))
        }
        StoreLocator::Redis { target, options } => {
            Ok(Arc::new(RedisStore::connect(target, options)?))
        }
    }
}
