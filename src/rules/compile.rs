//! Rule files to compiled rules. Every error in every file is collected, each with its
//! file:line:column and a caret excerpt, so one `rules check` run shows them all.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use http::HeaderName;
use regex::bytes::Regex as BytesRegex;
use serde_json::Value;
use toml::Spanned;

use super::decision::{Class, Mode};
use super::matcher::{
    build_bytes_regex, check_status_code, glob_to_regex, parse_status_text, BodyField, Check,
    Comparison, JsonPath, Matcher, Source, StatusSet, Test,
};
use super::prefilter::Prefilter;
use super::spec::{parse_rule_file, GuardSpec, ItemSpec, ItemValue, RuleSpec, SpecError};

/// The name `skip_guards` uses for the built-in transient guard.
pub const TRANSIENT_GUARD: &str = "transient";

/// One rule file given as text: shown as `display_path` in errors; its `provider` is the file stem.
#[derive(Debug, Clone)]
pub struct RuleSource {
    pub display_path: String,
    pub provider: String,
    pub text: String,
}

impl RuleSource {
    pub fn new(
        display_path: impl Into<String>,
        provider: impl Into<String>,
        text: impl Into<String>,
    ) -> RuleSource {
        RuleSource {
            display_path: display_path.into(),
            provider: provider.into(),
            text: text.into(),
        }
    }
}

/// One problem in the rule files.
#[derive(Debug, Clone)]
pub struct RuleError {
    file: Arc<str>,
    text: Option<Arc<str>>,
    span: Option<Range<usize>>,
    message: String,
    notes: Vec<String>,
}

impl RuleError {
    /// An error about a whole file or directory, with no position.
    pub fn unlocated(file: impl Into<Arc<str>>, message: impl Into<String>) -> RuleError {
        RuleError {
            file: file.into(),
            text: None,
            span: None,
            message: message.into(),
            notes: Vec::new(),
        }
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// 1-based line and column (in characters) of the start of the error.
    pub fn line_column(&self) -> Option<(usize, usize)> {
        let (text, span) = (self.text.as_deref()?, self.span.as_ref()?);
        Some(line_column(text, span.start))
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(text, offset);
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |at| at + 1);
    (line, text[line_start..offset].chars().count() + 1)
}

fn floor_char_boundary(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

impl fmt::Display for RuleError {
    /// Rendered like rustc: message, `--> file:line:col`, the source line and carets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "error: {}", self.message)?;
        let located = self.text.as_deref().zip(self.span.clone());
        let Some((text, span)) = located else {
            writeln!(f, "  --> {}", self.file)?;
            for note in &self.notes {
                writeln!(f, "  = note: {note}")?;
            }
            return Ok(());
        };
        let (line, column) = line_column(text, span.start);
        let start = floor_char_boundary(text, span.start);
        let line_start = text[..start].rfind('\n').map_or(0, |at| at + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |at| start + at);
        let source_line = text[line_start..line_end].trim_end_matches('\r');
        let end = floor_char_boundary(text, span.end.clamp(start, line_end));
        let carets = text[start..end].chars().count().max(1);
        let width = line.to_string().len();
        let pad = "";
        writeln!(f, "{pad:width$}--> {}:{line}:{column}", self.file)?;
        writeln!(f, "{pad:width$} |")?;
        writeln!(f, "{line:>width$} | {source_line}")?;
        let lead: String = source_line
            .chars()
            .take(column - 1)
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        writeln!(f, "{pad:width$} | {lead}{}", "^".repeat(carets))?;
        for note in &self.notes {
            writeln!(f, "{pad:width$} = note: {note}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RuleError {}

/// Every error found while loading a rule set.
#[derive(Debug, Clone)]
pub struct RuleErrors(Vec<RuleError>);

impl RuleErrors {
    pub fn new(errors: Vec<RuleError>) -> RuleErrors {
        RuleErrors(errors)
    }

    pub fn errors(&self) -> &[RuleError] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for RuleErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RuleErrors {}

// === Compiled rules ===

#[derive(Debug)]
pub(crate) struct Rule {
    pub(crate) id: Arc<str>,
    pub(crate) class: Class,
    pub(crate) reason: Arc<str>,
    pub(crate) priority: i64,
    pub(crate) mode: Mode,
    pub(crate) enabled: bool,
    pub(crate) when: Matcher,
    pub(crate) unless: Vec<Matcher>,
    /// Whether the built-in transient guard applies (not listed in `skip_guards`).
    pub(crate) transient_guard: bool,
    /// Indexes of the file guards that apply.
    pub(crate) guards: Vec<usize>,
}

#[derive(Debug)]
pub(crate) struct Guard {
    pub(crate) name: Arc<str>,
    pub(crate) table: Matcher,
}

#[derive(Debug)]
pub(crate) struct ProviderRules {
    pub(crate) name: Arc<str>,
    /// All rules, disabled ones included, in evaluation order: priority desc, then file order.
    pub(crate) rules: Vec<Rule>,
    pub(crate) guards: Vec<Guard>,
    pub(crate) prefilter: Prefilter,
    pub(crate) has_shadow: bool,
}

/// Where a rule id was first defined, to point duplicates at it.
struct FirstDefinition {
    file: Arc<str>,
    text: Arc<str>,
    span: Range<usize>,
}

type RuleIds = HashMap<String, FirstDefinition>;

/// Compiles every source; returns the providers sorted by name, or every error found.
pub(crate) fn compile(sources: Vec<RuleSource>) -> Result<Vec<ProviderRules>, RuleErrors> {
    let mut errors = Vec::new();
    let mut providers = Vec::new();
    let mut ids = RuleIds::new();
    let mut seen_providers: HashMap<String, Arc<str>> = HashMap::new();
    let mut sources = sources;
    sources.sort_by(|a, b| a.provider.cmp(&b.provider));
    for source in sources {
        let file: Arc<str> = source.display_path.into();
        if let Some(first) = seen_providers.get(&source.provider) {
            errors.push(RuleError::unlocated(
                file.clone(),
                format!(
                    "provider `{}` is already defined by {first}",
                    source.provider
                ),
            ));
            continue;
        }
        seen_providers.insert(source.provider.clone(), file.clone());
        let mut compiler = FileCompiler {
            file,
            text: source.text.into(),
            errors: &mut errors,
            lists: HashMap::new(),
            captures: Vec::new(),
        };
        if let Some(provider) = compiler.compile_file(&source.provider, &mut ids) {
            providers.push(provider);
        }
    }
    if errors.is_empty() {
        Ok(providers)
    } else {
        Err(RuleErrors(errors))
    }
}

struct FileCompiler<'e> {
    file: Arc<str>,
    text: Arc<str>,
    errors: &'e mut Vec<RuleError>,
    /// The file's `[lists]`, by name.
    lists: HashMap<String, Vec<Value>>,
    /// The named-group `url_path` regexes of the rule being compiled, for `path_capture`.
    captures: Vec<Arc<BytesRegex>>,
}

impl FileCompiler<'_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.errors.push(RuleError {
            file: self.file.clone(),
            text: Some(self.text.clone()),
            span: Some(span),
            message: message.into(),
            notes: Vec::new(),
        });
    }

    fn error_with_note(&mut self, span: Range<usize>, message: String, note: String) {
        self.error(span, message);
        if let Some(error) = self.errors.last_mut() {
            error.notes.push(note);
        }
    }

    fn spec_error(&mut self, error: SpecError) {
        self.errors.push(RuleError {
            file: self.file.clone(),
            text: Some(self.text.clone()),
            span: Some(error.span.unwrap_or(0..0)),
            message: error.message,
            notes: Vec::new(),
        });
    }

    fn compile_file(&mut self, provider: &str, ids: &mut RuleIds) -> Option<ProviderRules> {
        let errors_before = self.errors.len();
        if provider.is_empty() {
            self.errors.push(RuleError::unlocated(
                self.file.clone(),
                "a rule file needs a name: its stem is the provider",
            ));
        }
        let text = self.text.clone();
        let (spec, spec_errors) = parse_rule_file(&text);
        for error in spec_errors {
            self.spec_error(error);
        }
        let spec = spec?;
        match &spec.schema {
            None => self.error(0..0, "missing `schema = 2` at the top of the file"),
            Some(schema) if *schema.get_ref() == 1 => self.error(
                schema.span(),
                "schema 1 is the previous rule format; this engine reads schema 2 (checks in `all`/`any`, see rules/README.md)",
            ),
            Some(schema) if *schema.get_ref() != 2 => self.error(
                schema.span(),
                format!(
                    "unknown schema {}; this engine reads schema 2",
                    schema.get_ref()
                ),
            ),
            Some(_) => {}
        }

        for (name, values) in &spec.lists {
            if self.lists.contains_key(name.get_ref()) {
                self.error(name.span(), format!("duplicate list `{}`", name.get_ref()));
            } else if values.get_ref().is_empty() {
                self.error(values.span(), format!("list `{}` is empty", name.get_ref()));
            } else {
                self.lists
                    .insert(name.get_ref().clone(), values.get_ref().clone());
            }
        }

        let mut guards: Vec<Guard> = Vec::new();
        let mut guard_names: HashMap<String, Range<usize>> = HashMap::new();
        for located in &spec.guards {
            if let Some(guard) = self.compile_guard(&located.spec, &located.span, &mut guard_names)
            {
                guards.push(guard);
            }
        }

        let mut rules = Vec::new();
        for located in &spec.rules {
            let rule_spec = &located.spec;
            let id = rule_spec.id.get_ref();
            if let Some(first) = ids.get(id) {
                let (line, column) = line_column(&first.text, first.span.start);
                self.error_with_note(
                    rule_spec.id.span(),
                    format!("duplicate rule id `{id}`"),
                    format!("first defined at {}:{line}:{column}", first.file),
                );
            } else {
                ids.insert(
                    id.clone(),
                    FirstDefinition {
                        file: self.file.clone(),
                        text: self.text.clone(),
                        span: rule_spec.id.span(),
                    },
                );
            }
            if let Some(rule) = self.compile_rule(rule_spec, &located.span, &guard_names) {
                rules.push(rule);
            }
        }

        if self.errors.len() > errors_before {
            return None;
        }
        // Stable: equal priorities keep file order.
        rules.sort_by_key(|rule: &Rule| std::cmp::Reverse(rule.priority));
        let prefilter = match Prefilter::build(&rules) {
            Ok(prefilter) => prefilter,
            Err(message) => {
                self.errors
                    .push(RuleError::unlocated(self.file.clone(), message));
                return None;
            }
        };
        let has_shadow = rules
            .iter()
            .any(|rule| rule.enabled && rule.mode == Mode::Shadow);
        Some(ProviderRules {
            name: provider.into(),
            rules,
            guards,
            prefilter,
            has_shadow,
        })
    }

    fn compile_guard(
        &mut self,
        spec: &GuardSpec,
        table_span: &Range<usize>,
        names: &mut HashMap<String, Range<usize>>,
    ) -> Option<Guard> {
        let name = spec.name.get_ref();
        let mut ok = true;
        if name == TRANSIENT_GUARD {
            self.error(
                spec.name.span(),
                format!("`{TRANSIENT_GUARD}` is the built-in guard; choose another name"),
            );
            ok = false;
        } else if name.trim().is_empty() {
            self.error(spec.name.span(), "guard name is empty");
            ok = false;
        } else if let Some(first) = names.get(name) {
            let (line, column) = line_column(&self.text, first.start);
            let file = self.file.clone();
            self.error_with_note(
                spec.name.span(),
                format!("duplicate guard name `{name}`"),
                format!("first defined at {file}:{line}:{column}"),
            );
            ok = false;
        } else {
            names.insert(name.clone(), spec.name.span());
        }
        self.captures.clear();
        let table = self.compile_group(&spec.when, table_span, "guard `when`")?;
        ok.then(|| Guard {
            name: name.as_str().into(),
            table,
        })
    }

    fn compile_rule(
        &mut self,
        spec: &RuleSpec,
        table_span: &Range<usize>,
        guard_names: &HashMap<String, Range<usize>>,
    ) -> Option<Rule> {
        let mut ok = true;
        let id = spec.id.get_ref();
        let valid_id = !id.is_empty()
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
        if !valid_id {
            self.error(
                spec.id.span(),
                format!("rule id `{id}` must be non-empty and use only a-z, 0-9, `_`, `.`, `-`"),
            );
            ok = false;
        }
        let class = match spec.class.get_ref().parse::<Class>() {
            Ok(Class::Pass) | Err(_) => {
                self.error(
                    spec.class.span(),
                    format!(
                        "unknown class `{}`, expected one of `lost_access`, `credential_invalid`, `stale_session`",
                        spec.class.get_ref()
                    ),
                );
                ok = false;
                Class::Pass
            }
            Ok(class) => class,
        };
        if spec.description.get_ref().trim().is_empty() {
            self.error(spec.description.span(), "`description` is empty");
            ok = false;
        }
        let mode = match spec
            .mode
            .as_ref()
            .map(|mode| (mode.get_ref().as_str(), mode.span()))
        {
            None | Some(("enforce", _)) => Mode::Enforce,
            Some(("shadow", _)) => Mode::Shadow,
            Some((other, span)) => {
                self.error(
                    span,
                    format!("unknown mode `{other}`, expected `enforce` or `shadow`"),
                );
                ok = false;
                Mode::Enforce
            }
        };
        let mut transient_guard = true;
        let mut skipped = Vec::new();
        for name in &spec.skip_guards {
            if name.get_ref() == TRANSIENT_GUARD {
                transient_guard = false;
            } else if guard_names.contains_key(name.get_ref()) {
                skipped.push(name.get_ref().as_str());
            } else {
                let mut known: Vec<&str> = guard_names.keys().map(String::as_str).collect();
                known.sort_unstable();
                known.insert(0, TRANSIENT_GUARD);
                self.error(
                    name.span(),
                    format!(
                        "unknown guard `{}` in `skip_guards`, expected one of {}",
                        name.get_ref(),
                        known
                            .iter()
                            .map(|n| format!("`{n}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                ok = false;
            }
        }
        self.captures.clear();
        self.collect_captures(&spec.when);
        let when = self.compile_group(&spec.when, table_span, "`when`");
        let mut unless = Vec::new();
        for (index, table) in spec.unless.iter().enumerate() {
            let what = format!("`unless` #{}", index + 1);
            match self.compile_group(table, table_span, &what) {
                Some(table) => unless.push(table),
                None => ok = false,
            }
        }
        let when = when?;
        if !ok {
            return None;
        }
        // Guard indexes follow file order of the guards that compiled; names map back to them.
        let mut guard_order: Vec<(&String, &Range<usize>)> = guard_names.iter().collect();
        guard_order.sort_by_key(|(_, span)| span.start);
        let guards = guard_order
            .iter()
            .enumerate()
            .filter(|(_, (name, _))| !skipped.contains(&name.as_str()))
            .map(|(index, _)| index)
            .collect();
        Some(Rule {
            id: id.as_str().into(),
            class,
            reason: spec
                .reason
                .as_deref()
                .filter(|reason| !reason.trim().is_empty())
                .unwrap_or(spec.description.get_ref())
                .into(),
            priority: spec.priority,
            mode,
            enabled: spec.enabled,
            when,
            unless,
            transient_guard,
            guards,
        })
    }

    fn regex_error(&mut self, pattern: &Spanned<String>, error: regex::Error) {
        let message = match error {
            regex::Error::CompiledTooBig(limit) => {
                format!("regex is too large once compiled (limit {limit} bytes); simplify it")
            }
            // The syntax error text repeats the pattern with its own caret; keep the last line,
            // our excerpt already points at the pattern.
            other => {
                let text = other.to_string();
                let detail = text
                    .rsplit_once("error: ")
                    .map_or(text.trim_end(), |(_, last)| last.trim_end());
                format!("invalid regex: {detail}")
            }
        };
        self.error(pattern.span(), message);
    }

    /// Compiles `when`, an `unless` table or a guard's `when`: a group with `all` or `any`.
    fn compile_group(
        &mut self,
        spec: &ItemSpec,
        table_span: &Range<usize>,
        what: &str,
    ) -> Option<Matcher> {
        let errors_before = self.errors.len();
        let mut groups = 0;
        let mut matcher = None;
        for (key, value) in &spec.entries {
            match (key.get_ref().as_str(), value) {
                (word @ ("all" | "any"), ItemValue::Group(items)) => {
                    groups += 1;
                    if groups > 1 {
                        self.error(
                            key.span(),
                            format!("{what} has both `all` and `any`; nest one inside the other"),
                        );
                        continue;
                    }
                    matcher = self.compile_items(word, items);
                }
                (other, _) => self.unknown_key(key, other, false),
            }
        }
        if groups == 0 && self.errors.len() == errors_before {
            self.error(
                table_span.clone(),
                format!("{what} has no checks; write `all = [...]` or `any = [...]`"),
            );
        }
        if self.errors.len() > errors_before {
            return None;
        }
        matcher
    }

    fn compile_items(
        &mut self,
        word: &str,
        items: &Spanned<Vec<Spanned<ItemSpec>>>,
    ) -> Option<Matcher> {
        if items.get_ref().is_empty() {
            self.error(
                items.span(),
                format!("`{word}` is empty; list at least one check"),
            );
            return None;
        }
        let mut compiled = Vec::new();
        let mut ok = true;
        for item in items.get_ref() {
            match self.compile_item(item) {
                Some(matcher) => compiled.push(matcher),
                None => ok = false,
            }
        }
        if !ok {
            return None;
        }
        // The result does not depend on the order; trying cheap checks first keeps a
        // non-matching response from parsing bodies or touching the scope.
        compiled.sort_by_key(Matcher::cost);
        Some(if word == "all" {
            Matcher::All(compiled.into_boxed_slice())
        } else {
            Matcher::Any(compiled.into_boxed_slice())
        })
    }

    fn compile_item(&mut self, item: &Spanned<ItemSpec>) -> Option<Matcher> {
        let spec = item.get_ref();
        let group = spec
            .entries
            .iter()
            .find(|(_, value)| matches!(value, ItemValue::Group(_)));
        if let Some((key, _)) = group {
            if spec.entries.len() > 1 {
                self.error(
                    key.span(),
                    format!(
                        "a `{}` group takes no other keys; put checks inside it",
                        key.get_ref()
                    ),
                );
                return None;
            }
            return self.compile_group(spec, &item.span(), "group");
        }
        self.compile_check(spec, item.span())
            .map(|check| Matcher::Check(Box::new(check)))
    }

    /// Reports a key that is not part of the language, naming the new spelling of old ones.
    fn unknown_key(&mut self, key: &Spanned<String>, name: &str, in_check: bool) {
        let message = match old_spelling(name, in_check) {
            Some(new) => format!("`{name}` is now {new}"),
            None if in_check => format!(
                "unknown key `{name}` in a check, expected `source`, `name`, `path`, `not`, `ignore_case` or a test: {}",
                TESTS.iter().map(|test| format!("`{test}`")).collect::<Vec<_>>().join(", ")
            ),
            None => format!("unknown key `{name}`, expected `all` or `any`"),
        };
        self.error(key.span(), message);
    }

    fn compile_check(&mut self, spec: &ItemSpec, span: Range<usize>) -> Option<Check> {
        let errors_before = self.errors.len();
        let mut source: Option<&Spanned<Value>> = None;
        let mut name: Option<&Spanned<Value>> = None;
        let mut path: Option<&Spanned<Value>> = None;
        let mut negate = false;
        let mut ignore_case = false;
        let mut tests: Vec<(&Spanned<String>, &Spanned<Value>)> = Vec::new();
        for (key, value) in &spec.entries {
            let ItemValue::Value(value) = value else {
                continue;
            };
            match key.get_ref().as_str() {
                "source" => source = Some(value),
                "name" => name = Some(value),
                "path" => path = Some(value),
                "not" => negate = self.bool_of(value, "not")?,
                "ignore_case" => ignore_case = self.bool_of(value, "ignore_case")?,
                test if TESTS.contains(&test) => tests.push((key, value)),
                other => self.unknown_key(key, other, true),
            }
        }
        let Some(source_value) = source else {
            let hint = spec
                .entries
                .first()
                .map(|(key, _)| key.span())
                .unwrap_or(span);
            if self.errors.len() == errors_before {
                self.error(
                    hint,
                    format!("a check needs a `source`: one of {}", quoted_names(SOURCES)),
                );
            }
            return None;
        };
        let source_name = self.text_of(source_value, "source")?;
        if !SOURCES.contains(&source_name.as_str()) {
            self.error(
                source_value.span(),
                format!(
                    "unknown source `{source_name}`, expected one of {}",
                    quoted_names(SOURCES)
                ),
            );
            return None;
        }
        let needs_name = matches!(
            source_name.as_str(),
            "header" | "request_header" | "query" | "request_field" | "path_capture" | "scope"
        );
        let needs_path = matches!(source_name.as_str(), "json" | "request_json");
        match (needs_name, name) {
            (true, None) => {
                self.error(
                    source_value.span(),
                    format!("source `{source_name}` needs a `name`"),
                );
            }
            (false, Some(name)) => {
                let hint = if needs_path {
                    "; a JSON path is `path`"
                } else {
                    ""
                };
                self.error(
                    name.span(),
                    format!("source `{source_name}` takes no `name`{hint}"),
                );
            }
            _ => {}
        }
        match (needs_path, path) {
            (true, None) => {
                self.error(
                    source_value.span(),
                    format!("source `{source_name}` needs a JSON `path`"),
                );
            }
            (false, Some(path)) => {
                let hint = if source_name == "url_path" {
                    "; match the request path with `glob` or `regex`"
                } else {
                    ""
                };
                self.error(
                    path.span(),
                    format!("source `{source_name}` takes no `path`{hint}"),
                );
            }
            _ => {}
        }
        // An unknown or old key was probably meant as the test; one error for it is enough.
        if tests.len() != 1 && self.errors.len() == errors_before {
            let at = tests
                .get(1)
                .map_or(source_value.span(), |(key, _)| key.span());
            self.error(
                at,
                format!("a check needs exactly one test: {}", quoted_names(TESTS)),
            );
        }
        if self.errors.len() > errors_before {
            return None;
        }
        let selector = if needs_name {
            self.text_of(name?, "name")?
        } else if needs_path {
            self.text_of(path?, "path")?
        } else {
            String::new()
        };
        let selector_span = name.or(path).map_or(source_value.span(), Spanned::span);
        let source = self.compile_source(&source_name, &selector, selector_span)?;
        // Methods are case-insensitive on the wire.
        let ignore_case = ignore_case || matches!(source, Source::Method);
        let (test_key, operand) = tests[0];
        let test = self.compile_test(&source, test_key, operand, ignore_case)?;
        let test = match (test, negate) {
            // `exists = false` is absence: the negation of presence.
            (TestOrAbsence::Absent, _) => {
                negate = !negate;
                Test::Exists
            }
            (TestOrAbsence::Test(test), _) => test,
        };
        if matches!(source, Source::Credential) && !matches!(test, Test::Exists) {
            self.error(
                test_key.span(),
                "source `credential` supports only `exists`",
            );
            return None;
        }
        if matches!(source, Source::Scope(_)) && matches!(test, Test::EqualsScope(_)) {
            self.error(test_key.span(), "`equals_scope` compares a request value with the scope; use `equals` on the scope itself");
            return None;
        }
        let selector_shown = if selector.is_empty() {
            String::new()
        } else {
            format!(" {selector}")
        };
        let operand_shown = match operand.get_ref() {
            Value::Bool(true) if test_key.get_ref() == "exists" => String::new(),
            Value::String(text) => format!(" {}", toml_string(text)),
            other => format!(" {other}"),
        };
        let test_shown =
            if test_key.get_ref() == "exists" && operand.get_ref() == &Value::Bool(false) {
                "is absent".to_owned()
            } else {
                format!("{}{operand_shown}", test_key.get_ref())
            };
        let case = if ignore_case { " (ignoring case)" } else { "" };
        let not = if negate && test_key.get_ref() != "exists" {
            "not "
        } else {
            ""
        };
        Some(Check {
            description: format!("{not}{source_name}{selector_shown} {test_shown}{case}").into(),
            source,
            test,
            negate,
            ignore_case,
        })
    }

    fn compile_source(&mut self, kind: &str, selector: &str, span: Range<usize>) -> Option<Source> {
        if selector.trim().is_empty()
            && !matches!(
                kind,
                "status" | "method" | "url_path" | "body" | "credential"
            )
        {
            self.error(span, format!("source `{kind}` needs a non-empty selector"));
            return None;
        }
        let header = |this: &mut Self| match HeaderName::from_bytes(
            selector.to_ascii_lowercase().as_bytes(),
        ) {
            Ok(name) => Some(name),
            Err(_) => {
                this.error(span.clone(), format!("invalid header name `{selector}`"));
                None
            }
        };
        let json_path = |this: &mut Self| match JsonPath::parse(selector) {
            Ok(path) => Some(path),
            Err(message) => {
                this.error(span.clone(), format!("invalid JSON path: {message}"));
                None
            }
        };
        Some(match kind {
            "status" => Source::Status,
            "method" => Source::Method,
            "url_path" => Source::UrlPath,
            "header" => Source::Header(header(self)?),
            "request_header" => Source::RequestHeader(header(self)?),
            "json" => Source::Json(json_path(self)?),
            "request_json" => Source::RequestJson(json_path(self)?),
            "body" => Source::Body,
            "query" => Source::Query(selector.into()),
            "request_field" => Source::RequestField(BodyField {
                name: selector.into(),
                path: JsonPath::parse(selector).ok(),
            }),
            "scope" => Source::Scope(selector.into()),
            "credential" => Source::Credential,
            _ => {
                let regexes: Vec<Arc<BytesRegex>> = self
                    .captures
                    .iter()
                    .filter(|regex| {
                        regex
                            .capture_names()
                            .flatten()
                            .any(|group| group == selector)
                    })
                    .cloned()
                    .collect();
                if regexes.is_empty() {
                    self.error(
                        span,
                        format!("`path_capture` `{selector}` needs a `url_path` regex in `when` with a named group `(?P<{selector}>...)`"),
                    );
                    return None;
                }
                Source::PathCapture {
                    regexes: regexes.into_boxed_slice(),
                    group: selector.into(),
                }
            }
        })
    }

    fn compile_test(
        &mut self,
        source: &Source,
        key: &Spanned<String>,
        operand: &Spanned<Value>,
        ignore_case: bool,
    ) -> Option<TestOrAbsence> {
        let span = operand.span();
        let value = operand.get_ref();
        let test = match key.get_ref().as_str() {
            "equals" => {
                self.check_json_scalar_or_list(value, span.clone())?;
                match source {
                    Source::Status => {
                        Test::Codes(self.status_codes(std::slice::from_ref(value), span)?)
                    }
                    _ => Test::Equals(value.clone()),
                }
            }
            "one_of" => {
                let values = match value {
                    Value::Array(values) => values.clone(),
                    Value::String(list) => match self.lists.get(list) {
                        Some(values) => values.clone(),
                        None => {
                            let mut known: Vec<&String> = self.lists.keys().collect();
                            known.sort();
                            let known = if known.is_empty() {
                                "this file has no `[lists]`".to_owned()
                            } else {
                                format!(
                                    "known lists: {}",
                                    known
                                        .iter()
                                        .map(|n| format!("`{n}`"))
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                )
                            };
                            self.error(span, format!("unknown list `{list}`; {known}"));
                            return None;
                        }
                    },
                    _ => {
                        self.error(
                            span,
                            "`one_of` takes an array of values or the name of a list",
                        );
                        return None;
                    }
                };
                if values.is_empty() {
                    self.error(span, "`one_of` is empty; list at least one value");
                    return None;
                }
                for value in &values {
                    self.check_json_scalar_or_list(value, span.clone())?;
                }
                match source {
                    Source::Status => Test::Codes(self.status_codes(&values, span)?),
                    _ => Test::OneOf(values.into_boxed_slice()),
                }
            }
            word @ ("contains" | "prefix" | "suffix") => {
                let text = self.text_of(operand, word)?;
                if ignore_case && !text.is_ascii() {
                    self.error(span, format!("`{word}` with `ignore_case` needs an ASCII operand; use `regex` with `(?i)`"));
                    return None;
                }
                match word {
                    "contains" => Test::Contains(text.into()),
                    "prefix" => Test::Prefix(text.into()),
                    _ => Test::Suffix(text.into()),
                }
            }
            word @ ("regex" | "glob") => {
                let text = self.text_of(operand, word)?;
                let pattern = if word == "glob" {
                    glob_to_regex(&text)
                } else {
                    text.clone()
                };
                let pattern = if ignore_case {
                    format!("(?i){pattern}")
                } else {
                    pattern
                };
                match build_bytes_regex(&pattern) {
                    Ok(regex) => {
                        if matches!(source, Source::UrlPath)
                            && regex.capture_names().flatten().next().is_some()
                        {
                            // Captures were collected before compiling; nothing more to do.
                        }
                        Test::Regex(regex)
                    }
                    Err(error) => {
                        self.regex_error(&Spanned::new(span, text), error);
                        return None;
                    }
                }
            }
            "exists" => match value {
                Value::Bool(true) => Test::Exists,
                Value::Bool(false) => return Some(TestOrAbsence::Absent),
                _ => {
                    self.error(span, "`exists` takes `true` or `false`");
                    return None;
                }
            },
            word @ ("gt" | "ge" | "lt" | "le") => {
                let Some(bound) = value.as_f64() else {
                    self.error(span, format!("`{word}` takes a number"));
                    return None;
                };
                let comparison = match word {
                    "gt" => Comparison::Gt,
                    "ge" => Comparison::Ge,
                    "lt" => Comparison::Lt,
                    _ => Comparison::Le,
                };
                Test::Compare(comparison, bound)
            }
            _ => {
                let key = self.text_of(operand, "equals_scope")?;
                if key.trim().is_empty() {
                    self.error(span, "`equals_scope` needs a scope key");
                    return None;
                }
                Test::EqualsScope(key.into())
            }
        };
        Some(TestOrAbsence::Test(test))
    }

    fn status_codes(&mut self, values: &[Value], span: Range<usize>) -> Option<StatusSet> {
        let mut ranges = Vec::new();
        let mut ok = true;
        for value in values {
            let parsed = match value {
                Value::Number(number) => match number.as_i64() {
                    Some(code) => check_status_code(code).map(|code| (code, code)),
                    None => Err(format!("status code {number} is not an integer")),
                },
                Value::String(text) => parse_status_text(text),
                other => Err(format!(
                    "`{other}` is not a status code or a range like \"400-499\""
                )),
            };
            match parsed {
                Ok(range) => ranges.push(range),
                Err(message) => {
                    self.error(span.clone(), message);
                    ok = false;
                }
            }
        }
        ok.then(|| StatusSet::new(&ranges, String::new()))
    }

    fn text_of(&mut self, value: &Spanned<Value>, key: &str) -> Option<String> {
        match value.get_ref() {
            Value::String(text) => Some(text.clone()),
            _ => {
                self.error(value.span(), format!("`{key}` takes a string"));
                None
            }
        }
    }

    fn bool_of(&mut self, value: &Spanned<Value>, key: &str) -> Option<bool> {
        match value.get_ref() {
            Value::Bool(flag) => Some(*flag),
            _ => {
                self.error(value.span(), format!("`{key}` takes `true` or `false`"));
                None
            }
        }
    }

    /// TOML datetimes arrive as a special table; they cannot equal anything in a JSON body.
    fn check_json_scalar_or_list(&mut self, value: &Value, span: Range<usize>) -> Option<()> {
        let is_datetime = value
            .as_object()
            .is_some_and(|object| object.keys().any(|key| key.starts_with("$__toml")));
        if is_datetime {
            self.error(
                span,
                "a TOML datetime cannot be compared with JSON; quote it as a string",
            );
            return None;
        }
        Some(())
    }

    /// The `url_path` regexes (and globs) of a rule's `when`, whose named groups `path_capture`
    /// checks read.
    fn collect_captures(&mut self, spec: &ItemSpec) {
        for (key, value) in &spec.entries {
            match value {
                ItemValue::Group(items) => {
                    for item in items.get_ref() {
                        self.collect_captures(item.get_ref());
                    }
                }
                ItemValue::Value(value) if key.get_ref() == "regex" => {
                    let is_path = matches!(
                        spec.get("source"),
                        Some(ItemValue::Value(source)) if source.get_ref() == "url_path"
                    );
                    if let (true, Value::String(pattern)) = (is_path, value.get_ref()) {
                        if let Ok(regex) = build_bytes_regex(pattern) {
                            if regex.capture_names().flatten().next().is_some() {
                                self.captures.push(Arc::new(regex));
                            }
                        }
                    }
                }
                ItemValue::Value(_) => {}
            }
        }
    }
}

enum TestOrAbsence {
    Test(Test),
    /// `exists = false`.
    Absent,
}

/// Every source a check may name.
const SOURCES: &[&str] = &[
    "status",
    "method",
    "url_path",
    "path_capture",
    "header",
    "request_header",
    "json",
    "request_json",
    "body",
    "query",
    "request_field",
    "scope",
    "credential",
];

/// Every test a check may apply.
const TESTS: &[&str] = &[
    "equals",
    "one_of",
    "contains",
    "prefix",
    "suffix",
    "regex",
    "glob",
    "exists",
    "gt",
    "ge",
    "lt",
    "le",
    "equals_scope",
];

fn quoted_names(names: &[&str]) -> String {
    names
        .iter()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The new spelling of a key of the previous rule format (schema 1), so `rules check` can say
/// what to write instead.
fn old_spelling(key: &str, in_check: bool) -> Option<&'static str> {
    Some(match (key, in_check) {
        ("status", false) => "a check: `{ source = \"status\", one_of = [...] }` inside `all`",
        ("method", false) => "a check: `{ source = \"method\", one_of = [...] }` inside `all`",
        ("path", false) => "a check: `{ source = \"url_path\", glob = \"...\" }` inside `all`",
        ("path_regex", false) => "a check: `{ source = \"url_path\", regex = '...' }` inside `all`",
        ("header", false) => "a check: `{ source = \"header\", name = \"...\", <test> }` inside `all`",
        ("request_header", false) => {
            "a check: `{ source = \"request_header\", name = \"...\", <test> }` inside `all`"
        }
        ("json", false) => "a check per entry: `{ source = \"json\", path = \"...\", <test> }` inside `all`",
        ("body_regex", false) => "a check: `{ source = \"body\", regex = '...' }` inside `all`",
        ("request", false) => "a check per entry: `{ source = \"request_field\" | \"request_json\" | \"query\" | ..., <test> }` inside `all`",
        ("scope_absent", false) => "a check: `{ source = \"scope\", name = \"...\", exists = false }` inside `all`",
        ("present", true) => "`exists`",
        ("body", true) => "`source = \"request_json\", path = \"...\"` (or `source = \"request_field\", name = \"...\"` for form fields)",
        ("field", true) => "`source = \"request_field\", name = \"...\"`",
        ("query", true) => "`source = \"query\", name = \"...\"`",
        ("header", true) => "`source = \"request_header\", name = \"...\"`",
        ("path_capture", true) => "`source = \"path_capture\", name = \"...\"`",
        _ => return None,
    })
}

/// A string as it would be written in the rule file: a literal string when that needs no
/// escaping (how regexes are usually written), else a basic string.
fn toml_string(text: &str) -> String {
    if text.contains(['\\', '"']) && !text.contains(['\'', '\n', '\r']) {
        format!("'{text}'")
    } else {
        format!("{text:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(text: &str) -> Vec<RuleError> {
        compile(vec![RuleSource::new("rules/x.toml", "x", text)])
            .err()
            .map(|errors| errors.0)
            .unwrap_or_default()
    }

    fn located(errors: &[RuleError]) -> Vec<String> {
        errors
            .iter()
            .map(|error| {
                let (line, column) = error.line_column().unwrap();
                format!(
                    "{line}:{column} {}",
                    error.message().lines().next().unwrap()
                )
            })
            .collect()
    }

    const HEADER: &str = "schema = 2\n";

    #[test]
    fn renders_a_caret_excerpt_like_rustc() {
        let text = format!(
            "{HEADER}[[rule]]\nid = \"x.a\"\nclass = \"lost_access\"\ndescription = \"d\"\n[rule.when]\nall = [{{ source = \"status\", equls = 401 }}]\n"
        );
        let errors = errors_of(&text);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line_column(), Some((7, 29)));
        let shown = errors[0].to_string();
        assert!(
            shown.starts_with("error: unknown key `equls` in a check, expected"),
            "{shown}"
        );
        assert!(
            shown.ends_with(" --> rules/x.toml:7:29\n  |\n7 | all = [{ source = \"status\", equls = 401 }]\n  |                             ^^^^^\n"),
            "{shown}"
        );
    }

    #[test]
    fn semantic_errors_are_all_reported() {
        let text = format!(
            r#"{HEADER}
[[rule]]
id = "x.a"
class = "lost_acces"
description = "d"
skip_guards = ["nope"]
[rule.when]
all = [
  {{ source = "url_path", glob = "/a", regex = "^/a$" }},
  {{ source = "status", one_of = ["500-400"] }},
  {{ source = "json", path = "a..b", equals = 1 }},
  {{ source = "json", path = "b", regex = "(" }},
  {{ source = "jsn", path = "b", exists = true }},
  {{ source = "header", exists = true }},
  {{ source = "json", path = "c", one_of = "missing_list" }},
  {{ source = "credential", equals = "x" }},
]

[[rule]]
id = "x.a"
class = "lost_access"
description = "d"
[rule.when]
"#
        );
        let errors = errors_of(&text);
        assert_eq!(
            located(&errors),
            vec![
                "5:9 unknown class `lost_acces`, expected one of `lost_access`, `credential_invalid`, `stale_session`",
                "7:16 unknown guard `nope` in `skip_guards`, expected one of `transient`",
                "10:39 a check needs exactly one test: `equals`, `one_of`, `contains`, `prefix`, `suffix`, `regex`, `glob`, `exists`, `gt`, `ge`, `lt`, `le`, `equals_scope`",
                "11:33 status range `500-400` is empty: 500 is above 400",
                "12:29 invalid JSON path: empty key at byte 2 in `a..b`",
                "13:42 invalid regex: unclosed group",
                "14:14 unknown source `jsn`, expected one of `status`, `method`, `url_path`, `path_capture`, `header`, `request_header`, `json`, `request_json`, `body`, `query`, `request_field`, `scope`, `credential`",
                "15:14 source `header` needs a `name`",
                "16:43 unknown list `missing_list`; this file has no `[lists]`",
                "17:28 source `credential` supports only `exists`",
                "21:6 duplicate rule id `x.a`",
                "20:1 `when` has no checks; write `all = [...]` or `any = [...]`",
            ],
        );
        assert!(errors[10]
            .to_string()
            .contains("note: first defined at rules/x.toml:4:6"));
    }

    #[test]
    fn old_spellings_point_at_the_new_ones() {
        let text = r#"schema = 1
[[rule]]
id = "x.a"
class = "lost_access"
description = "d"
[rule.when]
status = [404]
request_header = [{ name = "mcp-session-id", present = true }]
all = [{ source = "request_header", name = "x", present = true }, { field = "channel", equals_scope = "c" }]
"#;
        let errors = errors_of(text);
        let shown = located(&errors);
        assert_eq!(shown.len(), 5, "{shown:#?}");
        assert!(
            shown[0].starts_with("1:10 schema 1 is the previous rule format"),
            "{shown:#?}"
        );
        assert!(
            shown[1].starts_with("7:1 `status` is now a check: `{ source = \"status\""),
            "{shown:#?}"
        );
        assert!(
            shown[2]
                .starts_with("8:1 `request_header` is now a check: `{ source = \"request_header\""),
            "{shown:#?}"
        );
        assert!(
            shown[3].starts_with("9:49 `present` is now `exists`"),
            "{shown:#?}"
        );
        assert!(
            shown[4].starts_with("9:69 `field` is now `source = \"request_field\""),
            "{shown:#?}"
        );
        let rendered = errors[2].to_string();
        assert!(
            rendered.contains("8 | request_header = [")
                && rendered.contains("  | ^^^^^^^^^^^^^^\n"),
            "{rendered}"
        );
    }

    #[test]
    fn groups_nest_and_lists_resolve() {
        let text = format!(
            r#"{HEADER}
[lists]
gone = ["a_gone", "b_gone"]

[[rule]]
id = "x.a"
class = "lost_access"
description = "d"
[rule.when]
any = [
  {{ all = [{{ source = "status", equals = 404 }}, {{ source = "json", path = "error", one_of = "gone" }}] }},
  {{ source = "body", contains = "gone for good", not = false }},
]
"#
        );
        let providers = compile(vec![RuleSource::new("rules/x.toml", "x", text)])
            .unwrap_or_else(|errors| panic!("{errors}"));
        let Matcher::Any(items) = &providers[0].rules[0].when else {
            panic!("any at the top");
        };
        assert_eq!(items.len(), 2);
        let literals = providers[0].rules[0].when.required_literals().unwrap();
        assert!(
            literals.contains(&b"gone for good".to_vec()),
            "{literals:?}"
        );
    }

    #[test]
    fn duplicate_ids_are_found_across_files() {
        let rule = |id: &str| {
            format!("{HEADER}[[rule]]\nid = \"{id}\"\nclass = \"lost_access\"\ndescription = \"d\"\nwhen = {{ all = [{{ source = \"status\", equals = 401 }}] }}\n")
        };
        let errors = compile(vec![
            RuleSource::new("rules/b.toml", "b", rule("same")),
            RuleSource::new("rules/a.toml", "a", rule("same")),
        ])
        .unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors.errors()[0].file(), "rules/b.toml");
    }

    #[test]
    fn missing_or_unknown_schema_is_an_error() {
        let errors = errors_of("");
        assert_eq!(
            errors[0].message(),
            "missing `schema = 2` at the top of the file"
        );
        let errors = errors_of("schema = 3\n");
        assert_eq!(errors[0].line_column(), Some((1, 10)));
    }

    #[test]
    fn path_captures_need_a_named_group() {
        let text = format!(
            r#"{HEADER}[[rule]]
id = "x.a"
class = "lost_access"
description = "d"
[rule.when]
all = [
  {{ source = "path_capture", name = "repo", equals_scope = "k" }},
  {{ source = "request_header", name = "bad header", exists = true }},
  {{ source = "url_path", path = "/a", glob = "/a" }},
  {{ source = "json", name = "error", exists = true }},
]
"#
        );
        let messages: Vec<String> = errors_of(&text)
            .iter()
            .map(|error| error.message().to_owned())
            .collect();
        assert_eq!(messages.len(), 5, "{messages:#?}");
        assert!(messages[0].contains("needs a `url_path` regex in `when` with a named group"));
        assert!(messages[1].contains("invalid header name"));
        assert!(
            messages[2].contains("takes no `path`; match the request path with `glob` or `regex`")
        );
        assert!(messages[3].contains("takes no `name`; a JSON path is `path`"));
        assert!(messages[4].contains("needs a JSON `path`"));
    }

    #[test]
    fn too_large_regexes_are_rejected() {
        let text = format!(
            "{HEADER}[[rule]]\nid = \"x.a\"\nclass = \"lost_access\"\ndescription = \"d\"\n[rule.when]\nall = [{{ source = \"body\", regex = \"\\\\w{{1000}}\\\\w{{1000}}\" }}]\n"
        );
        let errors = errors_of(&text);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message().contains("too large"), "{}", errors[0]);
    }
}
