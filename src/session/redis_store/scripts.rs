//! The Lua scripts, one per atomic operation.
//!
//! Each starts with a `#!lua` shebang, which makes Redis (7.0+) enforce that the script
//! touches only the keys it declares and that they share one slot: a mistake fails loudly
//! in tests instead of silently working on one node. `close` adds `allow-oom` so a closure
//! is still recorded when Redis is at maxmemory (it frees memory first); the read-only
//! scripts declare `no-writes`. `redis::Script` sends EVALSHA and reloads on NOSCRIPT.

use std::sync::OnceLock;

use redis::Script;

const EMIT: &str = include_str!("lua/emit.lua");

pub(crate) struct Scripts {
    pub close: Script,
    pub open: Script,
    pub reset_resume: Script,
    pub add_wakeup: Script,
    pub claim_session: Script,
    pub ack_wakeup: Script,
    pub pending: Script,
    pub block: Script,
    pub unblock: Script,
    pub read_events: Script,
    pub snapshot: Script,
}

fn writer(flags: &str, body: &str) -> Script {
    Script::new(&format!("#!lua{flags}\n{EMIT}\n{body}"))
}

fn plain(flags: &str, body: &str) -> Script {
    Script::new(&format!("#!lua{flags}\n{body}"))
}

pub(crate) fn scripts() -> &'static Scripts {
    static SCRIPTS: OnceLock<Scripts> = OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        close: writer(" flags=allow-oom", include_str!("lua/close.lua")),
        open: writer("", include_str!("lua/open.lua")),
        reset_resume: writer("", include_str!("lua/reset_resume.lua")),
        add_wakeup: plain("", include_str!("lua/add_wakeup.lua")),
        claim_session: plain("", include_str!("lua/claim_session.lua")),
        ack_wakeup: plain("", include_str!("lua/ack_wakeup.lua")),
        pending: plain(" flags=no-writes", include_str!("lua/pending.lua")),
        block: writer("", include_str!("lua/block.lua")),
        unblock: writer("", include_str!("lua/unblock.lua")),
        read_events: plain(" flags=no-writes", include_str!("lua/read_events.lua")),
        snapshot: plain(" flags=no-writes", include_str!("lua/snapshot.lua")),
    })
}
