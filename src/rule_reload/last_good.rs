//! The last good rule files, kept on disk so a start with broken files still has rules.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use super::snapshot::{self, RuleFile};

/// The kept files; none when the directory does not exist yet or cannot be read.
pub(super) fn load(dir: &Path) -> BTreeMap<String, RuleFile> {
    let Ok(snapshot) = snapshot::read(dir) else {
        return BTreeMap::new();
    };
    snapshot
        .files
        .into_iter()
        .filter_map(|(name, file)| Some((name, file.ok()?)))
        .collect()
}

/// Replaces the kept files with `files`: each written to a temporary name and renamed, so a
/// crash leaves whole files; files no longer live are removed afterwards.
pub(super) fn save(dir: &Path, files: &BTreeMap<String, RuleFile>) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for file in files.values() {
        let temporary = dir.join(format!(".{}.tmp", file.name));
        std::fs::write(&temporary, file.text.as_bytes())?;
        std::fs::File::open(&temporary)?.sync_all()?;
        std::fs::rename(&temporary, dir.join(&file.name))?;
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".toml") && !files.contains_key(&name) {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}
