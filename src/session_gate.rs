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
    CredentialKey, Fingerprint, Outbox, SessionId, SessionStore,
};

/// The session state one proxy instance acts through.
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

    pub fn set_key(&self, key: CredentialKey) {
        let _ = self.key.set(key);
    }

    /// Reads the deployment secret until the store answers, unless one was configured.
    pub async fn load_key(self: Arc<Self>, configured: Option<Vec<u8>>) {
        if let Some(secret) = configured {
            match CredentialKey::new(&secret) {
                Ok(key) => self.set_key(key),
                Err(error) => tracing::error!(%error, "Configured credential secret rejected."),
            }
            return;
        }
        let mut delay = Duration::from_millis(100);
        loop {
            match self.store.deployment_secret().await {
                Ok(secret) => match CredentialKey::new(&secret) {
                    Ok(key) => {
                        self.set_key(key);
                        return;
                    }
                    Err(error) => {
                        tracing::error!(%error, "Stored credential secret rejected.");
                        return;
                    }
                },
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

    async fn close(&self, id: &SessionId, closure: Closure) {
        let result = match &self.outbox {
            Some(outbox) => close_or_enqueue(&*self.store, outbox, id, closure).await,
            None => self
                .store
                .close(id, closure)
                .await
                .map(CloseDisposition::Stored),
        };
        match result {
            Ok(CloseDisposition::Stored(outcome)) => self.closed.record_outcome(id, &outcome),
            Ok(CloseDisposition::Queued { .. }) => {}
            Err(error) => {
                tracing::error!(session = %id, %error, "Closure could not be stored; the session stays halted on this instance.")
            }
        }
    }

    async fn block(&self, block: CredentialBlock) {
        self.closed.insert_block(&block);
        if let Err(error) = self.store.block_credential(block).await {
            tracing::error!(%error, "Credential block could not be stored; it holds on this instance.");
        }
    }
}

/// The gate is shared: the halt layer and the control API hold the same one.
impl SessionHooks for Arc<SessionGate> {
    fn before_forward(&self, request: &RequestInfo<'_>) -> Option<HaltResponse> {
        let session = request
            .session
            .and_then(|s| SessionId::parse(&s.id).ok().map(|id| (id, s.epoch)));
        if let Some((id, epoch)) = &session {
            if let Some(entry) = self.closed.check(id, *epoch) {
                return Some(HaltResponse::session_closed(
                    entry.class.as_str(),
                    &entry.rule,
                    id.as_str(),
                    entry.epoch,
                ));
            }
        }
        if self.closed.tracks_credentials() {
            if let Some(fingerprint) = self.fingerprint(request.headers) {
                if let Some(block) = self.closed.blocked(&fingerprint) {
                    return Some(HaltResponse::credential_blocked(
                        &block.rule,
                        session.as_ref().map(|(id, _)| id.as_str()),
                        session.as_ref().and_then(|(_, epoch)| *epoch),
                    ));
                }
            }
        }
        None
    }

    fn scope(&self, session: &SessionHeader) -> BoxFuture<'static, Option<serde_json::Value>> {
        let store = self.store.clone();
        let id = SessionId::parse(&session.id).ok();
        Box::pin(async move {
            let id = id?;
            match store.get(&id).await {
                Ok(record) => record.and_then(|r| r.scope),
                Err(error) => {
                    // Without the scope, scope rules do not hold: the response passes.
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

impl SessionGate {
    async fn act(&self, matched: Matched) -> Outcome {
        let decision = &matched.decision;
        let rule = decision.rule.as_deref().unwrap_or("unnamed").to_owned();
        let reason = decision
            .reason
            .as_deref()
            .unwrap_or("Access was lost.")
            .to_owned();
        let session = matched
            .session
            .as_ref()
            .and_then(|s| SessionId::parse(&s.id).ok().map(|id| (id, s.epoch)));
        let class = match decision.class {
            Class::Pass => return Outcome::Forward { action: None },
            Class::StaleSession => {
                if let Some((id, epoch)) = &session {
                    match self.store.reset_resume(id, *epoch, &rule).await {
                        Ok(changed) => {
                            tracing::info!(session = %id, rule = %rule, changed, "Resume id reset.")
                        }
                        Err(error) => {
                            tracing::error!(session = %id, %error, "Resume id could not be reset.")
                        }
                    }
                    return Outcome::Forward {
                        action: Some("reset"),
                    };
                }
                return Outcome::Forward { action: None };
            }
            Class::LostAccess => CloseClass::LostAccess,
            Class::CredentialInvalid => CloseClass::CredentialInvalid,
        };

        if class == CloseClass::CredentialInvalid {
            if let Some(raw) = &matched.credential {
                match self.key.get() {
                    Some(key) => {
                        let block = CredentialBlock::new(
                            key.fingerprint(raw.as_bytes()),
                            class.clone(),
                            rule.clone(),
                            reason.clone(),
                        );
                        self.block(block).await;
                    }
                    None => tracing::warn!(
                        "Credential not blocked: the deployment secret is not loaded yet."
                    ),
                }
            }
        }

        let Some((id, epoch)) = session else {
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
            .with_upstream_status(matched.upstream_status);
        if let Some(epoch) = epoch {
            closure = closure.at_epoch(epoch);
        }
        let local_epoch = self.closed.epoch_for(&id, epoch);
        self.closed.insert_closure(&id, local_epoch, &closure);
        self.close(&id, closure).await;
        Outcome::Halt(HaltResponse::rule_matched(
            class.as_str(),
            &rule,
            Some(id.as_str()),
            Some(epoch.unwrap_or(local_epoch)),
            matched.upstream_status,
        ))
    }
}
