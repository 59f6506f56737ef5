//! Builds the candidate rule set of one reload: every changed file is parsed, compiled and
//! tested on its own, then the whole set is compiled again. A file that fails is left out of
//! the candidate alone: its previous version stays, the other files' changes go on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;

use super::snapshot::{RuleFile, Snapshot};
use crate::rules::{RuleError, RuleSet, RuleSource};

/// Whether the previous files are the running set or the copy kept on disk at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The previous files are the last good copy; the files on disk are authoritative when
    /// they are sound, so removing a rule while the proxy was down is no truncation.
    Start,
    /// The previous files are live.
    Reload,
}

/// One problem with a rule file, located when the parser or compiler knows where.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FileError {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// `file:line:column`, or the file alone.
    pub location: String,
    pub message: String,
}

impl FileError {
    fn unlocated(file: &str, message: impl Into<String>) -> FileError {
        FileError {
            file: file.to_owned(),
            line: None,
            column: None,
            location: file.to_owned(),
            message: message.into(),
        }
    }

    fn from_rule_error(error: &RuleError) -> FileError {
        let file = error.file().to_owned();
        let (line, column) = error.line_column().unzip();
        let location = match (line, column) {
            (Some(line), Some(column)) => format!("{file}:{line}:{column}"),
            _ => file.clone(),
        };
        FileError {
            file,
            line,
            column,
            location,
            message: error.message().to_owned(),
        }
    }
}

/// What is live of one file after a reload.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FileState {
    /// The file's content on disk is live.
    Live,
    /// The content on disk was refused; the previous version (or at start the last good
    /// copy) stays live.
    Kept,
    /// The content on disk was refused and no earlier version exists: the file has no rules live.
    Refused,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileStatus {
    pub file: String,
    pub provider: String,
    pub state: FileState,
    /// Hash of the live content (none when refused).
    pub live_hash: Option<String>,
    /// Hash of the content on disk.
    pub disk_hash: Option<String>,
    /// Rules live from this file, disabled ones included.
    pub rules: usize,
    pub errors: Vec<FileError>,
}

/// A reload's candidate.
pub struct Built {
    /// The files that go live.
    pub files: BTreeMap<String, RuleFile>,
    pub set: RuleSet,
    pub statuses: Vec<FileStatus>,
    /// Files whose new content or deletion goes live.
    pub changed: Vec<String>,
    /// Files whose content on disk was refused.
    pub rejected: Vec<String>,
    pub errors: Vec<FileError>,
}

/// Shown path of a file: the rules directory joined with its name, as `rules check` shows it.
pub fn display_path(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

fn source(dir: &Path, file: &RuleFile) -> RuleSource {
    RuleSource::new(
        display_path(dir, &file.name),
        file.provider(),
        file.text.to_string(),
    )
}

/// Checks one changed file on its own; the errors refuse it.
fn check_file(
    dir: &Path,
    file: &RuleFile,
    previous: Option<&RuleSet>,
    phase: Phase,
    max_body_bytes: usize,
) -> Vec<FileError> {
    let shown = display_path(dir, &file.name);
    if file.text.trim().is_empty() {
        return vec![FileError::unlocated(
            &shown,
            "the file is empty: refused as a likely truncated write (delete the file to remove its rules)",
        )];
    }
    let set = match RuleSet::from_sources(vec![source(dir, file)]) {
        Ok(set) => set,
        Err(errors) => {
            return errors
                .errors()
                .iter()
                .map(FileError::from_rule_error)
                .collect()
        }
    };
    let mut errors = Vec::new();
    if phase == Phase::Reload {
        if let Some(previous) = previous {
            let now: BTreeSet<&str> = set.rules().map(|rule| rule.id).collect();
            for gone in previous
                .rules()
                .filter(|rule| rule.provider == file.provider() && rule.enabled)
                .filter(|rule| !now.contains(rule.id))
            {
                errors.push(FileError::unlocated(
                    &shown,
                    format!(
                        "rule `{}` would disappear: refused as a likely truncated write \
                         (set `enabled = false` first, or delete the file)",
                        gone.id
                    ),
                ));
            }
        }
    }
    let tests = dir.join("tests");
    for failure in
        crate::rules::cases::failures_for_provider(&set, max_body_bytes, &tests, file.provider())
    {
        errors.push(FileError::unlocated(
            &shown,
            format!("case failed: {failure}"),
        ));
    }
    errors
}

/// Builds the candidate from `previous` (the live files, or at start the last good copy) and
/// what is on disk now. `Err` when nothing could be built at all.
pub fn build(
    dir: &Path,
    previous: &BTreeMap<String, RuleFile>,
    previous_set: Option<&RuleSet>,
    snapshot: &Snapshot,
    phase: Phase,
    max_body_bytes: usize,
) -> Result<Built, Vec<FileError>> {
    let mut candidate = BTreeMap::new();
    let mut changed = BTreeSet::new();
    let mut new_content = BTreeSet::new();
    let mut refused: BTreeMap<String, Vec<FileError>> = BTreeMap::new();
    let names: BTreeSet<&String> = previous.keys().chain(snapshot.files.keys()).collect();
    for name in names {
        let before = previous.get(name);
        match (before, snapshot.files.get(name)) {
            (Some(_), None) => {
                changed.insert(name.clone());
            }
            (_, Some(Err(error))) => {
                let shown = display_path(dir, name);
                refused.insert(name.clone(), vec![FileError::unlocated(&shown, error)]);
                if let Some(before) = before {
                    candidate.insert(name.clone(), before.clone());
                }
            }
            (Some(before), Some(Ok(now))) if before.hash == now.hash => {
                candidate.insert(name.clone(), before.clone());
            }
            (before, Some(Ok(now))) => {
                let errors = check_file(dir, now, previous_set, phase, max_body_bytes);
                if errors.is_empty() {
                    candidate.insert(name.clone(), now.clone());
                    changed.insert(name.clone());
                    new_content.insert(name.clone());
                } else {
                    refused.insert(name.clone(), errors);
                    if let Some(before) = before {
                        candidate.insert(name.clone(), before.clone());
                    }
                }
            }
            (None, None) => {}
        }
    }
    if candidate.is_empty() {
        let shown = dir.display().to_string();
        let mut errors: Vec<FileError> = refused.into_values().flatten().collect();
        errors.push(FileError::unlocated(
            &shown,
            "no rule file would be in force: refused (haltgate never runs without rules)",
        ));
        return Err(errors);
    }

    // Files sound alone can still clash (a rule id defined twice); such a file is backed out
    // to its previous version until the whole set compiles.
    let set = loop {
        let sources = candidate.values().map(|file| source(dir, file)).collect();
        let errors = match RuleSet::from_sources(sources) {
            Ok(set) => break set,
            Err(errors) => errors,
        };
        let named: BTreeSet<String> = errors
            .errors()
            .iter()
            .filter_map(|error| {
                new_content
                    .iter()
                    .find(|name| display_path(dir, name) == error.file())
                    .cloned()
            })
            .collect();
        let culprits = if named.is_empty() {
            new_content.clone()
        } else {
            named
        };
        if culprits.is_empty() {
            return Err(errors
                .errors()
                .iter()
                .map(FileError::from_rule_error)
                .collect());
        }
        for name in culprits {
            new_content.remove(&name);
            changed.remove(&name);
            refused.insert(
                name.clone(),
                errors
                    .errors()
                    .iter()
                    .map(FileError::from_rule_error)
                    .collect(),
            );
            match previous.get(&name) {
                Some(before) => candidate.insert(name, before.clone()),
                None => candidate.remove(&name),
            };
        }
    };

    let mut statuses = Vec::new();
    let status_names: BTreeSet<&String> = candidate.keys().chain(refused.keys()).collect();
    for name in status_names {
        let live = candidate.get(name);
        let disk_hash = match snapshot.files.get(name) {
            Some(Ok(file)) => Some(file.hash.clone()),
            _ => None,
        };
        let errors = refused.get(name).cloned().unwrap_or_default();
        let provider = name.strip_suffix(".toml").unwrap_or(name).to_owned();
        statuses.push(FileStatus {
            file: display_path(dir, name),
            state: match (live, errors.is_empty()) {
                (_, true) => FileState::Live,
                (Some(_), false) => FileState::Kept,
                (None, false) => FileState::Refused,
            },
            live_hash: live.map(|file| file.hash.clone()),
            disk_hash,
            rules: set.rules().filter(|rule| rule.provider == provider).count(),
            provider,
            errors,
        });
    }
    Ok(Built {
        files: candidate,
        set,
        statuses,
        changed: changed.into_iter().collect(),
        rejected: refused.keys().cloned().collect(),
        errors: refused.into_values().flatten().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule_file(ids: &[&str]) -> String {
        let mut text = String::from("schema = 2\n");
        for id in ids {
            text.push_str(&format!(
                "[[rule]]\nid = \"{id}\"\nclass = \"lost_access\"\ndescription = \"t\"\n\
                 [rule.when]\nall = [{{ source = \"json\", path = \"error\", equals = \"{id}\" }}]\n"
            ));
        }
        text
    }

    fn files(list: &[(&str, String)]) -> BTreeMap<String, RuleFile> {
        list.iter()
            .map(|(name, text)| (name.to_string(), RuleFile::new(*name, text.as_str())))
            .collect()
    }

    fn snapshot(list: &[(&str, String)]) -> Snapshot {
        Snapshot {
            files: files(list)
                .into_iter()
                .map(|(name, file)| (name, Ok(file)))
                .collect(),
            digest: String::new(),
        }
    }

    fn compiled(files: &BTreeMap<String, RuleFile>) -> RuleSet {
        let dir = Path::new("rules");
        RuleSet::from_sources(files.values().map(|f| source(dir, f)).collect()).unwrap()
    }

    #[test]
    fn a_file_that_clashes_with_another_is_backed_out_alone() {
        let dir = Path::new("/nonexistent-rules");
        let before = files(&[
            ("a.toml", rule_file(&["a.one"])),
            ("b.toml", rule_file(&["b.one"])),
            ("c.toml", rule_file(&["c.one"])),
        ]);
        let set = compiled(&before);
        // b now defines a rule id a already has; c changes soundly.
        let now = snapshot(&[
            ("a.toml", rule_file(&["a.one"])),
            ("b.toml", rule_file(&["b.one", "a.one"])),
            ("c.toml", rule_file(&["c.one", "c.two"])),
        ]);
        let built = build(dir, &before, Some(&set), &now, Phase::Reload, 1024).unwrap();
        assert_eq!(built.rejected, vec!["b.toml".to_owned()]);
        assert_eq!(built.changed, vec!["c.toml".to_owned()]);
        assert_eq!(built.files["b.toml"], before["b.toml"]);
        let ids: Vec<&str> = built.set.rules().map(|rule| rule.id).collect();
        assert_eq!(ids, ["a.one", "b.one", "c.one", "c.two"]);
        let b = built.statuses.iter().find(|s| s.provider == "b").unwrap();
        assert_eq!(b.state, FileState::Kept);
        assert!(b.errors[0].message.contains("a.one"), "{:?}", b.errors);
    }

    #[test]
    fn a_new_broken_file_is_refused_and_at_start_a_vanished_rule_is_not_a_truncation() {
        let dir = Path::new("/nonexistent-rules");
        let kept = files(&[("a.toml", rule_file(&["a.one", "a.two"]))]);
        let set = compiled(&kept);
        let now = snapshot(&[
            ("a.toml", rule_file(&["a.one"])),
            ("new.toml", "schema = 2\n[[rule]\n".to_owned()),
        ]);
        let built = build(dir, &kept, Some(&set), &now, Phase::Start, 1024).unwrap();
        assert_eq!(built.changed, vec!["a.toml".to_owned()]);
        let new = built.statuses.iter().find(|s| s.provider == "new").unwrap();
        assert_eq!(new.state, FileState::Refused);
        assert_eq!(new.errors[0].line, Some(2));
        assert!(new.errors[0].location.ends_with("new.toml:2:7"), "{new:?}");

        let built = build(dir, &kept, Some(&set), &now, Phase::Reload, 1024).unwrap();
        assert!(built.changed.is_empty());
        assert_eq!(
            built.rejected,
            vec!["a.toml".to_owned(), "new.toml".to_owned()]
        );
    }
}
