//! The operator commands (`haltgate sessions|credentials|events`): a client of the control
//! API. Answers print for people by default, or as the API's JSON with `--json`.

use std::time::Duration;

use http::{Method, Request, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use crate::body::{self, ProxyBody};

/// Talks to one control listener.
pub struct ControlClient {
    base: String,
    token: Option<String>,
    client: Client<HttpConnector, ProxyBody>,
}

/// A failed call: the API's error message, or why there was no answer.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("the control API answered {status}: {message}")]
    Refused { status: StatusCode, message: String },
    #[error("cannot reach the control API at {base}: {detail}")]
    Unreachable { base: String, detail: String },
    #[error("{0}")]
    Usage(String),
}

impl ControlClient {
    /// `base` is the control listener's URL (`http://127.0.0.1:9090`); `token` goes in
    /// `Authorization: Bearer`.
    pub fn new(base: &str, token: Option<String>) -> Result<Self, ControlError> {
        let base = base.trim_end_matches('/').to_owned();
        let uri: Uri = base
            .parse()
            .map_err(|e| ControlError::Usage(format!("--control {base:?}: {e}")))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(ControlError::Usage(format!(
                "--control {base:?} must be http://HOST:PORT"
            )));
        }
        Ok(Self {
            base,
            token: token.filter(|t| !t.is_empty()),
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ControlError> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(match body {
                Some(body) => body::full(body.to_string()),
                None => body::empty(),
            })
            .map_err(|e| ControlError::Usage(e.to_string()))?;
        let unreachable = |detail: String| ControlError::Unreachable {
            base: self.base.clone(),
            detail,
        };
        let response = tokio::time::timeout(Duration::from_secs(30), self.client.request(request))
            .await
            .map_err(|_| unreachable("no answer within 30 s".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            let message = value["error"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ControlError::Refused { status, message });
        }
        Ok(value)
    }
}

/// What an operator asked for.
pub enum Operation {
    SessionGet(String),
    SessionClose { id: String, reason: String },
    SessionReopen(String),
    SessionWakeups(String),
    CredentialsList,
    CredentialUnblock(String),
    StormStatus,
    StormReset(String),
    EventsTail { after: Option<String>, follow: bool },
}

/// Runs `operation`, printing its answer to `out`.
pub async fn run(
    client: &ControlClient,
    operation: Operation,
    as_json: bool,
    out: &mut dyn std::io::Write,
) -> Result<(), ControlError> {
    let print = |out: &mut dyn std::io::Write, value: &Value, human: String| {
        let text = if as_json { value.to_string() } else { human };
        let _ = writeln!(out, "{text}");
    };
    match operation {
        Operation::SessionGet(id) => {
            let record = client
                .call(Method::GET, &format!("/v1/sessions/{}", escape(&id)), None)
                .await?;
            print(out, &record, session_text(&record));
        }
        Operation::SessionClose { id, reason } => {
            let answer = client
                .call(
                    Method::POST,
                    &format!("/v1/sessions/{}/close", escape(&id)),
                    Some(json!({ "reason": reason })),
                )
                .await?;
            let human = match answer["outcome"].as_str() {
                Some("closed") => format!(
                    "closed {id} ({} wakeups cancelled)",
                    answer["cancelled_wakeups"]
                ),
                Some("already_closed") => format!("{id} was already closed"),
                Some("queued") => format!("{id} closed here; the store takes it when it is back"),
                _ => answer.to_string(),
            };
            print(out, &answer, human);
        }
        Operation::SessionReopen(id) => {
            let record = client
                .call(
                    Method::PUT,
                    &format!("/v1/sessions/{}", escape(&id)),
                    Some(json!({})),
                )
                .await?;
            print(out, &record, session_text(&record));
        }
        Operation::SessionWakeups(id) => {
            let answer = client
                .call(
                    Method::GET,
                    &format!("/v1/sessions/{}/wakeups", escape(&id)),
                    None,
                )
                .await?;
            let wakeups = answer["wakeups"].as_array().cloned().unwrap_or_default();
            let mut human = format!("{} pending wakeups of {id}", wakeups.len());
            for w in &wakeups {
                human += &format!(
                    "\n  {}  due_ms={}  payload={}",
                    w["id"].as_str().unwrap_or("?"),
                    w["due_ms"],
                    w["payload"]
                );
            }
            print(out, &answer, human);
        }
        Operation::CredentialsList => {
            let answer = client.call(Method::GET, "/v1/credentials", None).await?;
            let blocks = answer["credentials"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut human = format!("{} blocked credentials", blocks.len());
            for b in &blocks {
                human += &format!(
                    "\n  {}  {}  rule={}  blocked_at={}",
                    b["fingerprint"].as_str().unwrap_or("?"),
                    b["class"].as_str().unwrap_or("?"),
                    b["rule"].as_str().unwrap_or("?"),
                    b["blocked_at"]
                );
            }
            print(out, &answer, human);
        }
        Operation::CredentialUnblock(fingerprint) => {
            let answer = client
                .call(
                    Method::DELETE,
                    &format!("/v1/credentials/{}", escape(&fingerprint)),
                    None,
                )
                .await?;
            print(out, &answer, format!("unblocked {fingerprint}"));
        }
        Operation::StormStatus => {
            let stats = client.call(Method::GET, "/v1/stats", None).await?;
            let storm = stats["storm"].clone();
            let providers = storm["providers"].as_object().cloned().unwrap_or_default();
            let mut human = format!(
                "storm breaker: {} closures a minute per provider, cool-down {} ms",
                storm["max_closures_per_minute"], storm["cool_down_ms"]
            );
            for (provider, state) in &providers {
                let open = if state["open"] == true {
                    "OPEN"
                } else {
                    "closed"
                };
                human += &format!(
                    "\n  {provider}  {open}  closures_last_minute={}  trips={}  shadowed={}",
                    state["closures_last_minute"], state["trips"], state["shadowed"]
                );
            }
            print(out, &storm, human);
        }
        Operation::StormReset(provider) => {
            let answer = client
                .call(
                    Method::POST,
                    &format!("/v1/storm/{}/reset", escape(&provider)),
                    Some(json!({})),
                )
                .await?;
            let human = if answer["was_open"] == true {
                format!("storm breaker of {provider} closed")
            } else {
                format!("storm breaker of {provider} was not open")
            };
            print(out, &answer, human);
        }
        Operation::EventsTail { after, follow } => {
            let mut cursor = after.unwrap_or_default();
            loop {
                let page = client
                    .call(
                        Method::GET,
                        &format!("/v1/events?after={}&limit=100", escape(&cursor)),
                        None,
                    )
                    .await?;
                let events = page["events"].as_array().cloned().unwrap_or_default();
                if page["gap"] == true {
                    let _ = writeln!(
                        out,
                        "{}",
                        if as_json {
                            json!({"gap": true}).to_string()
                        } else {
                            "(events were trimmed before they were read)".into()
                        }
                    );
                }
                for event in &events {
                    print(out, event, event_text(event));
                }
                let _ = out.flush();
                cursor = page["cursor"].as_str().unwrap_or_default().to_owned();
                if events.len() < 100 {
                    if !follow {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
    Ok(())
}

fn session_text(record: &Value) -> String {
    let mut text = format!(
        "{}  {}  epoch {}",
        record["id"].as_str().unwrap_or("?"),
        record["status"].as_str().unwrap_or("?"),
        record["epoch"]
    );
    if record["status"] == "closed" {
        text += &format!(
            "\n  class {}  rule {}\n  reason {}",
            record["class"].as_str().unwrap_or("-"),
            record["rule"].as_str().unwrap_or("-"),
            record["reason"].as_str().unwrap_or("-")
        );
    }
    if let Some(resume) = record["resume"].as_str() {
        text += &format!("\n  resume {resume}");
    }
    text
}

fn event_text(event: &Value) -> String {
    let mut text = format!(
        "{}  {}",
        event["at_ms"],
        event["kind"].as_str().unwrap_or("?")
    );
    for field in ["session", "fingerprint", "epoch", "class", "rule", "reason"] {
        match &event[field] {
            Value::Null => {}
            Value::String(s) => text += &format!("  {field}={s}"),
            other => text += &format!("  {field}={other}"),
        }
    }
    text
}

/// Escapes a path segment or query value: everything but unreserved characters.
fn escape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for byte in raw.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
