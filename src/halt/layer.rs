use std::sync::Arc;

use arc_swap::ArcSwap;
use tower_layer::Layer;

use super::hooks::{LogOnly, SessionHooks};
use super::service::{Halt, Shared};
use super::stats::HaltStats;
use crate::rules::RuleSet;

/// Wraps a service with response inspection and halting. See the [module docs](super).
#[derive(Clone)]
pub struct HaltLayer {
    shared: Arc<Shared>,
}

impl HaltLayer {
    /// Inspects with `rules` (swappable at run time) and acts through `hooks`. The provider of a
    /// request is its route's (the [`crate::route::Target`] extension set by the ingress).
    pub fn new(rules: Arc<ArcSwap<RuleSet>>, hooks: Arc<dyn SessionHooks>) -> Self {
        Self {
            shared: Arc::new(Shared {
                rules,
                hooks,
                fixed_provider: None,
                stats: Arc::new(HaltStats::default()),
            }),
        }
    }

    /// For embedding without haltgate's router: every request is inspected as `provider`'s.
    pub fn for_provider(provider: &str, rules: RuleSet) -> Self {
        Self {
            shared: Arc::new(Shared {
                rules: Arc::new(ArcSwap::from_pointee(rules)),
                hooks: Arc::new(LogOnly),
                fixed_provider: Some(provider.into()),
                stats: Arc::new(HaltStats::default()),
            }),
        }
    }

    /// Replaces the hooks (e.g. session state) of a layer built with [`HaltLayer::for_provider`].
    pub fn with_hooks(self, hooks: Arc<dyn SessionHooks>) -> Self {
        let shared = Shared {
            rules: self.shared.rules.clone(),
            hooks,
            fixed_provider: self.shared.fixed_provider.clone(),
            stats: self.shared.stats.clone(),
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// Counters of what the layer decided, shared by every service it made.
    pub fn stats(&self) -> Arc<HaltStats> {
        self.shared.stats.clone()
    }
}

impl<S> Layer<S> for HaltLayer {
    type Service = Halt<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Halt::new(inner, self.shared.clone())
    }
}
