//! Parsing of store URLs into a backend and its options.

use std::path::PathBuf;
use std::time::Duration;

use super::error::StoreError;
use super::redb_store::RedbOptions;
use super::redis_store::{RedisOptions, RedisTarget};

/// A parsed store URL. See the [module docs](super) for the accepted forms.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreLocator {
    Redb {
        path: PathBuf,
        options: RedbOptions,
    },
    Redis {
        target: RedisTarget,
        options: RedisOptions,
    },
}

const CLUSTER_SCHEME: &str = "redis+cluster://";

impl StoreLocator {
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let bad = |reason: &str| StoreError::InvalidUrl {
            url: redact(url),
            reason: reason.to_owned(),
        };
        if let Some(path) = url.strip_prefix("redb:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(bad(
                    "redb: needs a file path, e.g. redb:/var/lib/haltgate/state.redb",
                ));
            }
            return Ok(StoreLocator::Redb {
                path: PathBuf::from(path),
                options: RedbOptions::default(),
            });
        }
        if url.starts_with("rediss://") || url.starts_with("rediss+cluster://") {
            return Err(bad(
                "TLS connections to Redis are not supported by this build",
            ));
        }
        if let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) {
            return parse_cluster(rest).map_err(|reason| bad(&reason));
        }
        if url.starts_with("redis://") {
            return parse_standalone(url).map_err(|reason| bad(&reason));
        }
        Err(bad(
            "expected redb:PATH, redis://HOST:PORT/DB or redis+cluster://HOST:PORT,HOST:PORT",
        ))
    }
}

/// Applies one of our query options; returns false for options that are not ours.
fn apply_option(
    options: &mut RedisOptions,
    cluster: &mut bool,
    key: &str,
    value: &str,
) -> Result<bool, String> {
    let millis = |value: &str| -> Result<Duration, String> {
        match value.parse::<u64>() {
            Ok(ms) if ms > 0 && ms <= 600_000 => Ok(Duration::from_millis(ms)),
            _ => Err(format!(
                "{key}={value:?} must be a number of milliseconds from 1 to 600000"
            )),
        }
    };
    match key {
        // Replies are decoded as RESP2 shapes.
        "protocol" if !value.eq_ignore_ascii_case("resp2") && value != "2" => {
            return Err(format!(
                "protocol={value:?} is not supported; only RESP2 is"
            ));
        }
        "prefix" => {
            let ok = !value.is_empty()
                && value.len() <= 64
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
            if !ok {
                return Err(format!(
                    "prefix={value:?} must be 1 to 64 characters of [A-Za-z0-9_.:-]"
                ));
            }
            options.prefix = value.to_owned();
        }
        "timeout_ms" => options.op_timeout = millis(value)?,
        "connect_timeout_ms" => options.connect_timeout = millis(value)?,
        "event_retention" => match value.parse::<u64>() {
            Ok(n) if n >= 1 => options.event_retention = n,
            _ => {
                return Err(format!(
                    "event_retention={value:?} must be a positive number"
                ))
            }
        },
        "replicas_to_ack" => {
            options.replicas_to_ack = match value {
                "auto" => None,
                n => Some(n.parse::<u32>().map_err(|_| {
                    format!("replicas_to_ack={value:?} must be auto or a number of replicas")
                })?),
            }
        }
        "replica_ack_timeout_ms" => options.replica_ack_timeout = millis(value)?,
        "cluster" => match value {
            "true" | "1" | "yes" => *cluster = true,
            "false" | "0" | "no" => *cluster = false,
            _ => return Err(format!("cluster={value:?} must be true or false")),
        },
        _ => return Ok(false),
    }
    Ok(true)
}

fn parse_standalone(raw: &str) -> Result<StoreLocator, String> {
    let mut url = url::Url::parse(raw).map_err(|e| e.to_string())?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err("a host is required".into());
    }
    let mut options = RedisOptions::default();
    let mut cluster = false;
    let mut passthrough = Vec::new();
    for (key, value) in url.query_pairs() {
        if !apply_option(&mut options, &mut cluster, &key, &value)? {
            passthrough.push((key.into_owned(), value.into_owned()));
        }
    }
    if passthrough.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(passthrough);
    }
    let path = url.path().trim_start_matches('/');
    if !path.is_empty() && path.parse::<u32>().is_err() {
        return Err(format!("database {path:?} must be a number"));
    }
    let target = if cluster {
        if !path.is_empty() && path != "0" {
            return Err("Redis Cluster has only database 0".into());
        }
        url.set_path("");
        RedisTarget::Cluster {
            nodes: vec![url.to_string()],
        }
    } else {
        RedisTarget::Standalone {
            url: url.to_string(),
        }
    };
    Ok(StoreLocator::Redis { target, options })
}

fn parse_cluster(rest: &str) -> Result<StoreLocator, String> {
    let (authority, query) = match rest.split_once('?') {
        Some((a, q)) => (a, q),
        None => (rest, ""),
    };
    let authority = match authority.split_once('/') {
        Some((a, "" | "0")) => a,
        Some((_, db)) => return Err(format!("Redis Cluster has only database 0, not {db:?}")),
        None => authority,
    };
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((user, hosts)) => (Some(user), hosts),
        None => (None, authority),
    };
    let mut options = RedisOptions::default();
    let mut cluster = true;
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if !apply_option(&mut options, &mut cluster, &key, &value)? {
            return Err(format!("unknown option {key:?} for a cluster url"));
        }
    }
    let mut nodes = Vec::new();
    for host in hosts.split(',').filter(|h| !h.is_empty()) {
        let node = match userinfo {
            Some(user) => format!("redis://{user}@{host}"),
            None => format!("redis://{host}"),
        };
        let parsed = url::Url::parse(&node).map_err(|e| format!("node {host:?}: {e}"))?;
        if parsed.host_str().is_none_or(str::is_empty) || parsed.port().is_none() {
            return Err(format!("node {host:?} must be HOST:PORT"));
        }
        nodes.push(node);
    }
    if nodes.is_empty() {
        return Err(
            "list at least one node, e.g. redis+cluster://10.0.0.1:7000,10.0.0.2:7000".into(),
        );
    }
    Ok(StoreLocator::Redis {
        target: RedisTarget::Cluster { nodes },
        options,
    })
}

/// The URL without its password, for error messages.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{}", &rest[at + 1..])
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redb_url_keeps_the_path() {
        let StoreLocator::Redb { path, .. } =
            StoreLocator::parse("redb:/tmp/x/state.redb").unwrap()
        else {
            panic!("not redb");
        };
        assert_eq!(path, PathBuf::from("/tmp/x/state.redb"));
        assert!(StoreLocator::parse("redb:").is_err());
    }

    #[test]
    fn standalone_url_takes_our_options_and_passes_the_rest() {
        let parsed = StoreLocator::parse(
            "redis://:pw@127.0.0.1:6380/2?prefix=t1&timeout_ms=250&protocol=resp2",
        )
        .unwrap();
        let StoreLocator::Redis {
            target: RedisTarget::Standalone { url },
            options,
        } = parsed
        else {
            panic!("not standalone");
        };
        assert_eq!(url, "redis://:pw@127.0.0.1:6380/2?protocol=resp2");
        assert_eq!(options.prefix, "t1");
        assert_eq!(options.op_timeout, Duration::from_millis(250));
    }

    #[test]
    fn resp3_is_refused_because_replies_are_decoded_as_resp2() {
        let error = StoreLocator::parse("redis://127.0.0.1:6380?protocol=resp3").unwrap_err();
        assert!(error.to_string().contains("RESP2"), "{error}");
    }

    #[test]
    fn cluster_urls_list_every_seed() {
        let StoreLocator::Redis { target, options } = StoreLocator::parse(
            "redis+cluster://u:p@127.0.0.1:7000,127.0.0.1:7001/?event_retention=50",
        )
        .unwrap() else {
            panic!("not redis");
        };
        assert_eq!(
            target,
            RedisTarget::Cluster {
                nodes: vec![
                    "redis://u:p@127.0.0.1:7000".into(),
                    "redis://u:p@127.0.0.1:7001".into()
                ]
            }
        );
        assert_eq!(options.event_retention, 50);
        let StoreLocator::Redis { target, .. } =
            StoreLocator::parse("redis://127.0.0.1:7000?cluster=true").unwrap()
        else {
            panic!("not redis");
        };
        assert_eq!(
            target,
            RedisTarget::Cluster {
                nodes: vec!["redis://127.0.0.1:7000".into()]
            }
        );
    }

    #[test]
    fn bad_urls_say_what_is_wrong_without_the_password() {
        for (url, needle) in [
            ("postgres://x", "expected redb:PATH"),
            ("rediss://h:1", "TLS"),
            ("redis://h:1/abc", "must be a number"),
            ("redis://h:1?timeout_ms=0", "milliseconds"),
            ("redis://h:1?prefix=a%20b", "prefix"),
            ("redis+cluster://", "at least one node"),
            ("redis+cluster://h", "HOST:PORT"),
            ("redis+cluster://u:secret@h:1/3", "database 0"),
        ] {
            let err = StoreLocator::parse(url).unwrap_err().to_string();
            assert!(err.contains(needle), "{url}: {err}");
            assert!(!err.contains("secret"), "{url}: {err}");
        }
    }
}
