//! Who may use the control API.
//!
//! Checked in this order on every endpoint but `/healthz` and `/readyz`:
//!
//! 1. A request carrying `Origin` comes from a browser page; it is refused (403) unless that
//!    origin is listed in `control.allowed_origins`. This stops a page open in a browser on the
//!    same host from driving a loopback control API that has no token.
//! 2. With a token configured, `Authorization: Bearer <token>` is required (401 with
//!    `WWW-Authenticate: Bearer` otherwise). The read-only token opens `GET`/`HEAD` only (403
//!    for anything else).
//! 3. A request that changes state (not `GET`/`HEAD`) must say `content-type: application/json`
//!    (415 otherwise): browsers cannot send that cross-origin without a preflight, which the
//!    control API never answers.
//!
//! A configured token is kept only as its HMAC-SHA256 under a key drawn at startup; a presented
//! token is checked with [`ring::hmac::verify`], which compares in constant time, so neither the
//! content nor the length of the configured token leaks through timing.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use ring::hmac;
use serde_json::json;

use crate::body::ProxyBody;
use crate::synthetic::json_response;

/// A control-API bearer token. Only its keyed digest is kept; `Debug` shows nothing of it.
#[derive(Clone)]
pub struct ControlToken {
    key: hmac::Key,
    tag: Vec<u8>,
}

impl fmt::Debug for ControlToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ControlToken(redacted)")
    }
}

impl ControlToken {
    /// Shortest token accepted, in bytes.
    pub const MIN_LEN: usize = 16;

    /// A token from its text; a trailing newline is dropped. Errors never quote the token.
    pub fn new(text: &str) -> Result<Self, String> {
        let token = text.trim_end_matches(['\n', '\r']);
        if token.is_empty() {
            return Err("the token is empty".to_owned());
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the token must be visible ASCII without spaces".to_owned());
        }
        if token.len() < Self::MIN_LEN {
            return Err(format!("the token is shorter than {} bytes", Self::MIN_LEN));
        }
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
            .map_err(|_| "no system randomness to key the token digest".to_owned())?;
        let tag = hmac::sign(&key, token.as_bytes()).as_ref().to_vec();
        Ok(Self { key, tag })
    }

    /// Reads a token file at startup; warns when group or others may read it.
    pub fn read_file(path: &Path) -> Result<Self, String> {
        let metadata = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = metadata.permissions().mode();
            if mode & 0o044 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{:o}", mode & 0o777),
                    "Control token file is readable by group or others; chmod 600 it."
                );
            }
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
        Self::new(&text)
    }

    fn matches(&self, presented: &[u8]) -> bool {
        hmac::verify(&self.key, presented, &self.tag).is_ok()
    }
}

/// The access policy of the control listener.
#[derive(Debug, Clone, Default)]
pub struct ControlAuth {
    token: Option<ControlToken>,
    read_token: Option<ControlToken>,
    allowed_origins: Arc<[String]>,
}

/// Why a control request was refused; its response says so without echoing any credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 403: a browser origin not allowed, or a read-only token on a change.
    Forbidden(&'static str),
    /// 401: no token, or not a valid one.
    Unauthorized(&'static str),
    /// 415: a change without `content-type: application/json`.
    NotJson,
}

impl ControlAuth {
    /// `read_token` is only meaningful with `token`; [`crate::config`] checks that.
    pub fn new(
        token: Option<ControlToken>,
        read_token: Option<ControlToken>,
        allowed_origins: Vec<String>,
    ) -> Self {
        Self {
            token,
            read_token,
            allowed_origins: allowed_origins.into(),
        }
    }

    /// Whether requests need a bearer token.
    pub fn requires_token(&self) -> bool {
        self.token.is_some()
    }

    /// Decides whether a request to a protected endpoint may go on.
    pub fn check(&self, method: &Method, headers: &HeaderMap) -> Result<(), Refusal> {
        if let Some(origin) = headers.get(header::ORIGIN) {
            let allowed = origin.to_str().is_ok_and(|origin| {
                self.allowed_origins
                    .iter()
                    .any(|allowed| allowed.eq_ignore_ascii_case(origin))
            });
            if !allowed {
                return Err(Refusal::Forbidden(
                    "requests from this browser origin are not allowed",
                ));
            }
        }
        let reads_only = matches!(*method, Method::GET | Method::HEAD);
        if let Some(token) = &self.token {
            let presented = bearer(headers).ok_or(Refusal::Unauthorized(
                "this endpoint needs Authorization: Bearer <control token>",
            ))?;
            if !token.matches(presented) {
                let read_only = self
                    .read_token
                    .as_ref()
                    .is_some_and(|t| t.matches(presented));
                if !read_only {
                    return Err(Refusal::Unauthorized("the control token is not valid"));
                }
                if !reads_only {
                    return Err(Refusal::Forbidden(
                        "the read-only control token allows GET and HEAD only",
                    ));
                }
            }
        }
        if !reads_only && !is_json(headers) {
            return Err(Refusal::NotJson);
        }
        Ok(())
    }
}

/// The token of the one `Authorization: Bearer` header, if there is exactly one.
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let bytes = value.as_bytes();
    let (scheme, rest) = bytes.split_at(bytes.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Forbidden(_) => StatusCode::FORBIDDEN,
            Refusal::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Refusal::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        let message = match &self {
            Refusal::Forbidden(message) | Refusal::Unauthorized(message) => message,
            Refusal::NotJson => "requests that change state need content-type: application/json",
        };
        let mut response = json_response(self.status(), json!({ "error": message }));
        if let Refusal::Unauthorized(_) = self {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"haltgate-control\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "ctl-REDACTED-0123456789";
    const READ: &str = "ctl-READ-REDACTED-0123456789";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, value.parse().unwrap());
        }
        h
    }

    fn auth() -> ControlAuth {
        ControlAuth::new(
            Some(ControlToken::new(TOKEN).unwrap()),
            Some(ControlToken::new(READ).unwrap()),
            vec!["https://ops.example.com".into()],
        )
    }

    #[test]
    fn tokens_must_be_long_visible_ascii_and_lose_their_newline() {
        assert!(ControlToken::new("").is_err());
        assert!(ControlToken::new("\n").is_err());
        assert!(ControlToken::new("short-token").is_err());
        assert!(ControlToken::new("has a space in it 0123").is_err());
        let token = ControlToken::new(&format!("{TOKEN}\n")).unwrap();
        assert!(token.matches(TOKEN.as_bytes()));
        assert!(!token.matches(b"ctl-REDACTED-012345678"));
        assert!(!format!("{token:?}").contains("REDACTED"));
    }

    #[test]
    fn full_token_opens_everything_read_token_only_reads() {
        let a = auth();
        let full = format!("Bearer {TOKEN}");
        let read = format!("bearer {READ}");
        let json = ("content-type", "application/json; charset=utf-8");
        assert_eq!(
            a.check(&Method::GET, &headers(&[("authorization", &full)])),
            Ok(())
        );
        assert_eq!(
            a.check(&Method::POST, &headers(&[("authorization", &full), json])),
            Ok(())
        );
        assert_eq!(
            a.check(&Method::GET, &headers(&[("authorization", &read)])),
            Ok(())
        );
        assert!(matches!(
            a.check(&Method::DELETE, &headers(&[("authorization", &read), json])),
            Err(Refusal::Forbidden(_))
        ));
        for bad in ["", "Bearer", "Bearer x", "Basic Y3RsOmN0bA==", TOKEN] {
            let h = if bad.is_empty() {
                headers(&[])
            } else {
                headers(&[("authorization", bad)])
            };
            assert!(
                matches!(a.check(&Method::GET, &h), Err(Refusal::Unauthorized(_))),
                "{bad}"
            );
        }
        let twice = headers(&[("authorization", &full), ("authorization", &full)]);
        assert!(matches!(
            a.check(&Method::GET, &twice),
            Err(Refusal::Unauthorized(_))
        ));
    }

    #[test]
    fn foreign_origins_and_non_json_changes_are_refused_even_without_a_token() {
        let open = ControlAuth::default();
        let json = ("content-type", "application/json");
        assert_eq!(open.check(&Method::POST, &headers(&[json])), Ok(()));
        assert_eq!(
            open.check(&Method::POST, &headers(&[("content-type", "text/plain")])),
            Err(Refusal::NotJson)
        );
        assert_eq!(
            open.check(&Method::DELETE, &headers(&[])),
            Err(Refusal::NotJson)
        );
        assert!(matches!(
            open.check(
                &Method::GET,
                &headers(&[("origin", "https://evil.example")])
            ),
            Err(Refusal::Forbidden(_))
        ));
        let a = auth();
        let full = format!("Bearer {TOKEN}");
        let allowed = [
            ("origin", "https://OPS.example.com"),
            ("authorization", &full),
        ];
        assert_eq!(a.check(&Method::GET, &headers(&allowed)), Ok(()));
    }
}
