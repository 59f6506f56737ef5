//! Hot reload of the rule files while the proxy serves.
//!
//! Triggers ([`triggers`]): a debounced watch of the rules directory, a content-hash poll as
//! fallback, `SIGHUP`, and `POST /v1/rules/reload` on the control API.
//!
//! One reload:
//! 1. reads every `*.toml` of the directory at once ([`snapshot`]) and compares content hashes
//!    with the live files;
//! 2. checks each changed file alone ([`build`]): not empty, compiles, removes no enabled rule
//!    (a rule goes away by `enabled = false` first, or with its whole file), its cases in
//!    `tests/<provider>/` and the shared transient corpus pass;
//! 3. compiles the whole candidate; a file that fails any step keeps its previous version and
//!    the other files' changes go on;
//! 4. stores the candidate with one atomic swap. The halt layer loads the set once per request,
//!    so each request is decided by exactly one version from start to end;
//! 5. keeps a copy of the live files on disk ([`last_good`]): a start with broken files uses it,
//!    loudly, and never runs without rules.

pub mod build;
pub mod diff;
mod last_good;
pub mod provider_map;
pub mod snapshot;
mod triggers;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde_json::{json, Value};

use crate::rules::RuleSet;
use crate::session::unix_ms_now;
use build::{FileError, FileState, FileStatus, Phase};
use snapshot::{RuleFile, Snapshot};

pub use triggers::spawn as spawn_triggers;

/// How the rules directory is watched and where the last good copy lives.
#[derive(Debug, Clone)]
pub struct ReloadSettings {
    pub dir: PathBuf,
    pub last_good_dir: PathBuf,
    pub max_body_bytes: usize,
    /// Watch the directory for changes.
    pub watch: bool,
    /// Compare content hashes this often; `None` never polls.
    pub poll_interval: Option<Duration>,
    /// (route, provider) of every configured route.
    pub routes: Vec<(String, String)>,
}

/// What started a reload.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Start,
    Watch,
    Poll,
    Signal,
    Api,
}

/// How a reload ended.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every change is live.
    Applied,
    /// Some files' changes are live, others were refused.
    Partial,
    /// Every change was refused; the rules in force did not change.
    Rejected,
    /// Nothing changed on disk.
    Unchanged,
    /// The directory could not be read; the rules in force did not change.
    Failed,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Partial => "partial",
            Outcome::Rejected => "rejected",
            Outcome::Unchanged => "unchanged",
            Outcome::Failed => "failed",
        }
    }

    /// Whether some file on disk was refused or could not be read.
    pub fn refused_something(self) -> bool {
        matches!(self, Outcome::Partial | Outcome::Rejected | Outcome::Failed)
    }
}

/// The result of one reload, as `POST /v1/rules/reload` answers it.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    pub trigger: Trigger,
    pub at_ms: u64,
    pub outcome: Outcome,
    pub version: String,
    pub previous_version: String,
    /// Files whose new content (or deletion) went live.
    pub changed: Vec<String>,
    /// Files whose content on disk was refused.
    pub rejected: Vec<String>,
    pub errors: Vec<FileError>,
    pub took_ms: f64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

/// Reload metrics: `haltgate_rules_reloads_total{outcome}`, `haltgate_rules_version_info`,
/// `haltgate_rules_last_reload_timestamp_seconds`, `haltgate_rules_last_reload_successful`.
#[derive(Debug, Default)]
struct ReloadStats {
    reloads: Family<OutcomeLabel, Counter>,
    version: Family<VersionLabel, Gauge>,
    last_reload: Gauge<f64, AtomicU64>,
    last_successful: Gauge,
}

/// Owns the swappable rule set and every reload of it.
pub struct RuleReloader {
    settings: ReloadSettings,
    rules: Arc<ArcSwap<RuleSet>>,
    /// The live files; held for the whole of a reload, so reloads never interleave.
    live: tokio::sync::Mutex<Live>,
    status: Mutex<Status>,
    stats: ReloadStats,
}

struct Live {
    files: BTreeMap<String, RuleFile>,
    /// The last snapshot judged, so the watch and the poll skip unchanged directories.
    seen: String,
}

struct Status {
    version: String,
    files: Vec<FileStatus>,
    last_reload: ReloadReport,
    warnings: Vec<String>,
}

/// Why no rules could be loaded at start.
#[derive(Debug)]
pub struct StartRefused {
    pub errors: Vec<FileError>,
}

impl std::fmt::Display for StartRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for error in &self.errors {
            writeln!(f, "  {}: {}", error.location, error.message)?;
        }
        Ok(())
    }
}

fn version_of(files: &BTreeMap<String, RuleFile>) -> String {
    snapshot::digest_of(files.values().map(|f| (f.name.as_str(), f.hash.as_str())))
}

impl RuleReloader {
    /// Loads the rules at start. A file that fails uses its last good copy, loudly; a file
    /// that fails with no such copy refuses the start, as does a directory with no rules.
    pub async fn start(settings: ReloadSettings) -> Result<Arc<RuleReloader>, StartRefused> {
        let started = Instant::now();
        let loading = settings.clone();
        let (built, snapshot) = tokio::task::spawn_blocking(move || {
            let kept = last_good::load(&loading.last_good_dir);
            let snapshot = match snapshot::read(&loading.dir) {
                Ok(snapshot) => snapshot,
                Err(message) => {
                    let shown = loading.dir.display().to_string();
                    if kept.is_empty() {
                        return (
                            Err(vec![FileError {
                                file: shown.clone(),
                                line: None,
                                column: None,
                                location: shown,
                                message,
                            }]),
                            Snapshot::default(),
                        );
                    }
                    tracing::error!(dir = %shown, error = %message, "The rules directory cannot be read; starting with the last good copy.");
                    // Every kept file counts as present and unchanged.
                    let files = kept
                        .iter()
                        .map(|(name, file)| (name.clone(), Ok(file.clone())))
                        .collect();
                    Snapshot {
                        files,
                        digest: String::new(),
                    }
                }
            };
            let previous_set = (!kept.is_empty())
                .then(|| {
                    let sources = kept
                        .values()
                        .map(|file| {
                            crate::rules::RuleSource::new(
                                build::display_path(&loading.last_good_dir, &file.name),
                                file.provider(),
                                file.text.to_string(),
                            )
                        })
                        .collect();
                    RuleSet::from_sources(sources).ok()
                })
                .flatten();
            // A kept copy that no longer compiles (an older haltgate wrote it) is no fallback.
            let kept = if previous_set.is_some() {
                kept
            } else {
                BTreeMap::new()
            };
            let built = build::build(
                &loading.dir,
                &kept,
                previous_set.as_ref(),
                &snapshot,
                Phase::Start,
                loading.max_body_bytes,
            );
            (built, snapshot)
        })
        .await
        .map_err(|error| StartRefused {
            errors: vec![FileError {
                file: String::new(),
                line: None,
                column: None,
                location: String::new(),
                message: format!("loading the rules: {error}"),
            }],
        })?;
        let built = built.map_err(|errors| StartRefused { errors })?;
        let unloaded: Vec<FileError> = built
            .statuses
            .iter()
            .filter(|status| status.state == FileState::Refused)
            .flat_map(|status| status.errors.iter().cloned())
            .collect();
        if !unloaded.is_empty() {
            return Err(StartRefused { errors: unloaded });
        }
        for status in built.statuses.iter().filter(|s| s.state == FileState::Kept) {
            for error in &status.errors {
                tracing::error!(
                    file = %status.file,
                    location = %error.location,
                    error = %error.message,
                    last_good = %settings.last_good_dir.display(),
                    "Rule file is broken; its last good copy is in force instead."
                );
            }
        }
        let version = version_of(&built.files);
        let report = ReloadReport {
            trigger: Trigger::Start,
            at_ms: unix_ms_now(),
            outcome: if built.rejected.is_empty() {
                Outcome::Applied
            } else {
                Outcome::Partial
            },
            version: version.clone(),
            previous_version: String::new(),
            changed: built.changed.clone(),
            rejected: built.rejected.clone(),
            errors: built.errors.clone(),
            took_ms: started.elapsed().as_secs_f64() * 1000.0,
        };
        let (_, warnings) = provider_map::map(&settings.routes, &built.set);
        let reloader = Arc::new(RuleReloader {
            rules: Arc::new(ArcSwap::from_pointee(built.set)),
            live: tokio::sync::Mutex::new(Live {
                files: built.files,
                seen: snapshot.digest,
            }),
            status: Mutex::new(Status {
                version,
                files: built.statuses,
                last_reload: report.clone(),
                warnings,
            }),
            stats: ReloadStats::default(),
            settings,
        });
        reloader.record(&report);
        reloader.keep_last_good().await;
        Ok(reloader)
    }

    /// The swappable set the halt layer and the control API read.
    pub fn rules(&self) -> &Arc<ArcSwap<RuleSet>> {
        &self.rules
    }

    pub fn settings(&self) -> &ReloadSettings {
        &self.settings
    }

    /// Routes without rules and rule files without routes, against the live rules.
    pub fn warnings(&self) -> Vec<String> {
        self.status.lock().expect("status lock").warnings.clone()
    }

    /// The last reload, start included.
    pub fn last_reload(&self) -> ReloadReport {
        self.status.lock().expect("status lock").last_reload.clone()
    }

    /// Reloads now. The watch and the poll pass `only_if_changed`, so an unchanged directory
    /// costs one read and no report; the signal and the API always judge the files again.
    pub async fn reload(&self, trigger: Trigger) -> Option<ReloadReport> {
        let only_if_changed = matches!(trigger, Trigger::Watch | Trigger::Poll);
        let mut live = self.live.lock().await;
        let started = Instant::now();
        let dir = self.settings.dir.clone();
        let read = tokio::task::spawn_blocking(move || snapshot::read(&dir))
            .await
            .unwrap_or_else(|error| Err(format!("reading the rules directory: {error}")));
        let previous_version = version_of(&live.files);
        let snapshot = match read {
            Ok(snapshot) => snapshot,
            Err(message) => {
                if only_if_changed && live.seen == message {
                    return None;
                }
                live.seen = message.clone();
                let shown = self.settings.dir.display().to_string();
                let report = ReloadReport {
                    trigger,
                    at_ms: unix_ms_now(),
                    outcome: Outcome::Failed,
                    version: previous_version.clone(),
                    previous_version,
                    changed: Vec::new(),
                    rejected: Vec::new(),
                    errors: vec![FileError {
                        file: shown.clone(),
                        line: None,
                        column: None,
                        location: shown,
                        message,
                    }],
                    took_ms: started.elapsed().as_secs_f64() * 1000.0,
                };
                self.finish(&report, None);
                return Some(report);
            }
        };
        if only_if_changed && snapshot.digest == live.seen {
            return None;
        }
        live.seen = snapshot.digest.clone();
        let previous = live.files.clone();
        let previous_set = self.rules.load_full();
        let (dir, max_body_bytes) = (self.settings.dir.clone(), self.settings.max_body_bytes);
        let built = tokio::task::spawn_blocking(move || {
            build::build(
                &dir,
                &previous,
                Some(&previous_set),
                &snapshot,
                Phase::Reload,
                max_body_bytes,
            )
        })
        .await
        .unwrap_or_else(|error| {
            Err(vec![FileError {
                file: String::new(),
                line: None,
                column: None,
                location: String::new(),
                message: format!("building the rules: {error}"),
            }])
        });
        let report = match built {
            Err(errors) => ReloadReport {
                trigger,
                at_ms: unix_ms_now(),
                outcome: Outcome::Rejected,
                version: previous_version.clone(),
                previous_version,
                changed: Vec::new(),
                rejected: errors.iter().map(|e| e.file.clone()).collect(),
                errors,
                took_ms: started.elapsed().as_secs_f64() * 1000.0,
            },
            Ok(built) => {
                let version = version_of(&built.files);
                let swapped = version != previous_version;
                if swapped {
                    self.rules.store(Arc::new(built.set));
                    live.files = built.files;
                }
                let outcome = match (swapped, built.rejected.is_empty()) {
                    (true, true) => Outcome::Applied,
                    (true, false) => Outcome::Partial,
                    (false, false) => Outcome::Rejected,
                    (false, true) => Outcome::Unchanged,
                };
                let report = ReloadReport {
                    trigger,
                    at_ms: unix_ms_now(),
                    outcome,
                    version,
                    previous_version,
                    changed: if swapped { built.changed } else { Vec::new() },
                    rejected: built.rejected,
                    errors: built.errors,
                    took_ms: started.elapsed().as_secs_f64() * 1000.0,
                };
                self.finish(&report, Some(built.statuses));
                drop(live);
                if swapped {
                    self.keep_last_good().await;
                }
                return Some(report);
            }
        };
        self.finish(&report, None);
        Some(report)
    }

    /// Publishes a report: status, metrics, logs.
    fn finish(&self, report: &ReloadReport, statuses: Option<Vec<FileStatus>>) {
        let rules = self.rules.load();
        let (_, warnings) = provider_map::map(&self.settings.routes, &rules);
        {
            let mut status = self.status.lock().expect("status lock");
            for warning in warnings.iter().filter(|w| !status.warnings.contains(w)) {
                tracing::warn!(warning = %warning, "Rules and routes do not match.");
            }
            status.version = report.version.clone();
            if let Some(statuses) = statuses {
                status.files = statuses;
            }
            status.last_reload = report.clone();
            status.warnings = warnings;
        }
        self.record(report);
        match report.outcome {
            Outcome::Unchanged => tracing::debug!(trigger = ?report.trigger, "Rules unchanged."),
            Outcome::Applied => tracing::info!(
                trigger = ?report.trigger,
                version = %report.version,
                changed = ?report.changed,
                rules = rules.rule_count(),
                took_ms = report.took_ms,
                "Rules reloaded."
            ),
            _ => {
                for error in &report.errors {
                    tracing::error!(
                        trigger = ?report.trigger,
                        location = %error.location,
                        error = %error.message,
                        "Rule file refused; its previous version stays in force."
                    );
                }
                if report.outcome == Outcome::Partial {
                    tracing::warn!(
                        version = %report.version,
                        changed = ?report.changed,
                        rejected = ?report.rejected,
                        "Rules reloaded in part."
                    );
                }
            }
        }
    }

    fn record(&self, report: &ReloadReport) {
        self.stats
            .reloads
            .get_or_create(&OutcomeLabel {
                outcome: report.outcome.as_str(),
            })
            .inc();
        self.stats.last_reload.set(report.at_ms as f64 / 1000.0);
        self.stats
            .last_successful
            .set(i64::from(!report.outcome.refused_something()));
        let label = VersionLabel {
            version: report.version.clone(),
        };
        if self.stats.version.get(&label).is_none() {
            self.stats.version.clear();
            self.stats.version.get_or_create(&label).set(1);
        }
    }

    /// Writes the live files to the last good directory; a failure is logged, never fatal.
    async fn keep_last_good(&self) {
        let files = self.live.lock().await.files.clone();
        let dir = self.settings.last_good_dir.clone();
        let saved = tokio::task::spawn_blocking(move || last_good::save(&dir, &files)).await;
        if let Ok(Err(error)) | Err(error) = saved.map_err(std::io::Error::other) {
            tracing::warn!(
                dir = %self.settings.last_good_dir.display(),
                %error,
                "The last good rules could not be kept on disk."
            );
        }
    }

    /// Registers the reload metrics.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "rules_reloads",
            "Rule reloads (start included), by outcome",
            self.stats.reloads.clone(),
        );
        registry.register(
            "rules_version_info",
            "The content hash of the rules in force, as a label",
            self.stats.version.clone(),
        );
        registry.register(
            "rules_last_reload_timestamp_seconds",
            "When the rules were last reloaded (start included), Unix seconds",
            self.stats.last_reload.clone(),
        );
        registry.register(
            "rules_last_reload_successful",
            "1 when the last reload refused nothing, else 0",
            self.stats.last_successful.clone(),
        );
    }

    /// `GET /v1/rules`.
    pub fn status_json(&self) -> Value {
        let rules = self.rules.load_full();
        let status = self.status.lock().expect("status lock");
        let file_of = |provider: &str| {
            status
                .files
                .iter()
                .find(|file| file.provider == provider)
                .map(|file| file.file.clone())
        };
        let loaded: Vec<Value> = rules
            .rules()
            .map(|rule| {
                json!({
                    "id": rule.id,
                    "provider": rule.provider,
                    "class": rule.class.as_str(),
                    "mode": rule.mode,
                    "enabled": rule.enabled,
                    "file": file_of(rule.provider),
                })
            })
            .collect();
        let (routes, _) = provider_map::map(&self.settings.routes, &rules);
        json!({
            "version": status.version,
            "dir": self.settings.dir.display().to_string(),
            "last_good_dir": self.settings.last_good_dir.display().to_string(),
            "rules": loaded,
            "files": status.files,
            "last_reload": status.last_reload,
            "routes": routes,
            "warnings": status.warnings,
        })
    }
}
