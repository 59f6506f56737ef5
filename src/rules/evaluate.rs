//! Evaluation of compiled rules against one exchange: the decision loop shared by `classify` and
//! `explain`, and the lazily filled per-response state (parsed JSON, request body, guard results).

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
use super::matcher::{
    JsonTest, MatchTable, RequestSource, RequestTest, RequestValue, RequestValueTest, Truth, Why,
};

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

/// Status 408, 425, 429 or 5xx; a `Retry-After` header; `x-ratelimit-remaining: 0`.
pub(crate) fn transient_cause(head: &ExchangeHead<'_>) -> Option<TransientCause> {
    let code = head.status.as_u16();
    if matches!(code, 408 | 425 | 429 | 500..=599) {
        return Some(TransientCause::Status(code));
    }
    if head.response_headers.contains_key(RETRY_AFTER) {
        return Some(TransientCause::RetryAfter);
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

    // === Tables ===

    pub(crate) fn table(&self, table: &MatchTable, why: &mut Why) -> Truth {
        let head = &self.exchange.head;
        if !table.head.holds(
            head.method,
            self.path,
            head.status,
            head.request_headers,
            head.response_headers,
            why,
        ) {
            return Truth::No;
        }
        if table.needs_body() {
            let Some(raw) = self.raw_body() else {
                why.fail(|| "the body was not inspected (too large or not buffered)".into());
                return Truth::No;
            };
            if let Some(body_regex) = &table.body_regex {
                if !body_regex.regex.is_match(raw) {
                    why.fail(|| format!("{} did not match", body_regex.description));
                    return Truth::No;
                }
            }
            if !table.json.is_empty() && !self.json_holds(&table.json, why) {
                return Truth::No;
            }
        }
        let mut result = Truth::Yes;
        for test in &table.request {
            match self.request_test(test) {
                Truth::No => {
                    why.fail(|| format!("{} did not hold", test.description));
                    return Truth::No;
                }
                Truth::Unknown => result = Truth::Unknown,
                Truth::Yes => {}
            }
        }
        if let Some(key) = &table.scope_absent {
            match self.exchange.scope {
                Scope::Unknown => result = Truth::Unknown,
                Scope::Known(scope) => {
                    if scope_value(scope, key).is_some() {
                        why.fail(|| format!("scope_absent {key}: the session has a {key}"));
                        return Truth::No;
                    }
                }
            }
        }
        result
    }

    /// All tests hold on the body; for an event stream, all within one event.
    fn json_holds(&self, tests: &[JsonTest], why: &mut Why) -> bool {
        match self.parsed() {
            ParsedBody::One(Some(root)) => {
                for test in tests {
                    if !test.holds(root) {
                        why.fail(|| {
                            let actual = test.path.show_values(root);
                            format!("{} did not hold ({actual})", test.description)
                        });
                        return false;
                    }
                }
                true
            }
            ParsedBody::One(None) => {
                why.fail(|| "the body is not JSON".into());
                false
            }
            ParsedBody::Events(events) => {
                let held = events
                    .iter()
                    .any(|event| tests.iter().all(|test| test.holds(event)));
                if !held {
                    why.fail(|| {
                        let all: Vec<&str> = tests.iter().map(|t| &*t.description).collect();
                        format!("no event satisfied all of: {}", all.join("; "))
                    });
                }
                held
            }
        }
    }

    fn request_test(&self, test: &RequestTest) -> Truth {
        let ignore_case = test.ignore_case;
        let source = &test.source;
        match &test.test {
            RequestValueTest::Exists(wanted) => {
                Truth::from_bool(self.request_any(source, &mut |_| true) == *wanted)
            }
            RequestValueTest::Equals(expected) => Truth::from_bool(
                self.request_any(source, &mut |value| value.equals(expected, ignore_case)),
            ),
            RequestValueTest::OneOf(expected) => {
                Truth::from_bool(self.request_any(source, &mut |value| {
                    expected
                        .iter()
                        .any(|candidate| value.equals(candidate, ignore_case))
                }))
            }
            RequestValueTest::Regex(regex) => {
                Truth::from_bool(self.request_any(source, &mut |value| value.is_match(regex)))
            }
            RequestValueTest::EqualsScope(key) => match self.exchange.scope {
                // A request without the value can never equal the scope, whatever it holds.
                Scope::Unknown if !self.request_any(source, &mut |_| true) => Truth::No,
                Scope::Unknown => Truth::Unknown,
                Scope::Known(scope) => match scope_value(scope, key) {
                    None => Truth::No,
                    Some(Value::Array(items)) => {
                        Truth::from_bool(self.request_any(source, &mut |value| {
                            items.iter().any(|item| value.equals(item, ignore_case))
                        }))
                    }
                    Some(expected) => Truth::from_bool(
                        self.request_any(source, &mut |value| value.equals(expected, ignore_case)),
                    ),
                },
            },
        }
    }

    /// Whether `test` holds for any value the source yields.
    fn request_any(
        &self,
        source: &RequestSource,
        test: &mut dyn FnMut(&RequestValue<'_>) -> bool,
    ) -> bool {
        let head = &self.exchange.head;
        match source {
            RequestSource::Query(name) => self.query_any(name, test),
            RequestSource::Header(name) => head.request_headers.get_all(name).iter().any(|value| {
                value
                    .to_str()
                    .is_ok_and(|text| test(&RequestValue::Text(text.into())))
            }),
            RequestSource::PathCapture { regex, group } => regex
                .captures(self.path)
                .and_then(|captures| captures.name(group))
                .is_some_and(|found| test(&RequestValue::Text(found.as_str().into()))),
            RequestSource::Body(field) => self.body_field_any(field, test),
            RequestSource::Field(field) => {
                let in_query = self.query.is_some_and(|query| {
                    form_values(query.as_bytes(), &field.name).next().is_some()
                });
                if in_query {
                    self.query_any(&field.name, test)
                } else {
                    self.body_field_any(field, test)
                }
            }
        }
    }

    fn query_any(&self, name: &str, test: &mut dyn FnMut(&RequestValue<'_>) -> bool) -> bool {
        self.query.is_some_and(|query| {
            form_values(query.as_bytes(), name).any(|value| test(&RequestValue::Text(value)))
        })
    }

    fn body_field_any(
        &self,
        field: &super::matcher::BodyField,
        test: &mut dyn FnMut(&RequestValue<'_>) -> bool,
    ) -> bool {
        match self.request_body() {
            RequestBodyView::Json(root) => field
                .path
                .as_ref()
                .is_some_and(|path| path.any(root, |value| test(&RequestValue::Json(value)))),
            RequestBodyView::Form => form_values(self.exchange.request_body, &field.name)
                .any(|value| test(&RequestValue::Text(value))),
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
