//! Every `x-haltgate-*` header name, in one place.
//!
//! Request headers are read by the halt layer and never sent upstream (the forwarder drops
//! every name starting with [`PREFIX`]); response headers mark what haltgate did.

/// Every haltgate header starts with this; none is forwarded upstream.
pub const PREFIX: &str = "x-haltgate-";

/// Request: the agent session the call belongs to.
pub const SESSION: &str = "x-haltgate-session";
/// Request: the session generation the agent acts in.
pub const EPOCH: &str = "x-haltgate-epoch";

/// Response: `<class>` of a halt response.
pub const HALT: &str = "x-haltgate-halt";
/// Response: the rule that closed the session.
pub const RULE: &str = "x-haltgate-rule";
/// Response: `reset` on an upstream response after which the resume id was cleared.
pub const ACTION: &str = "x-haltgate-action";
/// Response: the kind of a proxy error haltgate answered itself.
pub const ERROR: &str = "x-haltgate-error";

/// Webhook delivery: the event's id.
pub const EVENT_ID: &str = "x-haltgate-event-id";
/// Webhook delivery: when it was signed (unix seconds).
pub const TIMESTAMP: &str = "x-haltgate-timestamp";
/// Webhook delivery: the signature over timestamp and body.
pub const SIGNATURE: &str = "x-haltgate-signature";
