//! What one connection is doing: requests in flight, requests cancelled before their answer.
//! The connection task watches it to close idle and abusive connections.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// Window over which cancelled requests are counted.
const RESET_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, Default)]
struct State {
    /// Requests whose response has not been fully sent (or dropped) yet.
    open: usize,
    /// Requests seen so far.
    started: u64,
    cancelled_in_window: u32,
    window_start: Option<Instant>,
    too_many_cancels: bool,
}

/// Shared by the connection task and every request of the connection.
#[derive(Debug)]
pub(super) struct Activity {
    state: watch::Sender<State>,
    max_cancels: u32,
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
            state: watch::Sender::new(State::default()),
            max_cancels: max_cancels_per_window,
        })
    }

    /// Marks a request as started; dropping the returned guard ends it.
    pub(super) fn start(self: &Arc<Self>) -> InFlight {
        self.state.send_modify(|s| {
            s.open += 1;
            s.started += 1;
        });
        InFlight {
            activity: self.clone(),
            answered: false,
        }
    }

    /// Completes when the connection should be closed: no first request within `first`, no
    /// request in flight for `idle`, or too many requests cancelled before their answer.
    pub(super) async fn until_closable(&self, first: Duration, idle: Duration) -> CloseReason {
        let mut changes = self.state.subscribe();
        loop {
            let state = *changes.borrow_and_update();
            if state.too_many_cancels {
                return CloseReason::TooManyCancels;
            }
            if state.open > 0 {
                // The sender lives in `self`, so this never fails.
                let _ = changes.changed().await;
                continue;
            }
            let (limit, reason) = if state.started == 0 {
                (first, CloseReason::NoFirstRequest)
            } else {
                (idle, CloseReason::Idle)
            };
            tokio::select! {
                () = tokio::time::sleep(limit) => return reason,
                _ = changes.changed() => {}
            }
        }
    }

    fn end(&self, answered: bool) {
        let max = self.max_cancels;
        self.state.send_modify(|s| {
            s.open -= 1;
            if answered {
                return;
            }
            let now = Instant::now();
            let window_over = s
                .window_start
                .is_none_or(|start| now.duration_since(start) >= RESET_WINDOW);
            if window_over {
                s.window_start = Some(now);
                s.cancelled_in_window = 0;
            }
            s.cancelled_in_window += 1;
            if s.cancelled_in_window > max {
                s.too_many_cancels = true;
            }
        });
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
