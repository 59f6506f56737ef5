//! Session state in the request path: the [`SessionHooks`] that check, close, block and reset.
//!
//! Before forwarding, only the instance-local [`ClosedSet`] is read (no store round trip).
//! After a decisive match the closure is applied locally first (the next request halts at
//! once, even while the store is slow or down), then written to the store in one atomic
//! close-and-cancel step; when a Redis store is unreachable the closure goes to the local
//! outbox and is replayed until Redis confirms.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::HeaderMap;

use crate::halt::{
    BoxFuture, HaltResponse, Matched, Outcome, RequestInfo, SessionHeader, SessionHooks,
};
use crate::rules::Class;
use crate::session::{
    close_or_enqueue, CloseClass, CloseDisposition, ClosedSet, Closure, CredentialBlock,
    CredentialKey, Fingerprint, Outbox, SessionId, SessionStore, StoreError,
};

/// The session state one proxy instance acts through, shared by the halt layer and the
/// control API.
pub struct SessionGate {
    store: Arc<dyn SessionStore>,
    closed: Arc<ClosedSet>,
    /// Present for shared (Redis) stores: where closures wait while the store is unreachable.
    outbox: Option<Outbox>,
    /// Known once the deployment secret was read; credential checks wait for it.
    key: OnceLock<CredentialKey>,
}

impl SessionGate {
    pub fn new(
        store: Arc<dyn SessionStore>,
        closed: Arc<ClosedSet>,
        outbox: Option<Outbox>,
    ) -> Self {
        Self {
            store,
            closed,
            outbox,
            key: OnceLock::new(),
        }
    }

    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    pub fn closed(&self) -> &Arc<ClosedSet> {
        &self.closed
    }

    pub fn outbox(&self) -> Option<&Outbox> {
        self.outbox.as_ref()
    }

    /// Ready once the closed set is bootstrapped and credentials can be fingerprinted.
    pub fn is_ready(&self) -> bool {
        self.closed.is_ready() && self.key.get().is_some()
    }

    /// Reads the deployment secret, retrying until the store answers.
    pub async fn load_key(self: Arc<Self>) {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.store.deployment_secret().await {
                Ok(secret) => {
                    match CredentialKey::new(&secret) {
                        Ok(key) => {
                            let _ = self.key.set(key);
                        }
                        Err(error) => tracing::error!(%error, "Stored credential secret rejected."),
                    }
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "Cannot read the deployment secret yet; retrying.");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Fingerprint of the request's credential (`Authorization`, else `x-api-key`).
    pub fn fingerprint(&self, headers: &HeaderMap) -> Option<Fingerprint> {
        let key = self.key.get()?;
        let raw = headers
            .get(http::header::AUTHORIZATION)
            .or_else(|| headers.get("x-api-key"))?;
        Some(key.fingerprint(raw.as_bytes()))
    }

    /// Closes a session: marks it closed in the local set at once (later requests halt even
    /// while the store is slow or down), then writes the closure to the store, or to the
    /// outbox when a Redis store is unreachable, and applies what the store answered. Input
    /// the store rejects is an error and changes nothing.
    pub async fn close(
        &self,
        id: &SessionId,
        closure: Closure,
    ) -> Result<CloseDisposition, StoreError> {
        let closure = closure.normalized()?;
        let local_epoch = self.closed.epoch_for(id, closure.epoch);
        self.closed.insert_closure(id, local_epoch, &closure);
        let disposition = match &self.outbox {
            Some(outbox) => close_or_enqueue(&*self.store, outbox, id, closure).await?,
            None => CloseDisposition::Stored(self.store.close(id, closure).await?),
        };
        if let CloseDisposition::Stored(outcome) = &disposition {
            self.closed.record_outcome(id, outcome);
        }
        Ok(disposition)
    }

    async fn block(&self, block: CredentialBlock) {
        self.closed.insert_block(&block);
        if let Err(error) = self.store.block_credential(block).await {
            tracing::error!(%error, "Credential block could not be stored; it holds on this instance.");
        }
    }

    async fn act(&self, matched: Matched) -> Outcome {
        let decision = &matched.decision;
        let rule = decision.rule.as_deref().unwrap_or("unnamed").to_owned();
        let session = matched.session.as_ref();
        let class = match decision.class {
            Class::Pass => return Outcome::Forward { action: None },
            Class::StaleSession => {
                let Some(session) = session else {
                    return Outcome::Forward { action: None };
                };
                match self
                    .store
                    .reset_resume(&session.id, session.epoch, &rule)
                    .await
                {
                    Ok(changed) => {
                        tracing::info!(session = %session.id, rule = %rule, changed, "Resume id reset.")
                    }
                    Err(error) => {
                        tracing::error!(session = %session.id, %error, "Resume id could not be reset.")
                    }
                }
                return Outcome::Forward {
                    action: Some("reset"),
                };
            }
            Class::LostAccess => CloseClass::LostAccess,
            Class::CredentialInvalid => CloseClass::CredentialInvalid,
        };
        let reason = decision
            .reason
            .as_deref()
            .unwrap_or("Access was lost.")
            .to_owned();

        if class == CloseClass::CredentialInvalid {
            match (&matched.credential, self.key.get()) {
                (Some(raw), Some(key)) => {
                    let fingerprint = key.fingerprint(raw.as_bytes());
                    let block = CredentialBlock::new(
                        fingerprint,
                        class.clone(),
                        rule.clone(),
                        reason.clone(),
                    );
                    self.block(block).await;
                }
                (Some(_), None) => tracing::warn!(
                    "Credential not blocked: the deployment secret is not loaded yet."
                ),
                (None, _) => {}
            }
        }

        let Some(SessionHeader { id, epoch }) = session else {
            if class == CloseClass::CredentialInvalid && matched.credential.is_some() {
                return Outcome::Halt(HaltResponse::rule_matched(
                    class.as_str(),
                    &rule,
                    None,
                    None,
                    matched.upstream_status,
                ));
            }
            // Nothing to close: a request without a session keeps the upstream answer.
            return Outcome::Forward { action: None };
        };
        let mut closure = Closure::new(class.clone(), rule.clone(), reason)
            .with_detail(matched.detail)
            .with_upstream_status(matched.upstream_status)
            .observed_at(matched.started_ms);
        if let Some(epoch) = epoch {
            closure = closure.at_epoch(*epoch);
        }
        let local_epoch = self.closed.epoch_for(id, *epoch);
        if let Err(error) = self.close(id, closure).await {
            tracing::error!(session = %id, %error, "Closure could not be stored; the session stays halted on this instance.");
        }
        Outcome::Halt(HaltResponse::rule_matched(
            class.as_str(),
            &rule,
            Some(id.as_str()),
            Some(local_epoch),
            matched.upstream_status,
        ))
    }
}

/// The gate is shared: the halt layer and the control API hold the same one.
impl SessionHooks for Arc<SessionGate> {
    fn before_forward(&self, request: &RequestInfo<'_>) -> Option<HaltResponse> {
        if let Some(session) = request.session {
            if let Some(entry) = self.closed.check(&session.id, session.epoch) {
                return Some(HaltResponse::session_closed(
                    entry.class.as_str(),
                    &entry.rule,
                    session.id.as_str(),
                    entry.epoch,
                ));
            }
        }
        if self.closed.any_blocked() {
            if let Some(fingerprint) = self.fingerprint(request.headers) {
                if let Some(block) = self.closed.blocked(&fingerprint) {
                    return Some(HaltResponse::credential_blocked(
                        &block.rule,
                        request.session.map(|s| s.id.as_str()),
                        request.session.and_then(|s| s.epoch),
                    ));
                }
            }
        }
        None
    }

    fn scope(&self, session: &SessionHeader) -> BoxFuture<'static, Option<serde_json::Value>> {
        let store = self.store.clone();
        let id = session.id.clone();
        Box::pin(async move {
            match store.get(&id).await {
                Ok(record) => record.and_then(|r| r.scope),
                Err(error) => {
                    // Without the scope, scope rules do not hold; rules for unscoped sessions
                    // may still decide.
                    tracing::warn!(session = %id, %error, "Session scope unavailable.");
                    None
                }
            }
        })
    }

    fn on_match(&self, matched: Matched) -> BoxFuture<'static, Outcome> {
        let gate = self.clone();
        Box::pin(async move { gate.act(matched).await })
    }
}
