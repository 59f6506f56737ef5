//! The redb store and outbox files fail closed: a file that is empty, truncated, foreign or
//! damaged is refused with an error naming it, never served as an empty store, and never
//! panics out of the store. `haltgate store check|repair` run against real files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use haltgate::session::{
    Class, Closure, CredentialBlock, CredentialKey, OpenSpec, Outbox, RedbOptions, RedbStore,
    SessionId, SessionStatus, SessionStore, StoreError,
};

fn session(n: usize) -> SessionId {
    SessionId::parse(&format!("slack:T1/C{n}")).unwrap()
}

fn lost_access() -> Closure {
    Closure::new(Class::LostAccess, "slack.not_in_channel", "bot removed")
        .with_detail(r#"{"ok":false,"error":"not_in_channel"}"#.repeat(20))
}

fn open_store(path: &Path) -> Result<RedbStore, StoreError> {
    RedbStore::open(path, RedbOptions::default())
}

/// A store file holding `closed` closed sessions, one open session and one blocked credential.
async fn write_store(path: &Path, closed: usize) {
    let store = open_store(path).unwrap();
    for n in 0..closed {
        store.close(&session(n), lost_access()).await.unwrap();
    }
    store.open(&session(closed), OpenSpec::new()).await.unwrap();
    let key = CredentialKey::new(&store.deployment_secret().await.unwrap()).unwrap();
    let block = CredentialBlock::new(
        key.fingerprint(b"Bearer xoxb-1"),
        Class::CredentialInvalid,
        "slack.invalid_auth",
        "token revoked",
    );
    assert!(store.block_credential(block).await.unwrap());
}

fn scribble_tail(path: &Path, bytes: usize) {
    let mut content = std::fs::read(path).unwrap();
    let len = content.len();
    for (i, byte) in content[len - bytes..].iter_mut().enumerate() {
        *byte = (i as u8).wrapping_mul(31).wrapping_add(7);
    }
    std::fs::write(path, content).unwrap();
}

fn cut_in_half(path: &Path) {
    let content = std::fs::read(path).unwrap();
    std::fs::write(path, &content[..content.len() / 2]).unwrap();
}

fn refusal(result: Result<impl Sized, StoreError>) -> String {
    match result {
        Ok(_) => panic!("the file was opened"),
        Err(err) => err.to_string(),
    }
}

fn assert_names(message: &str, path: &Path, words: &[&str]) {
    assert!(
        message.contains(&path.display().to_string()),
        "the error does not name {}: {message}",
        path.display()
    );
    for word in words {
        assert!(message.contains(word), "no {word:?} in: {message}");
    }
}

fn haltgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_haltgate"))
        .args(args)
        .env("HALTGATE_LOG", "warn")
        .output()
        .unwrap()
}

fn store_command(verb: &str, path: &Path) -> (i32, String) {
    let output = haltgate(&["store", verb, path.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap(), format!("{stdout}{stderr}"))
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn backups_of(path: &Path) -> Vec<PathBuf> {
    let prefix = format!("{}.bak-", path.file_name().unwrap().to_string_lossy());
    std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&prefix)
        })
        .collect()
}

// === Opening the store ===

#[tokio::test]
async fn a_missing_store_file_is_created_and_keeps_its_closures_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/nested/haltgate.redb");
    write_store(&path, 2).await;

    let store = open_store(&path).unwrap();
    assert!(store.get(&session(0)).await.unwrap().unwrap().is_closed());
    assert_eq!(store.blocked_credentials().await.unwrap().len(), 1);
    // The staging file a creation goes through is gone.
    assert_eq!(dir_entries(path.parent().unwrap()), ["haltgate.redb"]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the store holds the deployment secret: {mode:o}"
        );
    }
}

#[test]
fn an_empty_store_file_is_refused_and_left_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("haltgate.redb");
    std::fs::write(&path, b"").unwrap();

    let message = refusal(open_store(&path));
    assert_names(
        &message,
        &path,
        &["empty (0 bytes)", "not a haltgate store", "remove it"],
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
}

#[tokio::test]
async fn a_store_with_a_scribbled_tail_is_refused_or_fails_every_operation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("haltgate.redb");
    write_store(&path, 200).await;
    scribble_tail(&path, 64 * 1024);

    match open_store(&path) {
        Err(err) => {
            assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
            assert_names(
                &err.to_string(),
                &path,
                &["damaged", "haltgate store check", "haltgate store repair"],
            );
        }
        Ok(store) => {
            // Serving is only acceptable if nothing reads as empty: every call must fail.
            assert!(store.get(&session(0)).await.is_err());
            assert!(store.snapshot().await.is_err());
            assert!(store.events_after(None, 100).await.is_err());
            assert!(store.blocked_credentials().await.is_err());
            assert!(store.close(&session(0), lost_access()).await.is_err());
        }
    }
}

#[tokio::test]
async fn a_truncated_store_file_is_refused_as_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("haltgate.redb");
    write_store(&path, 50).await;
    cut_in_half(&path);

    let message = refusal(open_store(&path));
    assert_names(
        &message,
        &path,
        &["damaged", "truncated", "haltgate store repair"],
    );
}

/// redb opens a file whose damage sits only in table pages; reading every row at open finds
/// it before anything is served (redb panics on such a page instead of returning an error).
#[test]
fn damage_redb_opens_without_noticing_is_found_by_the_read_at_open() {
    const SESSIONS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("sessions");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("haltgate.redb");
    let db = redb::Database::create(&path).unwrap();
    let row = [b'x'; 160];
    for batch in 0..2 {
        let txn = db.begin_write().unwrap();
        {
            let mut sessions = txn.open_table(SESSIONS).unwrap();
            for n in 0..10_000 {
                let id = format!("slack:T1/C{batch}-{n:05}");
                sessions.insert(id.as_str(), row.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    drop(db);
    scribble_tail(&path, 64 * 1024);
    let still_opens = redb::Database::open(&path).map(drop);
    assert!(
        still_opens.is_ok(),
        "redb itself refuses it: {still_opens:?}"
    );

    let message = refusal(open_store(&path));
    assert_names(&message, &path, &["damaged", "table sessions", "panicked"]);
}

#[test]
fn a_file_that_is_not_redb_is_refused_and_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("haltgate.redb");
    let text = b"[listen]\naddr = \"127.0.0.1:8080\"\n";
    std::fs::write(&path, text).unwrap();

    let message = refusal(open_store(&path));
    assert_names(&message, &path, &["damaged", "Not a redb database"]);
    assert_eq!(std::fs::read(&path).unwrap(), text);
}

#[test]
fn a_redb_file_of_another_program_is_refused() {
    const SESSIONS: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("sessions");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.redb");
    let db = redb::Database::create(&path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(SESSIONS).unwrap().insert(1, 2).unwrap();
    txn.commit().unwrap();
    drop(db);

    let message = refusal(open_store(&path));
    assert_names(
        &message,
        &path,
        &["another program", "not a haltgate store"],
    );
}

#[tokio::test]
async fn a_store_file_copied_while_open_is_repaired_on_open_with_its_closures() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("haltgate.redb");
    let copy = dir.path().join("crashed.redb");
    let store = open_store(&path).unwrap();
    store.close(&session(1), lost_access()).await.unwrap();
    // A copy of a file in use looks like one left by a crash: not closed cleanly.
    std::fs::copy(&path, &copy).unwrap();
    drop(store);

    let recovered = open_store(&copy).unwrap();
    assert!(recovered
        .get(&session(1))
        .await
        .unwrap()
        .unwrap()
        .is_closed());
}

#[test]
fn a_store_file_in_use_by_another_handle_is_refused_as_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("haltgate.redb");
    let _first = open_store(&path).unwrap();

    let message = refusal(open_store(&path));
    assert_names(&message, &path, &["already open"]);
}

// === Opening the outbox ===

#[tokio::test]
async fn a_missing_outbox_file_is_created_and_keeps_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool/outbox.redb");
    let outbox = Outbox::open(&path).unwrap();
    outbox.record(&session(1), &lost_access()).await.unwrap();
    drop(outbox);

    assert_eq!(Outbox::open(&path).unwrap().len().await.unwrap(), 1);
    assert_eq!(dir_entries(path.parent().unwrap()), ["outbox.redb"]);
}

#[test]
fn an_empty_outbox_file_is_refused_and_left_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.redb");
    std::fs::write(&path, b"").unwrap();

    let message = refusal(Outbox::open(&path));
    assert_names(
        &message,
        &path,
        &["empty (0 bytes)", "not a haltgate outbox"],
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
}

#[tokio::test]
async fn a_damaged_outbox_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let truncated = dir.path().join("truncated.redb");
    let scribbled = dir.path().join("scribbled.redb");
    for path in [&truncated, &scribbled] {
        let outbox = Outbox::open(path).unwrap();
        for n in 0..50 {
            outbox.record(&session(n), &lost_access()).await.unwrap();
        }
    }
    cut_in_half(&truncated);
    scribble_tail(&scribbled, 64 * 1024);

    let message = refusal(Outbox::open(&truncated));
    assert_names(&message, &truncated, &["damaged", "haltgate store repair"]);
    match Outbox::open(&scribbled) {
        Err(err) => assert_names(&err.to_string(), &scribbled, &["damaged"]),
        Ok(outbox) => {
            assert!(outbox.pending().await.is_err());
            assert!(outbox.len().await.is_err());
        }
    }
}

// === haltgate store check ===

#[tokio::test]
async fn store_check_passes_a_healthy_store_counts_its_rows_and_leaves_it_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("haltgate.redb");
    write_store(&path, 3).await;
    let before = std::fs::read(&path).unwrap();

    let (code, output) = store_command("check", &path);
    assert_eq!(code, 0, "{output}");
    for line in [
        "kind: haltgate store",
        "integrity: ok",
        "sessions: 4",
        "closed sessions: 3",
        "wakeups: 0",
        "events: 5",
        "blocked credentials: 1",
        "undecodable rows: 0",
        "ok: the store is healthy",
    ] {
        assert!(output.contains(line), "no {line:?} in:\n{output}");
    }
    assert!(
        std::fs::read(&path).unwrap() == before,
        "the check changed the file"
    );
    assert_eq!(dir_entries(dir.path()), ["haltgate.redb"]);
}

#[tokio::test]
async fn store_check_fails_empty_truncated_and_scribbled_stores() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.redb");
    std::fs::write(&empty, b"").unwrap();
    let truncated = dir.path().join("truncated.redb");
    write_store(&truncated, 50).await;
    cut_in_half(&truncated);
    let scribbled = dir.path().join("scribbled.redb");
    write_store(&scribbled, 200).await;
    scribble_tail(&scribbled, 64 * 1024);

    for path in [&empty, &truncated, &scribbled] {
        let (code, output) = store_command("check", path);
        assert_eq!(code, 1, "{}:\n{output}", path.display());
        assert!(output.contains("damaged"), "{}:\n{output}", path.display());
    }
}

#[tokio::test]
async fn store_check_finds_rows_haltgate_cannot_decode() {
    const SESSIONS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("sessions");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("haltgate.redb");
    write_store(&path, 2).await;
    let db = redb::Database::open(&path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(SESSIONS)
        .unwrap()
        .insert("slack:T1/C0", b"{not json".as_slice())
        .unwrap();
    txn.commit().unwrap();
    drop(db);

    let (code, output) = store_command("check", &path);
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("integrity: ok"), "{output}");
    assert!(output.contains("undecodable rows: 1"), "{output}");
    assert!(output.contains("slack:T1/C0"), "{output}");
}

#[tokio::test]
async fn store_check_refuses_a_store_a_running_process_holds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("haltgate.redb");
    let _running = open_store(&path).unwrap();

    let (code, output) = store_command("check", &path);
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("stop it first"), "{output}");
}

#[tokio::test]
async fn store_check_reads_an_outbox_and_counts_pending_closures() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.redb");
    let outbox = Outbox::open(&path).unwrap();
    outbox.record(&session(1), &lost_access()).await.unwrap();
    outbox.record(&session(2), &lost_access()).await.unwrap();
    drop(outbox);

    let (code, output) = store_command("check", &path);
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("kind: haltgate outbox"), "{output}");
    assert!(output.contains("pending closures: 2"), "{output}");
    assert!(output.contains("dead letters: 0"), "{output}");
}

#[test]
fn store_check_of_a_missing_file_is_an_error_not_a_new_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("haltgate.redb");

    let (code, output) = store_command("check", &path);
    assert_eq!(code, 1, "{output}");
    assert!(!path.exists());
}

// === haltgate store repair ===

#[tokio::test]
async fn store_repair_backs_up_a_healthy_store_and_keeps_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("haltgate.redb");
    write_store(&path, 3).await;
    let before = std::fs::read(&path).unwrap();

    let (code, output) = store_command("repair", &path);
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("integrity: no damage found"), "{output}");
    let backups = backups_of(&path);
    assert_eq!(backups.len(), 1, "{output}");
    assert!(
        std::fs::read(&backups[0]).unwrap() == before,
        "the backup differs"
    );

    let (code, output) = store_command("check", &path);
    assert_eq!(code, 0, "{output}");
    let store = open_store(&path).unwrap();
    assert!(store.get(&session(2)).await.unwrap().unwrap().is_closed());
}

#[tokio::test]
async fn store_repair_of_a_damaged_store_keeps_a_backup_and_repairs_or_says_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("haltgate.redb");
    write_store(&path, 200).await;
    scribble_tail(&path, 64 * 1024);
    let damaged = std::fs::read(&path).unwrap();
    // Neither a refused open nor a check changes the file.
    assert!(open_store(&path).is_err());
    let (code, output) = store_command("check", &path);
    assert_eq!(code, 1, "{output}");
    assert!(std::fs::read(&path).unwrap() == damaged, "the file changed");

    let (code, output) = store_command("repair", &path);
    let backups = backups_of(&path);
    assert_eq!(backups.len(), 1, "{output}");
    assert!(
        std::fs::read(&backups[0]).unwrap() == damaged,
        "the backup differs"
    );
    if code == 0 {
        let (code, check) = store_command("check", &path);
        assert_eq!(
            code, 0,
            "repair claimed success:\n{output}\ncheck:\n{check}"
        );
        // A repair that answers with an empty store would lose every closure.
        let repaired = open_store(&path).unwrap();
        let snapshot = repaired.snapshot().await.unwrap();
        assert!(
            snapshot
                .sessions
                .iter()
                .any(|m| m.status == SessionStatus::Closed),
            "the repaired store kept no closure:\n{output}"
        );
    } else {
        assert_eq!(code, 1, "{output}");
        assert!(output.contains("cannot repair"), "{output}");
    }
}

#[test]
fn store_repair_of_an_empty_file_says_there_is_nothing_to_recover() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("haltgate.redb");
    std::fs::write(&path, b"").unwrap();

    let (code, output) = store_command("repair", &path);
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("nothing to recover"), "{output}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
}
