//! The storm breaker: when one provider's rules would close or block for more distinct
//! credentials (sessions, for requests without one) in a minute than configured, that
//! provider's halting rules act as shadow rules for a cool-down. Credentials count rather
//! than sessions: a revoked bot token rightly closes every session that used it, while an
//! outage fails many credentials at once.
//!
//! An outage of a provider's auth service can answer `invalid_auth` to every credential at
//! once; closing every session then turns an outage into a stampede of re-authorizations.
//! While the breaker is open, matches are logged and counted but nothing is closed or
//! blocked, and the agent gets the provider's own answer. It closes by itself after the
//! cool-down, or when an operator resets it (`POST /v1/storm/{provider}/reset`).
//!
//! Only decisive `lost_access` and `credential_invalid` matches reach it, so the common path
//! never takes its lock.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};

/// Default of `storm.max_closures_per_minute`.
pub const DEFAULT_MAX_CLOSURES_PER_MINUTE: u32 = 50;
/// Default of `storm.cool_down`.
pub const DEFAULT_COOL_DOWN: Duration = Duration::from_secs(600);

/// The window the closure rate is counted over.
const WINDOW: Duration = Duration::from_secs(60);

/// `[storm]`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StormSettings {
    /// Distinct credentials (else sessions) one provider may close or block per minute; 0 turns
    /// the breaker off.
    pub max_closures_per_minute: u32,
    pub cool_down: Duration,
}

impl Default for StormSettings {
    fn default() -> Self {
        Self {
            max_closures_per_minute: DEFAULT_MAX_CLOSURES_PER_MINUTE,
            cool_down: DEFAULT_COOL_DOWN,
        }
    }
}

/// What a halting match may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Close and block as usual.
    Enforce,
    /// The breaker is open: log and count only.
    Shadow,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabel {
    pub provider: String,
}

/// One breaker per provider, created on its first halting match.
pub struct StormBreaker {
    settings: StormSettings,
    providers: Mutex<HashMap<String, ProviderStorm>>,
    /// Keys sessions and credentials for the distinct count without keeping either.
    hasher: RandomState,
    open: Family<ProviderLabel, Gauge>,
    trips: Family<ProviderLabel, Counter>,
    shadowed: Family<ProviderLabel, Counter>,
}

#[derive(Default)]
struct ProviderStorm {
    /// When each distinct session or credential was admitted, oldest first.
    admitted: VecDeque<(Instant, u64)>,
    open_until: Option<Instant>,
    trips: u64,
    shadowed: u64,
}

impl StormBreaker {
    pub fn new(settings: StormSettings) -> Self {
        Self {
            settings,
            providers: Mutex::default(),
            hasher: RandomState::new(),
            open: Family::default(),
            trips: Family::default(),
            shadowed: Family::default(),
        }
    }

    pub fn settings(&self) -> StormSettings {
        self.settings
    }

    /// Decides whether a halting match of `provider` on `subject` (a session id, else a
    /// credential fingerprint) may close: each distinct subject counts once a minute, and the
    /// first one past the limit opens the breaker.
    pub fn admit(&self, provider: &str, subject: &str, now: Instant) -> Admit {
        if self.settings.max_closures_per_minute == 0 {
            return Admit::Enforce;
        }
        let key = self.hasher.hash_one(subject);
        let mut providers = self.providers.lock().expect("storm lock");
        let storm = match providers.get_mut(provider) {
            Some(storm) => storm,
            None => {
                // Every series of the provider exists from its first halting match, so a
                // scraper reads a closed breaker as 0, not as absent.
                let label = label(provider);
                self.open.get_or_create(&label).set(0);
                self.trips.get_or_create(&label).inc_by(0);
                self.shadowed.get_or_create(&label).inc_by(0);
                providers.entry(provider.to_owned()).or_default()
            }
        };
        if self.expire(provider, storm, now) {
            storm.shadowed += 1;
            self.shadowed.get_or_create(&label(provider)).inc();
            return Admit::Shadow;
        }
        while storm
            .admitted
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= WINDOW)
        {
            storm.admitted.pop_front();
        }
        if storm.admitted.iter().any(|(_, seen)| *seen == key) {
            return Admit::Enforce;
        }
        if storm.admitted.len() >= self.settings.max_closures_per_minute as usize {
            storm.open_until = Some(now + self.settings.cool_down);
            storm.trips += 1;
            storm.shadowed += 1;
            let label = label(provider);
            self.open.get_or_create(&label).set(1);
            self.trips.get_or_create(&label).inc();
            self.shadowed.get_or_create(&label).inc();
            tracing::warn!(
                event = "storm_breaker_opened",
                provider,
                max_closures_per_minute = self.settings.max_closures_per_minute,
                cool_down = ?self.settings.cool_down,
                "Storm breaker opened: this provider's halting rules act as shadow rules until the cool-down ends or an operator resets it."
            );
            return Admit::Shadow;
        }
        storm.admitted.push_back((now, key));
        Admit::Enforce
    }

    /// Whether the breaker of `provider` is open at `now`; closes it when its cool-down ended.
    fn expire(&self, provider: &str, storm: &mut ProviderStorm, now: Instant) -> bool {
        match storm.open_until {
            Some(until) if now < until => true,
            Some(_) => {
                storm.open_until = None;
                storm.admitted.clear();
                self.open.get_or_create(&label(provider)).set(0);
                tracing::warn!(
                    event = "storm_breaker_closed",
                    provider,
                    cause = "cool_down",
                    "Storm breaker closed: this provider's halting rules act again."
                );
                false
            }
            None => false,
        }
    }

    /// Closes the breaker of `provider` and forgets its count; whether it was open.
    pub fn reset(&self, provider: &str) -> bool {
        let mut providers = self.providers.lock().expect("storm lock");
        let Some(storm) = providers.get_mut(provider) else {
            return false;
        };
        let was_open = storm.open_until.take().is_some();
        storm.admitted.clear();
        self.open.get_or_create(&label(provider)).set(0);
        if was_open {
            tracing::warn!(
                event = "storm_breaker_closed",
                provider,
                cause = "operator_reset",
                "Storm breaker reset by an operator: this provider's halting rules act again."
            );
        }
        was_open
    }

    /// Every provider that had a halting match, as `/v1/stats` and `/readyz` show it.
    pub fn to_json(&self, now: Instant) -> Value {
        let mut providers = self.providers.lock().expect("storm lock");
        let mut out = serde_json::Map::new();
        for (provider, storm) in providers.iter_mut() {
            let open = self.expire(provider, storm, now);
            out.insert(
                provider.clone(),
                json!({
                    "open": open,
                    "open_for_ms": storm.open_until.map(|until| until.duration_since(now).as_millis() as u64),
                    "closures_last_minute": storm.admitted.iter().filter(|(at, _)| now.duration_since(*at) < WINDOW).count(),
                    "trips": storm.trips,
                    "shadowed": storm.shadowed,
                }),
            );
        }
        json!({
            "max_closures_per_minute": self.settings.max_closures_per_minute,
            "cool_down_ms": self.settings.cool_down.as_millis() as u64,
            "providers": out,
        })
    }

    /// Brings the open gauges up to date (a cool-down ends without a match to notice it).
    pub fn refresh(&self, now: Instant) {
        let mut providers = self.providers.lock().expect("storm lock");
        for (provider, storm) in providers.iter_mut() {
            self.expire(provider, storm, now);
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "storm_breaker_open",
            "1 while a provider's halting rules act as shadow rules after too many closures",
            self.open.clone(),
        );
        registry.register(
            "storm_breaker_trips",
            "Times a provider's storm breaker opened",
            self.trips.clone(),
        );
        registry.register(
            "storm_breaker_shadowed",
            "Halting matches let through because the provider's storm breaker was open",
            self.shadowed.clone(),
        );
    }
}

fn label(provider: &str) -> ProviderLabel {
    ProviderLabel {
        provider: provider.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(max: u32) -> StormBreaker {
        StormBreaker::new(StormSettings {
            max_closures_per_minute: max,
            cool_down: Duration::from_secs(600),
        })
    }

    #[test]
    fn distinct_subjects_past_the_limit_open_it_for_the_cool_down() {
        let breaker = breaker(2);
        let t = Instant::now();
        assert_eq!(breaker.admit("slack", "s1", t), Admit::Enforce);
        assert_eq!(
            breaker.admit("slack", "s1", t),
            Admit::Enforce,
            "same session"
        );
        assert_eq!(breaker.admit("slack", "s2", t), Admit::Enforce);
        assert_eq!(
            breaker.admit("github", "s3", t),
            Admit::Enforce,
            "per provider"
        );
        assert_eq!(breaker.admit("slack", "s3", t), Admit::Shadow);
        assert_eq!(
            breaker.admit("slack", "s1", t),
            Admit::Shadow,
            "open for all"
        );
        let later = t + Duration::from_secs(599);
        assert_eq!(breaker.admit("slack", "s4", later), Admit::Shadow);
        let after = t + Duration::from_secs(600);
        assert_eq!(breaker.admit("slack", "s4", after), Admit::Enforce);
        let status = breaker.to_json(after);
        assert_eq!(status["providers"]["slack"]["trips"], 1);
        assert_eq!(status["providers"]["slack"]["shadowed"], 3);
    }

    #[test]
    fn the_count_is_per_minute() {
        let breaker = breaker(2);
        let t = Instant::now();
        assert_eq!(breaker.admit("slack", "s1", t), Admit::Enforce);
        assert_eq!(breaker.admit("slack", "s2", t), Admit::Enforce);
        let next = t + WINDOW;
        assert_eq!(breaker.admit("slack", "s3", next), Admit::Enforce);
    }

    #[test]
    fn a_reset_closes_it_and_zero_turns_it_off() {
        let breaker = breaker(1);
        let t = Instant::now();
        breaker.admit("slack", "s1", t);
        assert_eq!(breaker.admit("slack", "s2", t), Admit::Shadow);
        assert!(breaker.reset("slack"));
        assert!(!breaker.reset("slack"));
        assert_eq!(breaker.admit("slack", "s2", t), Admit::Enforce);
        let off = self::breaker(0);
        for i in 0..100 {
            assert_eq!(off.admit("slack", &format!("s{i}"), t), Admit::Enforce);
        }
    }
}
