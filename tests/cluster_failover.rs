//! Redis Cluster with replicas: a closure counts as stored only once a replica has it, so a
//! master that dies during closures loses none. A process of its own: a failover test wants a
//! cluster client that has seen no other cluster.

mod support;

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use haltgate::session::{open_store, Class, Closure, SessionId, SessionStore};
use support::redis_server::RedisCluster;
use support::*;

fn sid(s: &str) -> SessionId {
    SessionId::parse(s).unwrap()
}

fn lost_access() -> Closure {
    Closure::new(Class::LostAccess, "slack.not_in_channel", "bot removed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_closure_is_lost_when_a_master_dies() {
    let mut cluster = RedisCluster::start_with_replicas(3, 1, "1000");
    let _ = tracing_subscriber::fmt()
        .with_env_filter("haltgate=warn")
        .with_test_writer()
        .try_init();
    let dead = cluster.nodes[0].node_id();
    let url = format!(
        "{}?replica_ack_timeout_ms=300&timeout_ms=3000",
        cluster.store_url()
    );
    let upstream = start_upstream(slack_upstream()).await;
    let mut flags = proxy_flags(&[("slack", upstream.http_url())]);
    flags.store = Some(url);
    let proxy = start_proxy(flags).await;
    // What the replica acknowledgement costs, measured where nothing waits for it: the
    // closure's own round trip (with the `CLIENT INFO` that names its connection) and the
    // `WAIT` that confirms it afterwards on the master of its slot.
    let store = proxy.gate().store();
    let (mut close_times, mut wait_times) = (Vec::new(), Vec::new());
    for i in 0..50 {
        let started = Instant::now();
        let (_, receipt) = store
            .close_with_receipt(&sid(&format!("timing-{i}")), lost_access())
            .await
            .unwrap();
        close_times.push(started.elapsed());
        let started = Instant::now();
        store.replicated(&[receipt]).await.unwrap();
        wait_times.push(started.elapsed());
    }
    close_times.sort();
    wait_times.sort();
    eprintln!(
        "closure answered in {:?} (median), replica confirmation {:?} (median) after it",
        close_times[25], wait_times[25]
    );
    let ids: Vec<SessionId> = (0..300).map(|i| sid(&format!("failover-{i}"))).collect();
    let started = Instant::now();
    for (n, chunk) in ids.chunks(25).enumerate() {
        if n == 4 {
            // After the first 100 closures, a master dies like a crashed machine.
            cluster.nodes[0].kill();
        }
        let closes = chunk.iter().map(|id| proxy.gate().close(id, lost_access()));
        for result in join_all(closes).await {
            result.expect("every closure is stored or queued, never refused");
        }
    }
    eprintln!("300 closures answered in {:?}", started.elapsed());
    assert_eq!(proxy.gate().store().replicas_to_ack(), Some(1));
    for id in &ids {
        assert!(
            proxy.gate().closed().check(id, None).is_some(),
            "halted at once"
        );
    }

    // The dead master's replica takes over once the others mark it failed.
    eventually("failover", Duration::from_secs(30), async || {
        let healthy = cluster.healthy();
        healthy.len() == 5
            && healthy.iter().all(|n| {
                n.cli(&["cluster", "nodes"])
                    .lines()
                    .any(|l| l.starts_with(&dead) && l.contains("fail"))
            })
    })
    .await;
    // The old master comes back as a replica, so closures can reach one again.
    cluster.nodes[0].restart();
    let outbox = proxy.gate().outbox().unwrap().clone();
    eventually("outbox drained", Duration::from_secs(90), async || {
        outbox.len().await.unwrap() == 0
    })
    .await;

    let store: std::sync::Arc<dyn SessionStore> = open_store(&cluster.store_url()).await.unwrap();
    let mut missing = Vec::new();
    for id in &ids {
        let closed = store.get(id).await.unwrap().is_some_and(|r| r.is_closed());
        if !closed {
            missing.push(id.as_str().to_owned());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of 300 acknowledged closures lost: {missing:?}",
        missing.len()
    );
    proxy.stop().await;
}
