//! Evaluation of compiled rules against one exchange: the decision loop shared by `classify` and
//! `explain`, and the lazily filled per-response state (parsed JSON, request body, guard results).

use std::borrow::Cow;
use std::cell::{OnceCell, RefCell};
use std::fmt;

use http::header::RETRY_AFTER;
use serde_json::Value;

use super::compile::{ProviderRules, Rule, TRANSIENT_GUARD};
use super::decision::{BodyState, Decision, Mode, Verdict};
use super::exchange::{
    form_values, is_event_stream, sse_events, Exchange, ExchangeHead, RequestBodyView,
    ResponseBody, Scope,
};
use super::matcher::{BodyField, Check, HeadView, Matcher, Source, Test, Truth, Val, Why};
use crate::session::Presented;

/// Where JSON checks read: the response body (parsed on first use), or one event of a stream.
#[derive(Clone, Copy)]
enum Root<'v> {
    Body,
    Event(&'v Value),
    /// A stream ruled out by its head: JSON checks read nothing.
    NoEvent,
}

/// Why the built-in `transient` guard vetoes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TransientCause {
    Status(u16),
    RetryAfter,
    RateLimitExhausted,
}

impl fmt::Display for TransientCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransientCause::Status(code) => write!(f, "status {code} is transient"),
            TransientCause::RetryAfter => f.write_str("the response has a Retry-After header"),
            TransientCause::RateLimitExhausted => f.write_str("x-ratelimit-remaining is 0"),
        }
    }
}

/// Status 408, 425, 429 or 5xx; a `Retry-After` header; `x-ratelimit-remaining: 0` on a
/// response that can be rate limiting (2xx or 403; 429 is already transient). A 401 or 404 says
/// something about the credential or the resource whatever quota is left: GitHub answers
/// GraphQL `401 Bad credentials` with `x-ratelimit-remaining: 0`.
pub(crate) fn transient_cause(head: &ExchangeHead<'_>) -> Option<TransientCause> {
    let code = head.status.as_u16();
    if matches!(code, 408 | 425 | 429 | 500..=599) {
        return Some(TransientCause::Status(code));
    }
    if head.response_headers.contains_key(RETRY_AFTER) {
        return Some(TransientCause::RetryAfter);
    }
    if !matches!(code, 200..=299 | 403) {
        return None;
    }
    let exhausted = head
        .response_headers
        .get_all("x-ratelimit-remaining")
        .iter()
        .any(|value| value.as_bytes().trim_ascii() == b"0");
    exhausted.then_some(TransientCause::RateLimitExhausted)
}

/// The response body as the matchers may read it.
#[derive(Debug, Clone, Copy)]
enum BodyInput<'a> {
    Uninspected,
    Whole(&'a [u8]),
    EventStream(&'a [u8]),
    Event(&'a [u8]),
}

enum ParsedBody {
    One(Option<Value>),
    /// The JSON events of a complete event stream (non-JSON events like `[DONE]` dropped).
    Events(Vec<Value>),
}

/// Per-response state. Everything expensive is computed on first use and at most once.
pub(crate) struct Ctx<'e, 'a> {
    exchange: &'e Exchange<'a>,
    path: &'a str,
    query: Option<&'a str>,
    body: BodyInput<'a>,
    parsed: OnceCell<ParsedBody>,
    request_body: OnceCell<RequestBodyView>,
    transient: OnceCell<Option<TransientCause>>,
    guards: RefCell<Vec<Option<Truth>>>,
}

impl<'e, 'a> Ctx<'e, 'a> {
    /// The body limit is applied by whoever built `exchange` (an over-limit body arrives as
    /// `Uninspected`).
    pub(crate) fn new(exchange: &'e Exchange<'a>) -> Ctx<'e, 'a> {
        let body = match exchange.response_body {
            ResponseBody::Uninspected => BodyInput::Uninspected,
            ResponseBody::SseEvent(bytes) => BodyInput::Event(bytes),
            ResponseBody::Complete(bytes) if is_event_stream(exchange.head.response_headers) => {
                BodyInput::EventStream(bytes)
            }
            ResponseBody::Complete(bytes) => BodyInput::Whole(bytes),
        };
        Ctx {
            exchange,
            path: exchange.head.path(),
            query: exchange.head.query(),
            body,
            parsed: OnceCell::new(),
            request_body: OnceCell::new(),
            transient: OnceCell::new(),
            guards: RefCell::new(Vec::new()),
        }
    }

    pub(crate) fn raw_body(&self) -> Option<&'a [u8]> {
        match self.body {
            BodyInput::Uninspected => None,
            BodyInput::Whole(bytes) | BodyInput::EventStream(bytes) | BodyInput::Event(bytes) => {
                Some(bytes)
            }
        }
    }

    pub(crate) fn body_inspected(&self) -> bool {
        !matches!(self.body, BodyInput::Uninspected)
    }

    pub(crate) fn body_state(&self) -> BodyState {
        match self.body {
            BodyInput::Uninspected => BodyState::Uninspected,
            BodyInput::Whole(_) | BodyInput::Event(_) | BodyInput::EventStream(_) => {
                match (self.body, self.parsed()) {
                    (BodyInput::EventStream(_), ParsedBody::Events(events)) => {
                        BodyState::EventStream {
                            json_events: events.len(),
                        }
                    }
                    (BodyInput::Event(_), ParsedBody::One(value)) => BodyState::Event {
                        json: value.is_some(),
                    },
                    (_, ParsedBody::One(Some(_))) => BodyState::Json,
                    _ => BodyState::NotJson,
                }
            }
        }
    }

    fn parsed(&self) -> &ParsedBody {
        self.parsed.get_or_init(|| match self.body {
            BodyInput::Uninspected => ParsedBody::One(None),
            BodyInput::Whole(bytes) | BodyInput::Event(bytes) => {
                ParsedBody::One(serde_json::from_slice(bytes).ok())
            }
            BodyInput::EventStream(bytes) => ParsedBody::Events(
                sse_events(bytes)
                    .filter_map(|data| serde_json::from_slice(&data).ok())
                    .collect(),
            ),
        })
    }

    fn request_body(&self) -> &RequestBodyView {
        self.request_body.get_or_init(|| {
            RequestBodyView::read(
                self.exchange.head.request_headers,
                self.exchange.request_body,
            )
        })
    }

    pub(crate) fn transient(&self) -> Option<TransientCause> {
        *self
            .transient
            .get_or_init(|| transient_cause(&self.exchange.head))
    }

    // === Matchers ===

    fn head_view(&self) -> HeadView<'a> {
        let head = &self.exchange.head;
        HeadView {
            method: head.method,
            path: self.path,
            query: self.query,
            status: head.status,
            request_headers: head.request_headers,
            response_headers: head.response_headers,
        }
    }

    /// Evaluates a `when`, `unless` or guard. On an event stream, a matcher that reads JSON holds
    /// when it holds with the JSON checks reading one event: checks of one matcher never mix
    /// events.
    pub(crate) fn table(&self, matcher: &Matcher, why: &mut Why) -> Truth {
        if matches!(self.body, BodyInput::EventStream(_)) && matcher.reads_json() {
            // Head checks first, so a stream no rule can match is never parsed.
            if !matcher.may_hold(&self.head_view()) {
                self.eval(matcher, Root::NoEvent, why);
                return Truth::No;
            }
            let events = match self.parsed() {
                ParsedBody::Events(events) if !events.is_empty() => events,
                // No JSON event: the JSON checks read nothing, the others still count.
                _ => return self.eval(matcher, Root::NoEvent, why),
            };
            let mut result = Truth::No;
            for event in events {
                match self.eval(matcher, Root::Event(event), &mut Why::silent()) {
                    Truth::Yes => return Truth::Yes,
                    Truth::Unknown => result = Truth::Unknown,
                    Truth::No => {}
                }
            }
            if result == Truth::No {
                why.fail(|| format!("no event satisfied {}", matcher.describe()));
            }
            return result;
        }
        self.eval(matcher, Root::Body, why)
    }

    fn eval(&self, matcher: &Matcher, root: Root<'_>, why: &mut Why) -> Truth {
        match matcher {
            Matcher::All(items) => {
                let mut result = Truth::Yes;
                for item in items.iter() {
                    match self.eval(item, root, why) {
                        Truth::No => return Truth::No,
                        Truth::Unknown => result = Truth::Unknown,
                        Truth::Yes => {}
                    }
                }
                result
            }
            Matcher::Any(items) => {
                let mut result = Truth::No;
                for item in items.iter() {
                    match self.eval(item, root, &mut Why::silent()) {
                        Truth::Yes => return Truth::Yes,
                        Truth::Unknown => result = Truth::Unknown,
                        Truth::No => {}
                    }
                }
                if result == Truth::No {
                    why.fail(|| format!("{} did not hold", matcher.describe()));
                }
                result
            }
            Matcher::Check(check) => self.check(check, root, why),
        }
    }

    fn check(&self, check: &Check, root: Root<'_>, why: &mut Why) -> Truth {
        let source = &check.source;
        if source.in_head() && !matches!(check.test, Test::EqualsScope(_)) {
            let held = self.head_view().check(check);
            if !held {
                why.fail(|| format!("{} did not hold{}", check.description, self.shown(source)));
            }
            return Truth::from_bool(held);
        }
        // A body that was not inspected or is not JSON decides nothing, negated or not: an
        // unknown body is never an absent one.
        if source.reads_response_body() && self.raw_body().is_none() {
            why.fail(|| "the body was not inspected (too large or not buffered)".into());
            return Truth::No;
        }
        let json_root = match (source, root) {
            (Source::Json(_), Root::Event(event)) => Some(event),
            (Source::Json(_), Root::NoEvent) => None,
            (Source::Json(_), Root::Body) => match self.parsed() {
                ParsedBody::One(Some(value)) => Some(value),
                _ => None,
            },
            _ => None,
        };
        if matches!(source, Source::Json(_)) && json_root.is_none() {
            why.fail(|| "the body is not JSON".into());
            return Truth::No;
        }
        let ignore_case = check.ignore_case;
        let held = match &check.test {
            Test::EqualsScope(key) => match self.exchange.scope {
                // A request without the value can never equal the scope, whatever it holds.
                Scope::Unknown if !self.values_any(source, json_root, &mut |_| true) => false,
                Scope::Unknown => return Truth::Unknown,
                Scope::Known(scope) => match scope_value(scope, key) {
                    None => false,
                    Some(Value::Array(items)) => self.values_any(source, json_root, &mut |value| {
                        items.iter().any(|item| value.equals(item, ignore_case))
                    }),
                    Some(expected) => self.values_any(source, json_root, &mut |value| {
                        value.equals(expected, ignore_case)
                    }),
                },
            },
            test => {
                if let (Source::Scope(_), Scope::Unknown) = (source, self.exchange.scope) {
                    return Truth::Unknown;
                }
                self.values_any(source, json_root, &mut |value| {
                    test.passes(value, ignore_case)
                })
            }
        };
        let result = held != check.negate;
        if !result {
            why.fail(|| {
                let shown = match json_root {
                    Some(root) => match source {
                        Source::Json(path) => format!(" ({})", path.show_values(root)),
                        _ => String::new(),
                    },
                    None => String::new(),
                };
                format!("{} did not hold{shown}", check.description)
            });
        }
        Truth::from_bool(result)
    }

    /// What a head source held, for explanations.
    fn shown(&self, source: &Source) -> String {
        let head = &self.exchange.head;
        match source {
            Source::Status => format!(" (status is {})", head.status.as_u16()),
            Source::Method => format!(" (method is {})", head.method),
            Source::UrlPath => format!(" (path is {})", self.path),
            _ => String::new(),
        }
    }

    /// Whether `test` holds for any value the source yields.
    fn values_any(
        &self,
        source: &Source,
        json_root: Option<&Value>,
        test: &mut dyn FnMut(&Val<'_>) -> bool,
    ) -> bool {
        match source {
            Source::Json(path) => {
                json_root.is_some_and(|root| path.any(root, |value| test(&Val::Json(value))))
            }
            Source::Body => self.raw_body().is_some_and(|body| test(&Val::Bytes(body))),
            Source::RequestJson(path) => match self.request_body() {
                RequestBodyView::Json(root) => path.any(root, |value| test(&Val::Json(value))),
                _ => false,
            },
            Source::RequestField(field) => {
                let in_query = self.query.is_some_and(|query| {
                    form_values(query.as_bytes(), &field.name).next().is_some()
                });
                if in_query {
                    self.head_view()
                        .any(&Source::Query(field.name.clone()), test)
                } else {
                    self.body_field_any(field, test)
                }
            }
            Source::Scope(key) => match self.exchange.scope {
                Scope::Known(scope) => {
                    scope_value(scope, key).is_some_and(|value| test(&Val::Json(value)))
                }
                Scope::Unknown => false,
            },
            Source::Credential => {
                let head = &self.exchange.head;
                let presented = !Presented::in_request(
                    head.request_headers,
                    head.path_and_query,
                    self.exchange.request_body,
                )
                .is_empty();
                presented && test(&Val::Text(Cow::Borrowed("")))
            }
            head_source => self.head_view().any(head_source, test),
        }
    }

    fn body_field_any(&self, field: &BodyField, test: &mut dyn FnMut(&Val<'_>) -> bool) -> bool {
        match self.request_body() {
            RequestBodyView::Json(root) => field
                .path
                .as_ref()
                .is_some_and(|path| path.any(root, |value| test(&Val::Json(value)))),
            RequestBodyView::Form => form_values(self.exchange.request_body, &field.name)
                .any(|value| test(&Val::Text(value))),
            RequestBodyView::Opaque => false,
        }
    }

    // === Rules and guards ===

    fn guard(&self, provider: &ProviderRules, index: usize) -> Truth {
        if let Some(Some(known)) = self.guards.borrow().get(index) {
            return *known;
        }
        let result = self.table(&provider.guards[index].table, &mut Why::silent());
        let mut cache = self.guards.borrow_mut();
        if cache.len() < provider.guards.len() {
            cache.resize(provider.guards.len(), None);
        }
        cache[index] = Some(result);
        result
    }

    /// Judges one rule on its own: `when`, then `unless`, then the guards (only reached when the
    /// rule otherwise matches, which is what makes them lazy).
    pub(crate) fn rule(&self, provider: &ProviderRules, rule: &Rule, why: &mut Why) -> Judgement {
        let when = self.table(&rule.when, why);
        if when == Truth::No {
            return Judgement::NoMatch;
        }
        if !self.body_inspected() {
            // An `unless` or guard that reads the body cannot answer "no" for a body nobody
            // read: unknown is not absent, so the rule decides nothing rather than close a
            // session its exception might have spared.
            let blind = rule.unless.iter().any(Matcher::needs_body)
                || rule
                    .guards
                    .iter()
                    .any(|&index| provider.guards[index].table.needs_body());
            if blind {
                why.fail(|| {
                    "an `unless` or guard of this rule reads the body, which was not inspected"
                        .into()
                });
                return Judgement::NoMatch;
            }
        }
        let mut unknown = when == Truth::Unknown;
        for (index, table) in rule.unless.iter().enumerate() {
            match self.table(table, &mut Why::silent()) {
                Truth::Yes => return Judgement::Unless(index),
                Truth::Unknown => unknown = true,
                Truth::No => {}
            }
        }
        if rule.transient_guard {
            if let Some(cause) = self.transient() {
                why.fail(|| cause.to_string());
                return Judgement::Vetoed(GuardRef::Transient);
            }
        }
        for &index in &rule.guards {
            match self.guard(provider, index) {
                Truth::Yes => return Judgement::Vetoed(GuardRef::File(index)),
                Truth::Unknown => unknown = true,
                Truth::No => {}
            }
        }
        if unknown {
            Judgement::NeedsScope
        } else {
            Judgement::Matched
        }
    }

    /// A guard evaluated with its reason recorded, for `explain`.
    pub(crate) fn guard_traced(
        &self,
        provider: &ProviderRules,
        index: usize,
        why: &mut Why,
    ) -> Truth {
        self.table(&provider.guards[index].table, why)
    }
}

fn scope_value<'v>(scope: Option<&'v Value>, key: &str) -> Option<&'v Value> {
    scope
        .and_then(|scope| scope.get(key))
        .filter(|value| !value.is_null())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GuardRef {
    Transient,
    File(usize),
}

impl GuardRef {
    pub(crate) fn name<'p>(&self, provider: &'p ProviderRules) -> &'p str {
        match self {
            GuardRef::Transient => TRANSIENT_GUARD,
            GuardRef::File(index) => &provider.guards[*index].name,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Judgement {
    Matched,
    NoMatch,
    Unless(usize),
    Vetoed(GuardRef),
    NeedsScope,
}

/// The decision procedure over rules in evaluation order. `judge` is only called for rules that
/// can still change the outcome: once an enforce rule decided, later enforce rules are skipped
/// (shadow rules are still judged, they are reported alongside).
pub(crate) fn decide(
    provider: &ProviderRules,
    order: impl Iterator<Item = usize>,
    body_inspected: bool,
    mut judge: impl FnMut(usize, &Rule) -> Judgement,
) -> Verdict {
    let mut deciding: Option<&Rule> = None;
    let mut shadow = Vec::new();
    for index in order {
        if deciding.is_some() && !provider.has_shadow {
            break;
        }
        let rule = &provider.rules[index];
        if !rule.enabled || (rule.mode == Mode::Enforce && deciding.is_some()) {
            continue;
        }
        match judge(index, rule) {
            Judgement::Matched => match rule.mode {
                Mode::Enforce => deciding = Some(rule),
                Mode::Shadow => shadow.push(rule.id.clone()),
            },
            Judgement::NeedsScope => return Verdict::NeedsScope,
            Judgement::NoMatch | Judgement::Unless(_) | Judgement::Vetoed(_) => {}
        }
    }
    Verdict::Decided(match deciding {
        Some(rule) => Decision {
            class: rule.class,
            rule: Some(rule.id.clone()),
            reason: Some(rule.reason.clone()),
            shadow,
            body_inspected,
        },
        None => Decision {
            shadow,
            ..Decision::pass(body_inspected)
        },
    })
}
