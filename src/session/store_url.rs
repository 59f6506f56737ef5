//! Parsing of store URLs into a backend and its options.

use std::path::PathBuf;
use std::time::Duration;

use super::error::StoreError;
use super::redb_store::RedbOptions;
use super::redis_store::{RedisOptions, RedisTarget, SentinelTarget};

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
const SENTINEL_SCHEME: &str = "redis+sentinel://";

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
        if url.starts_with("rediss://")
            || url.starts_with("rediss+cluster://")
            || url.starts_with("rediss+sentinel://")
        {
            return Err(bad(
                "TLS connections to Redis are not supported by this build",
            ));
        }
        if let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) {
            return parse_cluster(rest).map_err(|reason| bad(&reason));
        }
        if let Some(rest) = url.strip_prefix(SENTINEL_SCHEME) {
            return parse_sentinel(rest).map_err(|reason| bad(&reason));
        }
        if url.starts_with("redis://") {
            return parse_standalone(url).map_err(|reason| bad(&reason));
        }
        Err(bad(
            "expected redb:PATH, redis://HOST:PORT/DB, redis+cluster://HOST:PORT,HOST:PORT or redis+sentinel://HOST:PORT,HOST:PORT/MASTER_NAME",
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
    let nodes = node_urls(hosts, userinfo)?;
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

/// `redis://[USERINFO@]HOST:PORT` for each comma-separated `HOST:PORT`.
fn node_urls(hosts: &str, userinfo: Option<&str>) -> Result<Vec<String>, String> {
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
    Ok(nodes)
}

/// `HOST:PORT,HOST:PORT/MASTER_NAME[/DB][?options]` after `redis+sentinel://`. The user and
/// password are the master's (and its replicas'); the sentinels get them too only with
/// `sentinel_auth=true`.
fn parse_sentinel(rest: &str) -> Result<StoreLocator, String> {
    let (location, query) = match rest.split_once('?') {
        Some((l, q)) => (l, q),
        None => (rest, ""),
    };
    let (authority, path) = location.split_once('/').unwrap_or((location, ""));
    let mut path = path.trim_end_matches('/').split('/');
    let master_name = path.next().unwrap_or_default();
    if master_name.is_empty() {
        return Err(
            "name the master the sentinels monitor, e.g. redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster"
                .into(),
        );
    }
    let name_ok = master_name.len() <= 128
        && master_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !name_ok {
        return Err(format!(
            "master name {master_name:?} must be 1 to 128 characters of [A-Za-z0-9_.-]"
        ));
    }
    let db = match path.next() {
        None => 0,
        Some(db) => db
            .parse::<u32>()
            .map_err(|_| format!("database {db:?} must be a number"))?,
    };
    if let Some(extra) = path.next() {
        return Err(format!(
            "unexpected {extra:?} after the database; the form is HOSTS/MASTER_NAME[/DB]"
        ));
    }
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((user, hosts)) => (Some(user), hosts),
        None => (None, authority),
    };
    let mut options = RedisOptions::default();
    let mut cluster = false;
    let mut sentinel_auth = false;
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if key == "sentinel_auth" {
            sentinel_auth = match value.as_ref() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                _ => return Err(format!("sentinel_auth={value:?} must be true or false")),
            };
            continue;
        }
        if !apply_option(&mut options, &mut cluster, &key, &value)? {
            return Err(format!("unknown option {key:?} for a sentinel url"));
        }
    }
    if cluster {
        return Err("a Sentinel deployment is not a Redis Cluster; drop cluster=true".into());
    }
    // The redis crate's own reading of the user and password (percent-decoded).
    let (username, password) = match userinfo {
        Some(user) => {
            use redis::IntoConnectionInfo;
            let info = format!("redis://{user}@localhost:1")
                .into_connection_info()
                .map_err(|_| "the user and password are not valid in a URL".to_owned())?;
            let settings = info.redis_settings();
            (
                settings.username().map(str::to_owned),
                settings.password().map(str::to_owned),
            )
        }
        None => (None, None),
    };
    let sentinels = node_urls(hosts, userinfo.filter(|_| sentinel_auth))?;
    if sentinels.is_empty() {
        return Err(
            "list at least one sentinel, e.g. redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster"
                .into(),
        );
    }
    Ok(StoreLocator::Redis {
        target: RedisTarget::Sentinel(SentinelTarget {
            sentinels,
            master_name: master_name.to_owned(),
            db,
            username,
            password,
        }),
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
    fn sentinel_urls_name_the_sentinels_the_master_and_its_credentials() {
        let StoreLocator::Redis { target, options } = StoreLocator::parse(
            "redis+sentinel://app:s%40cret@10.0.0.1:26379,10.0.0.2:26379/main-1/3?prefix=t2&replicas_to_ack=1&replica_ack_timeout_ms=250",
        )
        .unwrap() else {
            panic!("not redis");
        };
        assert_eq!(
            target,
            RedisTarget::Sentinel(SentinelTarget {
                sentinels: vec![
                    "redis://10.0.0.1:26379".into(),
                    "redis://10.0.0.2:26379".into()
                ],
                master_name: "main-1".into(),
                db: 3,
                username: Some("app".into()),
                password: Some("s@cret".into()),
            })
        );
        assert_eq!(options.prefix, "t2");
        assert_eq!(options.replicas_to_ack, Some(1));
        assert_eq!(options.replica_ack_timeout, Duration::from_millis(250));

        let StoreLocator::Redis {
            target: RedisTarget::Sentinel(target),
            options,
        } = StoreLocator::parse("redis+sentinel://:pw@h:26379/m/?sentinel_auth=true").unwrap()
        else {
            panic!("not sentinel");
        };
        assert_eq!(target.sentinels, vec!["redis://:pw@h:26379".to_owned()]);
        assert_eq!(
            (target.db, target.username, target.password),
            (0, None, Some("pw".into()))
        );
        assert_eq!(options.replicas_to_ack, None, "auto by default");
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
            ("redis+sentinel://u:secret@h:26379", "name the master"),
            ("redis+sentinel://u:secret@h:26379/", "name the master"),
            ("redis+sentinel://u:secret@/m", "at least one sentinel"),
            ("redis+sentinel://u:secret@h/m", "HOST:PORT"),
            ("redis+sentinel://u:secret@h:1/m/x", "must be a number"),
            ("redis+sentinel://u:secret@h:1/m/0/extra", "unexpected"),
            ("redis+sentinel://u:secret@h:1/m%20x", "master name"),
            (
                "redis+sentinel://u:secret@h:1/m?cluster=true",
                "not a Redis Cluster",
            ),
            (
                "redis+sentinel://u:secret@h:1/m?sentinel_auth=maybe",
                "sentinel_auth",
            ),
            ("redis+sentinel://u:secret@h:1/m?bogus=1", "unknown option"),
            (
                "redis+sentinel://u:secret@h:1/m?timeout_ms=0",
                "milliseconds",
            ),
            ("rediss+sentinel://u:secret@h:1/m", "TLS"),
        ] {
            let err = StoreLocator::parse(url).unwrap_err().to_string();
            assert!(err.contains(needle), "{url}: {err}");
            assert!(!err.contains("secret"), "{url}: {err}");
        }
    }
}
