//! Hostile input at every edge, over real sockets: the control API's access rules, connection
//! hygiene on both listeners, path escape, cheap HTTP/2 abuse, and the request-parsing
//! defences that must keep holding. Timeouts are configured small; checks of "closed within"
//! use generous bounds so a loaded machine does not fail them.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use haltgate::body::{self, ProxyBody};
use haltgate::config::{Config, ConfigSpec};
use haltgate::halt::session_header;
use haltgate::route::{Route, RouteTable, Unresolved};
use http::{HeaderMap, HeaderValue, Request};
use hyper_util::rt::{TokioExecutor, TokioIo};
use proptest::prelude::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "ctl-REDACTED-0123456789abcdef";
const READ_TOKEN: &str = "ctl-READ-REDACTED-0123456789";
/// Small enough to keep the suite fast, checked against bounds ten times larger.
const FAST_LIMITS: &str = r#"
[limits]
header_read_timeout = "300ms"
idle_timeout = "300ms"
body_read_timeout = "300ms"
"#;
const GENEROUS: Duration = Duration::from_secs(5);

fn spec(toml: &str) -> ConfigSpec {
    ConfigSpec::from_toml(toml, "test.toml").unwrap()
}

fn echo_handler() -> Handler {
    handler(|seen: Seen| async move {
        let mut r = http::Response::new(body::full(seen.body.clone()));
        r.headers_mut().insert(
            "x-seen-path",
            seen.uri.path_and_query().unwrap().as_str().parse().unwrap(),
        );
        r
    })
}

async fn echo_proxy(toml: &str) -> (Upstream, TestProxy) {
    let upstream = start_upstream(echo_handler()).await;
    let flags = proxy_flags(&[("echo", format!("{}/base", upstream.http_url()))]);
    let proxy = start_proxy_with(spec(toml), flags, tempfile::tempdir().unwrap()).await;
    (upstream, proxy)
}

/// Writes `request` and reads until the server closes the connection.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // The server may answer (431, 413, …) and close before a large request is written whole;
    // a write that fails then is expected, and the answer is still read.
    let request = request.to_vec();
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
        writer
    });
    let mut out = Vec::new();
    within(GENEROUS, async {
        let mut buf = [0u8; 8192];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    drop(writing.await);
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads until EOF or reset; fails the test if the server keeps the connection past 5 s.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    within(GENEROUS, async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    out
}

async fn h2_connect(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<ProxyBody>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    (sender, tokio::spawn(connection))
}

fn control_request(
    proxy: &TestProxy,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Request<ProxyBody> {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", proxy.control_addr()));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(body::full(body.to_owned())).unwrap()
}

async fn status_of(request: Request<ProxyBody>) -> (u16, http::HeaderMap) {
    let response = client().request(request).await.unwrap();
    (response.status().as_u16(), response.headers().clone())
}

// === The control API ===

#[tokio::test]
async fn control_api_requires_the_bearer_token_when_one_is_set() {
    let mut flags = proxy_flags(&[]);
    flags.control_token = Some(TOKEN.into());
    let proxy = start_proxy(flags).await;
    let bearer = format!("Bearer {TOKEN}");
    let json = ("content-type", "application/json");

    for path in [
        "/v1/stats",
        "/metrics",
        "/v1/events",
        "/v1/credentials",
        "/v1/sessions/s1",
    ] {
        let (status, headers) = status_of(control_request(&proxy, "GET", path, &[], "")).await;
        assert_eq!(status, 401, "{path}");
        assert!(headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
        let wrong = [("authorization", "Bearer ctl-REDACTED-0123456789abcdeX")];
        let (status, _) = status_of(control_request(&proxy, "GET", path, &wrong, "")).await;
        assert_eq!(status, 401, "{path}");
    }
    let (status, _) = status_of(control_request(
        &proxy,
        "POST",
        "/v1/sessions/s1/close",
        &[json],
        r#"{"reason": "no token"}"#,
    ))
    .await;
    assert_eq!(status, 401);
    let (status, _) = status_of(control_request(
        &proxy,
        "POST",
        "/v1/wakeups/claim",
        &[json],
        r#"{"limit": 10}"#,
    ))
    .await;
    assert_eq!(status, 401);

    // Health stays open for probes.
    for path in ["/healthz", "/readyz"] {
        let response = client()
            .request(control_request(&proxy, "GET", path, &[], ""))
            .await
            .unwrap();
        assert_ne!(response.status(), 401, "{path}");
    }

    let auth = ("authorization", bearer.as_str());
    let (status, _) = status_of(control_request(&proxy, "GET", "/v1/stats", &[auth], "")).await;
    assert_eq!(status, 200);
    let (status, _) = status_of(control_request(
        &proxy,
        "POST",
        "/v1/sessions/s1/close",
        &[auth, json],
        r#"{"reason": "operator"}"#,
    ))
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn read_only_token_reads_but_cannot_change_state() {
    let mut flags = proxy_flags(&[]);
    flags.control_token = Some(TOKEN.into());
    flags.control_read_token = Some(READ_TOKEN.into());
    let proxy = start_proxy(flags).await;
    let read = format!("Bearer {READ_TOKEN}");
    let auth = ("authorization", read.as_str());
    let (status, _) = status_of(control_request(&proxy, "GET", "/v1/stats", &[auth], "")).await;
    assert_eq!(status, 200);
    for (method, path, body) in [
        ("PUT", "/v1/sessions/s1", "{}"),
        ("POST", "/v1/sessions/s1/close", r#"{"reason": "x"}"#),
        ("POST", "/v1/wakeups/claim", r#"{"limit": 10}"#),
        ("DELETE", "/v1/credentials/00", ""),
    ] {
        let (status, _) = status_of(control_request(
            &proxy,
            method,
            path,
            &[auth, ("content-type", "application/json")],
            body,
        ))
        .await;
        assert_eq!(status, 403, "{method} {path}");
    }
    let (status, _) = status_of(control_request(
        &proxy,
        "GET",
        "/v1/sessions/s1",
        &[auth],
        "",
    ))
    .await;
    assert_eq!(status, 404, "nothing was created");
}

#[tokio::test]
async fn browser_requests_cannot_drive_a_loopback_control_api_without_a_token() {
    let proxy = start_proxy(proxy_flags(&[])).await;
    let addr = proxy.control_addr();
    // A "simple" cross-origin POST as any web page can send it.
    let simple = format!(
        "POST /v1/sessions/victim/close HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://evil.example\r\n\
         Content-Type: text/plain\r\nContent-Length: 19\r\nConnection: close\r\n\r\n{{\"reason\": \"evil\"}}"
    );
    let response = raw_exchange(addr, simple.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    // Same without Origin (a page that hides it): still not JSON, so refused.
    let no_origin = simple.replace("Origin: http://evil.example\r\n", "");
    let response = raw_exchange(addr, no_origin.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 415"), "{response}");
    // A foreign Origin is refused even with the right content type and on reads.
    let json_with_origin = simple.replace("text/plain", "application/json");
    let response = raw_exchange(addr, json_with_origin.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    let read: &[u8] =
        b"GET /v1/credentials HTTP/1.1\r\nHost: evil.example\r\nOrigin: null\r\nConnection: close\r\n\r\n";
    let response = raw_exchange(addr, read).await;
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");

    let (status, _) = status_of(control_request(
        &proxy,
        "GET",
        "/v1/sessions/victim",
        &[],
        "",
    ))
    .await;
    assert_eq!(status, 404, "the session was never touched");
    // A local tool sending JSON without Origin still works.
    let (status, _) = status_of(control_request(
        &proxy,
        "POST",
        "/v1/sessions/victim/close",
        &[("content-type", "application/json")],
        r#"{"reason": "operator"}"#,
    ))
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn configured_origins_are_let_through() {
    let toml = r#"
        [control]
        allowed_origins = ["https://ops.example.com"]
    "#;
    let proxy = start_proxy_with(spec(toml), proxy_flags(&[]), tempfile::tempdir().unwrap()).await;
    let (status, _) = status_of(control_request(
        &proxy,
        "GET",
        "/v1/stats",
        &[("origin", "https://ops.example.com")],
        "",
    ))
    .await;
    assert_eq!(status, 200);
    let (status, _) = status_of(control_request(
        &proxy,
        "GET",
        "/v1/stats",
        &[("origin", "https://ops.example.com.evil.example")],
        "",
    ))
    .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn control_token_files_are_read_trimmed_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, content: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path.display().to_string()
    };
    let good = write("good", &format!("{TOKEN}\n"));
    let short = write("short", "xoxb-short\n");
    let empty = write("empty", "\n");
    let resolve = |toml: String, env: Option<&str>| {
        let mut flags = proxy_flags(&[]);
        flags.control_token = env.map(str::to_owned);
        Config::resolve(spec(&toml), flags, "test.toml")
    };
    let config = resolve(format!("[control]\ntoken_file = {good:?}"), None).unwrap();
    assert!(config.control.requires_token());
    assert!(!format!("{config:?}").contains("REDACTED-0123"));

    let missing = dir.path().join("missing").display().to_string();
    for (toml, env, expect) in [
        (
            format!("[control]\ntoken_file = {short:?}"),
            None,
            "shorter than 16",
        ),
        (format!("[control]\ntoken_file = {empty:?}"), None, "empty"),
        (
            format!("[control]\ntoken_file = {missing:?}"),
            None,
            "cannot read",
        ),
        (
            format!("[control]\ntoken_file = {good:?}"),
            Some(TOKEN),
            "both set",
        ),
        (
            format!("[control]\nread_token_file = {good:?}"),
            None,
            "needs the full one",
        ),
        (String::new(), Some("short"), "HALTGATE_CONTROL_TOKEN"),
        (
            "[control]\nallowed_origins = [\"https://ok.example/path\"]".to_owned(),
            None,
            "not an origin",
        ),
        (
            "[control]\ntoken = \"inline\"".to_owned(),
            None,
            "unknown field",
        ),
    ] {
        let error = match ConfigSpec::from_toml(&toml, "test.toml") {
            Err(error) => error.to_string(),
            Ok(_) => resolve(toml.clone(), env).unwrap_err().to_string(),
        };
        assert!(error.contains(expect), "{toml}: {error}");
        assert!(!error.contains("REDACTED-0123"), "{error}");
    }
}

#[tokio::test]
async fn control_listener_off_loopback_needs_a_token() {
    let mut flags = proxy_flags(&[]);
    flags.control_listen = Some("0.0.0.0:0".into());
    let error = Config::resolve(ConfigSpec::default(), flags.clone(), "flags").unwrap_err();
    assert!(
        error.to_string().contains("not a loopback address"),
        "{error}"
    );
    flags.control_token = Some(TOKEN.into());
    assert!(Config::resolve(ConfigSpec::default(), flags, "flags").is_ok());
}

// === Connection hygiene ===

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed() {
    let (_upstream, proxy) = echo_proxy(FAST_LIMITS).await;
    for addr in [proxy.agent_addr(), proxy.control_addr()] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        assert!(read_until_closed(&mut stream).await.is_empty());
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_its_answer() {
    let (_upstream, proxy) = echo_proxy(FAST_LIMITS).await;
    let mut stream = TcpStream::connect(proxy.agent_addr()).await.unwrap();
    stream
        .write_all(b"GET /echo/x HTTP/1.1\r\nHost: proxy\r\n\r\n")
        .await
        .unwrap();
    let response = String::from_utf8(read_until_closed(&mut stream).await).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

#[tokio::test]
async fn an_idle_http2_connection_gets_goaway_and_is_closed() {
    let (_upstream, proxy) = echo_proxy(FAST_LIMITS).await;
    let (mut sender, connection) = h2_connect(proxy.agent_addr()).await;
    let request = Request::get(format!("http://{}/echo/h2", proxy.agent_addr()))
        .body(body::empty())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    drop(response);
    within(GENEROUS, connection).await.unwrap().unwrap();
    // A connection that only sent its preface is closed too.
    let (_sender, connection) = h2_connect(proxy.agent_addr()).await;
    within(GENEROUS, connection).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_trickled_request_body_is_cut_with_408() {
    let (upstream, proxy) = echo_proxy(FAST_LIMITS).await;
    let mut stream = TcpStream::connect(proxy.agent_addr()).await.unwrap();
    stream
        .write_all(b"POST /echo/upload HTTP/1.1\r\nHost: proxy\r\nContent-Length: 100\r\n\r\na")
        .await
        .unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        // One byte a second, well below the configured body read timeout.
        for _ in 0..99 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if writer.write_all(b"a").await.is_err() {
                return;
            }
        }
    });
    let mut out = Vec::new();
    within(GENEROUS, reader.read_to_end(&mut out)).await.ok();
    trickle.abort();
    let response = String::from_utf8_lossy(&out);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("request_body_timeout"), "{response}");
    assert!(
        upstream.seen.lock().unwrap().is_empty(),
        "the upstream never got a whole body"
    );
}

#[tokio::test]
async fn slowloris_headers_are_cut() {
    let (upstream, proxy) = echo_proxy(FAST_LIMITS).await;
    let stream = TcpStream::connect(proxy.agent_addr()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(b"GET /echo/x HTTP/1.1\r\nHost: proxy\r\n")
        .await
        .unwrap();
    let dribble = tokio::spawn(async move {
        for i in 0..1000 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if writer
                .write_all(format!("X-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut out = Vec::new();
    within(GENEROUS, reader.read_to_end(&mut out)).await.ok();
    dribble.abort();
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn at_the_connection_limit_accept_pauses_and_the_control_listener_still_answers() {
    let toml = r#"
        [limits]
        max_connections = 4
        control_max_connections = 4
        header_read_timeout = "30s"
        idle_timeout = "30s"
    "#;
    let (_upstream, proxy) = echo_proxy(toml).await;
    let mut holders = Vec::new();
    for _ in 0..4 {
        holders.push(TcpStream::connect(proxy.agent_addr()).await.unwrap());
    }
    // More silent connections than the budget: they wait in the backlog.
    let mut waiting = Vec::new();
    for _ in 0..20 {
        waiting.push(TcpStream::connect(proxy.agent_addr()).await.unwrap());
    }
    let mut fifth = TcpStream::connect(proxy.agent_addr()).await.unwrap();
    fifth
        .write_all(b"GET /echo/x HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), fifth.read(&mut byte)).await;
    assert!(early.is_err(), "a connection past the limit was served");

    let response = within(
        GENEROUS,
        client().request(get(&format!("http://{}/healthz", proxy.control_addr()))),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);

    drop(holders);
    drop(waiting);
    let response = String::from_utf8(read_until_closed(&mut fifth).await).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

// === Path escape ===

#[tokio::test]
async fn dot_segments_never_reach_the_upstream() {
    let (upstream, proxy) = echo_proxy("").await;
    let paths = [
        "/echo/../admin",
        "/echo/./admin",
        "/echo/%2e%2e/admin",
        "/echo/%2E%2e/admin",
        "/echo/.%2e/admin",
        "/echo/..%2fadmin",
        "/echo/..%2Fadmin",
        "/echo/..%5cadmin",
        "/echo/a/b/../../../admin",
        "/echo/..;/admin",
        "/echo/..",
    ];
    for path in paths {
        let request = format!("GET {path} HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n");
        let response = raw_exchange(proxy.agent_addr(), request.as_bytes()).await;
        assert!(response.starts_with("HTTP/1.1 400"), "{path}: {response}");
        assert!(
            response.contains("x-haltgate-error: bad_request"),
            "{path}: {response}"
        );
    }
    let (mut sender, _connection) = h2_connect(proxy.agent_addr()).await;
    for path in paths {
        let request = Request::get(format!("http://{}{path}", proxy.agent_addr()))
            .body(body::empty())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 400, "h2 {path}");
    }
    assert_eq!(upstream.hits(), 0);

    // Dots inside names, in the query, and double-encoded ones pass as they are.
    let path = "/echo/.well-known/a..b/%252e%252e/v1.2?next=../../x";
    let request = format!("GET {path} HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n");
    let response = raw_exchange(proxy.agent_addr(), request.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("x-seen-path: /base/.well-known/a..b/%252e%252e/v1.2?next=../../x"),
        "{response}"
    );
}

fn property_table() -> RouteTable {
    RouteTable::new([Route::new("mcp", "mcp", "http://upstream.example/mcp").unwrap()]).unwrap()
}

/// How a lenient upstream reads a path: percent-decoded once, `\` as `/`, `;params` dropped,
/// then dot segments removed (RFC 3986 §5.2.4).
fn lenient_upstream_view(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut decoded = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                decoded.push(b);
                i += 3;
            }
            (b, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    let text = String::from_utf8_lossy(&decoded).replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    for segment in text.split('/').skip(1) {
        match segment.split(';').next().unwrap_or_default() {
            "." => {}
            ".." => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    format!("/{}", out.join("/"))
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("%2e".to_owned()),
        Just("%2E".to_owned()),
        Just("%2f".to_owned()),
        Just("%5C".to_owned()),
        Just("\\".to_owned()),
        Just(";x".to_owned()),
        Just("%25".to_owned()),
        "[a-z.%;]{0,4}",
    ]
}

proptest! {
    #[test]
    fn no_generated_path_resolves_outside_the_base_path(
        parts in prop::collection::vec(prop::collection::vec(segment(), 1..4), 0..6),
        query in prop::option::of("[a-z./=%]{0,8}"),
    ) {
        let rest: String = parts.iter().map(|p| format!("/{}", p.concat())).collect();
        let mut path_and_query = format!("/mcp{rest}");
        if let Some(query) = &query {
            path_and_query.push('?');
            path_and_query.push_str(query);
        }
        if let Ok(target) = property_table().resolve(&path_and_query) {
            let view = lenient_upstream_view(target.uri.path());
            prop_assert!(
                view == "/mcp" || view.starts_with("/mcp/"),
                "{path_and_query} reached {view}"
            );
        }
    }

    #[test]
    fn paths_without_dot_segments_stay_byte_exact(
        rest in "(/[a-zA-Z0-9_~!$&'()*+,=:@-]{0,8}(%[0-9A-F]{2})?){0,6}",
        query in prop::option::of("[a-zA-Z0-9./=%&]{0,12}"),
    ) {
        let mut path_and_query = format!("/mcp{rest}");
        if let Some(query) = &query {
            path_and_query.push('?');
            path_and_query.push_str(query);
        }
        let has_dot = rest.split('/').any(|s| matches!(s.to_ascii_lowercase().as_str(), "%2e%2e" | "%2e"));
        let slash_like = rest.to_ascii_lowercase().contains("%2f") || rest.to_ascii_lowercase().contains("%5c");
        prop_assume!(!has_dot && !slash_like);
        let target = property_table().resolve(&path_and_query).unwrap();
        let expected = format!("/mcp{}{}", if rest.is_empty() { "/" } else { "" }, &path_and_query[4..]);
        prop_assert_eq!(target.uri.path_and_query().unwrap().as_str(), expected);
    }

    #[test]
    fn session_headers_accept_exactly_valid_ids_and_epochs(
        id in prop::option::of(prop::collection::vec(any::<u8>(), 0..300)),
        epoch in prop::option::of("[+0-9a-z -]{0,24}"),
    ) {
        let mut headers = HeaderMap::new();
        if let Some(id) = &id {
            let Ok(value) = HeaderValue::from_bytes(id) else { return Ok(()) };
            headers.insert("x-haltgate-session", value);
        }
        if let Some(epoch) = &epoch {
            let Ok(value) = HeaderValue::from_str(epoch) else { return Ok(()) };
            headers.insert("x-haltgate-epoch", value);
        }
        let valid_id = id.as_ref().map(|id| !id.is_empty() && id.len() <= 256 && id.iter().all(u8::is_ascii_graphic));
        let valid_epoch = epoch.as_ref().map(|e| e.parse::<u64>().ok());
        match session_header(&headers) {
            Ok(None) => prop_assert!(id.is_none() && epoch.is_none()),
            Ok(Some(parsed)) => {
                prop_assert_eq!(valid_id, Some(true));
                prop_assert_eq!(parsed.id.as_str().as_bytes(), id.as_deref().unwrap());
                prop_assert_eq!(parsed.epoch, valid_epoch.flatten());
                prop_assert!(epoch.is_none() || parsed.epoch.is_some());
            }
            Err(_) => prop_assert!(
                valid_id != Some(true) || matches!(valid_epoch, Some(None))
            ),
        }
    }
}

#[test]
fn resolution_refuses_dot_segments_before_building_any_uri() {
    let table = property_table();
    assert_eq!(
        table.resolve("/mcp/..%2fadmin").unwrap_err(),
        Unresolved::DotSegment
    );
    assert_eq!(
        table.resolve("/other/x").unwrap_err(),
        Unresolved::UnknownRoute
    );
}

// === Cheap HTTP/2 abuse ===

/// An upstream that holds every request for a long time and records when one is dropped.
fn holding_upstream(dropped: Arc<AtomicBool>) -> Handler {
    struct SetOnDrop(Arc<AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    handler(move |_seen: Seen| {
        let guard = SetOnDrop(dropped.clone());
        async move {
            let _guard = guard;
            tokio::time::sleep(Duration::from_secs(60)).await;
            text(200, "late")
        }
    })
}

/// Sends one request and resets its stream once the upstream has it.
async fn send_and_reset(
    sender: &mut hyper::client::conn::http2::SendRequest<ProxyBody>,
    url: &str,
    upstream: &Upstream,
) -> bool {
    if sender.ready().await.is_err() {
        return false;
    }
    let before = upstream.hits();
    let response = sender.send_request(Request::get(url).body(body::empty()).unwrap());
    tokio::pin!(response);
    within(GENEROUS, async {
        loop {
            tokio::select! {
                answered = &mut response => return answered.is_ok(),
                () = tokio::time::sleep(Duration::from_millis(5)) => {
                    if upstream.hits() > before {
                        return true;
                    }
                }
            }
        }
    })
    .await
    // Dropping `response` here resets the stream.
}

#[tokio::test]
async fn a_reset_stream_cancels_its_upstream_request() {
    let dropped = Arc::new(AtomicBool::new(false));
    let upstream = start_upstream(holding_upstream(dropped.clone())).await;
    let proxy = start_proxy(proxy_flags(&[("slow", upstream.http_url())])).await;
    let (mut sender, _connection) = h2_connect(proxy.agent_addr()).await;
    let url = format!("http://{}/slow/x", proxy.agent_addr());
    assert!(send_and_reset(&mut sender, &url, &upstream).await);
    within(GENEROUS, async {
        while !dropped.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn http2_clients_that_cancel_too_many_requests_get_goaway() {
    let dropped = Arc::new(AtomicBool::new(false));
    let upstream = start_upstream(holding_upstream(dropped)).await;
    let flags = proxy_flags(&[("slow", upstream.http_url())]);
    let toml = "[limits]\nh2_max_resets_per_10s = 5";
    let proxy = start_proxy_with(spec(toml), flags, tempfile::tempdir().unwrap()).await;
    let (mut sender, connection) = h2_connect(proxy.agent_addr()).await;
    let url = format!("http://{}/slow/x", proxy.agent_addr());
    let mut sent = 0;
    while sent < 100 && !connection.is_finished() {
        if !send_and_reset(&mut sender, &url, &upstream).await {
            break;
        }
        sent += 1;
    }
    assert!(
        sent < 100,
        "the connection survived {sent} cancelled requests"
    );
    within(GENEROUS, connection).await.unwrap().ok();
    assert!(
        upstream.hits() <= 7,
        "{} upstream requests",
        upstream.hits()
    );
}

// === What must keep holding ===

async fn refused_without_upstream_contact(name: &str, request: &[u8]) {
    let (upstream, proxy) = echo_proxy("").await;
    let response = raw_exchange(proxy.agent_addr(), request).await;
    assert!(
        response.is_empty() || response.starts_with("HTTP/1.1 4"),
        "{name}: {response}"
    );
    assert_eq!(upstream.hits(), 0, "{name} reached the upstream");
}

#[tokio::test]
async fn request_smuggling_variants_are_refused_or_safe() {
    refused_without_upstream_contact(
        "duplicate content-length",
        b"POST /echo/a HTTP/1.1\r\nHost: p\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
    )
    .await;
    refused_without_upstream_contact(
        "obs-fold",
        b"GET /echo/a HTTP/1.1\r\nHost: p\r\nX-A: a\r\n b\r\nConnection: close\r\n\r\n",
    )
    .await;
    refused_without_upstream_contact(
        "bare CR",
        b"GET /echo/a HTTP/1.1\r\nHost: p\r\nX-A: a\rb\r\nConnection: close\r\n\r\n",
    )
    .await;
    refused_without_upstream_contact(
        "NUL",
        b"GET /echo/a HTTP/1.1\r\nHost: p\r\nX-A: a\0b\r\nConnection: close\r\n\r\n",
    )
    .await;

    // CL + TE: the chunked framing wins, and the bytes after it are never read as a request.
    let (upstream, proxy) = echo_proxy("").await;
    let response = raw_exchange(
        proxy.agent_addr(),
        b"POST /echo/a HTTP/1.1\r\nHost: p\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
          0\r\n\r\nGET /echo/smuggled HTTP/1.1\r\nHost: p\r\n\r\n",
    )
    .await;
    assert!(!response.contains("smuggled"), "{response}");
    for seen in upstream.seen.lock().unwrap().iter() {
        assert!(!seen.uri.path().contains("smuggled"), "{:?}", seen.uri);
        assert!(seen.body.is_empty());
    }
}

#[tokio::test]
async fn oversized_headers_get_431_and_oversized_urls_414() {
    let (upstream, proxy) = echo_proxy("").await;
    let big_header = format!(
        "GET /echo/a HTTP/1.1\r\nHost: p\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(500 * 1024)
    );
    let response = raw_exchange(proxy.agent_addr(), big_header.as_bytes()).await;
    assert!(
        response.starts_with("HTTP/1.1 431"),
        "{}",
        &response[..response.len().min(200)]
    );
    let long_url = format!(
        "GET /echo/{} HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let response = raw_exchange(proxy.agent_addr(), long_url.as_bytes()).await;
    assert!(
        response.starts_with("HTTP/1.1 414"),
        "{}",
        &response[..response.len().min(200)]
    );
    assert_eq!(upstream.hits(), 0);
}

#[tokio::test]
async fn no_request_reaches_a_host_other_than_the_routes_upstream() {
    let (upstream, proxy) = echo_proxy("").await;
    let addr = proxy.agent_addr();
    let absolute =
        b"GET http://evil.example/echo/x HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n";
    assert!(raw_exchange(addr, absolute)
        .await
        .starts_with("HTTP/1.1 403"));
    let connect =
        b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nConnection: close\r\n\r\n";
    assert!(raw_exchange(addr, connect)
        .await
        .starts_with("HTTP/1.1 405"));
    assert_eq!(upstream.hits(), 0);

    let foreign_host = b"GET /echo/x HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n";
    assert!(raw_exchange(addr, foreign_host)
        .await
        .starts_with("HTTP/1.1 200"));
    assert_eq!(
        upstream.last_seen().headers["host"],
        upstream.addr.to_string()
    );

    let (mut sender, _connection) = h2_connect(addr).await;
    let request = Request::get("http://evil.example/echo/x")
        .body(body::empty())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.hits(), 2);
    assert_eq!(
        upstream.last_seen().headers["host"],
        upstream.addr.to_string()
    );
}

#[tokio::test]
async fn control_bodies_are_cut_at_one_mebibyte() {
    let proxy = start_proxy(proxy_flags(&[])).await;
    let huge = format!("{{\"reason\": \"{}\"}}", "a".repeat(2 * 1024 * 1024));
    let (status, _) = status_of(control_request(
        &proxy,
        "POST",
        "/v1/sessions/s1/close",
        &[("content-type", "application/json")],
        &huge,
    ))
    .await;
    assert_eq!(status, 400);
}
