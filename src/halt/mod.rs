//! Response inspection and halting, as a tower middleware.
//!
//! [`HaltLayer`] wraps a service that answers HTTP requests (an upstream client, a proxy's
//! forwarder). For each request it:
//!
//! 1. reads the session from `x-haltgate-session` / `x-haltgate-epoch` (malformed → 400);
//! 2. asks [`SessionHooks::before_forward`] whether the session is already closed or the
//!    credential blocked — a local check, no I/O — and if so answers with a
//!    [`HaltResponse`] without calling the inner service;
//! 3. forwards, keeping a copy of the first [`HaltConfig::max_body_bytes`] of the request body for rules
//!    that look at request fields;
//! 4. inspects the response with the [`RuleSet`](crate::rules::RuleSet) of the request's
//!    provider, and on a decisive match calls [`SessionHooks::on_match`], which halts or lets
//!    the response through.
//!
//! # Body handling
//! - A response that no rule could match from its status and headers alone streams through
//!   untouched, unbuffered (the rules' `needs_body` pre-check).
//! - Otherwise a body of at most `max_body_bytes` (default 64 KiB) is read whole, decided,
//!   and then forwarded byte-for-byte, or replaced by the halt response. A larger body (by
//!   `Content-Length`, or by what arrived) passes uninspected and is counted in
//!   [`HaltStats::uninspected`]; rules that need no body still decide it.
//! - A body with a `Content-Encoding` (`gzip`, `deflate`, `br`, `zstd`) is read the same
//!   way, and the rules get a decoded copy of at most `max_body_bytes` (see [`decode`]); the
//!   agent gets the encoded bytes unchanged. A body that does not decode, names an unknown
//!   coding, or decodes past the limit passes uninspected, counted with its reason.
//! - `text/event-stream` bodies are never held: each event is forwarded as it arrives and
//!   classified on the way; a halt ends the stream with a final event, the stream's own
//!   error event where the route's [`Dialect`] has one.
//!
//! # Halts
//! A [`HaltResponse`] is written in the dialect of the request's provider (the route's, see
//! [`Dialect`]), so that each provider's SDKs raise it as their ordinary, non-retryable error.
//!
//! # Embedding
//! The layer fits any tower stack, axum's included: the request body may be any
//! `Body<Data = Bytes>`, the inner service may answer with any body and error, and the
//! provider of each request is chosen by a [`ProviderOf`] (a fixed name, a closure, or
//! haltgate's router). Body limits live in [`HaltConfig`].
//! ```no_run
//! use haltgate::halt::HaltLayer;
//! use haltgate::rules::RuleSet;
//! # fn demo<S>(service: S) -> haltgate::halt::Halt<S, haltgate::halt::FixedProvider> {
//! let rules = RuleSet::load_dir("rules".as_ref()).expect("rules compile");
//! let stack = tower::ServiceBuilder::new()
//!     .layer(HaltLayer::for_provider("slack", rules).max_body_bytes(128 * 1024))
//!     .service(service);
//! # stack
//! # }
//! ```
//! `examples/embed.rs` runs a complete embedded stack; `examples/axum.rs` puts the layer on
//! the outbound client of an axum application.

mod body;
pub mod decode;
mod dialect;
mod events;
mod future;
mod hooks;
mod layer;
mod provider;
mod response;
mod service;
mod stats;

pub use dialect::{Dialect, HaltRequest, MCP_HALT_CODE};
pub use future::ResponseFuture;
pub use hooks::{
    Admission, BoxFuture, LogOnly, Matched, Outcome, Refusal, RequestInfo, ScopeUnavailable,
    SessionHeader, SessionHooks,
};
pub use layer::{HaltConfig, HaltLayer};
pub use provider::{FixedProvider, ProviderOf};
pub use response::{HaltResponse, HALT_STATUS};
pub(crate) use service::excerpt;
pub use service::{session_header, Halt};
pub use stats::{ClassLabel, HaltStats, MatchLabels, ReasonLabel};

#[cfg(test)]
mod tests;
