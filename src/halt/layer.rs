use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tower_layer::Layer;

use super::hooks::{LogOnly, SessionHooks};
use super::provider::FixedProvider;
use super::service::{Halt, Shared};
use super::stats::HaltStats;
use crate::rules::{RuleSet, DEFAULT_MAX_BODY_BYTES};

/// How much of a body the layer reads to decide. See the [module docs](super).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HaltConfig {
    /// Response bodies up to this size are read whole and given to the rules; larger ones
    /// pass uninspected. Also caps the copy of the request body kept for request-field rules.
    /// Default [`DEFAULT_MAX_BODY_BYTES`] (64 KiB).
    pub max_body_bytes: usize,
}

impl Default for HaltConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// Wraps a service with response inspection and halting. See the [module docs](super).
///
/// `P` picks each request's provider ([`ProviderOf`](super::ProviderOf)).
#[derive(Clone)]
pub struct HaltLayer<P> {
    shared: Arc<Shared>,
    provider: P,
}

impl HaltLayer<FixedProvider> {
    /// Every request is inspected as `provider`'s, with hooks that log matches and let every
    /// response through ([`LogOnly`]) until [`HaltLayer::with_hooks`] replaces them.
    pub fn for_provider(provider: &str, rules: RuleSet) -> Self {
        Self::new(
            Arc::new(ArcSwap::from_pointee(rules)),
            Arc::new(LogOnly),
            FixedProvider::new(provider),
        )
    }
}

impl<P> HaltLayer<P> {
    /// Inspects with `rules` (swappable at run time: the layer reads the current set for each
    /// response), acts through `hooks`, and asks `provider` whose rules apply to a request.
    pub fn new(rules: Arc<ArcSwap<RuleSet>>, hooks: Arc<dyn SessionHooks>, provider: P) -> Self {
        Self {
            shared: Arc::new(Shared {
                rules,
                hooks,
                config: HaltConfig::default(),
                stats: Arc::new(HaltStats::default()),
            }),
            provider,
        }
    }

    /// Replaces the hooks (e.g. with session state).
    pub fn with_hooks(self, hooks: Arc<dyn SessionHooks>) -> Self {
        self.map_shared(|shared| shared.hooks = hooks)
    }

    /// Replaces the body limits.
    pub fn with_config(self, config: HaltConfig) -> Self {
        self.map_shared(|shared| shared.config = config)
    }

    /// Sets [`HaltConfig::max_body_bytes`].
    pub fn max_body_bytes(self, max_body_bytes: usize) -> Self {
        self.map_shared(|shared| shared.config.max_body_bytes = max_body_bytes)
    }

    /// Chooses the provider of each request with `provider` instead.
    pub fn provider_of<Q>(self, provider: Q) -> HaltLayer<Q> {
        HaltLayer {
            shared: self.shared,
            provider,
        }
    }

    /// The body limits in force.
    pub fn config(&self) -> HaltConfig {
        self.shared.config
    }

    /// Counters of what the layer decided, shared by every service it made.
    pub fn stats(&self) -> Arc<HaltStats> {
        self.shared.stats.clone()
    }

    fn map_shared(mut self, change: impl FnOnce(&mut Shared)) -> Self {
        let mut shared = Shared::clone(&self.shared);
        change(&mut shared);
        self.shared = Arc::new(shared);
        self
    }
}

impl<P> fmt::Debug for HaltLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HaltLayer")
            .field("provider", &std::any::type_name::<P>())
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S, P: Clone> Layer<S> for HaltLayer<P> {
    type Service = Halt<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Halt::new(inner, self.provider.clone(), self.shared.clone())
    }
}
