//! Credential fingerprints and blocks.
//!
//! A credential is never stored or logged raw: the proxy keys it with HMAC-SHA256 under a
//! per-deployment secret and keeps only the hex digest. The secret comes from config, or from
//! [`SessionStore::deployment_secret`](super::SessionStore::deployment_secret), so every
//! instance sharing a store computes the same fingerprint for the same token.

use std::fmt;
use std::sync::Arc;

use ring::hmac;
use serde::{Deserialize, Serialize};

use super::error::StoreError;
use super::model::{
    check_exact, check_rule, hex, truncate_at_char, unix_ms_now, CloseClass, MAX_DETAIL_BYTES,
};

/// Hex HMAC-SHA256 of a raw credential: 64 lowercase hex characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(Arc<str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid credential fingerprint: expected 64 lowercase hex characters")]
pub struct InvalidFingerprint;

impl Fingerprint {
    pub fn parse(raw: &str) -> Result<Self, InvalidFingerprint> {
        if raw.len() == 64 && raw.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Fingerprint(Arc::from(raw)))
        } else {
            Err(InvalidFingerprint)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", &*self.0)
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Fingerprint::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// The keyed hash that turns raw credentials into [`Fingerprint`]s.
#[derive(Clone)]
pub struct CredentialKey(hmac::Key);

impl CredentialKey {
    /// Shortest secret accepted, in bytes.
    pub const MIN_SECRET_LEN: usize = 16;

    pub fn new(secret: &[u8]) -> Result<Self, StoreError> {
        if secret.len() < Self::MIN_SECRET_LEN {
            return Err(StoreError::invalid(format!(
                "credential secret is {} bytes, at least {} are needed",
                secret.len(),
                Self::MIN_SECRET_LEN
            )));
        }
        Ok(CredentialKey(hmac::Key::new(hmac::HMAC_SHA256, secret)))
    }

    /// Fingerprint of the raw header value (`Authorization` or `x-api-key`), as sent.
    pub fn fingerprint(&self, raw: &[u8]) -> Fingerprint {
        let tag = hmac::sign(&self.0, raw);
        Fingerprint(Arc::from(hex(tag.as_ref())))
    }
}

impl fmt::Debug for CredentialKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CredentialKey(..)")
    }
}

/// A blocked credential: every request carrying it is halted until it is unblocked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialBlock {
    pub fingerprint: Fingerprint,
    pub class: CloseClass,
    pub rule: String,
    pub reason: String,
    pub blocked_at_ms: u64,
}

impl CredentialBlock {
    pub fn new(
        fingerprint: Fingerprint,
        class: CloseClass,
        rule: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        CredentialBlock {
            fingerprint,
            class,
            rule: rule.into(),
            reason: reason.into(),
            blocked_at_ms: unix_ms_now(),
        }
    }

    pub(crate) fn normalized(&self) -> Result<CredentialBlock, StoreError> {
        check_rule(&self.rule)?;
        check_exact("blocked_at_ms", self.blocked_at_ms)?;
        let mut block = self.clone();
        block.reason = truncate_at_char(&self.reason, MAX_DETAIL_BYTES).to_owned();
        Ok(block)
    }
}

/// The secret length generated when none is configured.
pub(crate) const GENERATED_SECRET_LEN: usize = 32;

pub(crate) fn generate_secret() -> Result<Vec<u8>, StoreError> {
    use ring::rand::SecureRandom;
    let mut secret = vec![0u8; GENERATED_SECRET_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| StoreError::Failed("the system random generator failed".into()))?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_keyed_and_stable() {
        let key = CredentialKey::new(b"0123456789abcdef0123456789abcdef").unwrap();
        let a = key.fingerprint(b"Bearer xoxb-REDACTED");
        assert_eq!(a, key.fingerprint(b"Bearer xoxb-REDACTED"));
        assert_ne!(a, key.fingerprint(b"Bearer xoxb-REDACTED2"));
        let other = CredentialKey::new(b"fedcba9876543210fedcba9876543210").unwrap();
        assert_ne!(a, other.fingerprint(b"Bearer xoxb-REDACTED"));
        assert!(Fingerprint::parse(a.as_str()).is_ok());
        assert!(!a.as_str().contains("xoxb"));
    }

    #[test]
    fn fingerprint_matches_known_hmac_sha256_vector() {
        // RFC 4231 test case 2 uses a 4-byte key; this one uses a 20-byte key of 0x0b (case 1).
        let key = CredentialKey::new(&[0x0b; 20]).unwrap();
        assert_eq!(
            key.fingerprint(b"Hi There").as_str(),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
    }

    #[test]
    fn short_secret_and_bad_fingerprint_are_rejected() {
        assert!(CredentialKey::new(b"short").is_err());
        assert!(Fingerprint::parse("abc").is_err());
        assert!(Fingerprint::parse(&"A".repeat(64)).is_err());
    }
}
