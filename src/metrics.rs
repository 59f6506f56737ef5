//! Prometheus metrics of one instance, served by `GET /metrics` on the control listener.
//!
//! Each layer owns the counters of what it decides ([`TrafficStats`] in the ingress and
//! forward services, [`crate::halt::HaltStats`] in the halt layer, [`SessionStats`] in the
//! session gate); [`Metrics`] registers them all once and adds the gauges read at scrape
//! time. Labels never carry a session id or a credential: routes, rules, classes and store
//! operations are few and fixed by configuration.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::halt::{ClassLabel, HaltStats};

/// Content type of the text exposition `prometheus-client` writes.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

// Route labels share the route's own name (`Arc<str>`), so counting allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route name; `-` for requests no route took (refused or unknown).
    pub route: Arc<str>,
    /// `2xx`, `4xx`, …
    pub status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    pub operation: &'static str,
}

/// What the agent listener answered, and how long upstreams took.
#[derive(Debug)]
pub struct TrafficStats {
    pub requests: Family<RequestLabels, Counter>,
    /// Seconds from sending a request upstream to its response headers.
    pub upstream_latency: Family<RouteLabel, Histogram>,
    /// The route label of requests no route took.
    unrouted: Arc<str>,
}

impl Default for TrafficStats {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            // 1 ms to about 65 s, doubling.
            upstream_latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 17))
            }),
            unrouted: Arc::from("-"),
        }
    }
}

impl TrafficStats {
    pub fn count_unrouted(&self, status: http::StatusCode) {
        self.count_request(&self.unrouted, status);
    }

    pub fn count_request(&self, route: &Arc<str>, status: http::StatusCode) {
        let status_class = match status.as_u16() {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.requests
            .get_or_create(&RequestLabels {
                route: route.clone(),
                status_class,
            })
            .inc();
    }

    pub fn observe_upstream(&self, route: &Arc<str>, took: Duration) {
        self.upstream_latency
            .get_or_create(&RouteLabel {
                route: route.clone(),
            })
            .observe(took.as_secs_f64());
    }
}

/// What the session gate wrote, and what the store refused.
#[derive(Debug, Default)]
pub struct SessionStats {
    /// Sessions closed (by a rule, a blocked credential, an operator or `observe`), by class.
    pub closures: Family<ClassLabel, Counter>,
    /// Resume ids cleared after a `stale_session` match.
    pub resume_resets: Counter,
    /// Credentials blocked after a `credential_invalid` match.
    pub credential_blocks: Counter,
    /// Store operations that failed, by operation.
    pub store_errors: Family<OperationLabel, Counter>,
}

impl SessionStats {
    pub fn count_closure(&self, class: &str) {
        self.closures
            .get_or_create(&ClassLabel {
                class: class.to_owned(),
            })
            .inc();
    }

    pub fn count_store_error(&self, operation: &'static str) {
        self.store_errors
            .get_or_create(&OperationLabel { operation })
            .inc();
    }
}

/// Values read when scraped rather than counted as they happen.
#[derive(Debug, Default, Clone, Copy)]
pub struct ScrapeGauges {
    /// Closures and credential blocks waiting in the outbox for a Redis store; 0 without one.
    pub outbox_depth: i64,
    pub rules_loaded: i64,
    pub closed_sessions: i64,
    pub blocked_credentials: i64,
    /// Replicas a closure must reach to count as stored; -1 while not known yet.
    pub store_replicas_to_ack: i64,
}

/// Every metric of the instance in one registry, named `haltgate_*`.
pub struct Metrics {
    registry: Registry,
    outbox_depth: Gauge,
    rules_loaded: Gauge,
    closed_sessions: Gauge,
    blocked_credentials: Gauge,
    store_replicas_to_ack: Gauge,
}

impl Metrics {
    pub fn new(traffic: &TrafficStats, halt: &HaltStats, session: &SessionStats) -> Self {
        let mut registry = Registry::with_prefix("haltgate");
        registry.register(
            "requests",
            "Requests answered on the agent listener, by route and status class",
            traffic.requests.clone(),
        );
        registry.register(
            "upstream_latency_seconds",
            "Time from sending a request upstream to its response headers, by route",
            traffic.upstream_latency.clone(),
        );
        halt.register(&mut registry);
        registry.register(
            "closures",
            "Sessions closed, by class",
            session.closures.clone(),
        );
        registry.register(
            "resume_resets",
            "Resume ids cleared after a stale_session match",
            session.resume_resets.clone(),
        );
        registry.register(
            "credential_blocks",
            "Credentials blocked after a credential_invalid match",
            session.credential_blocks.clone(),
        );
        registry.register(
            "store_errors",
            "Session store operations that failed, by operation",
            session.store_errors.clone(),
        );
        let gauges = [
            (
                "outbox_depth",
                "Closures and credential blocks waiting in the outbox for Redis",
            ),
            ("rules_loaded", "Rules in force"),
            ("closed_sessions", "Sessions this instance knows are closed"),
            (
                "blocked_credentials",
                "Credentials this instance knows are blocked",
            ),
            (
                "store_replicas_to_ack",
                "Replicas a closure must reach to count as stored (-1: not known yet)",
            ),
        ]
        .map(|(name, help)| {
            let gauge = Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        });
        let [outbox_depth, rules_loaded, closed_sessions, blocked_credentials, store_replicas_to_ack] =
            gauges;
        Self {
            registry,
            outbox_depth,
            rules_loaded,
            closed_sessions,
            blocked_credentials,
            store_replicas_to_ack,
        }
    }

    /// Adds metrics owned elsewhere (e.g. the rule reloads) to the same registry.
    pub fn with(mut self, register: impl FnOnce(&mut Registry)) -> Self {
        register(&mut self.registry);
        self
    }

    /// Adds the storm breaker's gauges and counters.
    pub fn register_storm(&mut self, storm: &crate::storm::StormBreaker) {
        storm.register(&mut self.registry);
    }

    /// The text exposition, with the gauges set to `now`.
    pub fn encode(&self, now: ScrapeGauges) -> String {
        self.outbox_depth.set(now.outbox_depth);
        self.rules_loaded.set(now.rules_loaded);
        self.closed_sessions.set(now.closed_sessions);
        self.blocked_credentials.set(now.blocked_credentials);
        self.store_replicas_to_ack.set(now.store_replicas_to_ack);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}
