//! The halt response: what an agent gets instead of the upstream's answer once its session is
//! closed, as a value with named constructors. How it is written depends on the provider's
//! dialect ([`super::Dialect`]).

use http::StatusCode;
use serde_json::json;

/// `x-haltgate-halt: <class>` marks a halt response.
pub const X_HALTGATE_HALT: &str = "x-haltgate-halt";
/// `x-haltgate-rule: <rule id>` names the rule that closed the session.
pub const X_HALTGATE_RULE: &str = "x-haltgate-rule";
/// `x-haltgate-action: reset` marks an upstream response after which the resume id was cleared.
pub const X_HALTGATE_ACTION: &str = "x-haltgate-action";

/// 410 Gone: the status of the generic and GitHub REST halts (see [`super::Dialect`]).
/// Octokit's retry plugin lists it among the statuses it never retries; PyGithub and most
/// HTTP clients retry only 429 and 5xx.
pub const HALT_STATUS: StatusCode = StatusCode::GONE;

/// A synthetic answer that stops the agent's tool call.
#[derive(Debug, Clone, PartialEq)]
pub struct HaltResponse {
    /// `lost_access` or `credential_invalid` (or the class recorded on an earlier closure).
    pub class: String,
    /// Rule that decided, or `manual` for a closure made through the control API.
    pub rule: String,
    pub session: Option<String>,
    pub epoch: Option<u64>,
    /// Status of the upstream response that matched; `None` when no upstream was called.
    pub upstream_status: Option<u16>,
    /// One plain sentence for the model.
    pub message: String,
}

impl HaltResponse {
    /// This response matched a lost-access or invalid-credential rule; the session was closed.
    pub fn rule_matched(
        class: &str,
        rule: &str,
        session: Option<&str>,
        epoch: Option<u64>,
        upstream_status: u16,
    ) -> Self {
        Self {
            class: class.to_owned(),
            rule: rule.to_owned(),
            session: session.map(str::to_owned),
            epoch,
            upstream_status: Some(upstream_status),
            message: sentence_for(class).to_owned(),
        }
    }

    /// The session was closed before this request; nothing was sent upstream.
    pub fn session_closed(class: &str, rule: &str, session: &str, epoch: u64) -> Self {
        Self {
            class: class.to_owned(),
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
            class: "credential_invalid".to_owned(),
            rule: rule.to_owned(),
            session: session.map(str::to_owned),
            epoch,
            upstream_status: None,
            message: sentence_for("credential_invalid").to_owned(),
        }
    }

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

fn sentence_for(class: &str) -> &'static str {
    match class {
        "credential_invalid" => {
            "The credential for this tool no longer works; this session is closed. Do not retry."
        }
        _ => "Access to this resource was lost; this session is closed. Do not retry.",
    }
}
