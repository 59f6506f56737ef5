//! What starts a reload: a watch of the rules directory, a periodic content-hash poll, and
//! `SIGHUP`. (`POST /v1/rules/reload` calls [`RuleReloader::reload`] directly.)

use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::{RuleReloader, Trigger};

/// Quiet time after the last event before the directory is read: an editor's write, a
/// rename-write and a ConfigMap `..data` swap each come as a burst of events.
const DEBOUNCE: Duration = Duration::from_millis(20);
/// Longest wait within a burst that never goes quiet.
const DEBOUNCE_MAX: Duration = Duration::from_millis(200);

/// Starts every configured trigger; the tasks end when aborted.
pub fn spawn(reloader: &Arc<RuleReloader>) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    let settings = reloader.settings();
    if settings.watch {
        tasks.push(tokio::spawn(watch(reloader.clone())));
    }
    if let Some(every) = settings.poll_interval {
        tasks.push(tokio::spawn(poll(reloader.clone(), every)));
    }
    tasks.push(tokio::spawn(on_sighup(reloader.clone())));
    tasks
}

/// Watches the directory itself, never the files: an editor's rename-write replaces the file
/// (a watch on it would go stale after the first save) and a ConfigMap update swaps the
/// `..data` symlink, an event on the directory. Any event but a read counts as "something
/// changed"; the reload compares content hashes.
async fn watch(reloader: Arc<RuleReloader>) {
    let dir = reloader.settings().dir.clone();
    let changed = Arc::new(Notify::new());
    let wake = changed.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match event {
            Ok(event) if matches!(event.kind, EventKind::Access(_)) => {}
            // An error may have lost events: read the directory again.
            _ => wake.notify_one(),
        }
    });
    let mut watcher = match watcher {
        Ok(watcher) => watcher,
        Err(error) => {
            tracing::warn!(%error, "Cannot watch the rules directory; the poll alone reloads.");
            return;
        }
    };
    if let Err(error) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!(dir = %dir.display(), %error, "Cannot watch the rules directory; the poll alone reloads.");
        return;
    }
    loop {
        changed.notified().await;
        let burst = tokio::time::sleep(DEBOUNCE_MAX);
        tokio::pin!(burst);
        loop {
            tokio::select! {
                _ = changed.notified() => continue,
                _ = tokio::time::sleep(DEBOUNCE) => break,
                _ = &mut burst => break,
            }
        }
        reloader.reload(Trigger::Watch).await;
    }
}

/// The fallback where no events come: network filesystems, some container mounts, a watch
/// lost with a replaced directory.
async fn poll(reloader: Arc<RuleReloader>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        reloader.reload(Trigger::Poll).await;
    }
}

async fn on_sighup(reloader: Arc<RuleReloader>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(error) => {
            tracing::warn!(%error, "Cannot listen for SIGHUP; reload through the watch, the poll or the API.");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the rules.");
        reloader.reload(Trigger::Signal).await;
    }
}
