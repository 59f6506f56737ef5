//! [`Class`]: what a response, a closure or a halt means for a session — one type for the
//! rules that decide it, the session state that records it and the halt response that
//! reports it.

use std::fmt;
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

/// What a response means for the session, or why a session was closed.
///
/// Rules decide one of the first four ([`Class::RULE_CLASSES`]); closures also record
/// [`Class::Manual`], and the closed set reports [`Class::Superseded`]. Serialized, stored and
/// sent in `x-haltgate-halt` as its snake_case name ([`Class::as_str`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Class {
    /// The agent lost access to the session's resource: close the session, halt.
    LostAccess,
    /// The credential itself is no longer valid: every session on it must stop.
    CredentialInvalid,
    /// The upstream forgot the resumable session id: reset it, do not halt.
    StaleSession,
    /// Nothing to do.
    Pass,
    /// Closed through the control API.
    Manual,
    /// Never stored: the closed set reports it for a request of an old generation when it
    /// knows the session moved on but not how the old one ended.
    Superseded,
    /// Any other lowercase name (`[a-z][a-z0-9_]{0,63}`) read from stored state, for classes
    /// added later. Kept so that such a closure round-trips unchanged.
    Other(&'static str),
}

/// A name that is not a class: not `[a-z][a-z0-9_]{0,63}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("close class {0:?} must match [a-z][a-z0-9_]{{0,63}}")]
pub struct InvalidClass(pub String);

/// A rule class name that is not one of [`Class::RULE_CLASSES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown class `{0}`, expected one of lost_access, credential_invalid, stale_session, pass"
)]
pub struct UnknownClass(pub String);

/// How many distinct [`Class::Other`] names one process keeps. Each is kept for the life of
/// the process so the class stays `Copy`; only names found in stored state reach it.
const MAX_OTHER_NAMES: usize = 1024;

impl Class {
    /// The classes a rule can decide.
    pub const RULE_CLASSES: [Class; 4] = [
        Class::LostAccess,
        Class::CredentialInvalid,
        Class::StaleSession,
        Class::Pass,
    ];

    /// The classes a rule can decide (the name rule code has always used).
    pub const ALL: [Class; 4] = Class::RULE_CLASSES;

    const NAMED: [Class; 6] = [
        Class::LostAccess,
        Class::CredentialInvalid,
        Class::StaleSession,
        Class::Pass,
        Class::Manual,
        Class::Superseded,
    ];

    /// The snake_case name, as serialized and stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::LostAccess => "lost_access",
            Class::CredentialInvalid => "credential_invalid",
            Class::StaleSession => "stale_session",
            Class::Pass => "pass",
            Class::Manual => "manual",
            Class::Superseded => "superseded",
            Class::Other(name) => name,
        }
    }

    /// Any valid class name, as stored state holds it. [`FromStr`] accepts only the classes a
    /// rule can decide.
    pub fn from_name(raw: &str) -> Result<Class, InvalidClass> {
        if let Some(named) = Class::NAMED.into_iter().find(|c| c.as_str() == raw) {
            return Ok(named);
        }
        let mut bytes = raw.bytes();
        let first_ok = bytes.next().is_some_and(|b| b.is_ascii_lowercase());
        let rest_ok = bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !first_ok || !rest_ok || raw.len() > 64 {
            return Err(InvalidClass(raw.to_owned()));
        }
        intern(raw)
            .map(Class::Other)
            .ok_or_else(|| InvalidClass(raw.to_owned()))
    }
}

/// The one kept copy of an [`Class::Other`] name; `None` once [`MAX_OTHER_NAMES`] are kept.
fn intern(name: &str) -> Option<&'static str> {
    static NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(kept) = names.iter().find(|kept| **kept == name) {
        return Some(kept);
    }
    if names.len() >= MAX_OTHER_NAMES {
        return None;
    }
    let kept: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.push(kept);
    Some(kept)
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Class {
    type Err = UnknownClass;

    /// A class a rule can decide; see [`Class::from_name`] for stored names.
    fn from_str(text: &str) -> Result<Class, UnknownClass> {
        Class::RULE_CLASSES
            .into_iter()
            .find(|class| class.as_str() == text)
            .ok_or_else(|| UnknownClass(text.to_owned()))
    }
}

impl Serialize for Class {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Class {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Class::from_name(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_names_are_refused() {
        for name in [
            "lost_access",
            "credential_invalid",
            "stale_session",
            "pass",
            "manual",
            "superseded",
            "later_class_2",
        ] {
            assert_eq!(Class::from_name(name).unwrap().as_str(), name);
            let json = serde_json::to_string(&Class::from_name(name).unwrap()).unwrap();
            assert_eq!(json, format!("\"{name}\""));
        }
        assert!(Class::from_name("Lost").is_err());
        assert!(Class::from_name("").is_err());
        assert!(Class::from_name("9lives").is_err());
        assert!(Class::from_name(&"a".repeat(65)).is_err());
        assert_eq!(
            Class::from_name("later_class_2"),
            Class::from_name("later_class_2")
        );
    }

    #[test]
    fn rules_parse_only_rule_classes() {
        for class in Class::RULE_CLASSES {
            assert_eq!(class.as_str().parse::<Class>(), Ok(class));
        }
        assert!("manual".parse::<Class>().is_err());
        assert!("superseded".parse::<Class>().is_err());
    }
}
