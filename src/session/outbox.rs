//! [`Outbox`]: closures and credential blocks this instance could not hand to the shared store
//! (or that its replicas did not confirm), kept in a local redb file until a relay lands them.
//!
//! The flow on a classified lost-access response is [`close_or_enqueue`]: try the store
//! (bounded by its timeout); if it is unavailable, write the closure to the outbox
//! (`Durability::Immediate`, fsynced) before the halt response goes out. The relay
//! ([`Outbox::spawn_relay`]) replays pending records with capped, jittered exponential
//! backoff until the store answers `Closed`, `AlreadyClosed` or `Fenced`, all terminal, and
//! then deletes the record. The records alone drive the relay, so it resumes after a restart.
//! A record the store rejects for good (invalid input, a script error) is moved to the
//! dead letters and logged instead of being retried forever.
//!
//! Credential blocks take the same way ([`block_or_enqueue`]); replaying one is harmless, a
//! block of a credential already blocked changes nothing. Both kinds share the `pending`
//! table, told apart by their fields, so files written before blocks were kept still read.

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, TableError, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::credential::CredentialBlock;
use super::error::StoreError;
use super::model::{unix_ms_now, CloseOutcome, Closure, Receipt, SessionId};
use super::redb_file::{each_row, open_or_create, Depth, FileKind, FileLayout, RowReport};
use super::SessionStore;

const PENDING: TableDefinition<u64, &[u8]> = TableDefinition::new("pending");
const DEAD: TableDefinition<u64, &[u8]> = TableDefinition::new("dead");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const LAST_ID: &str = "last_id";

/// The outbox file's tables, for opening and for `haltgate store check|repair`.
pub(super) const LAYOUT: FileLayout = FileLayout {
    kind: FileKind::Outbox,
    marker_table: "pending",
    create_tables,
    scan: scan_rows,
};

fn create_tables(txn: &WriteTransaction) -> Result<(), TableError> {
    txn.open_table(PENDING)?;
    txn.open_table(DEAD)?;
    txn.open_table(COUNTERS)?;
    Ok(())
}

/// Reads every row; at [`Depth::Decode`] also decodes each as the relay does.
fn scan_rows(txn: &ReadTransaction, report: &mut RowReport, depth: Depth) {
    fn decoded<T: for<'de> Deserialize<'de>>(
        what: &str,
        id: u64,
        bytes: &[u8],
    ) -> Result<(), String> {
        serde_json::from_slice::<T>(bytes)
            .map(drop)
            .map_err(|e| format!("{what} {id}: {e}"))
    }
    let decoding = depth == Depth::Decode;
    let mut blocks = 0;
    let pending = each_row(txn, PENDING, report, |id, value| {
        if !decoding {
            return Ok(());
        }
        decoded::<Pending>("pending record", id.value(), value.value())?;
        blocks += u64::from(matches!(
            serde_json::from_slice::<Pending>(value.value()),
            Ok(Pending::Block(_))
        ));
        Ok(())
    });
    let dead = each_row(txn, DEAD, report, |id, value| {
        if !decoding {
            return Ok(());
        }
        decoded::<Dead>("dead letter", id.value(), value.value())
    });
    each_row(txn, COUNTERS, report, |_, _| Ok(()));
    report.count("pending closures", pending - blocks);
    if blocks > 0 {
        report.count("pending credential blocks", blocks);
    }
    report.count("dead letters", dead);
}

/// A closure waiting to reach the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub id: u64,
    pub session: SessionId,
    pub closure: Closure,
    pub recorded_at_ms: u64,
}

/// A credential block waiting to reach the store, or its replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockEntry {
    pub id: u64,
    pub block: CredentialBlock,
    pub recorded_at_ms: u64,
}

/// A closure the store refused for good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub entry: OutboxEntry,
    pub error: String,
    pub failed_at_ms: u64,
}

/// A credential block the store refused for good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadBlock {
    pub entry: BlockEntry,
    pub error: String,
    pub failed_at_ms: u64,
}

/// A row of the `pending` table: its fields tell the kind (a closure row has `session`, a
/// block row `block`), so rows written before blocks were kept decode unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Pending {
    Closure(OutboxEntry),
    Block(BlockEntry),
}

impl Pending {
    fn id(&self) -> u64 {
        match self {
            Pending::Closure(entry) => entry.id,
            Pending::Block(entry) => entry.id,
        }
    }
}

/// A row of the `dead` table, told apart the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Dead {
    Closure(DeadLetter),
    Block(DeadBlock),
}

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// First retry delay after the store failed; doubled per failure up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// How often an empty outbox is looked at even without a new record (records written
    /// by an earlier process are found at start anyway).
    pub idle_poll: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            idle_poll: Duration::from_secs(30),
        }
    }
}

/// Where a credential block went.
#[derive(Debug, Clone, PartialEq)]
pub enum BlockDisposition {
    /// The store took it; true if the credential was not blocked before.
    Stored(bool),
    /// The store was unavailable; the block is in the outbox under `entry`.
    Queued { entry: u64, cause: StoreError },
}

/// Where a closure went.
#[derive(Debug, Clone, PartialEq)]
pub enum CloseDisposition {
    /// The store took it (or answered that it already had it, or fenced it).
    Stored(CloseOutcome),
    /// The store was unavailable; the closure is in the outbox under `entry`.
    Queued { entry: u64, cause: StoreError },
}

/// The local durable outbox. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
    wake: Arc<Notify>,
}

struct Inner {
    db: Database,
}

fn db_err(err: impl std::fmt::Display) -> StoreError {
    StoreError::Failed(format!("outbox: {err}"))
}

impl Outbox {
    /// Opens the outbox file, creating it only when no file exists at `path`; an empty,
    /// truncated or damaged file is refused (see [`RedbStore::open`](super::RedbStore::open)).
    /// Blocking.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = open_or_create(path, &LAYOUT)?;
        Ok(Outbox {
            inner: Arc::new(Inner { db }),
            wake: Arc::new(Notify::new()),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || op(&inner))
            .await
            .map_err(|e| StoreError::Failed(format!("outbox operation panicked: {e}")))?
    }

    /// Writes the closure durably and wakes the relay; returns the record id.
    pub async fn record(&self, session: &SessionId, closure: &Closure) -> Result<u64, StoreError> {
        let closure = closure.normalized()?;
        let session = session.clone();
        self.insert_pending(move |id| {
            Pending::Closure(OutboxEntry {
                id,
                session,
                closure,
                recorded_at_ms: unix_ms_now(),
            })
        })
        .await
    }

    /// Writes the credential block durably and wakes the relay; returns the record id.
    pub async fn record_block(&self, block: &CredentialBlock) -> Result<u64, StoreError> {
        let block = block.normalized()?;
        self.insert_pending(move |id| {
            Pending::Block(BlockEntry {
                id,
                block,
                recorded_at_ms: unix_ms_now(),
            })
        })
        .await
    }

    /// Writes one pending record (made from its new id) durably, then wakes the relay.
    async fn insert_pending(
        &self,
        make: impl FnOnce(u64) -> Pending + Send + 'static,
    ) -> Result<u64, StoreError> {
        let id = self.blocking(move |inner| inner.insert(make)).await?;
        self.wake.notify_one();
        Ok(id)
    }

    /// Pending closures, oldest first.
    pub async fn pending(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        self.blocking(|inner| Ok(closures_of(inner.list(PENDING)?)))
            .await
    }

    /// Pending credential blocks, oldest first.
    pub async fn pending_blocks(&self) -> Result<Vec<BlockEntry>, StoreError> {
        self.blocking(|inner| Ok(blocks_of(inner.list(PENDING)?)))
            .await
    }

    /// Pending closures, oldest first. Blocking: for startup, before the runtime serves.
    pub fn pending_blocking(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        Ok(closures_of(self.inner.list(PENDING)?))
    }

    /// Pending credential blocks, oldest first. Blocking: for startup.
    pub fn pending_blocks_blocking(&self) -> Result<Vec<BlockEntry>, StoreError> {
        Ok(blocks_of(self.inner.list(PENDING)?))
    }

    async fn pending_records(&self) -> Result<Vec<Pending>, StoreError> {
        self.blocking(|inner| inner.list(PENDING)).await
    }

    pub async fn len(&self) -> Result<usize, StoreError> {
        self.blocking(|inner| {
            let txn = inner.db.begin_read().map_err(db_err)?;
            Ok(txn
                .open_table(PENDING)
                .map_err(db_err)?
                .len()
                .map_err(db_err)? as usize)
        })
        .await
    }

    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len().await? == 0)
    }

    /// Closures the store refused for good.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let dead: Vec<Dead> = self.blocking(|inner| inner.list(DEAD)).await?;
        Ok(dead
            .into_iter()
            .filter_map(|row| match row {
                Dead::Closure(letter) => Some(letter),
                Dead::Block(_) => None,
            })
            .collect())
    }

    /// Credential blocks the store refused for good.
    pub async fn dead_blocks(&self) -> Result<Vec<DeadBlock>, StoreError> {
        let dead: Vec<Dead> = self.blocking(|inner| inner.list(DEAD)).await?;
        Ok(dead
            .into_iter()
            .filter_map(|row| match row {
                Dead::Block(letter) => Some(letter),
                Dead::Closure(_) => None,
            })
            .collect())
    }

    /// Deletes a pending record; true if it was there.
    pub async fn remove(&self, id: u64) -> Result<bool, StoreError> {
        self.blocking(move |inner| inner.remove(id)).await
    }

    async fn bury(&self, record: Pending, error: &StoreError) -> Result<(), StoreError> {
        let (error, failed_at_ms) = (error.to_string(), unix_ms_now());
        let letter = match record {
            Pending::Closure(entry) => Dead::Closure(DeadLetter {
                entry,
                error,
                failed_at_ms,
            }),
            Pending::Block(entry) => Dead::Block(DeadBlock {
                entry,
                error,
                failed_at_ms,
            }),
        };
        self.blocking(move |inner| inner.bury(letter)).await
    }

    /// Starts the relay task (see the module docs). It ends when every `Outbox` handle is
    /// dropped, or when aborted.
    pub fn spawn_relay(&self, store: Arc<dyn SessionStore>, config: RelayConfig) -> JoinHandle<()> {
        let inner = Arc::downgrade(&self.inner);
        let wake = self.wake.clone();
        tokio::spawn(relay(inner, wake, store, config))
    }
}

fn closures_of(records: Vec<Pending>) -> Vec<OutboxEntry> {
    records
        .into_iter()
        .filter_map(|record| match record {
            Pending::Closure(entry) => Some(entry),
            Pending::Block(_) => None,
        })
        .collect()
}

fn blocks_of(records: Vec<Pending>) -> Vec<BlockEntry> {
    records
        .into_iter()
        .filter_map(|record| match record {
            Pending::Block(entry) => Some(entry),
            Pending::Closure(_) => None,
        })
        .collect()
}

impl Inner {
    /// Stores the record `make` builds for the next id, fsynced; returns the id.
    fn insert(&self, make: impl FnOnce(u64) -> Pending) -> Result<u64, StoreError> {
        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_durability(Durability::Immediate).map_err(db_err)?;
        let id = {
            let mut counters = txn.open_table(COUNTERS).map_err(db_err)?;
            let id = counters
                .get(LAST_ID)
                .map_err(db_err)?
                .map_or(0, |g| g.value())
                + 1;
            counters.insert(LAST_ID, id).map_err(db_err)?;
            let entry = make(id);
            let bytes =
                serde_json::to_vec(&entry).map_err(|e| StoreError::invalid(e.to_string()))?;
            txn.open_table(PENDING)
                .map_err(db_err)?
                .insert(id, bytes.as_slice())
                .map_err(db_err)?;
            id
        };
        txn.commit().map_err(db_err)?;
        Ok(id)
    }

    fn list<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<u64, &[u8]>,
    ) -> Result<Vec<T>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let rows = txn.open_table(table).map_err(db_err)?;
        let mut found = Vec::new();
        for row in rows.iter().map_err(db_err)? {
            let (id, value) = row.map_err(db_err)?;
            // One unreadable record must not hold back the others; it stays on disk.
            match serde_json::from_slice(value.value()) {
                Ok(record) => found.push(record),
                Err(error) => tracing::error!(
                    record = id.value(),
                    %error,
                    "Skipping an unreadable outbox record."
                ),
            }
        }
        Ok(found)
    }

    fn remove(&self, id: u64) -> Result<bool, StoreError> {
        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_durability(Durability::Immediate).map_err(db_err)?;
        let removed = txn
            .open_table(PENDING)
            .map_err(db_err)?
            .remove(id)
            .map_err(db_err)?
            .is_some();
        txn.commit().map_err(db_err)?;
        Ok(removed)
    }

    fn bury(&self, letter: Dead) -> Result<(), StoreError> {
        let id = match &letter {
            Dead::Closure(letter) => letter.entry.id,
            Dead::Block(letter) => letter.entry.id,
        };
        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_durability(Durability::Immediate).map_err(db_err)?;
        {
            let bytes =
                serde_json::to_vec(&letter).map_err(|e| StoreError::invalid(e.to_string()))?;
            txn.open_table(DEAD)
                .map_err(db_err)?
                .insert(id, bytes.as_slice())
                .map_err(db_err)?;
            txn.open_table(PENDING)
                .map_err(db_err)?
                .remove(id)
                .map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(())
    }
}

/// Closes through the store, or, when the store is unavailable, records the closure in the
/// outbox for the relay. A closure the store took counts as stored once replicated the
/// configured way: that is checked in a task of its own ([`confirm_closure`]), so the caller
/// never waits for replicas. Returns an error only for input the store rejected for good or
/// when the outbox itself cannot be written.
///
/// Give the closure the epoch the request carried, and leave it `None` when the request
/// carried none: the store then closes the generation current at `closure.at_ms` and fences
/// the closure if the session was reopened after that, also when the relay delivers it late.
/// (Guessing an epoch from local knowledge could be older than the store's and get fenced.)
pub async fn close_or_enqueue(
    store: &Arc<dyn SessionStore>,
    outbox: &Outbox,
    session: &SessionId,
    closure: Closure,
) -> Result<CloseDisposition, StoreError> {
    let closure = closure.normalized()?;
    match store.close_with_receipt(session, closure.clone()).await {
        Ok((outcome, receipt)) => {
            let (store, outbox, session) = (store.clone(), outbox.clone(), session.clone());
            tokio::spawn(async move {
                confirm_closure(&*store, &outbox, &session, closure, receipt).await
            });
            Ok(CloseDisposition::Stored(outcome))
        }
        Err(cause) if cause.is_retryable() => {
            let entry = outbox.record(session, &closure).await?;
            tracing::warn!(session = %session, entry, error = %cause, "Store unavailable; closure queued in the outbox.");
            Ok(CloseDisposition::Queued { entry, cause })
        }
        Err(err) => Err(err),
    }
}

/// Waits for the replicas to confirm a closure the store took (the write `receipt` names);
/// one they do not confirm goes to the outbox and is replayed until they do. Returns the
/// outbox entry it went to, if it did.
pub async fn confirm_closure(
    store: &dyn SessionStore,
    outbox: &Outbox,
    session: &SessionId,
    closure: Closure,
    receipt: Receipt,
) -> Option<u64> {
    let cause = store.replicated(&[receipt]).await.err()?;
    match outbox.record(session, &closure).await {
        Ok(entry) => {
            tracing::warn!(session = %session, entry, error = %cause, "Closure not confirmed by replicas; queued in the outbox.");
            Some(entry)
        }
        Err(error) => {
            tracing::error!(session = %session, %error, "Closure not confirmed by replicas and the outbox cannot take it.");
            None
        }
    }
}

/// Blocks the credential through the store, or, when the store is unavailable, records the
/// block in the outbox for the relay. Like a closure, a block the store took counts as
/// stored once replicated ([`confirm_block`], in a task of its own). Returns an error only
/// for input the store rejected for good or when the outbox itself cannot be written.
pub async fn block_or_enqueue(
    store: &Arc<dyn SessionStore>,
    outbox: &Outbox,
    block: CredentialBlock,
) -> Result<BlockDisposition, StoreError> {
    let block = block.normalized()?;
    match store.block_credential_with_receipt(block.clone()).await {
        Ok((added, receipt)) => {
            let (store, outbox) = (store.clone(), outbox.clone());
            tokio::spawn(async move { confirm_block(&*store, &outbox, block, receipt).await });
            Ok(BlockDisposition::Stored(added))
        }
        Err(cause) if cause.is_retryable() => {
            let entry = outbox.record_block(&block).await?;
            tracing::warn!(entry, error = %cause, "Store unavailable; credential block queued in the outbox.");
            Ok(BlockDisposition::Queued { entry, cause })
        }
        Err(err) => Err(err),
    }
}

/// [`confirm_closure`] for a credential block.
pub async fn confirm_block(
    store: &dyn SessionStore,
    outbox: &Outbox,
    block: CredentialBlock,
    receipt: Receipt,
) -> Option<u64> {
    let cause = store.replicated(&[receipt]).await.err()?;
    match outbox.record_block(&block).await {
        Ok(entry) => {
            tracing::warn!(entry, error = %cause, "Credential block not confirmed by replicas; queued in the outbox.");
            Some(entry)
        }
        Err(error) => {
            tracing::error!(%error, "Credential block not confirmed by replicas and the outbox cannot take it.");
            None
        }
    }
}

async fn relay(
    inner: Weak<Inner>,
    wake: Arc<Notify>,
    store: Arc<dyn SessionStore>,
    config: RelayConfig,
) {
    let mut backoff = config.initial_backoff;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let outbox = Outbox {
            inner: strong,
            wake: wake.clone(),
        };
        let pending = match outbox.pending_records().await {
            Ok(pending) => pending,
            Err(err) => {
                tracing::error!(error = %err, "Cannot read the closure outbox.");
                drop(outbox);
                tokio::time::sleep(config.max_backoff).await;
                continue;
            }
        };
        if pending.is_empty() {
            drop(outbox);
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(config.idle_poll) => {}
            }
            continue;
        }
        // Set when the store is down or the outbox itself cannot be written: both call for
        // a pause, not an immediate retry.
        let mut back_off = false;
        // Replay every record the store takes, then confirm them together: stored counts
        // only once replicated the configured way (Redis `WAIT`, on the connection the
        // replays went through), so until then the records stay and are replayed (a replay
        // answers `AlreadyClosed`). Replaying them all first also lets writes to a moved slot
        // refresh the client's view of the cluster.
        let mut replayed = Vec::new();
        let mut receipts = Vec::new();
        for record in pending {
            let landed = match &record {
                Pending::Closure(entry) => store
                    .close_with_receipt(&entry.session, entry.closure.clone())
                    .await
                    .map(|(outcome, receipt)| {
                        let landed = match outcome {
                            CloseOutcome::Closed { .. } => "closed",
                            CloseOutcome::AlreadyClosed { .. } => "already_closed",
                            CloseOutcome::Fenced { .. } => "fenced",
                        };
                        (landed, receipt)
                    }),
                Pending::Block(entry) => store
                    .block_credential_with_receipt(entry.block.clone())
                    .await
                    .map(|(added, receipt)| {
                        let landed = if added { "blocked" } else { "already_blocked" };
                        (landed, receipt)
                    }),
            };
            match landed {
                Ok((landed, receipt)) => {
                    replayed.push((record, landed));
                    receipts.push(receipt);
                }
                Err(err) if err.is_retryable() => {
                    tracing::debug!(error = %err, "Store still unavailable for queued records.");
                    back_off = true;
                    break;
                }
                Err(err) => {
                    tracing::error!(entry = record.id(), error = %err, "Store refused a queued record; moved to dead letters.");
                    if let Err(bury_err) = outbox.bury(record, &err).await {
                        tracing::error!(error = %bury_err, "Cannot move a record to the dead letters.");
                        back_off = true;
                        break;
                    }
                }
            }
        }
        if !replayed.is_empty() {
            if let Err(err) = store.replicated(&receipts).await {
                tracing::debug!(error = %err, "Replayed records not confirmed by replicas yet.");
                back_off = true;
                replayed.clear();
            }
        }
        for (record, landed) in replayed {
            match &record {
                Pending::Closure(entry) => {
                    tracing::info!(session = %entry.session, entry = entry.id, outcome = landed, "Relayed a queued closure.")
                }
                Pending::Block(entry) => {
                    tracing::info!(fingerprint = %entry.block.fingerprint.as_str(), entry = entry.id, outcome = landed, "Relayed a queued credential block.")
                }
            }
            if let Err(err) = outbox.remove(record.id()).await {
                tracing::error!(error = %err, entry = record.id(), "Cannot delete a relayed record from the outbox.");
                back_off = true;
                break;
            }
        }
        drop(outbox);
        if back_off {
            tokio::time::sleep(jittered(backoff)).await;
            backoff = (backoff * 2).min(config.max_backoff);
        } else {
            backoff = config.initial_backoff;
        }
    }
}

/// Between half and all of `delay`, so instances that lost the store together do not
/// retry in lockstep.
fn jittered(delay: Duration) -> Duration {
    use ring::rand::SecureRandom;
    let mut byte = [0u8; 1];
    let fraction = match ring::rand::SystemRandom::new().fill(&mut byte) {
        Ok(()) => f64::from(byte[0]) / 255.0,
        Err(_) => 1.0,
    };
    delay.mul_f64(0.5 + 0.5 * fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_written_before_blocks_were_kept_still_decode_as_closures() {
        // A `pending` row exactly as earlier versions wrote it.
        let earlier = br#"{"id":7,"session":"slack:T1/C9","closure":{"epoch":null,"class":"lost_access","rule":"slack.not_in_channel","reason":"bot removed","detail":"","upstream_status":null,"at_ms":1700000000000},"recorded_at_ms":1700000000001}"#;
        let Pending::Closure(entry) = serde_json::from_slice::<Pending>(earlier).unwrap() else {
            panic!("an earlier row must decode as a closure");
        };
        assert_eq!(entry.id, 7);
        assert_eq!(entry.session.as_str(), "slack:T1/C9");
        assert_eq!(entry.closure.rule, "slack.not_in_channel");
    }

    #[test]
    fn block_rows_decode_as_blocks() {
        let fingerprint = crate::session::Fingerprint::parse(&"ab".repeat(32)).unwrap();
        let row = Pending::Block(BlockEntry {
            id: 3,
            block: CredentialBlock::new(
                fingerprint,
                super::super::Class::CredentialInvalid,
                "slack.invalid_auth",
                "revoked",
            ),
            recorded_at_ms: 1,
        });
        let bytes = serde_json::to_vec(&row).unwrap();
        assert_eq!(serde_json::from_slice::<Pending>(&bytes).unwrap(), row);
    }
}
