//! One read of a rules directory: every `*.toml` file's text and its hash, taken together so a
//! reload judges one consistent set of files.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use ring::digest::{digest, Context, SHA256};

/// One rule file as read: its name in the directory (`slack.toml`) and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleFile {
    pub name: String,
    pub text: Arc<str>,
    /// SHA-256 of the text, hex.
    pub hash: String,
}

impl RuleFile {
    pub fn new(name: impl Into<String>, text: impl Into<Arc<str>>) -> RuleFile {
        let text = text.into();
        RuleFile {
            name: name.into(),
            hash: hex(digest(&SHA256, text.as_bytes()).as_ref()),
            text,
        }
    }

    /// The provider the file defines: its name without `.toml`.
    pub fn provider(&self) -> &str {
        self.name.strip_suffix(".toml").unwrap_or(&self.name)
    }
}

/// Every rule file of a directory at one moment. A file that could not be read keeps its error.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub files: BTreeMap<String, Result<RuleFile, String>>,
    /// Changes whenever a file appears, disappears or changes content.
    pub digest: String,
}

/// Reads every `*.toml` entry of `dir` (symlinks followed, so a Kubernetes ConfigMap's
/// `name -> ..data/name` links read their current target; hidden entries skipped). Not
/// recursive: `tests/` holds cases, not rules.
pub fn read(dir: &Path) -> Result<Snapshot, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|error| format!("cannot read the rules directory: {error}"))?;
    let mut files = BTreeMap::new();
    for entry in entries {
        let entry = entry.map_err(|error| format!("cannot list the rules directory: {error}"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".toml") {
            continue;
        }
        let path = entry.path();
        if !path.is_file() {
            continue;
        }
        let file = std::fs::read_to_string(&path)
            .map(|text| RuleFile::new(name.clone(), text))
            .map_err(|error| format!("cannot read: {error}"));
        files.insert(name, file);
    }
    let digest = digest_of(files.iter().map(|(name, file)| match file {
        Ok(file) => (name.as_str(), file.hash.as_str()),
        Err(error) => (name.as_str(), error.as_str()),
    }));
    Ok(Snapshot { files, digest })
}

/// The content hash of a set of files given as (name, hash) in name order: the rules version.
pub fn digest_of<'a>(files: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut context = Context::new(&SHA256);
    for (name, hash) in files {
        context.update(name.as_bytes());
        context.update(b"\0");
        context.update(hash.as_bytes());
        context.update(b"\n");
    }
    hex(context.finish().as_ref())[..16].to_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
