//! The shipped rules on the recorded corpus (rules/recorded/*.jsonl): no false halt, no stale
//! session halted, and per provider at least 98 % of the firmly labelled halting signatures
//! recognised as exactly their class.

use std::path::PathBuf;

use haltgate::rules::recorded::{self, CorpusReport};
use haltgate::rules::{cases, RuleSet, DEFAULT_MAX_BODY_BYTES};

/// Share of firm halting entries each provider must recognise.
const MIN_HALTING_RECALL: f64 = 0.98;

fn shipped() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules")
}

fn corpus() -> CorpusReport {
    let rules = RuleSet::load_dir(&shipped()).expect("the shipped rules compile");
    recorded::run(&rules, &shipped(), DEFAULT_MAX_BODY_BYTES).expect("rules/recorded exists")
}

fn printed(report: &CorpusReport) -> String {
    let mut out = Vec::new();
    report.print(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn no_recorded_response_halts_falsely() {
    let report = corpus();
    let shown = printed(&report);
    assert!(report.errors.is_empty(), "{shown}");
    assert!(report.false_halts.is_empty(), "{shown}");
    let entries: usize = report.providers.values().map(|f| f.entries).sum();
    assert!(
        entries >= 200,
        "the corpus was read: {entries} entries\n{shown}"
    );
    for (provider, figures) in &report.providers {
        assert_eq!(figures.false_halts, 0, "{provider}: {shown}");
        assert_eq!(figures.stale_halted, 0, "{provider}: {shown}");
    }
    assert!(report.passed(), "{shown}");
}

#[test]
fn every_provider_recognises_its_firm_halting_signatures() {
    let report = corpus();
    let shown = printed(&report);
    for provider in ["anthropic", "generic", "github", "mcp", "openai", "slack"] {
        let figures = &report.providers[provider];
        let recall = figures
            .halting_recall()
            .unwrap_or_else(|| panic!("{provider} has no firm halting entry: {shown}"));
        assert!(
            recall >= MIN_HALTING_RECALL,
            "{provider}: {}/{} firm halting signatures recognised: {shown}",
            figures.firm_halting_recognised,
            figures.firm_halting
        );
    }
    let stale = &report.providers["mcp"];
    assert_eq!(stale.firm_stale_recognised, stale.firm_stale, "{shown}");
    assert!(report.providers.contains_key("linear"), "{shown}");
}

#[test]
fn rules_test_prints_the_corpus_figures() {
    let mut out = Vec::new();
    let ok = cases::run(&shipped(), DEFAULT_MAX_BODY_BYTES, &mut out).unwrap();
    let output = String::from_utf8(out).unwrap();
    assert!(ok, "{output}");
    assert!(output.contains("recorded corpus: "), "{output}");
    assert!(output.contains("  github: "), "{output}");
    assert!(!output.contains("FALSE HALT"), "{output}");
}

/// The recorded entry `id` of the shipped corpus, as a JSON object.
fn shipped_entry(provider: &str, id: &str) -> serde_json::Value {
    let path = shipped().join("recorded").join(format!("{provider}.jsonl"));
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .find(|entry| entry["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {}", path.display()))
}

fn run_on(lines: &[String]) -> CorpusReport {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("recorded")).unwrap();
    std::fs::write(
        dir.path().join("recorded").join("slack.jsonl"),
        lines.join("\n"),
    )
    .unwrap();
    let rules = RuleSet::load_dir(&shipped()).unwrap();
    recorded::run(&rules, dir.path(), DEFAULT_MAX_BODY_BYTES).unwrap()
}

#[test]
fn a_halt_on_a_pass_or_stale_label_fails_and_misses_are_listed() {
    let halting = shipped_entry("slack", "slack-014");
    assert_eq!(halting["label"], "lost_access", "{halting}");
    let mut as_pass = halting.clone();
    as_pass["id"] = "relabelled-pass".into();
    as_pass["label"] = "pass".into();
    let mut as_stale = halting.clone();
    as_stale["id"] = "relabelled-stale".into();
    as_stale["label"] = "stale_session".into();
    let mut as_credential = halting.clone();
    as_credential["id"] = "relabelled-credential".into();
    as_credential["label"] = "credential_invalid".into();
    as_credential["firm"] = true.into();

    let report = run_on(&[
        halting.to_string(),
        as_pass.to_string(),
        as_stale.to_string(),
        as_credential.to_string(),
    ]);
    let shown = printed(&report);
    assert!(!report.passed(), "{shown}");
    let figures = &report.providers["slack"];
    assert_eq!(figures.entries, 4, "{shown}");
    assert_eq!(figures.false_halts, 1, "{shown}");
    assert_eq!(figures.stale_halted, 1, "{shown}");
    assert!(shown.contains("FALSE HALT relabelled-pass (slack, status 200): labelled pass (firm), decided lost_access by slack.not_in_channel"), "{shown}");
    assert!(shown.contains("FALSE HALT relabelled-stale "), "{shown}");
    assert!(
        shown.contains("not recognised relabelled-credential "),
        "{shown}"
    );
    let firm_recognised = usize::from(halting["firm"] == true);
    assert_eq!(figures.firm_halting, firm_recognised + 1, "{shown}");
    assert_eq!(figures.firm_halting_recognised, firm_recognised, "{shown}");
}

#[test]
fn unreadable_lines_unknown_providers_labels_and_duplicate_ids_are_errors() {
    let entry = shipped_entry("slack", "slack-014");
    let mut unknown_provider = entry.clone();
    unknown_provider["id"] = "elsewhere".into();
    unknown_provider["provider"] = "jira".into();
    let mut bad_label = entry.clone();
    bad_label["id"] = "bad-label".into();
    bad_label["label"] = "manual".into();
    let mut extra_field = entry.clone();
    extra_field["id"] = "extra".into();
    extra_field["labell"] = "pass".into();
    let report = run_on(&[
        entry.to_string(),
        "{not json".to_owned(),
        unknown_provider.to_string(),
        bad_label.to_string(),
        extra_field.to_string(),
        entry.to_string(),
    ]);
    let shown = printed(&report);
    assert!(!report.passed(), "{shown}");
    assert_eq!(report.errors.len(), 5, "{shown}");
    assert!(shown.contains("slack.jsonl:2: "), "{shown}");
    assert!(
        shown.contains("no rule file for provider `jira`"),
        "{shown}"
    );
    assert!(shown.contains("label `manual`"), "{shown}");
    assert!(shown.contains("unknown field `labell`"), "{shown}");
    assert!(shown.contains("id `slack-014` already used at "), "{shown}");
}

#[test]
fn a_rule_directory_without_a_corpus_has_no_report() {
    let dir = tempfile::tempdir().unwrap();
    let rules = RuleSet::load_dir(&shipped()).unwrap();
    assert!(recorded::run(&rules, dir.path(), DEFAULT_MAX_BODY_BYTES).is_none());
}
