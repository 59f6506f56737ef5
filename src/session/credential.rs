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
    check_exact, check_rule, hex, truncate_at_char, unix_ms_now, Class, MAX_DETAIL_BYTES,
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

    /// Fingerprint of raw bytes. Requests go through [`CredentialKey::fingerprint_of`], which
    /// fingerprints the credential itself rather than the header bytes around it.
    pub fn fingerprint(&self, raw: &[u8]) -> Fingerprint {
        let tag = hmac::sign(&self.0, raw);
        Fingerprint(Arc::from(hex(tag.as_ref())))
    }

    pub fn fingerprint_of(&self, credential: &Presented) -> Fingerprint {
        self.fingerprint(credential.canonical.as_bytes())
    }
}

impl fmt::Debug for CredentialKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CredentialKey(..)")
    }
}

/// Where a request carried a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialPlace {
    /// `Authorization`, any scheme or none (Linear API keys are sent bare).
    Authorization,
    /// `x-api-key` (Anthropic).
    ApiKey,
    /// `token` or `access_token` in the query string (Slack, RFC 6750 §2.3).
    Query,
    /// `token` or `access_token` in an `application/x-www-form-urlencoded` body (Slack,
    /// RFC 6750 §2.2).
    FormBody,
}

/// A credential a request presents, reduced to what the provider authenticates with, so
/// spelling never decides whether a block applies: the auth scheme is case-insensitive,
/// whitespace around and inside the value is normalised, and a token is the same credential
/// whether it arrives as `Bearer`, `token`, bare, in `x-api-key` or as a `token` parameter.
/// Other schemes (`Basic`, …) keep their lowercased scheme as part of the credential.
#[derive(Clone, PartialEq, Eq)]
pub struct Presented {
    canonical: String,
    pub place: CredentialPlace,
}

impl fmt::Debug for Presented {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the credential itself.
        write!(f, "Presented({:?}, ..)", self.place)
    }
}

/// Query and form parameters that carry a token.
const TOKEN_PARAMETERS: [&str; 2] = ["token", "access_token"];
/// Schemes whose value is a bare token, equal to the same token sent any other way.
const TOKEN_SCHEMES: [&str; 2] = ["bearer", "token"];

impl Presented {
    /// Every credential in the headers and the query string, in the order a provider reads
    /// them: `Authorization`, `x-api-key`, then the query.
    pub fn in_head(headers: &http::HeaderMap, query: Option<&str>) -> Vec<Presented> {
        let mut found = Vec::new();
        for value in headers.get_all(http::header::AUTHORIZATION) {
            if let Some(canonical) = authorization(value.as_bytes()) {
                found.push(Presented {
                    canonical,
                    place: CredentialPlace::Authorization,
                });
            }
        }
        for value in headers.get_all("x-api-key") {
            if let Some(canonical) = bare_token(value.as_bytes()) {
                found.push(Presented {
                    canonical,
                    place: CredentialPlace::ApiKey,
                });
            }
        }
        if let Some(query) = query {
            found.extend(token_parameters(query.as_bytes(), CredentialPlace::Query));
        }
        found
    }

    /// Every credential of a whole request: its head, then a form body's fields.
    pub fn in_request(
        headers: &http::HeaderMap,
        path_and_query: &str,
        body: &[u8],
    ) -> Vec<Presented> {
        let query = path_and_query.split_once('?').map(|(_, query)| query);
        let mut found = Presented::in_head(headers, query);
        if Presented::body_may_carry(headers) {
            found.extend(Presented::in_form(body));
        }
        found
    }

    /// Credentials in a form-encoded body.
    pub fn in_form(body: &[u8]) -> Vec<Presented> {
        token_parameters(body, CredentialPlace::FormBody)
    }

    /// Whether a request body may carry a credential the head does not show.
    pub fn body_may_carry(headers: &http::HeaderMap) -> bool {
        headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                v.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
    }
}

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Words of a header value split on runs of spaces and tabs.
fn words(raw: &[u8]) -> Vec<&[u8]> {
    raw.split(|&b| is_space(b))
        .filter(|w| !w.is_empty())
        .collect()
}

fn authorization(raw: &[u8]) -> Option<String> {
    let words = words(raw);
    let text = |w: &[u8]| String::from_utf8_lossy(w).into_owned();
    match words.as_slice() {
        [] => None,
        [token] => Some(text(token)),
        [scheme, rest @ ..] => {
            let scheme = String::from_utf8_lossy(scheme).to_ascii_lowercase();
            let value = rest.iter().map(|w| text(w)).collect::<Vec<_>>().join(" ");
            if TOKEN_SCHEMES.contains(&scheme.as_str()) {
                Some(value)
            } else {
                Some(format!("{scheme} {value}"))
            }
        }
    }
}

fn bare_token(raw: &[u8]) -> Option<String> {
    let words = words(raw);
    (!words.is_empty()).then(|| {
        words
            .iter()
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    })
}

fn token_parameters(pairs: &[u8], place: CredentialPlace) -> Vec<Presented> {
    url::form_urlencoded::parse(pairs)
        .filter(|(name, _)| TOKEN_PARAMETERS.contains(&name.as_ref()))
        .filter_map(|(_, value)| {
            let canonical = bare_token(value.as_bytes())?;
            Some(Presented { canonical, place })
        })
        .collect()
}

/// A blocked credential: every request carrying it is halted until it is unblocked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialBlock {
    pub fingerprint: Fingerprint,
    pub class: Class,
    pub rule: String,
    pub reason: String,
    pub blocked_at_ms: u64,
}

impl CredentialBlock {
    pub fn new(
        fingerprint: Fingerprint,
        class: Class,
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

    fn canonical(found: &[Presented]) -> Vec<(&str, CredentialPlace)> {
        found
            .iter()
            .map(|p| (p.canonical.as_str(), p.place))
            .collect()
    }

    fn head(name: &'static str, value: &'static str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(name, http::HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn every_spelling_of_one_token_is_one_credential() {
        let key = CredentialKey::new(b"0123456789abcdef0123456789abcdef").unwrap();
        let spellings = [
            head("authorization", "Bearer xoxb-REDACTED"),
            head("authorization", "bearer xoxb-REDACTED"),
            head("authorization", "BEARER xoxb-REDACTED"),
            head("authorization", "Bearer  xoxb-REDACTED"),
            head("authorization", "Bearer\txoxb-REDACTED"),
            head("authorization", " Bearer xoxb-REDACTED "),
            head("authorization", "token xoxb-REDACTED"),
            head("authorization", "xoxb-REDACTED"),
            head("x-api-key", "xoxb-REDACTED"),
            head("x-api-key", " xoxb-REDACTED\t"),
        ];
        let expected = key.fingerprint(b"xoxb-REDACTED");
        for headers in &spellings {
            let found = Presented::in_head(headers, None);
            assert_eq!(found.len(), 1, "{headers:?}");
            assert_eq!(key.fingerprint_of(&found[0]), expected, "{headers:?}");
        }
        let in_query = Presented::in_head(
            &http::HeaderMap::new(),
            Some("channel=C1&token=xoxb%2DREDACTED"),
        );
        assert_eq!(key.fingerprint_of(&in_query[0]), expected);
        let in_form = Presented::in_form(b"channel=C1&text=hi+there&token=xoxb-REDACTED");
        assert_eq!(
            canonical(&in_form),
            [("xoxb-REDACTED", CredentialPlace::FormBody)]
        );
        assert_eq!(key.fingerprint_of(&in_form[0]), expected);
    }

    #[test]
    fn other_schemes_keep_their_scheme_and_differ_from_bare_tokens() {
        let basic = Presented::in_head(&head("authorization", "BASIC  dXNlcjpwYXNz"), None);
        assert_eq!(
            canonical(&basic),
            [("basic dXNlcjpwYXNz", CredentialPlace::Authorization)]
        );
        assert!(Presented::in_head(&head("authorization", "   "), None).is_empty());
        let all = Presented::in_head(
            &{
                let mut h = head("authorization", "Bearer a");
                h.insert("x-api-key", http::HeaderValue::from_static("b"));
                h
            },
            Some("access_token=c&tokens=x&token"),
        );
        assert_eq!(
            canonical(&all),
            [
                ("a", CredentialPlace::Authorization),
                ("b", CredentialPlace::ApiKey),
                ("c", CredentialPlace::Query)
            ]
        );
        let secret = Presented::in_head(&head("authorization", "Bearer xoxb-REDACTED-9"), None);
        assert!(!format!("{secret:?}").contains("xoxb"));
    }

    #[test]
    fn only_form_bodies_may_carry_a_credential() {
        assert!(Presented::body_may_carry(&head(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8"
        )));
        assert!(!Presented::body_may_carry(&head(
            "content-type",
            "application/json"
        )));
        assert!(!Presented::body_may_carry(&http::HeaderMap::new()));
    }

    #[test]
    fn short_secret_and_bad_fingerprint_are_rejected() {
        assert!(CredentialKey::new(b"short").is_err());
        assert!(Fingerprint::parse("abc").is_err());
        assert!(Fingerprint::parse(&"A".repeat(64)).is_err());
    }
}
