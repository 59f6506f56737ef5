//! The redb files haltgate keeps (the session store and the closure outbox): opening them so
//! that a damaged file stops the process instead of being served as an empty or half-read
//! store, and the `haltgate store check|repair` commands.
//!
//! Opening ([`open_or_create`]):
//! - no file: a new one is built under a staging name and hard-linked into place, so the path
//!   only ever names a complete store (a crash mid-creation leaves no empty file behind);
//! - an existing file is opened read-only first and every row of every table is read once
//!   inside `catch_unwind`, because redb may panic (`unreachable!` in its B-tree code) on a
//!   damaged page instead of returning an error. A 0-byte, truncated, foreign or corrupt file
//!   is refused, unchanged, with a message naming it and what to do;
//! - then `Database::open`, which never initializes. A file not closed cleanly is repaired by
//!   redb there, as it should be, with a warning, and read through after the repair.
//!   `Database::check_integrity` would catch more (it verifies page checksums), but it cost
//!   0.6 to 1.7 s on a store with 1,000,000 sessions, against 0.3 to 1.0 s for the scan; it
//!   runs in `haltgate store check` and `haltgate store repair` instead.
//!
//! After opening, [`DamageLatch`] turns a redb panic in any later operation into a lasting
//! [`StoreError::Corrupt`]: the first panic is logged once and every later call fails fast.

use std::any::Any;
use std::fmt::Display;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{
    AccessGuard, Database, DatabaseError, Key, ReadOnlyDatabase, ReadTransaction, ReadableDatabase,
    StorageError, TableDefinition, TableError, TableHandle, Value, WriteTransaction,
};

use super::error::StoreError;
use super::{local_copy, outbox, redb_store};

/// redb's page cache per open file. Its default (1 GiB) would keep a large store resident
/// after the start reads it through; the OS page cache serves re-reads just as well.
pub(crate) const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Which of haltgate's files a redb file is; decides the wording of errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    Store,
    Outbox,
    LocalCopy,
}

impl FileKind {
    fn noun(self) -> &'static str {
        match self {
            FileKind::Store => "store",
            FileKind::Outbox => "outbox",
            FileKind::LocalCopy => "local copy",
        }
    }

    /// What removing the file costs, said wherever removing it is suggested.
    fn loss(self) -> &'static str {
        match self {
            FileKind::Store => "every closure and credential block it held is lost",
            FileKind::Outbox => "closures it held that never reached the store are lost",
            FileKind::LocalCopy => {
                "a start while the shared store is down no longer knows what it held"
            }
        }
    }
}

/// How far a scan goes into each row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Depth {
    /// Read every key and value (what opening does: it finds pages redb cannot read).
    Read,
    /// Also decode every row as the store would (what `haltgate store check` does).
    Decode,
}

/// What one kind of file holds: its tables and how to read them all.
pub(crate) struct FileLayout {
    pub(crate) kind: FileKind,
    /// A table only this kind of file has, to tell the kinds apart.
    pub(crate) marker_table: &'static str,
    pub(crate) create_tables: fn(&WriteTransaction) -> Result<(), TableError>,
    pub(crate) scan: fn(&ReadTransaction, &mut RowReport, Depth),
}

const LAYOUTS: [&FileLayout; 3] = [&redb_store::LAYOUT, &outbox::LAYOUT, &local_copy::LAYOUT];

/// Row counts and problems found by a scan.
#[derive(Debug, Default)]
pub(crate) struct RowReport {
    counts: Vec<(&'static str, u64)>,
    /// Tables redb could not read to the end (damaged pages).
    unreadable: Vec<String>,
    /// Tables of our names but other key or value types: the file is another program's.
    foreign: Vec<String>,
    /// Rows redb read but our decoders rejected; only the first few are kept.
    undecodable: Vec<String>,
    undecodable_total: u64,
}

/// Undecodable rows listed one by one; the rest are only counted.
const LISTED_ROWS: usize = 20;

impl RowReport {
    pub(crate) fn count(&mut self, label: &'static str, rows: u64) {
        self.counts.push((label, rows));
    }

    fn undecodable(&mut self, table: &str, problem: impl Display) {
        self.undecodable_total += 1;
        if self.undecodable.len() < LISTED_ROWS {
            self.undecodable.push(format!("table {table}: {problem}"));
        }
    }

    fn unreadable(&mut self, table: &str, problem: impl Display) {
        self.unreadable.push(format!("table {table}: {problem}"));
    }

    fn is_clean(&self) -> bool {
        self.unreadable.is_empty() && self.foreign.is_empty() && self.undecodable_total == 0
    }
}

/// Visits every row of `table` inside `catch_unwind`. A missing table has no rows; a table
/// redb cannot read to the end is recorded as unreadable, a row `visit` rejects as
/// undecodable (`visit` names the row in its message). Returns the number of rows visited.
pub(crate) fn each_row<K: Key + 'static, V: Value + 'static>(
    txn: &ReadTransaction,
    table: TableDefinition<K, V>,
    report: &mut RowReport,
    mut visit: impl FnMut(&AccessGuard<'_, K>, &AccessGuard<'_, V>) -> Result<(), String>,
) -> u64 {
    let name = table.name().to_owned();
    let mut rows = 0;
    let mut rejected = Vec::new();
    let mut foreign = None;
    let scanned = catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
        let opened = match txn.open_table(table) {
            Ok(opened) => opened,
            Err(TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(err @ (TableError::TableTypeMismatch { .. } | TableError::TableIsMultimap(_))) => {
                foreign = Some(err.to_string());
                return Ok(());
            }
            Err(err) => return Err(err.to_string()),
        };
        for row in redb::ReadableTable::iter(&opened).map_err(|e| e.to_string())? {
            let (key, value) = row.map_err(|e| e.to_string())?;
            rows += 1;
            if let Err(problem) = visit(&key, &value) {
                rejected.push(problem);
            }
        }
        Ok(())
    }));
    for problem in rejected {
        report.undecodable(&name, problem);
    }
    if let Some(problem) = foreign {
        report.foreign.push(format!("table {name}: {problem}"));
    }
    match scanned {
        Ok(Ok(())) => {}
        Ok(Err(err)) => report.unreadable(&name, err),
        Err(panic) => report.unreadable(
            &name,
            format!("redb panicked reading it ({})", panic_message(&*panic)),
        ),
    }
    rows
}

/// Opens the file at `path`, creating it only when no file exists there, and reads it through
/// once. Blocking. See the module docs for what is refused.
pub(crate) fn open_or_create(path: &Path, layout: &FileLayout) -> Result<Database, StoreError> {
    let kind = layout.kind;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)
            .map_err(|e| StoreError::Failed(format!("creating {}: {e}", parent.display())))?;
    }
    match fs::metadata(path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => create_fresh(path, layout)?,
        Err(err) => {
            return Err(StoreError::Failed(format!(
                "cannot read {}: {err}",
                path.display()
            )))
        }
        Ok(meta) if !meta.is_file() => {
            return Err(StoreError::Failed(format!(
                "{} is not a file; give the {} a file path",
                path.display(),
                kind.noun()
            )))
        }
        Ok(meta) if meta.len() == 0 => return Err(empty_file(path, kind)),
        Ok(_) => {}
    }
    // Read through a read-only handle first: a refused file is left exactly as it was found
    // (a writable open rewrites the header), for a backup or `haltgate store repair`.
    match catch_unwind(|| {
        Database::builder()
            .set_cache_size(CACHE_BYTES)
            .open_read_only(path)
    }) {
        Ok(Ok(db)) => verify_rows(&db, path, layout)?,
        // Not closed cleanly: the writable open below repairs it, then it is read through.
        Ok(Err(DatabaseError::RepairAborted)) => {}
        Ok(Err(err)) => return Err(refusal(err).into_error(path, kind)),
        Err(panic) => {
            return Err(damaged(
                path,
                kind,
                format!("redb panicked opening it: {}", panic_message(&*panic)),
            ))
        }
    }
    let opened = open_existing(path).map_err(|refusal| refusal.into_error(path, kind))?;
    if opened.repaired {
        tracing::warn!(
            path = %path.display(),
            "The {} file was not closed cleanly; redb repaired it while opening.",
            kind.noun()
        );
        verify_rows(&opened.db, path, layout)?;
    }
    let db = opened.db;
    let prepared = catch_unwind(AssertUnwindSafe(|| -> Result<(), StoreError> {
        let txn = db.begin_write().map_err(|e| damaged(path, kind, e))?;
        (layout.create_tables)(&txn).map_err(|e| table_error(path, kind, e))?;
        txn.commit().map_err(|e| damaged(path, kind, e))
    }));
    match prepared {
        Ok(result) => result?,
        Err(panic) => {
            return Err(damaged(
                path,
                kind,
                format!("redb panicked preparing it: {}", panic_message(&*panic)),
            ))
        }
    }
    Ok(db)
}

/// Reads every row of every table (redb reports some damage only by panicking on the page).
fn verify_rows(
    db: &impl ReadableDatabase,
    path: &Path,
    layout: &FileLayout,
) -> Result<(), StoreError> {
    let kind = layout.kind;
    let txn = db.begin_read().map_err(|e| damaged(path, kind, e))?;
    let mut report = RowReport::default();
    (layout.scan)(&txn, &mut report, Depth::Read);
    if let Some(first) = report.foreign.first() {
        return Err(foreign(path, kind, first));
    }
    match report.unreadable.first() {
        Some(first) => Err(damaged(path, kind, first)),
        None => Ok(()),
    }
}

/// Builds a new file under a staging name, then links it into place. Returns Ok also when
/// another process created `path` first: the caller then opens that one.
fn create_fresh(path: &Path, layout: &FileLayout) -> Result<(), StoreError> {
    let staging = sibling(path, &format!("creating-{}", std::process::id()));
    let built = build_empty(&staging, layout).and_then(|()| publish(&staging, path));
    // The staging name is gone after a successful link too (the data lives on under `path`).
    let _ = fs::remove_file(&staging);
    built.map_err(|e| {
        StoreError::Failed(format!(
            "creating the {} {}: {e}",
            layout.kind.noun(),
            path.display()
        ))
    })
}

fn build_empty(staging: &Path, layout: &FileLayout) -> Result<(), String> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(true);
    // Owner-only: the store keeps the deployment secret credentials are fingerprinted with.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options
        .open(staging)
        .map_err(|e| format!("{}: {e}", staging.display()))?;
    let db = Database::builder()
        .create_file(file)
        .map_err(|e| e.to_string())?;
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    (layout.create_tables)(&txn).map_err(|e| e.to_string())?;
    txn.commit().map_err(|e| e.to_string())?;
    // Dropping closes the file cleanly (flushed, marked as shut down).
    drop(db);
    Ok(())
}

/// Makes `staging` visible as `path` unless `path` exists by now.
fn publish(staging: &Path, path: &Path) -> Result<(), String> {
    match fs::hard_link(staging, path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        // A file system without hard links: a rename does the same, except that it would
        // replace a file created since the check above.
        Err(_) if !path.exists() => fs::rename(staging, path).map_err(|e| e.to_string())?,
        Err(_) => return Ok(()),
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        // The new directory entry must survive a crash as much as the file's contents.
        File::open(parent)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| format!("syncing {}: {e}", parent.display()))?;
    }
    Ok(())
}

/// `path` with `.suffix` appended to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".{suffix}"));
    path.with_file_name(name)
}

struct Opened {
    db: Database,
    /// redb ran its crash repair while opening.
    repaired: bool,
}

/// Why redb would not open an existing file.
enum Refusal {
    InUse,
    Damaged(String),
    OldFormat(u8),
    Io(io::Error),
}

impl Refusal {
    fn into_error(self, path: &Path, kind: FileKind) -> StoreError {
        let shown = path.display();
        match self {
            Refusal::InUse => StoreError::Failed(format!(
                "{shown} is already open in another process (or by another handle in this one). \
                 A redb file serves one haltgate process: stop the other one, or give this one \
                 its own file"
            )),
            Refusal::Damaged(detail) => damaged(path, kind, detail),
            Refusal::OldFormat(version) => StoreError::Failed(format!(
                "{shown} is in redb file format {version}, which this build no longer reads. \
                 Upgrade it with the redb release that wrote it, or remove it to start with an \
                 empty {} ({})",
                kind.noun(),
                kind.loss()
            )),
            Refusal::Io(err) => StoreError::Failed(format!("cannot read {shown}: {err}")),
        }
    }

    fn describe(&self) -> String {
        match self {
            Refusal::InUse => "it is open in another process".into(),
            Refusal::Damaged(detail) => detail.clone(),
            Refusal::OldFormat(version) => format!("it is in the old redb file format {version}"),
            Refusal::Io(err) => err.to_string(),
        }
    }
}

/// `Database::open` (never initializes) with redb's crash repair noted, and any panic inside
/// redb caught.
fn open_existing(path: &Path) -> Result<Opened, Refusal> {
    let repaired = Arc::new(AtomicBool::new(false));
    let mut builder = Database::builder();
    builder.set_cache_size(CACHE_BYTES);
    let noted = repaired.clone();
    builder.set_repair_callback(move |_| noted.store(true, Ordering::Relaxed));
    let opened = catch_unwind(AssertUnwindSafe(|| builder.open(path)));
    match opened {
        Ok(Ok(db)) => Ok(Opened {
            db,
            repaired: repaired.load(Ordering::Relaxed),
        }),
        Ok(Err(err)) => Err(refusal(err)),
        Err(panic) => Err(Refusal::Damaged(format!(
            "redb panicked opening it: {}",
            panic_message(&*panic)
        ))),
    }
}

fn refusal(err: DatabaseError) -> Refusal {
    match err {
        DatabaseError::DatabaseAlreadyOpen => Refusal::InUse,
        DatabaseError::UpgradeRequired(version) => Refusal::OldFormat(version),
        // redb reports a wrong magic number (not a redb file) as invalid data.
        DatabaseError::Storage(StorageError::Io(err))
            if err.kind() == io::ErrorKind::InvalidData =>
        {
            Refusal::Damaged(err.to_string())
        }
        DatabaseError::Storage(StorageError::Io(err)) => Refusal::Io(err),
        // Corrupted, an aborted repair.
        other => Refusal::Damaged(other.to_string()),
    }
}

fn empty_file(path: &Path, kind: FileKind) -> StoreError {
    StoreError::Corrupt(format!(
        "{shown} is empty (0 bytes): it is not a haltgate {noun}. Restore it from a backup, or \
         remove it to start with an empty {noun} ({loss})",
        shown = path.display(),
        noun = kind.noun(),
        loss = kind.loss()
    ))
}

/// The error for a file redb cannot read: names the file and the ways out.
pub(crate) fn damaged(path: &Path, kind: FileKind, detail: impl Display) -> StoreError {
    StoreError::Corrupt(format!(
        "{shown} is damaged ({detail}). Run `haltgate store check {shown}` to see what is still \
         readable and `haltgate store repair {shown}` to repair it (a backup is kept); or \
         restore it from a backup, or remove it to start with an empty {noun} ({loss})",
        shown = path.display(),
        noun = kind.noun(),
        loss = kind.loss()
    ))
}

fn table_error(path: &Path, kind: FileKind, err: TableError) -> StoreError {
    match err {
        TableError::TableTypeMismatch { .. } | TableError::TableIsMultimap(_) => {
            foreign(path, kind, err)
        }
        other => damaged(path, kind, other),
    }
}

fn foreign(path: &Path, kind: FileKind, detail: impl Display) -> StoreError {
    StoreError::Failed(format!(
        "{} is a redb file of another program, not a haltgate {} ({detail}); give haltgate its \
         own file",
        path.display(),
        kind.noun()
    ))
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "no message".to_owned()
    }
}

/// Remembers that redb panicked on a file: from then on every operation fails fast with
/// [`StoreError::Corrupt`] instead of running into the damaged page again.
pub(crate) struct DamageLatch {
    path: PathBuf,
    kind: FileKind,
    damage: OnceLock<String>,
}

impl DamageLatch {
    pub(crate) fn new(path: &Path, kind: FileKind) -> Self {
        DamageLatch {
            path: path.to_owned(),
            kind,
            damage: OnceLock::new(),
        }
    }

    /// Runs `op` unless the file is known to be damaged; a panic inside it marks the file
    /// damaged (logged once, at the first panic).
    pub(crate) fn run<T>(
        &self,
        op: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if let Some(detail) = self.damage.get() {
            return Err(damaged(&self.path, self.kind, detail));
        }
        match catch_unwind(AssertUnwindSafe(op)) {
            Ok(result) => result,
            Err(panic) => {
                let detail = format!("redb panicked reading it: {}", panic_message(&*panic));
                let error = damaged(&self.path, self.kind, &detail);
                if self.damage.set(detail).is_ok() {
                    tracing::error!(
                        error = %error,
                        "The {} file is damaged; every further operation on it fails.",
                        self.kind.noun()
                    );
                }
                Err(error)
            }
        }
    }
}

// === `haltgate store check` and `haltgate store repair` ===

/// `haltgate store check PATH`: checks a copy of the file (redb's integrity check repairs
/// what it can, and a check must not change the file), then decodes every row. Prints a
/// summary; true when the file is healthy. An `Err` means the check could not run.
pub fn check_store_file(path: &Path, out: &mut dyn Write) -> io::Result<bool> {
    let size = existing_file_size(path)?;
    writeln!(out, "file: {} ({size} bytes)", path.display())?;
    if size == 0 {
        writeln!(
            out,
            "damaged: the file is empty (0 bytes); it is not a haltgate store or outbox"
        )?;
        return Ok(false);
    }
    let copy = ScratchCopy::of(path)?;
    inspect(copy.path(), out)
}

/// `haltgate store repair PATH`: copies the file to `PATH.bak-<unix-seconds>`, lets redb
/// check and repair it, compacts it and checks it again. True when the result is healthy.
pub fn repair_store_file(path: &Path, out: &mut dyn Write) -> io::Result<bool> {
    let size = existing_file_size(path)?;
    if size == 0 {
        writeln!(
            out,
            "cannot repair {}: it is empty (0 bytes), there is nothing to recover. Restore it \
             from a backup, or remove it to start with an empty store",
            path.display()
        )?;
        return Ok(false);
    }
    let backup = back_up(path)?;
    writeln!(out, "backup: {}", backup.display())?;
    let mut opened = match open_existing(path) {
        Ok(opened) => opened,
        Err(refusal) => {
            writeln!(
                out,
                "cannot repair: redb cannot open the file ({}). It is unchanged; restore a \
                 backup, or remove it to start with an empty store",
                refusal.describe()
            )?;
            return Ok(false);
        }
    };
    if opened.repaired {
        writeln!(out, "open: redb repaired an unclean shutdown")?;
    }
    match catch_unwind(AssertUnwindSafe(|| opened.db.check_integrity())) {
        Ok(Ok(true)) => writeln!(out, "integrity: no damage found")?,
        Ok(Ok(false)) => writeln!(out, "integrity: damage found and repaired")?,
        Ok(Err(err)) => {
            writeln!(
                out,
                "cannot repair: {err}. Restore a backup (the file as it was is at {}), or \
                 remove it to start with an empty store",
                backup.display()
            )?;
            return Ok(false);
        }
        Err(panic) => {
            writeln!(
                out,
                "cannot repair: redb panicked checking the file ({}). Restore a backup (the file \
                 as it was is at {}), or remove it to start with an empty store",
                panic_message(&*panic),
                backup.display()
            )?;
            return Ok(false);
        }
    }
    match catch_unwind(AssertUnwindSafe(|| opened.db.compact())) {
        Ok(Ok(true)) => writeln!(out, "compact: done")?,
        Ok(Ok(false)) => writeln!(out, "compact: nothing to reclaim")?,
        Ok(Err(err)) => writeln!(out, "compact: failed ({err}); the file stays as repaired")?,
        Err(panic) => writeln!(
            out,
            "compact: redb panicked ({}); the file stays as repaired",
            panic_message(&*panic)
        )?,
    }
    drop(opened);
    writeln!(out, "check after repair:")?;
    inspect(path, out)
}

fn existing_file_size(path: &Path) -> io::Result<u64> {
    let meta = fs::metadata(path).map_err(|e| with_path(path, e))?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a file", path.display()),
        ));
    }
    Ok(meta.len())
}

fn with_path(path: &Path, err: io::Error) -> io::Error {
    io::Error::new(err.kind(), format!("{}: {err}", path.display()))
}

/// Opens `path` read-only for as long as it is held, so no haltgate process starts writing
/// while the file is copied. Refuses a file a running process has open: a copy taken while
/// it writes could look damaged.
fn hold_still(path: &Path) -> io::Result<Option<ReadOnlyDatabase>> {
    match catch_unwind(|| ReadOnlyDatabase::open(path)) {
        Ok(Ok(db)) => Ok(Some(db)),
        Ok(Err(DatabaseError::DatabaseAlreadyOpen)) => Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            format!(
                "{} is open in a running process; stop it first (a copy taken while it \
                 writes could look damaged)",
                path.display()
            ),
        )),
        // Unclean or damaged: the inspection of the copy says what is wrong.
        Ok(Err(_)) | Err(_) => Ok(None),
    }
}

/// Copies `path` to `PATH.bak-<unix-seconds>`, never over an existing file, and syncs it.
fn back_up(path: &Path) -> io::Result<PathBuf> {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let backup = sibling(path, &format!("bak-{seconds}"));
    let _held = hold_still(path)?;
    copy_new(path, &backup)?;
    Ok(backup)
}

fn copy_new(from: &Path, to: &Path) -> io::Result<()> {
    let mut source = File::open(from).map_err(|e| with_path(from, e))?;
    let mut target = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(|e| with_path(to, e))?;
    io::copy(&mut source, &mut target).map_err(|e| with_path(to, e))?;
    target.sync_all().map_err(|e| with_path(to, e))
}

/// A copy of a file to check, removed when dropped: next to the original, or in the
/// temporary directory when that is not writable.
struct ScratchCopy {
    path: PathBuf,
}

impl ScratchCopy {
    fn of(path: &Path) -> io::Result<Self> {
        let _held = hold_still(path)?;
        let suffix = format!("check-{}", std::process::id());
        let beside = sibling(path, &suffix);
        match copy_new(path, &beside) {
            Ok(()) => return Ok(ScratchCopy { path: beside }),
            Err(_) => {
                let _ = fs::remove_file(&beside);
            }
        }
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let elsewhere = std::env::temp_dir().join(format!("{name}.{suffix}"));
        copy_new(path, &elsewhere)?;
        Ok(ScratchCopy { path: elsewhere })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchCopy {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Opens `path`, runs redb's integrity check (which repairs what it can, in place) and
/// decodes every row; prints what it found. True when nothing was wrong.
fn inspect(path: &Path, out: &mut dyn Write) -> io::Result<bool> {
    let mut opened = match open_existing(path) {
        Ok(opened) => opened,
        Err(refusal) => {
            writeln!(out, "damaged: redb cannot open it ({})", refusal.describe())?;
            return Ok(false);
        }
    };
    if opened.repaired {
        // What every open after a crash does; not damage.
        writeln!(
            out,
            "open: not closed cleanly; redb repaired that, as haltgate does when it starts"
        )?;
    }
    let mut healthy = true;
    match catch_unwind(AssertUnwindSafe(|| opened.db.check_integrity())) {
        Ok(Ok(true)) => writeln!(out, "integrity: ok")?,
        Ok(Ok(false)) => {
            healthy = false;
            writeln!(
                out,
                "integrity: damaged; redb can repair it (`haltgate store repair`)"
            )?;
        }
        Ok(Err(err)) => {
            healthy = false;
            writeln!(out, "integrity: damaged beyond what redb repairs ({err})")?;
        }
        Err(panic) => {
            healthy = false;
            writeln!(
                out,
                "integrity: damaged; redb panicked checking it ({})",
                panic_message(&*panic)
            )?;
        }
    }
    let db = opened.db;
    let read = catch_unwind(AssertUnwindSafe(|| -> Result<_, String> {
        let txn = db.begin_read().map_err(|e| e.to_string())?;
        let tables: Vec<String> = txn
            .list_tables()
            .map_err(|e| e.to_string())?
            .map(|table| table.name().to_owned())
            .collect();
        let Some(layout) = LAYOUTS
            .into_iter()
            .find(|layout| tables.iter().any(|name| name == layout.marker_table))
        else {
            return Ok((None, tables, RowReport::default()));
        };
        let mut report = RowReport::default();
        (layout.scan)(&txn, &mut report, Depth::Decode);
        Ok((Some(layout.kind), tables, report))
    }));
    let (kind, tables, report) = match read {
        Ok(Ok(read)) => read,
        Ok(Err(err)) => {
            writeln!(out, "damaged: cannot list its tables ({err})")?;
            return Ok(false);
        }
        Err(panic) => {
            writeln!(
                out,
                "damaged: redb panicked listing its tables ({})",
                panic_message(&*panic)
            )?;
            return Ok(false);
        }
    };
    let Some(kind) = kind else {
        writeln!(
            out,
            "not haltgate's: a redb file with tables [{}], neither a haltgate store nor an outbox",
            tables.join(", ")
        )?;
        return Ok(false);
    };
    writeln!(out, "kind: haltgate {}", kind.noun())?;
    for (label, rows) in &report.counts {
        writeln!(out, "{label}: {rows}")?;
    }
    for problem in &report.foreign {
        writeln!(out, "not haltgate's: {problem}")?;
    }
    for problem in &report.unreadable {
        writeln!(out, "unreadable: {problem}")?;
    }
    writeln!(out, "undecodable rows: {}", report.undecodable_total)?;
    for problem in &report.undecodable {
        writeln!(out, "  {problem}")?;
    }
    if report.undecodable_total > report.undecodable.len() as u64 {
        writeln!(
            out,
            "  … and {} more",
            report.undecodable_total - report.undecodable.len() as u64
        )?;
    }
    healthy &= report.is_clean();
    if healthy {
        writeln!(out, "ok: the {} is healthy", kind.noun())?;
    } else {
        writeln!(out, "damaged: see above")?;
    }
    Ok(healthy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_marks_the_file_damaged_and_later_calls_fail_without_running() {
        let latch = DamageLatch::new(Path::new("/data/haltgate.redb"), FileKind::Store);
        let first: Result<(), StoreError> = latch.run(|| panic!("entered unreachable code"));
        let Err(StoreError::Corrupt(message)) = first else {
            panic!("expected a Corrupt error, got {first:?}");
        };
        assert!(message.contains("/data/haltgate.redb"), "{message}");
        assert!(message.contains("haltgate store repair"), "{message}");
        assert!(message.contains("entered unreachable code"), "{message}");

        let mut ran = false;
        let later = latch.run(|| {
            ran = true;
            Ok(())
        });
        assert!(!ran, "an operation ran on a file known to be damaged");
        assert!(matches!(later, Err(StoreError::Corrupt(_))), "{later:?}");
    }

    #[test]
    fn errors_without_a_panic_leave_the_file_usable() {
        let latch = DamageLatch::new(Path::new("outbox.redb"), FileKind::Outbox);
        let failed: Result<(), StoreError> =
            latch.run(|| Err(StoreError::Failed("disk full".into())));
        assert_eq!(failed, Err(StoreError::Failed("disk full".into())));
        assert_eq!(latch.run(|| Ok(7)), Ok(7));
    }
}
