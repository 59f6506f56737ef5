//! Accept loop and graceful drain for one listener.
//!
//! Both listeners (agent traffic and control API) run through [`serve`]. Each connection speaks
//! HTTP/1.1 or HTTP/2 (prior knowledge), detected from its first bytes.

use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower_service::Service;

use crate::body::ProxyBody;
use crate::shutdown::ShutdownSignal;

/// Serves `listener` until `shutdown` fires, then drains.
///
/// On shutdown the listener closes at once; HTTP/1 connections close after their current
/// response and HTTP/2 ones get GOAWAY; in-flight requests get up to `grace` to finish, after
/// which the remaining connections are dropped. Event streams are ended by the stack itself
/// (see [`crate::shutdown::EndOnShutdown`]), so they do not hold the drain.
pub async fn serve<S>(listener: TcpListener, service: S, shutdown: ShutdownSignal, grace: Duration)
where
    S: Service<Request<Incoming>, Response = Response<ProxyBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder.http2().timer(TokioTimer::new());

    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let stop = shutdown.triggered();
    tokio::pin!(stop);

    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Usually EMFILE; back off briefly instead of spinning.
                        tracing::warn!(%error, "Accept failed.");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let connection = builder
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service.clone()))
                    .into_owned();
                let watched = graceful.watch(connection);
                connections.spawn(async move {
                    if let Err(error) = watched.await {
                        tracing::debug!(%peer, %error, "Connection ended with an error.");
                    }
                });
            }
            // Reap finished connection tasks so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut stop => break,
        }
    }

    drop(listener);
    let drained = tokio::time::timeout(grace, graceful.shutdown()).await;
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
