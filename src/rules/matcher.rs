//! Compiled matchers: the pieces a `when`, `unless` or guard table is made of.
//!
//! Each matcher keeps a short description in rule-file syntax so `explain` can say which one
//! failed. Matchers that need the response body or the session scope are evaluated in
//! `evaluate.rs`; the pure tests live here.

use std::borrow::Cow;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, Method, StatusCode};
use regex::{Regex, RegexBuilder};
use serde_json::Value;

/// Compiled size caps for operator-written regexes. The `regex` crate is linear-time; these keep
/// a pathological pattern from taking a lot of memory at load.
pub(crate) const REGEX_SIZE_LIMIT: usize = 1 << 20;
pub(crate) const REGEX_DFA_SIZE_LIMIT: usize = 1 << 20;

pub(crate) fn build_regex(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_DFA_SIZE_LIMIT)
        .build()
}

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

    pub(crate) fn as_str(&self) -> &str {
        &self.text
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

    pub(crate) fn exists(&self, root: &Value) -> bool {
        self.any(root, |_| true)
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

// === Head matchers ===

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

#[derive(Debug)]
pub(crate) struct PathMatcher {
    pub(crate) regex: Arc<Regex>,
    pub(crate) description: Box<str>,
}

impl PathMatcher {
    pub(crate) fn is_match(&self, path: &str) -> bool {
        self.regex.is_match(path)
    }
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

    pub(crate) fn contains(&self, status: StatusCode) -> bool {
        let code = status.as_u16();
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

#[derive(Debug)]
pub(crate) struct MethodSet {
    methods: Box<[Box<str>]>,
    pub(crate) description: Box<str>,
}

impl MethodSet {
    pub(crate) fn new(methods: Vec<String>, description: String) -> MethodSet {
        MethodSet {
            methods: methods.into_iter().map(Into::into).collect(),
            description: description.into(),
        }
    }

    pub(crate) fn contains(&self, method: &Method) -> bool {
        self.methods
            .iter()
            .any(|candidate| candidate.eq_ignore_ascii_case(method.as_str()))
    }
}

#[derive(Debug)]
pub(crate) enum HeaderValueTest {
    Present(bool),
    Equals(Box<str>),
    Regex(Regex),
}

#[derive(Debug)]
pub(crate) struct HeaderTest {
    pub(crate) name: HeaderName,
    pub(crate) test: HeaderValueTest,
    pub(crate) description: Box<str>,
}

impl HeaderTest {
    /// A repeated header holds when any of its values passes the test.
    pub(crate) fn holds(&self, headers: &HeaderMap) -> bool {
        match &self.test {
            HeaderValueTest::Present(wanted) => headers.contains_key(&self.name) == *wanted,
            HeaderValueTest::Equals(expected) => headers
                .get_all(&self.name)
                .iter()
                .any(|value| value.as_bytes() == expected.as_bytes()),
            HeaderValueTest::Regex(regex) => headers
                .get_all(&self.name)
                .iter()
                .any(|value| value.to_str().is_ok_and(|text| regex.is_match(text))),
        }
    }
}

/// Method, path, status and header matchers: everything decidable from the response head.
#[derive(Debug, Default)]
pub(crate) struct HeadMatcher {
    pub(crate) methods: Option<MethodSet>,
    pub(crate) path: Option<PathMatcher>,
    pub(crate) status: Option<StatusSet>,
    pub(crate) headers: Vec<HeaderTest>,
    pub(crate) request_headers: Vec<HeaderTest>,
}

impl HeadMatcher {
    pub(crate) fn holds(
        &self,
        method: &Method,
        path: &str,
        status: StatusCode,
        request_headers: &HeaderMap,
        response_headers: &HeaderMap,
        why: &mut Why,
    ) -> bool {
        if let Some(methods) = &self.methods {
            if !methods.contains(method) {
                why.fail(|| format!("{} did not hold (method is {method})", methods.description));
                return false;
            }
        }
        if let Some(set) = &self.status {
            if !set.contains(status) {
                why.fail(|| {
                    format!(
                        "{} did not hold (status is {})",
                        set.description,
                        status.as_u16()
                    )
                });
                return false;
            }
        }
        if let Some(matcher) = &self.path {
            if !matcher.is_match(path) {
                why.fail(|| format!("{} did not hold (path is {path})", matcher.description));
                return false;
            }
        }
        for test in &self.headers {
            if !test.holds(response_headers) {
                why.fail(|| format!("{} did not hold", test.description));
                return false;
            }
        }
        for test in &self.request_headers {
            if !test.holds(request_headers) {
                why.fail(|| format!("{} did not hold", test.description));
                return false;
            }
        }
        true
    }
}

// === Body matchers ===

#[derive(Debug)]
pub(crate) enum ValueTest {
    Equals(Value),
    OneOf(Vec<Value>),
    Regex(Regex),
    Exists(bool),
}

#[derive(Debug)]
pub(crate) struct JsonTest {
    pub(crate) path: JsonPath,
    pub(crate) test: ValueTest,
    pub(crate) description: Box<str>,
}

impl JsonTest {
    pub(crate) fn holds(&self, root: &Value) -> bool {
        match &self.test {
            ValueTest::Exists(wanted) => self.path.exists(root) == *wanted,
            ValueTest::Equals(expected) => self
                .path
                .any(root, |value| json_equal(value, expected, false)),
            ValueTest::OneOf(expected) => self.path.any(root, |value| {
                expected
                    .iter()
                    .any(|candidate| json_equal(value, candidate, false))
            }),
            ValueTest::Regex(regex) => self.path.any(root, |value| {
                value.as_str().is_some_and(|text| regex.is_match(text))
            }),
        }
    }
}

#[derive(Debug)]
pub(crate) struct BodyRegex {
    pub(crate) regex: regex::bytes::Regex,
    pub(crate) pattern: Box<str>,
    pub(crate) description: Box<str>,
}

// === Request matchers ===

/// Where a `body = "..."` source looks: a JSON path for JSON bodies, a field name for forms.
#[derive(Debug)]
pub(crate) struct BodyField {
    pub(crate) name: Box<str>,
    /// `None` when the name is not a valid JSON path (it can still name a form field).
    pub(crate) path: Option<JsonPath>,
}

#[derive(Debug)]
pub(crate) enum RequestSource {
    Query(Box<str>),
    Body(BodyField),
    PathCapture {
        regex: Arc<Regex>,
        group: Box<str>,
    },
    Header(HeaderName),
    /// Query parameter, else body field.
    Field(BodyField),
}

#[derive(Debug)]
pub(crate) enum RequestValueTest {
    Equals(Value),
    OneOf(Vec<Value>),
    Regex(Regex),
    Exists(bool),
    EqualsScope(Box<str>),
}

#[derive(Debug)]
pub(crate) struct RequestTest {
    pub(crate) source: RequestSource,
    pub(crate) test: RequestValueTest,
    pub(crate) ignore_case: bool,
    pub(crate) description: Box<str>,
}

/// A value read from the request: text from the query, a form, a header or a path capture, or a
/// node of a JSON body.
#[derive(Debug, Clone)]
pub(crate) enum RequestValue<'v> {
    Text(Cow<'v, str>),
    Json(&'v Value),
}

impl RequestValue<'_> {
    /// Compares with an expected value from the rule or the session scope. Scalars compare by
    /// their text so a query `"42"` equals a scope value `42`.
    pub(crate) fn equals(&self, expected: &Value, ignore_case: bool) -> bool {
        let actual = match self {
            RequestValue::Text(text) => Cow::Borrowed(&**text),
            RequestValue::Json(value) => match (value, expected) {
                (Value::Number(a), Value::Number(b)) => return numbers_equal(a, b),
                _ => match scalar_text(value) {
                    Some(text) => text,
                    None => return json_equal(value, expected, ignore_case),
                },
            },
        };
        match scalar_text(expected) {
            Some(expected) => text_equal(&actual, &expected, ignore_case),
            None => false,
        }
    }

    pub(crate) fn is_match(&self, regex: &Regex) -> bool {
        match self {
            RequestValue::Text(text) => regex.is_match(text),
            RequestValue::Json(value) => value.as_str().is_some_and(|text| regex.is_match(text)),
        }
    }
}

/// A compiled `when`, `unless` or guard table.
#[derive(Debug)]
pub(crate) struct MatchTable {
    pub(crate) head: Arc<HeadMatcher>,
    pub(crate) body_regex: Option<BodyRegex>,
    pub(crate) json: Vec<JsonTest>,
    pub(crate) request: Vec<RequestTest>,
    pub(crate) scope_absent: Option<Box<str>>,
}

impl MatchTable {
    pub(crate) fn needs_body(&self) -> bool {
        self.body_regex.is_some() || !self.json.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(text: &str) -> JsonPath {
        JsonPath::parse(text).unwrap()
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
        assert_eq!(
            &*path("a[1][*]").segments,
            &[
                Segment::Key("a".into()),
                Segment::Index(1),
                Segment::AnyElement
            ]
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
        let test = JsonTest {
            path: path("errors[*].extensions.code"),
            test: ValueTest::Equals(json!("AUTHENTICATION_ERROR")),
            description: "".into(),
        };
        assert!(test.holds(&body));
        let first_only = JsonTest {
            path: path("errors[0].extensions.code"),
            test: ValueTest::Equals(json!("AUTHENTICATION_ERROR")),
            description: "".into(),
        };
        assert!(!first_only.holds(&body));
        let second = JsonTest {
            path: path("errors[1].extensions.code"),
            test: ValueTest::OneOf(vec![json!("X"), json!("AUTHENTICATION_ERROR")]),
            description: "".into(),
        };
        assert!(second.holds(&body));
    }

    #[test]
    fn json_tests_cover_exists_regex_and_numbers() {
        let body =
            json!({"ok": false, "error": {"code": -32601, "message": "Bad Credentials"}, "n": 1.0});
        let holds = |p: &str, test: ValueTest| {
            JsonTest {
                path: path(p),
                test,
                description: "".into(),
            }
            .holds(&body)
        };
        assert!(holds("ok", ValueTest::Equals(json!(false))));
        assert!(!holds("ok", ValueTest::Equals(json!("false"))));
        assert!(holds("error.code", ValueTest::Equals(json!(-32601))));
        assert!(holds("n", ValueTest::Equals(json!(1))));
        assert!(holds(
            "error.message",
            ValueTest::Regex(build_regex("(?i)bad credentials").unwrap())
        ));
        assert!(!holds(
            "error.code",
            ValueTest::Regex(build_regex("3").unwrap())
        ));
        assert!(holds("error.code", ValueTest::Exists(true)));
        assert!(holds("error.missing", ValueTest::Exists(false)));
        assert!(!holds("ok.deeper", ValueTest::Exists(true)));
        assert!(!holds("error[0]", ValueTest::Exists(true)));
    }

    #[test]
    fn glob_translation() {
        let matches =
            |glob: &str, path: &str| Regex::new(&glob_to_regex(glob)).unwrap().is_match(path);
        assert!(matches("/api/chat.*", "/api/chat.postMessage"));
        assert!(
            !matches("/api/chat.*", "/api/chatXpostMessage"),
            "`.` is literal"
        );
        assert!(!matches("/api/*", "/api/a/b"), "`*` stops at `/`");
        assert!(matches("/api/**", "/api/a/b"));
        assert!(matches("/repos/*/*/issues", "/repos/o/r/issues"));
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
            assert!(set.contains(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [400, 402, 405, 499, 501, 999] {
            assert!(!set.contains(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        assert!(parse_status_text("499-400").is_err());
        assert!(parse_status_text("4xx").is_err());
        assert!(parse_status_text("99").is_err());
        assert!(parse_status_text("400-1000").is_err());
        assert_eq!(parse_status_text(" 400 - 499 ").unwrap(), (400, 499));
    }

    #[test]
    fn header_tests_see_every_value_of_a_repeated_header() {
        let mut headers = HeaderMap::new();
        headers.append("x-a", "one".parse().unwrap());
        headers.append("x-a", "two".parse().unwrap());
        let test = |test| HeaderTest {
            name: HeaderName::from_static("x-a"),
            test,
            description: "".into(),
        };
        assert!(test(HeaderValueTest::Equals("two".into())).holds(&headers));
        assert!(test(HeaderValueTest::Regex(build_regex("^o").unwrap())).holds(&headers));
        assert!(test(HeaderValueTest::Present(true)).holds(&headers));
        assert!(!test(HeaderValueTest::Present(false)).holds(&headers));
        assert!(!test(HeaderValueTest::Equals("TWO".into())).holds(&headers));
    }

    #[test]
    fn request_values_compare_scalars_by_text() {
        assert!(RequestValue::Text("42".into()).equals(&json!(42), false));
        assert!(RequestValue::Json(&json!(42)).equals(&json!("42"), false));
        assert!(RequestValue::Json(&json!(42)).equals(&json!(42.0), false));
        assert!(RequestValue::Text("Owner/Repo".into()).equals(&json!("owner/repo"), true));
        assert!(!RequestValue::Text("Owner/Repo".into()).equals(&json!("owner/repo"), false));
        assert!(!RequestValue::Text("x".into()).equals(&json!(null), false));
        assert!(RequestValue::Json(&json!(["a"])).equals(&json!(["A"]), true));
    }

    #[test]
    fn text_equal_folds_unicode_case_when_asked() {
        assert!(text_equal("ÉCOLE", "école", true));
        assert!(!text_equal("ÉCOLE", "école", false));
    }
}
