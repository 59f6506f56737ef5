//! Replicated Redis and Redis Cluster: the documented store URLs, closures that count as
//! stored only once a replica has them, a slot migrated while closures run, and an instance
//! whose pub/sub is cut converging through catch-up. Real redis-server processes.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use haltgate::session::{open_store, Class, Closure, SessionId};
use serde_json::json;
use support::redis_server::{RedisCluster, RedisServer};
use support::*;

/// Each test runs a cluster of its own; two at once would share two cores among a dozen
/// redis-server processes and time out for reasons that have nothing to do with haltgate.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn sid(s: &str) -> SessionId {
    SessionId::parse(s).unwrap()
}

fn lost_access() -> Closure {
    Closure::new(Class::LostAccess, "slack.not_in_channel", "bot removed")
}

async fn proxy_on(store: String) -> (Upstream, TestProxy) {
    let upstream = start_upstream(slack_upstream()).await;
    let mut flags = proxy_flags(&[("slack", upstream.http_url())]);
    flags.store = Some(store);
    let proxy = start_proxy(flags).await;
    (upstream, proxy)
}

/// The store's partition of an id: FNV-1a 64 modulo 16 (pinned in `redis_store/keys.rs`).
fn partition_of(id: &str) -> u64 {
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    hash % 16
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_cluster_urls_start_the_proxy() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = RedisCluster::start(3);
    for url in [
        cluster.store_url(),
        format!("{}?cluster=true", cluster.nodes[1].url()),
    ] {
        let (_upstream, proxy) = proxy_on(url.clone()).await;
        let (status, body) = control(
            &proxy,
            "POST",
            "/v1/sessions/url-check/close",
            Some(json!({"reason": "x"})),
        )
        .await;
        assert_eq!(status, 200, "{url}: {body}");
        let (status, record) = control(&proxy, "GET", "/v1/sessions/url-check", None).await;
        assert_eq!(record["status"], "closed", "{url}: {status}");
        let (_, reopened) = control(&proxy, "PUT", "/v1/sessions/url-check", None).await;
        assert_eq!(reopened["status"], "open");
        // No replicas: a closure counts as stored once the script ran, and readiness says so.
        eventually("replicas known", Duration::from_secs(5), async || {
            control(&proxy, "GET", "/readyz", None).await.1["store_replicas_to_ack"] == 0
        })
        .await;
        proxy.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closures_running_while_a_slot_migrates_are_all_stored() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = RedisCluster::start(3);
    let (_upstream, proxy) = proxy_on(cluster.store_url()).await;
    // The sessions below all live in partition 3 (hash tag {3}); that slot moves.
    let ids: Vec<SessionId> = (0..4000)
        .map(|i| format!("migrating-{i}"))
        .filter(|id| partition_of(id) == 3)
        .take(200)
        .map(|id| sid(&id))
        .collect();
    let slot: u16 = cluster.nodes[0]
        .cli(&["cluster", "keyslot", "{3}"])
        .trim()
        .parse()
        .unwrap();
    let owner = RedisCluster::owner_id(&cluster.nodes[0], slot);
    let from = cluster.nodes.iter().find(|n| n.node_id() == owner).unwrap();
    let to = cluster.nodes.iter().find(|n| n.node_id() != owner).unwrap();
    let (from_port, to_port, to_id) = (from.port(), to.port(), to.node_id());

    let gate = proxy.gate().clone();
    let closing = {
        let ids = ids.clone();
        tokio::spawn(async move {
            for id in &ids {
                gate.close(id, lost_access())
                    .await
                    .expect("stored or queued");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let cli = |port: u16, args: Vec<String>| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(&args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let migrated = tokio::task::spawn_blocking(move || {
        let slot = slot.to_string();
        let s = |v: &str| v.to_owned();
        cli(
            to_port,
            vec![
                s("cluster"),
                s("setslot"),
                slot.clone(),
                s("importing"),
                owner.clone(),
            ],
        );
        cli(
            from_port,
            vec![
                s("cluster"),
                s("setslot"),
                slot.clone(),
                s("migrating"),
                to_id.clone(),
            ],
        );
        let mut moved = 0;
        loop {
            let keys = cli(
                from_port,
                vec![s("cluster"), s("getkeysinslot"), slot.clone(), s("20")],
            );
            let keys: Vec<String> = keys
                .lines()
                .map(str::to_owned)
                .filter(|k| !k.is_empty())
                .collect();
            if keys.is_empty() {
                break;
            }
            moved += keys.len();
            let mut args = vec![
                s("migrate"),
                s("127.0.0.1"),
                to_port.to_string(),
                s(""),
                s("0"),
                s("5000"),
                s("keys"),
            ];
            args.extend(keys);
            cli(from_port, args);
            std::thread::sleep(Duration::from_millis(20));
        }
        for port in [from_port, to_port] {
            cli(
                port,
                vec![
                    s("cluster"),
                    s("setslot"),
                    slot.clone(),
                    s("node"),
                    to_id.clone(),
                ],
            );
        }
        moved
    })
    .await
    .unwrap();
    closing.await.unwrap();
    eprintln!("{migrated} keys migrated while closures ran");
    for node in &cluster.nodes {
        node.cli(&[
            "cluster",
            "setslot",
            &slot.to_string(),
            "node",
            &to.node_id(),
        ]);
    }

    let outbox = proxy.gate().outbox().unwrap().clone();
    eventually("outbox drained", Duration::from_secs(60), async || {
        outbox.len().await.unwrap() == 0
    })
    .await;
    let store = open_store(&cluster.store_url()).await.unwrap();
    for id in &ids {
        let record = store.get(id).await.unwrap();
        assert!(
            record.is_some_and(|r| r.is_closed()),
            "{id} lost in the migration"
        );
    }
    assert_eq!(
        RedisCluster::owner_id(&cluster.nodes[0], slot),
        to.node_id(),
        "the slot did move"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_pub_sub_is_cut_converges_through_catch_up() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = RedisCluster::start(3);
    let (_a_upstream, a) = proxy_on(cluster.store_url()).await;
    let (_b_upstream, b) = proxy_on(cluster.store_url()).await;
    // Pub/sub stays cut for the whole test: every subscriber connection is killed as soon as
    // it comes back, so only the catch-up reads of the log can tell B.
    let cutting = Arc::new(AtomicBool::new(true));
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port()).collect();
    let cutter = {
        let cutting = cutting.clone();
        std::thread::spawn(move || {
            while cutting.load(Ordering::Relaxed) {
                for port in &ports {
                    let _ = std::process::Command::new("redis-cli")
                        .args(["-p", &port.to_string(), "client", "kill", "type", "pubsub"])
                        .output();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ids: Vec<SessionId> = (0..20).map(|i| sid(&format!("cut-{i}"))).collect();
    for id in &ids {
        a.gate().close(id, lost_access()).await.unwrap();
    }
    let started = Instant::now();
    eventually("B converges", Duration::from_secs(15), async || {
        ids.iter()
            .all(|id| b.gate().closed().check(id, None).is_some())
    })
    .await;
    cutting.store(false, Ordering::Relaxed);
    cutter.join().unwrap();
    eprintln!("converged {:?} after the pub/sub cut", started.elapsed());
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closure_the_replica_has_not_confirmed_waits_in_the_outbox() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let master = RedisServer::start_with(&["--repl-diskless-sync-delay", "0"]);
    let replica =
        RedisServer::start_with(&["--replicaof", "127.0.0.1", &master.port().to_string()]);
    eventually("replica in sync", Duration::from_secs(15), async || {
        master
            .cli(&["info", "replication"])
            .contains("state=online")
    })
    .await;
    let (_upstream, proxy) = proxy_on(format!("{}?replica_ack_timeout_ms=200", master.url())).await;
    eventually("replicas known", Duration::from_secs(5), async || {
        proxy.gate().store().replicas_to_ack() == Some(1)
    })
    .await;
    let outbox = proxy.gate().outbox().unwrap().clone();

    // The replica hangs: the close script runs, but no replica confirms it.
    replica.pause();
    proxy
        .gate()
        .close(&sid("unconfirmed"), lost_access())
        .await
        .unwrap();
    assert!(proxy
        .gate()
        .closed()
        .check(&sid("unconfirmed"), None)
        .is_some());
    eventually(
        "queued for want of a replica",
        Duration::from_secs(10),
        async || outbox.len().await.unwrap() == 1,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        outbox.len().await.unwrap(),
        1,
        "it stays while the replica is silent"
    );

    replica.resume();
    eventually(
        "confirmed and removed",
        Duration::from_secs(30),
        async || outbox.len().await.unwrap() == 0,
    )
    .await;
    let record = open_store(&master.url())
        .await
        .unwrap()
        .get(&sid("unconfirmed"))
        .await
        .unwrap()
        .unwrap();
    assert!(record.is_closed());
    proxy.stop().await;
}
