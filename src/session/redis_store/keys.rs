//! The Redis key schema.
//!
//! Subjects (session ids, credential fingerprints) are spread over [`PARTITIONS`] fixed
//! partitions by FNV-1a. Every key of a partition carries the hash tag `{N}`, so one script
//! may touch a session's keys together with its partition's due index, marks and event
//! stream, also in Redis Cluster. The partition count is part of the data layout: changing it
//! needs a migration.
//!
//! | key | type | contents |
//! |---|---|---|
//! | `P:{N}:s:<sid>` | hash | epoch, status, scope, resume, opened_at_ms, closure fields |
//! | `P:{N}:wk:<sid>` | zset | the session's pending wakeup ids, scored by due ms |
//! | `P:{N}:wkp:<sid>` | hash | wakeup id → payload JSON |
//! | `P:{N}:due` | zset | session id → its earliest due ms (the claim index) |
//! | `P:{N}:marks` | hash | session id → JSON mark of sessions with closure history |
//! | `P:{N}:events` | stream | the partition's event log, trimmed with `MAXLEN ~` |
//! | `P:{N}:creds` | hash | fingerprint → blocked credential JSON |
//! | `P:{N}:credgen` | hash | fingerprint → generation (never deleted) |
//! | `P:secret` | string | the deployment secret, hex |
//! | `P:events` | channel | live notifications (plain PUBLISH; cluster-wide on a cluster) |
//!
//! The type-specific part (`s`, `wk`, `wkp`) comes before the session id, so no session id,
//! whatever `:` it contains, can name another session's key.

pub(crate) const PARTITIONS: usize = 16;

/// FNV-1a 64: stable across processes, versions and platforms, unlike std's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

pub(crate) fn partition_of(subject: &str) -> usize {
    (fnv1a(subject.as_bytes()) % PARTITIONS as u64) as usize
}

#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    fn part(&self, partition: usize, rest: &str) -> String {
        format!("{}:{{{partition}}}:{rest}", self.prefix)
    }

    pub(crate) fn session(&self, partition: usize, sid: &str) -> String {
        self.part(partition, &format!("s:{sid}"))
    }

    pub(crate) fn wakeups(&self, partition: usize, sid: &str) -> String {
        self.part(partition, &format!("wk:{sid}"))
    }

    pub(crate) fn payloads(&self, partition: usize, sid: &str) -> String {
        self.part(partition, &format!("wkp:{sid}"))
    }

    pub(crate) fn due(&self, partition: usize) -> String {
        self.part(partition, "due")
    }

    pub(crate) fn marks(&self, partition: usize) -> String {
        self.part(partition, "marks")
    }

    pub(crate) fn events(&self, partition: usize) -> String {
        self.part(partition, "events")
    }

    pub(crate) fn credentials(&self, partition: usize) -> String {
        self.part(partition, "creds")
    }

    pub(crate) fn generations(&self, partition: usize) -> String {
        self.part(partition, "credgen")
    }

    pub(crate) fn secret(&self) -> String {
        format!("{}:secret", self.prefix)
    }

    /// Closures made before this time (unix ms) already had their details pruned.
    pub(crate) fn details_pruned_before(&self) -> String {
        format!("{}:details_pruned_before", self.prefix)
    }

    pub(crate) fn channel(&self) -> String {
        format!("{}:events", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_spread() {
        // Pinned values: a change here moves existing data to other keys.
        assert_eq!(partition_of("s1"), partition_of("s1"));
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let mut seen = [0usize; PARTITIONS];
        for i in 0..1600 {
            seen[partition_of(&format!("session-{i}"))] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
    }

    #[test]
    fn every_partition_key_has_the_partition_tag_first() {
        let keys = Keys::new("hg");
        assert_eq!(keys.session(3, "a:{x}"), "hg:{3}:s:a:{x}");
        assert_eq!(keys.wakeups(3, "a"), "hg:{3}:wk:a");
        assert_ne!(keys.session(3, "wk:a"), keys.wakeups(3, "a"));
    }
}
