use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::class::Class;

/// One rule's matches, by what it decided and whether it acted (`enforce`) or only logged
/// (`shadow`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MatchLabels {
    /// The rule's id.
    pub rule: String,
    /// The class it decides.
    pub class: String,
    /// `enforce` or `shadow`.
    pub mode: &'static str,
}

/// Labels of a count kept per decision class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    /// The class's name.
    pub class: String,
}

/// Labels of a count kept per reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why a body went uninspected: `too_large`, `undecodable`, `unknown_encoding`, `read_failed`.
    pub reason: &'static str,
}

/// Counters of the halt layer, read by `/v1/stats` and `/metrics`.
#[derive(Debug, Default)]
pub struct HaltStats {
    /// Responses a rule decided (enforce mode).
    pub matched: Counter,
    /// Matches of shadow rules (logged, never acted on).
    pub shadow_matched: Counter,
    /// Matches by rule, class and mode.
    pub matches: Family<MatchLabels, Counter>,
    /// Responses replaced by a halt response after a match, by class.
    pub halts: Family<ClassLabel, Counter>,
    /// Requests answered with a halt response before reaching upstream.
    pub short_circuited: Counter,
    /// Responses whose body was read whole and given to the rules.
    pub inspected: Counter,
    /// Responses whose body passed uninspected (too large, undecodable, unknown coding).
    pub uninspected: Counter,
    /// The same, by reason (see [`crate::halt::decode::Uninspected`]).
    pub uninspected_by_reason: Family<ReasonLabel, Counter>,
    /// Responses a rule could not decide because state it depends on (the session scope)
    /// could not be read; they passed unchanged and nothing was closed.
    pub undecided: Counter,
    /// Requests refused with `not_ready` because the session state was not loaded.
    pub not_ready: Counter,
}

impl HaltStats {
    /// One match: the total of its mode (`matched` or `shadow_matched`) and its labelled count.
    pub(crate) fn count_match(&self, rule: &str, class: &str, mode: &'static str) {
        match mode {
            "shadow" => self.shadow_matched.inc(),
            _ => self.matched.inc(),
        };
        self.matches
            .get_or_create(&MatchLabels {
                rule: rule.to_owned(),
                class: class.to_owned(),
                mode,
            })
            .inc();
    }

    pub(crate) fn count_uninspected(&self, reason: super::decode::Uninspected) {
        self.uninspected.inc();
        self.uninspected_by_reason
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
    }

    pub(crate) fn count_halt(&self, class: Class) {
        self.halts
            .get_or_create(&ClassLabel {
                class: class.as_str().to_owned(),
            })
            .inc();
    }

    /// Adds every counter to `registry` (the counters are shared, not copied).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "rule_matches",
            "Rule matches by rule, class and mode (enforce or shadow)",
            self.matches.clone(),
        );
        registry.register(
            "halts",
            "Upstream responses replaced by a halt response, by class",
            self.halts.clone(),
        );
        registry.register(
            "short_circuits",
            "Requests answered with a halt response without contacting the upstream",
            self.short_circuited.clone(),
        );
        registry.register(
            "bodies_inspected",
            "Response bodies read whole and given to the rules",
            self.inspected.clone(),
        );
        registry.register(
            "bodies_uninspected",
            "Response bodies passed on uninspected, by reason (too_large, undecodable, unknown_encoding, read_failed)",
            self.uninspected_by_reason.clone(),
        );
        registry.register(
            "bodies_undecided",
            "Responses a scope rule could not decide because the scope could not be read",
            self.undecided.clone(),
        );
        registry.register(
            "not_ready",
            "Requests refused because the session state was not loaded yet",
            self.not_ready.clone(),
        );
    }

    /// The totals, as `/v1/stats` shows them.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "matched": self.matched.get(),
            "shadow_matched": self.shadow_matched.get(),
            "short_circuited": self.short_circuited.get(),
            "inspected": self.inspected.get(),
            "uninspected": self.uninspected.get(),
            "uninspected_by_reason": {
                "too_large": self.uninspected_reason("too_large"),
                "undecodable": self.uninspected_reason("undecodable"),
                "unknown_encoding": self.uninspected_reason("unknown_encoding"),
                "read_failed": self.uninspected_reason("read_failed"),
            },
            "undecided": self.undecided.get(),
            "not_ready": self.not_ready.get(),
        })
    }

    fn uninspected_reason(&self, reason: &'static str) -> u64 {
        self.uninspected_by_reason
            .get_or_create(&ReasonLabel { reason })
            .get()
    }
}
