//! `haltgate rules check [DIR]`: compile the rule files and report every error at once.

use std::io::{self, Write};
use std::path::Path;

use super::RuleSet;

/// Prints `ok: N rules in M files`, or every error with its location and a summary line.
/// An unreadable directory is an `Err`: the check could not run at all.
pub fn run(dir: &Path, out: &mut dyn Write) -> io::Result<bool> {
    readable_dir(dir)?;
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

/// Fails with the directory named when it cannot be listed.
pub(crate) fn readable_dir(dir: &Path) -> io::Result<()> {
    std::fs::read_dir(dir).map(drop).map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("cannot read the directory {}: {error}", dir.display()),
        )
    })
}
