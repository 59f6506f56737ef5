//! `POST /v1/sessions/{id}/observe`: an exchange the agent platform saw without haltgate in
//! the path (a tool that calls its backend directly), decided by the same rules and acted on
//! like a response through the proxy: close and cancel wakeups, block the credential, or
//! reset the resume id.
//!
//! The body is one line of `haltgate classify` input (extra fields ignored, so a recorded
//! line can be sent as it is) plus an optional `epoch`. Without a `context`, the session's
//! stored scope is used.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::classify::{self, InputLine};
use crate::halt::{excerpt, HaltStats, Matched, Outcome, SessionHeader, SessionHooks};
use crate::rules::{Class, RuleSet, Scope, Verdict};
use crate::session::{unix_ms_now, Presented, SessionId, StoreError};
use crate::session_gate::SessionGate;

#[derive(Deserialize)]
pub struct ObserveBody {
    #[serde(flatten)]
    pub line: InputLine,
    /// The generation the exchange belongs to; `None` = the current one.
    #[serde(default)]
    pub epoch: Option<u64>,
}

/// What was decided and done.
#[derive(Debug, Serialize)]
pub struct Observed {
    pub class: Class,
    pub rule: Option<String>,
    /// `close`, `block_credential` (the session is closed too), `reset_resume` or `none`.
    pub action: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// The exchange cannot be read or decided.
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub async fn observe(
    rules: &RuleSet,
    hosts: &[(String, String)],
    max_body_bytes: usize,
    gate: &Arc<SessionGate>,
    stats: &HaltStats,
    id: SessionId,
    body: ObserveBody,
) -> Result<Observed, ObserveError> {
    let (prepared, provider) =
        classify::prepare(rules, hosts, &body.line).map_err(ObserveError::Input)?;
    // The stored scope is read only when a rule that compares with it would decide, as on
    // the proxy path; a line's own `context` stands for it.
    let given = body.line.context;
    let first = match &given {
        Some(context) => Scope::Known(Some(context)),
        None => Scope::Unknown,
    };
    let decision = match rules.classify(&prepared.exchange(&provider, first, max_body_bytes)) {
        Verdict::Decided(decision) => decision,
        Verdict::NeedsScope => {
            let stored = gate.store().get(&id).await?.and_then(|record| record.scope);
            let exchange =
                prepared.exchange(&provider, Scope::Known(stored.as_ref()), max_body_bytes);
            match rules.classify(&exchange) {
                Verdict::Decided(decision) => decision,
                Verdict::NeedsScope => {
                    return Err(ObserveError::Input(
                        "the engine asked for the session scope although it was given".into(),
                    ))
                }
            }
        }
    };
    for rule in &decision.shadow {
        let class = rules.class_of(&provider, rule);
        stats.count_match(rule, class.map_or("-", Class::as_str), "shadow");
    }
    let class = decision.class;
    let rule = decision.rule.as_deref().map(str::to_owned);
    if class == Class::Pass {
        return Ok(Observed {
            class,
            rule,
            action: "none",
        });
    }
    stats.count_match(rule.as_deref().unwrap_or("-"), class.as_str(), "enforce");

    let credentials = Presented::in_request(
        &prepared.request_headers,
        &prepared.path_and_query,
        &prepared.request_body,
    );
    let action = match class {
        Class::StaleSession => "reset_resume",
        Class::CredentialInvalid if !credentials.is_empty() => "block_credential",
        _ => "close",
    };
    let matched = Matched {
        provider: provider.into(),
        session: Some(SessionHeader {
            id,
            epoch: body.epoch,
        }),
        decision,
        upstream_status: prepared.status.as_u16(),
        started_ms: unix_ms_now(),
        admitted_epoch: None,
        credentials,
        detail: excerpt(&prepared.response_body),
    };
    // The same hook a proxied response takes; its answer to the agent is not needed here.
    let _: Outcome = gate.on_match(matched).await;
    Ok(Observed {
        class,
        rule,
        action,
    })
}
