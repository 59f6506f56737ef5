//! Keeping the closed set fed from the store: catch-up reads of the event log after a
//! cursor, snapshots on a gap, and the background task that follows live notices.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::super::error::StoreError;
use super::super::event::{EventCursor, Notice, Snapshot};
use super::super::SessionStore;
use super::{CatchUp, ClosedSet, FeedConfig};

const CATCH_UP_PAGE: usize = 512;
/// Resyncs tolerated within one catch-up before accepting a page despite a gap (the log is
/// trimmed faster than a snapshot can be read: retention is set far too low).
const MAX_RESYNCS_PER_CATCH_UP: usize = 3;

impl ClosedSet {
    /// Reads the store's log from this set's cursor to the end and applies it; the first call
    /// (and any call that finds the log trimmed past the cursor) loads a snapshot first.
    /// Marks the set ready when it succeeds. Concurrent calls run one after the other.
    pub async fn catch_up(&self, store: &dyn SessionStore) -> Result<CatchUp, StoreError> {
        let mut cursor = self.cursor.lock().await;
        let mut report = CatchUp::default();
        let mut resyncs = 0;
        if cursor.is_none() {
            *cursor = Some(self.load_snapshot(store).await?);
            report.resynced = true;
            resyncs += 1;
        }
        loop {
            let page = store.events_after(cursor.as_ref(), CATCH_UP_PAGE).await?;
            if page.gap && resyncs < MAX_RESYNCS_PER_CATCH_UP {
                tracing::info!(
                    "Event log was trimmed past this instance's cursor; reloading the closed set."
                );
                *cursor = Some(self.load_snapshot(store).await?);
                report.resynced = true;
                resyncs += 1;
                continue;
            }
            for event in &page.events {
                self.apply_event(event);
            }
            report.events += page.events.len();
            if page.gap {
                // The log outruns every snapshot: what fell in the gap is unknown, so the next
                // catch-up starts from a snapshot again instead of from past the gap.
                tracing::error!("Event log is trimmed faster than a snapshot can be read; raise its retention. The next catch-up reloads a snapshot.");
                *cursor = None;
                break;
            }
            *cursor = Some(page.cursor);
            if page.events.len() < CATCH_UP_PAGE {
                break;
            }
        }
        self.ready.store(true, Ordering::Release);
        Ok(report)
    }

    /// Applies the store's snapshot page by page; returns the position it is consistent with.
    async fn load_snapshot(&self, store: &dyn SessionStore) -> Result<EventCursor, StoreError> {
        let mut page = store.snapshot_page(None).await?;
        let cursor = page.cursor.clone();
        loop {
            let current = Snapshot {
                cursor: page.cursor,
                sessions: page.sessions,
                credentials: page.credentials,
            };
            let Some(next) = page.next else {
                self.apply_snapshot(&current);
                return Ok(cursor);
            };
            // The next page is read (on the store's threads) while this one is applied.
            let (read, ()) = futures_util::future::join(store.snapshot_page(Some(next)), async {
                self.apply_snapshot(&current)
            })
            .await;
            page = read?;
        }
    }

    /// Starts the background task that keeps the set fed from `store`: a catch-up at once and
    /// every `catch_up_interval`, live events as they come, and a catch-up on every
    /// [`Notice::Resync`]. The task ends when the set is dropped (or when aborted).
    pub fn spawn_feed(
        self: &Arc<Self>,
        store: Arc<dyn SessionStore>,
        config: FeedConfig,
    ) -> JoinHandle<()> {
        let set = Arc::downgrade(self);
        tokio::spawn(feed(set, store, config))
    }
}

enum Wake {
    Notice(Option<Notice>),
    Tick,
}

/// First retry delay after a failed catch-up; doubled per failure up to the catch-up interval.
const RETRY_MIN: Duration = Duration::from_millis(100);

async fn feed(set: Weak<ClosedSet>, store: Arc<dyn SessionStore>, config: FeedConfig) {
    let mut notices = store.watch();
    let mut timer = tokio::time::interval(config.catch_up_interval);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A failed catch-up (typically the first call on a connection the store just lost) is
    // retried soon rather than at the next tick.
    let retry = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(retry);
    let mut retry_pending = false;
    let mut retry_delay = RETRY_MIN;
    let mut failing = false;
    loop {
        let wake = tokio::select! {
            notice = notices.recv() => Wake::Notice(notice),
            _ = timer.tick() => Wake::Tick,
            _ = &mut retry, if retry_pending => Wake::Tick,
        };
        let Some(set) = set.upgrade() else {
            return;
        };
        match wake {
            Wake::Notice(Some(Notice::Event(event))) => {
                set.apply_event(&event);
                continue;
            }
            Wake::Notice(None) => {
                // The watch task ended (it only does when its receiver is gone or the store
                // handle was dropped); start a new one.
                notices = store.watch();
                continue;
            }
            Wake::Notice(Some(Notice::Resync)) | Wake::Tick => {}
        }
        match set.catch_up(store.as_ref()).await {
            Ok(report) => {
                if failing {
                    tracing::info!(
                        events = report.events,
                        "Closed set caught up with the store again."
                    );
                }
                failing = false;
                retry_pending = false;
                retry_delay = RETRY_MIN;
            }
            Err(err) => {
                if !failing {
                    tracing::warn!(error = %err, ready = set.is_ready(), "Closed set could not catch up with the store; retrying.");
                }
                failing = true;
                retry
                    .as_mut()
                    .reset(tokio::time::Instant::now() + retry_delay);
                retry_pending = true;
                retry_delay = (retry_delay * 2).min(config.catch_up_interval.max(RETRY_MIN));
            }
        }
    }
}
