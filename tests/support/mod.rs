//! Test support: in-process upstreams (plain HTTP, and HTTPS with a test CA speaking HTTP/2 or
//! HTTP/1.1 by ALPN) and the proxy, all on 127.0.0.1 port 0.
#![allow(dead_code)]

pub mod fault_proxy;
pub mod redis_server;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use bytes::Bytes;
use haltgate::app::App;
use haltgate::body::{self, ProxyBody};
use haltgate::config::{Config, ConfigSpec, Overrides};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// What an upstream saw of one request, after its body arrived whole.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: http::Method,
    pub uri: http::Uri,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

pub type Handler =
    Arc<dyn Fn(Seen) -> Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>> + Send + Sync>;

/// A running in-process upstream.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    /// Connections accepted, to observe pooling.
    pub connections: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// PEM of the CA that signed this upstream's certificate (TLS upstreams only).
    pub ca_pem: Option<String>,
}

impl Upstream {
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn last_seen(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream saw a request")
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Seen) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    Arc::new(move |seen| Box::pin(f(seen)))
}

async fn serve_request(
    request: Request<Incoming>,
    handler: Handler,
    hits: Arc<AtomicUsize>,
    seen_log: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<ProxyBody>, Infallible> {
    hits.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let seen = Seen {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        body,
    };
    seen_log.lock().unwrap().push(seen.clone());
    Ok(handler(seen).await)
}

/// Starts a plain-HTTP upstream answering every request with `handler`.
pub async fn start_upstream(handler: Handler) -> Upstream {
    serve_upstream(handler, None).await
}

/// Accepts connections (through TLS when `tls` is given) and serves `handler` on each.
async fn serve_upstream(handler: Handler, tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let (h, s, c) = (hits.clone(), seen.clone(), connections.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            let (handler, hits, seen, tls) = (handler.clone(), h.clone(), s.clone(), tls.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    serve_request(req, handler.clone(), hits.clone(), seen.clone())
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let _ = match tls {
                    None => {
                        builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                    }
                    Some(acceptor) => {
                        let Ok(tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        builder.serve_connection(TokioIo::new(tls), service).await
                    }
                };
            });
        }
    });
    Upstream {
        addr,
        hits,
        connections,
        seen,
        ca_pem: None,
    }
}

/// Starts an HTTPS upstream for `localhost` with a fresh test CA; ALPN offers h2 and http/1.1.
pub async fn start_tls_upstream(handler: Handler) -> Upstream {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "haltgate test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let leaf_cert = leaf_params.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf_cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let mut upstream = serve_upstream(handler, Some(acceptor)).await;
    upstream.ca_pem = Some(ca_cert.pem());
    upstream
}

/// A port on which nothing listens.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

/// Proxy flags with both listeners on port 0 and a throwaway store path.
/// The status of a halt on a Slack route: Slack's own `ok: false` envelope, which its SDKs raise
/// as a platform error, comes with 200 (`x-haltgate-halt` tells it from Slack's answers).
pub const SLACK_HALT: u16 = 200;

pub fn proxy_flags(routes: &[(&str, String)]) -> Overrides {
    Overrides {
        listen: Some("127.0.0.1:0".into()),
        control_listen: Some("127.0.0.1:0".into()),
        rules: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/rules").into()),
        routes: routes.iter().map(|(n, u)| format!("{n}={u}")).collect(),
        ..Overrides::default()
    }
}

/// A proxy with its own store directory, removed when dropped.
pub struct TestProxy {
    pub app: App,
    pub dir: tempfile::TempDir,
}

impl std::ops::Deref for TestProxy {
    type Target = App;

    fn deref(&self) -> &App {
        &self.app
    }
}

impl TestProxy {
    pub async fn wait(self) {
        self.app.wait().await
    }

    /// Shuts down and waits for the drain; the store directory stays for a restart.
    pub async fn stop(self) -> tempfile::TempDir {
        self.app.shutdown();
        self.app.wait().await;
        self.dir
    }
}

/// Starts a proxy; unless `flags` name a store, it gets a redb store in a fresh directory.
pub async fn start_proxy(flags: Overrides) -> TestProxy {
    start_proxy_in(flags, tempfile::tempdir().unwrap()).await
}

/// Starts a proxy whose default redb store, outbox and local copy live in `dir`.
pub async fn start_proxy_in(flags: Overrides, dir: tempfile::TempDir) -> TestProxy {
    start_proxy_with(ConfigSpec::default(), flags, dir).await
}

/// Starts a proxy from a configuration file's content (`spec`) and flags, its state in `dir`.
pub async fn start_proxy_with(
    spec: ConfigSpec,
    mut flags: Overrides,
    dir: tempfile::TempDir,
) -> TestProxy {
    if flags.store.is_none() {
        flags.store = Some(format!(
            "redb:{}",
            dir.path().join("haltgate.redb").display()
        ));
    }
    if flags.outbox.is_none() {
        flags.outbox = Some(dir.path().join("outbox.redb"));
    }
    if flags.local_copy.is_none() {
        flags.local_copy = Some(dir.path().join("local.redb"));
    }
    let config = Config::resolve(spec, flags, "test").expect("valid test config");
    let app = App::start(config).await.expect("proxy starts");
    // Session traffic is refused until the state is loaded; tests of that window start the
    // app themselves.
    within(Duration::from_secs(10), async {
        while !app.is_ready() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    TestProxy { app, dir }
}

/// A plain HTTP/1.1 client.
pub fn client(
) -> hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, ProxyBody>
{
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

pub fn get(url: &str) -> Request<ProxyBody> {
    Request::get(url).body(body::empty()).unwrap()
}

pub async fn read_body(response: Response<Incoming>) -> Bytes {
    response.into_body().collect().await.unwrap().to_bytes()
}

pub fn text(status: u16, body: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(body::full(body));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
    r
}

pub fn json(status: u16, value: serde_json::Value) -> Response<ProxyBody> {
    haltgate::synthetic::json_response(http::StatusCode::from_u16(status).unwrap(), value)
}

/// Deterministic non-repeating bytes, so any reordering or loss shows.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut state: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state & 0xff) as u8
        })
        .collect()
}

pub async fn within<T>(limit: Duration, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .expect("finished in time")
}

/// Polls `/readyz` until it answers 200 (the closed set is bootstrapped).
pub async fn wait_ready(app: &App) {
    let url = format!("http://{}/readyz", app.control_addr());
    within(Duration::from_secs(10), async {
        loop {
            if let Ok(response) = client().request(get(&url)).await {
                if response.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// The Slack channel the stand-in answers for.
pub const CHANNEL: &str = "C0123ABCD";

/// A Slack stand-in: `?mode=` picks the answer of chat.postMessage.
pub fn slack_upstream() -> Handler {
    slack_upstream_held(tokio::sync::watch::channel(true).1)
}

/// As [`slack_upstream`]; `held_kick` answers `not_in_channel` once `release` turns true.
pub fn slack_upstream_held(release: tokio::sync::watch::Receiver<bool>) -> Handler {
    handler(move |seen: Seen| {
        let mut release = release.clone();
        async move {
            let query = seen.uri.query().unwrap_or("");
            let mode = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("mode="))
                .unwrap_or("ok");
            match mode {
                "kick" => json(200, json!({"ok": false, "error": "not_in_channel"})),
                "invalid_auth" => json(200, json!({"ok": false, "error": "invalid_auth"})),
                "ratelimit" => {
                    let mut r = json(429, json!({"ok": false, "error": "ratelimited"}));
                    r.headers_mut().insert("retry-after", "30".parse().unwrap());
                    r
                }
                "quote" => json(
                    200,
                    json!({"ok": true, "channel": CHANNEL, "message": {"text": "bot said not_in_channel earlier"}}),
                ),
                "held_kick" => {
                    let _ = release.wait_for(|released| *released).await;
                    json(200, json!({"ok": false, "error": "not_in_channel"}))
                }
                _ => json(
                    200,
                    json!({"ok": true, "channel": CHANNEL, "ts": "1700000000.000100"}),
                ),
            }
        }
    })
}

/// A control API call with a JSON body; the status and the JSON answer.
pub async fn control(app: &App, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", app.control_addr()))
        .header("content-type", "application/json")
        .body(match body {
            Some(v) => haltgate::body::full(v.to_string()),
            None => haltgate::body::empty(),
        })
        .unwrap();
    let response = client().request(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = read_body(response).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Sends a request; the status, headers and JSON body (`Null` when not JSON).
pub async fn send(request: Request<haltgate::body::ProxyBody>) -> (u16, http::HeaderMap, Value) {
    let response = client().request(request).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = read_body(response).await;
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Polls `check` every 100 ms until it holds; panics after `limit`.
pub async fn eventually(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let started = std::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Registers (or reopens) a session scoped to the stand-in's Slack channel; the record.
pub async fn open_session(app: &App, id: &str) -> Value {
    let (status, record) = control(
        app,
        "PUT",
        &format!("/v1/sessions/{id}"),
        Some(json!({"scope": {"slack_channel": CHANNEL}})),
    )
    .await;
    assert_eq!(status, 200, "{record}");
    record
}

/// Everything a child process writes to its (piped) stderr, gathered by a thread as it comes.
pub fn collect_stderr(child: &mut std::process::Child) -> Arc<Mutex<String>> {
    use std::io::Read;
    let mut pipe = child.stderr.take().expect("stderr is piped");
    let collected = Arc::new(Mutex::new(String::new()));
    let sink = collected.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    collected
}

/// The real `haltgate` binary as a child process, its stderr collected as it is written;
/// killed when dropped. Callers give the arguments; the listen addresses are read from the
/// "haltgate is serving." log line (text or JSON log format).
pub struct BinaryProxy {
    pub child: std::process::Child,
    stderr: Arc<Mutex<String>>,
}

impl BinaryProxy {
    /// Spawns `command` (a `haltgate` command line) with stdout discarded and stderr kept.
    pub fn spawn(mut command: std::process::Command) -> Self {
        let mut child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("haltgate starts");
        let stderr = collect_stderr(&mut child);
        Self { child, stderr }
    }

    /// A `haltgate` command running in `dir`.
    pub fn command(dir: &std::path::Path) -> std::process::Command {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_haltgate"));
        command.current_dir(dir);
        command
    }

    /// Everything written to stderr so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Every log line, each one JSON object (for `--log-format json`).
    pub fn log_lines(&self) -> Vec<Value> {
        self.log()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
            .collect()
    }

    /// The agent and control addresses, from the "serving" log line.
    pub async fn addresses(&self) -> (std::net::SocketAddr, std::net::SocketAddr) {
        within(Duration::from_secs(20), async {
            loop {
                let log = self.log();
                if let Some(line) = log.lines().find(|l| l.contains("haltgate is serving.")) {
                    let field = |name: &str| -> std::net::SocketAddr {
                        if let Ok(json) = serde_json::from_str::<Value>(line) {
                            return json["fields"][name].as_str().unwrap().parse().unwrap();
                        }
                        let key = format!("{name}=");
                        let start = line.find(&key).unwrap() + key.len();
                        line[start..]
                            .split_whitespace()
                            .next()
                            .unwrap()
                            .parse()
                            .unwrap()
                    };
                    return (field("agent_addr"), field("control_addr"));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }
}

impl Drop for BinaryProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
