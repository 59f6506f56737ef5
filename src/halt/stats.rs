use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of the halt layer, read by the control API.
#[derive(Debug, Default)]
pub struct HaltStats {
    /// Responses a rule decided (enforce mode).
    pub matched: AtomicU64,
    /// Matches of shadow rules (logged, never acted on).
    pub shadow_matched: AtomicU64,
    /// Requests answered with a halt response before reaching upstream.
    pub short_circuited: AtomicU64,
    /// Responses whose body was larger than `max_body_bytes` and passed uninspected.
    pub uninspected: AtomicU64,
    /// Responses a rule could not decide because state it depends on (the session scope)
    /// could not be read; they passed unchanged and nothing was closed.
    pub undecided: AtomicU64,
    /// Requests refused with `not_ready` because the session state was not loaded.
    pub not_ready: AtomicU64,
}

impl HaltStats {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "matched": self.matched.load(Ordering::Relaxed),
            "shadow_matched": self.shadow_matched.load(Ordering::Relaxed),
            "short_circuited": self.short_circuited.load(Ordering::Relaxed),
            "uninspected": self.uninspected.load(Ordering::Relaxed),
            "undecided": self.undecided.load(Ordering::Relaxed),
            "not_ready": self.not_ready.load(Ordering::Relaxed),
        })
    }
}
