//! The recorded corpus: `rules/recorded/<provider>.jsonl`, real responses from public sources,
//! each labelled with what it means. `haltgate rules test` decides every entry and fails on a
//! false halt (a `pass` or `stale_session` entry decided as `lost_access` or
//! `credential_invalid`); it reports, per provider, how many firmly labelled halting signatures
//! the rules recognise.
//!
//! One JSON object per line, the `haltgate classify` input plus the label:
//! `{"id", "provider", "source", "request", "response", "context", "label", "firm", "note"}`.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::exchange::{PreparedExchange, RecordedRequest, RecordedResponse};
use super::{Class, RuleSet, Scope, Verdict};

/// The sub-directory of the rule directory holding the corpus.
pub const RECORDED_DIR: &str = "recorded";

/// One recorded entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedEntry {
    /// Unique within the corpus, e.g. `github-007`.
    pub id: String,
    /// Whose rules decide it; defaults to the file stem.
    #[serde(default)]
    pub provider: Option<String>,
    /// Where the response was recorded: repository, path and commit, or an issue URL.
    pub source: String,
    pub request: RecordedRequest,
    pub response: RecordedResponse,
    /// The session scope; absent means a session without one.
    #[serde(default)]
    pub context: Option<Value>,
    /// What the response means: `lost_access`, `credential_invalid`, `stale_session` or `pass`.
    pub label: Class,
    /// Whether the label is beyond doubt (full exchange recorded, one reading).
    pub firm: bool,
    /// What was reconstructed and why the label was chosen.
    #[serde(default)]
    pub note: Option<String>,
}

/// The figures of one provider.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderFigures {
    pub entries: usize,
    /// `pass` entries decided as a halt.
    pub false_halts: usize,
    /// `stale_session` entries decided as a halt.
    pub stale_halted: usize,
    /// Firm `lost_access` / `credential_invalid` entries, and those decided as exactly their label.
    pub firm_halting: usize,
    pub firm_halting_recognised: usize,
    /// Firm `stale_session` entries, and those decided as `stale_session`.
    pub firm_stale: usize,
    pub firm_stale_recognised: usize,
}

impl ProviderFigures {
    /// Recognised firm halting signatures as a fraction; `None` when there are none.
    pub fn halting_recall(&self) -> Option<f64> {
        if self.firm_halting == 0 {
            return None;
        }
        Some(self.firm_halting_recognised as f64 / self.firm_halting as f64)
    }
}

/// One entry worth showing: where it is, what it should be, what it was decided as.
#[derive(Debug, Clone)]
pub struct Finding {
    pub id: String,
    pub provider: String,
    pub label: Class,
    pub firm: bool,
    pub decided: Class,
    pub rule: Option<String>,
    pub status: u16,
}

/// The outcome of deciding the whole corpus.
#[derive(Debug, Default)]
pub struct CorpusReport {
    /// Per provider, in name order.
    pub providers: BTreeMap<String, ProviderFigures>,
    /// `pass` or `stale_session` entries decided as a halt: each fails the run.
    pub false_halts: Vec<Finding>,
    /// Halting and `stale_session` entries not decided as exactly their label (firm and not).
    pub unrecognised: Vec<Finding>,
    /// `pass` entries decided as `stale_session`: a live id would be reset.
    pub unexpected_resets: Vec<Finding>,
    /// Unreadable files and lines, unknown providers, duplicate ids: each fails the run.
    pub errors: Vec<String>,
}

impl CorpusReport {
    /// No false halt, no stale session halted, no error.
    pub fn passed(&self) -> bool {
        self.false_halts.is_empty() && self.errors.is_empty()
    }

    /// Prints the figures per provider, the false halts, the unrecognised halting entries and
    /// the errors.
    pub fn print(&self, out: &mut dyn Write) -> io::Result<()> {
        let entries: usize = self.providers.values().map(|f| f.entries).sum();
        writeln!(out, "recorded corpus: {entries} entries")?;
        for (provider, figures) in &self.providers {
            let recall = match figures.halting_recall() {
                Some(recall) => format!("{:.1}%", recall * 100.0),
                None => "n/a".to_owned(),
            };
            writeln!(
                out,
                "  {provider}: {} entries, {} false halts, {} stale sessions halted, firm halting recognised {}/{} ({recall}), firm stale sessions recognised {}/{}",
                figures.entries,
                figures.false_halts,
                figures.stale_halted,
                figures.firm_halting_recognised,
                figures.firm_halting,
                figures.firm_stale_recognised,
                figures.firm_stale,
            )?;
        }
        for finding in &self.false_halts {
            writeln!(out, "FALSE HALT {}", finding.describe())?;
        }
        for finding in &self.unexpected_resets {
            writeln!(out, "unexpected reset {}", finding.describe())?;
        }
        for finding in &self.unrecognised {
            writeln!(out, "not recognised {}", finding.describe())?;
        }
        for error in &self.errors {
            writeln!(out, "error: {error}")?;
        }
        Ok(())
    }
}

impl Finding {
    fn describe(&self) -> String {
        let decided = match &self.rule {
            Some(rule) => format!("{} by {rule}", self.decided),
            None => self.decided.to_string(),
        };
        format!(
            "{} ({}, status {}): labelled {}{}, decided {decided}",
            self.id,
            self.provider,
            self.status,
            self.label,
            if self.firm { " (firm)" } else { "" },
        )
    }
}

/// Decides every entry of `dir/recorded/*.jsonl` with `rules`. `None` when the directory does
/// not exist (a rule directory without a corpus).
pub fn run(rules: &RuleSet, dir: &Path, max_body_bytes: usize) -> Option<CorpusReport> {
    let corpus_dir = dir.join(RECORDED_DIR);
    if !corpus_dir.is_dir() {
        return None;
    }
    let mut report = CorpusReport::default();
    let files = match corpus_files(&corpus_dir) {
        Ok(files) => files,
        Err(error) => {
            report.errors.push(error);
            return Some(report);
        }
    };
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for path in files {
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) => {
                report
                    .errors
                    .push(format!("{}: cannot read: {error}", path.display()));
                continue;
            }
        };
        let stem = path
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let place = format!("{}:{}", path.display(), index + 1);
            let entry: RecordedEntry = match serde_json::from_str(line) {
                Ok(entry) => entry,
                Err(error) => {
                    report.errors.push(format!("{place}: {error}"));
                    continue;
                }
            };
            if let Some(earlier) = seen.insert(entry.id.clone(), place.clone()) {
                report.errors.push(format!(
                    "{place}: id `{}` already used at {earlier}",
                    entry.id
                ));
            }
            if let Err(error) = decide_entry(rules, max_body_bytes, &stem, entry, &mut report) {
                report.errors.push(format!("{place}: {error}"));
            }
        }
    }
    Some(report)
}

fn corpus_files(corpus_dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(corpus_dir)
        .map_err(|error| format!("cannot read {}: {error}", corpus_dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.is_file() && path.extension().is_some_and(|ext| ext == "jsonl"))
        .collect();
    files.sort();
    Ok(files)
}

fn decide_entry(
    rules: &RuleSet,
    max_body_bytes: usize,
    file_stem: &str,
    entry: RecordedEntry,
    report: &mut CorpusReport,
) -> Result<(), String> {
    if !matches!(
        entry.label,
        Class::LostAccess | Class::CredentialInvalid | Class::StaleSession | Class::Pass
    ) {
        return Err(format!(
            "label `{}` is not one of lost_access, credential_invalid, stale_session, pass",
            entry.label
        ));
    }
    let provider = entry.provider.as_deref().unwrap_or(file_stem).to_owned();
    if !rules.providers().any(|known| known == provider) {
        return Err(format!("no rule file for provider `{provider}`"));
    }
    let prepared = PreparedExchange::prepare(&entry.request, &entry.response)?;
    let exchange = prepared.exchange(
        &provider,
        Scope::Known(entry.context.as_ref()),
        max_body_bytes,
    );
    let Verdict::Decided(decision) = rules.classify(&exchange) else {
        return Err("the engine asked for the session scope although it was given".into());
    };
    let halts = |class: Class| matches!(class, Class::LostAccess | Class::CredentialInvalid);
    let finding = Finding {
        id: entry.id,
        provider: provider.clone(),
        label: entry.label,
        firm: entry.firm,
        decided: decision.class,
        rule: decision.rule.map(|rule| rule.to_string()),
        status: entry.response.status,
    };
    let figures = report.providers.entry(provider).or_default();
    figures.entries += 1;
    if halts(finding.label) {
        let recognised = finding.decided == finding.label;
        if finding.firm {
            figures.firm_halting += 1;
            figures.firm_halting_recognised += usize::from(recognised);
        }
        if !recognised {
            report.unrecognised.push(finding);
        }
    } else if halts(finding.decided) {
        if finding.label == Class::StaleSession {
            figures.stale_halted += 1;
        } else {
            figures.false_halts += 1;
        }
        report.false_halts.push(finding);
    } else if finding.label == Class::StaleSession {
        let recognised = finding.decided == Class::StaleSession;
        if finding.firm {
            figures.firm_stale += 1;
            figures.firm_stale_recognised += usize::from(recognised);
        }
        if !recognised {
            report.unrecognised.push(finding);
        }
    } else if finding.decided == Class::StaleSession {
        report.unexpected_resets.push(finding);
    }
    Ok(())
}
