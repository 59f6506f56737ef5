//! haltgate: a reverse proxy that halts an agent session when a tool call shows it lost access.

pub mod classify;
pub mod rules;
