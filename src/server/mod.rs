//! Accept loop, connection hygiene and graceful drain for one listener.
//!
//! Both listeners (agent traffic and control API) run through [`serve`]. Each connection speaks
//! HTTP/1.1 or HTTP/2 (prior knowledge), detected from its first bytes. What one client can
//! hold is bounded by [`Limits`]:
//!
//! - at most `max_connections` open connections per listener; at the limit, accepting pauses
//!   (the kernel backlog holds the rest) instead of running out of descriptors;
//! - the first request must arrive within `header_read_timeout`, and a connection with no
//!   request in flight is closed after `idle_timeout` (HTTP/2: GOAWAY);
//! - a request body that sends no data for `body_read_timeout` fails ([`ReadTimeout`]);
//! - HTTP/2 peers are pinged every `h2_keep_alive_interval` and dropped when a ping goes
//!   unanswered for `h2_keep_alive_timeout`;
//! - an HTTP/2 connection whose client cancels more than `h2_max_resets_per_10s` requests
//!   before their answer within ten seconds gets GOAWAY. A cancelled request drops the whole
//!   request future, so its upstream request is cancelled too.

mod activity;
mod body_timeout;
mod connection;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tower_service::Service;

use crate::body::ProxyBody;
use crate::shutdown::ShutdownSignal;

pub use body_timeout::{BodyReadTimeout, ReadTimeout};

/// The request body every service behind [`serve`] gets.
pub type RequestBody = ReadTimeout<Incoming>;

/// What one listener lets its clients hold. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_connections: usize,
    pub h2_keep_alive_interval: Duration,
    pub h2_keep_alive_timeout: Duration,
    pub h2_max_resets_per_10s: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 4096,
            h2_keep_alive_interval: Duration::from_secs(30),
            h2_keep_alive_timeout: Duration::from_secs(20),
            h2_max_resets_per_10s: 100,
        }
    }
}

/// Serves `listener` until `shutdown` fires, then drains.
///
/// On shutdown the listener closes at once; HTTP/1 connections close after their current
/// response and HTTP/2 ones get GOAWAY; in-flight requests get up to `grace` to finish, after
/// which the remaining connections are dropped. Event streams are ended by the stack itself
/// (see [`crate::shutdown::EndOnShutdown`]), so they do not hold the drain.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    shutdown: ShutdownSignal,
    grace: Duration,
    limits: Limits,
) where
    S: Service<Request<RequestBody>, Response = Response<ProxyBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    // hyper's own HTTP/2 bounds stay in force: 200 concurrent streams, 20 pending reset
    // streams (rapid reset), 1024 locally reset streams, CONTINUATION and PING floods.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.h2_keep_alive_interval)
        .keep_alive_timeout(limits.h2_keep_alive_timeout);
    let limits = Arc::new(limits);

    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    let stop = shutdown.triggered();
    tokio::pin!(stop);
    let mut saturated = false;

    loop {
        // A permit first, then the connection: at the limit nothing more is accepted.
        let accept = async {
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            listener.accept().await.map(|accepted| (accepted, permit))
        };
        tokio::select! {
            biased;
            () = &mut stop => break,
            // Reap finished connection tasks so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = accept => {
                let ((stream, peer), permit) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Usually EMFILE; back off briefly instead of spinning.
                        tracing::warn!(%error, "Accept failed.");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let now_saturated = permits.available_permits() == 0;
                if now_saturated && !saturated {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "Connection limit reached; new connections wait."
                    );
                }
                saturated = now_saturated;
                let _ = stream.set_nodelay(true);
                connections.spawn(connection::run(
                    stream,
                    peer,
                    builder.clone(),
                    service.clone(),
                    limits.clone(),
                    shutdown.clone(),
                    permit,
                ));
            }
        }
    }

    drop(listener);
    // Every connection task sees the same signal and starts its own graceful close.
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = connections.len(),
            ?grace,
            "Drain deadline passed; dropping remaining connections."
        );
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}
