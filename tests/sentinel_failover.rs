//! Redis Sentinel: the store follows the master the sentinels name, a closure counts as stored
//! only once a replica has it, so a master killed during closures loses none; credential
//! blocks and reopens count only once replicated too. Real redis-server and sentinel
//! processes on free ports.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use haltgate::body;
use haltgate::session::{open_store, Class, CloseDisposition, Closure, SessionId, SessionStore};
use http::Request;
use serde_json::json;
use support::redis_server::{RedisSentinel, RedisServer};
use support::*;

fn sid(s: &str) -> SessionId {
    SessionId::parse(s).unwrap()
}

fn lost_access() -> Closure {
    Closure::new(Class::LostAccess, "slack.not_in_channel", "bot removed")
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * fraction).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_closure_is_lost_when_the_sentinel_master_dies() {
    let mut deployment = RedisSentinel::start(500);
    let _ = tracing_subscriber::fmt()
        .with_env_filter("haltgate=warn")
        .with_test_writer()
        .try_init();
    let url = format!(
        "{}?replica_ack_timeout_ms=300&timeout_ms=1000",
        deployment.store_url()
    );
    let upstream = start_upstream(slack_upstream()).await;
    let mut flags = proxy_flags(&[("slack", upstream.http_url())]);
    flags.store = Some(url);
    let proxy = start_proxy(flags).await;
    wait_ready(&proxy).await;

    // What the replica acknowledgement costs on the halt path: the closure's own round trip
    // (with the `CLIENT INFO` that names its connection), then the `WAIT` that confirms it
    // (the halt does not wait for the second).
    let (mut close_times, mut wait_times, mut totals) = (Vec::new(), Vec::new(), Vec::new());
    let store = proxy.gate().store();
    for i in 0..200 {
        let started = Instant::now();
        let (_, receipt) = store
            .close_with_receipt(&sid(&format!("timing-{i}")), lost_access())
            .await
            .unwrap();
        let closed = started.elapsed();
        store.replicated(&[receipt]).await.unwrap();
        close_times.push(closed);
        wait_times.push(started.elapsed() - closed);
        totals.push(started.elapsed());
    }
    for times in [&mut close_times, &mut wait_times, &mut totals] {
        times.sort();
    }
    eprintln!(
        "Sentinel, 200 closures: close {:?} median / {:?} p99; WAIT after it {:?} / {:?}; close to confirmation {:?} / {:?}",
        percentile(&close_times, 0.5),
        percentile(&close_times, 0.99),
        percentile(&wait_times, 0.5),
        percentile(&wait_times, 0.99),
        percentile(&totals, 0.5),
        percentile(&totals, 0.99),
    );
    assert_eq!(
        proxy.gate().store().replicas_to_ack(),
        Some(1),
        "auto means one replica when the master has one"
    );

    let ids: Vec<SessionId> = (0..300).map(|i| sid(&format!("failover-{i}"))).collect();
    for (n, chunk) in ids.chunks(25).enumerate() {
        if n == 4 {
            // After the first 100 closures the master dies like a crashed machine.
            deployment.master.kill();
        }
        let closes = chunk.iter().map(|id| proxy.gate().close(id, lost_access()));
        for result in join_all(closes).await {
            result.expect("every closure is stored or queued, never refused");
        }
    }
    for id in &ids {
        assert!(
            proxy.gate().closed().check(id, None).is_some(),
            "halted at once"
        );
    }

    let promoted = deployment.replica.port();
    eventually(
        "the sentinels promote the replica",
        Duration::from_secs(20),
        async || deployment.master_port_reported() == Some(promoted),
    )
    .await;
    // New closures reach the new master (no outbox needed for the write itself).
    let after = sid("after-failover");
    eventually(
        "the store writes to the new master",
        Duration::from_secs(10),
        async || {
            matches!(
                proxy.gate().close(&after, lost_access()).await,
                Ok(CloseDisposition::Stored(_))
            )
        },
    )
    .await;
    // The old master comes back as the new one's replica, so closures can be confirmed again.
    deployment.master.restart_as_replica_of(promoted);
    let outbox = proxy.gate().outbox().unwrap().clone();
    eventually("outbox drained", Duration::from_secs(20), async || {
        outbox.len().await.unwrap() == 0
    })
    .await;

    let promoted_store: Arc<dyn SessionStore> =
        open_store(&deployment.replica.url()).await.unwrap();
    let mut missing = Vec::new();
    for id in ids.iter().chain([&after]) {
        let closed = promoted_store
            .get(id)
            .await
            .unwrap()
            .is_some_and(|r| r.is_closed());
        if !closed {
            missing.push(id.as_str().to_owned());
        }
    }
    assert!(
        missing.is_empty(),
        "{} acknowledged closures lost: {missing:?}",
        missing.len()
    );
    // Pub/sub follows the new master too: a closure made directly there reaches this
    // instance's closed set through the feed.
    let elsewhere = sid("closed-elsewhere");
    promoted_store
        .close(&elsewhere, lost_access())
        .await
        .unwrap();
    eventually(
        "the feed follows the new master",
        Duration::from_secs(10),
        async || proxy.gate().closed().check(&elsewhere, None).is_some(),
    )
    .await;
    proxy.stop().await;
}

fn post_message(
    proxy: &TestProxy,
    session: &str,
    mode: &str,
    token: &str,
) -> Request<body::ProxyBody> {
    Request::post(format!(
        "http://{}/slack/api/chat.postMessage?mode={mode}",
        proxy.agent_addr()
    ))
    .header("content-type", "application/json; charset=utf-8")
    .header("authorization", format!("Bearer {token}"))
    .header("x-haltgate-session", session)
    .body(body::full(
        json!({"channel": CHANNEL, "text": "hello"}).to_string(),
    ))
    .unwrap()
}

/// A block and a reopen the replica does not confirm: the block stays in the outbox (and the
/// reopen is answered 503) until the replica is back; repeating the reopen reopens once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_and_reopens_count_only_once_a_replica_confirms_them() {
    let data_args = ["--repl-diskless-sync-delay", "0"];
    let master = RedisServer::start_with(&data_args);
    let master_port = master.port().to_string();
    let replica = RedisServer::start_with(&[
        "--repl-diskless-sync-delay",
        "0",
        "--replicaof",
        "127.0.0.1",
        &master_port,
    ]);
    eventually_sync("replica in sync", Duration::from_secs(10), || {
        master
            .cli(&["info", "replication"])
            .contains("state=online")
    });
    let upstream = start_upstream(slack_upstream()).await;
    let mut flags = proxy_flags(&[("slack", upstream.http_url())]);
    flags.store = Some(format!(
        "{}?replicas_to_ack=1&replica_ack_timeout_ms=200&timeout_ms=1000",
        master.url()
    ));
    let proxy = start_proxy(flags).await;
    wait_ready(&proxy).await;
    let outbox = proxy.gate().outbox().unwrap().clone();
    let (status, _) = control(
        &proxy,
        "POST",
        "/v1/sessions/reopened/close",
        Some(json!({"reason": "test"})),
    )
    .await;
    assert_eq!(status, 200);

    // A replica that answers nothing: writes reach the master, `WAIT` never confirms them.
    replica.pause();
    let (status, _, _) = send(post_message(
        &proxy,
        "blocked-by",
        "invalid_auth",
        "xoxb-REVOKED",
    ))
    .await;
    assert_eq!(status, SLACK_HALT);
    eventually(
        "the unconfirmed block is queued",
        Duration::from_secs(5),
        async || outbox.pending_blocks().await.unwrap().len() == 1,
    )
    .await;
    let (_, listed) = control(&proxy, "GET", "/v1/credentials", None).await;
    let fingerprint = listed["credentials"][0]["fingerprint"]
        .as_str()
        .expect("the master has the block")
        .to_owned();
    // Replays are not confirmed either: the block stays.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let pending = outbox.pending_blocks().await.unwrap();
    assert_eq!(pending.len(), 1, "stays until a replica confirms it");
    assert_eq!(pending[0].block.fingerprint.as_str(), fingerprint);

    for _ in 0..2 {
        let (status, body) = control(&proxy, "PUT", "/v1/sessions/reopened", None).await;
        assert_eq!(status, 503, "{body}");
        let reason = body["error"].as_str().unwrap();
        assert!(reason.contains("replicas have not confirmed"), "{reason}");
    }

    replica.resume();
    eventually(
        "the block is confirmed and leaves the outbox",
        Duration::from_secs(10),
        async || outbox.pending_blocks().await.unwrap().is_empty(),
    )
    .await;
    let replica_store: Arc<dyn SessionStore> = open_store(&replica.url()).await.unwrap();
    let on_replica = replica_store.blocked_credentials().await.unwrap();
    assert!(
        on_replica
            .iter()
            .any(|b| b.fingerprint.as_str() == fingerprint),
        "the replica has the block"
    );
    let (status, record) = control(&proxy, "PUT", "/v1/sessions/reopened", None).await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["epoch"], 1, "three calls reopened the session once");
    assert_eq!(record["status"], "open");
    proxy.stop().await;
}

fn eventually_sync(what: &str, limit: Duration, check: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
