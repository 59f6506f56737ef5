//! Which provider's rules inspect a request: [`ProviderOf`], chosen once per request.

use std::fmt;
use std::sync::Arc;

use http::Request;

use super::Dialect;

/// Names the provider whose rules inspect a request (`slack`, `github`, ... — the stem of a
/// rule file). `None` lets the request through uninspected.
///
/// Implemented for [`FixedProvider`] (every request is one provider's), for closures
/// `Fn(&Request<B>) -> Option<&'static str>`, and by haltgate's router
/// ([`crate::route::RouteProvider`]).
pub trait ProviderOf<B> {
    /// The provider of `request`, or `None` to pass it through uninspected.
    fn provider(&self, request: &Request<B>) -> Option<Arc<str>>;

    /// The path and query the rules match against. Defaults to the request's own; a router
    /// that strips a prefix gives the upstream's.
    fn path_and_query<'r>(&self, request: &'r Request<B>) -> &'r str {
        request
            .uri()
            .path_and_query()
            .map_or("/", |path_and_query| path_and_query.as_str())
    }

    /// How halts of `request` are written. Defaults to the provider's own dialect; a router
    /// may set one per route.
    fn dialect(&self, _request: &Request<B>, provider: &str) -> Dialect {
        Dialect::for_provider(provider)
    }
}

/// Every request is inspected as one provider's.
#[derive(Clone)]
pub struct FixedProvider(Arc<str>);

impl FixedProvider {
    /// Inspects every request with `provider`'s rules.
    pub fn new(provider: &str) -> Self {
        Self(provider.into())
    }
}

impl fmt::Debug for FixedProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("FixedProvider").field(&&*self.0).finish()
    }
}

impl<B> ProviderOf<B> for FixedProvider {
    fn provider(&self, _request: &Request<B>) -> Option<Arc<str>> {
        Some(self.0.clone())
    }
}

impl<B, F> ProviderOf<B> for F
where
    F: Fn(&Request<B>) -> Option<&'static str>,
{
    fn provider(&self, request: &Request<B>) -> Option<Arc<str>> {
        self(request).map(Arc::from)
    }
}
