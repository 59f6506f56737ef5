//! The webhook sink: every event of the durable log, POSTed to the agent platform.
//!
//! The sink follows the store's event log (the same one `GET /v1/events` pages) from a
//! cursor kept in a file, one event per request, in log order. Each request carries
//! `x-haltgate-event-id`, `x-haltgate-timestamp` (unix seconds) and
//! `x-haltgate-signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`. A 2xx answer
//! delivers the event and moves the cursor file past it; anything else is retried with
//! exponential backoff, and later events wait. Delivery is at-least-once: a crash between
//! the answer and the cursor write repeats one event, so receivers dedupe by the event id.
//! The sink runs beside the proxy and never in the request path.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request};
use http_body_util::BodyExt;
use ring::hmac;
use serde::Deserialize;

use crate::body;
use crate::control::event_json;
use crate::headers;
use crate::session::{EventCursor, SessionStore};
use crate::upstream::UpstreamClient;

/// `[webhook]` as written in the configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// Where events are POSTed (`http://` or `https://`).
    pub url: String,
    /// File holding the signing secret (at least 16 bytes; trailing newline dropped).
    pub secret_file: PathBuf,
    /// Where the sink keeps its position in the log [default: haltgate-webhook.cursor].
    pub cursor_file: Option<PathBuf>,
}

pub const DEFAULT_CURSOR_FILE: &str = "haltgate-webhook.cursor";

/// A validated `[webhook]`.
#[derive(Clone)]
pub struct WebhookConfig {
    pub url: http::Uri,
    key: hmac::Key,
    pub cursor_file: PathBuf,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("cursor_file", &self.cursor_file)
            .finish_non_exhaustive()
    }
}

impl WebhookConfig {
    /// Checks `spec`, adding every problem to `errors`.
    pub fn resolve(spec: WebhookSpec, errors: &mut Vec<String>) -> Option<Self> {
        let url = match spec.url.parse::<http::Uri>() {
            Ok(url)
                if matches!(url.scheme_str(), Some("http" | "https")) && url.host().is_some() =>
            {
                Some(url)
            }
            _ => {
                errors.push(format!("webhook.url: {:?} is not an http(s) URL", spec.url));
                None
            }
        };
        let secret = match std::fs::read_to_string(&spec.secret_file) {
            Ok(text) => {
                let secret = text.trim_end_matches(['\n', '\r']).to_owned();
                if secret.len() < 16 {
                    errors.push("webhook.secret_file: the secret must be at least 16 bytes".into());
                    None
                } else {
                    Some(secret)
                }
            }
            Err(e) => {
                errors.push(format!(
                    "webhook.secret_file: cannot read {}: {e}",
                    spec.secret_file.display()
                ));
                None
            }
        };
        Some(WebhookConfig {
            url: url?,
            key: hmac::Key::new(hmac::HMAC_SHA256, secret?.as_bytes()),
            cursor_file: spec
                .cursor_file
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CURSOR_FILE)),
        })
    }

    /// `v1=<hex>` over `"<timestamp>.<body>"`.
    pub fn signature(&self, timestamp: u64, body: &[u8]) -> String {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(timestamp.to_string().as_bytes());
        context.update(b".");
        context.update(body);
        let tag = context.sign();
        format!("v1={}", crate::session::hex(tag.as_ref()))
    }
}

const FIRST_RETRY: Duration = Duration::from_millis(200);
const LAST_RETRY: Duration = Duration::from_secs(30);
const IDLE_POLL: Duration = Duration::from_millis(500);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Delivers events until the task is aborted.
pub async fn run(config: WebhookConfig, store: Arc<dyn SessionStore>, client: UpstreamClient) {
    let mut cursor = match read_cursor(&config.cursor_file).await {
        Ok(cursor) => cursor,
        Err(error) => {
            tracing::error!(path = %config.cursor_file.display(), %error, "Webhook cursor unreadable; the sink does not run.");
            return;
        }
    };
    let mut delay = FIRST_RETRY;
    loop {
        let page = match store.events_after(cursor.as_ref(), 1).await {
            Ok(page) => page,
            Err(error) => {
                tracing::warn!(%error, "Webhook sink cannot read the event log; retrying.");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(LAST_RETRY);
                continue;
            }
        };
        if page.gap {
            tracing::error!("Events were trimmed from the log before the webhook delivered them.");
        }
        let Some(event) = page.events.first() else {
            tokio::time::sleep(IDLE_POLL).await;
            continue;
        };
        let body = event_json(event).to_string();
        while let Err(problem) = deliver(&config, &client, &event.id, &body).await {
            tracing::warn!(event = %event.id, %problem, retry_in = ?delay, "Webhook delivery failed.");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(LAST_RETRY);
        }
        delay = FIRST_RETRY;
        if let Err(error) = write_cursor(&config.cursor_file, &page.cursor).await {
            tracing::error!(%error, "Webhook cursor not saved; the event may be delivered again.");
        }
        cursor = Some(page.cursor);
    }
}

async fn deliver(
    config: &WebhookConfig,
    client: &UpstreamClient,
    event_id: &str,
    body: &str,
) -> Result<(), String> {
    let timestamp = crate::session::unix_ms_now() / 1000;
    let request = Request::builder()
        .method(Method::POST)
        .uri(config.url.clone())
        .header("content-type", "application/json")
        .header(headers::EVENT_ID, event_id)
        .header(headers::TIMESTAMP, timestamp.to_string())
        .header(
            headers::SIGNATURE,
            config.signature(timestamp, body.as_bytes()),
        )
        .body(body::full(body.to_owned()))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(REQUEST_TIMEOUT, client.request(request))
        .await
        .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    let status = response.status();
    // Read the answer so the connection goes back to the pool.
    let _ = response.into_body().collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("answered {status}"))
    }
}

async fn read_cursor(path: &Path) -> std::io::Result<Option<EventCursor>> {
    match tokio::fs::read_to_string(path).await {
        Ok(text) if text.trim().is_empty() => Ok(None),
        Ok(text) => Ok(Some(EventCursor::from_token(text.trim()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replaces the cursor file whole (written aside, synced, renamed), so a crash leaves the old
/// cursor or the new one.
async fn write_cursor(path: &Path, cursor: &EventCursor) -> std::io::Result<()> {
    let path = path.to_owned();
    let text = cursor.as_str().to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let aside = path.with_extension("tmp");
        let mut file = std::fs::File::create(&aside)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&aside, &path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })
    .await
    .map_err(std::io::Error::other)?
}
