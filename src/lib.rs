//! haltgate: a reverse proxy between AI agents and the provider APIs they call as tools.
//!
//! When a tool call shows that the agent lost access (bot removed from a channel, app
//! uninstalled, token revoked), haltgate closes the agent's session, cancels its pending
//! wakeups and answers with a synthetic halt response, so no later call burns tokens against
//! the same wall.
//!
//! # Path of one request
//! 1. [`server`] accepts the connection (HTTP/1.1 or HTTP/2) and hands each request to the stack.
//! 2. [`ingress::Ingress`] refuses forward-proxy use, resolves the route from the first path
//!    segment ([`route`]), and turns forwarding failures into [`synthetic`] answers.
//! 3. [`forward::Forward`] rewrites the request for its upstream and sends it through the
//!    pooled [`upstream`] client; the answer streams back through the same layers.
//!
//! # Layout
//! - [`app`]: assembles listeners, stack and shutdown from a [`config::Config`].
//! - [`config`]: the file format, flag overrides and validation.
//! - [`control`]: health, readiness and the control API; [`control_auth`] decides who may use it.
//! - [`halt`]: the inspection middleware and the halt response.
//! - [`rules`]: the pure rule engine; [`classify`] runs it over recorded exchanges;
//!   [`rule_reload`] puts rule edits live while the proxy serves.
//! - [`session`]: session stores (redb, Redis), the local closed set, the outbox;
//!   [`session_gate`] puts them in the request path; [`storm`] keeps a provider outage from
//!   closing every session at once.
//! - [`body`], [`shutdown`]: the body type and the shutdown signal every layer shares.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

pub mod app;
pub mod body;
#[warn(missing_docs)]
pub mod class;
pub mod classify;
pub mod config;
pub mod control;
pub mod control_auth;
pub mod forward;
#[warn(missing_docs)]
pub mod halt;
#[warn(missing_docs)]
pub mod headers;
pub mod ingress;
pub mod metrics;
pub mod observe;
pub mod operator;
pub mod route;
pub mod rule_reload;
pub mod rules;
pub mod server;
pub mod session;
pub mod session_gate;
pub mod shutdown;
pub mod storm;
pub mod synthetic;
pub mod upstream;
pub mod webhook;
