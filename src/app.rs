//! Assembles a running proxy from a [`Config`]: both listeners, the stack, shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::control::{Control, Readiness};
use crate::forward::Forward;
use crate::ingress::Ingress;
use crate::shutdown::{self, ShutdownTrigger};
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
}

/// A started proxy. Dropping it shuts it down without waiting.
pub struct App {
    agent_addr: SocketAddr,
    control_addr: SocketAddr,
    readiness: Readiness,
    trigger: ShutdownTrigger,
    servers: JoinSet<()>,
}

impl App {
    /// Binds both listeners and starts serving.
    pub async fn start(config: Config) -> Result<App, StartError> {
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
        let readiness = Readiness::default();
        let client = build_client(&config.upstream)?;
        let forward = Forward::new(
            client,
            config.upstream.connect_timeout,
            config.upstream.response_header_timeout,
        );
        let port = agent_addr.port();
        let own_authorities = vec![
            agent_addr.to_string(),
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
        ];
        let ingress = Ingress::new(
            forward,
            Arc::new(config.routes.clone()),
            own_authorities,
            signal.clone(),
        );

        let mut servers = JoinSet::new();
        servers.spawn(crate::server::serve(
            agent,
            ingress,
            signal.clone(),
            config.shutdown_grace,
        ));
        servers.spawn(crate::server::serve(
            control,
            Control::new(readiness.clone()),
            signal,
            config.shutdown_grace,
        ));
        readiness.set_serving(true);
        for route in config.routes.iter() {
            tracing::info!(route = %route.name, provider = %route.provider, upstream = %route.url(), "Route configured.");
        }
        tracing::info!(%agent_addr, %control_addr, "haltgate is serving.");
        Ok(App {
            agent_addr,
            control_addr,
            readiness,
            trigger,
            servers,
        })
    }

    pub fn agent_addr(&self) -> SocketAddr {
        self.agent_addr
    }

    pub fn control_addr(&self) -> SocketAddr {
        self.control_addr
    }

    /// Starts the graceful shutdown: listeners close at once, in-flight requests drain.
    pub fn shutdown(&self) {
        self.readiness.set_serving(false);
        self.trigger.trigger();
    }

    /// Completes once both listeners have drained.
    pub async fn wait(mut self) {
        while self.servers.join_next().await.is_some() {}
    }
}
