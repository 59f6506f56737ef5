//! The closure outbox against a real redis-server that is killed and restarted.

#[path = "support/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use haltgate::session::{
    block_or_enqueue, close_or_enqueue, BlockDisposition, Class, CloseDisposition, CloseOutcome,
    Closure, CredentialBlock, EventKind, Fingerprint, OpenSpec, Outbox, RedisOptions, RedisStore,
    RedisTarget, RelayConfig, SessionId, SessionStatus, SessionStore, StoreError,
};
use redis_server::RedisServer;
use serde_json::json;

fn redis_store(server: &RedisServer, op_timeout: Duration) -> Arc<dyn SessionStore> {
    let options = RedisOptions {
        op_timeout,
        ..RedisOptions::default()
    };
    Arc::new(RedisStore::connect(RedisTarget::Standalone { url: server.url() }, options).unwrap())
}

fn quick_relay() -> RelayConfig {
    RelayConfig {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(400),
        idle_poll: Duration::from_secs(30),
    }
}

async fn wait_until_empty(outbox: &Outbox, within: Duration) {
    let deadline = Instant::now() + within;
    while !outbox.is_empty().await.unwrap() {
        assert!(
            Instant::now() < deadline,
            "outbox not drained within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closure_survives_a_redis_outage_through_the_outbox() {
    let mut server = RedisServer::start();
    let store = redis_store(&server, Duration::from_millis(300));
    let dir = tempfile::tempdir().unwrap();
    let outbox_path = dir.path().join("outbox.redb");
    let s = SessionId::parse("slack:T1/C9").unwrap();
    store.open(&s, OpenSpec::new()).await.unwrap();
    store
        .add_wakeup(&s, 1, json!({"wake": "daily"}))
        .await
        .unwrap();

    server.kill();
    let closure = Closure::new(Class::LostAccess, "slack.not_in_channel", "bot kicked")
        .at_epoch(0)
        .with_detail(r#"{"ok":false,"error":"not_in_channel"}"#);
    let outbox = Outbox::open(&outbox_path).unwrap();
    let started = Instant::now();
    let disposition = close_or_enqueue(&store, &outbox, &s, closure.clone())
        .await
        .unwrap();
    let elapsed = started.elapsed();
    eprintln!("close with Redis down answered in {elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(1),
        "close must fail fast, took {elapsed:?}"
    );
    let CloseDisposition::Queued { cause, .. } = disposition else {
        panic!("expected the closure to be queued, got {disposition:?}");
    };
    assert!(cause.is_retryable(), "{cause}");
    assert_eq!(outbox.len().await.unwrap(), 1);

    // The record alone drives the relay: a new process finds it in the file.
    drop(outbox);
    let outbox = Outbox::open(&outbox_path).unwrap();
    let pending = outbox.pending().await.unwrap();
    assert_eq!(
        (pending.len(), &pending[0].session, &pending[0].closure),
        (1, &s, &closure.normalized().unwrap())
    );
    let relay = outbox.spawn_relay(store.clone(), quick_relay());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        outbox.len().await.unwrap(),
        1,
        "nothing lands while Redis is down"
    );

    server.restart();
    let restarted = Instant::now();
    wait_until_empty(&outbox, Duration::from_secs(10)).await;
    eprintln!("outbox drained {:?} after the restart", restarted.elapsed());
    relay.abort();

    let record = store.get(&s).await.unwrap().unwrap();
    assert_eq!((record.status, record.epoch), (SessionStatus::Closed, 0));
    let info = record.closure.unwrap();
    assert_eq!(
        (info.rule.as_str(), info.closed_at_ms),
        ("slack.not_in_channel", closure.at_ms)
    );
    assert!(
        store.pending_wakeups(&s).await.unwrap().is_empty(),
        "the relayed close cancelled the wakeup"
    );
    let page = store.events_after(None, 100).await.unwrap();
    let closes: Vec<_> = page
        .events
        .iter()
        .filter(|e| e.kind == EventKind::Closed)
        .collect();
    assert_eq!(closes.len(), 1);
    assert_eq!(closes[0].cancelled, Some(1));
    assert!(outbox.dead_letters().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_block_survives_a_redis_outage_next_to_a_closure() {
    let mut server = RedisServer::start();
    let store = redis_store(&server, Duration::from_millis(300));
    let dir = tempfile::tempdir().unwrap();
    let outbox_path = dir.path().join("outbox.redb");
    let fingerprint = Fingerprint::parse(&"c4".repeat(32)).unwrap();
    let block = CredentialBlock::new(
        fingerprint.clone(),
        Class::CredentialInvalid,
        "slack.invalid_auth",
        "token revoked",
    );
    let s = SessionId::parse("slack:T1/C7").unwrap();

    server.kill();
    let outbox = Outbox::open(&outbox_path).unwrap();
    let queued = block_or_enqueue(&store, &outbox, block.clone())
        .await
        .unwrap();
    assert!(
        matches!(queued, BlockDisposition::Queued { .. }),
        "{queued:?}"
    );
    let closure = Closure::new(Class::CredentialInvalid, "slack.invalid_auth", "revoked");
    close_or_enqueue(&store, &outbox, &s, closure)
        .await
        .unwrap();

    // Both kinds are in the file a new process opens, each listed as its own kind.
    drop(outbox);
    let outbox = Outbox::open(&outbox_path).unwrap();
    assert_eq!(outbox.len().await.unwrap(), 2);
    let blocks = outbox.pending_blocks().await.unwrap();
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].block, block);
    assert_eq!(outbox.pending().await.unwrap().len(), 1);

    let relay = outbox.spawn_relay(store.clone(), quick_relay());
    server.restart();
    wait_until_empty(&outbox, Duration::from_secs(10)).await;
    relay.abort();
    let blocked = store.blocked_credentials().await.unwrap();
    assert_eq!(blocked.len(), 1);
    assert_eq!(blocked[0].fingerprint, fingerprint);
    assert!(store.get(&s).await.unwrap().unwrap().is_closed());
    // A replay of a block already stored changes nothing.
    let again = block_or_enqueue(&store, &outbox, block).await.unwrap();
    assert_eq!(again, BlockDisposition::Stored(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_or_enqueue_stores_directly_when_the_store_answers() {
    let server = RedisServer::start();
    let store = redis_store(&server, Duration::from_millis(500));
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(&dir.path().join("outbox.redb")).unwrap();
    let s = SessionId::parse("s").unwrap();
    let closure = Closure::new(Class::LostAccess, "r", "x");
    let first = close_or_enqueue(&store, &outbox, &s, closure.clone())
        .await
        .unwrap();
    assert!(
        matches!(first, CloseDisposition::Stored(CloseOutcome::Closed { .. })),
        "{first:?}"
    );
    let again = close_or_enqueue(&store, &outbox, &s, closure)
        .await
        .unwrap();
    assert!(
        matches!(
            again,
            CloseDisposition::Stored(CloseOutcome::AlreadyClosed { .. })
        ),
        "{again:?}"
    );
    let invalid = Closure::new(Class::LostAccess, "", "x");
    assert!(matches!(
        close_or_enqueue(&store, &outbox, &s, invalid).await,
        Err(StoreError::InvalidInput(_))
    ));
    assert!(outbox.is_empty().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_treats_fenced_as_done_and_buries_what_the_store_refuses() {
    let server = RedisServer::start();
    let store = redis_store(&server, Duration::from_millis(500));
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(&dir.path().join("outbox.redb")).unwrap();

    // A queued closure about generation 0 of a session that has moved to generation 1.
    let moved = SessionId::parse("moved").unwrap();
    store
        .close(&moved, Closure::new(Class::Manual, "manual", "x"))
        .await
        .unwrap();
    store.open(&moved, OpenSpec::new()).await.unwrap();
    outbox
        .record(
            &moved,
            &Closure::new(Class::LostAccess, "late", "x").at_epoch(0),
        )
        .await
        .unwrap();

    // A session whose key someone overwrote with a string: the script fails the same way
    // every time, so retrying cannot help.
    let broken = SessionId::parse("broken").unwrap();
    store.open(&broken, OpenSpec::new()).await.unwrap();
    let key = server
        .cli(&["--scan", "--pattern", "*:s:broken"])
        .trim()
        .to_owned();
    assert!(key.ends_with(":s:broken"), "found {key:?}");
    server.cli(&["del", &key]);
    server.cli(&["set", &key, "not-a-hash"]);
    outbox
        .record(&broken, &Closure::new(Class::LostAccess, "r", "x"))
        .await
        .unwrap();

    let relay = outbox.spawn_relay(store.clone(), quick_relay());
    wait_until_empty(&outbox, Duration::from_secs(5)).await;
    relay.abort();

    let record = store.get(&moved).await.unwrap().unwrap();
    assert_eq!(
        (record.epoch, record.status),
        (1, SessionStatus::Open),
        "fenced: the newer generation is untouched"
    );
    let dead = outbox.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].entry.session, broken);
    assert!(dead[0].error.contains("WRONGTYPE"), "{}", dead[0].error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_fails_fast_when_redis_hangs() {
    let server = RedisServer::start();
    let store = redis_store(&server, Duration::from_millis(300));
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(&dir.path().join("outbox.redb")).unwrap();
    let s = SessionId::parse("hung").unwrap();
    store.open(&s, OpenSpec::new()).await.unwrap();

    server.pause();
    let started = Instant::now();
    let disposition = close_or_enqueue(
        &store,
        &outbox,
        &s,
        Closure::new(Class::LostAccess, "mcp.token_revoked", "x").at_epoch(0),
    )
    .await
    .unwrap();
    let elapsed = started.elapsed();
    eprintln!("close with Redis hung answered in {elapsed:?}");
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    assert!(
        matches!(
            disposition,
            CloseDisposition::Queued {
                cause: StoreError::Timeout(_) | StoreError::Unavailable(_),
                ..
            }
        ),
        "{disposition:?}"
    );

    let relay = outbox.spawn_relay(store.clone(), quick_relay());
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.resume();
    wait_until_empty(&outbox, Duration::from_secs(10)).await;
    relay.abort();
    let record = store.get(&s).await.unwrap().unwrap();
    assert_eq!(record.status, SessionStatus::Closed);
    assert_eq!(record.closure.unwrap().rule, "mcp.token_revoked");
}
