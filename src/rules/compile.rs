//! Rule files to compiled rules. Every error in every file is collected, each with its
//! file:line:column and a caret excerpt, so one `rules check` run shows them all.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use http::HeaderName;
use regex::Regex;
use serde_json::Value;
use toml::Spanned;

use super::decision::{Class, Mode};
use super::matcher::{
    build_bytes_regex, build_regex, check_status_code, glob_to_regex, parse_status_text, BodyField,
    BodyRegex, HeadMatcher, HeaderTest, HeaderValueTest, JsonPath, JsonTest, MatchTable, MethodSet,
    PathMatcher, RequestSource, RequestTest, RequestValueTest, StatusSet, ValueTest,
};
use super::prefilter::Prefilter;
use super::spec::{
    parse_rule_file, GuardSpec, HeaderTestSpec, JsonTestSpec, MatchSpec, RequestTestSpec, RuleSpec,
    SpecError, StatusSpec,
};

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
    pub(crate) when: MatchTable,
    pub(crate) unless: Vec<MatchTable>,
    /// Whether the built-in transient guard applies (not listed in `skip_guards`).
    pub(crate) transient_guard: bool,
    /// Indexes of the file guards that apply.
    pub(crate) guards: Vec<usize>,
}

#[derive(Debug)]
pub(crate) struct Guard {
    pub(crate) name: Arc<str>,
    pub(crate) table: MatchTable,
}

/// A distinct `when` head of the enabled rules, for `needs_body`.
#[derive(Debug)]
pub(crate) struct HeadEntry {
    pub(crate) head: Arc<HeadMatcher>,
    /// Some rule with this head skips the transient guard, so a transient response does not
    /// rule it out.
    pub(crate) skips_transient: bool,
}

#[derive(Debug)]
pub(crate) struct ProviderRules {
    pub(crate) name: Arc<str>,
    /// All rules, disabled ones included, in evaluation order: priority desc, then file order.
    pub(crate) rules: Vec<Rule>,
    pub(crate) guards: Vec<Guard>,
    pub(crate) prefilter: Prefilter,
    pub(crate) heads: Vec<HeadEntry>,
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
            heads: HashMap::new(),
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
    /// Identical `when` heads share one matcher, so `needs_body` checks each once.
    heads: HashMap<String, Arc<HeadMatcher>>,
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
            None => self.error(0..0, "missing `schema = 1` at the top of the file"),
            Some(schema) if *schema.get_ref() != 1 => self.error(
                schema.span(),
                format!(
                    "unknown schema {}; this engine reads schema 1",
                    schema.get_ref()
                ),
            ),
            Some(_) => {}
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
        let mut heads: Vec<HeadEntry> = Vec::new();
        for rule in rules.iter().filter(|rule| rule.enabled) {
            let skips = !rule.transient_guard;
            match heads
                .iter_mut()
                .find(|entry| Arc::ptr_eq(&entry.head, &rule.when.head))
            {
                Some(entry) => entry.skips_transient |= skips,
                None => heads.push(HeadEntry {
                    head: rule.when.head.clone(),
                    skips_transient: skips,
                }),
            }
        }
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
            heads,
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
        let table = self.compile_table(&spec.when, table_span, "guard `when`", None)?;
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
        let when = self.compile_table(&spec.when, table_span, "`when`", None);
        let capture_source = when
            .as_ref()
            .and_then(|table| table.head.path.as_ref())
            .map(|path| path.regex.clone());
        let mut unless = Vec::new();
        for (index, table) in spec.unless.iter().enumerate() {
            let what = format!("`unless` #{}", index + 1);
            match self.compile_table(table, table_span, &what, capture_source.clone()) {
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

    /// Compiles one matcher table. `capture_source` is the `when` path regex, whose named groups
    /// `path_capture` may use from an `unless` table that has no `path_regex` of its own.
    fn compile_table(
        &mut self,
        spec: &MatchSpec,
        table_span: &Range<usize>,
        what: &str,
        capture_source: Option<Arc<Regex>>,
    ) -> Option<MatchTable> {
        if spec.is_empty() {
            self.error(
                table_span.clone(),
                format!("{what} has no matchers; at least one is required"),
            );
            return None;
        }
        let errors_before = self.errors.len();
        let mut head = HeadMatcher::default();
        let mut key = String::new();

        if let Some(methods) = &spec.method {
            if methods.get_ref().is_empty() {
                self.error(
                    methods.span(),
                    "`method` is empty; list at least one method",
                );
            }
            let mut names = Vec::new();
            for method in methods.get_ref() {
                let name = method.get_ref().to_ascii_uppercase();
                if http::Method::from_bytes(name.as_bytes()).is_err() || name.is_empty() {
                    self.error(
                        method.span(),
                        format!("invalid HTTP method `{}`", method.get_ref()),
                    );
                }
                names.push(name);
            }
            let description = format!("method = [{}]", quoted_list(&names));
            key.push_str(&description);
            head.methods = Some(MethodSet::new(names, description));
        }

        if let (Some(_), Some(regex)) = (&spec.path, &spec.path_regex) {
            self.error(regex.span(), "set either `path` or `path_regex`, not both");
        }
        if let Some(glob) = &spec.path {
            let description = format!("path = {}", toml_string(glob.get_ref()));
            match build_regex(&glob_to_regex(glob.get_ref())) {
                Ok(regex) => {
                    key.push('\u{1}');
                    key.push_str(&description);
                    head.path = Some(PathMatcher {
                        regex: Arc::new(regex),
                        description: description.into(),
                    });
                }
                Err(error) => self.error(glob.span(), format!("invalid path glob: {error}")),
            }
        } else if let Some(pattern) = &spec.path_regex {
            let description = format!("path_regex = {}", toml_string(pattern.get_ref()));
            match build_regex(pattern.get_ref()) {
                Ok(regex) => {
                    key.push('\u{1}');
                    key.push_str(&description);
                    head.path = Some(PathMatcher {
                        regex: Arc::new(regex),
                        description: description.into(),
                    });
                }
                Err(error) => self.regex_error(pattern, error),
            }
        }

        if let Some(status) = &spec.status {
            if status.get_ref().is_empty() {
                self.error(
                    status.span(),
                    "`status` is empty; list at least one code or range",
                );
            }
            let mut ranges = Vec::new();
            let mut shown = Vec::new();
            for entry in status.get_ref() {
                let parsed = match entry.get_ref() {
                    StatusSpec::Code(code) => {
                        shown.push(code.to_string());
                        check_status_code(*code).map(|code| (code, code))
                    }
                    StatusSpec::Text(text) => {
                        shown.push(format!("{text:?}"));
                        parse_status_text(text)
                    }
                };
                match parsed {
                    Ok(range) => ranges.push(range),
                    Err(message) => self.error(entry.span(), message),
                }
            }
            let description = format!("status = [{}]", shown.join(", "));
            key.push('\u{1}');
            key.push_str(&description);
            head.status = Some(StatusSet::new(&ranges, description));
        }

        for (field, specs, target) in [
            ("header", &spec.header, &mut head.headers),
            (
                "request_header",
                &spec.request_header,
                &mut head.request_headers,
            ),
        ] {
            let Some(specs) = specs else { continue };
            if specs.is_empty() {
                self.error(table_span.clone(), format!("{what}: `{field}` is empty"));
            }
            for test_spec in specs {
                if let Some(test) = self.compile_header_test(field, test_spec) {
                    key.push('\u{1}');
                    key.push_str(&test.description);
                    target.push(test);
                }
            }
        }

        let body_regex = spec.body_regex.as_ref().and_then(|pattern| {
            match build_bytes_regex(pattern.get_ref()) {
                Ok(regex) => Some(BodyRegex {
                    regex,
                    pattern: pattern.get_ref().as_str().into(),
                    description: format!("body_regex = {}", toml_string(pattern.get_ref())).into(),
                }),
                Err(error) => {
                    self.regex_error(pattern, error);
                    None
                }
            }
        });

        let mut json = Vec::new();
        if let Some(specs) = &spec.json {
            if specs.is_empty() {
                self.error(table_span.clone(), format!("{what}: `json` is empty"));
            }
            for test_spec in specs {
                if let Some(test) = self.compile_json_test(test_spec) {
                    json.push(test);
                }
            }
        }

        let own_regex = head.path.as_ref().map(|path| path.regex.clone());
        let captures = if spec.path_regex.is_some() {
            own_regex
        } else {
            capture_source
        };
        let mut request = Vec::new();
        if let Some(specs) = &spec.request {
            if specs.is_empty() {
                self.error(table_span.clone(), format!("{what}: `request` is empty"));
            }
            for test_spec in specs {
                if let Some(test) =
                    self.compile_request_test(test_spec, captures.as_ref(), table_span)
                {
                    request.push(test);
                }
            }
        }

        let scope_absent = spec.scope_absent.as_ref().and_then(|key| {
            if key.get_ref().trim().is_empty() {
                self.error(key.span(), "`scope_absent` needs a scope key");
                None
            } else {
                Some(key.get_ref().as_str().into())
            }
        });

        if self.errors.len() > errors_before {
            return None;
        }
        let head = self
            .heads
            .entry(key)
            .or_insert_with(|| Arc::new(head))
            .clone();
        Some(MatchTable {
            head,
            body_regex,
            json,
            request,
            scope_absent,
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

    fn compile_header_test(&mut self, field: &str, spec: &HeaderTestSpec) -> Option<HeaderTest> {
        let raw_name = spec.name.get_ref();
        let name = match HeaderName::from_bytes(raw_name.to_ascii_lowercase().as_bytes()) {
            Ok(name) => name,
            Err(_) => {
                self.error(
                    spec.name.span(),
                    format!("invalid header name `{raw_name}`"),
                );
                return None;
            }
        };
        let tests = [
            spec.regex.as_ref().map(|_| "regex"),
            spec.equals.as_ref().map(|_| "equals"),
            spec.present.as_ref().map(|_| "present"),
        ];
        if tests.iter().flatten().count() != 1 {
            self.error(
                spec.name.span(),
                format!(
                    "`{field}` entry `{raw_name}` needs exactly one of `regex`, `equals`, `present`"
                ),
            );
            return None;
        }
        let (test, shown) = if let Some(pattern) = &spec.regex {
            match build_regex(pattern.get_ref()) {
                Ok(regex) => (
                    HeaderValueTest::Regex(regex),
                    format!("regex {}", toml_string(pattern.get_ref())),
                ),
                Err(error) => {
                    self.regex_error(pattern, error);
                    return None;
                }
            }
        } else if let Some(value) = &spec.equals {
            (
                HeaderValueTest::Equals(value.get_ref().as_str().into()),
                format!("equals {}", toml_string(value.get_ref())),
            )
        } else {
            let present = *spec.present.as_ref()?.get_ref();
            (
                HeaderValueTest::Present(present),
                if present { "present" } else { "absent" }.to_owned(),
            )
        };
        Some(HeaderTest {
            name,
            test,
            description: format!("{field} {raw_name} {shown}").into(),
        })
    }

    fn compile_json_test(&mut self, spec: &JsonTestSpec) -> Option<JsonTest> {
        let path = match JsonPath::parse(spec.path.get_ref()) {
            Ok(path) => path,
            Err(message) => {
                self.error(spec.path.span(), format!("invalid JSON path: {message}"));
                return None;
            }
        };
        let count = [
            spec.equals.is_some(),
            spec.one_of.is_some(),
            spec.regex.is_some(),
            spec.exists.is_some(),
        ]
        .into_iter()
        .filter(|set| *set)
        .count();
        if count != 1 {
            self.error(
                spec.path.span(),
                format!(
                    "`json` entry `{}` needs exactly one of `equals`, `one_of`, `regex`, `exists`",
                    spec.path.get_ref()
                ),
            );
            return None;
        }
        let (test, shown) = self.compile_value_test(
            spec.equals.as_ref(),
            spec.one_of.as_ref(),
            spec.regex.as_ref(),
            spec.exists.as_ref(),
            false,
        )?;
        Some(JsonTest {
            description: format!("json {} {shown}", path.as_str()).into(),
            path,
            test,
        })
    }

    fn compile_value_test(
        &mut self,
        equals: Option<&Spanned<Value>>,
        one_of: Option<&Spanned<Vec<Value>>>,
        regex: Option<&Spanned<String>>,
        exists: Option<&Spanned<bool>>,
        ignore_case: bool,
    ) -> Option<(ValueTest, String)> {
        if let Some(value) = equals {
            self.check_json_scalar_or_list(value.get_ref(), value.span())?;
            return Some((
                ValueTest::Equals(value.get_ref().clone()),
                format!("equals {}", value.get_ref()),
            ));
        }
        if let Some(values) = one_of {
            if values.get_ref().is_empty() {
                self.error(values.span(), "`one_of` is empty; list at least one value");
                return None;
            }
            for value in values.get_ref() {
                self.check_json_scalar_or_list(value, values.span())?;
            }
            return Some((
                ValueTest::OneOf(values.get_ref().clone()),
                format!("one_of {}", Value::Array(values.get_ref().clone())),
            ));
        }
        if let Some(pattern) = regex {
            let source = if ignore_case {
                format!("(?i){}", pattern.get_ref())
            } else {
                pattern.get_ref().clone()
            };
            return match build_regex(&source) {
                Ok(compiled) => Some((
                    ValueTest::Regex(compiled),
                    format!("regex {}", toml_string(pattern.get_ref())),
                )),
                Err(error) => {
                    self.regex_error(pattern, error);
                    None
                }
            };
        }
        let exists = *exists?.get_ref();
        Some((
            ValueTest::Exists(exists),
            if exists { "exists" } else { "is absent" }.to_owned(),
        ))
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

    fn compile_request_test(
        &mut self,
        spec: &RequestTestSpec,
        captures: Option<&Arc<Regex>>,
        table_span: &Range<usize>,
    ) -> Option<RequestTest> {
        let sources = [
            ("query", &spec.query),
            ("body", &spec.body),
            ("path_capture", &spec.path_capture),
            ("header", &spec.header),
            ("field", &spec.field),
        ];
        let present: Vec<(&str, &Spanned<String>)> = sources
            .iter()
            .filter_map(|(kind, value)| value.as_ref().map(|value| (*kind, value)))
            .collect();
        let anchor = present
            .first()
            .map(|(_, value)| value.span())
            .or_else(|| spec.equals.as_ref().map(Spanned::span))
            .unwrap_or_else(|| table_span.clone());
        if present.len() != 1 {
            self.error(
                anchor,
                "`request` entry needs exactly one source: `query`, `body`, `path_capture`, `header` or `field`",
            );
            return None;
        }
        let (kind, name) = present[0];
        let tests = [
            spec.equals.is_some(),
            spec.one_of.is_some(),
            spec.regex.is_some(),
            spec.exists.is_some() || spec.present.is_some(),
            spec.equals_scope.is_some(),
        ];
        if tests.into_iter().filter(|set| *set).count() != 1
            || (spec.exists.is_some() && spec.present.is_some())
        {
            self.error(
                name.span(),
                "`request` entry needs exactly one test: `equals`, `one_of`, `regex`, `exists`/`present` or `equals_scope`",
            );
            return None;
        }
        let text = name.get_ref();
        if text.is_empty() {
            self.error(name.span(), format!("`{kind}` needs a name"));
            return None;
        }
        let body_field = || BodyField {
            name: text.as_str().into(),
            path: JsonPath::parse(text).ok(),
        };
        let source = match kind {
            "query" => RequestSource::Query(text.as_str().into()),
            "body" => RequestSource::Body(body_field()),
            "field" => RequestSource::Field(body_field()),
            "header" => match HeaderName::from_bytes(text.to_ascii_lowercase().as_bytes()) {
                Ok(header) => RequestSource::Header(header),
                Err(_) => {
                    self.error(name.span(), format!("invalid header name `{text}`"));
                    return None;
                }
            },
            _ => {
                let Some(regex) = captures
                    .filter(|regex| regex.capture_names().flatten().any(|group| group == text))
                else {
                    self.error(
                        name.span(),
                        format!(
                            "`path_capture = \"{text}\"` needs a `path_regex` with a named group `(?P<{text}>...)`"
                        ),
                    );
                    return None;
                };
                RequestSource::PathCapture {
                    regex: regex.clone(),
                    group: text.as_str().into(),
                }
            }
        };
        let (test, shown) = if let Some(key) = &spec.equals_scope {
            if key.get_ref().trim().is_empty() {
                self.error(key.span(), "`equals_scope` needs a scope key");
                return None;
            }
            (
                RequestValueTest::EqualsScope(key.get_ref().as_str().into()),
                format!("equals_scope {}", key.get_ref()),
            )
        } else {
            let exists = spec.exists.as_ref().or(spec.present.as_ref());
            let (test, shown) = self.compile_value_test(
                spec.equals.as_ref(),
                spec.one_of.as_ref(),
                spec.regex.as_ref(),
                exists,
                spec.ignore_case,
            )?;
            let test = match test {
                ValueTest::Equals(value) => RequestValueTest::Equals(value),
                ValueTest::OneOf(values) => RequestValueTest::OneOf(values),
                ValueTest::Regex(regex) => RequestValueTest::Regex(regex),
                ValueTest::Exists(exists) => RequestValueTest::Exists(exists),
            };
            (test, shown)
        };
        let case = if spec.ignore_case {
            " (ignoring case)"
        } else {
            ""
        };
        Some(RequestTest {
            source,
            test,
            ignore_case: spec.ignore_case,
            description: format!("request {kind} {text} {shown}{case}").into(),
        })
    }
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

fn quoted_list(items: &[String]) -> String {
    items
        .iter()
        .map(|item| format!("{item:?}"))
        .collect::<Vec<_>>()
        .join(", ")
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

    const HEADER: &str = "schema = 1\n";

    #[test]
    fn renders_a_caret_excerpt_like_rustc() {
        let text = format!(
            "{HEADER}[[rule]]\nid = \"x.a\"\nclass = \"lost_access\"\ndescription = \"d\"\n[rule.when]\nstaus = [200]\n"
        );
        let errors = errors_of(&text);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line_column(), Some((7, 1)));
        let shown = errors[0].to_string();
        assert!(
            shown.starts_with("error: unknown field `staus`, expected one of"),
            "{shown}"
        );
        assert!(
            shown.ends_with(" --> rules/x.toml:7:1\n  |\n7 | staus = [200]\n  | ^^^^^\n"),
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
path = "/a"
path_regex = "^/a$"
status = ["500-400"]
json = [{{ path = "a..b", equals = 1 }}, {{ path = "b", regex = "(" }}]

[[rule]]
id = "x.a"
class = "lost_access"
description = "d"
[rule.when]
"#
        );
        let errors = errors_of(&text);
        let messages: Vec<String> = errors
            .iter()
            .map(|error| {
                let (line, column) = error.line_column().unwrap();
                format!(
                    "{line}:{column} {}",
                    error.message().lines().next().unwrap()
                )
            })
            .collect();
        assert_eq!(
            messages,
            vec![
                "5:9 unknown class `lost_acces`, expected one of `lost_access`, `credential_invalid`, `stale_session`",
                "7:16 unknown guard `nope` in `skip_guards`, expected one of `transient`",
                "10:14 set either `path` or `path_regex`, not both",
                "11:11 status range `500-400` is empty: 500 is above 400",
                "12:18 invalid JSON path: empty key at byte 2 in `a..b`",
                "12:62 invalid regex: unclosed group",
                "15:6 duplicate rule id `x.a`",
                "14:1 `when` has no matchers; at least one is required",
            ],
            "{messages:#?}"
        );
        assert!(errors[6]
            .to_string()
            .contains("note: first defined at rules/x.toml:4:6"));
    }

    #[test]
    fn duplicate_ids_are_found_across_files() {
        let rule = |id: &str| {
            format!("{HEADER}[[rule]]\nid = \"{id}\"\nclass = \"lost_access\"\ndescription = \"d\"\nwhen = {{ status = [401] }}\n")
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
            "missing `schema = 1` at the top of the file"
        );
        let errors = errors_of("schema = 2\n");
        assert_eq!(errors[0].line_column(), Some((1, 10)));
    }

    #[test]
    fn request_entries_need_one_source_and_one_test() {
        let text = format!(
            r#"{HEADER}[[rule]]
id = "x.a"
class = "lost_access"
description = "d"
[rule.when]
request = [
  {{ query = "a", body = "b", exists = true }},
  {{ query = "a" }},
  {{ path_capture = "repo", equals_scope = "k" }},
  {{ header = "bad header", present = true }},
]
"#
        );
        let messages: Vec<String> = errors_of(&text)
            .iter()
            .map(|error| error.message().to_owned())
            .collect();
        assert_eq!(messages.len(), 4, "{messages:#?}");
        assert!(messages[0].contains("exactly one source"));
        assert!(messages[1].contains("exactly one test"));
        assert!(messages[2].contains("needs a `path_regex` with a named group"));
        assert!(messages[3].contains("invalid header name"));
    }

    #[test]
    fn too_large_regexes_are_rejected() {
        let text = format!(
            "{HEADER}[[rule]]\nid = \"x.a\"\nclass = \"lost_access\"\ndescription = \"d\"\n[rule.when]\nbody_regex = \"\\\\w{{1000}}\\\\w{{1000}}\"\n"
        );
        let errors = errors_of(&text);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message().contains("too large"), "{}", errors[0]);
    }
}
