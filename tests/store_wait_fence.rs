//! `WAIT` confirms only the writes of its own connection, and the redis crate reconnects on its
//! own: a closure counts as stored only when the confirmation runs on the connection the
//! closure went through. A real master and replica; the replica is paused (SIGSTOP) so a write
//! cannot reach it, and its last acknowledgement is all a `WAIT` on a fresh connection needs.

#[path = "support/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use haltgate::session::{
    confirm_closure, Class, CloseOutcome, Closure, OpenSpec, Outbox, RedisOptions, RedisStore,
    RedisTarget, RelayConfig, SessionId, SessionStatus, SessionStore, StoreError,
};
use redis_server::RedisServer;

/// A master with one replica in sync.
fn master_and_replica() -> (RedisServer, RedisServer) {
    let master =
        RedisServer::start_with(&["--appendfsync", "always", "--repl-diskless-sync-delay", "0"]);
    let port = master.port().to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !replica
        .cli(&["info", "replication"])
        .contains("master_link_status:up")
    {
        assert!(Instant::now() < deadline, "the replica did not sync");
        std::thread::sleep(Duration::from_millis(20));
    }
    // In sync once a later write reaches it: after the initial transfer a master streams
    // writes only from the replica's first acknowledgement on, which can take a second.
    master.cli(&["set", "synced", "1"]);
    while replica.cli(&["get", "synced"]).trim() != "1" {
        assert!(Instant::now() < deadline, "the replica did not sync");
        std::thread::sleep(Duration::from_millis(20));
    }
    (master, replica)
}

fn store_on(server: &RedisServer) -> Arc<dyn SessionStore> {
    let options = RedisOptions {
        replicas_to_ack: Some(1),
        replica_ack_timeout: Duration::from_millis(300),
        ..RedisOptions::default()
    };
    let target = RedisTarget::Standalone { url: server.url() };
    Arc::new(RedisStore::connect(target, options).unwrap())
}

fn lost_access() -> Closure {
    Closure::new(Class::LostAccess, "slack.not_in_channel", "bot removed").at_epoch(0)
}

fn unconfirmed_because(result: Result<(), StoreError>, reason: &str) {
    match result {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains(reason), "refused, but: {message}")
        }
        other => panic!("expected a refusal ({reason}), got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closure_written_before_a_reconnect_is_confirmed_only_by_its_replay() {
    let (master, replica) = master_and_replica();
    let store = store_on(&master);
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(&dir.path().join("outbox.redb")).unwrap();
    let s = SessionId::parse("slack:T1/C9").unwrap();
    let (_, receipt) = store.open_with_receipt(&s, OpenSpec::new()).await.unwrap();
    store.replicated(&[receipt]).await.unwrap();

    replica.pause();
    let (outcome, receipt) = store.close_with_receipt(&s, lost_access()).await.unwrap();
    assert!(
        matches!(outcome, CloseOutcome::Closed { .. }),
        "{outcome:?}"
    );
    // The store's connection goes; the connection manager makes a new one on its own.
    let killed = master.cli(&["client", "kill", "type", "normal"]);
    assert!(killed.trim().parse::<u32>().unwrap() >= 1, "{killed}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.get(&s).await.is_err() {
        assert!(Instant::now() < deadline, "the store did not reconnect");
    }
    // The hole: on a connection that wrote nothing, WAIT counts the paused replica.
    assert_eq!(master.cli(&["wait", "1", "100"]).trim(), "1");
    unconfirmed_because(
        store.replicated(std::slice::from_ref(&receipt)).await,
        "connection changed",
    );
    let entry = confirm_closure(&*store, &outbox, &s, lost_access(), receipt).await;
    assert!(entry.is_some(), "an unconfirmed closure goes to the outbox");

    // A replay that finds the closure confirms it only once the replica has it, though the
    // replay itself changes nothing (the script rewrites it unchanged, since Redis 7.2 moves
    // a connection's WAIT offset only with writes that propagate).
    let (outcome, replayed) = store.close_with_receipt(&s, lost_access()).await.unwrap();
    assert!(
        matches!(outcome, CloseOutcome::AlreadyClosed { .. }),
        "{outcome:?}"
    );
    unconfirmed_because(store.replicated(&[replayed]).await, "of 1 replicas");

    let relay = outbox.spawn_relay(
        store.clone(),
        RelayConfig {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            idle_poll: Duration::from_secs(30),
        },
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(outbox.len().await.unwrap(), 1, "kept while unconfirmed");
    replica.resume();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !outbox.is_empty().await.unwrap() {
        assert!(Instant::now() < deadline, "the replay was not confirmed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.abort();
    let on_replica = store_on(&replica).get(&s).await.unwrap().unwrap();
    assert_eq!(on_replica.status, SessionStatus::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closure_is_confirmed_on_the_connection_it_went_through() {
    let (master, replica) = master_and_replica();
    let store = store_on(&master);
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(&dir.path().join("outbox.redb")).unwrap();
    let s = SessionId::parse("slack:T1/C10").unwrap();

    let (outcome, receipt) = store.close_with_receipt(&s, lost_access()).await.unwrap();
    assert!(
        matches!(outcome, CloseOutcome::Closed { .. }),
        "{outcome:?}"
    );
    store
        .replicated(std::slice::from_ref(&receipt))
        .await
        .unwrap();
    let entry = confirm_closure(&*store, &outbox, &s, lost_access(), receipt).await;
    assert_eq!(entry, None);
    assert!(outbox.is_empty().await.unwrap());

    // The same connection, but a replica that cannot take the write: WAIT itself refuses.
    replica.pause();
    let t = SessionId::parse("slack:T1/C11").unwrap();
    let (_, receipt) = store.close_with_receipt(&t, lost_access()).await.unwrap();
    unconfirmed_because(store.replicated(&[receipt]).await, "of 1 replicas");
    replica.resume();
    let _ = master;
}
