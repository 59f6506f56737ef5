//! Compiled matchers: one check model. A check reads values from a [`Source`] and asks a
//! [`Test`] of them; [`Matcher`] combines checks with `all` and `any`. A new operator is one
//! `Test` variant plus its arms (`Test::passes`, the compiler's key table, the prefilter).
//!
//! Each check keeps a short description in rule-file syntax so `explain` can say which one
//! failed. Sources that need the response body, the request body or the session scope are read
//! in `evaluate.rs`; head sources and the tests themselves live here.

use std::borrow::Cow;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, Method, StatusCode};
use regex::bytes::Regex as BytesRegex;
use serde_json::Value;

use super::exchange::form_values;

/// Compiled size caps for operator-written regexes. The `regex` crate is linear-time; these keep
/// a pathological pattern from taking a lot of memory at load.
pub(crate) const REGEX_SIZE_LIMIT: usize = 1 << 20;
pub(crate) const REGEX_DFA_SIZE_LIMIT: usize = 1 << 20;

pub(crate) fn build_bytes_regex(pattern: &str) -> Result<regex::bytes::Regex, regex::Error> {
    regex::bytes::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_DFA_SIZE_LIMIT)
        .build()
}

/// Three-valued result: `Unknown` only arises from matchers on the session scope when the caller
/// has not loaded it (`Scope::Unknown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Truth {
    Yes,
    No,
    Unknown,
}

impl Truth {
    pub(crate) fn from_bool(value: bool) -> Truth {
        if value {
            Truth::Yes
        } else {
            Truth::No
        }
    }
}

/// Collects the first reason a table failed, only when `explain` asks for it; `classify` passes a
/// silent one so the non-matching path formats nothing.
#[derive(Debug, Default)]
pub(crate) struct Why {
    record: bool,
    text: Option<String>,
}

impl Why {
    pub(crate) fn silent() -> Why {
        Why::default()
    }

    pub(crate) fn recording() -> Why {
        Why {
            record: true,
            text: None,
        }
    }

    pub(crate) fn fail(&mut self, reason: impl FnOnce() -> String) {
        if self.record && self.text.is_none() {
            self.text = Some(reason());
        }
    }

    pub(crate) fn take(&mut self) -> Option<String> {
        self.text.take()
    }
}

// === JSON paths ===

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Key(Box<str>),
    Index(usize),
    AnyElement,
}

/// `a.b[*].c[0]`: dot-separated keys, `[*]` any array element (existential), `[N]` an index.
#[derive(Debug, Clone)]
pub(crate) struct JsonPath {
    text: Box<str>,
    segments: Box<[Segment]>,
}

impl JsonPath {
    pub(crate) fn parse(text: &str) -> Result<JsonPath, String> {
        if text.is_empty() {
            return Err("empty JSON path".into());
        }
        let bytes = text.as_bytes();
        let mut segments = Vec::new();
        let mut at = 0;
        // A key is allowed at the start and right after a dot; brackets may follow a key or
        // another bracket, and may also open the path (`[0].id` on a top-level array).
        let mut after_dot = false;
        let mut key_allowed = true;
        while at < bytes.len() {
            match bytes[at] {
                b'.' => {
                    if segments.is_empty() || after_dot {
                        return Err(format!("empty key at byte {at} in `{text}`"));
                    }
                    after_dot = true;
                    key_allowed = true;
                    at += 1;
                }
                b'[' => {
                    if after_dot {
                        return Err(format!("expected a key after `.` at byte {at} in `{text}`"));
                    }
                    let close = text[at..]
                        .find(']')
                        .map(|offset| at + offset)
                        .ok_or_else(|| format!("unclosed `[` at byte {at} in `{text}`"))?;
                    let inside = &text[at + 1..close];
                    let segment =
                        if inside == "*" {
                            Segment::AnyElement
                        } else if !inside.is_empty() && inside.bytes().all(|b| b.is_ascii_digit()) {
                            Segment::Index(inside.parse().map_err(|_| {
                                format!("index `{inside}` is too large in `{text}`")
                            })?)
                        } else {
                            return Err(format!(
                                "`[{inside}]` in `{text}` must be `[*]` or an index like `[0]`"
                            ));
                        };
                    segments.push(segment);
                    key_allowed = false;
                    at = close + 1;
                }
                b']' => return Err(format!("unexpected `]` at byte {at} in `{text}`")),
                _ => {
                    if !key_allowed {
                        return Err(format!("expected `.` or `[` at byte {at} in `{text}`"));
                    }
                    let end = text[at..]
                        .find(['.', '[', ']'])
                        .map_or(text.len(), |offset| at + offset);
                    segments.push(Segment::Key(text[at..end].into()));
                    key_allowed = false;
                    after_dot = false;
                    at = end;
                }
            }
        }
        if after_dot {
            return Err(format!("`{text}` ends with `.`"));
        }
        Ok(JsonPath {
            text: text.into(),
            segments: segments.into_boxed_slice(),
        })
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|segment| match segment {
            Segment::Key(key) => Some(&**key),
            _ => None,
        })
    }

    /// Whether `test` holds for at least one value the path reaches.
    pub(crate) fn any<F: FnMut(&Value) -> bool>(&self, root: &Value, mut test: F) -> bool {
        fn walk<F: FnMut(&Value) -> bool>(value: &Value, rest: &[Segment], test: &mut F) -> bool {
            match rest.split_first() {
                None => test(value),
                Some((Segment::Key(key), rest)) => value
                    .as_object()
                    .and_then(|object| object.get(&**key))
                    .is_some_and(|child| walk(child, rest, test)),
                Some((Segment::Index(index), rest)) => value
                    .as_array()
                    .and_then(|array| array.get(*index))
                    .is_some_and(|child| walk(child, rest, test)),
                Some((Segment::AnyElement, rest)) => value
                    .as_array()
                    .is_some_and(|array| array.iter().any(|child| walk(child, rest, test))),
            }
        }
        walk(root, &self.segments, &mut test)
    }

    /// The first few values the path reaches, for explanations.
    pub(crate) fn show_values(&self, root: &Value) -> String {
        let mut shown = Vec::new();
        self.any(root, |value| {
            let mut text = value.to_string();
            if text.len() > 60 {
                let cut = (0..=57)
                    .rev()
                    .find(|&at| text.is_char_boundary(at))
                    .unwrap_or(0);
                text.truncate(cut);
                text.push_str("...");
            }
            shown.push(text);
            shown.len() == 3
        });
        if shown.is_empty() {
            format!("{} is absent", self.text)
        } else {
            format!("{} is {}", self.text, shown.join(", "))
        }
    }
}

// === Value comparison ===

/// JSON equality where numbers compare by value (`1` equals `1.0`) and strings may ignore case.
pub(crate) fn json_equal(actual: &Value, expected: &Value, ignore_case: bool) -> bool {
    match (actual, expected) {
        (Value::Number(a), Value::Number(b)) => numbers_equal(a, b),
        (Value::String(a), Value::String(b)) => text_equal(a, b, ignore_case),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| json_equal(x, y, ignore_case))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(key, x)| b.get(key).is_some_and(|y| json_equal(x, y, ignore_case)))
        }
        _ => actual == expected,
    }
}

fn numbers_equal(a: &serde_json::Number, b: &serde_json::Number) -> bool {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return x == y;
    }
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

pub(crate) fn text_equal(a: &str, b: &str, ignore_case: bool) -> bool {
    if !ignore_case {
        return a == b;
    }
    if a.is_ascii() && b.is_ascii() {
        return a.eq_ignore_ascii_case(b);
    }
    a.chars()
        .flat_map(char::to_lowercase)
        .eq(b.chars().flat_map(char::to_lowercase))
}

/// The text a scalar stands for when compared with a query, form or header value.
pub(crate) fn scalar_text(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::String(text) => Some(Cow::Borrowed(text)),
        Value::Number(number) => Some(Cow::Owned(number.to_string())),
        Value::Bool(true) => Some(Cow::Borrowed("true")),
        Value::Bool(false) => Some(Cow::Borrowed("false")),
        _ => None,
    }
}

/// `path = "/api/chat.*"`: `**` any characters, `*` any characters except `/`.
pub(crate) fn glob_to_regex(glob: &str) -> String {
    let mut pattern = String::with_capacity(glob.len() * 2 + 2);
    pattern.push('^');
    let mut chars = glob.chars().peekable();
    let mut literal = [0u8; 4];
    while let Some(c) = chars.next() {
        if c == '*' {
            if chars.peek() == Some(&'*') {
                chars.next();
                pattern.push_str(".*");
            } else {
                pattern.push_str("[^/]*");
            }
        } else {
            pattern.push_str(&regex::escape(c.encode_utf8(&mut literal)));
        }
    }
    pattern.push('$');
    pattern
}

/// Status codes as a bitset over 0..1024.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct StatusSet {
    bits: [u64; 16],
    pub(crate) description: Box<str>,
}

impl StatusSet {
    pub(crate) fn new(ranges: &[(u16, u16)], description: String) -> StatusSet {
        let mut bits = [0u64; 16];
        for &(low, high) in ranges {
            for code in low..=high {
                bits[usize::from(code >> 6)] |= 1 << (code & 63);
            }
        }
        StatusSet {
            bits,
            description: description.into(),
        }
    }

    pub(crate) fn contains_code(&self, code: u16) -> bool {
        code < 1024 && self.bits[usize::from(code >> 6)] & (1 << (code & 63)) != 0
    }
}

/// Parses a status range string: `"404"` or `"400-499"`.
pub(crate) fn parse_status_text(text: &str) -> Result<(u16, u16), String> {
    let parse = |part: &str| -> Result<u16, String> {
        let code: u16 = part
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not a status code or a range like \"400-499\""))?;
        check_status_code(i64::from(code))
    };
    match text.split_once('-') {
        Some((low, high)) => {
            let (low, high) = (parse(low)?, parse(high)?);
            if low > high {
                return Err(format!(
                    "status range `{text}` is empty: {low} is above {high}"
                ));
            }
            Ok((low, high))
        }
        None => {
            let code = parse(text)?;
            Ok((code, code))
        }
    }
}

pub(crate) fn check_status_code(code: i64) -> Result<u16, String> {
    match u16::try_from(code) {
        Ok(code) if (100..=999).contains(&code) => Ok(code),
        _ => Err(format!("status code {code} is outside 100-999")),
    }
}

// === The check model ===

/// Where a check reads its values. Unprefixed response parts (`header`, `json`, `body`) are the
/// response's; request parts say `request_`.
#[derive(Debug)]
pub(crate) enum Source {
    Status,
    Method,
    /// The request path without the query.
    UrlPath,
    /// A named group of a `url_path` regex of the same rule; the first regex that captures it.
    PathCapture {
        regexes: Box<[Arc<BytesRegex>]>,
        group: Box<str>,
    },
    Header(HeaderName),
    RequestHeader(HeaderName),
    Json(JsonPath),
    RequestJson(JsonPath),
    /// The raw response body.
    Body,
    Query(Box<str>),
    /// The query parameter if present, else the form field or top-level JSON member.
    RequestField(BodyField),
    Scope(Box<str>),
    /// Whether the request presented a credential (`Authorization`, `x-api-key`, a `token`
    /// parameter).
    Credential,
}

/// How expensive a source is to read, so `all` groups try the cheap checks first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Cost {
    Head,
    ResponseBody,
    Request,
    Scope,
}

impl Source {
    pub(crate) fn cost(&self) -> Cost {
        match self {
            Source::Status
            | Source::Method
            | Source::UrlPath
            | Source::PathCapture { .. }
            | Source::Header(_)
            | Source::RequestHeader(_)
            | Source::Query(_) => Cost::Head,
            Source::Json(_) | Source::Body => Cost::ResponseBody,
            Source::RequestJson(_) | Source::RequestField(_) | Source::Credential => Cost::Request,
            Source::Scope(_) => Cost::Scope,
        }
    }

    /// Decidable from the exchange head alone (for `needs_body`).
    pub(crate) fn in_head(&self) -> bool {
        self.cost() == Cost::Head
    }

    pub(crate) fn reads_response_body(&self) -> bool {
        self.cost() == Cost::ResponseBody
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Comparison {
    Gt,
    Ge,
    Lt,
    Le,
}

/// What a check asks of the values its source yields. A check holds when some value passes.
#[derive(Debug)]
pub(crate) enum Test {
    Equals(Value),
    OneOf(Box<[Value]>),
    /// `status` `equals`/`one_of`, ranges included.
    Codes(StatusSet),
    Contains(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    /// Also what `glob` compiles to, anchored.
    Regex(BytesRegex),
    Exists,
    Compare(Comparison, f64),
    /// Equals the session's scope value under this key.
    EqualsScope(Box<str>),
}

impl Test {
    /// Whether one value passes. `EqualsScope` is decided by the caller, which holds the scope.
    pub(crate) fn passes(&self, value: &Val<'_>, ignore_case: bool) -> bool {
        match self {
            Test::Equals(expected) => value.equals(expected, ignore_case),
            Test::OneOf(expected) => expected
                .iter()
                .any(|candidate| value.equals(candidate, ignore_case)),
            Test::Codes(set) => value.number().is_some_and(|code| {
                (0.0..1024.0).contains(&code) && set.contains_code(code as u16)
            }),
            Test::Contains(needle) => value
                .text()
                .is_some_and(|text| contains(text, needle.as_bytes(), ignore_case)),
            Test::Prefix(prefix) => value.text().is_some_and(|text| {
                text.len() >= prefix.len()
                    && bytes_equal(&text[..prefix.len()], prefix.as_bytes(), ignore_case)
            }),
            Test::Suffix(suffix) => value.text().is_some_and(|text| {
                text.len() >= suffix.len()
                    && bytes_equal(
                        &text[text.len() - suffix.len()..],
                        suffix.as_bytes(),
                        ignore_case,
                    )
            }),
            Test::Regex(regex) => value.text().is_some_and(|text| regex.is_match(text)),
            Test::Exists => true,
            Test::Compare(comparison, bound) => value.number().is_some_and(|n| match comparison {
                Comparison::Gt => n > *bound,
                Comparison::Ge => n >= *bound,
                Comparison::Lt => n < *bound,
                Comparison::Le => n <= *bound,
            }),
            Test::EqualsScope(_) => false,
        }
    }
}

fn bytes_equal(a: &[u8], b: &[u8], ignore_case: bool) -> bool {
    if ignore_case {
        a.eq_ignore_ascii_case(b)
    } else {
        a == b
    }
}

/// Substring search; `ignore_case` folds ASCII letters only (needles are validated ASCII then).
fn contains(haystack: &[u8], needle: &[u8], ignore_case: bool) -> bool {
    if needle.is_empty() {
        return true;
    }
    if !ignore_case {
        return memchr_find(haystack, needle);
    }
    haystack
        .windows(needle.len())
        .any(|window| window.eq_ignore_ascii_case(needle))
}

fn memchr_find(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// One value a source yields.
#[derive(Debug, Clone)]
pub(crate) enum Val<'v> {
    /// Headers, query and form values, the path, path captures, the method.
    Text(Cow<'v, str>),
    /// A node of a request or response JSON body, or a scope value.
    Json(&'v Value),
    /// The raw response body.
    Bytes(&'v [u8]),
    /// The status code.
    Code(u16),
}

impl Val<'_> {
    /// The one comparison rule: JSON values compare by type (numbers by value, `false` is not
    /// `"false"`); text (and the raw body) compares with a scalar by its text, so a query `"42"`
    /// equals `42`; the status compares with numbers.
    pub(crate) fn equals(&self, expected: &Value, ignore_case: bool) -> bool {
        match self {
            Val::Json(actual) => json_equal(actual, expected, ignore_case),
            Val::Code(code) => expected
                .as_f64()
                .is_some_and(|expected| expected == f64::from(*code)),
            Val::Text(text) => scalar_text(expected)
                .is_some_and(|expected| text_equal(text, &expected, ignore_case)),
            Val::Bytes(bytes) => scalar_text(expected)
                .is_some_and(|expected| bytes_equal(bytes, expected.as_bytes(), ignore_case)),
        }
    }

    /// Text for `contains`, `prefix` and `regex`: JSON strings, text, the raw body.
    pub(crate) fn text(&self) -> Option<&[u8]> {
        match self {
            Val::Text(text) => Some(text.as_bytes()),
            Val::Json(Value::String(text)) => Some(text.as_bytes()),
            Val::Bytes(bytes) => Some(bytes),
            Val::Json(_) | Val::Code(_) => None,
        }
    }

    /// A number for comparisons: JSON numbers, the status, text that parses as a number.
    pub(crate) fn number(&self) -> Option<f64> {
        match self {
            Val::Code(code) => Some(f64::from(*code)),
            Val::Json(Value::Number(number)) => number.as_f64(),
            Val::Text(text) => text.trim().parse().ok(),
            Val::Json(_) | Val::Bytes(_) => None,
        }
    }
}

/// One check: a source, a test, and whether the result is negated.
#[derive(Debug)]
pub(crate) struct Check {
    pub(crate) source: Source,
    pub(crate) test: Test,
    pub(crate) negate: bool,
    pub(crate) ignore_case: bool,
    pub(crate) description: Box<str>,
}

/// A compiled `when`, `unless` or guard: checks combined with `all` and `any`.
#[derive(Debug)]
pub(crate) enum Matcher {
    All(Box<[Matcher]>),
    Any(Box<[Matcher]>),
    Check(Box<Check>),
}

impl Matcher {
    /// Whether some check reads the response body (`json`, `body`).
    pub(crate) fn needs_body(&self) -> bool {
        match self {
            Matcher::All(items) | Matcher::Any(items) => items.iter().any(Matcher::needs_body),
            Matcher::Check(check) => check.source.reads_response_body(),
        }
    }

    pub(crate) fn reads_json(&self) -> bool {
        match self {
            Matcher::All(items) | Matcher::Any(items) => items.iter().any(Matcher::reads_json),
            Matcher::Check(check) => matches!(check.source, Source::Json(_)),
        }
    }

    /// The cheapest source the matcher must read, to order `all` groups.
    pub(crate) fn cost(&self) -> Cost {
        match self {
            Matcher::All(items) => items.iter().map(Matcher::cost).min().unwrap_or(Cost::Head),
            Matcher::Any(items) => items.iter().map(Matcher::cost).max().unwrap_or(Cost::Head),
            Matcher::Check(check) => check.source.cost(),
        }
    }

    /// Head-only, conservative: false only when no body, request or scope could make it hold.
    pub(crate) fn may_hold(&self, head: &HeadView<'_>) -> bool {
        match self {
            Matcher::All(items) => items.iter().all(|item| item.may_hold(head)),
            Matcher::Any(items) => items.iter().any(|item| item.may_hold(head)),
            Matcher::Check(check) => {
                if !check.source.in_head() || matches!(check.test, Test::EqualsScope(_)) {
                    return true;
                }
                head.check(check)
            }
        }
    }

    /// The literal alternatives one of which appears in any response body this matcher holds
    /// on; `None` when it can hold without any (see `prefilter.rs`).
    pub(crate) fn required_literals(&self) -> Option<Vec<Vec<u8>>> {
        match self {
            // Every item must hold, so the literals of any one of them are required: take the
            // rarest set.
            Matcher::All(items) => items
                .iter()
                .filter_map(Matcher::required_literals)
                .max_by(crate::rules::prefilter::rarer),
            // One branch is enough, so the union is required, and only if every branch needs one.
            Matcher::Any(items) => {
                let mut union = Vec::new();
                for item in items.iter() {
                    union.extend(item.required_literals()?);
                }
                (!union.is_empty()).then_some(union)
            }
            Matcher::Check(check) => crate::rules::prefilter::check_literals(check),
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Matcher::All(items) | Matcher::Any(items) => {
                let word = if matches!(self, Matcher::All(_)) {
                    "all"
                } else {
                    "any"
                };
                let inner: Vec<String> = items.iter().map(Matcher::describe).collect();
                format!("{word} [{}]", inner.join("; "))
            }
            Matcher::Check(check) => check.description.to_string(),
        }
    }
}

/// The head of an exchange as head checks read it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadView<'a> {
    pub(crate) method: &'a Method,
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) status: StatusCode,
    pub(crate) request_headers: &'a HeaderMap,
    pub(crate) response_headers: &'a HeaderMap,
}

impl HeadView<'_> {
    /// Evaluates a check whose source is in the head.
    pub(crate) fn check(&self, check: &Check) -> bool {
        let held = self.any(&check.source, &mut |value| {
            check.test.passes(value, check.ignore_case)
        });
        held != check.negate
    }

    /// Whether `test` holds for some value of a head source (false for other sources).
    pub(crate) fn any(&self, source: &Source, test: &mut dyn FnMut(&Val<'_>) -> bool) -> bool {
        match source {
            Source::Status => test(&Val::Code(self.status.as_u16())),
            Source::Method => test(&Val::Text(Cow::Borrowed(self.method.as_str()))),
            Source::UrlPath => test(&Val::Text(Cow::Borrowed(self.path))),
            Source::PathCapture { regexes, group } => regexes
                .iter()
                .find_map(|regex| {
                    regex
                        .captures(self.path.as_bytes())
                        .and_then(|captures| captures.name(group))
                })
                .and_then(|found| std::str::from_utf8(found.as_bytes()).ok())
                .is_some_and(|text| test(&Val::Text(Cow::Borrowed(text)))),
            Source::Header(name) => headers_any(self.response_headers, name, test),
            Source::RequestHeader(name) => headers_any(self.request_headers, name, test),
            Source::Query(name) => self.query.is_some_and(|query| {
                form_values(query.as_bytes(), name).any(|value| test(&Val::Text(value)))
            }),
            _ => false,
        }
    }
}

/// A repeated header holds when any of its values passes.
fn headers_any(
    headers: &HeaderMap,
    name: &HeaderName,
    test: &mut dyn FnMut(&Val<'_>) -> bool,
) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .to_str()
            .is_ok_and(|text| test(&Val::Text(Cow::Borrowed(text))))
    })
}

/// Where a `request_field` looks in the body: a form field, or a top-level JSON member.
#[derive(Debug)]
pub(crate) struct BodyField {
    pub(crate) name: Box<str>,
    /// `None` when the name is not a valid JSON path (it can still name a form field).
    pub(crate) path: Option<JsonPath>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(text: &str) -> JsonPath {
        JsonPath::parse(text).unwrap()
    }

    /// Whether `test` passes for some value at `at` in `root`.
    fn holds(root: &Value, at: &str, test: Test) -> bool {
        path(at).any(root, |value| test.passes(&Val::Json(value), false))
    }

    fn regex(pattern: &str) -> Test {
        Test::Regex(build_bytes_regex(pattern).unwrap())
    }

    #[test]
    fn json_path_parses_keys_indexes_and_wildcards() {
        assert_eq!(
            &*path("errors[*].extensions.code").segments,
            &[
                Segment::Key("errors".into()),
                Segment::AnyElement,
                Segment::Key("extensions".into()),
                Segment::Key("code".into()),
            ]
        );
        assert_eq!(
            &*path("[0].id").segments,
            &[Segment::Index(0), Segment::Key("id".into())]
        );
        for bad in [
            "", ".a", "a.", "a..b", "a.[0]", "a[x]", "a[", "a]", "a[0]b", "a[]",
        ] {
            assert!(JsonPath::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn json_path_wildcard_is_existential() {
        let body = json!({"errors": [
            {"extensions": {"code": "RATELIMITED"}},
            {"extensions": {"code": "AUTHENTICATION_ERROR"}}
        ]});
        let wanted = || Test::Equals(json!("AUTHENTICATION_ERROR"));
        assert!(holds(&body, "errors[*].extensions.code", wanted()));
        assert!(!holds(&body, "errors[0].extensions.code", wanted()));
        assert!(holds(
            &body,
            "errors[1].extensions.code",
            Test::OneOf(vec![json!("X"), json!("AUTHENTICATION_ERROR")].into())
        ));
    }

    #[test]
    fn every_test_on_json_values() {
        let body = json!({"ok": false, "error": {"code": -32601, "message": "Bad Credentials"}, "n": 1.0, "remaining": "12"});
        assert!(holds(&body, "ok", Test::Equals(json!(false))));
        assert!(
            !holds(&body, "ok", Test::Equals(json!("false"))),
            "JSON compares by type"
        );
        assert!(holds(&body, "error.code", Test::Equals(json!(-32601))));
        assert!(holds(&body, "n", Test::Equals(json!(1))));
        assert!(holds(&body, "error.message", regex("(?i)bad credentials")));
        assert!(
            !holds(&body, "error.code", regex("3")),
            "regex reads strings only"
        );
        assert!(holds(&body, "error.message", Test::Contains("Cred".into())));
        assert!(!holds(
            &body,
            "error.message",
            Test::Contains("cred".into())
        ));
        assert!(holds(&body, "error.message", Test::Prefix("Bad ".into())));
        assert!(!holds(
            &body,
            "error.message",
            Test::Prefix("Credentials".into())
        ));
        assert!(holds(
            &body,
            "error.message",
            Test::Suffix("Credentials".into())
        ));
        assert!(!holds(&body, "error.message", Test::Suffix("Bad".into())));
        assert!(holds(
            &body,
            "error.code",
            Test::Compare(Comparison::Lt, -32000.0)
        ));
        assert!(!holds(
            &body,
            "error.code",
            Test::Compare(Comparison::Gt, 0.0)
        ));
        assert!(holds(&body, "n", Test::Compare(Comparison::Ge, 1.0)));
        assert!(holds(&body, "n", Test::Compare(Comparison::Le, 1.0)));
        assert!(
            !holds(&body, "remaining", Test::Compare(Comparison::Gt, 0.0)),
            "a JSON string is not a number"
        );
        assert!(holds(&body, "error.code", Test::Exists));
        assert!(!holds(&body, "error.missing", Test::Exists));
        assert!(!holds(&body, "error[0]", Test::Exists));
    }

    #[test]
    fn text_compares_by_its_text_and_parses_as_a_number() {
        let text = |t: &'static str| Val::Text(Cow::Borrowed(t));
        assert!(text("42").equals(&json!(42), false));
        assert!(text("42").equals(&json!("42"), false));
        assert!(text("Owner/Repo").equals(&json!("owner/repo"), true));
        assert!(!text("Owner/Repo").equals(&json!("owner/repo"), false));
        assert!(!text("x").equals(&json!(null), false));
        assert!(Test::Compare(Comparison::Gt, 10.0).passes(&text(" 12 "), false));
        assert!(Test::Contains("CRED".into()).passes(&text("bad credentials"), true));
        assert!(Val::Json(&json!(["a"])).equals(&json!(["A"]), true));
        assert!(
            !Val::Json(&json!(42)).equals(&json!("42"), false),
            "a JSON number is not a string"
        );
        let codes = Test::Codes(StatusSet::new(&[(401, 401), (500, 599)], String::new()));
        assert!(codes.passes(&Val::Code(503), false));
        assert!(!codes.passes(&Val::Code(404), false));
        assert!(Val::Code(404).equals(&json!(404), false));
    }

    #[test]
    fn glob_translation() {
        let matches = |glob: &str, path: &str| {
            build_bytes_regex(&glob_to_regex(glob))
                .unwrap()
                .is_match(path.as_bytes())
        };
        assert!(matches("/api/chat.*", "/api/chat.postMessage"));
        assert!(
            !matches("/api/chat.*", "/api/chatXpostMessage"),
            "`.` is literal"
        );
        assert!(!matches("/api/*", "/api/a/b"), "`*` stops at `/`");
        assert!(matches("/api/**", "/api/a/b"));
        assert!(
            !matches("/repos/*/*/issues", "/repos/o/r/issues/1"),
            "anchored at the end"
        );
        assert!(!matches("/graphql", "/v1/graphql"), "anchored at the start");
        assert!(
            matches("/a+b(c)", "/a+b(c)"),
            "regex metacharacters are literal"
        );
    }

    #[test]
    fn status_sets_and_ranges() {
        let ranges = [
            (401, 401),
            parse_status_text("403-404").unwrap(),
            parse_status_text("500").unwrap(),
        ];
        let set = StatusSet::new(&ranges, String::new());
        for code in [401, 403, 404, 500] {
            assert!(set.contains_code(code), "{code}");
        }
        for code in [400, 402, 405, 499, 501, 999] {
            assert!(!set.contains_code(code), "{code}");
        }
        assert!(parse_status_text("499-400").is_err());
        assert!(parse_status_text("4xx").is_err());
        assert!(parse_status_text("99").is_err());
        assert!(parse_status_text("400-1000").is_err());
        assert_eq!(parse_status_text(" 400 - 499 ").unwrap(), (400, 499));
    }

    #[test]
    fn header_checks_see_every_value_of_a_repeated_header() {
        let mut headers = HeaderMap::new();
        headers.append("x-a", "one".parse().unwrap());
        headers.append("x-a", "two".parse().unwrap());
        let empty = HeaderMap::new();
        let view = HeadView {
            method: &Method::GET,
            path: "/",
            query: None,
            status: StatusCode::OK,
            request_headers: &empty,
            response_headers: &headers,
        };
        let check = |test, negate| Check {
            source: Source::Header(HeaderName::from_static("x-a")),
            test,
            negate,
            ignore_case: false,
            description: "".into(),
        };
        assert!(view.check(&check(Test::Equals(json!("two")), false)));
        assert!(view.check(&check(regex("^o"), false)));
        assert!(view.check(&check(Test::Exists, false)));
        assert!(!view.check(&check(Test::Exists, true)));
        assert!(!view.check(&check(Test::Equals(json!("TWO")), false)));
        assert!(view.check(&check(Test::Equals(json!("TWO")), true)));
    }

    #[test]
    fn text_equal_folds_unicode_case_when_asked() {
        assert!(text_equal("ÉCOLE", "école", true));
        assert!(!text_equal("ÉCOLE", "école", false));
    }
}
