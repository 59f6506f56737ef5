//! What one connection is doing: requests in flight, requests cancelled before their answer.
//! The connection task watches it to close idle and abusive connections.
//!
//! Requests only touch atomics: the watchdog is not woken per request. It sleeps until the
//! earliest moment the connection could be idle and checks then; a request that came and went
//! meanwhile moves that moment on (the deadline is checked lazily, as nginx's and hyper's own
//! keep-alive timers are).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Window over which cancelled requests are counted.
const RESET_WINDOW: Duration = Duration::from_secs(10);

/// Cancels counted within the current window.
#[derive(Debug, Default)]
struct CancelWindow {
    start: Option<Instant>,
    cancelled: u32,
}

/// Shared by the connection task and every request of the connection.
#[derive(Debug)]
pub(super) struct Activity {
    /// When the connection was accepted; `last_end_us` counts from here.
    opened: Instant,
    /// Requests whose response has not been fully sent (or dropped) yet.
    open: AtomicUsize,
    /// Whether any request arrived yet.
    started: AtomicBool,
    /// When the last request ended, in µs after `opened`.
    last_end_us: AtomicU64,
    cancels: Mutex<CancelWindow>,
    max_cancels: u32,
    too_many_cancels: AtomicBool,
    /// Wakes the watchdog at once when the client cancelled too many requests.
    abusive: Notify,
}

/// Why the connection task asks its connection to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CloseReason {
    NoFirstRequest,
    Idle,
    TooManyCancels,
}

impl Activity {
    pub(super) fn new(max_cancels_per_window: u32) -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            open: AtomicUsize::new(0),
            started: AtomicBool::new(false),
            last_end_us: AtomicU64::new(0),
            cancels: Mutex::new(CancelWindow::default()),
            max_cancels: max_cancels_per_window,
            too_many_cancels: AtomicBool::new(false),
            abusive: Notify::new(),
        })
    }

    /// Marks a request as started; dropping the returned guard ends it.
    pub(super) fn start(self: &Arc<Self>) -> InFlight {
        self.open.fetch_add(1, Ordering::AcqRel);
        if !self.started.load(Ordering::Relaxed) {
            self.started.store(true, Ordering::Release);
        }
        InFlight {
            activity: self.clone(),
            answered: false,
        }
    }

    /// Completes when the connection should be closed: no first request within `first`, no
    /// request in flight for `idle`, or too many requests cancelled before their answer.
    pub(super) async fn until_closable(&self, first: Duration, idle: Duration) -> CloseReason {
        let mut deadline = self.opened + first;
        loop {
            tokio::select! {
                biased;
                () = self.abusive.notified() => return CloseReason::TooManyCancels,
                () = tokio::time::sleep_until(deadline) => {}
            }
            if self.too_many_cancels.load(Ordering::Acquire) {
                return CloseReason::TooManyCancels;
            }
            let now = Instant::now();
            if self.open.load(Ordering::Acquire) > 0 {
                // Busy: the earliest it can be idle long enough is a full period from now.
                deadline = now + idle;
                continue;
            }
            let (due, reason) = if self.started.load(Ordering::Acquire) {
                let last_end =
                    self.opened + Duration::from_micros(self.last_end_us.load(Ordering::Acquire));
                (last_end + idle, CloseReason::Idle)
            } else {
                (self.opened + first, CloseReason::NoFirstRequest)
            };
            if now >= due {
                return reason;
            }
            deadline = due;
        }
    }

    fn end(&self, answered: bool) {
        let since_open = self.opened.elapsed().as_micros() as u64;
        self.last_end_us.fetch_max(since_open, Ordering::AcqRel);
        self.open.fetch_sub(1, Ordering::AcqRel);
        if !answered {
            self.count_cancel();
        }
    }

    fn count_cancel(&self) {
        let now = Instant::now();
        let mut window = self.cancels.lock().unwrap_or_else(|e| e.into_inner());
        let window_over = window
            .start
            .is_none_or(|start| now.duration_since(start) >= RESET_WINDOW);
        if window_over {
            window.start = Some(now);
            window.cancelled = 0;
        }
        window.cancelled += 1;
        if window.cancelled > self.max_cancels
            && !self.too_many_cancels.swap(true, Ordering::AcqRel)
        {
            self.abusive.notify_one();
        }
    }
}

/// One request of the connection. Dropped before [`InFlight::answered`], the request counts
/// as cancelled by the client (for HTTP/2, a stream reset before the answer).
#[derive(Debug)]
pub(super) struct InFlight {
    activity: Arc<Activity>,
    answered: bool,
}

impl InFlight {
    /// The response head went out; the request now ends when its body is done.
    pub(super) fn answered(&mut self) {
        self.answered = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity.end(self.answered);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_requests_closes_after_the_first_request_timeout() {
        let activity = Activity::new(10);
        let started = Instant::now();
        let reason = activity
            .until_closable(Duration::from_secs(3), Duration::from_secs(60))
            .await;
        assert_eq!(reason, CloseReason::NoFirstRequest);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn idleness_counts_from_the_last_request_end() {
        let activity = Activity::new(10);
        let watchdog = tokio::spawn({
            let activity = activity.clone();
            async move {
                let started = Instant::now();
                let reason = activity
                    .until_closable(Duration::from_secs(1), Duration::from_secs(10))
                    .await;
                (reason, started.elapsed())
            }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let request = activity.start();
        // In flight past both timeouts: never idle while a request is open.
        tokio::time::sleep(Duration::from_secs(25)).await;
        drop(request);
        let (reason, after) = watchdog.await.unwrap();
        assert_eq!(reason, CloseReason::Idle);
        assert_eq!(after, Duration::from_millis(35_500));
    }

    #[tokio::test(start_paused = true)]
    async fn too_many_cancels_close_at_once() {
        let activity = Activity::new(2);
        let watchdog = tokio::spawn({
            let activity = activity.clone();
            async move {
                activity
                    .until_closable(Duration::from_secs(30), Duration::from_secs(30))
                    .await
            }
        });
        for _ in 0..3 {
            drop(activity.start());
        }
        let started = Instant::now();
        assert_eq!(watchdog.await.unwrap(), CloseReason::TooManyCancels);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn answered_requests_are_not_cancels() {
        let activity = Activity::new(1);
        for _ in 0..5 {
            activity.start().answered();
        }
        let reason = activity
            .until_closable(Duration::from_secs(1), Duration::from_secs(2))
            .await;
        assert_eq!(reason, CloseReason::Idle);
    }
}
