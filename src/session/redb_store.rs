//! [`RedbStore`]: the single-node store, one embedded redb file.
//!
//! Every write is one redb write transaction of its own (atomic alone), run in order on one
//! writer thread; a call returns only once its write is on disk. The writer makes each batch
//! of queued writes durable with one fsync (group commit, see [`Writer`]). Reads run on
//! Tokio's blocking pool. Live notifications are an in-process broadcast sent once a write
//! is on disk, so only handles of this process see them; a redb file is not meant to be
//! shared by several processes.
//!
//! Tables: `sessions` (id → record JSON), `wakeups` ((id, wakeup id) → due and payload),
//! `due` ((due ms, wakeup id) → session id, the claim index), `events` (sequence → event
//! JSON, trimmed to `event_retention`), `credentials`, `credential_generations`, `counters`
//! and `secrets`.

use std::fmt::{Debug, Display};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    TableError, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};

use super::credential::{generate_secret, CredentialBlock, Fingerprint};
use super::error::StoreError;
use super::event::{
    ClosureSummary, CredentialMark, EventCursor, EventKind, EventPage, Notice, SessionMark,
    Snapshot, SnapshotPage, StateEvent,
};
use super::mark_row::MarkRow;
use super::model::{
    check_exact, check_payload, check_rule, lease_end, new_wakeup_id, unix_ms_now, AddWakeup,
    ClaimedWakeup, CloseOutcome, Closure, ClosureInfo, OpenSpec, SessionId, SessionRecord,
    SessionStatus, Wakeup,
};
use super::redb_file::{
    each_row, open_or_create, DamageLatch, Depth, FileKind, FileLayout, RowReport,
};
use super::{BoxFuture, SessionStore};

const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const WAKEUPS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("wakeups");
const DUE: TableDefinition<(u64, &str), &str> = TableDefinition::new("due");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const CREDENTIALS: TableDefinition<&str, &[u8]> = TableDefinition::new("credentials");
const CREDENTIAL_GENERATIONS: TableDefinition<&str, u64> =
    TableDefinition::new("credential_generations");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
/// Session id → [`MarkRow`], for every session with closure history: what a start reads.
const MARKS: TableDefinition<&str, &[u8]> = TableDefinition::new("marks");

const LAST_EVENT_SEQ: &str = "last_event_seq";
const TRIMMED_THROUGH: &str = "trimmed_through";
const DEPLOYMENT_SECRET: &str = "deployment_secret";
/// Set once `marks` holds a row for every session with closure history (files written
/// before the table existed get it built at their first open).
const MARKS_BUILT: &str = "marks_built";
/// Closures made before this time (unix ms) already had their details pruned.
const DETAILS_PRUNED_BEFORE: &str = "details_pruned_before";
/// Sessions whose details one writer job prunes, so other writes wait little.
const PRUNE_BATCH: usize = 1_000;
/// Rows per snapshot page.
const SNAPSHOT_PAGE: usize = 10_000;
const CURSOR_PREFIX: &str = "redb:";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedbOptions {
    /// Events kept in the log; older ones are trimmed (readers behind them see a gap).
    pub event_retention: u64,
}

impl Default for RedbOptions {
    fn default() -> Self {
        RedbOptions {
            event_retention: 100_000,
        }
    }
}

/// The embedded single-node [`SessionStore`]. Cheap to clone.
#[derive(Clone)]
pub struct RedbStore {
    writer: Arc<Writer>,
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    options: RedbOptions,
    live: broadcast::Sender<StateEvent>,
    /// Set once redb panicked on this file; every later operation then fails fast.
    damage: DamageLatch,
    /// Events of writes not yet on disk; announced after the fsync that covers them.
    unannounced: Mutex<Vec<StateEvent>>,
}

/// A write, run on the writer thread; it answers how to reply once the batch is on disk.
type WriteJob = Box<dyn FnOnce(&Inner) -> Reply + Send>;
type Reply = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// Writes in one batch at most, so a flood of writes still gets answers in bounded time.
const MAX_BATCH: usize = 1024;

/// The one thread that writes (group commit): it runs queued writes in order, each in a
/// transaction of its own (so each is atomic alone and one failure touches no other), then
/// makes the whole batch durable with a single fsync before answering any of it. Writes that
/// queue during an fsync form the next batch, so concurrent writers share fsyncs instead of
/// contending for redb's write lock.
struct Writer {
    jobs: Mutex<Option<std::sync::mpsc::Sender<WriteJob>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Writer {
    fn start(inner: Arc<Inner>) -> Result<Writer, StoreError> {
        let (jobs, queue) = std::sync::mpsc::channel::<WriteJob>();
        let thread = std::thread::Builder::new()
            .name("haltgate-redb-writer".into())
            .spawn(move || {
                while let Ok(first) = queue.recv() {
                    let mut replies = vec![first(&inner)];
                    while replies.len() < MAX_BATCH {
                        match queue.try_recv() {
                            Ok(job) => replies.push(job(&inner)),
                            Err(_) => break,
                        }
                    }
                    let synced = inner.damage.run(|| inner.sync());
                    let events = std::mem::take(
                        &mut *inner
                            .unannounced
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner),
                    );
                    if synced.is_ok() {
                        for event in events {
                            // No receivers is fine: nobody is watching.
                            let _ = inner.live.send(event);
                        }
                    }
                    for reply in replies {
                        reply(synced.clone());
                    }
                }
            })
            .map_err(|e| StoreError::Failed(format!("starting the redb writer: {e}")))?;
        Ok(Writer {
            jobs: Mutex::new(Some(jobs)),
            thread: Mutex::new(Some(thread)),
        })
    }

    fn send(&self, job: WriteJob) -> Result<(), StoreError> {
        let stopped = || StoreError::Failed("the redb writer has stopped".into());
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .ok_or_else(stopped)?
            .send(job)
            .map_err(|_| stopped())
    }
}

impl Drop for Writer {
    /// The last handle waits for queued writes to finish, so the file is released (and
    /// every answered write is on disk) when the store is dropped.
    fn drop(&mut self) {
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = thread.join();
        }
    }
}

/// The store file's tables, for opening and for `haltgate store check|repair`.
pub(super) const LAYOUT: FileLayout = FileLayout {
    kind: FileKind::Store,
    marker_table: "events",
    create_tables,
    scan: scan_rows,
};

/// Creating every table up front lets read transactions open them unconditionally.
fn create_tables(txn: &WriteTransaction) -> Result<(), TableError> {
    txn.open_table(SESSIONS)?;
    txn.open_table(WAKEUPS)?;
    txn.open_table(DUE)?;
    txn.open_table(EVENTS)?;
    txn.open_table(CREDENTIALS)?;
    txn.open_table(CREDENTIAL_GENERATIONS)?;
    txn.open_table(COUNTERS)?;
    txn.open_table(SECRETS)?;
    txn.open_table(MARKS)?;
    Ok(())
}

/// Reads every row of every table; at [`Depth::Decode`] also decodes each as the store does.
fn scan_rows(txn: &ReadTransaction, report: &mut RowReport, depth: Depth) {
    let decoding = depth == Depth::Decode;
    let mut closed = 0;
    let sessions = each_row(txn, SESSIONS, report, |key, value| {
        if !decoding {
            return Ok(());
        }
        let id = key.value();
        let stored: StoredSession = row_decode("session", id, value.value())?;
        if stored.record.id.as_str() != id {
            return Err(format!(
                "session {id:?} holds the record of {}",
                stored.record.id
            ));
        }
        closed += u64::from(stored.record.is_closed());
        Ok(())
    });
    let wakeups = each_row(txn, WAKEUPS, report, |key, value| {
        if !decoding {
            return Ok(());
        }
        let (session, wakeup) = key.value();
        SessionId::parse(session).map_err(|e| row_problem("wakeup", (session, wakeup), e))?;
        row_decode::<StoredWakeup>("wakeup", (session, wakeup), value.value()).map(drop)
    });
    each_row(txn, DUE, report, |key, value| {
        if !decoding {
            return Ok(());
        }
        SessionId::parse(value.value())
            .map(drop)
            .map_err(|e| row_problem("due entry", key.value(), e))
    });
    let events = each_row(txn, EVENTS, report, |key, value| {
        if !decoding {
            return Ok(());
        }
        row_decode::<StateEvent>("event", key.value(), value.value()).map(drop)
    });
    let blocked = each_row(txn, CREDENTIALS, report, |key, value| {
        if !decoding {
            return Ok(());
        }
        Fingerprint::parse(key.value()).map_err(|e| row_problem("credential", key.value(), e))?;
        row_decode::<CredentialBlock>("credential", key.value(), value.value()).map(drop)
    });
    each_row(txn, CREDENTIAL_GENERATIONS, report, |key, _| {
        if !decoding {
            return Ok(());
        }
        Fingerprint::parse(key.value())
            .map(drop)
            .map_err(|e| row_problem("credential generation", key.value(), e))
    });
    each_row(txn, COUNTERS, report, |_, _| Ok(()));
    each_row(txn, SECRETS, report, |_, _| Ok(()));
    each_row(txn, MARKS, report, |key, value| {
        if decoding {
            MarkRow::decode(value.value())
                .map_err(|e| format!("mark of {:?}: {e}", key.value()))?;
        }
        Ok(())
    });
    report.count("sessions", sessions);
    report.count("closed sessions", closed);
    report.count("wakeups", wakeups);
    report.count("events", events);
    report.count("blocked credentials", blocked);
}

fn row_decode<T: for<'de> Deserialize<'de>>(
    what: &str,
    key: impl Debug,
    bytes: &[u8],
) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| row_problem(what, key, e))
}

fn row_problem(what: &str, key: impl Debug, problem: impl Display) -> String {
    format!("{what} {key:?}: {problem}")
}

/// The session row: the record plus the last closure, which a reopen clears from the
/// record but the closed set still needs (a request of the old generation stays halted).
#[derive(Serialize, Deserialize)]
struct StoredSession {
    record: SessionRecord,
    last_closure: Option<ClosureSummary>,
}

impl StoredSession {
    /// The row `marks` keeps, for a session with closure history.
    fn mark(&self) -> Option<MarkRow> {
        (self.record.is_closed() || self.last_closure.is_some()).then(|| MarkRow {
            epoch: self.record.epoch,
            closed: self.record.is_closed(),
            closure: self.last_closure.clone(),
        })
    }
}

/// Fills `marks` from the session records once, for a file written before it existed.
fn build_marks(db: &Database) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(db_err)?;
    txn.set_durability(Durability::Immediate).map_err(db_err)?;
    {
        let mut counters = txn.open_table(COUNTERS).map_err(db_err)?;
        if counters.get(MARKS_BUILT).map_err(db_err)?.is_some() {
            return Ok(());
        }
        let sessions = txn.open_table(SESSIONS).map_err(db_err)?;
        let mut marks = txn.open_table(MARKS).map_err(db_err)?;
        for row in sessions.iter().map_err(db_err)? {
            let (id, value) = row.map_err(db_err)?;
            let stored: StoredSession = decode("session", value.value())?;
            if let Some(mark) = stored.mark() {
                marks
                    .insert(id.value(), mark.encode().as_slice())
                    .map_err(db_err)?;
            }
        }
        counters.insert(MARKS_BUILT, 1).map_err(db_err)?;
    }
    txn.commit().map_err(db_err)
}

#[derive(Serialize, Deserialize)]
struct StoredWakeup {
    due_ms: u64,
    payload: serde_json::Value,
}

fn db_err(err: impl Display) -> StoreError {
    StoreError::Failed(format!("redb: {err}"))
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::corrupt(format!("{what}: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing our own plain structs cannot fail.
    serde_json::to_vec(value).expect("serializable value")
}

impl RedbStore {
    /// Opens the store file, creating it only when no file exists at `path`. A file that is
    /// empty, truncated, damaged or not a haltgate store is refused with an error that names
    /// it and says what to do. Blocking: call from a blocking context or at startup.
    pub fn open(path: &Path, options: RedbOptions) -> Result<Self, StoreError> {
        if options.event_retention == 0 {
            return Err(StoreError::invalid("event_retention must be at least 1"));
        }
        let db = open_or_create(path, &LAYOUT)?;
        build_marks(&db)?;
        let (live, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            db,
            options,
            live,
            damage: DamageLatch::new(path, FileKind::Store),
            unannounced: Mutex::new(Vec::new()),
        });
        Ok(RedbStore {
            writer: Arc::new(Writer::start(inner.clone())?),
            inner,
        })
    }

    async fn blocking<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.damage.run(|| op(&inner)))
            .await
            .map_err(|e| StoreError::Failed(format!("redb operation did not finish: {e}")))?
    }

    /// Runs a write on the writer thread; answers once it is on disk.
    async fn writing<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.writer.send(Box::new(move |inner: &Inner| {
            let result = inner.damage.run(|| op(inner));
            Box::new(move |synced: Result<(), StoreError>| {
                let _ = answer.send(result.and_then(|value| synced.map(|()| value)));
            })
        }))?;
        answered
            .await
            .map_err(|_| StoreError::Failed("the redb writer has stopped".into()))?
    }
}

impl Inner {
    /// Runs `op` in a write transaction of its own. Called on the writer thread only: the
    /// commit is not durable until the writer's next [`Inner::sync`].
    fn write<T>(
        &self,
        op: impl FnOnce(&WriteTransaction, &mut Vec<StateEvent>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_durability(Durability::None).map_err(db_err)?;
        let mut events = Vec::new();
        let value = op(&txn, &mut events)?;
        txn.commit().map_err(db_err)?;
        self.unannounced
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(events);
        Ok(value)
    }

    /// Makes every commit so far durable: an empty commit with `Durability::Immediate`
    /// persists the `Durability::None` commits before it.
    fn sync(&self) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_durability(Durability::Immediate).map_err(db_err)?;
        txn.commit().map_err(db_err)
    }

    fn append_event(
        &self,
        txn: &WriteTransaction,
        mut event: StateEvent,
        out: &mut Vec<StateEvent>,
    ) -> Result<(), StoreError> {
        let mut counters = txn.open_table(COUNTERS).map_err(db_err)?;
        let mut events = txn.open_table(EVENTS).map_err(db_err)?;
        let last = counters
            .get(LAST_EVENT_SEQ)
            .map_err(db_err)?
            .map(|g| g.value())
            .unwrap_or(0);
        let mut trimmed = counters
            .get(TRIMMED_THROUGH)
            .map_err(db_err)?
            .map(|g| g.value())
            .unwrap_or(0);
        let seq = last + 1;
        event.id = seq.to_string();
        events
            .insert(seq, encode(&event).as_slice())
            .map_err(db_err)?;
        counters.insert(LAST_EVENT_SEQ, seq).map_err(db_err)?;
        while seq - trimmed > self.options.event_retention {
            trimmed += 1;
            events.remove(trimmed).map_err(db_err)?;
        }
        counters.insert(TRIMMED_THROUGH, trimmed).map_err(db_err)?;
        out.push(event);
        Ok(())
    }

    fn load_session(
        txn: &WriteTransaction,
        id: &SessionId,
    ) -> Result<Option<StoredSession>, StoreError> {
        let sessions = txn.open_table(SESSIONS).map_err(db_err)?;
        let row = sessions.get(id.as_str()).map_err(db_err)?;
        row.map(|g| decode("session", g.value())).transpose()
    }

    fn save_session(txn: &WriteTransaction, stored: &StoredSession) -> Result<(), StoreError> {
        let mut sessions = txn.open_table(SESSIONS).map_err(db_err)?;
        sessions
            .insert(stored.record.id.as_str(), encode(stored).as_slice())
            .map_err(db_err)?;
        if let Some(mark) = stored.mark() {
            txn.open_table(MARKS)
                .map_err(db_err)?
                .insert(stored.record.id.as_str(), mark.encode().as_slice())
                .map_err(db_err)?;
        }
        Ok(())
    }

    fn get(&self, id: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let sessions = txn.open_table(SESSIONS).map_err(db_err)?;
        let row = sessions.get(id.as_str()).map_err(db_err)?;
        row.map(|g| decode::<StoredSession>("session", g.value()).map(|s| s.record))
            .transpose()
    }

    fn open(&self, id: &SessionId, spec: OpenSpec) -> Result<SessionRecord, StoreError> {
        let spec = spec.checked()?;
        self.write(|txn, events| {
            let (mut stored, kind) = match Self::load_session(txn, id)? {
                None => {
                    let mut record = SessionRecord::unregistered(id.clone());
                    record.opened_at_ms = Some(spec.at_ms);
                    (
                        StoredSession {
                            record,
                            last_closure: None,
                        },
                        EventKind::Opened,
                    )
                }
                Some(mut stored) if stored.record.is_closed() => {
                    let record = &mut stored.record;
                    record.epoch += 1;
                    check_exact("epoch", record.epoch)?;
                    record.status = SessionStatus::Open;
                    record.closure = None;
                    record.opened_at_ms = Some(spec.at_ms);
                    (stored, EventKind::Reopened)
                }
                Some(stored) => (stored, EventKind::Opened),
            };
            match spec.scope.as_deref() {
                None => {}
                Some("") => stored.record.scope = None,
                Some(text) => {
                    stored.record.scope = Some(
                        serde_json::from_str(text)
                            .map_err(|e| StoreError::invalid(e.to_string()))?,
                    )
                }
            }
            match spec.resume.as_deref() {
                None => {}
                Some("") => stored.record.resume = None,
                Some(resume) => stored.record.resume = Some(resume.to_owned()),
            }
            Self::save_session(txn, &stored)?;
            let mut event = StateEvent::bare(kind, stored.record.epoch, spec.at_ms);
            event.session = Some(id.clone());
            self.append_event(txn, event, events)?;
            Ok(stored.record)
        })
    }

    fn close(&self, id: &SessionId, closure: Closure) -> Result<CloseOutcome, StoreError> {
        let closure = closure.normalized()?;
        self.write(|txn, events| {
            let mut stored = Self::load_session(txn, id)?.unwrap_or_else(|| StoredSession {
                record: SessionRecord::unregistered(id.clone()),
                last_closure: None,
            });
            let current = stored.record.epoch;
            let epoch = match closure.epoch {
                Some(epoch) => epoch,
                None if stored
                    .record
                    .opened_at_ms
                    .is_some_and(|opened| closure.at_ms < opened) =>
                {
                    return Ok(CloseOutcome::Fenced {
                        current_epoch: current,
                    });
                }
                None => current,
            };
            if epoch < current {
                return Ok(CloseOutcome::Fenced {
                    current_epoch: current,
                });
            }
            // Only a reopen starts a generation: a later epoch closes the current one.
            let epoch = epoch.min(current);
            if stored.record.is_closed() {
                return Ok(CloseOutcome::AlreadyClosed {
                    record: stored.record,
                });
            }
            let cancelled = Self::remove_wakeups(txn, id)?;
            stored.record.epoch = epoch;
            stored.record.status = SessionStatus::Closed;
            stored.record.closure = Some(ClosureInfo::from_closure(&closure));
            stored.last_closure = Some(ClosureSummary {
                epoch,
                class: closure.class,
                rule: closure.rule.clone(),
                reason: closure.reason.clone(),
                closed_at_ms: closure.at_ms,
            });
            Self::save_session(txn, &stored)?;
            let mut event = StateEvent::bare(EventKind::Closed, epoch, closure.at_ms);
            event.session = Some(id.clone());
            event.class = Some(closure.class);
            event.rule = Some(closure.rule.clone());
            event.reason = Some(closure.reason.clone());
            event.detail = Some(closure.detail.clone());
            event.upstream_status = closure.upstream_status;
            event.cancelled = Some(cancelled);
            self.append_event(txn, event, events)?;
            Ok(CloseOutcome::Closed {
                record: stored.record,
                cancelled_wakeups: cancelled,
            })
        })
    }

    fn session_wakeups(
        txn: &WriteTransaction,
        id: &SessionId,
    ) -> Result<Vec<(String, StoredWakeup)>, StoreError> {
        let wakeups = txn.open_table(WAKEUPS).map_err(db_err)?;
        let mut found = Vec::new();
        for row in wakeups.range((id.as_str(), "")..).map_err(db_err)? {
            let (key, value) = row.map_err(db_err)?;
            let (session, wakeup_id) = key.value();
            if session != id.as_str() {
                break;
            }
            found.push((wakeup_id.to_owned(), decode("wakeup", value.value())?));
        }
        Ok(found)
    }

    fn remove_wakeups(txn: &WriteTransaction, id: &SessionId) -> Result<u64, StoreError> {
        let found = Self::session_wakeups(txn, id)?;
        let mut wakeups = txn.open_table(WAKEUPS).map_err(db_err)?;
        let mut due = txn.open_table(DUE).map_err(db_err)?;
        for (wakeup_id, wakeup) in &found {
            wakeups
                .remove((id.as_str(), wakeup_id.as_str()))
                .map_err(db_err)?;
            due.remove((wakeup.due_ms, wakeup_id.as_str()))
                .map_err(db_err)?;
        }
        Ok(found.len() as u64)
    }

    fn reset_resume(
        &self,
        id: &SessionId,
        epoch: Option<u64>,
        rule: &str,
    ) -> Result<bool, StoreError> {
        check_rule(rule)?;
        let at_ms = unix_ms_now();
        self.write(|txn, events| {
            let Some(mut stored) = Self::load_session(txn, id)? else {
                return Ok(false);
            };
            if epoch.is_some_and(|e| e != stored.record.epoch) || stored.record.resume.is_none() {
                return Ok(false);
            }
            stored.record.resume = None;
            Self::save_session(txn, &stored)?;
            let mut event = StateEvent::bare(EventKind::ResumeReset, stored.record.epoch, at_ms);
            event.session = Some(id.clone());
            event.rule = Some(rule.to_owned());
            self.append_event(txn, event, events)?;
            Ok(true)
        })
    }

    fn add_wakeup(
        &self,
        id: &SessionId,
        due_ms: u64,
        payload: serde_json::Value,
    ) -> Result<AddWakeup, StoreError> {
        check_exact("due_ms", due_ms)?;
        check_payload(&payload)?;
        let wakeup_id = new_wakeup_id()?;
        self.write(|txn, _| {
            let epoch = match Self::load_session(txn, id)? {
                Some(stored) if stored.record.is_closed() => return Ok(AddWakeup::SessionClosed),
                Some(stored) => stored.record.epoch,
                None => 0,
            };
            let stored = StoredWakeup { due_ms, payload };
            let mut wakeups = txn.open_table(WAKEUPS).map_err(db_err)?;
            let mut due = txn.open_table(DUE).map_err(db_err)?;
            wakeups
                .insert(
                    (id.as_str(), wakeup_id.as_str()),
                    encode(&stored).as_slice(),
                )
                .map_err(db_err)?;
            due.insert((due_ms, wakeup_id.as_str()), id.as_str())
                .map_err(db_err)?;
            Ok(AddWakeup::Added(Wakeup {
                id: wakeup_id.clone(),
                session: id.clone(),
                epoch,
                due_ms,
                payload: stored.payload,
            }))
        })
    }

    fn pending_wakeups(&self, id: &SessionId) -> Result<Vec<Wakeup>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let sessions = txn.open_table(SESSIONS).map_err(db_err)?;
        let epoch = match sessions.get(id.as_str()).map_err(db_err)? {
            Some(row) => {
                decode::<StoredSession>("session", row.value())?
                    .record
                    .epoch
            }
            None => 0,
        };
        let wakeups = txn.open_table(WAKEUPS).map_err(db_err)?;
        let mut found = Vec::new();
        for row in wakeups.range((id.as_str(), "")..).map_err(db_err)? {
            let (key, value) = row.map_err(db_err)?;
            let (session, wakeup_id) = key.value();
            if session != id.as_str() {
                break;
            }
            let stored: StoredWakeup = decode("wakeup", value.value())?;
            found.push(Wakeup {
                id: wakeup_id.to_owned(),
                session: id.clone(),
                epoch,
                due_ms: stored.due_ms,
                payload: stored.payload,
            });
        }
        found.sort_by(|a, b| a.due_ms.cmp(&b.due_ms).then_with(|| a.id.cmp(&b.id)));
        Ok(found)
    }

    /// Hands out due wakeups: removed (`lease_ms` `None`), or kept with their due time moved
    /// to the end of the lease.
    fn claim_due(
        &self,
        now_ms: u64,
        limit: usize,
        lease_ms: Option<u64>,
    ) -> Result<Vec<ClaimedWakeup>, StoreError> {
        let leased_until = lease_end(now_ms, lease_ms)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.write(|txn, _| {
            let mut candidates = Vec::new();
            {
                let due = txn.open_table(DUE).map_err(db_err)?;
                // Closing removes a session's wakeups, so the first `limit` due entries are
                // all claimable.
                for row in due
                    .range((0u64, "")..(now_ms + 1, ""))
                    .map_err(db_err)?
                    .take(limit)
                {
                    let (key, value) = row.map_err(db_err)?;
                    let (due_ms, wakeup_id) = key.value();
                    candidates.push((due_ms, wakeup_id.to_owned(), value.value().to_owned()));
                }
            }
            let mut claimed = Vec::new();
            let mut due = txn.open_table(DUE).map_err(db_err)?;
            let mut wakeups = txn.open_table(WAKEUPS).map_err(db_err)?;
            let sessions = txn.open_table(SESSIONS).map_err(db_err)?;
            for (due_ms, wakeup_id, session) in candidates {
                if claimed.len() >= limit {
                    break;
                }
                let id = SessionId::parse(&session)
                    .map_err(|e| StoreError::corrupt(format!("due index: {e}")))?;
                let record = match sessions.get(session.as_str()).map_err(db_err)? {
                    Some(row) => Some(decode::<StoredSession>("session", row.value())?.record),
                    None => None,
                };
                due.remove((due_ms, wakeup_id.as_str())).map_err(db_err)?;
                let stored = wakeups
                    .remove((session.as_str(), wakeup_id.as_str()))
                    .map_err(db_err)?
                    .map(|g| decode::<StoredWakeup>("wakeup", g.value()))
                    .transpose()?;
                // Close removes wakeups in the same transaction, so a closed session has none;
                // checking anyway keeps the guarantee local to this function.
                let (Some(stored), false) = (
                    stored,
                    record.as_ref().is_some_and(SessionRecord::is_closed),
                ) else {
                    continue;
                };
                if let Some(until) = leased_until {
                    let leased = StoredWakeup {
                        due_ms: until,
                        payload: stored.payload.clone(),
                    };
                    wakeups
                        .insert(
                            (session.as_str(), wakeup_id.as_str()),
                            encode(&leased).as_slice(),
                        )
                        .map_err(db_err)?;
                    due.insert((until, wakeup_id.as_str()), session.as_str())
                        .map_err(db_err)?;
                }
                claimed.push(ClaimedWakeup {
                    wakeup: Wakeup {
                        id: wakeup_id,
                        session: id,
                        epoch: record.map_or(0, |r| r.epoch),
                        due_ms,
                        payload: stored.payload,
                    },
                    claimed_at_ms: now_ms,
                    leased_until_ms: leased_until,
                });
            }
            Ok(claimed)
        })
    }

    fn ack_wakeup(&self, id: &SessionId, wakeup_id: &str) -> Result<bool, StoreError> {
        self.write(|txn, _| {
            let mut wakeups = txn.open_table(WAKEUPS).map_err(db_err)?;
            let Some(removed) = wakeups
                .remove((id.as_str(), wakeup_id))
                .map_err(db_err)?
                .map(|g| decode::<StoredWakeup>("wakeup", g.value()))
                .transpose()?
            else {
                return Ok(false);
            };
            let mut due = txn.open_table(DUE).map_err(db_err)?;
            due.remove((removed.due_ms, wakeup_id)).map_err(db_err)?;
            Ok(true)
        })
    }

    fn block_credential(&self, block: CredentialBlock) -> Result<bool, StoreError> {
        let block = block.normalized()?;
        self.write(|txn, events| {
            let mut credentials = txn.open_table(CREDENTIALS).map_err(db_err)?;
            let key = block.fingerprint.as_str();
            if credentials.get(key).map_err(db_err)?.is_some() {
                return Ok(false);
            }
            credentials
                .insert(key, encode(&block).as_slice())
                .map_err(db_err)?;
            let generation = Self::bump_generation(txn, key)?;
            let mut event = StateEvent::bare(
                EventKind::CredentialBlocked,
                generation,
                block.blocked_at_ms,
            );
            event.fingerprint = Some(block.fingerprint.clone());
            event.class = Some(block.class);
            event.rule = Some(block.rule.clone());
            event.reason = Some(block.reason.clone());
            drop(credentials);
            self.append_event(txn, event, events)?;
            Ok(true)
        })
    }

    fn bump_generation(txn: &WriteTransaction, key: &str) -> Result<u64, StoreError> {
        let mut generations = txn.open_table(CREDENTIAL_GENERATIONS).map_err(db_err)?;
        let next = generations
            .get(key)
            .map_err(db_err)?
            .map_or(0, |g| g.value())
            + 1;
        generations.insert(key, next).map_err(db_err)?;
        Ok(next)
    }

    fn unblock_credential(&self, fingerprint: &Fingerprint) -> Result<bool, StoreError> {
        let at_ms = unix_ms_now();
        self.write(|txn, events| {
            let mut credentials = txn.open_table(CREDENTIALS).map_err(db_err)?;
            let removed = credentials
                .remove(fingerprint.as_str())
                .map_err(db_err)?
                .is_some();
            drop(credentials);
            if !removed {
                return Ok(false);
            }
            let generation = Self::bump_generation(txn, fingerprint.as_str())?;
            let mut event = StateEvent::bare(EventKind::CredentialUnblocked, generation, at_ms);
            event.fingerprint = Some(fingerprint.clone());
            self.append_event(txn, event, events)?;
            Ok(true)
        })
    }

    fn blocked_credentials(&self) -> Result<Vec<CredentialBlock>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let credentials = txn.open_table(CREDENTIALS).map_err(db_err)?;
        let mut blocks = Vec::new();
        for row in credentials.iter().map_err(db_err)? {
            let (_, value) = row.map_err(db_err)?;
            blocks.push(decode("credential", value.value())?);
        }
        Ok(blocks)
    }

    fn events_after(
        &self,
        cursor: Option<&EventCursor>,
        limit: usize,
    ) -> Result<EventPage, StoreError> {
        let after = match cursor {
            None => 0,
            Some(cursor) => cursor
                .as_str()
                .strip_prefix(CURSOR_PREFIX)
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| StoreError::InvalidCursor {
                    cursor: cursor.as_str().to_owned(),
                    reason: "not a redb store cursor".into(),
                })?,
        };
        let txn = self.db.begin_read().map_err(db_err)?;
        let counters = txn.open_table(COUNTERS).map_err(db_err)?;
        let trimmed = counters
            .get(TRIMMED_THROUGH)
            .map_err(db_err)?
            .map_or(0, |g| g.value());
        let events_table = txn.open_table(EVENTS).map_err(db_err)?;
        let mut events = Vec::new();
        let mut last = after;
        let mut unreadable = false;
        if limit > 0 {
            for row in events_table.range(after + 1..).map_err(db_err)?.take(limit) {
                let (key, value) = row.map_err(db_err)?;
                last = key.value();
                // Stepped over and reported as a gap (readers rebuild from a snapshot)
                // rather than stopping every reader at it for good.
                match decode::<StateEvent>("event", value.value()) {
                    Ok(event) => events.push(event),
                    Err(error) => {
                        tracing::warn!(%error, seq = last, "Skipping an unreadable event.");
                        unreadable = true;
                    }
                }
            }
        }
        Ok(EventPage {
            events,
            cursor: EventCursor::from_token(format!("{CURSOR_PREFIX}{last}")),
            gap: trimmed > after || unreadable,
        })
    }

    fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let mut page = self.snapshot_page(None, usize::MAX)?;
        let mut snapshot = Snapshot {
            cursor: page.cursor.clone(),
            sessions: std::mem::take(&mut page.sessions),
            credentials: std::mem::take(&mut page.credentials),
        };
        // One read transaction serves a page; with no limit there is one page, but a
        // credential phase may still follow the sessions.
        while let Some(next) = page.next.take() {
            page = self.snapshot_page(Some(next), usize::MAX)?;
            snapshot.sessions.append(&mut page.sessions);
            snapshot.credentials.append(&mut page.credentials);
        }
        Ok(snapshot)
    }

    /// Sessions with closure history from `marks`, then every credential ever blocked, at
    /// most `limit` rows a page. Each page is its own read; facts only grow, so pages read
    /// after the first page's cursor are at least as new as it.
    fn snapshot_page(
        &self,
        from: Option<String>,
        limit: usize,
    ) -> Result<SnapshotPage, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let counters = txn.open_table(COUNTERS).map_err(db_err)?;
        let last = counters
            .get(LAST_EVENT_SEQ)
            .map_err(db_err)?
            .map_or(0, |g| g.value());
        let mut page = SnapshotPage {
            cursor: EventCursor::from_token(format!("{CURSOR_PREFIX}{last}")),
            sessions: Vec::new(),
            credentials: Vec::new(),
            next: None,
        };
        let (phase, after) = match from.as_deref() {
            None => ("s", String::new()),
            Some(token) => match token.split_once(':') {
                Some((phase @ ("s" | "c"), after)) => (phase, after.to_owned()),
                _ => {
                    return Err(StoreError::InvalidCursor {
                        cursor: token.to_owned(),
                        reason: "not a snapshot page token of this store".into(),
                    })
                }
            },
        };
        let after_key = |key: &str| after.is_empty() || key > after.as_str();
        if phase == "s" {
            let marks = txn.open_table(MARKS).map_err(db_err)?;
            let range = if after.is_empty() {
                marks.iter().map_err(db_err)?
            } else {
                marks.range(after.as_str()..).map_err(db_err)?
            };
            for row in range {
                let (id, value) = row.map_err(db_err)?;
                if !after_key(id.value()) {
                    continue;
                }
                if page.sessions.len() == limit {
                    page.next = Some(format!(
                        "s:{}",
                        page.sessions
                            .last()
                            .map_or("", |m: &SessionMark| m.session.as_str())
                    ));
                    return Ok(page);
                }
                let mark = MarkRow::decode(value.value())?;
                page.sessions.push(SessionMark {
                    session: SessionId::parse(id.value())?,
                    epoch: mark.epoch,
                    status: if mark.closed {
                        SessionStatus::Closed
                    } else {
                        SessionStatus::Open
                    },
                    last_closure: mark.closure,
                });
            }
        }
        let credentials_table = txn.open_table(CREDENTIALS).map_err(db_err)?;
        let generations = txn.open_table(CREDENTIAL_GENERATIONS).map_err(db_err)?;
        let credential_after = if phase == "c" { after.as_str() } else { "" };
        let range = if credential_after.is_empty() {
            generations.iter().map_err(db_err)?
        } else {
            generations.range(credential_after..).map_err(db_err)?
        };
        for row in range {
            let (key, generation) = row.map_err(db_err)?;
            if !credential_after.is_empty() && key.value() <= credential_after {
                continue;
            }
            if page.sessions.len() + page.credentials.len() == limit {
                page.next = Some(format!(
                    "c:{}",
                    page.credentials
                        .last()
                        .map_or(credential_after, |c: &CredentialMark| c
                            .fingerprint
                            .as_str())
                ));
                return Ok(page);
            }
            let fingerprint =
                Fingerprint::parse(key.value()).map_err(|e| StoreError::corrupt(e.to_string()))?;
            let block = credentials_table
                .get(key.value())
                .map_err(db_err)?
                .map(|g| decode::<CredentialBlock>("credential", g.value()))
                .transpose()?;
            page.credentials.push(CredentialMark {
                fingerprint,
                generation: generation.value(),
                block,
            });
        }
        Ok(page)
    }

    /// Sessions closed in `[already pruned, before_ms)`, from the compact marks.
    fn prune_candidates(&self, before_ms: u64) -> Result<(u64, Vec<String>), StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let done = txn
            .open_table(COUNTERS)
            .map_err(db_err)?
            .get(DETAILS_PRUNED_BEFORE)
            .map_err(db_err)?
            .map_or(0, |g| g.value());
        let mut candidates = Vec::new();
        if before_ms <= done {
            return Ok((done, candidates));
        }
        for row in txn
            .open_table(MARKS)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (id, mark) = row.map_err(db_err)?;
            let mark = MarkRow::decode(mark.value())?;
            if mark
                .closure
                .is_some_and(|c| (done..before_ms).contains(&c.closed_at_ms))
            {
                candidates.push(id.value().to_owned());
            }
        }
        Ok((done, candidates))
    }

    fn prune_details_of(&self, ids: &[String], before_ms: u64) -> Result<u64, StoreError> {
        self.write(|txn, _| {
            let mut pruned = 0;
            for id in ids {
                let id = SessionId::parse(id)?;
                let Some(mut stored) = Self::load_session(txn, &id)? else {
                    continue;
                };
                if let Some(closure) = stored.record.closure.as_mut() {
                    if closure.closed_at_ms < before_ms && !closure.detail.is_empty() {
                        closure.detail.clear();
                        Self::save_session(txn, &stored)?;
                        pruned += 1;
                    }
                }
            }
            Ok(pruned)
        })
    }

    fn set_pruned_before(&self, before_ms: u64) -> Result<(), StoreError> {
        self.write(|txn, _| {
            let mut counters = txn.open_table(COUNTERS).map_err(db_err)?;
            let done = counters
                .get(DETAILS_PRUNED_BEFORE)
                .map_err(db_err)?
                .map_or(0, |g| g.value());
            counters
                .insert(DETAILS_PRUNED_BEFORE, done.max(before_ms))
                .map_err(db_err)?;
            Ok(())
        })
    }

    fn deployment_secret(&self) -> Result<Vec<u8>, StoreError> {
        {
            let txn = self.db.begin_read().map_err(db_err)?;
            let secrets = txn.open_table(SECRETS).map_err(db_err)?;
            if let Some(secret) = secrets.get(DEPLOYMENT_SECRET).map_err(db_err)? {
                return Ok(secret.value().to_vec());
            }
        }
        let generated = generate_secret()?;
        self.write(|txn, _| {
            let mut secrets = txn.open_table(SECRETS).map_err(db_err)?;
            // Another handle may have written it between our read and this transaction.
            if let Some(secret) = secrets.get(DEPLOYMENT_SECRET).map_err(db_err)? {
                return Ok(secret.value().to_vec());
            }
            secrets
                .insert(DEPLOYMENT_SECRET, generated.as_slice())
                .map_err(db_err)?;
            Ok(generated)
        })
    }
}

impl SessionStore for RedbStore {
    fn get(&self, id: &SessionId) -> BoxFuture<'_, Result<Option<SessionRecord>, StoreError>> {
        let id = id.clone();
        Box::pin(self.blocking(move |inner| inner.get(&id)))
    }

    fn open(
        &self,
        id: &SessionId,
        spec: OpenSpec,
    ) -> BoxFuture<'_, Result<SessionRecord, StoreError>> {
        let id = id.clone();
        Box::pin(self.writing(move |inner| inner.open(&id, spec)))
    }

    fn close(
        &self,
        id: &SessionId,
        closure: Closure,
    ) -> BoxFuture<'_, Result<CloseOutcome, StoreError>> {
        let id = id.clone();
        Box::pin(self.writing(move |inner| inner.close(&id, closure)))
    }

    fn reset_resume(
        &self,
        id: &SessionId,
        epoch: Option<u64>,
        rule: &str,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        let id = id.clone();
        let rule = rule.to_owned();
        Box::pin(self.writing(move |inner| inner.reset_resume(&id, epoch, &rule)))
    }

    fn add_wakeup(
        &self,
        id: &SessionId,
        due_ms: u64,
        payload: serde_json::Value,
    ) -> BoxFuture<'_, Result<AddWakeup, StoreError>> {
        let id = id.clone();
        Box::pin(self.writing(move |inner| inner.add_wakeup(&id, due_ms, payload)))
    }

    fn pending_wakeups(&self, id: &SessionId) -> BoxFuture<'_, Result<Vec<Wakeup>, StoreError>> {
        let id = id.clone();
        Box::pin(self.blocking(move |inner| inner.pending_wakeups(&id)))
    }

    fn claim_due(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ClaimedWakeup>, StoreError>> {
        Box::pin(self.writing(move |inner| inner.claim_due(now_ms, limit, None)))
    }

    fn lease_due(
        &self,
        now_ms: u64,
        limit: usize,
        lease_ms: u64,
    ) -> BoxFuture<'_, Result<Vec<ClaimedWakeup>, StoreError>> {
        Box::pin(self.writing(move |inner| inner.claim_due(now_ms, limit, Some(lease_ms))))
    }

    fn ack_wakeup(
        &self,
        id: &SessionId,
        wakeup_id: &str,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        let (id, wakeup_id) = (id.clone(), wakeup_id.to_owned());
        Box::pin(self.writing(move |inner| inner.ack_wakeup(&id, &wakeup_id)))
    }

    fn block_credential(&self, block: CredentialBlock) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(self.writing(move |inner| inner.block_credential(block)))
    }

    fn unblock_credential(
        &self,
        fingerprint: &Fingerprint,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        let fingerprint = fingerprint.clone();
        Box::pin(self.writing(move |inner| inner.unblock_credential(&fingerprint)))
    }

    fn blocked_credentials(&self) -> BoxFuture<'_, Result<Vec<CredentialBlock>, StoreError>> {
        Box::pin(self.blocking(|inner| inner.blocked_credentials()))
    }

    fn events_after(
        &self,
        cursor: Option<&EventCursor>,
        limit: usize,
    ) -> BoxFuture<'_, Result<EventPage, StoreError>> {
        let cursor = cursor.cloned();
        Box::pin(self.blocking(move |inner| inner.events_after(cursor.as_ref(), limit)))
    }

    fn snapshot(&self) -> BoxFuture<'_, Result<Snapshot, StoreError>> {
        Box::pin(self.blocking(|inner| inner.snapshot()))
    }

    fn snapshot_page(
        &self,
        from: Option<String>,
    ) -> BoxFuture<'_, Result<SnapshotPage, StoreError>> {
        Box::pin(self.blocking(move |inner| inner.snapshot_page(from, SNAPSHOT_PAGE)))
    }

    fn prune_closure_details(
        &self,
        closed_before_ms: u64,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let (_, candidates) = self
                .blocking(move |inner| inner.prune_candidates(closed_before_ms))
                .await?;
            let mut pruned = 0;
            for batch in candidates.chunks(PRUNE_BATCH) {
                let batch = batch.to_vec();
                pruned += self
                    .writing(move |inner| inner.prune_details_of(&batch, closed_before_ms))
                    .await?;
            }
            self.writing(move |inner| inner.set_pruned_before(closed_before_ms))
                .await?;
            Ok(pruned)
        })
    }

    fn watch(&self) -> mpsc::Receiver<Notice> {
        // Subscribe before announcing Resync, so nothing committed after the Resync is missed.
        let mut live = self.inner.live.subscribe();
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            if tx.send(Notice::Resync).await.is_err() {
                return;
            }
            loop {
                let notice = match live.recv().await {
                    Ok(event) => Notice::Event(event),
                    Err(broadcast::error::RecvError::Lagged(_)) => Notice::Resync,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if tx.send(notice).await.is_err() {
                    return;
                }
            }
        });
        rx
    }

    fn deployment_secret(&self) -> BoxFuture<'_, Result<Vec<u8>, StoreError>> {
        Box::pin(self.writing(|inner| inner.deployment_secret()))
    }
}
