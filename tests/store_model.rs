//! Random interleavings of open / close / add / claim over a few sessions, run against the
//! redb store and a standalone Redis, each checked step by step against a small model.
//!
//! The properties: no claim returns a wakeup of a closed session (or of another epoch); a
//! close leaves no pending wakeup; every store answer (fenced, already closed, closed with
//! N cancelled, refused add) is the one the model predicts.

#[path = "support/redis_server.rs"]
mod redis_server;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use haltgate::session::{
    AddWakeup, Class, CloseOutcome, Closure, OpenSpec, RedbOptions, RedbStore, RedisOptions,
    RedisStore, RedisTarget, SessionId, SessionStatus, SessionStore,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use redis_server::RedisServer;
use serde_json::json;

const SESSIONS: usize = 3;

#[derive(Debug, Clone)]
enum EpochChoice {
    Unspecified,
    Current,
    Older,
    Newer,
}

#[derive(Debug, Clone)]
enum Op {
    Open(usize),
    Close(usize, EpochChoice),
    Add(usize, u64),
    Claim { advance: u64, limit: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let session = 0..SESSIONS;
    let epoch = prop_oneof![
        Just(EpochChoice::Unspecified),
        Just(EpochChoice::Current),
        Just(EpochChoice::Older),
        Just(EpochChoice::Newer),
    ];
    prop_oneof![
        2 => session.clone().prop_map(Op::Open),
        2 => (session.clone(), epoch).prop_map(|(s, e)| Op::Close(s, e)),
        4 => (session, 0u64..50).prop_map(|(s, d)| Op::Add(s, d)),
        2 => (0u64..40, 1usize..4).prop_map(|(advance, limit)| Op::Claim { advance, limit }),
    ]
}

#[derive(Debug, Default, Clone)]
struct ModelSession {
    epoch: u64,
    closed: bool,
    /// wakeup id → due ms
    pending: BTreeMap<String, u64>,
}

async fn check_against_model(store: &dyn SessionStore, ops: &[Op]) -> Result<(), TestCaseError> {
    let ids: Vec<SessionId> = (0..SESSIONS)
        .map(|i| SessionId::parse(&format!("m{i}")).unwrap())
        .collect();
    let mut model = vec![ModelSession::default(); SESSIONS];
    let mut now = 1_000u64;
    for op in ops {
        match op {
            Op::Open(i) => {
                let m = &mut model[*i];
                if m.closed {
                    m.epoch += 1;
                    m.closed = false;
                }
                let record = store.open(&ids[*i], OpenSpec::new()).await.unwrap();
                prop_assert_eq!(
                    (record.epoch, record.status),
                    (m.epoch, SessionStatus::Open)
                );
            }
            Op::Close(i, choice) => {
                let m = &mut model[*i];
                let epoch = match choice {
                    EpochChoice::Unspecified => None,
                    EpochChoice::Current => Some(m.epoch),
                    EpochChoice::Older => Some(m.epoch.saturating_sub(1)),
                    EpochChoice::Newer => Some(m.epoch + 2),
                };
                let mut closure = Closure::new(Class::LostAccess, "model.rule", "model");
                closure.epoch = epoch;
                let outcome = store.close(&ids[*i], closure).await.unwrap();
                // Only a reopen starts a generation: a later epoch closes the current one.
                let target = epoch.unwrap_or(m.epoch).min(m.epoch);
                if target < m.epoch {
                    prop_assert_eq!(
                        outcome,
                        CloseOutcome::Fenced {
                            current_epoch: m.epoch
                        }
                    );
                } else if target == m.epoch && m.closed {
                    prop_assert!(
                        matches!(outcome, CloseOutcome::AlreadyClosed { .. }),
                        "{:?}",
                        outcome
                    );
                } else {
                    let CloseOutcome::Closed {
                        record,
                        cancelled_wakeups,
                    } = outcome
                    else {
                        return Err(TestCaseError::fail(format!(
                            "expected Closed, got {outcome:?}"
                        )));
                    };
                    prop_assert_eq!(record.epoch, target);
                    prop_assert_eq!(cancelled_wakeups, m.pending.len() as u64);
                    m.epoch = target;
                    m.closed = true;
                    m.pending.clear();
                }
                if m.closed {
                    prop_assert!(store.pending_wakeups(&ids[*i]).await.unwrap().is_empty());
                }
            }
            Op::Add(i, delay) => {
                let m = &mut model[*i];
                let due = now + delay;
                match store
                    .add_wakeup(&ids[*i], due, json!({"s": i}))
                    .await
                    .unwrap()
                {
                    AddWakeup::SessionClosed => {
                        prop_assert!(m.closed, "add refused for an open session")
                    }
                    AddWakeup::Added(w) => {
                        prop_assert!(!m.closed, "add accepted for a closed session");
                        prop_assert_eq!(w.epoch, m.epoch);
                        m.pending.insert(w.id, due);
                    }
                }
            }
            Op::Claim { advance, limit } => {
                now += advance;
                let due_in_model: usize = model
                    .iter()
                    .map(|m| m.pending.values().filter(|&&d| d <= now).count())
                    .sum();
                let claimed = store.claim_due(now, *limit).await.unwrap();
                prop_assert_eq!(claimed.len(), due_in_model.min(*limit));
                for c in claimed {
                    let i = ids.iter().position(|id| *id == c.wakeup.session).unwrap();
                    let m = &mut model[i];
                    prop_assert!(!m.closed, "claimed a wakeup of a closed session");
                    prop_assert_eq!(c.wakeup.epoch, m.epoch);
                    let due = m.pending.remove(&c.wakeup.id);
                    prop_assert_eq!(
                        due,
                        Some(c.wakeup.due_ms),
                        "claimed an unknown or already claimed wakeup"
                    );
                    prop_assert!(c.wakeup.due_ms <= now);
                }
            }
        }
    }
    for (i, m) in model.iter().enumerate() {
        let pending: BTreeMap<String, u64> = store
            .pending_wakeups(&ids[i])
            .await
            .unwrap()
            .into_iter()
            .map(|w| (w.id, w.due_ms))
            .collect();
        prop_assert_eq!(&pending, &m.pending);
    }
    Ok(())
}

fn run_model(cases: u32, make_store: impl Fn(usize) -> Arc<dyn SessionStore>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let counter = AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&prop::collection::vec(op(), 1..40), |ops| {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            let store = runtime.block_on(async { make_store(n) });
            runtime.block_on(check_against_model(store.as_ref(), &ops))
        })
        .unwrap();
}

#[test]
fn redb_store_matches_the_model() {
    let dir = tempfile::tempdir().unwrap();
    run_model(128, |n| {
        Arc::new(
            RedbStore::open(
                &dir.path().join(format!("{n}.redb")),
                RedbOptions::default(),
            )
            .unwrap(),
        )
    });
}

#[test]
fn redis_store_matches_the_model() {
    let server = RedisServer::start();
    run_model(128, |n| {
        let options = RedisOptions {
            prefix: format!("m{n}"),
            op_timeout: Duration::from_secs(3),
            ..RedisOptions::default()
        };
        Arc::new(
            RedisStore::connect(RedisTarget::Standalone { url: server.url() }, options).unwrap(),
        )
    });
}
