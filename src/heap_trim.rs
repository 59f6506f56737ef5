//! Hands memory the allocator holds but no longer uses back to the kernel.
//!
//! glibc's malloc keeps freed memory in its per-thread arenas: after a burst of connections
//! (each with its own read and write buffers) the resident set stays near the burst's peak
//! long after the connections are gone. A trim every few seconds returns what is free. It runs
//! on a blocking thread, takes each arena's lock only briefly, and costs next to nothing when
//! nothing was freed. Other allocators return memory on their own, so elsewhere this does
//! nothing.

use std::time::Duration;

use tokio::task::JoinHandle;

/// How often freed memory is handed back.
pub(crate) const TRIM_EVERY: Duration = Duration::from_secs(5);

/// Trims the heap every `every` until the task is aborted.
pub(crate) fn spawn(every: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            if tokio::task::spawn_blocking(trim).await.is_err() {
                return;
            }
        }
    })
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim takes no pointers and only walks the allocator's own state, under
    // the allocator's locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
