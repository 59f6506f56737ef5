//! Raw rule-file types, mirroring the TOML one to one.
//!
//! These are what the operator wrote, with byte spans kept for error reporting. Nothing here is
//! validated beyond TOML shape; `compile` turns them into matchers and reports semantic errors.
//!
//! Each `[[rule]]` and `[[guard]]` table is deserialized on its own, so one broken rule does not
//! hide the errors of the next one.

use std::fmt;
use std::ops::Range;

use serde::de::{self, Deserializer, IntoDeserializer as _, Visitor};
use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

/// One parsed rule file. Tables that failed to deserialize are left out; their errors are in the
/// error list returned next to it.
#[derive(Debug, Default)]
pub struct RuleFileSpec {
    pub schema: Option<Spanned<i64>>,
    pub guards: Vec<Located<GuardSpec>>,
    pub rules: Vec<Located<RuleSpec>>,
}

/// A table together with the span of its header (`[[rule]]`) or inline table.
#[derive(Debug)]
pub struct Located<T> {
    pub span: Range<usize>,
    pub spec: T,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardSpec {
    pub name: Spanned<String>,
    #[serde(default)]
    pub description: Option<String>,
    pub when: MatchSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub id: Spanned<String>,
    /// Kept as text so an unknown class is reported with the other semantic errors.
    pub class: Spanned<String>,
    pub description: Spanned<String>,
    #[serde(default)]
    pub priority: i64,
    #[serde(default)]
    pub mode: Option<Spanned<String>>,
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    #[serde(default)]
    pub skip_guards: Vec<Spanned<String>>,
    #[serde(default)]
    pub reason: Option<String>,
    pub when: MatchSpec,
    #[serde(default)]
    pub unless: Vec<MatchSpec>,
}

fn default_enabled() -> bool {
    true
}

/// The matcher table shared by `when`, `unless` and guards. All present matchers must hold.
///
/// Tables themselves are never wrapped in `Spanned`: a `[rule.when]` section loses its own span
/// when it is lifted out of the document, only its keys and values keep theirs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    pub method: Option<Spanned<Vec<Spanned<String>>>>,
    pub path: Option<Spanned<String>>,
    pub path_regex: Option<Spanned<String>>,
    pub status: Option<Spanned<Vec<Spanned<StatusSpec>>>>,
    pub header: Option<Vec<HeaderTestSpec>>,
    pub request_header: Option<Vec<HeaderTestSpec>>,
    pub json: Option<Vec<JsonTestSpec>>,
    pub body_regex: Option<Spanned<String>>,
    pub request: Option<Vec<RequestTestSpec>>,
    pub scope_absent: Option<Spanned<String>>,
}

impl MatchSpec {
    pub fn is_empty(&self) -> bool {
        self.method.is_none()
            && self.path.is_none()
            && self.path_regex.is_none()
            && self.status.is_none()
            && self.header.is_none()
            && self.request_header.is_none()
            && self.json.is_none()
            && self.body_regex.is_none()
            && self.request.is_none()
            && self.scope_absent.is_none()
    }
}

/// One `status` entry: a code (`401`) or a string (`"401"`, `"400-499"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusSpec {
    Code(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for StatusSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StatusVisitor;
        impl Visitor<'_> for StatusVisitor {
            type Value = StatusSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a status code like 401 or a range string like \"400-499\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StatusSpec, E> {
                Ok(StatusSpec::Code(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<StatusSpec, E> {
                Ok(StatusSpec::Code(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StatusSpec, E> {
                Ok(StatusSpec::Text(v.to_owned()))
            }
        }
        deserializer.deserialize_any(StatusVisitor)
    }
}

/// `{ name = "...", regex | equals | present = ... }` over response or request headers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderTestSpec {
    pub name: Spanned<String>,
    pub regex: Option<Spanned<String>>,
    pub equals: Option<Spanned<String>>,
    pub present: Option<Spanned<bool>>,
}

/// `{ path = "...", equals | one_of | regex | exists = ... }` over the response JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonTestSpec {
    pub path: Spanned<String>,
    pub equals: Option<Spanned<Value>>,
    pub one_of: Option<Spanned<Vec<Value>>>,
    pub regex: Option<Spanned<String>>,
    pub exists: Option<Spanned<bool>>,
}

/// One `request` entry: exactly one source and exactly one test.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestTestSpec {
    pub query: Option<Spanned<String>>,
    pub body: Option<Spanned<String>>,
    pub path_capture: Option<Spanned<String>>,
    pub header: Option<Spanned<String>>,
    pub field: Option<Spanned<String>>,
    pub equals: Option<Spanned<Value>>,
    pub one_of: Option<Spanned<Vec<Value>>>,
    pub regex: Option<Spanned<String>>,
    pub exists: Option<Spanned<bool>>,
    pub present: Option<Spanned<bool>>,
    pub equals_scope: Option<Spanned<String>>,
    #[serde(default)]
    pub ignore_case: bool,
}

/// A problem found while reading the TOML, before any semantic check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub span: Option<Range<usize>>,
    pub message: String,
}

impl SpecError {
    fn new(span: Option<Range<usize>>, message: impl Into<String>) -> Self {
        SpecError {
            span,
            message: message.into(),
        }
    }
}

/// Parses one rule file. Returns what could be read (`None` when the text is not TOML at all)
/// plus every error found.
pub fn parse_rule_file(text: &str) -> (Option<RuleFileSpec>, Vec<SpecError>) {
    let mut spec = RuleFileSpec::default();
    let mut errors = Vec::new();
    let document = match toml_edit::ImDocument::parse(text) {
        Ok(document) => document,
        Err(error) => {
            errors.push(SpecError::new(error.span(), one_line(error.message())));
            return (None, errors);
        }
    };
    let root = document.as_table();
    for (key, item) in root.iter() {
        let key_span = root.key(key).and_then(|k| k.span());
        match key {
            "schema" => match item.as_integer() {
                Some(schema) => {
                    let span = item.span().unwrap_or(0..0);
                    spec.schema = Some(Spanned::new(span, schema));
                }
                None => errors.push(SpecError::new(
                    item.span().or(key_span),
                    "`schema` must be an integer (the only known schema is 1)",
                )),
            },
            "guard" => {
                for (span, table) in tables_of(item, key_span.clone(), &mut errors, "guard") {
                    match GuardSpec::deserialize(table.into_deserializer()) {
                        Ok(guard) => spec.guards.push(Located { span, spec: guard }),
                        Err(error) => errors.push(from_de_error(&error, span)),
                    }
                }
            }
            "rule" => {
                for (span, table) in tables_of(item, key_span.clone(), &mut errors, "rule") {
                    match RuleSpec::deserialize(table.into_deserializer()) {
                        Ok(rule) => spec.rules.push(Located { span, spec: rule }),
                        Err(error) => errors.push(from_de_error(&error, span)),
                    }
                }
            }
            other => errors.push(SpecError::new(
                key_span,
                format!(
                    "unknown top-level key `{other}`, expected one of `schema`, `guard`, `rule`"
                ),
            )),
        }
    }
    (Some(spec), errors)
}

/// toml's messages put details on further lines; the caret excerpt needs one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(": ")
}

/// The tables under `[[rule]]` (or an inline array of tables), each as a standalone value that
/// still carries the spans of its keys and values.
fn tables_of(
    item: &toml_edit::Item,
    key_span: Option<Range<usize>>,
    errors: &mut Vec<SpecError>,
    name: &str,
) -> Vec<(Range<usize>, toml_edit::Value)> {
    let fallback = key_span.clone().unwrap_or(0..0);
    match item {
        toml_edit::Item::ArrayOfTables(tables) => tables
            .iter()
            .map(|table| {
                let span = table.span().unwrap_or_else(|| fallback.clone());
                let value = toml_edit::Item::Table(table.clone())
                    .into_value()
                    .expect("a table converts to an inline table");
                (span, value)
            })
            .collect(),
        toml_edit::Item::Value(toml_edit::Value::Array(array)) => {
            let mut tables = Vec::new();
            for value in array.iter() {
                let span = value.span().unwrap_or_else(|| fallback.clone());
                if value.is_inline_table() {
                    tables.push((span, value.clone()));
                } else {
                    errors.push(SpecError::new(
                        Some(span),
                        format!("every `{name}` entry must be a table"),
                    ));
                }
            }
            tables
        }
        other => {
            errors.push(SpecError::new(
                other.span().or(key_span),
                format!("`{name}` must be an array of tables, written as [[{name}]]"),
            ));
            Vec::new()
        }
    }
}

fn from_de_error(error: &toml_edit::de::Error, table_span: Range<usize>) -> SpecError {
    SpecError::new(
        Some(error.span().unwrap_or(table_span)),
        one_line(error.message()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rules_and_guards_with_spans() {
        let text = r#"schema = 1

[[guard]]
name = "slack.ratelimited"
[guard.when]
json = [{ path = "error", equals = "ratelimited" }]

[[rule]]
id = "slack.not_in_channel"
class = "lost_access"
description = "Removed."
[rule.when]
status = [200, "400-499"]
json = [{ path = "error", one_of = ["not_in_channel"] }]
"#;
        let (spec, errors) = parse_rule_file(text);
        assert_eq!(errors, vec![]);
        let spec = spec.unwrap();
        assert_eq!(spec.schema.as_ref().map(|s| *s.get_ref()), Some(1));
        assert_eq!(spec.guards.len(), 1);
        let rule = &spec.rules[0].spec;
        assert_eq!(&text[rule.id.span()], "\"slack.not_in_channel\"");
        let status = rule.when.status.as_ref().unwrap();
        assert_eq!(&text[status.get_ref()[1].span()], "\"400-499\"");
        let json = rule.when.json.as_ref().unwrap();
        assert_eq!(&text[json[0].path.span()], "\"error\"");
    }

    #[test]
    fn collects_errors_from_several_rules() {
        let text = r#"schema = 1
[[rule]]
id = "a"
class = "lost_access"
description = "x"
[rule.when]
staus = [200]

[[rule]]
id = "b"
clas = "lost_access"
description = "x"
when = { status = [200] }
"#;
        let (spec, errors) = parse_rule_file(text);
        assert!(spec.unwrap().rules.is_empty());
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].message.contains("unknown field `staus`"));
        assert_eq!(&text[errors[0].span.clone().unwrap()], "staus");
        assert!(errors[1].message.contains("unknown field `clas`"));
        assert_eq!(&text[errors[1].span.clone().unwrap()], "clas");
    }

    #[test]
    fn reports_toml_syntax_errors_with_a_span() {
        let (spec, errors) = parse_rule_file("schema = 1\n[[rule]\n");
        assert!(spec.is_none());
        assert_eq!(errors.len(), 1);
        assert!(errors[0].span.is_some());
        assert!(!errors[0].message.contains('\n'), "{}", errors[0].message);
    }

    #[test]
    fn rejects_unknown_top_level_keys() {
        let text = "schema = 1\nrules = []\n";
        let (_, errors) = parse_rule_file(text);
        assert_eq!(errors.len(), 1);
        assert_eq!(&text[errors[0].span.clone().unwrap()], "rules");
    }
}
