//! Rule test cases: `rules/tests/<provider>/*.{json,toml}` and the shared
//! `rules/tests/transient/*` corpus, run in process against the compiled rules (`haltgate rules test`, `rules explain`).
//! `rules test` also decides the recorded corpus `rules/recorded/*.jsonl` when it exists
//! ([`recorded`]).
//!
//! A case with `expect.rule = X` is a positive case for X; `not_rules: [X]` a negative one. Every
//! enabled rule needs both. Transient cases run against every provider and must pass with no rule
//! matching, shadow rules included.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::check::readable_dir;
use super::exchange::{
    default_hosts, resolve_provider, PreparedExchange, RecordedRequest, RecordedResponse,
};
use super::{recorded, Class, Mode, RuleOutcome, RuleSet, Scope, Verdict};

/// The sub-directory of `tests/` holding the shared transient corpus.
pub const TRANSIENT_DIR: &str = "transient";

/// One case file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    #[serde(default)]
    pub id: Option<Value>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub provider: Option<String>,
    /// The session scope.
    #[serde(default)]
    pub context: Option<Value>,
    pub request: RecordedRequest,
    pub response: RecordedResponse,
    #[serde(default)]
    pub expect: Option<Expect>,
    #[serde(default)]
    pub not_rules: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub class: Class,
    #[serde(default)]
    pub rule: Option<String>,
}

impl CaseFile {
    /// Reads a `.toml` case as TOML, anything else as JSON.
    pub fn read(path: &Path) -> Result<CaseFile, String> {
        let text =
            std::fs::read_to_string(path).map_err(|error| format!("cannot read: {error}"))?;
        if path.extension().is_some_and(|ext| ext == "toml") {
            toml::from_str(&text).map_err(|error| format!("invalid case file: {error}"))
        } else {
            serde_json::from_str(&text).map_err(|error| format!("invalid case file: {error}"))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum CaseKind {
    /// In `tests/<provider>/`.
    Provider(String),
    Transient,
}

/// Result of one case: failures (empty when it passed) and the explanations worth showing.
#[derive(Debug, Default)]
struct CaseRun {
    failures: Vec<String>,
    explanations: Vec<String>,
}

/// Runs every case under `dir/tests` against the rules in `dir`, prints each failure with its
/// explanation, the coverage problems, the recorded corpus's figures and a summary. True when
/// everything passed (the corpus without a false halt) and at least one case ran; `Err` when
/// `dir` cannot be read. Bodies over `max_body_bytes` are uninspected,
/// as in the proxy ([`super::DEFAULT_MAX_BODY_BYTES`] unless configured otherwise).
pub fn run(dir: &Path, max_body_bytes: usize, out: &mut dyn Write) -> io::Result<bool> {
    readable_dir(dir)?;
    let rules = match RuleSet::load_dir(dir) {
        Ok(rules) => rules,
        Err(errors) => {
            writeln!(out, "{errors}")?;
            writeln!(
                out,
                "cannot run the cases: the rules have {} error(s)",
                errors.len()
            )?;
            return Ok(false);
        }
    };
    let tests_dir = dir.join("tests");
    let files = match discover(&tests_dir) {
        Ok(files) => files,
        Err(message) => {
            writeln!(out, "error: {message}")?;
            writeln!(out, "0 passed, 0 failed")?;
            return Ok(false);
        }
    };
    let hosts = default_hosts();
    let mut coverage: HashMap<&str, (usize, usize)> = HashMap::new();
    let (mut passed, mut failed) = (0usize, 0usize);
    for (path, kind) in &files {
        let run = match CaseFile::read(path) {
            Err(message) => CaseRun {
                failures: vec![message],
                explanations: Vec::new(),
            },
            Ok(case) => {
                if let CaseKind::Provider(_) = kind {
                    if let Some(expect_rule) = case.expect.as_ref().and_then(|e| e.rule.as_deref())
                    {
                        if let Some(info) = rules.rules().find(|info| info.id == expect_rule) {
                            coverage.entry(info.id).or_default().0 += 1;
                        }
                    }
                    for id in &case.not_rules {
                        if let Some(info) = rules.rules().find(|info| info.id == id) {
                            coverage.entry(info.id).or_default().1 += 1;
                        }
                    }
                }
                match kind {
                    CaseKind::Provider(dir_provider) => {
                        run_provider_case(&rules, max_body_bytes, &case, dir_provider, &hosts)
                    }
                    CaseKind::Transient => run_transient_case(&rules, max_body_bytes, &case),
                }
            }
        };
        if run.failures.is_empty() {
            passed += 1;
            continue;
        }
        failed += 1;
        writeln!(out, "FAIL {}", path.display())?;
        for failure in &run.failures {
            writeln!(out, "  {failure}")?;
        }
        for explanation in &run.explanations {
            for line in explanation.lines() {
                writeln!(out, "    | {line}")?;
            }
        }
    }

    let mut uncovered = Vec::new();
    for info in rules.rules().filter(|info| info.enabled) {
        let (positive, negative) = coverage.get(info.id).copied().unwrap_or_default();
        let missing = match (positive, negative) {
            (0, 0) => "no positive and no negative case",
            (0, _) => "no positive case (expect.rule)",
            (_, 0) => "no negative case (not_rules)",
            _ => continue,
        };
        uncovered.push(format!(
            "rule {} ({}) has {missing}",
            info.id, info.provider
        ));
    }
    for line in &uncovered {
        writeln!(out, "UNTESTED {line}")?;
    }
    let total = passed + failed;
    if total == 0 {
        writeln!(
            out,
            "error: no test cases found under {}",
            tests_dir.display()
        )?;
    }
    if !uncovered.is_empty() {
        writeln!(out, "{} enabled rule(s) lack cases", uncovered.len())?;
    }
    let corpus_ok = match recorded::run(&rules, dir, max_body_bytes) {
        None => true,
        Some(report) => {
            report.print(out)?;
            report.passed()
        }
    };
    writeln!(out, "{passed} passed, {failed} failed")?;
    Ok(total > 0 && failed == 0 && uncovered.is_empty() && corpus_ok)
}

/// Case files (`.json` or `.toml`), sorted: `tests/<provider>/*` and `tests/transient/*`.
fn discover(tests_dir: &Path) -> Result<Vec<(PathBuf, CaseKind)>, String> {
    let read = |dir: &Path| -> Result<Vec<PathBuf>, String> {
        let entries = std::fs::read_dir(dir)
            .map_err(|error| format!("cannot read {}: {error}", dir.display()))?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .collect();
        paths.sort();
        Ok(paths)
    };
    let mut files = Vec::new();
    for path in read(tests_dir)? {
        if !path.is_dir() {
            continue;
        }
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let kind = if name == TRANSIENT_DIR {
            CaseKind::Transient
        } else {
            CaseKind::Provider(name)
        };
        for file in read(&path)? {
            let is_case = file
                .extension()
                .is_some_and(|ext| ext == "json" || ext == "toml");
            if is_case && file.is_file() {
                files.push((file, kind.clone()));
            }
        }
    }
    Ok(files)
}

fn run_provider_case(
    rules: &RuleSet,
    max_body_bytes: usize,
    case: &CaseFile,
    dir_provider: &str,
    hosts: &[(String, String)],
) -> CaseRun {
    let mut run = CaseRun::default();
    if !rules.providers().any(|provider| provider == dir_provider) {
        run.failures.push(format!(
            "no rule file for provider `{dir_provider}` (the case's directory)"
        ));
        return run;
    }
    let prepared = match PreparedExchange::prepare(&case.request, &case.response) {
        Ok(prepared) => prepared,
        Err(message) => {
            run.failures.push(message);
            return run;
        }
    };
    let provider = resolve_provider(case.provider.as_deref(), prepared.host.as_deref(), hosts)
        .unwrap_or(dir_provider);
    if provider != dir_provider {
        run.failures.push(format!(
            "the case is for provider `{provider}` but sits in tests/{dir_provider}/"
        ));
        return run;
    }
    if case.expect.is_none() && case.not_rules.is_empty() {
        run.failures
            .push("the case has neither `expect` nor `not_rules`, so it checks nothing".into());
        return run;
    }
    run.failures = check_case(
        rules,
        max_body_bytes,
        case,
        &prepared,
        provider,
        &mut run.explanations,
    );
    run
}

fn run_transient_case(rules: &RuleSet, max_body_bytes: usize, case: &CaseFile) -> CaseRun {
    let mut run = CaseRun::default();
    let prepared = match PreparedExchange::prepare(&case.request, &case.response) {
        Ok(prepared) => prepared,
        Err(message) => {
            run.failures.push(message);
            return run;
        }
    };
    let scope = Scope::Known(case.context.as_ref());
    for provider in rules.providers() {
        let exchange = prepared.exchange(provider, scope, max_body_bytes);
        let explanation = rules.explain(&exchange);
        let mut failures = engine_consistency(rules, max_body_bytes, &prepared, provider, case);
        let matched: Vec<&str> = explanation
            .rules
            .iter()
            .filter(|trace| trace.outcome == RuleOutcome::Matched)
            .map(|trace| &*trace.id)
            .collect();
        if !matched.is_empty() {
            failures.push(format!(
                "provider {provider}: rule(s) {} matched a transient response",
                matched.join(", ")
            ));
        }
        if !failures.is_empty() {
            run.failures.extend(failures);
            run.explanations.push(explanation.to_string());
        }
    }
    run
}

/// Checks `expect` and `not_rules`; returns the failures.
fn check_case(
    rules: &RuleSet,
    max_body_bytes: usize,
    case: &CaseFile,
    prepared: &PreparedExchange,
    provider: &str,
    explanations: &mut Vec<String>,
) -> Vec<String> {
    let exchange = prepared.exchange(
        provider,
        Scope::Known(case.context.as_ref()),
        max_body_bytes,
    );
    let explanation = rules.explain(&exchange);
    let mut failures = engine_consistency(rules, max_body_bytes, prepared, provider, case);
    let Verdict::Decided(decision) = &explanation.verdict else {
        failures.push("the engine asked for the scope although it was given".into());
        explanations.push(explanation.to_string());
        return failures;
    };
    let got = match &decision.rule {
        Some(rule) => format!("{} by {rule}", decision.class),
        None => format!("{} (no rule)", decision.class),
    };
    let find = |id: &str| rules.rules().find(|info| info.id == id);
    if let Some(expect) = &case.expect {
        match expect.rule.as_deref() {
            None => {
                if decision.class != expect.class || decision.rule.is_some() {
                    failures.push(format!("expected {} (no rule), got {got}", expect.class));
                }
            }
            Some(id) => match find(id) {
                None => failures.push(format!("expect.rule names an unknown rule `{id}`")),
                Some(info) if info.provider != provider => failures.push(format!(
                    "expect.rule `{id}` belongs to provider {}, not {provider}",
                    info.provider
                )),
                Some(info) if !info.enabled => {
                    failures.push(format!("expect.rule `{id}` is disabled, it cannot match"))
                }
                Some(info) if info.mode == Mode::Shadow => {
                    if !decision.shadow.iter().any(|shadow| &**shadow == id) {
                        failures.push(format!("expected shadow rule {id} to match; it did not"));
                    }
                    if expect.class != info.class {
                        failures.push(format!(
                            "expect.class is {} but shadow rule {id} has class {}",
                            expect.class, info.class
                        ));
                    }
                }
                Some(_) => {
                    if decision.rule.as_deref() != Some(id) || decision.class != expect.class {
                        failures.push(format!("expected {} by {id}, got {got}", expect.class));
                    }
                }
            },
        }
    }
    for id in &case.not_rules {
        match (find(id), explanation.rule(id)) {
            (None, _) => failures.push(format!("not_rules names an unknown rule `{id}`")),
            (Some(info), None) => failures.push(format!(
                "not_rules `{id}` belongs to provider {}, not {provider}",
                info.provider
            )),
            (Some(_), Some(trace)) => {
                if trace.outcome == RuleOutcome::Matched {
                    failures.push(format!(
                        "rule {id} matched, but the case lists it in not_rules"
                    ));
                }
            }
        }
    }
    if !failures.is_empty() {
        explanations.push(explanation.to_string());
    }
    failures
}

/// Engine self-checks on every case: `classify` (prefiltered) agrees with `explain` (exhaustive),
/// and classifying without the scope either asks for it or reaches the same verdict.
fn engine_consistency(
    rules: &RuleSet,
    max_body_bytes: usize,
    prepared: &PreparedExchange,
    provider: &str,
    case: &CaseFile,
) -> Vec<String> {
    let mut failures = Vec::new();
    let known = prepared.exchange(
        provider,
        Scope::Known(case.context.as_ref()),
        max_body_bytes,
    );
    let classified = rules.classify(&known);
    let explained = rules.explain(&known).verdict;
    if classified != explained {
        failures.push(format!(
            "engine: classify gave {classified:?} but explain gave {explained:?} (provider {provider})"
        ));
    }
    let unknown = prepared.exchange(provider, Scope::Unknown, max_body_bytes);
    let without_scope = rules.classify(&unknown);
    if without_scope != Verdict::NeedsScope && without_scope != classified {
        failures.push(format!(
            "engine: without the scope classify gave {without_scope:?}, with it {classified:?} (provider {provider})"
        ));
    }
    failures
}

/// `rules explain CASE.json`: prints how the rules in `dir` decide the case (for every provider
/// when the case names none and its host is unknown) and checks its expectations if it has any.
/// True when the case could be explained and its expectations hold; `Err` when the rules
/// directory or the case file cannot be read.
pub fn explain(
    dir: &Path,
    case_path: &Path,
    max_body_bytes: usize,
    out: &mut dyn Write,
) -> io::Result<bool> {
    readable_dir(dir)?;
    std::fs::metadata(case_path).map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("cannot read the case {}: {error}", case_path.display()),
        )
    })?;
    let rules = match RuleSet::load_dir(dir) {
        Ok(rules) => rules,
        Err(errors) => {
            writeln!(out, "{errors}")?;
            return Ok(false);
        }
    };
    let case = match CaseFile::read(case_path) {
        Ok(case) => case,
        Err(message) => {
            writeln!(out, "error: {}: {message}", case_path.display())?;
            return Ok(false);
        }
    };
    let prepared = match PreparedExchange::prepare(&case.request, &case.response) {
        Ok(prepared) => prepared,
        Err(message) => {
            writeln!(out, "error: {}: {message}", case_path.display())?;
            return Ok(false);
        }
    };
    if let Some(description) = &case.description {
        writeln!(out, "case: {description}")?;
    }
    let hosts = default_hosts();
    let from_directory = case_path
        .parent()
        .and_then(Path::file_name)
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| rules.providers().any(|provider| provider == name));
    let providers: Vec<String> =
        match resolve_provider(case.provider.as_deref(), prepared.host.as_deref(), &hosts) {
            Some(provider) => vec![provider.to_owned()],
            None => match from_directory {
                Some(provider) => vec![provider],
                None => rules.providers().map(str::to_owned).collect(),
            },
        };
    let mut ok = true;
    for provider in &providers {
        if providers.len() > 1 {
            writeln!(out, "== {provider} ==")?;
        }
        let exchange = prepared.exchange(
            provider,
            Scope::Known(case.context.as_ref()),
            max_body_bytes,
        );
        write!(out, "{}", rules.explain(&exchange))?;
        if case.expect.is_some() || !case.not_rules.is_empty() {
            let failures = check_case(
                &rules,
                max_body_bytes,
                &case,
                &prepared,
                provider,
                &mut Vec::new(),
            );
            if failures.is_empty() {
                writeln!(out, "expectations: ok")?;
            } else {
                ok = false;
                for failure in failures {
                    writeln!(out, "expectation failed: {failure}")?;
                }
            }
        }
    }
    Ok(ok)
}

/// The failures of the cases in `tests_dir/<provider>/` and of the shared transient corpus
/// against `rules`, each prefixed with its case file. Hot reload runs this for every changed
/// rule file before it goes live; coverage (a case per rule) is left to `rules test`. A missing
/// `tests_dir` has no cases, so nothing fails.
pub fn failures_for_provider(
    rules: &RuleSet,
    max_body_bytes: usize,
    tests_dir: &Path,
    provider: &str,
) -> Vec<String> {
    let Ok(files) = discover(tests_dir) else {
        return Vec::new();
    };
    let hosts = default_hosts();
    let mut failures = Vec::new();
    for (path, kind) in files {
        let run = match (&kind, CaseFile::read(&path)) {
            (CaseKind::Provider(dir), _) if dir != provider => continue,
            (_, Err(message)) => CaseRun {
                failures: vec![message],
                explanations: Vec::new(),
            },
            (CaseKind::Provider(dir), Ok(case)) => {
                run_provider_case(rules, max_body_bytes, &case, dir, &hosts)
            }
            (CaseKind::Transient, Ok(case)) => run_transient_case(rules, max_body_bytes, &case),
        };
        let shown = path.display();
        failures.extend(run.failures.into_iter().map(|f| format!("{shown}: {f}")));
    }
    failures
}
