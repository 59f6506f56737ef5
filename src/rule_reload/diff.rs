//! `haltgate rules diff OLD NEW --corpus FILE`: which recorded responses an edit would decide
//! differently, before it goes live. The corpus is the JSON-lines format `haltgate classify`
//! reads; each line is decided by both rule sets exactly as `classify` decides it.

use std::io::{self, Write};

use serde_json::{json, Value};

use crate::rules::RuleSet;

/// Counts of one diff run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DiffSummary {
    pub lines: usize,
    /// Lines whose class changed.
    pub class_changed: usize,
    /// Lines with the same class, decided by another rule.
    pub rule_changed: usize,
    /// Lines one of the sets could not decide.
    pub errors: usize,
}

/// Decides every corpus line with `old` and `new` and prints one JSON line per line whose
/// class or deciding rule differs, then a summary line for people.
pub fn run(
    old: &RuleSet,
    new: &RuleSet,
    hosts: &[(String, String)],
    corpus: &[u8],
    out: &mut dyn Write,
) -> io::Result<DiffSummary> {
    let decide = |rules: &RuleSet| -> io::Result<Vec<Value>> {
        let mut decided = Vec::new();
        crate::classify::run(
            rules,
            hosts,
            crate::rules::DEFAULT_MAX_BODY_BYTES,
            &mut &corpus[..],
            &mut decided,
        )?;
        Ok(decided
            .split(|byte| *byte == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| serde_json::from_slice(line).unwrap_or(Value::Null))
            .collect())
    };
    let (before, after) = (decide(old)?, decide(new)?);
    // `classify` skips blank lines; number the decided ones as the corpus does.
    let numbers: Vec<usize> = corpus
        .split(|byte| *byte == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .map(|(index, _)| index + 1)
        .collect();
    let mut summary = DiffSummary::default();
    for (index, (old_line, new_line)) in before.iter().zip(&after).enumerate() {
        summary.lines += 1;
        let line = numbers.get(index).copied().unwrap_or(index + 1);
        let id = old_line.get("id").cloned().unwrap_or(Value::Null);
        let error = old_line.get("error").or_else(|| new_line.get("error"));
        if let Some(error) = error {
            summary.errors += 1;
            let diff = json!({"line": line, "id": id, "error": error});
            writeln!(out, "{diff}")?;
            continue;
        }
        let (old_class, new_class) = (&old_line["class"], &new_line["class"]);
        let (old_rule, new_rule) = (&old_line["rule"], &new_line["rule"]);
        let change = if old_class != new_class {
            summary.class_changed += 1;
            "class"
        } else if old_rule != new_rule {
            summary.rule_changed += 1;
            "rule"
        } else {
            continue;
        };
        let diff = json!({
            "line": line,
            "id": id,
            "change": change,
            "old": {"class": old_class, "rule": old_rule},
            "new": {"class": new_class, "rule": new_rule},
        });
        writeln!(out, "{diff}")?;
    }
    writeln!(
        out,
        "{} of {} recorded responses change class, {} keep their class under another rule, {} could not be decided",
        summary.class_changed, summary.lines, summary.rule_changed, summary.errors
    )?;
    Ok(summary)
}
