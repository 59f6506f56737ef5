//! `haltgate rules check [DIR]`: compile the rule files and report every error at once.

use std::io::{self, Write};
use std::path::Path;

use super::RuleSet;

/// Prints `ok: N rules in M files`, or every error with its location and a summary line.
pub fn run(dir: &Path, out: &mut dyn Write) -> io::Result<bool> {
    match RuleSet::load_dir(dir) {
        Ok(rules) => {
            writeln!(
                out,
                "ok: {} in {}",
                counted(rules.rule_count(), "rule"),
                counted(rules.file_count(), "file")
            )?;
            Ok(true)
        }
        Err(errors) => {
            writeln!(out, "{errors}")?;
            writeln!(
                out,
                "{} in {}",
                counted(errors.len(), "error"),
                dir.display()
            )?;
            Ok(false)
        }
    }
}

fn counted(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}
