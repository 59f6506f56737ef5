//! The halt response: what an agent gets instead of the upstream's answer once its session is
//! closed, as a value with named constructors. How it is written depends on the provider's
//! dialect ([`super::Dialect`]).

use http::StatusCode;
use serde_json::json;

use crate::class::Class;

/// 410 Gone: the status of the generic and GitHub REST halts (see [`super::Dialect`]).
/// Octokit's retry plugin lists it among the statuses it never retries; PyGithub and most
/// HTTP clients retry only 429 and 5xx.
pub const HALT_STATUS: StatusCode = StatusCode::GONE;

/// A synthetic answer that stops the agent's tool call.
#[derive(Debug, Clone, PartialEq)]
pub struct HaltResponse {
    /// `lost_access` or `credential_invalid` (or the class recorded on an earlier closure).
    pub class: Class,
    /// Rule that decided, or `manual` for a closure made through the control API.
    pub rule: String,
    /// The halted session, if the request named one.
    pub session: Option<String>,
    /// The session generation that was closed.
    pub epoch: Option<u64>,
    /// Status of the upstream response that matched; `None` when no upstream was called.
    pub upstream_status: Option<u16>,
    /// One plain sentence for the model.
    pub message: String,
}

impl HaltResponse {
    /// This response matched a lost-access or invalid-credential rule; the session was closed.
    pub fn rule_matched(
        class: Class,
        rule: &str,
        session: Option<&str>,
        epoch: Option<u64>,
        upstream_status: u16,
    ) -> Self {
        Self {
            class,
            rule: rule.to_owned(),
            session: session.map(str::to_owned),
            epoch,
            upstream_status: Some(upstream_status),
            message: sentence_for(class).to_owned(),
        }
    }

    /// The session was closed before this request; nothing was sent upstream.
    pub fn session_closed(class: Class, rule: &str, session: &str, epoch: u64) -> Self {
        Self {
            class,
            rule: rule.to_owned(),
            session: Some(session.to_owned()),
            epoch: Some(epoch),
            upstream_status: None,
            message: sentence_for(class).to_owned(),
        }
    }

    /// The request's credential is blocked; nothing was sent upstream.
    pub fn credential_blocked(rule: &str, session: Option<&str>, epoch: Option<u64>) -> Self {
        Self {
            class: Class::CredentialInvalid,
            rule: rule.to_owned(),
            session: session.map(str::to_owned),
            epoch,
            upstream_status: None,
            message: sentence_for(Class::CredentialInvalid).to_owned(),
        }
    }

    /// The JSON body: `halted`, `class`, `rule`, `session`, `epoch`, `upstream_status`,
    /// `message`.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "halted": true,
            "class": self.class,
            "rule": self.rule,
            "session": self.session,
            "epoch": self.epoch,
            "upstream_status": self.upstream_status,
            "message": self.message,
        })
    }
}

fn sentence_for(class: Class) -> &'static str {
    match class {
        Class::CredentialInvalid => {
            "The credential for this tool no longer works; this session is closed. Do not retry."
        }
        _ => "Access to this resource was lost; this session is closed. Do not retry.",
    }
}
