//! The instance-local closed set, fed from real stores: bootstrap, live propagation between
//! separate store handles (as between two proxy instances), reopen, reconnect and gaps.

#[path = "support/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use haltgate::session::{
    Class, ClosedSet, Closure, CredentialBlock, CredentialKey, FeedConfig, OpenSpec, RedbOptions,
    RedbStore, RedisOptions, RedisStore, RedisTarget, SessionId, SessionStore, StoreLocator,
};
use redis_server::{RedisCluster, RedisServer};

/// Long enough that only live notifications (or a Resync) can explain fast convergence.
fn live_only() -> FeedConfig {
    FeedConfig {
        catch_up_interval: Duration::from_secs(60),
    }
}

fn sid(s: &str) -> SessionId {
    SessionId::parse(s).unwrap()
}

fn closure(rule: &str) -> Closure {
    Closure::new(Class::LostAccess, rule, "lost access")
}

fn redis_handle(target: &RedisTarget, prefix: &str) -> Arc<dyn SessionStore> {
    let options = RedisOptions {
        prefix: prefix.to_owned(),
        op_timeout: Duration::from_secs(2),
        ..RedisOptions::default()
    };
    Arc::new(RedisStore::connect(target.clone(), options).unwrap())
}

async fn wait_for(what: &str, within: Duration, condition: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        // A short sleep, not a busy yield: on two cores spinning would starve the feed task.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    started.elapsed()
}

/// `writer` and `reader` are separate handles on the same data (for Redis, separate
/// connections), standing for two proxy instances.
async fn follows_the_store(
    name: &str,
    writer: Arc<dyn SessionStore>,
    reader: Arc<dyn SessionStore>,
) {
    let key = CredentialKey::new(&writer.deployment_secret().await.unwrap()).unwrap();
    let token = key.fingerprint(b"Bearer xoxb-REDACTED");
    let (closed_before, reopened_before) = (sid("closed-before"), sid("reopened-before"));
    writer
        .close(&closed_before, closure("slack.not_in_channel"))
        .await
        .unwrap();
    writer
        .close(&reopened_before, closure("slack.not_in_channel"))
        .await
        .unwrap();
    writer
        .open(&reopened_before, OpenSpec::new())
        .await
        .unwrap();
    writer
        .block_credential(CredentialBlock::new(
            token.clone(),
            Class::CredentialInvalid,
            "cron.invalid_token",
            "x",
        ))
        .await
        .unwrap();

    let set = Arc::new(ClosedSet::new());
    assert!(!set.is_ready());
    let feed = set.spawn_feed(reader, live_only());
    wait_for("bootstrap", Duration::from_secs(5), || set.is_ready()).await;
    assert_eq!(
        &*set.check(&closed_before, None).unwrap().rule,
        "slack.not_in_channel"
    );
    assert!(set.check(&reopened_before, None).is_none());
    assert!(set.check(&reopened_before, Some(1)).is_none());
    assert!(
        set.check(&reopened_before, Some(0)).is_some(),
        "the old generation stays halted"
    );
    assert!(set.is_blocked(&token));

    let mut latencies = Vec::new();
    for i in 0..20 {
        let s = sid(&format!("live-{i}"));
        let started = Instant::now();
        writer
            .close(&s, closure("github.app_uninstalled"))
            .await
            .unwrap();
        wait_for("live closure", Duration::from_secs(1), || {
            set.check(&s, None).is_some()
        })
        .await;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    eprintln!(
        "{name}: from close() on one handle to halted on the other: median {:?}, max {:?}",
        latencies[10], latencies[19]
    );

    let s = sid("live-0");
    writer.open(&s, OpenSpec::new()).await.unwrap();
    wait_for("reopen", Duration::from_secs(1), || {
        set.check(&s, None).is_none()
    })
    .await;
    assert!(
        set.check(&s, Some(1)).is_none(),
        "a reopen un-halts the new epoch"
    );
    assert!(
        set.check(&s, Some(0)).is_some(),
        "and keeps the old one halted"
    );

    writer.unblock_credential(&token).await.unwrap();
    wait_for("unblock", Duration::from_secs(1), || {
        !set.is_blocked(&token)
    })
    .await;
    feed.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_set_follows_a_redb_store() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn SessionStore> =
        Arc::new(RedbStore::open(&dir.path().join("state.redb"), RedbOptions::default()).unwrap());
    follows_the_store("redb", store.clone(), store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_set_follows_a_standalone_redis_across_handles() {
    let server = RedisServer::start();
    let target = RedisTarget::Standalone { url: server.url() };
    follows_the_store(
        "redis",
        redis_handle(&target, "cs"),
        redis_handle(&target, "cs"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_set_follows_a_redis_cluster_across_handles() {
    let cluster = RedisCluster::start(3);
    let StoreLocator::Redis { target, .. } = StoreLocator::parse(&cluster.store_url()).unwrap()
    else {
        panic!("cluster url parsed as another backend");
    };
    follows_the_store(
        "redis-cluster",
        redis_handle(&target, "cs"),
        redis_handle(&target, "cs"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_set_catches_up_after_redis_restarts() {
    let mut server = RedisServer::start();
    let target = RedisTarget::Standalone { url: server.url() };
    let (writer, reader) = (redis_handle(&target, "rs"), redis_handle(&target, "rs"));
    let set = Arc::new(ClosedSet::new());
    let feed = set.spawn_feed(reader, live_only());
    wait_for("bootstrap", Duration::from_secs(5), || set.is_ready()).await;

    server.kill();
    server.restart();
    // Written right after the restart, possibly before the subscriber is back: only the
    // catch-up that follows the resubscription can deliver it then.
    let s = sid("closed-during-reconnect");
    let deadline = Instant::now() + Duration::from_secs(5);
    while writer
        .close(&s, closure("linear.issue_unassigned"))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "writer did not reconnect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waited = wait_for("closure after restart", Duration::from_secs(5), || {
        set.check(&s, None).is_some()
    })
    .await;
    eprintln!("closure after a Redis restart visible in {waited:?}");
    feed.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trimmed_log_makes_the_closed_set_reload_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(
        &dir.path().join("state.redb"),
        RedbOptions { event_retention: 5 },
    )
    .unwrap();
    let set = ClosedSet::new();
    let first = set.catch_up(&store).await.unwrap();
    assert!(first.resynced && set.is_ready());

    let sessions: Vec<SessionId> = (0..20).map(|i| sid(&format!("s{i}"))).collect();
    for s in &sessions {
        store.close(s, closure("r")).await.unwrap();
    }
    let behind = set.catch_up(&store).await.unwrap();
    assert!(
        behind.resynced,
        "15 of the 20 events were trimmed before this reader saw them"
    );
    assert!(sessions.iter().all(|s| set.check(s, None).is_some()));
    assert_eq!(set.closed_count(), 20);

    store.open(&sessions[0], OpenSpec::new()).await.unwrap();
    let steady = set.catch_up(&store).await.unwrap();
    assert_eq!((steady.resynced, steady.events), (false, 1));
    assert!(set.check(&sessions[0], None).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_event_is_stepped_over_and_the_set_still_converges() {
    let redis = RedisServer::start();
    let target = RedisTarget::Standalone { url: redis.url() };
    let store = redis_handle(&target, "unreadable");
    let set = ClosedSet::new();
    set.catch_up(&*store).await.unwrap();

    // An event of a kind this version does not know, as a newer instance might write, in
    // every partition so whichever the closure lands in has one ahead of it.
    for p in 0..16 {
        redis.cli(&[
            "XADD",
            &format!("unreadable:{{{p}}}:events"),
            "*",
            "kind",
            "future_kind",
            "epoch",
            "1",
        ]);
    }
    let gone = sid("after-unknown");
    store
        .close(&gone, closure("slack.not_in_channel"))
        .await
        .unwrap();

    let page = store.events_after(None, 1000).await.unwrap();
    assert!(page.gap, "an unreadable entry is reported as a gap");
    assert!(page
        .events
        .iter()
        .any(|e| e.session.as_ref() == Some(&gone)));
    let caught = set.catch_up(&*store).await.unwrap();
    assert!(caught.resynced, "the gap makes the set reload a snapshot");
    assert!(set.check(&gone, None).is_some());
}
