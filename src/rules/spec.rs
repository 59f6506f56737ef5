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
    /// `[lists]`: named value lists that `one_of` may reference by name.
    pub lists: Vec<(Spanned<String>, Spanned<Vec<Value>>)>,
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
    pub when: ItemSpec,
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
    pub when: ItemSpec,
    #[serde(default)]
    pub unless: Vec<ItemSpec>,
}

fn default_enabled() -> bool {
    true
}

/// One item of a matcher: a group (`{ all = [...] }` or `{ any = [...] }`) or a check
/// (`{ source = "...", <test> = ... }`). `when`, `unless` and a guard's `when` are groups.
///
/// Kept as its keys in file order, each with its span, so the compiler can name every unknown
/// or old key exactly where it was written.
#[derive(Debug, Default)]
pub struct ItemSpec {
    pub entries: Vec<(Spanned<String>, ItemValue)>,
}

#[derive(Debug)]
pub enum ItemValue {
    /// The items of `all` or `any`.
    Group(Spanned<Vec<Spanned<ItemSpec>>>),
    Value(Spanned<Value>),
}

impl ItemSpec {
    pub fn get(&self, key: &str) -> Option<&ItemValue> {
        self.entries
            .iter()
            .find(|(name, _)| name.get_ref() == key)
            .map(|(_, value)| value)
    }
}

impl<'de> Deserialize<'de> for ItemSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ItemVisitor;
        impl<'de> Visitor<'de> for ItemVisitor {
            type Value = ItemSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table: a check `{ source = ..., <test> = ... }` or a group `{ all = [...] }`")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<ItemSpec, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    let value = match key.get_ref().as_str() {
                        "all" | "any" => ItemValue::Group(map.next_value()?),
                        _ => ItemValue::Value(map.next_value()?),
                    };
                    entries.push((key, value));
                }
                Ok(ItemSpec { entries })
            }
        }
        deserializer.deserialize_map(ItemVisitor)
    }
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
            "lists" => match item.as_table_like() {
                Some(table) => {
                    for (name, value) in table.iter() {
                        let name_span = table.key(name).and_then(|k| k.span()).unwrap_or(0..0);
                        let value = match value.clone().into_value() {
                            Ok(value) => value,
                            Err(_) => {
                                errors.push(SpecError::new(
                                    Some(name_span),
                                    format!("list `{name}` must be an array of values"),
                                ));
                                continue;
                            }
                        };
                        match Spanned::<Vec<Value>>::deserialize(value.into_deserializer()) {
                            Ok(values) => spec
                                .lists
                                .push((Spanned::new(name_span, name.to_owned()), values)),
                            Err(error) => errors.push(from_de_error(&error, name_span)),
                        }
                    }
                }
                None => errors.push(SpecError::new(
                    item.span().or(key_span),
                    "`lists` must be a table of named arrays, written as [lists]",
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
                    "unknown top-level key `{other}`, expected one of `schema`, `lists`, `guard`, `rule`"
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
    fn reads_rules_guards_and_lists_with_spans() {
        let text = r#"schema = 2

[lists]
gone = ["not_in_channel", "channel_not_found"]

[[guard]]
name = "slack.ratelimited"
[guard.when]
all = [{ source = "json", path = "error", equals = "ratelimited" }]

[[rule]]
id = "slack.not_in_channel"
class = "lost_access"
description = "Removed."
[rule.when]
all = [
  { source = "status", one_of = [200, "400-499"] },
  { any = [{ source = "json", path = "error", one_of = "gone" }] },
]
"#;
        let (spec, errors) = parse_rule_file(text);
        assert_eq!(errors, vec![]);
        let spec = spec.unwrap();
        assert_eq!(spec.schema.as_ref().map(|s| *s.get_ref()), Some(2));
        assert_eq!(spec.guards.len(), 1);
        assert_eq!(&text[spec.lists[0].0.span()], "gone");
        assert_eq!(spec.lists[0].1.get_ref().len(), 2);
        let rule = &spec.rules[0].spec;
        assert_eq!(&text[rule.id.span()], "\"slack.not_in_channel\"");
        let Some(ItemValue::Group(items)) = rule.when.get("all") else {
            panic!("`all` is a group");
        };
        let status = items.get_ref()[0].get_ref();
        let Some(ItemValue::Value(codes)) = status.get("one_of") else {
            panic!("one_of is a value");
        };
        assert_eq!(&text[codes.span()], "[200, \"400-499\"]");
        let Some(ItemValue::Group(inner)) = items.get_ref()[1].get_ref().get("any") else {
            panic!("nested `any`");
        };
        let key = &inner.get_ref()[0].get_ref().entries[1].0;
        assert_eq!(&text[key.span()], "path");
    }

    #[test]
    fn collects_errors_from_several_rules() {
        let text = r#"schema = 2
[[rule]]
id = "a"
clas = "lost_access"
description = "x"
[rule.when]
all = []

[[rule]]
id = "b"
class = "lost_access"
descriptin = "x"
when = { all = [] }
"#;
        let (spec, errors) = parse_rule_file(text);
        assert!(spec.unwrap().rules.is_empty());
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].message.contains("unknown field `clas`"));
        assert_eq!(&text[errors[0].span.clone().unwrap()], "clas");
        assert!(errors[1].message.contains("unknown field `descriptin`"));
        assert_eq!(&text[errors[1].span.clone().unwrap()], "descriptin");
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
        let text = "schema = 2\nrules = []\n";
        let (_, errors) = parse_rule_file(text);
        assert_eq!(errors.len(), 1);
        assert_eq!(&text[errors[0].span.clone().unwrap()], "rules");
    }
}
