//! [`LocalCopy`]: this instance's durable copy of what its closed set learned from a shared
//! store, so a cold start while Redis is down still halts every closed session and blocked
//! credential it had seen.
//!
//! One redb file, written by a flusher task from the closed set's journal (every change it
//! learns, from any source) and the log cursor those changes are complete up to. At start the
//! copy is loaded into the closed set first; the feed then resumes after the saved cursor
//! instead of reading a full snapshot. Facts only grow (see [`ClosedSet`]), so a copy written
//! ahead of its cursor is harmless: replaying the events after it changes nothing.
//!
//! The deployment secret is kept too (the file is created owner-only), so credentials can be
//! fingerprinted before the store answers.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    TableError, WriteTransaction,
};
use tokio::task::JoinHandle;

use super::closed_set::{ClosedSet, ViewChange};
use super::credential::Fingerprint;
use super::error::StoreError;
use super::event::{ClosureSummary, EventCursor};
use super::mark_row::MarkRow;
use super::model::SessionId;
use super::redb_file::{each_row, open_or_create, Depth, FileKind, FileLayout, RowReport};

const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const CREDENTIALS: TableDefinition<&str, &[u8]> = TableDefinition::new("credentials");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const CURSOR: &str = "cursor";
const SECRET: &str = "deployment_secret";

pub(super) const LAYOUT: FileLayout = FileLayout {
    kind: FileKind::LocalCopy,
    marker_table: "meta",
    create_tables,
    scan: scan_rows,
};

fn create_tables(txn: &WriteTransaction) -> Result<(), TableError> {
    txn.open_table(SESSIONS)?;
    txn.open_table(CREDENTIALS)?;
    txn.open_table(META)?;
    Ok(())
}

fn scan_rows(txn: &ReadTransaction, report: &mut RowReport, depth: Depth) {
    let decoding = depth == Depth::Decode;
    let mut rows = |table, label| {
        let count = each_row(txn, table, report, |key, value| {
            if decoding {
                MarkRow::decode(value.value()).map_err(|e| format!("{:?}: {e}", key.value()))?;
            }
            Ok(())
        });
        report.count(label, count);
    };
    rows(SESSIONS, "sessions");
    rows(CREDENTIALS, "credentials");
    each_row(txn, META, report, |_, _| Ok(()));
}

/// What [`LocalCopy::load_into`] found.
#[derive(Debug, Default)]
pub struct LoadedCopy {
    pub sessions: usize,
    pub credentials: usize,
    /// The log position the copy is complete up to; `None` if it never caught up with a store.
    pub cursor: Option<EventCursor>,
    pub secret: Option<Vec<u8>>,
}

/// The local durable copy of the closed set. Cheap to clone.
#[derive(Clone)]
pub struct LocalCopy {
    db: Arc<Database>,
    path: Arc<PathBuf>,
}

fn db_err(path: &Path) -> impl Fn(redb::Error) -> StoreError + '_ {
    move |e| StoreError::Failed(format!("local copy {}: {e}", path.display()))
}

impl LocalCopy {
    /// Opens the file, creating it only where none exists; a damaged file is refused with an
    /// error naming it (see `haltgate store check|repair`). Blocking.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = open_or_create(path, &LAYOUT)?;
        Ok(LocalCopy {
            db: Arc::new(db),
            path: Arc::new(path.to_owned()),
        })
    }

    /// Loads every row into `set`. Blocking; linear in the number of rows.
    pub fn load_into(&self, set: &ClosedSet) -> Result<LoadedCopy, StoreError> {
        let err = db_err(&self.path);
        let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
        let mut loaded = LoadedCopy::default();
        let sessions = txn.open_table(SESSIONS).map_err(|e| err(e.into()))?;
        for row in sessions.iter().map_err(|e| err(e.into()))? {
            let (id, fact) = row.map_err(|e| err(e.into()))?;
            let id = SessionId::parse(id.value())
                .map_err(|e| StoreError::corrupt(format!("local copy: {e}")))?;
            let fact = MarkRow::decode(fact.value())?;
            set.merge_session(&id, fact.epoch, fact.closed, fact.detail());
            loaded.sessions += 1;
        }
        let credentials = txn.open_table(CREDENTIALS).map_err(|e| err(e.into()))?;
        for row in credentials.iter().map_err(|e| err(e.into()))? {
            let (fingerprint, fact) = row.map_err(|e| err(e.into()))?;
            let fingerprint = Fingerprint::parse(fingerprint.value())?;
            let fact = MarkRow::decode(fact.value())?;
            let block = fact
                .closed
                .then(|| fact.detail().map(|(_, detail)| detail))
                .flatten();
            set.merge_credential(&fingerprint, fact.epoch, block);
            loaded.credentials += 1;
        }
        let meta = txn.open_table(META).map_err(|e| err(e.into()))?;
        if let Some(cursor) = meta.get(CURSOR).map_err(|e| err(e.into()))? {
            let cursor = std::str::from_utf8(cursor.value())
                .map_err(|_| StoreError::corrupt("local copy: the cursor is not text"))?;
            loaded.cursor = Some(EventCursor::from_token(cursor));
        }
        if let Some(secret) = meta.get(SECRET).map_err(|e| err(e.into()))? {
            loaded.secret = Some(secret.value().to_vec());
        }
        Ok(loaded)
    }

    /// Writes changes and the cursor they are complete up to, in one transaction. Blocking.
    pub fn persist(
        &self,
        changes: &[ViewChange],
        cursor: Option<&EventCursor>,
    ) -> Result<(), StoreError> {
        let err = db_err(&self.path);
        let mut txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| err(e.into()))?;
        {
            let mut sessions = txn.open_table(SESSIONS).map_err(|e| err(e.into()))?;
            let mut credentials = txn.open_table(CREDENTIALS).map_err(|e| err(e.into()))?;
            for change in changes {
                match change {
                    ViewChange::Session {
                        id,
                        epoch,
                        closed,
                        closure,
                    } => {
                        let known = match sessions.get(id.as_str()).map_err(|e| err(e.into()))? {
                            Some(row) => Some(MarkRow::decode(row.value())?),
                            None => None,
                        };
                        let closure = closure.as_ref().map(|(at, d)| (*at, &**d));
                        let fact = MarkRow::merge(known, *epoch, *closed, closure);
                        sessions
                            .insert(id.as_str(), fact.encode().as_slice())
                            .map_err(|e| err(e.into()))?;
                    }
                    ViewChange::Credential {
                        fingerprint,
                        generation,
                        block,
                    } => {
                        let known = match credentials
                            .get(fingerprint.as_str())
                            .map_err(|e| err(e.into()))?
                        {
                            Some(row) => Some(MarkRow::decode(row.value())?),
                            None => None,
                        };
                        // Credentials follow their generation: the newer fact replaces.
                        let newer = known.as_ref().is_none_or(|k| {
                            *generation > k.epoch
                                || (*generation == k.epoch && block.is_some() && !k.closed)
                        });
                        if newer {
                            let fact = MarkRow {
                                epoch: *generation,
                                closed: block.is_some(),
                                closure: block.as_ref().map(|d| ClosureSummary {
                                    epoch: *generation,
                                    class: d.class,
                                    rule: d.rule.to_string(),
                                    reason: String::new(),
                                    closed_at_ms: 0,
                                }),
                            };
                            credentials
                                .insert(fingerprint.as_str(), fact.encode().as_slice())
                                .map_err(|e| err(e.into()))?;
                        }
                    }
                }
            }
            if let Some(cursor) = cursor {
                let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
                meta.insert(CURSOR, cursor.as_str().as_bytes())
                    .map_err(|e| err(e.into()))?;
            }
        }
        txn.commit().map_err(|e| err(e.into()))
    }

    /// Keeps the deployment secret. Blocking.
    pub fn save_secret(&self, secret: &[u8]) -> Result<(), StoreError> {
        let err = db_err(&self.path);
        let mut txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| err(e.into()))?;
        txn.open_table(META)
            .map_err(|e| err(e.into()))?
            .insert(SECRET, secret)
            .map_err(|e| err(e.into()))?;
        txn.commit().map_err(|e| err(e.into()))
    }

    /// Starts the task that writes what `set` learns every `interval`; [`LocalCopy::flush`]
    /// writes the rest at shutdown.
    pub fn spawn_flusher(&self, set: &Arc<ClosedSet>, interval: Duration) -> JoinHandle<()> {
        let copy = self.clone();
        let set = Arc::downgrade(set);
        tokio::spawn(async move {
            let mut saved: Option<EventCursor> = None;
            let mut timer = tokio::time::interval(interval);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                timer.tick().await;
                if !copy.flush_once(&set, &mut saved).await {
                    return;
                }
            }
        })
    }

    /// Returns false once the set is gone.
    async fn flush_once(&self, set: &Weak<ClosedSet>, saved: &mut Option<EventCursor>) -> bool {
        let Some(live) = set.upgrade() else {
            return false;
        };
        // The cursor is read before the journal is drained, so the changes written are
        // complete up to it.
        let cursor = live.cursor().await;
        let changes = live.drain_journal();
        drop(live);
        if changes.is_empty() && cursor == *saved {
            return true;
        }
        let copy = self.clone();
        let to_save = cursor.clone();
        let written = tokio::task::spawn_blocking(move || {
            // redb may panic on a damaged page: the changes must survive that to be retried.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                copy.persist(&changes, to_save.as_ref())
            }))
            .unwrap_or_else(|_| {
                Err(StoreError::Corrupt(
                    "local copy: redb panicked writing".into(),
                ))
            });
            (result, changes)
        })
        .await;
        match written {
            Ok((Ok(()), _)) => *saved = cursor,
            Ok((Err(error), changes)) => {
                tracing::error!(%error, path = %self.path.display(), "Local copy not written; retrying.");
                if let Some(live) = set.upgrade() {
                    live.requeue_journal(changes);
                }
            }
            Err(error) => tracing::error!(%error, "Local copy writer did not finish."),
        }
        true
    }

    /// Writes what `set` learned since the last flush, now (at shutdown: the flusher is
    /// stopped between two of its ticks).
    pub async fn flush(&self, set: &Arc<ClosedSet>) {
        let mut saved = None;
        self.flush_once(&Arc::downgrade(set), &mut saved).await;
    }
}
