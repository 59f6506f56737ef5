//! The engine's answers: `Verdict`, `Decision`, `Class`, and the `Explanation` trace.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use crate::class::{Class, UnknownClass};

/// How a rule takes part in decisions.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The first matching enforce rule decides the class.
    Enforce,
    /// Evaluated and reported, never decides.
    Shadow,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// `Pass` when no enforce rule matched.
    pub class: Class,
    /// The deciding rule's id.
    pub rule: Option<Arc<str>>,
    /// The deciding rule's `reason`, else its description.
    pub reason: Option<Arc<str>>,
    /// Shadow rules that matched.
    pub shadow: Vec<Arc<str>>,
    /// Whether the response body was available to body matchers.
    pub body_inspected: bool,
}

impl Decision {
    pub fn pass(body_inspected: bool) -> Decision {
        Decision {
            class: Class::Pass,
            rule: None,
            reason: None,
            shadow: Vec::new(),
            body_inspected,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Decided(Decision),
    /// The outcome depends on the session scope, which was `Unknown`: load the session's scope and
    /// classify again with `Scope::Known`. Never returned when the scope is known.
    NeedsScope,
}

impl Verdict {
    pub fn decision(&self) -> Option<&Decision> {
        match self {
            Verdict::Decided(decision) => Some(decision),
            Verdict::NeedsScope => None,
        }
    }
}

/// How the response body looked to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyState {
    /// Not available: over `max_body_bytes` or not buffered.
    Uninspected,
    Json,
    /// Inspectable but not JSON (body matchers on JSON paths are false).
    NotJson,
    /// A complete `text/event-stream` body with this many JSON events.
    EventStream {
        json_events: usize,
    },
    /// One server-sent event fed by the proxy.
    Event {
        json: bool,
    },
}

impl fmt::Display for BodyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyState::Uninspected => f.write_str("not inspected (too large or not buffered)"),
            BodyState::Json => f.write_str("JSON"),
            BodyState::NotJson => f.write_str("not JSON"),
            BodyState::EventStream { json_events } => {
                write!(f, "event stream with {json_events} JSON event(s)")
            }
            BodyState::Event { json: true } => f.write_str("one server-sent event (JSON)"),
            BodyState::Event { json: false } => f.write_str("one server-sent event (not JSON)"),
        }
    }
}

/// Why a single rule matched or not, judged on its own (ignoring the other rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleOutcome {
    Matched,
    /// A `when` matcher did not hold.
    NoMatch,
    /// The `unless` table with this index (0-based) held.
    Unless(usize),
    /// This guard vetoed the rule.
    Vetoed(Arc<str>),
    /// The result depends on the session scope, which is unknown.
    NeedsScope,
    Disabled,
}

#[derive(Debug, Clone)]
pub struct RuleTrace {
    pub id: Arc<str>,
    pub class: Class,
    pub mode: Mode,
    pub priority: i64,
    pub outcome: RuleOutcome,
    /// The first matcher that failed, or the guard's / unless table's detail.
    pub detail: Option<String>,
    /// False for enforce rules after the deciding one (they could not change the decision).
    pub reached: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardOutcome {
    Vetoes,
    DoesNotVeto,
    NeedsScope,
    /// No rule needed it (guards are evaluated lazily, only for otherwise matching rules).
    NotEvaluated,
}

#[derive(Debug, Clone)]
pub struct GuardTrace {
    pub name: Arc<str>,
    pub outcome: GuardOutcome,
    pub detail: Option<String>,
}

/// The full trace of one decision: `explain`'s answer.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub provider: String,
    /// False when the rule set has no rules for `provider` (every response passes).
    pub provider_known: bool,
    pub status: u16,
    pub body: BodyState,
    pub verdict: Verdict,
    /// Every rule of the provider in evaluation order, disabled ones included.
    pub rules: Vec<RuleTrace>,
    /// The built-in `transient` guard first, then the file guards.
    pub guards: Vec<GuardTrace>,
}

impl Explanation {
    pub fn rule(&self, id: &str) -> Option<&RuleTrace> {
        self.rules.iter().find(|trace| &*trace.id == id)
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "provider: {}", self.provider)?;
        if !self.provider_known {
            writeln!(
                f,
                "  no rules are loaded for this provider; every response passes"
            )?;
        }
        writeln!(f, "status:   {}", self.status)?;
        writeln!(f, "body:     {}", self.body)?;
        match &self.verdict {
            Verdict::NeedsScope => writeln!(
                f,
                "decision: needs the session scope (a rule that compares with it could decide)"
            )?,
            Verdict::Decided(decision) => {
                match &decision.rule {
                    Some(rule) => writeln!(f, "decision: {} by rule {rule}", decision.class)?,
                    None => writeln!(f, "decision: pass (no enforce rule matched)")?,
                }
                if let Some(reason) = &decision.reason {
                    writeln!(f, "reason:   {reason}")?;
                }
                if !decision.shadow.is_empty() {
                    writeln!(f, "shadow rules matched: {}", decision.shadow.join(", "))?;
                }
            }
        }
        if !self.guards.is_empty() {
            writeln!(f, "guards:")?;
            for guard in &self.guards {
                let outcome = match guard.outcome {
                    GuardOutcome::Vetoes => "vetoes",
                    GuardOutcome::DoesNotVeto => "does not veto",
                    GuardOutcome::NeedsScope => "depends on the session scope",
                    GuardOutcome::NotEvaluated => "not evaluated (no rule needed it)",
                };
                write!(f, "  {}: {outcome}", guard.name)?;
                match &guard.detail {
                    Some(detail) => writeln!(f, " ({detail})")?,
                    None => writeln!(f)?,
                }
            }
        }
        if !self.rules.is_empty() {
            writeln!(f, "rules, in evaluation order:")?;
        }
        let deciding = self
            .verdict
            .decision()
            .and_then(|decision| decision.rule.clone());
        for rule in &self.rules {
            write!(
                f,
                "  {} [{} {}, priority {}]: ",
                rule.id, rule.mode, rule.class, rule.priority
            )?;
            let detail = rule.detail.as_deref();
            match &rule.outcome {
                RuleOutcome::Matched if deciding.as_deref() == Some(&*rule.id) => {
                    write!(f, "matched, decides")?
                }
                RuleOutcome::Matched if rule.mode == Mode::Shadow => {
                    write!(f, "matched (shadow, reported only)")?
                }
                RuleOutcome::Matched => write!(f, "matched")?,
                RuleOutcome::NoMatch => write!(f, "no match")?,
                RuleOutcome::Unless(index) => write!(f, "no match: unless #{} held", index + 1)?,
                RuleOutcome::Vetoed(guard) => write!(f, "no match: vetoed by guard {guard}")?,
                RuleOutcome::NeedsScope => write!(f, "depends on the session scope")?,
                RuleOutcome::Disabled => write!(f, "disabled")?,
            }
            if let Some(detail) = detail {
                write!(f, ": {detail}")?;
            }
            if !rule.reached && rule.outcome != RuleOutcome::Disabled {
                write!(f, " (not reached: an earlier rule decided)")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_round_trip() {
        for class in Class::ALL {
            assert_eq!(class.to_string().parse::<Class>(), Ok(class));
            assert_eq!(
                serde_json::to_string(&class).unwrap(),
                format!("\"{class}\"")
            );
        }
        assert!("lost-access".parse::<Class>().is_err());
    }
}
