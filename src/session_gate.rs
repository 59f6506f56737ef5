//! Session state in the request path: the [`SessionHooks`] that check, close, block and reset.
//!
//! Before forwarding, only the instance-local [`ClosedSet`] is read (no store round trip).
//! After a decisive match the closure is applied locally first (the next request halts at
//! once, even while the store is slow or down), then written to the store in one atomic
//! close-and-cancel step; when a Redis store is unreachable the closure goes to the local
//! outbox and is replayed until Redis confirms.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::class::Class;
use crate::halt::{
    Admission, BoxFuture, HaltResponse, Matched, Outcome, Refusal, RequestInfo, ScopeUnavailable,
    SessionHeader, SessionHooks,
};
use crate::metrics::SessionStats;
use crate::session::{
    block_or_enqueue, close_or_enqueue, BlockDisposition, CloseDisposition, CloseOutcome,
    ClosedSet, Closure, CredentialBlock, CredentialKey, Detail, Fingerprint, LocalCopy, Outbox,
    Presented, SessionId, SessionStore, StoreError,
};
use crate::storm::{Admit, StormBreaker};

/// The session state one proxy instance acts through, shared by the halt layer and the
/// control API.
pub struct SessionGate {
    store: Arc<dyn SessionStore>,
    closed: Arc<ClosedSet>,
    /// Present for shared (Redis) stores: where closures wait while the store is unreachable.
    outbox: Option<Outbox>,
    /// Known once the deployment secret was read; credential checks wait for it.
    key: OnceLock<CredentialKey>,
    /// Present for shared stores: keeps the deployment secret for a start without the store.
    local: Option<LocalCopy>,
    stats: Arc<SessionStats>,
    /// Turns a provider's halting matches into shadow ones while too many close at once.
    storm: Option<Arc<StormBreaker>>,
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
            local: None,
            stats: Arc::default(),
            storm: None,
        }
    }

    pub fn with_storm_breaker(mut self, storm: Arc<StormBreaker>) -> Self {
        self.storm = Some(storm);
        self
    }

    pub fn with_local_copy(mut self, local: Option<LocalCopy>) -> Self {
        self.local = local;
        self
    }

    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    pub fn closed(&self) -> &Arc<ClosedSet> {
        &self.closed
    }

    /// Present for shared stores: this instance's durable copy of its closed set.
    pub fn local_copy(&self) -> Option<&LocalCopy> {
        self.local.as_ref()
    }

    pub fn outbox(&self) -> Option<&Outbox> {
        self.outbox.as_ref()
    }

    /// Counters of closures, resets, blocks and store errors.
    pub fn stats(&self) -> &Arc<SessionStats> {
        &self.stats
    }

    /// Whether the deployment secret is loaded, so credentials can be fingerprinted.
    pub fn credential_key_loaded(&self) -> bool {
        self.key.get().is_some()
    }

    /// Ready once the closed set is bootstrapped and credentials can be fingerprinted.
    pub fn is_ready(&self) -> bool {
        self.closed.is_ready() && self.key.get().is_some()
    }

    /// Reads the deployment secret, retrying until the store answers. A secret kept in the
    /// local copy is used at once, so credentials are checked while the store is down.
    pub async fn load_key(self: Arc<Self>, kept: Option<Vec<u8>>) {
        // The store's secret is the one every instance fingerprints with; the kept one only
        // stands in while the store does not answer at start.
        let mut first = true;
        let mut delay = Duration::from_millis(100);
        let secret = loop {
            match self.store.deployment_secret().await {
                Ok(secret) => break secret,
                Err(error) => {
                    if first {
                        if let Some(kept) = &kept {
                            match CredentialKey::new(kept) {
                                Ok(key) => {
                                    let _ = self.key.set(key);
                                }
                                Err(error) => {
                                    tracing::error!(%error, "Kept credential secret rejected.")
                                }
                            }
                        }
                        first = false;
                    }
                    tracing::warn!(%error, "Cannot read the deployment secret yet; retrying.");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        // Learn how many replicas a closure must reach while the store is whole: found later,
        // after a failover, a master may have none for a while. Readiness does not wait.
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(error) = store.replicated(&[]).await {
                tracing::warn!(%error, "Replicas did not confirm the first check.");
            }
        });
        match CredentialKey::new(&secret) {
            Ok(key) => {
                if self.key.set(key).is_err() && kept.as_ref() != Some(&secret) {
                    tracing::error!("The store's deployment secret differs from the one kept locally, which is in use since the store did not answer at start; the store's is kept from now on and used after a restart.");
                }
            }
            Err(error) => {
                tracing::error!(%error, "Stored credential secret rejected.");
                return;
            }
        }
        if let Some(local) = self
            .local
            .clone()
            .filter(|_| kept.as_ref() != Some(&secret))
        {
            let saved = tokio::task::spawn_blocking(move || local.save_secret(&secret)).await;
            if !matches!(saved, Ok(Ok(()))) {
                tracing::warn!("The deployment secret could not be kept in the local copy.");
            }
        }
    }

    /// Fingerprint of a presented credential, once the deployment secret is known.
    pub fn fingerprint(&self, credential: &Presented) -> Option<Fingerprint> {
        Some(self.key.get()?.fingerprint_of(credential))
    }

    /// A request of `session` presented a blocked credential: the session is closed like on
    /// any other match (local mark, then the store's atomic close-and-cancel, or the
    /// outbox), naming the rule that blocked the credential, before the halt is answered.
    async fn close_for_block(&self, session: &SessionHeader, block: &Detail) -> HaltResponse {
        let mut closure = Closure::new(
            block.class,
            block.rule.to_string(),
            "The credential this session presented is blocked.",
        );
        if let Some(epoch) = session.epoch {
            closure = closure.at_epoch(epoch);
        }
        let epoch = self.closed.epoch_for(&session.id, session.epoch);
        if let Err(error) = self.close(&session.id, closure).await {
            tracing::error!(session = %session.id, %error, "Closure for a blocked credential could not be stored; the session stays halted on this instance.");
        }
        HaltResponse::credential_blocked(&block.rule, Some(session.id.as_str()), Some(epoch))
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
        self.close_admitted(id, closure, None).await
    }

    /// [`SessionGate::close`] for a request admitted when `admitted_epoch` was current: the
    /// local mark goes no later than that generation (the store fences the rest).
    async fn close_admitted(
        &self,
        id: &SessionId,
        closure: Closure,
        admitted_epoch: Option<u64>,
    ) -> Result<CloseDisposition, StoreError> {
        let closure = closure.normalized()?;
        let local_epoch = self.closed.epoch_for(id, closure.epoch.or(admitted_epoch));
        self.closed.insert_closure(id, local_epoch, &closure);
        let class = closure.class;
        let disposition = match &self.outbox {
            Some(outbox) => close_or_enqueue(&self.store, outbox, id, closure)
                .await
                .inspect_err(|_| self.stats.count_store_error("close"))?,
            None => self
                .store
                .close(id, closure)
                .await
                .map(CloseDisposition::Stored)
                .inspect_err(|_| self.stats.count_store_error("close"))?,
        };
        match &disposition {
            CloseDisposition::Stored(outcome) => {
                if matches!(outcome, CloseOutcome::Closed { .. }) {
                    self.stats.count_closure(class.as_str());
                }
                self.closed.record_outcome(id, outcome);
            }
            CloseDisposition::Queued { .. } => self.stats.count_closure(class.as_str()),
        }
        Ok(disposition)
    }

    /// Blocks a credential: in the local set at once, then in the store, or in the outbox
    /// when a shared store is unreachable. Like a closure, a block the shared store took
    /// counts as stored once replicated; one the replicas do not confirm goes to the outbox.
    async fn block(&self, block: CredentialBlock) {
        self.closed.insert_block(&block);
        let stored = match &self.outbox {
            Some(outbox) => match block_or_enqueue(&self.store, outbox, block).await {
                Ok(BlockDisposition::Stored(added)) => Ok(added),
                Ok(BlockDisposition::Queued { .. }) => Ok(true),
                Err(error) => Err(error),
            },
            None => self.store.block_credential(block).await,
        };
        match stored {
            Ok(true) => {
                self.stats.credential_blocks.inc();
            }
            Ok(false) => {}
            Err(error) => {
                self.stats.count_store_error("block_credential");
                tracing::error!(%error, "Credential block could not be stored; it holds on this instance.");
            }
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
                        if changed {
                            self.stats.resume_resets.inc();
                        }
                        tracing::info!(session = %session.id, rule = %rule, changed, "Resume id reset.")
                    }
                    Err(error) => {
                        self.stats.count_store_error("reset_resume");
                        tracing::error!(session = %session.id, %error, "Resume id could not be reset.")
                    }
                }
                return Outcome::Forward {
                    action: Some("reset"),
                };
            }
            // Rules decide only lost_access or credential_invalid past this point.
            class => class,
        };
        let reason = decision
            .reason
            .as_deref()
            .unwrap_or("Access was lost.")
            .to_owned();

        let credential = matched.credentials.first();
        if let Some(storm) = &self.storm {
            // Distinct credentials count, else distinct sessions: an outage fails many
            // credentials at once, while one revoked bot token legitimately closes every
            // session that used it.
            let fingerprint = credential.and_then(|presented| self.fingerprint(presented));
            let subject = match (&fingerprint, session) {
                (Some(fingerprint), _) => fingerprint.as_str(),
                (None, Some(session)) => session.id.as_str(),
                (None, None) => "-",
            };
            if storm.admit(&matched.provider, subject, Instant::now()) == Admit::Shadow {
                tracing::info!(
                    provider = %matched.provider,
                    rule = %rule,
                    session = session.map(|s| s.id.as_str()).unwrap_or("-"),
                    upstream_status = matched.upstream_status,
                    "Storm breaker open: the match is logged only; nothing is closed or blocked."
                );
                return Outcome::Forward { action: None };
            }
        }
        if class == Class::CredentialInvalid {
            match (credential, self.key.get()) {
                (Some(presented), Some(key)) => {
                    let fingerprint = key.fingerprint_of(presented);
                    let block =
                        CredentialBlock::new(fingerprint, class, rule.clone(), reason.clone());
                    self.block(block).await;
                }
                (Some(_), None) => tracing::warn!(
                    "Credential not blocked: the deployment secret is not loaded yet."
                ),
                (None, _) => {}
            }
        }

        let Some(SessionHeader { id, epoch }) = session else {
            if class == Class::CredentialInvalid && credential.is_some() {
                return Outcome::Halt(HaltResponse::rule_matched(
                    class,
                    &rule,
                    None,
                    None,
                    matched.upstream_status,
                ));
            }
            // Nothing to close: a request without a session keeps the upstream answer.
            return Outcome::Forward { action: None };
        };
        let mut closure = Closure::new(class, rule.clone(), reason)
            .with_detail(matched.detail)
            .with_upstream_status(matched.upstream_status)
            .observed_at(matched.started_ms);
        if let Some(epoch) = epoch {
            closure = closure.at_epoch(*epoch);
        }
        let local_epoch = self.closed.epoch_for(id, epoch.or(matched.admitted_epoch));
        if let Err(error) = self
            .close_admitted(id, closure, matched.admitted_epoch)
            .await
        {
            tracing::error!(session = %id, %error, "Closure could not be stored; the session stays halted on this instance.");
        }
        Outcome::Halt(HaltResponse::rule_matched(
            class,
            &rule,
            Some(id.as_str()),
            Some(local_epoch),
            matched.upstream_status,
        ))
    }
}

/// The gate is shared: the halt layer and the control API hold the same one.
impl SessionHooks for Arc<SessionGate> {
    fn known_epoch(&self, session: &SessionHeader) -> Option<u64> {
        Some(self.closed.latest_epoch(&session.id).unwrap_or(0))
    }

    fn before_forward(&self, request: &RequestInfo<'_>) -> Admission {
        if !self.is_ready() {
            // Unknown is not "open": a request that names a session or carries a credential
            // waits until this instance knows which are closed and blocked.
            let identified = request.session.is_some()
                || Presented::body_may_carry(request.headers)
                || !Presented::in_head(request.headers, request.query).is_empty();
            return if identified {
                Admission::Refuse(Refusal::NotReady)
            } else {
                Admission::Forward
            };
        }
        if let Some(session) = request.session {
            if let Some(entry) = self.closed.check(&session.id, session.epoch) {
                return Admission::Refuse(Refusal::Halt(HaltResponse::session_closed(
                    entry.class,
                    &entry.rule,
                    session.id.as_str(),
                    entry.epoch,
                )));
            }
        }
        if !self.closed.any_blocked() {
            return Admission::Forward;
        }
        let Some(key) = self.key.get() else {
            return Admission::Refuse(Refusal::NotReady);
        };
        let mut presented = Presented::in_head(request.headers, request.query);
        if let Some(body) = request.body {
            presented.extend(Presented::in_form(body));
        }
        let block = presented
            .iter()
            .find_map(|credential| self.closed.blocked(&key.fingerprint_of(credential)));
        match (block, request.session) {
            (Some(block), Some(session)) => {
                let gate = self.clone();
                let session = session.clone();
                Admission::Refuse(Refusal::HaltAfter(Box::pin(async move {
                    gate.close_for_block(&session, &block).await
                })))
            }
            (Some(block), None) => Admission::Refuse(Refusal::Halt(
                HaltResponse::credential_blocked(&block.rule, None, None),
            )),
            (None, _) if request.body.is_none() && Presented::body_may_carry(request.headers) => {
                Admission::NeedsBody
            }
            (None, _) => Admission::Forward,
        }
    }

    fn scope(
        &self,
        session: &SessionHeader,
    ) -> BoxFuture<'static, Result<Option<serde_json::Value>, ScopeUnavailable>> {
        let store = self.store.clone();
        let id = session.id.clone();
        Box::pin(async move {
            store
                .get(&id)
                .await
                .map(|record| record.and_then(|r| r.scope))
                .map_err(|error| ScopeUnavailable(error.to_string()))
        })
    }

    fn on_match(&self, matched: Matched) -> BoxFuture<'static, Outcome> {
        let gate = self.clone();
        Box::pin(async move { gate.act(matched).await })
    }
}
