//! One conformance suite for every session store backend: redb in a temp dir, a standalone
//! redis-server and a 3-master Redis Cluster, each started by the test.
//!
//! Each backend runs all cases in sequence (one server or cluster per backend keeps the run
//! short); every case works on its own key prefix or file, so cases do not see each other.

#[path = "support/redis_server.rs"]
mod redis_server;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use haltgate::session::{
    AddWakeup, Class, CloseOutcome, Closure, CredentialBlock, CredentialKey, EventKind, Notice,
    OpenSpec, RedbOptions, RedbStore, RedisOptions, RedisStore, RedisTarget, SessionId,
    SessionStatus, SessionStore, StateEvent, StoreError, StoreLocator, MAX_EXACT_INTEGER,
    MAX_PAYLOAD_BYTES,
};
use redis_server::{RedisCluster, RedisServer};
use serde_json::json;

trait Backend {
    fn name(&self) -> &'static str;
    /// The store for a case. Calling it twice with the same case gives a second handle on
    /// the same data (for Redis: separate connections).
    async fn store_with(&self, case: &str, retention: Option<u64>) -> Arc<dyn SessionStore>;
    async fn store(&self, case: &str) -> Arc<dyn SessionStore> {
        self.store_with(case, None).await
    }
}

struct RedbBackend {
    dir: tempfile::TempDir,
    open: Mutex<HashMap<String, Arc<RedbStore>>>,
}

impl RedbBackend {
    fn new() -> Self {
        RedbBackend {
            dir: tempfile::tempdir().unwrap(),
            open: Mutex::new(HashMap::new()),
        }
    }
}

impl Backend for RedbBackend {
    fn name(&self) -> &'static str {
        "redb"
    }

    async fn store_with(&self, case: &str, retention: Option<u64>) -> Arc<dyn SessionStore> {
        let mut open = self.open.lock().unwrap();
        let store = open.entry(case.to_owned()).or_insert_with(|| {
            let mut options = RedbOptions::default();
            if let Some(retention) = retention {
                options.event_retention = retention;
            }
            Arc::new(
                RedbStore::open(&self.dir.path().join(format!("{case}.redb")), options).unwrap(),
            )
        });
        store.clone()
    }
}

struct RedisBackend {
    name: &'static str,
    target: RedisTarget,
    _standalone: Option<RedisServer>,
    _cluster: Option<RedisCluster>,
}

impl RedisBackend {
    fn standalone() -> Self {
        let server = RedisServer::start_with(&["--stream-node-max-entries", "4"]);
        RedisBackend {
            name: "redis",
            target: RedisTarget::Standalone { url: server.url() },
            _standalone: Some(server),
            _cluster: None,
        }
    }

    fn cluster() -> Self {
        let cluster = RedisCluster::start(3);
        let StoreLocator::Redis { target, .. } = StoreLocator::parse(&cluster.store_url()).unwrap()
        else {
            panic!("cluster url parsed as another backend");
        };
        RedisBackend {
            name: "redis-cluster",
            target,
            _standalone: None,
            _cluster: Some(cluster),
        }
    }
}

impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn store_with(&self, case: &str, retention: Option<u64>) -> Arc<dyn SessionStore> {
        let mut options = RedisOptions {
            prefix: case.to_owned(),
            op_timeout: Duration::from_secs(3),
            ..RedisOptions::default()
        };
        if let Some(retention) = retention {
            options.event_retention = retention;
        }
        Arc::new(RedisStore::connect(self.target.clone(), options).unwrap())
    }
}

// === helpers ===

fn sid(s: &str) -> SessionId {
    SessionId::parse(s).unwrap()
}

fn lost_access(rule: &str) -> Closure {
    Closure::new(Class::LostAccess, rule, "bot removed from the channel")
        .with_detail(r#"{"ok":false,"error":"not_in_channel"}"#)
        .with_upstream_status(200)
}

async fn all_events(store: &dyn SessionStore) -> Vec<StateEvent> {
    let mut events = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.events_after(cursor.as_ref(), 100).await.unwrap();
        let n = page.events.len();
        events.extend(page.events);
        cursor = Some(page.cursor);
        if n < 100 {
            return events;
        }
    }
}

async fn events_of(store: &dyn SessionStore, id: &SessionId) -> Vec<StateEvent> {
    all_events(store)
        .await
        .into_iter()
        .filter(|e| e.session.as_ref() == Some(id))
        .collect()
}

fn kinds_and_epochs(events: &[StateEvent]) -> Vec<(EventKind, u64)> {
    events.iter().map(|e| (e.kind, e.epoch)).collect()
}

async fn next_event(
    rx: &mut tokio::sync::mpsc::Receiver<Notice>,
    wanted: impl Fn(&StateEvent) -> bool,
) -> StateEvent {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(Notice::Event(event))) if wanted(&event) => return event,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("watch ended"),
            Err(_) => panic!("no matching event within 5 s"),
        }
    }
}

// === cases ===

async fn unknown_session_is_open_at_epoch_zero(b: &impl Backend, case: &str) {
    let store = b.store(case).await;
    let s = sid("never-registered");
    assert_eq!(store.get(&s).await.unwrap(), None);
    assert!(store.pending_wakeups(&s).await.unwrap().is_empty());
    let AddWakeup::Added(wakeup) = store.add_wakeup(&s, 1_000, json!({"n": 1})).await.unwrap()
    else {
        panic!("an unknown session is open and takes wakeups");
    };
    assert_eq!((wakeup.epoch, wakeup.session.clone()), (0, s.clone()));
    let closure = lost_access("slack.not_in_channel");
    let CloseOutcome::Closed {
        record,
        cancelled_wakeups,
    } = store.close(&s, closure.clone()).await.unwrap()
    else {
        panic!("close of an unknown session closes epoch 0");
    };
    assert_eq!(
        (record.epoch, record.status, cancelled_wakeups),
        (0, SessionStatus::Closed, 1)
    );
    let stored = store.get(&s).await.unwrap().unwrap();
    assert_eq!(stored, record);
    let info = stored.closure.unwrap();
    assert_eq!(info.class, Class::LostAccess);
    assert_eq!(info.rule, "slack.not_in_channel");
    assert_eq!(info.reason, closure.reason);
    assert_eq!(info.detail, closure.detail);
    assert_eq!(info.upstream_status, Some(200));
    assert_eq!(info.closed_at_ms, closure.at_ms);
    assert_eq!(stored.opened_at_ms, None);
}

async fn open_registers_at_epoch_zero_and_reopen_bumps_the_epoch(b: &impl Backend, case: &str) {
    let store = b.store(case).await;
    let s = sid("slack:T1/C1");
    let opened = store
        .open(
            &s,
            OpenSpec::new()
                .with_scope(json!({"slack_channel": "C1"}))
                .with_resume("conv-1"),
        )
        .await
        .unwrap();
    assert_eq!((opened.epoch, opened.status), (0, SessionStatus::Open));
    assert_eq!(opened.scope, Some(json!({"slack_channel": "C1"})));
    assert_eq!(opened.resume.as_deref(), Some("conv-1"));
    assert!(opened.opened_at_ms.is_some());

    let updated = store
        .open(
            &s,
            OpenSpec::new().with_scope(json!({"slack_channel": "C2"})),
        )
        .await
        .unwrap();
    assert_eq!(updated.epoch, 0);
    assert_eq!(updated.scope, Some(json!({"slack_channel": "C2"})));
    assert_eq!(
        updated.resume.as_deref(),
        Some("conv-1"),
        "resume kept when not given"
    );
    assert_eq!(
        updated.opened_at_ms, opened.opened_at_ms,
        "an update is not a new generation"
    );

    let outcome = store
        .close(&s, lost_access("slack.not_in_channel").at_epoch(0))
        .await
        .unwrap();
    assert!(matches!(outcome, CloseOutcome::Closed { ref record, .. } if record.epoch == 0));
    let reopened = store.open(&s, OpenSpec::new()).await.unwrap();
    assert_eq!(
        (reopened.epoch, reopened.status, reopened.closure.clone()),
        (1, SessionStatus::Open, None)
    );
    assert_eq!(reopened.resume.as_deref(), Some("conv-1"));
    assert_eq!(reopened.scope, Some(json!({"slack_channel": "C2"})));

    store
        .close(&s, lost_access("slack.not_in_channel"))
        .await
        .unwrap();
    let cleared = store
        .open(
            &s,
            OpenSpec::new()
                .with_scope(serde_json::Value::Null)
                .with_resume(""),
        )
        .await
        .unwrap();
    assert_eq!(
        (cleared.epoch, cleared.scope, cleared.resume),
        (2, None, None)
    );

    let events = events_of(store.as_ref(), &s).await;
    assert_eq!(
        kinds_and_epochs(&events),
        vec![
            (EventKind::Opened, 0),
            (EventKind::Opened, 0),
            (EventKind::Closed, 0),
            (EventKind::Reopened, 1),
            (EventKind::Closed, 1),
            (EventKind::Reopened, 2),
        ]
    );
}

async fn close_cancels_every_pending_wakeup(b: &impl Backend, case: &str) {
    let store = b.store(case).await;
    let (s, other) = (sid("s"), sid("other"));
    store.open(&s, OpenSpec::new()).await.unwrap();
    for due in [300, 100, 1_000_000_000_000] {
        store
            .add_wakeup(&s, due, json!({"due": due}))
            .await
            .unwrap();
    }
    store.add_wakeup(&other, 150, json!("other")).await.unwrap();
    let pending = store.pending_wakeups(&s).await.unwrap();
    assert_eq!(
        pending.iter().map(|w| w.due_ms).collect::<Vec<_>>(),
        vec![100, 300, 1_000_000_000_000]
    );
    assert_eq!(pending[0].payload, json!({"due": 100}));

    let CloseOutcome::Closed {
        cancelled_wakeups, ..
    } = store.close(&s, lost_access("r")).await.unwrap()
    else {
        panic!("expected Closed");
    };
    assert_eq!(cancelled_wakeups, 3);
    assert!(store.pending_wakeups(&s).await.unwrap().is_empty());
    assert_eq!(store.pending_wakeups(&other).await.unwrap().len(), 1);
    let claimed = store.claim_due(2_000_000_000_000, 100).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].wakeup.session, other);
    let closed = events_of(store.as_ref(), &s)
        .await
        .into_iter()
        .find(|e| e.kind == EventKind::Closed)
        .unwrap();
    assert_eq!(closed.cancelled, Some(3));
}

async fn repeated_close_is_already_closed_without_a_second_event(b: &impl Backend, case: &str) {
    let store = b.store(case).await;
    let s = sid("s");
    store.open(&s, OpenSpec::new()).await.unwrap();
    let first = lost_access("linear.issue_archived");
    assert!(matches!(
        store.close(&s, first.clone()).await.unwrap(),
        CloseOutcome::Closed { .. }
    ));
    for again in [
        lost_access("other.rule"),
        lost_access("other.rule").at_epoch(0),
    ] {
        let CloseOutcome::AlreadyClosed { record } = store.close(&s, again).await.unwrap() else {
            panic!("expected AlreadyClosed");
        };
        assert_eq!(
            record.closure.unwrap().rule,
            "linear.issue_archived",
            "the first closure stays"
        );
    }
    let closes = events_of(store.as_ref(), &s)
        .await
        .into_iter()
        .filter(|e| e.kind == EventKind::Closed)
        .count();
    assert_eq!(closes, 1);
}

async fn close_with_an_older_epoch_is_fenced_and_changes_nothing(b: &impl Backend, case: &str) {
    let store = b.store(case).await;
    let s = sid("s");
    store.open(&s, OpenSpec::new()).await.unwrap();
    store.close(&s, lost_access("r").at_epoch(0)).await.unwrap();
    store.open(&s, OpenSpec::new()).await.unwrap();
    let AddWakeup::Added(wakeup) = store.add_wakeup(&s, 50, json!(null)).await.unwrap() else {
        panic!("reopened session takes wakeups");
    };
    assert_eq!(wakeup.epoch, 1);
    let before = store.get(&s).await.unwrap();
    let events_before = all_events(store.as_ref()).await.len();

    let outcome = store
        .close(&s, lost_access("late.from_epoch_0").at_epoch(0))
        .await
        .unwrap();
    assert_eq!(outcome, CloseOutcome::Fenced { current_epoch: 1 });
    assert_eq!(store.get(&s).await.unwrap(), before);
    assert_eq!(store.pending_wakeups(&s).await.unwrap(), vec![wakeup]);
    assert_eq!(all_events(store.as_ref()).await.len(), events_before);
}

async fn close_with_a_later_epoch_closes_the_current_generation(b: &impl Backend, case: &str) {
    let store = b.store(case).await;
    let s = sid("s");
    store.open(&s, OpenSpec::new()).await.unwrap();
    store.add_wakeup(&s, 10, json!(1)).await.unwrap();
    let CloseOutcome::Closed {
        record,
        cancelled_wakeups,
    } = store.close(&s, lost_access("r").at_epoch(5)).await.unwrap()
    else {
        panic!("expected Closed");
    };
    assert_eq!((record.epoch, cancelled_wakeups), (0, 1));
    assert!(
        matches!(
            store
                .close(&s, lost_access("r").at_epoch(MAX_EXACT_INTEGER))
                .await
                .unwrap(),
            CloseOutcome::AlreadyClosed { .. }
        ),
        "a later epoch names the closed current generation"
    );
    assert_eq!(
        store.open(&s, OpenSpec::new()).await.unwrap().epoch,
        1,
        "a reopen always has room"
    );
    assert_eq!(
        store.close(&s, lost_access("r").at_epoch(0)).await.unwrap(),
        CloseOutcome::Fenced { current_epoch: 1 }
    );
}

async fn close_without_epoch_observed_before_a_reopen_is_fenced(b: &impl Backend, case: &str) {
    let store = b.store(case).await;
    let s = sid("s");
    let t0 = 1_700_000_000_000;
    store
        .open(&s, OpenSpec::new().observed_at(t0))
        .await
        .unwrap();
    let first = store
        .close(&s, lost_access("r").observed_at(t0 + 10))
        .await
        .unwrap();
    assert!(matches!(first, CloseOutcome::Closed { ref record, .. } if record.epoch == 0));
    store
        .open(&s, OpenSpec::new().observed_at(t0 + 100))
        .await
        .unwrap();
    // Observed on generation 0, delivered after generation 1 began: must not close generation 1.
    let late = store
        .close(&s, lost_access("r").observed_at(t0 + 50))
        .await
        .unwrap();
    assert_eq!(late, CloseOutcome::Fenced { current_epoch: 1 });
    let fresh = store
        .close(&s, lost_access("r").observed_at(t0 + 200))
        .await
        .unwrap();
    assert!(matches!(fresh, CloseOutcome::Closed { ref record, .. } if record.epoch == 1));
}

async fn add_wakeup_to_a_closed_session_is_refused(b: &impl Backend, case: &str) {
    let store = b.store(case).await;
    let s = sid("s");
    store.close(&s, lost_access("r")).await.unwrap();
    assert_eq!(
        store.add_wakeup(&s, 10, json!(1)).await.unwrap(),
        AddWakeup::SessionClosed
    );
    assert!(store.pending_wakeups(&s).await.unwrap().is_empty());
    store.open(&s, OpenSpec::new()).await.unwrap();
    assert!(
        matches!(store.add_wakeup(&s, 10, json!(1)).await.unwrap(), AddWakeup::Added(w) if w.epoch == 1)
    );
}

async fn claim_hands_out_each_due_wakeup_once_and_none_of_closed_sessions(
    b: &impl Backend,
    case: &str,
) {
    let store = b.store(case).await;
    let (a, closed, c) = (sid("a"), sid("closed"), sid("c"));
    let mut ids = HashMap::new();
    for (s, due) in [(&a, 100), (&a, 200), (&a, 5_000), (&closed, 150), (&c, 300)] {
        let AddWakeup::Added(w) = store
            .add_wakeup(s, due, json!({"s": s.as_str(), "due": due}))
            .await
            .unwrap()
        else {
            panic!("open session takes wakeups");
        };
        ids.insert(w.id.clone(), (s.clone(), due));
    }
    store.close(&closed, lost_access("r")).await.unwrap();

    let first = store.claim_due(1_000, 10).await.unwrap();
    let got: BTreeSet<(String, u64)> = first
        .iter()
        .map(|c| (c.wakeup.session.to_string(), c.wakeup.due_ms))
        .collect();
    let want: BTreeSet<(String, u64)> = [("a", 100), ("a", 200), ("c", 300)]
        .iter()
        .map(|(s, d)| (s.to_string(), *d))
        .collect();
    assert_eq!(got, want);
    for claimed in &first {
        let (session, due) = &ids[&claimed.wakeup.id];
        assert_eq!(
            (&claimed.wakeup.session, claimed.wakeup.due_ms),
            (session, *due)
        );
        assert_eq!(
            claimed.wakeup.payload,
            json!({"s": session.as_str(), "due": due})
        );
        assert_eq!((claimed.wakeup.epoch, claimed.claimed_at_ms), (0, 1_000));
    }
    assert!(
        store.claim_due(1_000, 10).await.unwrap().is_empty(),
        "each wakeup is handed out once"
    );
    assert_eq!(
        store
            .pending_wakeups(&a)
            .await
            .unwrap()
            .iter()
            .map(|w| w.due_ms)
            .collect::<Vec<_>>(),
        vec![5_000]
    );
    let later = store.claim_due(6_000, 10).await.unwrap();
    assert_eq!(
        later.iter().map(|c| c.wakeup.due_ms).collect::<Vec<_>>(),
        vec![5_000]
    );

    // The limit holds, earliest first, and nothing is handed out twice across calls.
    let d = sid("d");
    for due in [14, 10, 12, 11, 13] {
        store.add_wakeup(&d, due, json!(due)).await.unwrap();
    }
    let mut seen = Vec::new();
    for expected in [2, 2, 1, 0] {
        let batch = store.claim_due(100, 2).await.unwrap();
        assert_eq!(batch.len(), expected);
        seen.extend(batch.into_iter().map(|c| c.wakeup.due_ms));
    }
    assert_eq!(seen, vec![10, 11, 12, 13, 14]);
    assert!(store.claim_due(100, 0).await.unwrap().is_empty());
}

async fn reset_resume_clears_only_at_the_right_epoch(b: &impl Backend, case: &str) {
    let store = b.store(case).await;
    let s = sid("s");
    store
        .open(&s, OpenSpec::new().with_resume("conv-1"))
        .await
        .unwrap();
    assert!(!store
        .reset_resume(&s, Some(3), "anthropic.stale_session")
        .await
        .unwrap());
    assert_eq!(
        store.get(&s).await.unwrap().unwrap().resume.as_deref(),
        Some("conv-1")
    );
    assert!(store
        .reset_resume(&s, Some(0), "anthropic.stale_session")
        .await
        .unwrap());
    assert_eq!(store.get(&s).await.unwrap().unwrap().resume, None);
    assert!(
        !store
            .reset_resume(&s, None, "anthropic.stale_session")
            .await
            .unwrap(),
        "nothing left to clear"
    );
    assert!(!store
        .reset_resume(&sid("unknown"), None, "anthropic.stale_session")
        .await
        .unwrap());
    let resets: Vec<StateEvent> = events_of(store.as_ref(), &s)
        .await
        .into_iter()
        .filter(|e| e.kind == EventKind::ResumeReset)
        .collect();
    assert_eq!(resets.len(), 1);
    assert_eq!(
        (resets[0].epoch, resets[0].rule.as_deref()),
        (0, Some("anthropic.stale_session"))
    );
    let status = store.get(&s).await.unwrap().unwrap().status;
    assert_eq!(status, SessionStatus::Open, "a resume reset does not close");
}

async fn credentials_block_unblock_and_list(b: &impl Backend, case: &str) {
    let store = b.store(case).await;
    let key = CredentialKey::new(&store.deployment_secret().await.unwrap()).unwrap();
    let slack = key.fingerprint(b"Bearer xoxb-REDACTED");
    let github = key.fingerprint(b"Bearer ghp_REDACTED");
    let block = |fp| {
        CredentialBlock::new(
            fp,
            Class::CredentialInvalid,
            "cron.invalid_token",
            "login lapsed",
        )
    };
    assert!(store.block_credential(block(slack.clone())).await.unwrap());
    assert!(!store.block_credential(block(slack.clone())).await.unwrap());
    assert!(store.block_credential(block(github.clone())).await.unwrap());
    let listed: BTreeSet<_> = store
        .blocked_credentials()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.fingerprint)
        .collect();
    assert_eq!(listed, BTreeSet::from([slack.clone(), github.clone()]));
    let one = store
        .blocked_credentials()
        .await
        .unwrap()
        .into_iter()
        .find(|b| b.fingerprint == slack)
        .unwrap();
    assert_eq!(
        (one.rule.as_str(), one.reason.as_str()),
        ("cron.invalid_token", "login lapsed")
    );

    assert!(store.unblock_credential(&slack).await.unwrap());
    assert!(!store.unblock_credential(&slack).await.unwrap());
    let listed: Vec<_> = store
        .blocked_credentials()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.fingerprint)
        .collect();
    assert_eq!(listed, vec![github.clone()]);

    let events = all_events(store.as_ref()).await;
    let of_slack: Vec<(EventKind, u64)> = events
        .iter()
        .filter(|e| e.fingerprint.as_ref() == Some(&slack))
        .map(|e| (e.kind, e.epoch))
        .collect();
    assert_eq!(
        of_slack,
        vec![
            (EventKind::CredentialBlocked, 1),
            (EventKind::CredentialUnblocked, 2)
        ]
    );
    let text = serde_json::to_string(&events).unwrap();
    assert!(
        !text.contains("xoxb") && !text.contains("ghp_"),
        "raw tokens never reach the log"
    );
}

async fn events_after_pages_in_order_without_gaps_or_duplicates(b: &impl Backend, case: &str) {
    let store = b.store(case).await;
    let sessions: Vec<SessionId> = (0..6).map(|i| sid(&format!("session-{i}"))).collect();
    for s in &sessions {
        store.open(s, OpenSpec::new()).await.unwrap();
        store.close(s, lost_access("r")).await.unwrap();
    }
    for s in &sessions {
        store.open(s, OpenSpec::new()).await.unwrap();
        store.close(s, lost_access("r")).await.unwrap();
    }
    let mut events = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = store.events_after(cursor.as_ref(), 5).await.unwrap();
        assert!(!page.gap);
        assert!(page.events.len() <= 5);
        pages += 1;
        let n = page.events.len();
        events.extend(page.events);
        cursor = Some(page.cursor);
        if n < 5 {
            break;
        }
    }
    assert_eq!(pages, 5, "24 events in pages of 5");
    assert_eq!(events.len(), 24);
    let ids: BTreeSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), 24, "no duplicates");
    for s in &sessions {
        let own: Vec<StateEvent> = events
            .iter()
            .filter(|e| e.session.as_ref() == Some(s))
            .cloned()
            .collect();
        assert_eq!(
            kinds_and_epochs(&own),
            vec![
                (EventKind::Opened, 0),
                (EventKind::Closed, 0),
                (EventKind::Reopened, 1),
                (EventKind::Closed, 1)
            ],
            "per-session order of {s}"
        );
    }
    let at = events.iter().map(|e| e.at_ms).collect::<Vec<_>>();
    assert!(
        at.windows(2).all(|w| w[0] <= w[1] + 1_000),
        "roughly time ordered: {at:?}"
    );

    let end = cursor.unwrap();
    assert!(store
        .events_after(Some(&end), 5)
        .await
        .unwrap()
        .events
        .is_empty());
    store.open(&sessions[0], OpenSpec::new()).await.unwrap();
    let next = store.events_after(Some(&end), 5).await.unwrap();
    assert_eq!(
        kinds_and_epochs(&next.events),
        vec![(EventKind::Reopened, 2)]
    );

    let bad = haltgate::session::EventCursor::from_token("elsewhere:1");
    assert!(matches!(
        store.events_after(Some(&bad), 5).await,
        Err(StoreError::InvalidCursor { .. })
    ));
}

async fn trimmed_log_reports_a_gap_and_the_snapshot_has_the_state(b: &impl Backend, case: &str) {
    let store = b.store_with(case, Some(4)).await;
    let s = sid("churn");
    store.open(&s, OpenSpec::new()).await.unwrap();
    for _ in 0..10 {
        store.close(&s, lost_access("r")).await.unwrap();
        store.open(&s, OpenSpec::new()).await.unwrap();
    }
    let from_start = store.events_after(None, 100).await.unwrap();
    assert!(
        from_start.gap,
        "21 events with retention 4 must have lost some"
    );
    assert!(from_start.events.len() < 21);
    let tail = store
        .events_after(Some(&from_start.cursor), 100)
        .await
        .unwrap();
    assert!(!tail.gap && tail.events.is_empty());

    let snapshot = store.snapshot().await.unwrap();
    let mark = snapshot.sessions.iter().find(|m| m.session == s).unwrap();
    assert_eq!((mark.epoch, mark.status), (10, SessionStatus::Open));
    assert_eq!(mark.last_closure.as_ref().unwrap().epoch, 9);
    let after = store
        .events_after(Some(&snapshot.cursor), 100)
        .await
        .unwrap();
    assert!(!after.gap && after.events.is_empty());
}

async fn snapshot_lists_closure_history_and_credentials(b: &impl Backend, case: &str) {
    let store = b.store(case).await;
    let (closed, reopened, untouched) = (sid("closed"), sid("reopened"), sid("untouched"));
    store
        .close(&closed, lost_access("slack.channel_not_found"))
        .await
        .unwrap();
    store.close(&reopened, lost_access("r")).await.unwrap();
    store.open(&reopened, OpenSpec::new()).await.unwrap();
    store.open(&untouched, OpenSpec::new()).await.unwrap();
    let key = CredentialKey::new(&[7u8; 32]).unwrap();
    let (blocked, released) = (
        key.fingerprint(b"sk-ant-REDACTED"),
        key.fingerprint(b"lin_api_REDACTED"),
    );
    for fp in [&blocked, &released] {
        store
            .block_credential(CredentialBlock::new(
                fp.clone(),
                Class::CredentialInvalid,
                "r",
                "x",
            ))
            .await
            .unwrap();
    }
    store.unblock_credential(&released).await.unwrap();

    let snapshot = store.snapshot().await.unwrap();
    let marks: HashMap<&str, _> = snapshot
        .sessions
        .iter()
        .map(|m| (m.session.as_str(), m))
        .collect();
    assert_eq!(
        marks.len(),
        2,
        "only sessions with closure history: {marks:?}"
    );
    let c = marks["closed"];
    assert_eq!((c.epoch, c.status), (0, SessionStatus::Closed));
    assert_eq!(
        c.last_closure.as_ref().unwrap().rule,
        "slack.channel_not_found"
    );
    let r = marks["reopened"];
    assert_eq!(
        (r.epoch, r.status, r.last_closure.as_ref().unwrap().epoch),
        (1, SessionStatus::Open, 0)
    );
    let creds: HashMap<_, _> = snapshot
        .credentials
        .iter()
        .map(|c| (c.fingerprint.clone(), c))
        .collect();
    assert_eq!(
        (creds[&blocked].generation, creds[&blocked].block.is_some()),
        (1, true)
    );
    assert_eq!(
        (
            creds[&released].generation,
            creds[&released].block.is_some()
        ),
        (2, false)
    );
    let after = store
        .events_after(Some(&snapshot.cursor), 100)
        .await
        .unwrap();
    assert!(
        after.events.is_empty(),
        "the snapshot cursor is at the end of the log"
    );
}

async fn watch_delivers_live_events(b: &impl Backend, case: &str) {
    let writer = b.store(case).await;
    let watcher = b.store(case).await;
    let mut rx = watcher.watch();
    match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
        Ok(Some(Notice::Resync)) => {}
        other => panic!("first notice must be Resync, got {other:?}"),
    }
    let s = sid("watched");
    writer.open(&s, OpenSpec::new()).await.unwrap();
    writer
        .close(&s, lost_access("github.app_uninstalled"))
        .await
        .unwrap();
    let opened = next_event(&mut rx, |e| e.session.as_ref() == Some(&s)).await;
    assert_eq!(opened.kind, EventKind::Opened);
    let closed = next_event(&mut rx, |e| e.session.as_ref() == Some(&s)).await;
    assert_eq!((closed.kind, closed.epoch), (EventKind::Closed, 0));
    assert_eq!(closed.rule.as_deref(), Some("github.app_uninstalled"));
    let logged = events_of(writer.as_ref(), &s).await;
    assert_eq!(
        logged[1].id, closed.id,
        "live events carry their log position"
    );
}

async fn deployment_secret_is_generated_once_and_shared(b: &impl Backend, case: &str) {
    let first = b.store(case).await;
    let second = b.store(case).await;
    let secret = first.deployment_secret().await.unwrap();
    assert!(secret.len() >= CredentialKey::MIN_SECRET_LEN);
    assert_eq!(first.deployment_secret().await.unwrap(), secret);
    assert_eq!(second.deployment_secret().await.unwrap(), secret);
    assert_ne!(secret, vec![0u8; secret.len()]);
}

async fn invalid_input_is_rejected_before_writing(b: &impl Backend, case: &str) {
    let store = b.store(case).await;
    let s = sid("s");
    let invalid = |r: Result<_, StoreError>| matches!(r, Err(StoreError::InvalidInput(_)));
    assert!(invalid(store.close(&s, lost_access("")).await.map(|_| ())));
    assert!(invalid(
        store
            .close(&s, lost_access("r").at_epoch(MAX_EXACT_INTEGER + 1))
            .await
            .map(|_| ())
    ));
    assert!(invalid(
        store
            .add_wakeup(&s, MAX_EXACT_INTEGER + 1, json!(1))
            .await
            .map(|_| ())
    ));
    let huge = json!("x".repeat(MAX_PAYLOAD_BYTES));
    assert!(invalid(store.add_wakeup(&s, 1, huge).await.map(|_| ())));
    assert!(invalid(store.reset_resume(&s, None, "").await.map(|_| ())));
    assert_eq!(store.get(&s).await.unwrap(), None);
    assert!(all_events(store.as_ref()).await.is_empty());
}

async fn closure_details_are_pruned_after_retention_and_the_closure_stays(
    b: &impl Backend,
    case: &str,
) {
    let store = b.store(case).await;
    let t0 = 1_700_000_000_000;
    let (old, recent) = (sid("old"), sid("recent"));
    store
        .close(&old, lost_access("r").observed_at(t0))
        .await
        .unwrap();
    store
        .close(&recent, lost_access("r").observed_at(t0 + 10_000))
        .await
        .unwrap();
    assert_eq!(store.prune_closure_details(t0 + 5_000).await.unwrap(), 1);
    let pruned = store.get(&old).await.unwrap().unwrap();
    assert!(pruned.is_closed(), "the fact of the closure stays");
    let closure = pruned.closure.unwrap();
    assert_eq!(
        (
            closure.detail.as_str(),
            closure.rule.as_str(),
            closure.closed_at_ms
        ),
        ("", "r", t0)
    );
    assert_eq!(closure.reason, "bot removed from the channel");
    let kept = store.get(&recent).await.unwrap().unwrap().closure.unwrap();
    assert!(kept.detail.contains("not_in_channel"));
    assert_eq!(
        store.prune_closure_details(t0 + 5_000).await.unwrap(),
        0,
        "a repeat finds nothing left"
    );
    assert_eq!(store.prune_closure_details(t0 + 20_000).await.unwrap(), 1);
    let snapshot = store.snapshot().await.unwrap();
    assert_eq!(snapshot.sessions.len(), 2, "both closures are still known");
}

macro_rules! run_cases {
    ($backend:expr) => {
        run_cases!($backend, [
            unknown_session_is_open_at_epoch_zero,
            open_registers_at_epoch_zero_and_reopen_bumps_the_epoch,
            close_cancels_every_pending_wakeup,
            repeated_close_is_already_closed_without_a_second_event,
            close_with_an_older_epoch_is_fenced_and_changes_nothing,
            close_with_a_later_epoch_closes_the_current_generation,
            close_without_epoch_observed_before_a_reopen_is_fenced,
            add_wakeup_to_a_closed_session_is_refused,
            claim_hands_out_each_due_wakeup_once_and_none_of_closed_sessions,
            reset_resume_clears_only_at_the_right_epoch,
            credentials_block_unblock_and_list,
            events_after_pages_in_order_without_gaps_or_duplicates,
            trimmed_log_reports_a_gap_and_the_snapshot_has_the_state,
            snapshot_lists_closure_history_and_credentials,
            watch_delivers_live_events,
            deployment_secret_is_generated_once_and_shared,
            invalid_input_is_rejected_before_writing,
            closure_details_are_pruned_after_retention_and_the_closure_stays,
        ])
    };
    ($backend:expr, [$($case:ident),* $(,)?]) => {{
        let backend = $backend;
        $(
            let started = Instant::now();
            $case(&backend, stringify!($case)).await;
            eprintln!("{}: {} ok ({:?})", backend.name(), stringify!($case), started.elapsed());
        )*
        backend
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_store_conforms() {
    run_cases!(RedbBackend::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_standalone_store_conforms() {
    run_cases!(RedisBackend::standalone());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_store_conforms() {
    let backend = run_cases!(RedisBackend::cluster());
    // The suite only proves something about the cluster if its keys landed on several masters.
    let cluster = backend._cluster.as_ref().unwrap();
    let holding = cluster
        .nodes
        .iter()
        .filter(|n| n.cli(&["dbsize"]).trim().parse::<u64>().unwrap_or(0) > 0)
        .count();
    assert!(holding >= 2, "keys on {holding} of 3 masters");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_store_survives_reopening_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let (closed, waiting) = (sid("closed"), sid("waiting"));
    let key = CredentialKey::new(&[3u8; 32]).unwrap();
    let fp = key.fingerprint(b"Bearer xoxb-REDACTED");
    let (secret, events, pending) = {
        let store = RedbStore::open(&path, RedbOptions::default()).unwrap();
        store
            .open(
                &closed,
                OpenSpec::new().with_scope(json!({"linear_issue": "ENG-1"})),
            )
            .await
            .unwrap();
        store
            .close(&closed, lost_access("linear.issue_archived"))
            .await
            .unwrap();
        store
            .add_wakeup(&waiting, 42, json!({"wake": true}))
            .await
            .unwrap();
        store
            .block_credential(CredentialBlock::new(
                fp.clone(),
                Class::CredentialInvalid,
                "r",
                "x",
            ))
            .await
            .unwrap();
        (
            store.deployment_secret().await.unwrap(),
            all_events(&store).await,
            store.pending_wakeups(&waiting).await.unwrap(),
        )
    };
    let store = RedbStore::open(&path, RedbOptions::default()).unwrap();
    let record = store.get(&closed).await.unwrap().unwrap();
    assert_eq!(
        (record.status, record.scope),
        (
            SessionStatus::Closed,
            Some(json!({"linear_issue": "ENG-1"}))
        )
    );
    assert_eq!(store.pending_wakeups(&waiting).await.unwrap(), pending);
    assert_eq!(
        store.blocked_credentials().await.unwrap()[0].fingerprint,
        fp
    );
    assert_eq!(store.deployment_secret().await.unwrap(), secret);
    assert_eq!(all_events(&store).await, events);
    // The sequence continues after the reopen instead of reusing ids.
    store.open(&closed, OpenSpec::new()).await.unwrap();
    let last = all_events(&store).await.pop().unwrap();
    assert_eq!(last.id, (events.len() + 1).to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_scripts_reload_after_the_script_cache_is_flushed() {
    let server = RedisServer::start();
    let store = RedisStore::connect(
        RedisTarget::Standalone { url: server.url() },
        RedisOptions::default(),
    )
    .unwrap();
    store.close(&sid("before"), lost_access("r")).await.unwrap();
    assert!(server.cli(&["script", "flush"]).contains("OK"));
    let outcome = store.close(&sid("after"), lost_access("r")).await.unwrap();
    assert!(
        matches!(outcome, CloseOutcome::Closed { .. }),
        "{outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_store_builds_each_backend_from_its_url() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start();
    for url in [
        format!("redb:{}", dir.path().join("nested/state.redb").display()),
        format!("{}/0?prefix=fromurl&timeout_ms=500", server.url()),
    ] {
        let store = haltgate::session::open_store(&url).await.unwrap();
        let s = sid("via-url");
        store.close(&s, lost_access("r")).await.unwrap();
        assert!(store.get(&s).await.unwrap().unwrap().is_closed(), "{url}");
    }
    assert!(server
        .cli(&["--scan", "--pattern", "fromurl:*"])
        .contains("fromurl:{"));
    let err = haltgate::session::open_store("mysql://x")
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("expected redb:PATH"), "{err}");
    // Redis being down is not an error at open time; the first operation fails fast.
    let down = haltgate::session::open_store("redis://127.0.0.1:1/0?timeout_ms=200")
        .await
        .unwrap();
    let err = down.get(&sid("x")).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
}
