//! [`RedisStore`]: the fleet store, on standalone Redis, Redis Sentinel or Redis Cluster (7.0+).
//!
//! Every state change is one Lua script (see `scripts.rs` and `lua/`) that also appends the
//! event to the partition's stream (`XADD … MAXLEN ~`) and publishes it, so the change, its
//! log entry and its notification cannot come apart. The key layout is in `keys.rs`.
//!
//! Every call is bounded by [`RedisOptions::op_timeout`]: with Redis down, a close fails in
//! about that time with [`StoreError::Timeout`] or [`StoreError::Unavailable`], and the
//! caller falls back to the [`Outbox`](crate::session::Outbox). Connections are made lazily
//! and re-made in the background after a failure.
//!
//! With Sentinel the master is asked of the sentinels before the first call, and again when
//! calls keep failing or a write is answered `READONLY` (the master was demoted); writes then
//! go to the master the sentinels name (see `sentinel.rs`).
//!
//! A write whose confirmation matters (close, block, reopen, unblock) goes in one pipeline
//! with `CLIENT INFO`, and its confirmation is `CLIENT INFO` and `WAIT` in one pipeline: it
//! counts only on the connection the write went through (see [`Inner::replicated`]).

mod keys;
mod scripts;
mod sentinel;
mod watch;
mod wire;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::try_join_all;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, FromRedisValue, Pipeline, RedisError, RedisFuture, Script, Value};
use tokio::sync::mpsc;

use self::keys::{partition_of, Keys, PARTITIONS};
use self::scripts::scripts;
use self::sentinel::SentinelMaster;
pub use self::sentinel::SentinelTarget;
use self::wire::{
    event_from_fields, items, mark_from_json, number, pairs, record_from_hash, text, StreamId,
};
use super::credential::{generate_secret, CredentialBlock, Fingerprint};
use super::error::StoreError;
use super::event::{CredentialMark, EventCursor, EventPage, Notice, Snapshot};
use super::model::{
    check_exact, check_payload, check_rule, hex, lease_end, new_wakeup_id, unix_ms_now, AddWakeup,
    ClaimedWakeup, CloseOutcome, Closure, OpenSpec, Receipt, SessionId, SessionRecord,
    SessionStatus, Wakeup,
};
use super::store_url::redact;
use super::{BoxFuture, SessionStore};

/// Where the Redis deployment is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// A `redis://` URL, as the redis crate accepts it.
    Standalone { url: String },
    /// Seed node URLs (`redis://host:port`); the rest of the cluster is discovered.
    Cluster { nodes: Vec<String> },
    /// A master (with replicas) that sentinels monitor and fail over.
    Sentinel(SentinelTarget),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOptions {
    /// Prefix of every key and of the channel; deployments sharing a Redis use different ones.
    pub prefix: String,
    /// Upper bound of each Redis call (and of a whole `close`).
    pub op_timeout: Duration,
    pub connect_timeout: Duration,
    /// Approximate number of events kept per partition stream (16 partitions).
    pub event_retention: u64,
    /// How often the live subscriber pings to find a dead connection.
    pub ping_interval: Duration,
    /// Replicas a closure must reach before it counts as stored (`WAIT`); `None`: one when the
    /// store has replicas at the first check, none otherwise.
    pub replicas_to_ack: Option<u32>,
    /// How long one `WAIT` may take; a closure not replicated by then stays in the outbox.
    pub replica_ack_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            prefix: "hg".to_owned(),
            op_timeout: Duration::from_millis(1000),
            connect_timeout: Duration::from_millis(500),
            event_retention: 10_000,
            ping_interval: Duration::from_secs(5),
            replicas_to_ack: None,
            replica_ack_timeout: Duration::from_millis(500),
        }
    }
}

/// How long finding out whether the store has replicas waits for one to confirm.
const REPLICA_PROBE: Duration = Duration::from_millis(500);

/// The Redis-backed [`SessionStore`]. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The connection writes go through; replaced when a Cluster connection stays stuck or
    /// the sentinels name another master. `None` with Sentinel until the master is known.
    conn: std::sync::RwLock<Option<Conn>>,
    /// Failed calls in a row, and when the connection was last replaced.
    stuck: std::sync::Mutex<Stuck>,
    keys: Keys,
    options: RedisOptions,
    /// Where the live subscriber listens.
    subscribe_to: watch::Source,
    /// Opens short-lived connections of their own, for checks that must not share (or
    /// block) the connections writes go through.
    probe: Probe,
    /// `replicas_to_ack` once known (resolved at the first check when set to auto).
    required_acks: tokio::sync::OnceCell<u32>,
}

enum Probe {
    Standalone(redis::Client),
    Cluster(Box<redis::cluster::ClusterClient>),
    Sentinel(Arc<SentinelMaster>),
}

#[derive(Clone)]
enum Conn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Standalone(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Standalone(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Failed calls in a row on the shared connection.
#[derive(Default)]
struct Stuck {
    failures: u32,
    replaced_at: Option<std::time::Instant>,
    /// Sentinel: the master may have moved; the next call asks the sentinels first.
    relocate: bool,
    /// Sentinel: when the sentinels were last asked.
    asked_at: Option<std::time::Instant>,
    /// Sentinel: `host:port` of the master writes go to.
    master: Option<String>,
}

/// Failures in a row after which a Cluster connection is replaced: the cluster client can keep
/// a dead master's slots after a failover and time out on them for minutes.
const STUCK_AFTER: u32 = 3;
/// At most one replacement this often.
const REPLACE_EVERY: Duration = Duration::from_secs(5);
/// Sentinel: the sentinels are asked for the master at most this often while calls fail (a
/// failover takes a few seconds, and until it is done they name the old master).
const ASK_SENTINELS_EVERY: Duration = Duration::from_millis(200);

/// Settings of the connection writes go through (also used for a Sentinel's new master).
fn manager_config(options: &RedisOptions) -> ConnectionManagerConfig {
    // Few quick reconnect attempts: every call is bounded by op_timeout anyway, and each
    // failed call triggers a new attempt.
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(options.connect_timeout))
        .set_response_timeout(Some(options.op_timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(20))
        .set_max_delay(Duration::from_millis(200))
}

/// A write refused because the node is a replica now: the master moved.
fn is_read_only(err: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    matches!(err.kind(), ErrorKind::Server(ServerErrorKind::ReadOnly))
        || err.code() == Some("READONLY")
}

/// Sorts Redis failures into retryable (the store is away) and final ones.
fn classify(err: RedisError) -> StoreError {
    use redis::{ErrorKind, ServerErrorKind};
    let transient_server = matches!(
        err.kind(),
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
                | ServerErrorKind::Moved
                | ServerErrorKind::Ask
        ) | ErrorKind::ClusterConnectionNotFound
    );
    let transient_code = matches!(err.code(), Some("OOM" | "BUSY" | "NOREPLICAS" | "LOADING"));
    if err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || transient_server
        || transient_code
    {
        StoreError::Unavailable(err.to_string())
    } else {
        StoreError::Failed(err.to_string())
    }
}

/// Sends `pipe` as one unit on one connection: with Cluster to the master `route` names.
async fn send_pipeline(
    conn: &mut Conn,
    pipe: &Pipeline,
    route: Option<Route>,
) -> Result<Vec<Value>, RedisError> {
    match (conn, route) {
        (Conn::Cluster(cluster), Some(route)) => {
            cluster
                .route_pipeline(
                    pipe.clone(),
                    0,
                    pipe.len(),
                    SingleNodeRoutingInfo::SpecificNode(route),
                )
                .await
        }
        (conn, _) => conn.req_packed_commands(pipe, 0, pipe.len()).await,
    }
}

fn is_no_script(reply: &Value) -> bool {
    matches!(reply, Value::ServerError(error)
        if error.kind() == Some(redis::ServerErrorKind::NoScript))
}

/// What names a connection in a `CLIENT INFO` reply: its id, unique within one server
/// process, and both ends of the socket, which tell the node and a reconnect apart (ids
/// start again at 1 when a server restarts).
fn connection_named(info: &Value) -> Result<String, StoreError> {
    let info = text(info)?;
    let fields: Vec<&str> = info
        .split_whitespace()
        .filter(|field| {
            field.starts_with("id=") || field.starts_with("addr=") || field.starts_with("laddr=")
        })
        .collect();
    if fields.len() != 3 {
        return Err(StoreError::corrupt(format!(
            "CLIENT INFO did not name the connection: {info:?}"
        )));
    }
    Ok(fields.join(" "))
}

const CURSOR_PREFIX: &str = "redis:";

impl RedisStore {
    /// Creates the handle without connecting; must run inside a Tokio runtime.
    pub fn connect(target: RedisTarget, options: RedisOptions) -> Result<Self, StoreError> {
        let bad = |url: &str, e: RedisError| StoreError::InvalidUrl {
            url: redact(url),
            reason: e.to_string(),
        };
        let (conn, probe, subscribe_to) = match &target {
            RedisTarget::Standalone { url } => {
                let client = redis::Client::open(url.as_str()).map_err(|e| bad(url, e))?;
                let probe = Probe::Standalone(client.clone());
                let manager =
                    ConnectionManager::new_lazy_with_config(client, manager_config(&options))
                        .map_err(|e| bad(url, e))?;
                (
                    Some(Conn::Standalone(manager)),
                    probe,
                    watch::Source::Nodes(vec![url.clone()]),
                )
            }
            RedisTarget::Sentinel(sentinel) => {
                let master = Arc::new(SentinelMaster::new(sentinel, &options)?);
                (
                    None,
                    Probe::Sentinel(master.clone()),
                    watch::Source::Sentinel(master),
                )
            }
            RedisTarget::Cluster { nodes } => {
                if nodes.is_empty() {
                    return Err(StoreError::invalid(
                        "a cluster target needs at least one node",
                    ));
                }
                let client =
                    redis::cluster::ClusterClient::builder(nodes.iter().map(String::as_str))
                        .connection_timeout(options.connect_timeout)
                        .response_timeout(options.op_timeout)
                        .retries(2)
                        .min_retry_wait(10)
                        .max_retry_wait(200)
                        .build()
                        .map_err(|e| bad(&nodes.join(","), e))?;
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(options.connect_timeout)
                    .set_response_timeout(options.op_timeout);
                (
                    Some(Conn::Cluster(
                        client.get_pending_async_connection_with_config(config),
                    )),
                    Probe::Cluster(Box::new(client)),
                    watch::Source::Nodes(nodes.clone()),
                )
            }
        };
        Ok(RedisStore {
            inner: Arc::new(Inner {
                conn: std::sync::RwLock::new(conn),
                stuck: std::sync::Mutex::new(Stuck::default()),
                keys: Keys::new(&options.prefix),
                options,
                subscribe_to,
                probe,
                required_acks: tokio::sync::OnceCell::new(),
            }),
        })
    }
}

impl Inner {
    async fn timed<T>(
        &self,
        call: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        let mut read_only = false;
        let result = match tokio::time::timeout(self.options.op_timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => {
                read_only = is_read_only(&err);
                Err(classify(err))
            }
            Err(_) => Err(StoreError::Timeout(self.options.op_timeout)),
        };
        self.note_outcome(&result, read_only);
        result
    }

    /// The connection writes go through; with Sentinel first the master's, asked of the
    /// sentinels when it is not known yet or may have moved.
    async fn conn(&self) -> Result<Conn, StoreError> {
        let current = self.conn.read().unwrap_or_else(|e| e.into_inner()).clone();
        let Probe::Sentinel(sentinel) = &self.probe else {
            return current.ok_or_else(|| StoreError::Failed("no Redis connection".into()));
        };
        if let Some(conn) = current.as_ref().filter(|_| !self.should_ask_sentinels()) {
            return Ok(conn.clone());
        }
        match self.follow_master(sentinel).await {
            Ok(conn) => Ok(conn),
            // The old master may still answer (a sentinel that cannot be reached does not
            // mean the master moved); the call finds out.
            Err(error) => current.ok_or(error),
        }
    }

    fn should_ask_sentinels(&self) -> bool {
        let stuck = self.stuck.lock().unwrap_or_else(|e| e.into_inner());
        stuck.relocate
            && stuck
                .asked_at
                .is_none_or(|at| at.elapsed() >= ASK_SENTINELS_EVERY)
    }

    /// Asks the sentinels for the master and, when it is another one than writes go to now,
    /// replaces the connection (writes made before are confirmed by their replay, see
    /// [`Inner::replicated`]).
    async fn follow_master(&self, sentinel: &SentinelMaster) -> Result<Conn, StoreError> {
        let _one_at_a_time = sentinel.asking.lock().await;
        let current = self.conn.read().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(conn) = current.as_ref().filter(|_| !self.should_ask_sentinels()) {
            // Another call asked while this one waited.
            return Ok(conn.clone());
        }
        self.stuck
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .asked_at = Some(std::time::Instant::now());
        let client = sentinel.locate().await?;
        let address = client.get_connection_info().addr().to_string();
        let mut stuck = self.stuck.lock().unwrap_or_else(|e| e.into_inner());
        stuck.relocate = false;
        if let Some(conn) = current.filter(|_| stuck.master.as_deref() == Some(&address)) {
            return Ok(conn);
        }
        let manager =
            ConnectionManager::new_lazy_with_config(client, manager_config(&self.options))
                .map_err(classify)?;
        let conn = Conn::Standalone(manager);
        let mut slot = self.conn.write().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            stuck.replaced_at = Some(std::time::Instant::now());
            stuck.failures = 0;
            tracing::warn!(
                master = %address,
                "The sentinels name another master; writes go there now."
            );
        } else {
            tracing::info!(master = %address, "Master found through the sentinels.");
        }
        stuck.master = Some(address);
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Counts failures in a row; a Cluster connection that keeps failing is replaced by one
    /// that learns the slot map afresh from the seed nodes, and with Sentinel the next call
    /// asks the sentinels for the master (at once after a `READONLY`).
    fn note_outcome<T>(&self, result: &Result<T, StoreError>, read_only: bool) {
        let away = matches!(
            result,
            Err(StoreError::Unavailable(_) | StoreError::Timeout(_))
        );
        let mut stuck = self.stuck.lock().unwrap_or_else(|e| e.into_inner());
        if !away {
            stuck.failures = 0;
            return;
        }
        stuck.failures += 1;
        if let Probe::Sentinel(_) = &self.probe {
            stuck.relocate |= read_only || stuck.failures >= STUCK_AFTER;
            return;
        }
        let Probe::Cluster(client) = &self.probe else {
            return;
        };
        let now = std::time::Instant::now();
        let recently = stuck
            .replaced_at
            .is_some_and(|at| now.duration_since(at) < REPLACE_EVERY);
        if stuck.failures < STUCK_AFTER || recently {
            return;
        }
        let config = redis::cluster::ClusterConfig::new()
            .set_connection_timeout(self.options.connect_timeout)
            .set_response_timeout(self.options.op_timeout);
        *self.conn.write().unwrap_or_else(|e| e.into_inner()) = Some(Conn::Cluster(
            client.get_pending_async_connection_with_config(config),
        ));
        stuck.replaced_at = Some(now);
        stuck.failures = 0;
        tracing::warn!("Redis Cluster calls kept failing; connecting afresh to relearn the slots.");
    }

    async fn eval<T: FromRedisValue>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[String],
    ) -> Result<T, StoreError> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(arg);
        }
        let mut conn = self.conn().await?;
        self.timed(async move { invocation.invoke_async(&mut conn).await })
            .await
    }

    /// Runs a writing script with `CLIENT INFO` in the same pipeline: a pipeline goes out as
    /// one unit on one connection (the redis crate's `ConnectionManager` and Cluster client
    /// both send and, on a redirect, resend it whole), so the reply names the connection the
    /// write went through at no extra round trip. That is the [`Receipt`] `replicated` checks.
    async fn eval_with_receipt<T: FromRedisValue>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[String],
    ) -> Result<(T, Receipt), StoreError> {
        let route = self.route_of(keys);
        let mut pipe = redis::pipe();
        pipe.cmd("EVALSHA")
            .arg(script.get_hash())
            .arg(keys.len())
            .arg(keys)
            .arg(args)
            .cmd("CLIENT")
            .arg("INFO");
        let mut conn = self.conn().await?;
        let (reply, info) = self
            .timed(async move {
                let mut replies = send_pipeline(&mut conn, &pipe, route).await?;
                if replies.first().is_some_and(is_no_script) {
                    script.prepare_invoke().load_async(&mut conn).await?;
                    replies = send_pipeline(&mut conn, &pipe, route).await?;
                }
                let [reply, info] = <[Value; 2]>::try_from(replies).map_err(|_| {
                    RedisError::from((
                        redis::ErrorKind::UnexpectedReturnType,
                        "a write pipeline answered with the wrong number of replies",
                    ))
                })?;
                Ok((reply.extract_error()?, info.extract_error()?))
            })
            .await?;
        let value = T::from_redis_value(reply)
            .map_err(|e| StoreError::corrupt(format!("unexpected script reply: {e}")))?;
        let receipt = Receipt {
            connection: Some(connection_named(&info)?),
            route,
        };
        Ok((value, receipt))
    }

    /// With Cluster, the route of a script's keys (they share a slot); `None` otherwise.
    fn route_of(&self, keys: &[String]) -> Option<Route> {
        let Probe::Cluster(_) = &self.probe else {
            return None;
        };
        keys.first()
            .map(|key| Route::with_key(key.as_bytes(), SlotAddr::Master))
    }

    /// Replicas every write must reach: the configured number, or for auto one when every
    /// master has a replica in sync, none otherwise. Resolved once, while the store is whole.
    async fn required_acks(&self) -> Result<u32, StoreError> {
        if let Some(fixed) = self.options.replicas_to_ack {
            return Ok(fixed);
        }
        let acks = self
            .required_acks
            .get_or_try_init(|| async {
                let acks = self.replicas_in_sync().await?.min(1) as u32;
                tracing::info!(
                    replicas_to_ack = acks,
                    "Closures count as stored once on this many replicas."
                );
                Ok::<_, StoreError>(acks)
            })
            .await?;
        Ok(*acks)
    }

    /// Replicas in sync with their master (the fewest of any master on Cluster), asked on a
    /// fresh connection of its own so a blocking `WAIT` never holds up the connection writes
    /// go through. `WAIT 0 0` answers at once but counts only replicas that already confirmed
    /// the master's latest offset; when it finds none, `WAIT 1` gives them a moment.
    async fn replicas_in_sync(&self) -> Result<u64, StoreError> {
        let at_once = redis::cmd("WAIT").arg(0).arg(0).clone();
        let moment = redis::cmd("WAIT")
            .arg(1)
            .arg(REPLICA_PROBE.as_millis() as u64)
            .clone();
        let limit = self.options.op_timeout + REPLICA_PROBE;
        let probe = async {
            let client = match &self.probe {
                Probe::Standalone(client) => client.clone(),
                Probe::Sentinel(sentinel) => sentinel.master().await?,
                Probe::Cluster(client) => {
                    let config = redis::cluster::ClusterConfig::new()
                        .set_connection_timeout(self.options.connect_timeout)
                        .set_response_timeout(limit);
                    let mut conn = client
                        .get_async_connection_with_config(config)
                        .await
                        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                    let found: u64 = at_once
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                    if found > 0 {
                        return Ok(found);
                    }
                    return moment
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| StoreError::Unavailable(e.to_string()));
                }
            };
            self.replicas_attached(&client, limit)
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))
        };
        match tokio::time::timeout(limit, probe).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(limit)),
        }
    }

    /// Replicas attached to one master, lagging or not: a replica that is briefly behind must
    /// not turn acknowledgement off for good. A server without replicas says so at once.
    async fn replicas_attached(
        &self,
        master: &redis::Client,
        limit: Duration,
    ) -> Result<u64, RedisError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.options.connect_timeout))
            .set_response_timeout(Some(limit));
        let mut conn = master
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await?;
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("connected_slaves:"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0))
    }

    /// Waits until the writes of `receipts` are on the required number of replicas. Each is
    /// confirmed by `CLIENT INFO` and `WAIT` in one pipeline on the connection writes go
    /// through now (with Cluster, to the master of the write's slot): `WAIT` confirms only
    /// its own connection's writes, so the confirmation counts only when that connection is
    /// the one the write went through. The connection manager reconnects on its own, a
    /// Sentinel master or a stuck Cluster connection is replaced; a write made before is
    /// confirmed by its replay on the new connection. `Unavailable` when the connection
    /// changed or the replicas do not confirm within `replica_ack_timeout`.
    async fn replicated(&self, receipts: &[Receipt]) -> Result<(), StoreError> {
        let required = self.required_acks().await?;
        if required == 0 || receipts.is_empty() {
            return Ok(());
        }
        // One confirmation per node: several writes through the same connection share it.
        let mut by_route: Vec<(Option<Route>, &str)> = Vec::new();
        for receipt in receipts {
            let Some(connection) = receipt.connection.as_deref() else {
                return Err(StoreError::Failed(
                    "a receipt of another store cannot be confirmed by Redis".to_owned(),
                ));
            };
            match by_route.iter().find(|(route, _)| *route == receipt.route) {
                Some((_, earlier)) if *earlier != connection => {
                    return Err(StoreError::Unavailable(
                        "the writes went through different connections to one node; they are confirmed by their replay".to_owned(),
                    ))
                }
                Some(_) => {}
                None => by_route.push((receipt.route, connection)),
            }
        }
        let confirmations = by_route
            .into_iter()
            .map(|(route, connection)| self.confirm_on(route, connection, required));
        try_join_all(confirmations).await?;
        Ok(())
    }

    /// `CLIENT INFO` and `WAIT` in one pipeline to the node `route` names (the only one
    /// without Cluster); confirmed when the connection is still `connection`.
    async fn confirm_on(
        &self,
        route: Option<Route>,
        connection: &str,
        required: u32,
    ) -> Result<(), StoreError> {
        let timeout = self.options.replica_ack_timeout;
        let mut pipe = redis::pipe();
        pipe.cmd("CLIENT")
            .arg("INFO")
            .cmd("WAIT")
            .arg(required)
            .arg(timeout.as_millis() as u64);
        let mut conn = self.conn().await?;
        let replies = self
            .timed(async move {
                send_pipeline(&mut conn, &pipe, route)
                    .await?
                    .into_iter()
                    .map(Value::extract_error)
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        let [info, acked] = replies.as_slice() else {
            return Err(StoreError::corrupt(
                "a confirmation pipeline answered with the wrong number of replies",
            ));
        };
        let now = connection_named(info)?;
        if now != connection {
            return Err(StoreError::Unavailable(format!(
                "the connection changed since the write ({connection} then, {now} now): WAIT here confirms nothing of it; it is confirmed by its replay"
            )));
        }
        let acked = u64::from_redis_value_ref(acked)
            .map_err(|e| StoreError::corrupt(format!("unexpected WAIT reply: {e}")))?;
        if acked < u64::from(required) {
            return Err(StoreError::Unavailable(format!(
                "written, but on {acked} of {required} replicas after {timeout:?}"
            )));
        }
        Ok(())
    }

    async fn command<T: FromRedisValue>(&self, cmd: Cmd) -> Result<T, StoreError> {
        let mut conn = self.conn().await?;
        self.timed(async move { cmd.query_async(&mut conn).await })
            .await
    }

    /// The arguments every writing script starts with: maxlen, channel, partition.
    fn emit_args(&self, partition: usize) -> Vec<String> {
        vec![
            self.options.event_retention.to_string(),
            self.keys.channel(),
            partition.to_string(),
        ]
    }

    async fn get(&self, id: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        let p = partition_of(id.as_str());
        let reply: Value = self
            .command(
                redis::cmd("HGETALL")
                    .arg(self.keys.session(p, id.as_str()))
                    .clone(),
            )
            .await?;
        record_from_hash(id, pairs(&reply)?)
    }

    async fn open(
        &self,
        id: &SessionId,
        spec: OpenSpec,
    ) -> Result<(SessionRecord, Receipt), StoreError> {
        let spec = spec.checked()?;
        let p = partition_of(id.as_str());
        let sid = id.as_str();
        let mut args = self.emit_args(p);
        args.extend([
            sid.to_owned(),
            if spec.scope.is_some() { "1" } else { "0" }.to_owned(),
            spec.scope.unwrap_or_default(),
            if spec.resume.is_some() { "1" } else { "0" }.to_owned(),
            spec.resume.unwrap_or_default(),
            spec.at_ms.to_string(),
        ]);
        let keys = [
            self.keys.session(p, sid),
            self.keys.marks(p),
            self.keys.events(p),
        ];
        let (reply, receipt): (Value, _) = self
            .eval_with_receipt(&scripts().open, &keys, &args)
            .await?;
        let record = record_from_hash(id, pairs(&reply)?)?
            .ok_or_else(|| StoreError::corrupt("open returned no session"))?;
        Ok((record, receipt))
    }

    async fn close(
        &self,
        id: &SessionId,
        closure: Closure,
    ) -> Result<(CloseOutcome, Receipt), StoreError> {
        let closure = closure.normalized()?;
        let p = partition_of(id.as_str());
        let sid = id.as_str();
        let mut args = self.emit_args(p);
        args.extend([
            sid.to_owned(),
            closure.epoch.map(|e| e.to_string()).unwrap_or_default(),
            closure.class.as_str().to_owned(),
            closure.rule.clone(),
            closure.reason.clone(),
            closure.detail.clone(),
            closure
                .upstream_status
                .map(|s| s.to_string())
                .unwrap_or_default(),
            closure.at_ms.to_string(),
        ]);
        let keys = [
            self.keys.session(p, sid),
            self.keys.wakeups(p, sid),
            self.keys.payloads(p, sid),
            self.keys.due(p),
            self.keys.marks(p),
            self.keys.events(p),
        ];
        let (reply, receipt): (Value, _) = self
            .eval_with_receipt(&scripts().close, &keys, &args)
            .await?;
        let parts = items(&reply)?;
        let word = parts.first().map(text).transpose()?.unwrap_or_default();
        let record = |value: Option<&Value>| -> Result<SessionRecord, StoreError> {
            let value = value.ok_or_else(|| StoreError::corrupt("close reply without a record"))?;
            record_from_hash(id, pairs(value)?)?
                .ok_or_else(|| StoreError::corrupt("close reply with an empty record"))
        };
        let outcome = match word.as_str() {
            "fenced" => CloseOutcome::Fenced {
                current_epoch: number("epoch", &text(reply_part(parts, 1)?)?)?,
            },
            "already" => CloseOutcome::AlreadyClosed {
                record: record(parts.get(1))?,
            },
            "closed" => CloseOutcome::Closed {
                cancelled_wakeups: number("cancelled", &text(reply_part(parts, 1)?)?)?,
                record: record(parts.get(2))?,
            },
            other => {
                return Err(StoreError::corrupt(format!(
                    "unexpected close reply {other:?}"
                )))
            }
        };
        Ok((outcome, receipt))
    }

    async fn reset_resume(
        &self,
        id: &SessionId,
        epoch: Option<u64>,
        rule: &str,
    ) -> Result<bool, StoreError> {
        check_rule(rule)?;
        let p = partition_of(id.as_str());
        let mut args = self.emit_args(p);
        args.extend([
            id.as_str().to_owned(),
            epoch.map(|e| e.to_string()).unwrap_or_default(),
            rule.to_owned(),
            unix_ms_now().to_string(),
        ]);
        let keys = [self.keys.session(p, id.as_str()), self.keys.events(p)];
        let changed: i64 = self.eval(&scripts().reset_resume, &keys, &args).await?;
        Ok(changed == 1)
    }

    fn wakeup_keys(&self, p: usize, sid: &str) -> [String; 4] {
        [
            self.keys.session(p, sid),
            self.keys.wakeups(p, sid),
            self.keys.payloads(p, sid),
            self.keys.due(p),
        ]
    }

    async fn add_wakeup(
        &self,
        id: &SessionId,
        due_ms: u64,
        payload: serde_json::Value,
    ) -> Result<AddWakeup, StoreError> {
        check_exact("due_ms", due_ms)?;
        let payload_text = check_payload(&payload)?;
        let wakeup_id = new_wakeup_id()?;
        let p = partition_of(id.as_str());
        let args = [
            id.as_str().to_owned(),
            wakeup_id.clone(),
            due_ms.to_string(),
            payload_text,
        ];
        let reply: Value = self
            .eval(
                &scripts().add_wakeup,
                &self.wakeup_keys(p, id.as_str()),
                &args,
            )
            .await?;
        let parts = items(&reply)?;
        match parts.first().map(text).transpose()?.as_deref() {
            Some("closed") => Ok(AddWakeup::SessionClosed),
            Some("added") => Ok(AddWakeup::Added(Wakeup {
                id: wakeup_id,
                session: id.clone(),
                epoch: number("epoch", &text(reply_part(parts, 1)?)?)?,
                due_ms,
                payload,
            })),
            other => Err(StoreError::corrupt(format!(
                "unexpected add_wakeup reply {other:?}"
            ))),
        }
    }

    async fn pending_wakeups(&self, id: &SessionId) -> Result<Vec<Wakeup>, StoreError> {
        let p = partition_of(id.as_str());
        let keys = [
            self.keys.session(p, id.as_str()),
            self.keys.wakeups(p, id.as_str()),
            self.keys.payloads(p, id.as_str()),
        ];
        let reply: Value = self.eval(&scripts().pending, &keys, &[]).await?;
        let parts = items(&reply)?;
        if parts.len() != 3 {
            return Err(StoreError::corrupt("unexpected pending reply"));
        }
        let epoch = number("epoch", &text(&parts[0])?)?;
        let payloads: HashMap<String, String> = pairs(&parts[2])?.into_iter().collect();
        let mut wakeups = Vec::new();
        for (wakeup_id, score) in pairs(&parts[1])? {
            let payload = payloads
                .get(&wakeup_id)
                .map(String::as_str)
                .unwrap_or("null");
            wakeups.push(Wakeup {
                session: id.clone(),
                epoch,
                due_ms: number("due_ms", &score)?,
                payload: serde_json::from_str(payload)
                    .map_err(|e| StoreError::corrupt(format!("payload: {e}")))?,
                id: wakeup_id,
            });
        }
        Ok(wakeups)
    }

    /// Runs the claim script for one session. Its wakeups are removed from Redis by then, so
    /// decoding is lenient: an unreadable payload is handed out as the raw string.
    async fn claim_session(
        &self,
        p: usize,
        sid: &str,
        now_ms: u64,
        max: usize,
        leased_until: Option<u64>,
    ) -> Result<Vec<ClaimedWakeup>, StoreError> {
        let id =
            SessionId::parse(sid).map_err(|e| StoreError::corrupt(format!("due index: {e}")))?;
        let args = [
            sid.to_owned(),
            now_ms.to_string(),
            max.to_string(),
            leased_until.unwrap_or(0).to_string(),
        ];
        let reply: Value = self
            .eval(&scripts().claim_session, &self.wakeup_keys(p, sid), &args)
            .await?;
        let parts = items(&reply)?;
        if parts.len() != 2 {
            return Err(StoreError::corrupt("unexpected claim reply"));
        }
        let epoch = number("epoch", &text(&parts[0])?)?;
        let mut claimed = Vec::new();
        for triple in items(&parts[1])?.chunks(3) {
            let [wakeup_id, score, payload] = triple else {
                return Err(StoreError::corrupt("claim reply with a partial wakeup"));
            };
            let payload = text(payload)?;
            claimed.push(ClaimedWakeup {
                wakeup: Wakeup {
                    id: text(wakeup_id)?,
                    session: id.clone(),
                    epoch,
                    due_ms: number("due_ms", &text(score)?)?,
                    payload: serde_json::from_str(&payload)
                        .unwrap_or(serde_json::Value::String(payload)),
                },
                claimed_at_ms: now_ms,
                leased_until_ms: leased_until,
            });
        }
        Ok(claimed)
    }

    /// Hands out due wakeups: removed (`lease_ms` `None`), or kept with their due time moved
    /// to the end of the lease.
    async fn claim_due(
        &self,
        now_ms: u64,
        limit: usize,
        lease_ms: Option<u64>,
    ) -> Result<Vec<ClaimedWakeup>, StoreError> {
        let leased_until = lease_end(now_ms, lease_ms)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        // The due index is only a hint of which sessions to look at; the per-session script
        // decides, with the session's status read in the same atomic step.
        let scans = (0..PARTITIONS).map(|p| {
            let cmd = redis::cmd("ZRANGEBYSCORE")
                .arg(self.keys.due(p))
                .arg("-inf")
                .arg(now_ms)
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .clone();
            async move {
                let reply: Value = self.command(cmd).await?;
                let found = pairs(&reply)?
                    .into_iter()
                    .map(|(sid, score)| Ok((number("due", &score)?, p, sid)))
                    .collect::<Result<Vec<_>, StoreError>>()?;
                Ok::<_, StoreError>(found)
            }
        });
        let mut sessions: Vec<(u64, usize, String)> =
            try_join_all(scans).await?.into_iter().flatten().collect();
        sessions.sort();
        let mut claimed = Vec::new();
        for (_, p, sid) in sessions {
            if claimed.len() >= limit {
                break;
            }
            let max = limit - claimed.len();
            match self.claim_session(p, &sid, now_ms, max, leased_until).await {
                Ok(wakeups) => claimed.extend(wakeups),
                // What earlier scripts claimed is already removed from Redis: hand it out
                // rather than lose it with the error.
                Err(error) if !claimed.is_empty() => {
                    tracing::warn!(%error, session = %sid, "Claim stopped early.");
                    break;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(claimed)
    }

    async fn ack_wakeup(&self, id: &SessionId, wakeup_id: &str) -> Result<bool, StoreError> {
        let sid = id.as_str();
        let p = partition_of(sid);
        let args = [sid.to_owned(), wakeup_id.to_owned()];
        let removed: i64 = self
            .eval(&scripts().ack_wakeup, &self.wakeup_keys(p, sid), &args)
            .await?;
        Ok(removed == 1)
    }

    async fn block_credential(
        &self,
        block: CredentialBlock,
    ) -> Result<(bool, Receipt), StoreError> {
        let block = block.normalized()?;
        let fp = block.fingerprint.as_str();
        let p = partition_of(fp);
        let mut args = self.emit_args(p);
        args.extend([
            fp.to_owned(),
            serde_json::to_string(&block).map_err(|e| StoreError::invalid(e.to_string()))?,
            block.class.as_str().to_owned(),
            block.rule.clone(),
            block.reason.clone(),
            block.blocked_at_ms.to_string(),
        ]);
        let keys = [
            self.keys.credentials(p),
            self.keys.generations(p),
            self.keys.events(p),
        ];
        let (added, receipt): (i64, _) = self
            .eval_with_receipt(&scripts().block, &keys, &args)
            .await?;
        Ok((added == 1, receipt))
    }

    async fn unblock_credential(
        &self,
        fingerprint: &Fingerprint,
    ) -> Result<(bool, Receipt), StoreError> {
        let fp = fingerprint.as_str();
        let p = partition_of(fp);
        let mut args = self.emit_args(p);
        args.extend([fp.to_owned(), unix_ms_now().to_string()]);
        let keys = [
            self.keys.credentials(p),
            self.keys.generations(p),
            self.keys.events(p),
        ];
        let (removed, receipt): (i64, _) = self
            .eval_with_receipt(&scripts().unblock, &keys, &args)
            .await?;
        Ok((removed == 1, receipt))
    }

    async fn blocked_credentials(&self) -> Result<Vec<CredentialBlock>, StoreError> {
        let reads = (0..PARTITIONS).map(|p| async move {
            let reply: Value = self
                .command(redis::cmd("HGETALL").arg(self.keys.credentials(p)).clone())
                .await?;
            pairs(&reply)?
                .into_iter()
                .map(|(_, json)| {
                    serde_json::from_str::<CredentialBlock>(&json)
                        .map_err(|e| StoreError::corrupt(format!("credential block: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()
        });
        let mut blocks: Vec<CredentialBlock> =
            try_join_all(reads).await?.into_iter().flatten().collect();
        blocks.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
        Ok(blocks)
    }

    fn parse_cursor(cursor: Option<&EventCursor>) -> Result<Vec<StreamId>, StoreError> {
        let Some(cursor) = cursor else {
            return Ok(vec![StreamId::default(); PARTITIONS]);
        };
        let invalid = |reason: &str| StoreError::InvalidCursor {
            cursor: cursor.as_str().to_owned(),
            reason: reason.to_owned(),
        };
        let body = cursor
            .as_str()
            .strip_prefix(CURSOR_PREFIX)
            .ok_or_else(|| invalid("not a Redis store cursor"))?;
        let ids = body
            .split(',')
            .map(StreamId::parse)
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| invalid("malformed stream id"))?;
        if ids.len() != PARTITIONS {
            return Err(invalid("wrong number of partitions"));
        }
        Ok(ids)
    }

    fn format_cursor(ids: &[StreamId]) -> EventCursor {
        let body: Vec<String> = ids.iter().map(StreamId::to_string).collect();
        EventCursor::from_token(format!("{CURSOR_PREFIX}{}", body.join(",")))
    }

    async fn events_after(
        &self,
        cursor: Option<&EventCursor>,
        limit: usize,
    ) -> Result<EventPage, StoreError> {
        let mut positions = Self::parse_cursor(cursor)?;
        if limit == 0 {
            return Ok(EventPage {
                events: Vec::new(),
                cursor: Self::format_cursor(&positions),
                gap: false,
            });
        }
        let reads = positions.iter().enumerate().map(|(p, after)| {
            let args = [after.to_string(), limit.to_string()];
            let keys = [self.keys.events(p)];
            async move {
                let reply: Value = self.eval(&scripts().read_events, &keys, &args).await?;
                Ok::<_, StoreError>((p, reply))
            }
        });
        let mut gap = false;
        let mut entries: Vec<(StreamId, usize, HashMap<String, String>)> = Vec::new();
        for (p, reply) in try_join_all(reads).await? {
            let parts = items(&reply)?;
            if parts.len() != 3 {
                return Err(StoreError::corrupt("unexpected read_events reply"));
            }
            // Entries before the first retained one were trimmed. A reader positioned before
            // it may have missed some (or, if it stood exactly on the last trimmed entry,
            // nothing; the resync that follows is then merely unneeded).
            let first = StreamId::parse(&text(&parts[0])?).unwrap_or_default();
            let trimmed = number("trimmed", &text(&parts[1])?)?;
            gap |= trimmed > 0 && positions[p] < first;
            for entry in items(&parts[2])? {
                let entry = items(entry)?;
                let [id, fields] = entry else {
                    return Err(StoreError::corrupt("malformed stream entry"));
                };
                let id_text = text(id)?;
                let id = StreamId::parse(&id_text)
                    .ok_or_else(|| StoreError::corrupt("malformed stream id"))?;
                entries.push((id, p, pairs(fields)?.into_iter().collect()));
            }
        }
        // Each partition contributed a prefix of its stream; taking the smallest `limit` of
        // the union and advancing each partition past what was taken skips nothing.
        entries.sort_by_key(|entry| (entry.0, entry.1));
        entries.truncate(limit);
        let mut events = Vec::with_capacity(entries.len());
        for (id, p, fields) in entries {
            positions[p] = id;
            // An entry this version cannot read (written by a newer one, or damaged) is
            // stepped over and reported as a gap, so readers rebuild from a snapshot instead
            // of stopping at it for good.
            match event_from_fields(format!("{p}/{id}"), fields) {
                Ok(event) => events.push(event),
                Err(error) => {
                    tracing::warn!(%error, entry = %format!("{p}/{id}"), "Skipping an unreadable event.");
                    gap = true;
                }
            }
        }
        Ok(EventPage {
            events,
            cursor: Self::format_cursor(&positions),
            gap,
        })
    }

    async fn prune_closure_details(&self, before_ms: u64) -> Result<u64, StoreError> {
        let watermark = self.keys.details_pruned_before();
        let done: Option<u64> = self
            .command(redis::cmd("GET").arg(&watermark).clone())
            .await?;
        let done = done.unwrap_or(0);
        if before_ms <= done {
            return Ok(0);
        }
        let mut pruned = 0;
        for p in 0..PARTITIONS {
            let mut cursor = "0".to_owned();
            loop {
                let (next, marks): (String, HashMap<String, String>) = self
                    .command(
                        redis::cmd("HSCAN")
                            .arg(self.keys.marks(p))
                            .arg(&cursor)
                            .arg("COUNT")
                            .arg(1000)
                            .clone(),
                    )
                    .await?;
                for (sid, json) in marks {
                    let mark = mark_from_json(&sid, &json)?;
                    let old = mark
                        .last_closure
                        .is_some_and(|c| (done..before_ms).contains(&c.closed_at_ms));
                    if old && mark.status == SessionStatus::Closed {
                        let cleared: u64 = self
                            .command(
                                redis::cmd("HDEL")
                                    .arg(self.keys.session(p, &sid))
                                    .arg("detail")
                                    .clone(),
                            )
                            .await?;
                        pruned += cleared;
                    }
                }
                if next == "0" {
                    break;
                }
                cursor = next;
            }
        }
        let _: Value = self
            .command(redis::cmd("SET").arg(&watermark).arg(before_ms).clone())
            .await?;
        Ok(pruned)
    }

    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let reads = (0..PARTITIONS).map(|p| {
            let keys = [
                self.keys.marks(p),
                self.keys.credentials(p),
                self.keys.generations(p),
                self.keys.events(p),
            ];
            async move {
                let reply: Value = self.eval(&scripts().snapshot, &keys, &[]).await?;
                Ok::<_, StoreError>(reply)
            }
        });
        let mut positions = Vec::with_capacity(PARTITIONS);
        let mut sessions = Vec::new();
        let mut credentials = Vec::new();
        for reply in try_join_all(reads).await? {
            let parts = items(&reply)?;
            if parts.len() != 4 {
                return Err(StoreError::corrupt("unexpected snapshot reply"));
            }
            positions.push(StreamId::parse(&text(&parts[0])?).unwrap_or_default());
            for (sid, json) in pairs(&parts[1])? {
                sessions.push(mark_from_json(&sid, &json)?);
            }
            let blocks: HashMap<String, String> = pairs(&parts[2])?.into_iter().collect();
            for (fp, generation) in pairs(&parts[3])? {
                let block = blocks
                    .get(&fp)
                    .map(|json| serde_json::from_str::<CredentialBlock>(json))
                    .transpose()
                    .map_err(|e| StoreError::corrupt(format!("credential block: {e}")))?;
                credentials.push(CredentialMark {
                    fingerprint: Fingerprint::parse(&fp)
                        .map_err(|e| StoreError::corrupt(e.to_string()))?,
                    generation: number("generation", &generation)?,
                    block,
                });
            }
        }
        Ok(Snapshot {
            cursor: Self::format_cursor(&positions),
            sessions,
            credentials,
        })
    }

    async fn deployment_secret(&self) -> Result<Vec<u8>, StoreError> {
        let key = self.keys.secret();
        // Read first: a store that already holds the secret must serve it even when it
        // refuses writes (maxmemory with noeviction, a read-only replica).
        let existing: Value = self.command(redis::cmd("GET").arg(&key).clone()).await?;
        if existing != Value::Nil {
            let existing = text(&existing)?;
            return decode_hex(&existing)
                .ok_or_else(|| StoreError::corrupt(format!("{key} does not hold a hex secret")));
        }
        let candidate = hex(&generate_secret()?);
        // SET NX makes the first writer's secret the one every instance reads back.
        let _: Value = self
            .command(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&candidate)
                    .arg("NX")
                    .clone(),
            )
            .await?;
        let stored: Value = self.command(redis::cmd("GET").arg(&key).clone()).await?;
        let stored = text(&stored)?;
        decode_hex(&stored)
            .ok_or_else(|| StoreError::corrupt(format!("{key} does not hold a hex secret")))
    }
}

fn decode_hex(raw: &str) -> Option<Vec<u8>> {
    if raw.len() % 2 != 0 || raw.is_empty() {
        return None;
    }
    (0..raw.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(raw.get(i..i + 2)?, 16).ok())
        .collect()
}

impl SessionStore for RedisStore {
    fn get(&self, id: &SessionId) -> BoxFuture<'_, Result<Option<SessionRecord>, StoreError>> {
        let id = id.clone();
        Box::pin(async move { self.inner.get(&id).await })
    }

    fn open(
        &self,
        id: &SessionId,
        spec: OpenSpec,
    ) -> BoxFuture<'_, Result<SessionRecord, StoreError>> {
        let id = id.clone();
        Box::pin(async move { Ok(self.inner.open(&id, spec).await?.0) })
    }

    fn open_with_receipt(
        &self,
        id: &SessionId,
        spec: OpenSpec,
    ) -> BoxFuture<'_, Result<(SessionRecord, Receipt), StoreError>> {
        let id = id.clone();
        Box::pin(async move { self.inner.open(&id, spec).await })
    }

    fn close(
        &self,
        id: &SessionId,
        closure: Closure,
    ) -> BoxFuture<'_, Result<CloseOutcome, StoreError>> {
        let id = id.clone();
        Box::pin(async move { Ok(self.inner.close(&id, closure).await?.0) })
    }

    fn close_with_receipt(
        &self,
        id: &SessionId,
        closure: Closure,
    ) -> BoxFuture<'_, Result<(CloseOutcome, Receipt), StoreError>> {
        let id = id.clone();
        Box::pin(async move { self.inner.close(&id, closure).await })
    }

    fn reset_resume(
        &self,
        id: &SessionId,
        epoch: Option<u64>,
        rule: &str,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        let id = id.clone();
        let rule = rule.to_owned();
        Box::pin(async move { self.inner.reset_resume(&id, epoch, &rule).await })
    }

    fn add_wakeup(
        &self,
        id: &SessionId,
        due_ms: u64,
        payload: serde_json::Value,
    ) -> BoxFuture<'_, Result<AddWakeup, StoreError>> {
        let id = id.clone();
        Box::pin(async move { self.inner.add_wakeup(&id, due_ms, payload).await })
    }

    fn pending_wakeups(&self, id: &SessionId) -> BoxFuture<'_, Result<Vec<Wakeup>, StoreError>> {
        let id = id.clone();
        Box::pin(async move { self.inner.pending_wakeups(&id).await })
    }

    fn claim_due(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ClaimedWakeup>, StoreError>> {
        Box::pin(self.inner.claim_due(now_ms, limit, None))
    }

    fn lease_due(
        &self,
        now_ms: u64,
        limit: usize,
        lease_ms: u64,
    ) -> BoxFuture<'_, Result<Vec<ClaimedWakeup>, StoreError>> {
        Box::pin(self.inner.claim_due(now_ms, limit, Some(lease_ms)))
    }

    fn ack_wakeup(
        &self,
        id: &SessionId,
        wakeup_id: &str,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        let (id, wakeup_id) = (id.clone(), wakeup_id.to_owned());
        Box::pin(async move { self.inner.ack_wakeup(&id, &wakeup_id).await })
    }

    fn block_credential(&self, block: CredentialBlock) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move { Ok(self.inner.block_credential(block).await?.0) })
    }

    fn block_credential_with_receipt(
        &self,
        block: CredentialBlock,
    ) -> BoxFuture<'_, Result<(bool, Receipt), StoreError>> {
        Box::pin(self.inner.block_credential(block))
    }

    fn unblock_credential(
        &self,
        fingerprint: &Fingerprint,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        let fingerprint = fingerprint.clone();
        Box::pin(async move { Ok(self.inner.unblock_credential(&fingerprint).await?.0) })
    }

    fn unblock_credential_with_receipt(
        &self,
        fingerprint: &Fingerprint,
    ) -> BoxFuture<'_, Result<(bool, Receipt), StoreError>> {
        let fingerprint = fingerprint.clone();
        Box::pin(async move { self.inner.unblock_credential(&fingerprint).await })
    }

    fn blocked_credentials(&self) -> BoxFuture<'_, Result<Vec<CredentialBlock>, StoreError>> {
        Box::pin(self.inner.blocked_credentials())
    }

    fn events_after(
        &self,
        cursor: Option<&EventCursor>,
        limit: usize,
    ) -> BoxFuture<'_, Result<EventPage, StoreError>> {
        let cursor = cursor.cloned();
        Box::pin(async move { self.inner.events_after(cursor.as_ref(), limit).await })
    }

    fn snapshot(&self) -> BoxFuture<'_, Result<Snapshot, StoreError>> {
        Box::pin(self.inner.snapshot())
    }

    fn prune_closure_details(
        &self,
        closed_before_ms: u64,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.inner.prune_closure_details(closed_before_ms))
    }

    fn replicated(&self, receipts: &[Receipt]) -> BoxFuture<'_, Result<(), StoreError>> {
        let receipts = receipts.to_vec();
        Box::pin(async move { self.inner.replicated(&receipts).await })
    }

    fn replicas_to_ack(&self) -> Option<u32> {
        self.inner
            .options
            .replicas_to_ack
            .or_else(|| self.inner.required_acks.get().copied())
    }

    fn watch(&self) -> mpsc::Receiver<Notice> {
        watch::spawn(watch::WatchConfig {
            source: self.inner.subscribe_to.clone(),
            channel: self.inner.keys.channel(),
            connect_timeout: self.inner.options.connect_timeout,
            ping_interval: self.inner.options.ping_interval,
            ping_timeout: self.inner.options.op_timeout,
        })
    }

    fn deployment_secret(&self) -> BoxFuture<'_, Result<Vec<u8>, StoreError>> {
        Box::pin(self.inner.deployment_secret())
    }
}

/// Element `index` of a script reply, or a corrupt-data error when the reply is too short.
fn reply_part(parts: &[Value], index: usize) -> Result<&Value, StoreError> {
    parts
        .get(index)
        .ok_or_else(|| StoreError::corrupt("script reply is shorter than expected"))
}
