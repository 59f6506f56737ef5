//! `haltgate classify`: decide recorded exchanges given as JSON lines.
//!
//! Input, one object per line (extra fields ignored, blank lines skipped):
//! `{"id": <any>, "provider": "slack" (optional, else from the URL host), "request": {"method",
//! "url", "headers", "body"}, "response": {"status", "headers", "body"}, "context": {..}}`.
//! Output, one line per input line in order: `{"id": <echoed>, "class": "...", "rule": <id|null>}`,
//! or `{"line": N, "error": "...", "id": <if readable>}` for a line that cannot be decided.

use std::io::{self, BufRead, Write};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::rules::exchange::resolve_provider;
use crate::rules::{
    Class, PreparedExchange, RecordedRequest, RecordedResponse, RuleSet, Scope, Verdict,
};

/// One recorded exchange; `POST /v1/sessions/{id}/observe` reads the same shape.
#[derive(Deserialize)]
pub struct InputLine {
    #[serde(default)]
    pub provider: Option<String>,
    pub request: RecordedRequest,
    pub response: RecordedResponse,
    /// The session scope; `None` decides as a session without one.
    #[serde(default)]
    pub context: Option<Value>,
}

/// Reads the exchange of `line` and names its provider (given, or by the URL's host).
pub fn prepare(
    rules: &RuleSet,
    hosts: &[(String, String)],
    line: &InputLine,
) -> Result<(PreparedExchange, String), String> {
    let prepared = PreparedExchange::prepare(&line.request, &line.response)?;
    let provider = resolve_provider(line.provider.as_deref(), prepared.host.as_deref(), hosts)
        .ok_or_else(|| match &prepared.host {
            Some(host) => format!("no provider given and none configured for host `{host}`"),
            None => "no provider given and the URL has no host".to_owned(),
        })?
        .to_owned();
    if !rules.providers().any(|known| known == provider) {
        return Err(format!("unknown provider `{provider}`"));
    }
    Ok((prepared, provider))
}

#[derive(Serialize)]
struct DecidedLine<'a> {
    id: &'a Value,
    class: Class,
    rule: Option<&'a str>,
}

#[derive(Serialize)]
struct ErrorLine<'a> {
    line: usize,
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Value>,
}

/// Decides every input line with `Scope::Known(context)`. True when no line was in error.
pub fn run(
    rules: &RuleSet,
    hosts: &[(String, String)],
    max_body_bytes: usize,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> io::Result<bool> {
    let mut all_ok = true;
    let mut buffer = Vec::new();
    let mut line_number = 0;
    loop {
        buffer.clear();
        if input.read_until(b'\n', &mut buffer)? == 0 {
            break;
        }
        line_number += 1;
        if buffer.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed: Result<Value, String> =
            serde_json::from_slice(&buffer).map_err(|error| format!("invalid JSON: {error}"));
        let id = parsed
            .as_ref()
            .ok()
            .and_then(|value| value.get("id"))
            .cloned();
        match parsed.and_then(|value| decide(rules, hosts, max_body_bytes, value)) {
            Ok((class, rule)) => {
                let null = Value::Null;
                let line = DecidedLine {
                    id: id.as_ref().unwrap_or(&null),
                    class,
                    rule: rule.as_deref(),
                };
                serde_json::to_writer(&mut *out, &line)?;
            }
            Err(error) => {
                all_ok = false;
                let line = ErrorLine {
                    line: line_number,
                    error: &error,
                    id: id.as_ref(),
                };
                serde_json::to_writer(&mut *out, &line)?;
            }
        }
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(all_ok)
}

fn decide(
    rules: &RuleSet,
    hosts: &[(String, String)],
    max_body_bytes: usize,
    value: Value,
) -> Result<(Class, Option<String>), String> {
    if !value.is_object() {
        return Err("a line must be a JSON object".into());
    }
    let line: InputLine = serde_json::from_value(value).map_err(|error| error.to_string())?;
    let (prepared, provider) = prepare(rules, hosts, &line)?;
    let exchange = prepared.exchange(
        &provider,
        Scope::Known(line.context.as_ref()),
        max_body_bytes,
    );
    match rules.classify(&exchange) {
        Verdict::Decided(decision) => {
            Ok((decision.class, decision.rule.map(|rule| rule.to_string())))
        }
        Verdict::NeedsScope => {
            Err("the engine asked for the session scope although it was given".into())
        }
    }
}
