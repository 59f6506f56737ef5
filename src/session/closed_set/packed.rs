//! The compact in-memory form of the closed set: 128-bit keys and 64-bit marks.
//!
//! A million closed sessions must fit in well under 64 bytes each, so an entry is a 16-byte
//! key and one `u64`. The closure details a halt response names (class and rule) repeat
//! across sessions, so they are interned once and referenced by a 10-bit index.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::super::credential::Fingerprint;
use super::super::model::{Class, MAX_EXACT_INTEGER};

/// A session id reduced to 128 bits by two independently seeded SipHash runs. Seeds are per
/// process, so nobody can aim a collision at a closed session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Key(pub(super) [u64; 2]);

impl std::hash::Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0[0]);
    }
}

/// The key already is a keyed hash: the map uses it as it is.
#[derive(Default)]
pub(super) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `Key`; fold anything else so the hasher stays total.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub(super) type KeyMap<V> = HashMap<Key, V, BuildHasherDefault<PassThrough>>;

pub(super) struct SessionKeys {
    first: RandomState,
    second: RandomState,
}

impl SessionKeys {
    pub(super) fn new() -> Self {
        SessionKeys {
            first: RandomState::new(),
            second: RandomState::new(),
        }
    }

    pub(super) fn key(&self, id: &str) -> Key {
        Key([self.first.hash_one(id), self.second.hash_one(id)])
    }
}

/// A fingerprint is already a keyed hash; its first 128 bits are the key.
pub(super) fn credential_key(fingerprint: &Fingerprint) -> Key {
    let hex = fingerprint.as_str().as_bytes();
    let word = |range: std::ops::Range<usize>| {
        hex[range].iter().fold(0u64, |acc, &c| {
            let nibble = match c {
                b'0'..=b'9' => c - b'0',
                _ => c - b'a' + 10,
            };
            (acc << 4) | u64::from(nibble)
        })
    };
    Key([word(0..16), word(16..32)])
}

const EPOCH_BITS: u32 = 53;
const EPOCH_MASK: u64 = (1 << EPOCH_BITS) - 1;
const CLOSED_BIT: u64 = 1 << EPOCH_BITS;
const DETAIL_SHIFT: u32 = EPOCH_BITS + 1;

/// `epoch` (53 bits, the exact-integer range every backend holds), a closed flag, and the
/// index of the interned detail of the closure at `epoch` (10 bits; 0 = none known).
/// For credentials the epoch is the block generation and "closed" means blocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Mark(u64);

impl Mark {
    pub(super) fn new(epoch: u64, closed: bool, detail: DetailRef) -> Self {
        // Stores refuse larger epochs; one read from damaged data saturates rather than
        // wrapping to a smaller generation (which could reopen a closed session here).
        let epoch = epoch.min(MAX_EXACT_INTEGER);
        let closed = if closed { CLOSED_BIT } else { 0 };
        Mark(epoch | closed | (u64::from(detail.0) << DETAIL_SHIFT))
    }

    pub(super) fn epoch(self) -> u64 {
        self.0 & EPOCH_MASK
    }

    pub(super) fn closed(self) -> bool {
        self.0 & CLOSED_BIT != 0
    }

    pub(super) fn detail(self) -> DetailRef {
        DetailRef((self.0 >> DETAIL_SHIFT) as u16)
    }
}

/// What a halt names: the class and rule of a closure or block.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Detail {
    pub class: Class,
    pub rule: Arc<str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct DetailRef(u16);

/// A class a rule was seen with, and the slot of that pair.
type ClassSlot = (Class, u16);

impl DetailRef {
    pub(super) const NONE: DetailRef = DetailRef(0);
    /// The table is full; the detail is kept per key in the overflow map.
    const OVERFLOW: DetailRef = DetailRef(1023);
}

/// Interned details. Distinct (class, rule) pairs are few (one per rule that ever closed a
/// session); past 1,022 of them, details are kept per key instead.
pub(super) struct Details {
    table: RwLock<Vec<Arc<Detail>>>,
    /// rule → the classes it was seen with and their slots.
    index: Mutex<HashMap<Box<str>, Vec<ClassSlot>>>,
    overflow: RwLock<KeyMap<Arc<Detail>>>,
}

impl Details {
    pub(super) fn new() -> Self {
        Details {
            table: RwLock::new(Vec::new()),
            index: Mutex::new(HashMap::new()),
            overflow: RwLock::new(KeyMap::default()),
        }
    }

    /// The reference for `(class, rule)`; allocates only the first time a pair is seen.
    pub(super) fn intern(&self, key: Key, class: &Class, rule: &str) -> DetailRef {
        let mut index = self.index.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(&(_, slot)) = index
            .get(rule)
            .and_then(|classes| classes.iter().find(|(c, _)| c == class))
        {
            return DetailRef(slot);
        }
        let detail = Arc::new(Detail {
            class: *class,
            rule: Arc::from(rule),
        });
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        if table.len() < usize::from(DetailRef::OVERFLOW.0 - 1) {
            table.push(detail);
            let slot = table.len() as u16;
            index.entry(rule.into()).or_default().push((*class, slot));
            return DetailRef(slot);
        }
        drop(table);
        self.overflow
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, detail);
        DetailRef::OVERFLOW
    }

    pub(super) fn get(&self, key: Key, detail: DetailRef) -> Option<Arc<Detail>> {
        match detail {
            DetailRef::NONE => None,
            DetailRef::OVERFLOW => self
                .overflow
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&key)
                .cloned(),
            DetailRef(slot) => self
                .table
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(usize::from(slot) - 1)
                .cloned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_the_full_epoch_range() {
        for epoch in [0, 1, 41, MAX_EXACT_INTEGER] {
            for closed in [false, true] {
                let mark = Mark::new(epoch, closed, DetailRef(1022));
                assert_eq!(
                    (mark.epoch(), mark.closed(), mark.detail()),
                    (epoch, closed, DetailRef(1022))
                );
            }
        }
    }

    #[test]
    fn details_past_the_table_go_to_the_overflow_map() {
        let details = Details::new();
        let keys = SessionKeys::new();
        let class = Class::LostAccess;
        let first = details.intern(keys.key("a"), &class, "rule.0");
        assert_eq!(details.intern(keys.key("b"), &class, "rule.0"), first);
        assert_ne!(
            details.intern(keys.key("b"), &Class::Manual, "rule.0"),
            first,
            "the class is part of the detail"
        );
        for i in 2..1022 {
            details.intern(keys.key("x"), &class, &format!("rule.{i}"));
        }
        let late = details.intern(keys.key("late"), &class, "rule.5000");
        assert_eq!(late, DetailRef::OVERFLOW);
        assert_eq!(
            &*details.get(keys.key("late"), late).unwrap().rule,
            "rule.5000"
        );
        assert_eq!(&*details.get(keys.key("a"), first).unwrap().rule, "rule.0");
    }

    #[test]
    fn credential_keys_read_the_fingerprint_prefix() {
        let fp = Fingerprint::parse(&format!(
            "{}{}",
            "0123456789abcdef".repeat(2),
            "f".repeat(32)
        ))
        .unwrap();
        assert_eq!(
            credential_key(&fp).0,
            [0x0123_4567_89ab_cdef, 0x0123_4567_89ab_cdef]
        );
    }
}
