//! The rule engine: decides what an upstream response means for the agent's session.
//!
//! Rules live in `rules/<provider>.toml` (format: `rules/README.md`). Loading compiles every file
//! and reports every error at once; the resulting [`RuleSet`] is immutable and cheap to share.
//!
//! # Decision procedure
//!
//! For one response of provider P:
//!
//! 1. The enabled rules of P are taken by priority (highest first), ties in file order.
//! 2. A rule matches when its `when` group holds (checks combined with `all`/`any`), no
//!    `unless` group holds, and no applicable guard vetoes it. Guards are the built-in
//!    `transient` guard (status 408, 425, 429, 5xx; a `Retry-After` header;
//!    `x-ratelimit-remaining: 0` on a 2xx or 403) and the file's
//!    `[[guard]]` tables; a rule opts out of some with `skip_guards`. Guards are evaluated only
//!    for rules that otherwise match, once per response.
//! 3. The first matching `enforce` rule decides the class; matching `shadow` rules are reported
//!    alongside and never decide.
//! 4. Nothing matched: `pass`.
//! 5. A body over `max_body_bytes` (or not buffered) is not inspected: `json` and `body` checks
//!    are false on it, negated or not. A body that is not JSON makes `json` checks false. For a
//!    `text/event-stream` body the `json` checks of one matcher must hold within one event.
//!
//! Checks on the session scope (`equals_scope`, the `scope` source) need the scope. When the
//! caller passes `Scope::Unknown` and the outcome depends on such a matcher (for the deciding
//! rule, an earlier one, or a shadow rule), `classify` answers [`Verdict::NeedsScope`]; the
//! caller loads the scope and asks again with `Scope::Known`.
//!
//! # Speed
//!
//! A literal prefilter (`prefilter.rs`) scans the raw body once and leaves only the rules whose
//! required literals appear; the rest are never evaluated. JSON is parsed at most once per
//! response (per event for streams) and only when a rule's head checks already hold.

pub mod cases;
pub mod check;
mod compile;
mod decision;
mod evaluate;
pub mod exchange;
mod matcher;
mod prefilter;
pub mod recorded;
pub mod spec;

use std::path::Path;

pub use compile::{RuleError, RuleErrors, RuleSource, TRANSIENT_GUARD};
pub use decision::{
    BodyState, Class, Decision, Explanation, GuardOutcome, GuardTrace, Mode, RuleOutcome,
    RuleTrace, UnknownClass, Verdict,
};
pub use exchange::{
    is_event_stream, sse_events, Exchange, ExchangeHead, PreparedExchange, RecordedBody,
    RecordedRequest, RecordedResponse, ResponseBody, Scope, SseStream,
};

use compile::ProviderRules;
use evaluate::{decide, transient_cause, Ctx, GuardRef, Judgement};
use matcher::{HeadView, Truth, Why};
use prefilter::{merge_sorted, Candidates};

/// Bodies larger than this are not inspected unless set otherwise (the halt layer's
/// `HaltConfig`, `inspect.max_body_bytes`, the `limit` of [`exchange::PreparedExchange::exchange`]).
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

/// A compiled, immutable set of rules for all providers.
#[derive(Debug)]
pub struct RuleSet {
    providers: Vec<ProviderRules>,
}

/// A rule as `rules test` and reports see it.
#[derive(Debug, Clone, Copy)]
pub struct RuleInfo<'r> {
    pub id: &'r str,
    pub provider: &'r str,
    pub class: Class,
    pub mode: Mode,
    pub enabled: bool,
}

impl RuleSet {
    /// Reads every `*.toml` in `dir` (not recursive; `tests/` and README.md are ignored) and
    /// compiles all of them. A directory without rule files is an error.
    pub fn load_dir(dir: &Path) -> Result<RuleSet, RuleErrors> {
        let shown = dir.display().to_string();
        let entries = std::fs::read_dir(dir).map_err(|error| {
            RuleErrors::new(vec![RuleError::unlocated(
                shown.clone(),
                format!("cannot read the rules directory: {error}"),
            )])
        })?;
        let mut paths = Vec::new();
        let mut errors = Vec::new();
        for entry in entries {
            match entry {
                Ok(entry) => {
                    let path = entry.path();
                    if path.extension().is_some_and(|ext| ext == "toml") && path.is_file() {
                        paths.push(path);
                    }
                }
                Err(error) => errors.push(RuleError::unlocated(
                    shown.clone(),
                    format!("cannot list the rules directory: {error}"),
                )),
            }
        }
        paths.sort();
        if paths.is_empty() && errors.is_empty() {
            errors.push(RuleError::unlocated(
                shown,
                "no rule files (*.toml) in this directory",
            ));
        }
        let mut sources = Vec::new();
        for path in paths {
            let display_path = path.display().to_string();
            let provider = path
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
                .unwrap_or_default();
            match std::fs::read_to_string(&path) {
                Ok(text) => sources.push(RuleSource::new(display_path, provider, text)),
                Err(error) => errors.push(RuleError::unlocated(
                    display_path,
                    format!("cannot read: {error}"),
                )),
            }
        }
        match RuleSet::from_sources(sources) {
            Ok(set) if errors.is_empty() => Ok(set),
            Ok(_) => Err(RuleErrors::new(errors)),
            Err(compile_errors) => {
                errors.extend(compile_errors.errors().iter().cloned());
                Err(RuleErrors::new(errors))
            }
        }
    }

    /// Compiles in-memory sources: (display path, provider = file stem, text).
    pub fn from_sources(sources: Vec<RuleSource>) -> Result<RuleSet, RuleErrors> {
        Ok(RuleSet {
            providers: compile::compile(sources)?,
        })
    }

    /// Provider names, sorted.
    pub fn providers(&self) -> impl Iterator<Item = &str> {
        self.providers.iter().map(|provider| &*provider.name)
    }

    /// Rules defined across all files, disabled ones included.
    pub fn rule_count(&self) -> usize {
        self.providers
            .iter()
            .map(|provider| provider.rules.len())
            .sum()
    }

    pub fn file_count(&self) -> usize {
        self.providers.len()
    }

    /// Every rule, provider by provider, in evaluation order.
    pub fn rules(&self) -> impl Iterator<Item = RuleInfo<'_>> {
        self.providers.iter().flat_map(|provider| {
            provider.rules.iter().map(|rule| RuleInfo {
                id: &rule.id,
                provider: &provider.name,
                class: rule.class,
                mode: rule.mode,
                enabled: rule.enabled,
            })
        })
    }

    /// The class a rule of `provider` decides, e.g. to label a shadow match.
    pub fn class_of(&self, provider: &str, id: &str) -> Option<Class> {
        self.provider(provider)?
            .rules
            .iter()
            .find(|rule| &*rule.id == id)
            .map(|rule| rule.class)
    }

    fn provider(&self, name: &str) -> Option<&ProviderRules> {
        self.providers
            .binary_search_by(|provider| (*provider.name).cmp(name))
            .ok()
            .map(|index| &self.providers[index])
    }

    /// Conservative head-only pre-check: false when no enabled rule (enforce or shadow) of the
    /// provider can match this response whatever its body is, so it can stream untouched.
    pub fn needs_body(&self, head: &ExchangeHead<'_>) -> bool {
        let Some(provider) = self.provider(head.provider) else {
            return false;
        };
        let transient = transient_cause(head).is_some();
        let view = HeadView {
            method: head.method,
            path: head.path(),
            query: head.query(),
            status: head.status,
            request_headers: head.request_headers,
            response_headers: head.response_headers,
        };
        provider.rules.iter().any(|rule| {
            rule.enabled && (!transient || !rule.transient_guard) && rule.when.may_hold(&view)
        })
    }

    /// Decides one response. Pure; allocates nothing unless some rule gets past its head
    /// matchers and the prefilter.
    pub fn classify(&self, exchange: &Exchange<'_>) -> Verdict {
        let ctx = Ctx::new(exchange);
        let Some(provider) = self.provider(exchange.head.provider) else {
            return Verdict::Decided(Decision::pass(ctx.body_inspected()));
        };
        let judge = |_, rule: &compile::Rule| ctx.rule(provider, rule, &mut Why::silent());
        match provider.prefilter.candidates(ctx.raw_body()) {
            Candidates::All => decide(
                provider,
                merge_sorted(
                    provider.prefilter.filtered(),
                    provider.prefilter.unfiltered(),
                ),
                ctx.body_inspected(),
                judge,
            ),
            Candidates::Some { hits, unfiltered } => decide(
                provider,
                merge_sorted(hits.as_slice(), unfiltered),
                ctx.body_inspected(),
                judge,
            ),
        }
    }

    /// The same decision as `classify`, with every rule and guard judged and the reason for
    /// each. Evaluates everything without the prefilter, so it is also a cross-check of it.
    pub fn explain(&self, exchange: &Exchange<'_>) -> Explanation {
        let ctx = Ctx::new(exchange);
        let head = &exchange.head;
        let Some(provider) = self.provider(head.provider) else {
            return Explanation {
                provider: head.provider.to_owned(),
                provider_known: false,
                status: head.status.as_u16(),
                body: ctx.body_state(),
                verdict: Verdict::Decided(Decision::pass(ctx.body_inspected())),
                rules: Vec::new(),
                guards: Vec::new(),
            };
        };

        let mut judgements = Vec::with_capacity(provider.rules.len());
        let mut details = Vec::with_capacity(provider.rules.len());
        for rule in &provider.rules {
            let mut why = Why::recording();
            let judgement = ctx.rule(provider, rule, &mut why);
            let detail = match judgement {
                Judgement::Vetoed(GuardRef::File(_)) | Judgement::Unless(_) => None,
                _ => why.take(),
            };
            judgements.push(judgement);
            details.push(detail);
        }
        let mut judged = Vec::new();
        let verdict = decide(
            provider,
            0..provider.rules.len(),
            ctx.body_inspected(),
            |index, _| {
                judged.push(index);
                judgements[index]
            },
        );

        let rules = provider
            .rules
            .iter()
            .zip(judgements.iter().zip(details))
            .enumerate()
            .map(|(index, (rule, (judgement, detail)))| RuleTrace {
                id: rule.id.clone(),
                class: rule.class,
                mode: rule.mode,
                priority: rule.priority,
                outcome: match (rule.enabled, judgement) {
                    (false, _) => RuleOutcome::Disabled,
                    (true, Judgement::Matched) => RuleOutcome::Matched,
                    (true, Judgement::NoMatch) => RuleOutcome::NoMatch,
                    (true, Judgement::Unless(which)) => RuleOutcome::Unless(*which),
                    (true, Judgement::Vetoed(guard)) => {
                        RuleOutcome::Vetoed(guard.name(provider).into())
                    }
                    (true, Judgement::NeedsScope) => RuleOutcome::NeedsScope,
                },
                detail,
                reached: !rule.enabled || judged.contains(&index) || verdict == Verdict::NeedsScope,
            })
            .collect();

        let mut guards = vec![GuardTrace {
            name: TRANSIENT_GUARD.into(),
            outcome: match ctx.transient() {
                Some(_) => GuardOutcome::Vetoes,
                None => GuardOutcome::DoesNotVeto,
            },
            detail: ctx.transient().map(|cause| cause.to_string()),
        }];
        for (index, guard) in provider.guards.iter().enumerate() {
            let mut why = Why::recording();
            let outcome = match ctx.guard_traced(provider, index, &mut why) {
                Truth::Yes => GuardOutcome::Vetoes,
                Truth::No => GuardOutcome::DoesNotVeto,
                Truth::Unknown => GuardOutcome::NeedsScope,
            };
            guards.push(GuardTrace {
                name: guard.name.clone(),
                outcome,
                detail: why.take(),
            });
        }

        Explanation {
            provider: provider.name.to_string(),
            provider_known: true,
            status: head.status.as_u16(),
            body: ctx.body_state(),
            verdict,
            rules,
            guards,
        }
    }
}
