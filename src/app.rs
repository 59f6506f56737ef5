//! Assembles a running proxy from a [`Config`]: both listeners, the stack, shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tower_layer::Layer;

use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::config::Config;
use crate::control::{Control, Readiness};
use crate::forward::Forward;
use crate::halt::{HaltLayer, HaltStats, SessionHooks};
use crate::ingress::Ingress;
use crate::metrics::{Metrics, TrafficStats};
use crate::route::RouteProvider;
use crate::rule_reload::{ReloadSettings, RuleReloader, StartRefused};
use crate::rules::RuleSet;
use crate::session::{
    open_store, unix_ms_now, ClosedSet, FeedConfig, LocalCopy, Outbox, RelayConfig, SessionStore,
    StoreError, StoreLocator,
};
use crate::session_gate::SessionGate;
use crate::shutdown::{self, ShutdownTrigger};
use crate::storm::StormBreaker;
use crate::upstream::{build_client, UpstreamSetupError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Upstream(#[from] UpstreamSetupError),
    #[error("session store: {0}")]
    Store(StoreError),
    #[error(
        "rules in {dir} cannot be loaded and no last good copy stands in for them:\n{refused}"
    )]
    Rules { dir: String, refused: StartRefused },
    #[error("--strict: rules and routes do not match:\n  {}", .0.join("\n  "))]
    Strict(Vec<String>),
}

/// How often the local copy is brought up to date with what the closed set learned.
const LOCAL_COPY_FLUSH: Duration = Duration::from_millis(200);

async fn blocking<T: Send + 'static>(
    op: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StartError> {
    tokio::task::spawn_blocking(op)
        .await
        .map_err(|e| StartError::Store(StoreError::Failed(format!("loading local state: {e}"))))?
        .map_err(StartError::Store)
}

/// With a local copy that once caught up with the store, a start while the store is down
/// serves from the copy after `wait`: every closure and block it had seen still halts, and
/// the feed catches up when the store returns.
async fn serve_from_copy_unless_store_answers(closed: Arc<ClosedSet>, wait: Duration) {
    tokio::time::sleep(wait).await;
    if !closed.is_ready() {
        tracing::warn!(
            waited = ?wait,
            "The session store has not answered; serving from the local copy until it does."
        );
        closed.mark_ready();
    }
}

/// Clears the evidence excerpts of closures older than `retention`, shortly after start and
/// then every tenth of the retention (at most hourly). The closures themselves stay.
async fn prune_closure_details(store: Arc<dyn SessionStore>, retention: Duration) {
    let every = (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_secs(10).min(every)).await;
    loop {
        let cutoff = unix_ms_now().saturating_sub(retention.as_millis() as u64);
        match store.prune_closure_details(cutoff).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "Closure details past their retention cleared."),
            Err(error) => {
                tracing::warn!(%error, "Closure details could not be pruned; retrying later.")
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// A started proxy. Dropping it shuts it down without waiting.
pub struct App {
    agent_addr: SocketAddr,
    control_addr: SocketAddr,
    readiness: Readiness,
    rules: Arc<ArcSwap<RuleSet>>,
    reloader: Arc<RuleReloader>,
    stats: Arc<HaltStats>,
    gate: Arc<SessionGate>,
    trigger: ShutdownTrigger,
    servers: JoinSet<()>,
    /// Closed-set feed, outbox relay, secret loading: stopped with the app, so the store
    /// (and a redb file lock) is released when `wait` returns.
    tasks: Vec<JoinHandle<()>>,
}

impl App {
    /// Opens the session store, binds both listeners and starts serving.
    pub async fn start(config: Config) -> Result<App, StartError> {
        let reloader = RuleReloader::start(ReloadSettings {
            dir: config.rules_dir.clone(),
            last_good_dir: config.rules_reload.last_good_dir.clone(),
            max_body_bytes: config.max_body_bytes,
            watch: config.rules_reload.watch,
            poll_interval: config.rules_reload.poll_interval,
            routes: config
                .routes
                .iter()
                .map(|route| (route.name.to_string(), route.provider.to_string()))
                .collect(),
        })
        .await
        .map_err(|refused| StartError::Rules {
            dir: config.rules_dir.display().to_string(),
            refused,
        })?;
        let rules = reloader.rules().clone();
        let warnings = reloader.warnings();
        for warning in &warnings {
            tracing::warn!(warning = %warning, "Rules and routes do not match.");
        }
        if config.strict && !warnings.is_empty() {
            return Err(StartError::Strict(warnings));
        }
        tracing::info!(
            rules = rules.load().rule_count(),
            dir = %config.rules_dir.display(),
            version = %reloader.last_reload().version,
            "Rules loaded."
        );

        let store = open_store(&config.store).await.map_err(StartError::Store)?;
        let shared_store = matches!(
            StoreLocator::parse(&config.store),
            Ok(StoreLocator::Redis { .. })
        );
        let mut tasks = crate::rule_reload::spawn_triggers(&reloader);
        let (closed, outbox, local, local_secret) = if shared_store {
            // A shared store may be unreachable at start: what this instance learned before
            // (its local copy and its own outbox) is loaded first, so it never forwards a
            // session or credential it knew was closed or blocked.
            let closed = Arc::new(ClosedSet::with_journal());
            let (outbox_path, copy_path) = (config.outbox.clone(), config.local_copy.clone());
            let loading = closed.clone();
            let (outbox, local, loaded) = blocking(move || {
                let outbox = Outbox::open(&outbox_path)?;
                let local = LocalCopy::open(&copy_path)?;
                let loaded = local.load_into(&loading)?;
                for entry in outbox.pending_blocking()? {
                    let epoch = loading.epoch_for(&entry.session, entry.closure.epoch);
                    loading.insert_closure(&entry.session, epoch, &entry.closure);
                }
                for entry in outbox.pending_blocks_blocking()? {
                    loading.insert_block(&entry.block);
                }
                loading.start_journal();
                Ok((outbox, local, loaded))
            })
            .await?;
            tracing::info!(
                sessions = loaded.sessions,
                credentials = loaded.credentials,
                path = %config.local_copy.display(),
                "Local copy loaded."
            );
            if let Some(cursor) = loaded.cursor.clone() {
                closed.resume_from(cursor).await;
            }
            tasks.push(closed.spawn_feed(store.clone(), FeedConfig::default()));
            tasks.push(outbox.spawn_relay(store.clone(), RelayConfig::default()));
            tasks.push(local.spawn_flusher(&closed, LOCAL_COPY_FLUSH));
            if loaded.cursor.is_some() {
                tasks.push(tokio::spawn(serve_from_copy_unless_store_answers(
                    closed.clone(),
                    config.store_startup_wait,
                )));
            }
            (closed, Some(outbox), Some(local), loaded.secret)
        } else {
            let closed = Arc::new(ClosedSet::new());
            tasks.push(closed.spawn_feed(store.clone(), FeedConfig::default()));
            (closed, None, None, None)
        };
        let storm = Arc::new(StormBreaker::new(config.storm));
        let gate = Arc::new(
            SessionGate::new(store, closed, outbox)
                .with_local_copy(local)
                .with_storm_breaker(storm.clone()),
        );
        tasks.push(tokio::spawn(gate.clone().load_key(local_secret)));
        if let Some(retention) = config.closure_detail_retention {
            tasks.push(tokio::spawn(prune_closure_details(
                gate.store().clone(),
                retention,
            )));
        }
        if let Some(webhook) = config.webhook.clone() {
            let client = build_client(&config.upstream)?;
            tasks.push(tokio::spawn(crate::webhook::run(
                webhook,
                gate.store().clone(),
                client,
            )));
        }
        let hooks: Arc<dyn SessionHooks> = Arc::new(gate.clone());
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })
        };
        let agent = bind(config.listen).await?;
        let control = bind(config.control_listen).await?;
        let agent_addr = agent.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let control_addr = control.local_addr().map_err(|source| StartError::Bind {
            addr: config.control_listen,
            source,
        })?;

        let (trigger, signal) = shutdown::channel();
        let readiness = Readiness::new(gate.clone());
        let client = build_client(&config.upstream)?;
        let traffic = Arc::new(TrafficStats::default());
        let forward = Forward::new(
            client,
            config.upstream.connect_timeout,
            config.upstream.response_header_timeout,
            traffic.clone(),
        );
        let port = agent_addr.port();
        let own_authorities = vec![
            agent_addr.to_string(),
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
        ];
        let halt = HaltLayer::new(rules.clone(), hooks, RouteProvider)
            .max_body_bytes(config.max_body_bytes);
        let stats = halt.stats();
        let ingress = Ingress::new(
            halt.layer(forward),
            Arc::new(config.routes.clone()),
            own_authorities,
            signal.clone(),
            traffic.clone(),
        );
        let mut metrics = Metrics::new(&traffic, &stats, gate.stats())
            .with(|registry| reloader.register(registry));
        metrics.register_storm(&storm);
        let metrics = Arc::new(metrics);

        let mut servers = JoinSet::new();
        servers.spawn(crate::server::serve(
            agent,
            ingress,
            signal.clone(),
            config.shutdown_grace,
            config.limits.clone(),
        ));
        servers.spawn(crate::server::serve(
            control,
            Control::new(
                readiness.clone(),
                gate.clone(),
                stats.clone(),
                config.control.clone(),
            )
            .with_metrics(metrics)
            .with_rules(
                rules.clone(),
                config.routes.host_providers(),
                config.max_body_bytes,
            )
            .with_reloader(reloader.clone())
            .with_storm_breaker(storm),
            signal,
            config.shutdown_grace,
            config.control_limits.clone(),
        ));
        readiness.set_serving(true);
        for route in config.routes.iter() {
            tracing::info!(route = %route.name, provider = %route.provider, upstream = %route.url(), "Route configured.");
        }
        tracing::info!(
            %agent_addr,
            %control_addr,
            control_token = config.control.requires_token(),
            "haltgate is serving."
        );
        Ok(App {
            agent_addr,
            control_addr,
            readiness,
            rules,
            reloader,
            stats,
            gate,
            trigger,
            servers,
            tasks,
        })
    }

    pub fn agent_addr(&self) -> SocketAddr {
        self.agent_addr
    }

    pub fn control_addr(&self) -> SocketAddr {
        self.control_addr
    }

    /// The rules in force; storing a new set swaps it for every later response.
    pub fn rules(&self) -> &Arc<ArcSwap<RuleSet>> {
        &self.rules
    }

    /// Reloads of the rule files (watch, poll, SIGHUP and the control API use it too).
    pub fn reloader(&self) -> &Arc<RuleReloader> {
        &self.reloader
    }

    pub fn stats(&self) -> &Arc<HaltStats> {
        &self.stats
    }

    /// Starts the graceful shutdown: listeners close at once, in-flight requests drain.
    pub fn shutdown(&self) {
        self.readiness.set_serving(false);
        self.trigger.trigger();
    }

    /// The session state this proxy acts through (store, closed set, outbox).
    pub fn gate(&self) -> &Arc<SessionGate> {
        &self.gate
    }

    /// Whether `/readyz` would answer 200.
    pub fn is_ready(&self) -> bool {
        self.readiness.is_ready()
    }

    /// Completes once both listeners have drained; then stops the background tasks.
    pub async fn wait(mut self) {
        while self.servers.join_next().await.is_some() {}
        // What the closed set learned since the flusher's last tick reaches the local copy.
        if let Some(local) = self.gate.local_copy() {
            local.flush(self.gate.closed()).await;
        }
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.trigger.trigger();
        for task in &self.tasks {
            task.abort();
        }
    }
}
