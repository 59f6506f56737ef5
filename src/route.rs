//! Routes: the first path segment of an agent request names the upstream it goes to.
//!
//! `/NAME/REST?QUERY` is sent to `UPSTREAM_BASE/REST?QUERY`, byte-exact. The route's provider
//! names the rule file that applies to its responses.
//!
//! `REST` may never climb out of the base path: a dot segment (`.` or `..`) in any spelling an
//! upstream might decode to one is refused (see [`has_dot_segment`]), everything else is
//! copied as it came.

use std::collections::HashMap;
use std::sync::Arc;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::Uri;

use crate::halt::Dialect;

/// One configured upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// First path segment that selects this route.
    pub name: Arc<str>,
    /// Provider whose rules inspect this route's responses (defaults to the name).
    pub provider: Arc<str>,
    /// How halts on this route are written (defaults from the provider).
    pub dialect: Dialect,
    pub scheme: Scheme,
    pub authority: Authority,
    /// The `Host` header requests to this upstream carry, made once.
    pub host: http::HeaderValue,
    /// Base path of the upstream URL without a trailing `/` (empty for none).
    pub base_path: Arc<str>,
}

/// Why a route could not be built from its name and URL.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("route name {0:?} must be 1-64 characters of a-z, 0-9, '-' or '_'")]
    BadName(String),
    #[error("route {name:?}: upstream {url:?} is not an absolute http(s) URL: {reason}")]
    BadUrl {
        name: String,
        url: String,
        reason: String,
    },
    #[error("route {0:?} is defined twice")]
    Duplicate(String),
}

impl Route {
    pub fn new(name: &str, provider: &str, url: &str) -> Result<Self, RouteError> {
        let valid_name = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        };
        if !valid_name(name) {
            return Err(RouteError::BadName(name.to_owned()));
        }
        if !valid_name(provider) {
            return Err(RouteError::BadName(provider.to_owned()));
        }
        let bad = |reason: &str| RouteError::BadUrl {
            name: name.to_owned(),
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        let scheme = uri.scheme().cloned().ok_or_else(|| bad("no scheme"))?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(bad("scheme must be http or https"));
        }
        let authority = uri.authority().cloned().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("credentials in the URL are not supported"));
        }
        if uri.query().is_some() {
            return Err(bad("a query string is not allowed in an upstream URL"));
        }
        let base_path = uri.path().trim_end_matches('/');
        let host = http::HeaderValue::from_str(authority.as_str())
            .map_err(|_| bad("the host is not valid in a Host header"))?;
        Ok(Self {
            name: name.into(),
            provider: provider.into(),
            dialect: Dialect::for_provider(provider),
            scheme,
            authority,
            host,
            base_path: base_path.into(),
        })
    }

    /// Writes this route's halts in `dialect` instead of its provider's.
    pub fn with_dialect(self, dialect: Dialect) -> Self {
        Self { dialect, ..self }
    }

    /// The upstream URI for a request whose path after `/NAME` is `rest` (empty or starting
    /// with `/`) and whose query is `query`. Bytes are copied as they came.
    pub fn upstream_uri(&self, rest_and_query: &str) -> Result<Uri, http::Error> {
        let mut path = String::with_capacity(self.base_path.len() + rest_and_query.len() + 1);
        path.push_str(&self.base_path);
        if !rest_and_query.starts_with('/') {
            path.push('/');
        }
        path.push_str(rest_and_query);
        let path_and_query = PathAndQuery::try_from(path)?;
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }

    /// The upstream URL as configured, for logs and docs.
    pub fn url(&self) -> String {
        format!("{}://{}{}", self.scheme, self.authority, self.base_path)
    }
}

/// The routes of one proxy, looked up by the first path segment.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: HashMap<Arc<str>, Arc<Route>>,
}

/// Why a request path has no upstream URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    /// The first segment names no route.
    UnknownRoute,
    /// The path after the route name holds a dot segment, which could leave the base path.
    DotSegment,
    /// Base path and rest do not form a valid URI path.
    BadPath,
}

/// Where an agent request goes: its route and the upstream URI.
#[derive(Debug, Clone)]
pub struct Target {
    pub route: Arc<Route>,
    pub uri: Uri,
}

/// The provider of a routed request: its route's, as the [`Target`] extension the ingress
/// sets names it; the rules see the upstream path (route prefix removed). A request without a
/// target passes uninspected.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteProvider;

impl<B> crate::halt::ProviderOf<B> for RouteProvider {
    fn provider(&self, request: &http::Request<B>) -> Option<Arc<str>> {
        let target = request.extensions().get::<Target>()?;
        Some(target.route.provider.clone())
    }

    fn path_and_query<'r>(&self, request: &'r http::Request<B>) -> &'r str {
        let uri = match request.extensions().get::<Target>() {
            Some(target) => &target.uri,
            None => request.uri(),
        };
        uri.path_and_query()
            .map_or("/", |path_and_query| path_and_query.as_str())
    }

    fn dialect(&self, request: &http::Request<B>, provider: &str) -> crate::halt::Dialect {
        match request.extensions().get::<Target>() {
            Some(target) => target.route.dialect,
            None => crate::halt::Dialect::for_provider(provider),
        }
    }
}

impl RouteTable {
    pub fn new(routes: impl IntoIterator<Item = Route>) -> Result<Self, RouteError> {
        let mut table = HashMap::new();
        for route in routes {
            let name = route.name.clone();
            if table.insert(name.clone(), Arc::new(route)).is_some() {
                return Err(RouteError::Duplicate(name.to_string()));
            }
        }
        Ok(Self { routes: table })
    }

    /// The built-in routes for the known providers, used when none are configured.
    pub fn known_providers() -> Vec<(&'static str, &'static str)> {
        vec![
            ("slack", "https://slack.com"),
            ("github", "https://api.github.com"),
            ("linear", "https://api.linear.app"),
            ("anthropic", "https://api.anthropic.com"),
            ("openai", "https://api.openai.com"),
        ]
    }

    /// The table of [`RouteTable::known_providers`].
    pub fn known() -> Self {
        Self::new(
            Self::known_providers()
                .into_iter()
                .map(|(name, url)| Route::new(name, name, url).expect("built-in routes are valid")),
        )
        .expect("built-in route names are distinct")
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Route>> {
        self.routes.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.values()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// (upstream host, provider) pairs, to name the provider of a recorded exchange by its URL.
    pub fn host_providers(&self) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = self
            .routes
            .values()
            .map(|r| (r.authority.host().to_owned(), r.provider.to_string()))
            .collect();
        pairs.sort();
        pairs.dedup();
        pairs
    }

    /// Resolves an origin-form `path_and_query` (`/NAME/REST?QUERY`).
    pub fn resolve(&self, path_and_query: &str) -> Result<Target, Unresolved> {
        let after_slash = path_and_query
            .strip_prefix('/')
            .ok_or(Unresolved::UnknownRoute)?;
        let end = after_slash.find(['/', '?']).unwrap_or(after_slash.len());
        let route = self
            .routes
            .get(&after_slash[..end])
            .ok_or(Unresolved::UnknownRoute)?;
        let rest = &after_slash[end..];
        let rest_path = rest.split('?').next().unwrap_or_default();
        if has_dot_segment(rest_path) {
            return Err(Unresolved::DotSegment);
        }
        let uri = route.upstream_uri(rest).map_err(|_| Unresolved::BadPath)?;
        Ok(Target {
            route: route.clone(),
            uri,
        })
    }
}

/// Whether `path` holds a segment an upstream could read as `.` or `..`.
///
/// Segments are split at `/` and also at `\`, `%2F` and `%5C` (any case), since some servers
/// decode or fold those into separators; in each segment `%2E` (any case) counts as a dot, and
/// a `;parameter` suffix is ignored (`..;x` is `..` to some servers).
pub fn has_dot_segment(path: &str) -> bool {
    let bytes = path.as_bytes();
    let mut dots = 0usize;
    // Whether the current segment so far consists only of dots.
    let mut only_dots = true;
    let mut in_parameter = false;
    let mut i = 0;
    loop {
        let (separator, width) = match bytes.get(i) {
            None => (true, 0),
            Some(b'/' | b'\\') => (true, 1),
            Some(b'%') => match bytes.get(i + 1..i + 3) {
                Some([b'2', b'f' | b'F'] | [b'5', b'c' | b'C']) => (true, 3),
                _ => (false, 1),
            },
            Some(_) => (false, 1),
        };
        if separator {
            if only_dots && (dots == 1 || dots == 2) {
                return true;
            }
            if i >= bytes.len() {
                return false;
            }
            dots = 0;
            only_dots = true;
            in_parameter = false;
            i += width;
            continue;
        }
        if in_parameter {
            i += 1;
            continue;
        }
        match bytes[i] {
            b'.' => {
                dots += 1;
                i += 1;
            }
            b'%' if matches!(bytes.get(i + 1..i + 3), Some([b'2', b'e' | b'E'])) => {
                dots += 1;
                i += 3;
            }
            b';' => {
                in_parameter = true;
                i += 1;
            }
            _ => {
                only_dots = false;
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        RouteTable::new([
            Route::new("echo", "echo", "http://127.0.0.1:9000/echo").unwrap(),
            Route::new("slack", "slack", "https://slack.com/").unwrap(),
            Route::new("mcp-a", "mcp", "https://mcp.example.com/mcp").unwrap(),
        ])
        .unwrap()
    }

    #[test]
    fn resolves_rest_and_query_byte_exact() {
        let t = table();
        let target = t.resolve("/echo/a/b%2Fc?x=%20y&z").unwrap();
        assert_eq!(
            target.uri.to_string(),
            "http://127.0.0.1:9000/echo/a/b%2Fc?x=%20y&z"
        );
        let target = t.resolve("/slack/api/chat.postMessage").unwrap();
        assert_eq!(
            target.uri.to_string(),
            "https://slack.com/api/chat.postMessage"
        );
        assert_eq!(&*t.resolve("/mcp-a").unwrap().route.provider, "mcp");
        assert_eq!(t.resolve("/mcp-a").unwrap().uri.path(), "/mcp/");
        assert_eq!(
            t.resolve("/slack?x=1").unwrap().uri.to_string(),
            "https://slack.com/?x=1"
        );
    }

    #[test]
    fn unknown_or_prefix_only_names_do_not_resolve() {
        let t = table();
        for path in ["/nope/x", "/echoes/x", "/", ""] {
            assert_eq!(
                t.resolve(path).unwrap_err(),
                Unresolved::UnknownRoute,
                "{path}"
            );
        }
    }

    #[test]
    fn dot_segments_in_any_spelling_are_refused() {
        let t = table();
        for path in [
            "/mcp-a/../admin",
            "/mcp-a/..",
            "/mcp-a/./x",
            "/mcp-a/.",
            "/mcp-a/%2e%2e/admin",
            "/mcp-a/%2E%2e/admin",
            "/mcp-a/.%2e/admin",
            "/mcp-a/%2e./admin",
            "/mcp-a/..%2fadmin",
            "/mcp-a/..%2Fadmin",
            "/mcp-a/..%5cadmin",
            "/mcp-a/x\\..\\admin",
            "/mcp-a/..;jsessionid=1/admin",
            "/mcp-a/a/%2e?x=1",
        ] {
            assert_eq!(
                t.resolve(path).unwrap_err(),
                Unresolved::DotSegment,
                "{path}"
            );
        }
    }

    #[test]
    fn dots_that_are_not_whole_segments_pass_byte_exact() {
        let t = table();
        for rest in [
            "/...",
            "/.well-known/x",
            "/a..b/c.",
            "/x?path=../../etc",
            "/%2e%2e%2e",
            "/%252e%252e/x",
            "/v1.2/file.json",
        ] {
            let target = t.resolve(&format!("/mcp-a{rest}")).unwrap();
            assert_eq!(
                target.uri.path_and_query().unwrap().as_str(),
                format!("/mcp{rest}")
            );
        }
    }

    #[test]
    fn rejects_bad_routes() {
        assert!(matches!(
            Route::new("Bad", "bad", "http://x"),
            Err(RouteError::BadName(_))
        ));
        assert!(matches!(
            Route::new("a", "a", "ftp://x"),
            Err(RouteError::BadUrl { .. })
        ));
        assert!(matches!(
            Route::new("a", "a", "/relative"),
            Err(RouteError::BadUrl { .. })
        ));
        assert!(matches!(
            Route::new("a", "a", "http://x/?q=1"),
            Err(RouteError::BadUrl { .. })
        ));
        let dup = RouteTable::new([
            Route::new("a", "a", "http://x").unwrap(),
            Route::new("a", "a", "http://y").unwrap(),
        ]);
        assert!(matches!(dup, Err(RouteError::Duplicate(_))));
    }
}
