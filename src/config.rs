//! Configuration: the raw file format ([`ConfigSpec`]), flag overrides ([`Overrides`]), and the
//! validated result ([`Config`]). Validation reports every problem at once.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::control_auth::{ControlAuth, ControlToken};
use crate::halt::Dialect;
use crate::route::{Route, RouteTable};
use crate::server::Limits;
use crate::storm::{StormSettings, DEFAULT_COOL_DOWN, DEFAULT_MAX_CLOSURES_PER_MINUTE};
use crate::upstream::{read_ca_file, UpstreamSettings};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_CONTROL_LISTEN: &str = "127.0.0.1:9090";
pub const DEFAULT_RULES_DIR: &str = "./rules";
pub const DEFAULT_STORE: &str = "redb:haltgate.redb";
pub const DEFAULT_OUTBOX: &str = "haltgate-outbox.redb";
pub const DEFAULT_LOCAL_COPY: &str = "haltgate-local.redb";
pub const DEFAULT_STORE_STARTUP_WAIT: Duration = Duration::from_secs(5);
pub const DEFAULT_CLOSURE_DETAIL_RETENTION: Duration = Duration::from_secs(30 * 86_400);
pub const DEFAULT_RULES_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// The last good rule files are kept in this directory beside the local copy.
pub const DEFAULT_RULES_LAST_GOOD_DIR: &str = "haltgate-rules-last-good";

/// `haltgate.toml` as written. Every table rejects unknown fields.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigSpec {
    pub listen: Option<String>,
    pub control_listen: Option<String>,
    pub rules: Option<PathBuf>,
    pub store: Option<String>,
    /// Local durable outbox for closures a Redis store could not take yet.
    pub outbox: Option<PathBuf>,
    /// This instance's durable copy of the closures and blocks it learned from a Redis store.
    pub local_copy: Option<PathBuf>,
    /// How long a start waits for a Redis store before serving from the local copy, e.g. `"5s"`.
    pub store_startup_wait: Option<String>,
    /// How long the evidence excerpt of a closure is kept, e.g. `"30d"`; `"0"` keeps it forever.
    pub closure_detail_retention: Option<String>,
    /// How long in-flight requests may run after SIGTERM/SIGINT, e.g. `"10s"`.
    pub shutdown_grace: Option<String>,
    #[serde(default)]
    pub upstream: UpstreamSpec,
    #[serde(default)]
    pub inspect: InspectSpec,
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteSpec>,
    #[serde(default)]
    pub control: ControlSpec,
    #[serde(default)]
    pub limits: LimitsSpec,
    /// `[webhook]`: POST every event to the agent platform (see [`crate::webhook`]).
    pub webhook: Option<crate::webhook::WebhookSpec>,
    #[serde(default)]
    pub storm: StormSpec,
    #[serde(default)]
    pub rules_reload: RulesReloadSpec,
    /// Refuse to start when a route has no rule file or a rule file has no route.
    pub strict: Option<bool>,
}

/// `[rules_reload]`: how rule edits go live without a restart.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesReloadSpec {
    /// Watch the rules directory for changes (default true).
    pub watch: Option<bool>,
    /// Compare the files' content hashes this often, e.g. `"5s"`; `"0"` never polls.
    pub poll_interval: Option<String>,
    /// Where the last good rule files are kept [default: beside the local copy].
    pub last_good_dir: Option<PathBuf>,
}

/// `[storm]`: how many sessions one provider may close per minute before its halting rules
/// act as shadow rules for a cool-down (see [`crate::storm`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StormSpec {
    /// Distinct credentials (sessions, for requests without one); `0` turns it off.
    pub max_closures_per_minute: Option<u32>,
    /// e.g. `"10m"`.
    pub cool_down: Option<String>,
}

/// `[control]`: who may use the control API. Tokens live in files (or the environment), never
/// in this file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSpec {
    /// File holding the bearer token for every control endpoint but `/healthz` and `/readyz`.
    pub token_file: Option<PathBuf>,
    /// File holding a second token that only works for `GET`/`HEAD` endpoints.
    pub read_token_file: Option<PathBuf>,
    /// Origins (`https://host[:port]`) whose browser requests are let through.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

/// `[limits]`: how long and how many connections both listeners hold, e.g. `"30s"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub body_read_timeout: Option<String>,
    pub max_connections: Option<usize>,
    pub control_max_connections: Option<usize>,
    pub h2_keep_alive_interval: Option<String>,
    pub h2_keep_alive_timeout: Option<String>,
    pub h2_max_resets_per_10s: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    pub connect_timeout: Option<String>,
    pub response_header_timeout: Option<String>,
    pub pool_idle_timeout: Option<String>,
    pub pool_max_idle_per_host: Option<usize>,
    /// PEM file of extra trust anchors for upstream TLS.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InspectSpec {
    /// Bodies larger than this pass through uninspected.
    pub max_body_bytes: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub name: String,
    pub url: String,
    /// Rule file that applies; defaults to `name`.
    pub provider: Option<String>,
    /// How halts are written (`slack`, `github`, `graphql`, `anthropic`, `mcp`, `generic`);
    /// defaults from the provider.
    pub dialect: Option<String>,
}

/// Values given on the command line; each one set wins over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub control_listen: Option<String>,
    pub rules: Option<PathBuf>,
    pub store: Option<String>,
    pub outbox: Option<PathBuf>,
    pub local_copy: Option<PathBuf>,
    /// `NAME=URL` or `NAME:PROVIDER=URL`. A name also in the file keeps the file's provider
    /// unless the flag names one.
    pub routes: Vec<String>,
    pub upstream_ca: Option<PathBuf>,
    pub connect_timeout: Option<String>,
    pub response_header_timeout: Option<String>,
    pub shutdown_grace: Option<String>,
    pub max_body_bytes: Option<usize>,
    pub storm_max_closures_per_minute: Option<u32>,
    pub storm_cool_down: Option<String>,
    /// `HALTGATE_CONTROL_TOKEN`: wins over `control.token_file` only when that is unset.
    pub control_token: Option<String>,
    /// `HALTGATE_CONTROL_READ_TOKEN`.
    pub control_read_token: Option<String>,
    /// `--strict`: true wins over the file.
    pub strict: bool,
}

/// A complete, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub control_listen: SocketAddr,
    pub rules_dir: PathBuf,
    pub store: String,
    pub outbox: PathBuf,
    pub local_copy: PathBuf,
    pub store_startup_wait: Duration,
    /// `None`: closure details are kept forever.
    pub closure_detail_retention: Option<Duration>,
    pub shutdown_grace: Duration,
    pub upstream: UpstreamSettings,
    pub max_body_bytes: usize,
    pub routes: RouteTable,
    pub control: ControlAuth,
    /// Limits of the agent listener.
    pub limits: Limits,
    /// Limits of the control listener: the agent ones with their own connection budget.
    pub control_limits: Limits,
    pub webhook: Option<crate::webhook::WebhookConfig>,
    pub storm: StormSettings,
    pub rules_reload: RulesReload,
    /// Refuse to start on a route without rules or a rule file without a route.
    pub strict: bool,
}

/// How rule edits go live; see [`crate::rule_reload`].
#[derive(Debug, Clone)]
pub struct RulesReload {
    pub watch: bool,
    /// `None`: never polls.
    pub poll_interval: Option<Duration>,
    pub last_good_dir: PathBuf,
}

/// Every problem found in a configuration.
#[derive(Debug)]
pub struct ConfigErrors {
    pub source: String,
    pub errors: Vec<String>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({}):", self.source)?;
        for error in &self.errors {
            writeln!(f, "  - {error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigSpec {
    pub fn from_toml(text: &str, source: &str) -> Result<Self, ConfigErrors> {
        toml::from_str(text).map_err(|e| ConfigErrors {
            source: source.to_owned(),
            errors: vec![e.to_string()],
        })
    }

    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            source: source.clone(),
            errors: vec![format!("cannot read: {e}")],
        })?;
        Self::from_toml(&text, &source)
    }
}

impl Config {
    /// Merges the file and the flags, then validates everything, collecting all errors.
    pub fn resolve(spec: ConfigSpec, flags: Overrides, source: &str) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();

        let mut addr = |field: &str, value: Option<String>, default: &str| -> SocketAddr {
            let text = value.unwrap_or_else(|| default.to_owned());
            text.parse().unwrap_or_else(|_| {
                errors.push(format!(
                    "{field}: {text:?} is not an IP:PORT socket address"
                ));
                default.parse().expect("default address parses")
            })
        };
        let listen = addr("listen", flags.listen.or(spec.listen), DEFAULT_LISTEN);
        let control_listen = addr(
            "control_listen",
            flags.control_listen.or(spec.control_listen),
            DEFAULT_CONTROL_LISTEN,
        );
        if listen == control_listen && listen.port() != 0 {
            errors.push(format!("listen and control_listen are both {listen}"));
        }

        let mut duration = |field: &str, value: Option<String>, default: Duration| -> Duration {
            match value {
                None => default,
                Some(text) => parse_duration(&text).unwrap_or_else(|e| {
                    errors.push(format!("{field}: {e}"));
                    default
                }),
            }
        };
        let defaults = UpstreamSettings::default();
        let shutdown_grace = duration(
            "shutdown_grace",
            flags.shutdown_grace.or(spec.shutdown_grace),
            Duration::from_secs(10),
        );
        let store_startup_wait = duration(
            "store_startup_wait",
            spec.store_startup_wait,
            DEFAULT_STORE_STARTUP_WAIT,
        );
        let closure_detail_retention = Some(duration(
            "closure_detail_retention",
            spec.closure_detail_retention,
            DEFAULT_CLOSURE_DETAIL_RETENTION,
        ))
        .filter(|retention| !retention.is_zero());
        let connect_timeout = duration(
            "upstream.connect_timeout",
            flags.connect_timeout.or(spec.upstream.connect_timeout),
            defaults.connect_timeout,
        );
        let response_header_timeout = duration(
            "upstream.response_header_timeout",
            flags
                .response_header_timeout
                .or(spec.upstream.response_header_timeout),
            defaults.response_header_timeout,
        );
        let pool_idle_timeout = duration(
            "upstream.pool_idle_timeout",
            spec.upstream.pool_idle_timeout,
            defaults.pool_idle_timeout,
        );
        let rules_poll_interval = Some(duration(
            "rules_reload.poll_interval",
            spec.rules_reload.poll_interval,
            DEFAULT_RULES_POLL_INTERVAL,
        ))
        .filter(|every| !every.is_zero());
        let storm = StormSettings {
            max_closures_per_minute: flags
                .storm_max_closures_per_minute
                .or(spec.storm.max_closures_per_minute)
                .unwrap_or(DEFAULT_MAX_CLOSURES_PER_MINUTE),
            cool_down: duration(
                "storm.cool_down",
                flags.storm_cool_down.or(spec.storm.cool_down),
                DEFAULT_COOL_DOWN,
            ),
        };

        let mut extra_roots = Vec::new();
        if let Some(path) = flags.upstream_ca.or(spec.upstream.ca_file) {
            match read_ca_file(&path) {
                Ok(certs) => extra_roots = certs,
                Err(e) => errors.push(format!("upstream.ca_file: {e}")),
            }
        }

        let max_body_bytes = flags
            .max_body_bytes
            .or(spec.inspect.max_body_bytes)
            .unwrap_or(crate::rules::DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes == 0 {
            errors.push("inspect.max_body_bytes must be at least 1".to_owned());
        }

        if storm.cool_down.is_zero() || storm.cool_down > Duration::from_secs(86_400) {
            errors.push("storm.cool_down must be longer than zero and at most a day".to_owned());
        }

        let limits = resolve_limits(&spec.limits, &mut errors);
        let control_limits = Limits {
            max_connections: spec
                .limits
                .control_max_connections
                .unwrap_or(DEFAULT_CONTROL_MAX_CONNECTIONS),
            ..limits.clone()
        };
        if !(1..=MAX_CONNECTIONS).contains(&control_limits.max_connections) {
            errors.push(format!(
                "limits.control_max_connections must be between 1 and {MAX_CONNECTIONS}"
            ));
        }
        let control = resolve_control(
            spec.control,
            flags.control_token,
            flags.control_read_token,
            control_listen,
            &mut errors,
        );

        let routes = resolve_routes(spec.routes, &flags.routes, &mut errors);
        let webhook = spec
            .webhook
            .and_then(|webhook| crate::webhook::WebhookConfig::resolve(webhook, &mut errors));

        let store = flags
            .store
            .or(spec.store)
            .unwrap_or_else(|| DEFAULT_STORE.to_owned());
        // The one store URL parser: what it accepts here is what opens at start.
        if let Err(error) = crate::session::StoreLocator::parse(&store) {
            errors.push(format!("store: {error}"));
        }

        if !errors.is_empty() {
            return Err(ConfigErrors {
                source: source.to_owned(),
                errors,
            });
        }
        let local_copy = flags
            .local_copy
            .or(spec.local_copy)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_LOCAL_COPY));
        let rules_reload = RulesReload {
            watch: spec.rules_reload.watch.unwrap_or(true),
            poll_interval: rules_poll_interval,
            last_good_dir: spec.rules_reload.last_good_dir.unwrap_or_else(|| {
                local_copy
                    .parent()
                    .unwrap_or(Path::new(""))
                    .join(DEFAULT_RULES_LAST_GOOD_DIR)
            }),
        };
        Ok(Config {
            listen,
            control_listen,
            rules_dir: flags
                .rules
                .or(spec.rules)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_RULES_DIR)),
            store,
            outbox: flags
                .outbox
                .or(spec.outbox)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_OUTBOX)),
            local_copy,
            store_startup_wait,
            closure_detail_retention,
            shutdown_grace,
            upstream: UpstreamSettings {
                connect_timeout,
                response_header_timeout,
                pool_idle_timeout,
                pool_max_idle_per_host: spec
                    .upstream
                    .pool_max_idle_per_host
                    .unwrap_or(defaults.pool_max_idle_per_host),
                extra_roots,
            },
            max_body_bytes,
            routes: routes.unwrap_or_default(),
            control,
            limits,
            control_limits,
            webhook,
            rules_reload,
            strict: flags.strict || spec.strict.unwrap_or(false),
            storm,
        })
    }
}

pub const DEFAULT_CONTROL_MAX_CONNECTIONS: usize = 64;

/// Most connections a listener may hold: each is a semaphore permit, and far more than any
/// host's descriptors allow.
const MAX_CONNECTIONS: usize = 1 << 20;

/// Longest `limits.*` duration: deadlines are computed as now + limit, which must not overflow.
const MAX_LIMIT_DURATION: Duration = Duration::from_secs(86_400);

fn resolve_limits(spec: &LimitsSpec, errors: &mut Vec<String>) -> Limits {
    let defaults = Limits::default();
    let mut duration = |field: &str, value: &Option<String>, default: Duration| match value {
        None => default,
        Some(text) => match parse_duration(text) {
            Ok(value) if value.is_zero() || value > MAX_LIMIT_DURATION => {
                errors.push(format!(
                    "limits.{field} must be longer than zero and at most a day"
                ));
                default
            }
            Ok(value) => value,
            Err(e) => {
                errors.push(format!("limits.{field}: {e}"));
                default
            }
        },
    };
    let limits = Limits {
        header_read_timeout: duration(
            "header_read_timeout",
            &spec.header_read_timeout,
            defaults.header_read_timeout,
        ),
        idle_timeout: duration("idle_timeout", &spec.idle_timeout, defaults.idle_timeout),
        body_read_timeout: duration(
            "body_read_timeout",
            &spec.body_read_timeout,
            defaults.body_read_timeout,
        ),
        h2_keep_alive_interval: duration(
            "h2_keep_alive_interval",
            &spec.h2_keep_alive_interval,
            defaults.h2_keep_alive_interval,
        ),
        h2_keep_alive_timeout: duration(
            "h2_keep_alive_timeout",
            &spec.h2_keep_alive_timeout,
            defaults.h2_keep_alive_timeout,
        ),
        max_connections: spec.max_connections.unwrap_or(defaults.max_connections),
        h2_max_resets_per_10s: spec
            .h2_max_resets_per_10s
            .unwrap_or(defaults.h2_max_resets_per_10s),
    };
    if !(1..=MAX_CONNECTIONS).contains(&limits.max_connections) {
        errors.push(format!(
            "limits.max_connections must be between 1 and {MAX_CONNECTIONS}"
        ));
    }
    limits
}

fn resolve_control(
    spec: ControlSpec,
    env_token: Option<String>,
    env_read_token: Option<String>,
    control_listen: SocketAddr,
    errors: &mut Vec<String>,
) -> ControlAuth {
    // A token that is set but invalid already has its error; it still counts as set below.
    let full_is_set = env_token.is_some() || spec.token_file.is_some();
    let mut token = |field: &str, env: &str, value: Option<String>, file: Option<PathBuf>| {
        let loaded = match (value, file) {
            (Some(_), Some(_)) => Err(format!(
                "{env} and control.{field} are both set; set the token once"
            )),
            (Some(value), None) => ControlToken::new(&value).map_err(|e| format!("{env}: {e}")),
            (None, Some(path)) => ControlToken::read_file(&path)
                .map_err(|e| format!("control.{field} {}: {e}", path.display())),
            (None, None) => return None,
        };
        loaded.map_err(|e| errors.push(e)).ok()
    };
    let full = token(
        "token_file",
        "HALTGATE_CONTROL_TOKEN",
        env_token,
        spec.token_file,
    );
    let read = token(
        "read_token_file",
        "HALTGATE_CONTROL_READ_TOKEN",
        env_read_token,
        spec.read_token_file,
    );
    if read.is_some() && !full_is_set {
        errors.push(
            "a read-only control token needs the full one too (HALTGATE_CONTROL_TOKEN or \
             control.token_file)"
                .to_owned(),
        );
    }
    if !full_is_set && !control_listen.ip().is_loopback() {
        errors.push(format!(
            "control_listen {control_listen} is not a loopback address: anyone who reaches it \
             could reopen sessions and unblock credentials; set HALTGATE_CONTROL_TOKEN or \
             control.token_file"
        ));
    }
    for origin in &spec.allowed_origins {
        let host = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        if !host.is_some_and(|h| !h.is_empty() && !h.contains(['/', '?', '#', ' '])) {
            errors.push(format!(
                "control.allowed_origins: {origin:?} is not an origin like \"https://ops.example.com\""
            ));
        }
    }
    ControlAuth::new(full, read, spec.allowed_origins)
}

fn resolve_routes(
    file: Vec<RouteSpec>,
    flags: &[String],
    errors: &mut Vec<String>,
) -> Option<RouteTable> {
    // In first-seen order; a flag replaces the URL (and the provider, if it names one) of a
    // file route.
    let mut merged: Vec<RouteSpec> = file;
    for flag in flags {
        let Some((name, url)) = flag.split_once('=') else {
            errors.push(format!(
                "--route {flag:?}: expected NAME=URL or NAME:PROVIDER=URL"
            ));
            continue;
        };
        let (name, provider) = match name.split_once(':') {
            Some((name, provider)) => (name, Some(provider.to_owned())),
            None => (name, None),
        };
        match merged.iter_mut().find(|r| r.name == name) {
            Some(existing) => {
                existing.url = url.to_owned();
                if provider.is_some() {
                    existing.provider = provider;
                }
            }
            None => merged.push(RouteSpec {
                name: name.to_owned(),
                url: url.to_owned(),
                provider,
                dialect: None,
            }),
        }
    }
    if merged.is_empty() {
        merged = RouteTable::known_providers()
            .into_iter()
            .map(|(name, url)| RouteSpec {
                name: name.to_owned(),
                url: url.to_owned(),
                provider: None,
                dialect: None,
            })
            .collect();
    }
    let mut routes = Vec::new();
    for spec in merged {
        let provider = spec.provider.unwrap_or_else(|| spec.name.clone());
        let dialect = match spec.dialect.as_deref().map(|d| (d, Dialect::parse(d))) {
            None => None,
            Some((_, Some(dialect))) => Some(dialect),
            Some((name, None)) => {
                errors.push(format!(
                    "route {:?}: unknown dialect {name:?} (one of {})",
                    spec.name,
                    Dialect::NAMES.join(", ")
                ));
                None
            }
        };
        match Route::new(&spec.name, &provider, &spec.url) {
            Ok(route) => match dialect {
                Some(dialect) => routes.push(route.with_dialect(dialect)),
                None => routes.push(route),
            },
            Err(e) => errors.push(e.to_string()),
        }
    }
    match RouteTable::new(routes) {
        Ok(table) => Some(table),
        Err(e) => {
            errors.push(e.to_string());
            None
        }
    }
}

/// Parses `"250ms"`, `"10s"`, `"2m"`, `"1h"`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like \"500ms\", \"10s\" or \"2m\""))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use ms, s, m, h or d)"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is not a valid duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_give_known_provider_routes() {
        let config = Config::resolve(ConfigSpec::default(), Overrides::default(), "test").unwrap();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.store, DEFAULT_STORE);
        let slack = config.routes.get("slack").unwrap();
        assert_eq!(slack.url(), "https://slack.com");
        assert!(config.routes.get("github").is_some());
        assert!(config.routes.get("linear").is_some());
        assert!(config.routes.get("anthropic").is_some());
    }

    #[test]
    fn flags_win_and_file_keeps_provider() {
        let spec = ConfigSpec::from_toml(
            r#"
            listen = "127.0.0.1:1"
            [[route]]
            name = "mcp-files"
            url = "https://files.example.com/mcp"
            provider = "mcp"
            "#,
            "t.toml",
        )
        .unwrap();
        let flags = Overrides {
            listen: Some("127.0.0.1:2".into()),
            routes: vec![
                "mcp-files=http://127.0.0.1:9/mcp".into(),
                "echo=http://127.0.0.1:9".into(),
            ],
            ..Overrides::default()
        };
        let config = Config::resolve(spec, flags, "t.toml").unwrap();
        assert_eq!(config.listen.port(), 2);
        let mcp = config.routes.get("mcp-files").unwrap();
        assert_eq!(&*mcp.provider, "mcp");
        assert_eq!(mcp.url(), "http://127.0.0.1:9/mcp");
        assert!(
            config.routes.get("slack").is_none(),
            "configured routes replace the defaults"
        );
    }

    #[test]
    fn a_route_flag_can_name_the_provider_and_a_file_route_the_dialect() {
        let spec = ConfigSpec::from_toml(
            r#"
            [[route]]
            name = "internal"
            url = "https://internal.example.com/graphql"
            provider = "internal"
            dialect = "graphql"
            "#,
            "t.toml",
        )
        .unwrap();
        let flags = Overrides {
            routes: vec![
                "files:mcp=http://127.0.0.1:9/mcp".into(),
                "echo=http://127.0.0.1:9".into(),
            ],
            ..Overrides::default()
        };
        let config = Config::resolve(spec, flags, "t.toml").unwrap();
        let files = config.routes.get("files").unwrap();
        assert_eq!((&*files.provider, files.dialect), ("mcp", Dialect::Mcp));
        assert_eq!(files.url(), "http://127.0.0.1:9/mcp");
        let echo = config.routes.get("echo").unwrap();
        assert_eq!((&*echo.provider, echo.dialect), ("echo", Dialect::Generic));
        let internal = config.routes.get("internal").unwrap();
        assert_eq!(internal.dialect, Dialect::GraphQl);

        let spec = ConfigSpec::from_toml(
            "[[route]]\nname = \"a\"\nurl = \"http://x\"\ndialect = \"soap\"",
            "t.toml",
        )
        .unwrap();
        let flags = Overrides {
            routes: vec!["b:Bad=http://x".into()],
            ..Overrides::default()
        };
        let errors = Config::resolve(spec, flags, "t.toml").unwrap_err();
        assert_eq!(errors.errors.len(), 2, "{errors}");
        assert!(errors.to_string().contains("soap"), "{errors}");
    }

    #[test]
    fn reports_every_error_at_once() {
        let flags = Overrides {
            listen: Some("nope".into()),
            store: Some("postgres://x".into()),
            routes: vec!["noequals".into(), "Bad=http://x".into()],
            shutdown_grace: Some("10 parsecs".into()),
            ..Overrides::default()
        };
        let errors = Config::resolve(ConfigSpec::default(), flags, "flags").unwrap_err();
        assert_eq!(errors.errors.len(), 5, "{errors}");
    }

    #[test]
    fn unknown_fields_are_errors() {
        let err = ConfigSpec::from_toml("lisen = \"x\"", "t.toml").unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("99999999999999999999999h").is_err());
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        assert!(parse_duration("1w").is_err());
    }
}
