//! The live feed: a pub/sub subscriber that turns published events into [`Notice`]s.
//!
//! Pub/sub is at-most-once, so every (re)subscription starts with [`Notice::Resync`]: the
//! reader catches up from the durable streams and nothing published while the link was down
//! is lost for good. On a cluster, scripts publish with plain PUBLISH, which Redis forwards
//! to every node, so subscribing to any one node sees every partition; the subscriber moves
//! to the next seed node when one fails. With Sentinel it subscribes at the master the
//! sentinels name at each (re)connect, so it follows a failover.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::sentinel::SentinelMaster;
use super::wire::event_from_fields;
use crate::session::event::Notice;

/// Where to subscribe.
#[derive(Clone)]
pub(crate) enum Source {
    /// These nodes in turn.
    Nodes(Vec<String>),
    /// The master the sentinels name.
    Sentinel(Arc<SentinelMaster>),
}

impl Source {
    async fn client(&self, attempt: usize) -> Result<redis::Client, String> {
        match self {
            Source::Nodes(nodes) => redis::Client::open(nodes[attempt % nodes.len()].as_str())
                .map_err(|e| e.to_string()),
            Source::Sentinel(sentinel) => sentinel.locate().await.map_err(|e| e.to_string()),
        }
    }
}

pub(crate) struct WatchConfig {
    pub source: Source,
    pub channel: String,
    pub connect_timeout: Duration,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
}

#[derive(Deserialize)]
struct Published {
    p: String,
    id: String,
    f: HashMap<String, String>,
}

const MAX_BACKOFF: Duration = Duration::from_secs(2);

pub(crate) fn spawn(config: WatchConfig) -> mpsc::Receiver<Notice> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(run(config, tx));
    rx
}

async fn run(config: WatchConfig, tx: mpsc::Sender<Notice>) {
    let mut node = 0usize;
    let mut backoff = Duration::from_millis(50);
    loop {
        if tx.is_closed() {
            return;
        }
        let client = match config.source.client(node).await {
            Ok(client) => client,
            Err(error) => {
                tracing::debug!(%error, "Event subscriber found no node to subscribe at.");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = tx.closed() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let subscribed = tokio::time::timeout(config.connect_timeout, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&config.channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        let pubsub = match subscribed {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(err)) => {
                tracing::debug!(node, error = %err, "Event subscriber could not connect.");
                node += 1;
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = tx.closed() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(_) => {
                tracing::debug!(node, "Event subscriber timed out connecting.");
                node += 1;
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        if tx.send(Notice::Resync).await.is_err() {
            return;
        }
        let (mut sink, mut stream) = pubsub.split();
        let mut ping = tokio::time::interval(config.ping_interval);
        ping.tick().await;
        loop {
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else {
                        tracing::info!(node, "Event subscriber lost its connection; resubscribing.");
                        break;
                    };
                    let notice = match decode(message.get_payload_bytes()) {
                        Some(notice) => notice,
                        // An undecodable message means something was missed; the log has it.
                        None => Notice::Resync,
                    };
                    if tx.send(notice).await.is_err() {
                        return;
                    }
                }
                _ = ping.tick() => {
                    // A half-open connection delivers nothing and reports nothing; a ping
                    // without an answer is how it shows.
                    let answered = tokio::time::timeout(config.ping_timeout, sink.ping::<redis::Value>()).await;
                    if !matches!(answered, Ok(Ok(_))) {
                        tracing::info!(node, "Event subscriber ping failed; resubscribing.");
                        break;
                    }
                }
                _ = tx.closed() => return,
            }
        }
        node += 1;
    }
}

fn decode(payload: &[u8]) -> Option<Notice> {
    let published: Published = match serde_json::from_slice(payload) {
        Ok(published) => published,
        Err(err) => {
            tracing::warn!(error = %err, "Ignored an undecodable event notification.");
            return None;
        }
    };
    match event_from_fields(format!("{}/{}", published.p, published.id), published.f) {
        Ok(event) => Some(Notice::Event(event)),
        Err(err) => {
            tracing::warn!(error = %err, "Ignored an undecodable event notification.");
            None
        }
    }
}
