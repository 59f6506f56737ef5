//! Load benchmark: the same provider traffic sent direct to an emulated upstream, through
//! haltgate (the release binary, every shipped rule active) and, when installed, through nginx
//! `proxy_pass` with upstream keep-alive; a Markdown report with each target of the project
//! against its measured value, and latency plots.
//!
//! ```sh
//! cargo run --release --example loadbench -- --out target/loadbench [--quick]
//! ```
//!
//! Layout on a machine with two or more cores: this process (the load generator, one
//! current-thread runtime), the emulated upstream (a child process, also one current-thread
//! runtime) and Redis share core 0; the proxy under test runs alone on core 1. "Direct"
//! therefore measures what core 0 can do with no proxy in between, and each proxied run reports
//! how busy both cores were, so a run limited by core 0 rather than the proxy shows as such.
//!
//! Flags: `--out DIR` (default `target/loadbench`), `--quick` (a few seconds per phase),
//! `--haltgate PATH` (skip building the binary), `--nginx PATH`, `--no-nginx`, `--no-lost`.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, IsTerminal, Write as _};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, Response, Uri};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// The core of the load generator, the upstream and Redis.
const LOAD_CORE: usize = 0;
/// The core of the proxy under test.
const PROXY_CORE: usize = 1;
/// Connections of the closed-loop and open-loop phases.
const CONNECTIONS: usize = 64;
/// Response body sizes the upstream serves.
const SIZES: [usize; 5] = [1024, 2048, 4096, 8192, 16384];
/// Fixture credential: the shape of a Slack bot token, never a real one.
const TOKEN: &str = "Bearer xoxb-REDACTED-loadbench";

// ---------------------------------------------------------------------------------------------
// Arguments and plan
// ---------------------------------------------------------------------------------------------

struct Args {
    out: PathBuf,
    quick: bool,
    haltgate: Option<PathBuf>,
    nginx: Option<PathBuf>,
    no_nginx: bool,
    no_lost: bool,
    upstream_child: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        out: PathBuf::from("target/loadbench"),
        quick: false,
        haltgate: None,
        nginx: None,
        no_nginx: false,
        no_lost: false,
        upstream_child: false,
    };
    let mut raw = std::env::args().skip(1);
    while let Some(flag) = raw.next() {
        let mut value = || {
            raw.next()
                .unwrap_or_else(|| fail(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--out" => args.out = PathBuf::from(value()),
            "--quick" => args.quick = true,
            "--haltgate" => args.haltgate = Some(PathBuf::from(value())),
            "--nginx" => args.nginx = Some(PathBuf::from(value())),
            "--no-nginx" => args.no_nginx = true,
            "--no-lost" => args.no_lost = true,
            "--upstream-child" => args.upstream_child = true,
            other => fail(&format!(
                "unknown flag {other}; flags: --out DIR, --quick, --haltgate PATH, --nginx PATH, --no-nginx, --no-lost"
            )),
        }
    }
    args
}

fn fail(message: &str) -> ! {
    eprintln!("loadbench: {message}");
    std::process::exit(2)
}

/// How long each phase runs.
struct Plan {
    warmup: Duration,
    concurrency_one: Duration,
    closed: Duration,
    open: Duration,
    ttfb_streams: u64,
    streams: usize,
    stream_events: usize,
    stream_pace: Duration,
    idle_connections: usize,
    halts: u64,
    store_window: Duration,
    /// Whether mixed traffic holds its 0.5 % of lost-access answers (`--no-lost`: without).
    lost: bool,
}

impl Plan {
    /// The mixed traffic of the throughput and latency phases.
    fn mix(&self) -> Mix {
        if self.lost {
            Mix::standard()
        } else {
            Mix::passing()
        }
    }

    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                warmup: Duration::from_millis(500),
                concurrency_one: Duration::from_millis(1500),
                closed: Duration::from_secs(2),
                open: Duration::from_secs(2),
                ttfb_streams: 100,
                streams: 1000,
                stream_events: 6,
                stream_pace: Duration::from_millis(50),
                idle_connections: 1000,
                halts: 200,
                store_window: Duration::from_secs(1),
                lost: true,
            }
        } else {
            Plan {
                warmup: Duration::from_secs(2),
                concurrency_one: Duration::from_secs(8),
                closed: Duration::from_secs(10),
                open: Duration::from_secs(10),
                ttfb_streams: 500,
                streams: 1000,
                stream_events: 20,
                stream_pace: Duration::from_millis(50),
                idle_connections: 1000,
                halts: 1000,
                store_window: Duration::from_secs(3),
                lost: true,
            }
        }
    }
}

fn main() {
    let args = parse_args();
    if args.upstream_child {
        run_upstream();
        return;
    }
    raise_open_file_limit();
    let cores = online_cores();
    let pinned = cores >= 2;
    if pinned {
        pin_self(LOAD_CORE);
    }
    std::fs::create_dir_all(&args.out)
        .unwrap_or_else(|e| fail(&format!("cannot create {}: {e}", args.out.display())));
    let built = args.haltgate.clone().unwrap_or_else(build_haltgate);
    // The measured binary is copied first: a rebuild in the same target dir during the run
    // must not change what is measured.
    let haltgate = args.out.join("haltgate-under-test");
    std::fs::copy(&built, &haltgate)
        .unwrap_or_else(|e| fail(&format!("no haltgate binary at {}: {e}", built.display())));
    let nginx = if args.no_nginx {
        None
    } else {
        args.nginx.clone().or_else(|| find_on_path("nginx"))
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let bench = Bench {
        plan: Plan {
            lost: !args.no_lost,
            ..Plan::new(args.quick)
        },
        quick: args.quick,
        out: args.out.clone(),
        haltgate,
        nginx,
        pinned,
        progress: Progress::new(),
    };
    // Ctrl-C drops the run, and with it every child process (each stops when dropped).
    let report = runtime.block_on(async {
        tokio::select! {
            report = bench.run() => Some(report),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    let report = report.unwrap_or_else(|| fail("interrupted"));
    let path = args.out.join("report.md");
    std::fs::write(&path, report).expect("write the report");
    eprintln!("report: {}", path.display());
}

/// Builds the proxy from this tree in release, next to this example's own binary.
fn build_haltgate() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    eprintln!("building haltgate (release) ...");
    // Built with this example, the binary shares its dependency features, so after
    // `cargo run --release --example loadbench` this build has nothing left to do.
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--bin",
            "haltgate",
            "--example",
            "loadbench",
        ])
        .args(["--manifest-path", manifest])
        .status()
        .unwrap_or_else(|e| fail(&format!("cannot run cargo: {e}")));
    if !status.success() {
        fail("cargo build --release --bin haltgate failed");
    }
    let exe = std::env::current_exe().expect("own path");
    // target/release/examples/loadbench -> target/release/haltgate
    let release = exe.parent().and_then(Path::parent).expect("target dir");
    if release.file_name().is_some_and(|name| name != "release") {
        fail("run the benchmark with --release (cargo run --release --example loadbench)");
    }
    release.join("haltgate")
}

fn online_cores() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

// ---------------------------------------------------------------------------------------------
// Processes: pinning, CPU and memory from /proc
// ---------------------------------------------------------------------------------------------

fn cpu_set(core: usize) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `core` is below the number of cores, far below CPU_SETSIZE.
    unsafe { libc::CPU_SET(core, &mut set) };
    set
}

fn pin_self(core: usize) {
    let set = cpu_set(core);
    // SAFETY: pid 0 is this thread's process; `set` lives on this stack frame.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
}

/// Between fork and exec: pins the child to `core`, so every thread it starts stays there,
/// and has it terminated if this process dies first (an aborted run leaves nothing running).
fn pin_child(command: &mut Command, core: Option<usize>) {
    let set = core.map(cpu_set);
    // SAFETY: prctl and sched_setaffinity are async-signal-safe; `set` is copied into the
    // closure.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(set) = &set {
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct it is given; setrlimit only reads it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// utime + stime of a process (all its threads), from /proc/PID/stat.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // Fields 14 and 15 of stat; index 0 here is field 3 (state).
    Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 / per_second)
}

/// (VmRSS, VmHWM) in bytes.
/// Resident set, its peak and its anonymous part (heap and stacks; the rest is mapped files,
/// mostly the binary's own pages, shared with the page cache), from /proc/PID/status.
fn memory(pid: u32) -> (u64, u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"), field("RssAnon:"))
}

/// A child process, stopped with SIGTERM (then SIGKILL) when dropped.
struct Proc {
    child: Child,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: signals the child this struct owns and has not reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

// ---------------------------------------------------------------------------------------------
// The emulated upstream (child process)
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Provider {
    Slack,
    Github,
    Linear,
    Mcp,
    Anthropic,
}

const PROVIDERS: [Provider; 5] = [
    Provider::Slack,
    Provider::Github,
    Provider::Linear,
    Provider::Mcp,
    Provider::Anthropic,
];

impl Provider {
    fn name(self) -> &'static str {
        match self {
            Provider::Slack => "slack",
            Provider::Github => "github",
            Provider::Linear => "linear",
            Provider::Mcp => "mcp",
            Provider::Anthropic => "anthropic",
        }
    }

    /// One list item of a typical answer, repeated to reach the body size.
    fn item(self, i: usize) -> String {
        let words = "the deploy finished and the review thread moved to the release channel";
        match self {
            Provider::Slack => format!(
                r#"{{"type":"message","user":"U0{i:07}","text":"{words} {i}","ts":"1700000{i:03}.000100","team":"T0123ABCD","blocks":[{{"type":"rich_text","block_id":"b{i}"}}]}}"#
            ),
            Provider::Github => format!(
                r#"{{"id":{i},"number":{i},"state":"open","title":"{words}","user":{{"login":"octo{i}","id":{i}}},"labels":[{{"name":"bug"}}],"comments":{i},"html_url":"https://github.com/acme/widgets/issues/{i}"}}"#
            ),
            Provider::Linear => format!(
                r#"{{"id":"a1b2c3d4-{i:04}","identifier":"ENG-{i}","title":"{words}","state":{{"name":"In Progress"}},"priority":2,"assignee":{{"name":"Dana {i}"}}}}"#
            ),
            Provider::Mcp => format!(r#"{{"type":"text","text":"{words} (line {i})"}}"#),
            Provider::Anthropic => format!(r#"{{"type":"text","text":"{words}, step {i}."}}"#),
        }
    }

    fn body(self, size: usize) -> Bytes {
        let (head, tail) = match self {
            Provider::Slack => (
                r#"{"ok":true,"channel":"C0123ABCD","has_more":false,"messages":["#,
                "]}",
            ),
            Provider::Github => ("[", "]"),
            Provider::Linear => (r#"{"data":{"issues":{"nodes":["#, "]}}}"),
            Provider::Mcp => (
                r#"{"jsonrpc":"2.0","id":7,"result":{"content":["#,
                r#"],"isError":false}}"#,
            ),
            Provider::Anthropic => (
                r#"{"id":"msg_01loadbench","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":["#,
                r#"],"stop_reason":"end_turn","usage":{"input_tokens":812,"output_tokens":240}}"#,
            ),
        };
        let mut body = String::from(head);
        let mut i = 0;
        while body.len() + tail.len() < size {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&self.item(i));
            i += 1;
        }
        body.push_str(tail);
        Bytes::from(body)
    }
}

/// The upstream's response body: whole, or Server-Sent Events chunk by chunk.
enum UpstreamBody {
    Whole(Option<Bytes>),
    Events(tokio::sync::mpsc::Receiver<Bytes>),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            UpstreamBody::Whole(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            UpstreamBody::Events(rx) => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }
}

fn sse_event(index: usize, last: bool) -> Bytes {
    let text = if index == 0 {
        r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_01loadbench","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"usage":{"input_tokens":812,"output_tokens":1}}}

"#
        .to_owned()
    } else if last {
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_owned()
    } else {
        format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"token {index} of the answer \"}}}}\n\n"
        )
    };
    Bytes::from(text)
}

struct Bodies {
    json: HashMap<(Provider, usize), Bytes>,
    lost: Bytes,
}

impl Bodies {
    fn new() -> Bodies {
        let mut json = HashMap::new();
        for provider in PROVIDERS {
            for size in SIZES {
                json.insert((provider, size), provider.body(size));
            }
        }
        Bodies {
            json,
            lost: Bytes::from_static(br#"{"ok":false,"error":"not_in_channel"}"#),
        }
    }
}

fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

async fn answer(
    provider: Option<Provider>,
    request: Request<Incoming>,
    bodies: Arc<Bodies>,
) -> Result<Response<UpstreamBody>, Infallible> {
    let (parts, body) = request.into_parts();
    let _ = body.collect().await;
    let provider = provider
        .or_else(|| {
            let first = parts.uri.path().trim_start_matches('/').split('/').next()?;
            PROVIDERS.into_iter().find(|p| p.name() == first)
        })
        .unwrap_or(Provider::Slack);
    let query = parts.uri.query().unwrap_or("");
    let json = |bytes: Bytes| {
        Response::builder()
            .header(CONTENT_TYPE, "application/json; charset=utf-8")
            .body(UpstreamBody::Whole(Some(bytes)))
            .expect("response")
    };
    if query_param(query, "lost").is_some() {
        return Ok(json(bodies.lost.clone()));
    }
    if let Some(spec) = query_param(query, "sse") {
        let (events, pace) = spec.split_once(':').unwrap_or((spec, "0"));
        let events: usize = events.parse().unwrap_or(3).max(2);
        let pace = Duration::from_millis(pace.parse().unwrap_or(0));
        let (tx, rx) = tokio::sync::mpsc::channel(events);
        tokio::spawn(async move {
            for i in 0..events {
                if i > 0 && !pace.is_zero() {
                    tokio::time::sleep(pace).await;
                }
                if tx.send(sse_event(i, i + 1 == events)).await.is_err() {
                    return;
                }
            }
        });
        return Ok(Response::builder()
            .header(CONTENT_TYPE, "text/event-stream")
            .header("cache-control", "no-cache")
            .body(UpstreamBody::Events(rx))
            .expect("response"));
    }
    let size = query_param(query, "size")
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(1024);
    let size = SIZES.into_iter().find(|s| *s >= size).unwrap_or(16384);
    Ok(json(bodies.json[&(provider, size)].clone()))
}

async fn serve_upstream(listener: TcpListener, provider: Option<Provider>, bodies: Arc<Bodies>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of descriptors for a moment: the backlog keeps the connection.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let bodies = bodies.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                answer(provider, request, bodies.clone())
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The upstream child: one listener per provider (as separate hosts would be) plus one that
/// takes the provider from the first path segment (the direct baseline's target). It prints
/// its ports, then serves until its standard input closes.
fn run_upstream() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let bodies = Arc::new(Bodies::new());
        let mut ports = Vec::new();
        let combined = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        ports.push(combined.local_addr().unwrap().port());
        tokio::spawn(serve_upstream(combined, None, bodies.clone()));
        for provider in PROVIDERS {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            ports.push(listener.local_addr().unwrap().port());
            tokio::spawn(serve_upstream(listener, Some(provider), bodies.clone()));
        }
        let line: Vec<String> = ports.iter().map(u16::to_string).collect();
        println!("ports {}", line.join(" "));
        let _ = std::io::stdout().flush();
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {
                sink.clear();
            }
        })
        .await;
    });
}

struct Upstream {
    process: Proc,
    combined: SocketAddr,
    providers: Vec<(Provider, SocketAddr)>,
}

fn spawn_upstream(core: Option<usize>) -> Upstream {
    let mut command = Command::new(std::env::current_exe().expect("own path"));
    command
        .arg("--upstream-child")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    pin_child(&mut command, core);
    let mut child = command.spawn().expect("upstream starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("upstream ports");
    let ports: Vec<u16> = line
        .split_whitespace()
        .skip(1)
        .map(|p| p.parse().expect("port"))
        .collect();
    let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    Upstream {
        process: Proc { child },
        combined: addr(ports[0]),
        providers: PROVIDERS
            .into_iter()
            .zip(ports[1..].iter().map(|p| addr(*p)))
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// The proxies under test, and Redis
// ---------------------------------------------------------------------------------------------

struct HaltgateRun<'a> {
    binary: &'a Path,
    dir: PathBuf,
    rules: PathBuf,
    store: String,
    upstream: &'a Upstream,
    core: Option<usize>,
}

/// Starts the haltgate binary and waits for `/readyz`.
async fn start_haltgate(run: HaltgateRun<'_>) -> (Proc, SocketAddr) {
    std::fs::create_dir_all(&run.dir).expect("haltgate dir");
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let control = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let log = std::fs::File::create(run.dir.join("haltgate.log")).expect("log file");
    let mut command = Command::new(run.binary);
    command
        .current_dir(&run.dir)
        .env("HALTGATE_LOG", "warn")
        .arg("serve")
        .args(["--listen", &listen.to_string()])
        .args(["--control-listen", &control.to_string()])
        .arg("--rules")
        .arg(&run.rules)
        .args(["--store", &run.store])
        .arg("--outbox")
        .arg(run.dir.join("outbox.redb"))
        .arg("--local-copy")
        .arg(run.dir.join("local.redb"))
        // The halt phases measure the halt path; a burst of distinct test credentials would
        // otherwise open the storm breaker, which is a different path.
        .args(["--storm-max-closures-per-minute", "0"]);
    for (provider, addr) in &run.upstream.providers {
        command.args(["--route", &format!("{}=http://{addr}", provider.name())]);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    pin_child(&mut command, run.core);
    let mut process = Proc {
        child: command.spawn().expect("haltgate starts"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if process.exited() {
            fail(&format!(
                "haltgate exited at start; see {}",
                run.dir.join("haltgate.log").display()
            ));
        }
        if let Ok(mut sender) = connect(control).await {
            let request = Request::get("/readyz")
                .header(HOST, control.to_string())
                .body(Full::new(Bytes::new()))
                .unwrap();
            if let Ok(response) = sender.send_request(request).await {
                if response.status() == 200 {
                    return (process, listen);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fail("haltgate did not become ready within 30 s")
}

fn nginx_config(dir: &Path, listen: SocketAddr, upstream: &Upstream) -> String {
    let d = dir.display();
    let mut config = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\nworker_rlimit_nofile 16384;\n\
         pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n  access_log off;\n  keepalive_timeout 60s;\n  keepalive_requests 10000000;\n\
         \x20 client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n\
         \x20 fastcgi_temp_path {d}/tmp/fastcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n\
         \x20 scgi_temp_path {d}/tmp/scgi;\n"
    );
    for (provider, addr) in &upstream.providers {
        let _ = writeln!(
            config,
            "  upstream {} {{ server {addr}; keepalive 64; keepalive_requests 10000000; }}",
            provider.name()
        );
    }
    let _ = write!(
        config,
        "  server {{\n    listen {listen};\n    proxy_http_version 1.1;\n\
         \x20   proxy_set_header Connection \"\";\n    proxy_buffering off;\n"
    );
    for (provider, _) in &upstream.providers {
        let name = provider.name();
        let _ = writeln!(
            config,
            "    location /{name}/ {{ proxy_pass http://{name}/; }}"
        );
    }
    config.push_str("  }\n}\n");
    config
}

async fn start_nginx(
    binary: &Path,
    dir: &Path,
    upstream: &Upstream,
    core: Option<usize>,
) -> (Proc, SocketAddr) {
    std::fs::create_dir_all(dir.join("tmp")).expect("nginx dir");
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config_path = dir.join("nginx.conf");
    std::fs::write(&config_path, nginx_config(dir, listen, upstream)).expect("nginx.conf");
    let mut command = Command::new(binary);
    command
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    pin_child(&mut command, core);
    let mut process = Proc {
        child: command.spawn().expect("nginx starts"),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if process.exited() {
            fail(&format!(
                "nginx exited at start; see {}",
                dir.join("error.log").display()
            ));
        }
        if TcpStream::connect(listen).await.is_ok() {
            return (process, listen);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fail("nginx did not listen within 10 s")
}

struct Redis {
    /// Held so the server stops with the run.
    _process: Proc,
    port: u16,
}

async fn start_redis(dir: &Path, core: Option<usize>) -> Option<Redis> {
    let binary = find_on_path("redis-server")?;
    std::fs::create_dir_all(dir).ok()?;
    let port = free_port();
    let mut command = Command::new(binary);
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    pin_child(&mut command, core);
    let process = Proc {
        child: command.spawn().ok()?,
    };
    let redis = Redis {
        _process: process,
        port,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if redis.command_calls().await.is_some() {
            return Some(redis);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

impl Redis {
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Calls per command so far (INFO commandstats), without the INFO calls themselves.
    async fn command_calls(&self) -> Option<BTreeMap<String, u64>> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut connection = client.get_multiplexed_async_connection().await.ok()?;
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut connection)
            .await
            .ok()?;
        let mut calls = BTreeMap::new();
        for line in info.lines() {
            let Some((name, stats)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let count = query_param(&stats.replace(',', "&"), "calls")
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            if name != "info" && name != "client|setinfo" && name != "hello" {
                calls.insert(name.to_owned(), count);
            }
        }
        Some(calls)
    }
}

fn calls_between(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(name, n)| (name.clone(), n - before.get(name).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The load generator
// ---------------------------------------------------------------------------------------------

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> std::io::Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Json,
    Sse,
    Lost,
}

struct Template {
    method: Method,
    uri: Uri,
    body: Bytes,
    kind: Kind,
    weight: u32,
}

/// The request mix, with per-mille weights.
struct Mix {
    templates: Vec<Template>,
    total: u32,
}

impl Mix {
    fn standard() -> Mix {
        let post = |uri: &str, body: &'static str, kind: Kind, weight: u32| Template {
            method: Method::POST,
            uri: uri.parse().expect("uri"),
            body: Bytes::from_static(body.as_bytes()),
            kind,
            weight,
        };
        let get = |uri: &str, weight: u32| Template {
            method: Method::GET,
            uri: uri.parse().expect("uri"),
            body: Bytes::new(),
            kind: Kind::Json,
            weight,
        };
        let slack_post =
            r#"{"channel":"C0123ABCD","text":"Deploy finished: 14 services, 0 errors."}"#;
        let linear_query = r#"{"query":"query { issues(first: 20) { nodes { id identifier title state { name } } } }"}"#;
        let mcp_call = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"src/main.rs"}}}"#;
        let messages = r#"{"model":"claude-sonnet-4-5","max_tokens":1024,"messages":[{"role":"user","content":"Summarise the open issues."}]}"#;
        let stream = r#"{"model":"claude-sonnet-4-5","max_tokens":1024,"stream":true,"messages":[{"role":"user","content":"Summarise the open issues."}]}"#;
        let templates = vec![
            post(
                "/slack/api/chat.postMessage?size=1024",
                slack_post,
                Kind::Json,
                150,
            ),
            get(
                "/slack/api/conversations.history?channel=C0123ABCD&size=4096",
                80,
            ),
            get(
                "/slack/api/conversations.history?channel=C0123ABCD&size=16384",
                65,
            ),
            get(
                "/github/repos/acme/widgets/issues?per_page=10&size=2048",
                90,
            ),
            get(
                "/github/repos/acme/widgets/issues?per_page=50&size=8192",
                60,
            ),
            get("/github/repos/acme/widgets/pulls?size=16384", 50),
            post("/linear/graphql?size=1024", linear_query, Kind::Json, 70),
            post("/linear/graphql?size=4096", linear_query, Kind::Json, 80),
            post("/mcp/?size=1024", mcp_call, Kind::Json, 80),
            post("/mcp/?size=4096", mcp_call, Kind::Json, 70),
            post(
                "/anthropic/v1/messages?size=2048",
                messages,
                Kind::Json,
                100,
            ),
            post("/anthropic/v1/messages?sse=12:0", stream, Kind::Sse, 50),
            post(
                "/slack/api/chat.postMessage?lost=1",
                slack_post,
                Kind::Lost,
                5,
            ),
        ];
        Mix::of(templates)
    }

    fn of(templates: Vec<Template>) -> Mix {
        let total = templates.iter().map(|t| t.weight).sum();
        Mix { templates, total }
    }

    /// The standard mix without its lost-access requests: traffic that matches nothing.
    fn passing() -> Mix {
        let mut mix = Mix::standard();
        mix.templates.retain(|t| t.kind != Kind::Lost);
        Mix::of(mix.templates)
    }

    fn lost_only() -> Mix {
        let mut mix = Mix::standard();
        mix.templates.retain(|t| t.kind == Kind::Lost);
        Mix::of(mix.templates)
    }

    fn sse(events: usize, pace: Duration) -> Mix {
        let mut mix = Mix::standard();
        mix.templates.retain(|t| t.kind == Kind::Sse);
        let uri = format!("/anthropic/v1/messages?sse={events}:{}", pace.as_millis());
        mix.templates[0].uri = uri.parse().expect("uri");
        Mix::of(mix.templates)
    }

    fn pick(&self, rng: &mut u64) -> &Template {
        // xorshift64: cheap and reproducible per connection.
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        let mut roll = (*rng % self.total as u64) as u32;
        for template in &self.templates {
            if roll < template.weight {
                return template;
            }
            roll -= template.weight;
        }
        &self.templates[0]
    }
}

static LOST_SESSIONS: AtomicU64 = AtomicU64::new(0);

fn build_request(
    template: &Template,
    host: &HeaderValue,
    session: &HeaderValue,
) -> Request<Full<Bytes>> {
    let session = if template.kind == Kind::Lost {
        // A halt closes its session: each lost-access call comes from a session of its own.
        let n = LOST_SESSIONS.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("loadbench-lost-{}-{n}", std::process::id())).unwrap()
    } else {
        session.clone()
    };
    let mut request = Request::builder()
        .method(template.method.clone())
        .uri(template.uri.clone())
        .header(HOST, host.clone())
        .header(AUTHORIZATION, HeaderValue::from_static(TOKEN))
        .header("x-haltgate-session", session);
    if !template.body.is_empty() {
        request = request.header(CONTENT_TYPE, "application/json");
    }
    request
        .body(Full::new(template.body.clone()))
        .expect("request")
}

enum Schedule {
    /// Each connection sends its next request when the previous answer is complete.
    Closed,
    /// Requests are due at a fixed total rate, spread over the connections.
    Open { rate: f64 },
}

struct Load {
    addr: SocketAddr,
    mix: Arc<Mix>,
    connections: usize,
    schedule: Schedule,
    duration: Duration,
    /// Stop after this many requests per connection.
    limit: Option<u64>,
}

#[derive(Default)]
struct Tally {
    done: u64,
    errors: u64,
    halted: u64,
    planned: u64,
}

struct LoadResult {
    latency: Histogram<u64>,
    tally: Tally,
    elapsed: Duration,
}

impl LoadResult {
    fn rps(&self) -> f64 {
        self.tally.done as f64 / self.elapsed.as_secs_f64()
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

/// Runs a load against `addr` and answers the latency of every complete answer, in µs.
///
/// Open loop: a request's latency counts from its due time when the connection was still busy
/// with an earlier one at that time (the wait a slow server caused, which a closed loop would
/// hide: coordinated omission), else from when it was sent (the generator's timer is
/// millisecond-grained; its lateness is not the server's).
async fn run_load(load: Load, progress: &Progress) -> LoadResult {
    let started = Instant::now();
    let deadline = started + load.duration;
    let host = HeaderValue::from_str(&load.addr.to_string()).unwrap();
    let sessions: Arc<Vec<HeaderValue>> = Arc::new(
        (0..256)
            .map(|i| HeaderValue::from_str(&format!("loadbench-{i}")).unwrap())
            .collect(),
    );
    let mut workers = tokio::task::JoinSet::new();
    for c in 0..load.connections {
        let (addr, host, sessions, mix) =
            (load.addr, host.clone(), sessions.clone(), load.mix.clone());
        // In mixed traffic a halt waits for its closure to be durable (an fsync): the halt path
        // has its own phase and target, so mixed phases time the other requests only, the
        // same ones for every target.
        let time_lost = mix.templates.iter().all(|t| t.kind == Kind::Lost);
        let done_counter = progress.done.clone();
        let interval = match load.schedule {
            Schedule::Closed => None,
            Schedule::Open { rate } => {
                Some(Duration::from_secs_f64(load.connections as f64 / rate))
            }
        };
        let first_due = match load.schedule {
            Schedule::Closed => started,
            Schedule::Open { rate } => started + Duration::from_secs_f64(c as f64 / rate),
        };
        let limit = load.limit;
        workers.spawn(async move {
            let mut latency = histogram();
            let mut tally = Tally::default();
            let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ ((c as u64 + 1) * 0x2545_f491_4f6c_dd1d);
            let mut sender: Option<Sender> = None;
            let mut due = first_due;
            loop {
                if limit.is_some_and(|limit| tally.done + tally.errors >= limit) {
                    break;
                }
                let now = Instant::now();
                if now >= deadline || due >= deadline {
                    break;
                }
                let start = match interval {
                    None => now,
                    Some(_) if now < due => {
                        tokio::time::sleep_until(due.into()).await;
                        Instant::now()
                    }
                    Some(_) => due,
                };
                tally.planned += 1;
                if sender.is_none() {
                    match connect(addr).await {
                        Ok(s) => sender = Some(s),
                        Err(_) => {
                            tally.errors += 1;
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            continue;
                        }
                    }
                }
                let template = mix.pick(&mut rng);
                let session = &sessions[(rng >> 8) as usize % sessions.len()];
                let request = build_request(template, &host, session);
                let sent = sender.as_mut().expect("connected");
                let outcome = async {
                    sent.ready().await?;
                    let response = sent.send_request(request).await?;
                    let status = response.status();
                    // A halt speaks the provider's dialect (Slack: 200 with `ok: false`), so
                    // it is told by its header, not by its status.
                    let halted = response.headers().contains_key(haltgate::headers::HALT);
                    response.into_body().collect().await?;
                    Ok::<_, hyper::Error>((status, halted))
                }
                .await;
                match outcome {
                    Ok((status, halted))
                        if (!halted && status == 200)
                            || (halted && template.kind == Kind::Lost) =>
                    {
                        tally.done += 1;
                        tally.halted += u64::from(halted);
                        if template.kind != Kind::Lost || time_lost {
                            let _ = latency.record(start.elapsed().as_micros().max(1) as u64);
                        }
                    }
                    Ok(_) => tally.errors += 1,
                    Err(_) => {
                        tally.errors += 1;
                        sender = None;
                    }
                }
                done_counter.fetch_add(1, Ordering::Relaxed);
                if let Some(interval) = interval {
                    due += interval;
                }
            }
            (latency, tally)
        });
    }
    let mut latency = histogram();
    let mut tally = Tally::default();
    while let Some(joined) = workers.join_next().await {
        let (h, t) = joined.expect("worker");
        latency.add(h).expect("same bounds");
        tally.done += t.done;
        tally.errors += t.errors;
        tally.halted += t.halted;
        tally.planned += t.planned;
    }
    LoadResult {
        latency,
        tally,
        elapsed: started.elapsed(),
    }
}

/// Time to the first byte of an event stream's body, one stream at a time, in µs.
async fn stream_first_bytes(addr: SocketAddr, streams: u64, progress: &Progress) -> Histogram<u64> {
    let mix = Mix::sse(3, Duration::from_millis(1));
    let host = HeaderValue::from_str(&addr.to_string()).unwrap();
    let session = HeaderValue::from_static("loadbench-stream");
    let mut first_bytes = histogram();
    let mut sender: Option<Sender> = None;
    for _ in 0..streams {
        if sender.is_none() {
            sender = connect(addr).await.ok();
        }
        let Some(s) = sender.as_mut() else { continue };
        let request = build_request(&mix.templates[0], &host, &session);
        let start = Instant::now();
        let outcome = async {
            s.ready().await?;
            let mut body = s.send_request(request).await?.into_body();
            let mut first = None;
            while let Some(frame) = body.frame().await {
                if frame?.data_ref().is_some_and(|d| !d.is_empty()) && first.is_none() {
                    first = Some(start.elapsed());
                }
            }
            Ok::<_, hyper::Error>(first)
        }
        .await;
        match outcome {
            Ok(Some(first)) => {
                let _ = first_bytes.record(first.as_micros().max(1) as u64);
            }
            _ => sender = None,
        }
        progress.done.fetch_add(1, Ordering::Relaxed);
    }
    first_bytes
}

struct StreamsResult {
    streams: usize,
    stall_free: usize,
    complete: usize,
    worst_gap: Duration,
    worst_start: Duration,
}

/// Many event streams at once, each on its own connection: a stream is stall-free when every
/// event arrived and no wait between two events exceeded 10× the pace. The wait for the first
/// event (all streams start together, each needing an upstream connection) is kept apart.
async fn concurrent_streams(addr: SocketAddr, plan: &Plan, progress: &Progress) -> StreamsResult {
    let mix = Arc::new(Mix::sse(plan.stream_events, plan.stream_pace));
    let host = HeaderValue::from_str(&addr.to_string()).unwrap();
    let (go, ready) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let (events, pace) = (plan.stream_events, plan.stream_pace);
    let connected = Arc::new(AtomicU64::new(0));
    for i in 0..plan.streams {
        let (mix, host, mut ready, done, connected) = (
            mix.clone(),
            host.clone(),
            ready.clone(),
            progress.done.clone(),
            connected.clone(),
        );
        tasks.spawn(async move {
            let mut sender = None;
            for _ in 0..3 {
                if let Ok(s) = connect(addr).await {
                    sender = Some(s);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            connected.fetch_add(1, Ordering::Relaxed);
            let _ = ready.wait_for(|go| *go).await;
            let mut sender = sender?;
            let session = HeaderValue::from_str(&format!("loadbench-stream-{i}")).unwrap();
            let request = build_request(&mix.templates[0], &host, &session);
            let start = Instant::now();
            let mut last = start;
            let (mut worst_gap, mut first, mut seen, mut prev_newline) =
                (Duration::ZERO, None, 0usize, false);
            sender.ready().await.ok()?;
            let mut body = sender.send_request(request).await.ok()?.into_body();
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Some(data) = frame.data_ref() {
                    let now = Instant::now();
                    if first.is_some() {
                        worst_gap = worst_gap.max(now - last);
                    }
                    first.get_or_insert(now - start);
                    last = now;
                    for byte in data.iter() {
                        if *byte == b'\n' {
                            if prev_newline {
                                seen += 1;
                            }
                            prev_newline = !prev_newline;
                        } else {
                            prev_newline = false;
                        }
                    }
                }
            }
            done.fetch_add(1, Ordering::Relaxed);
            Some((seen, worst_gap, first.unwrap_or(Duration::MAX)))
        });
    }
    // Give every connection its moment to open, then start all streams at once.
    let open_until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < open_until && connected.load(Ordering::Relaxed) < plan.streams as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(ready);
    let _ = go.send(true);
    let mut result = StreamsResult {
        streams: plan.streams,
        stall_free: 0,
        complete: 0,
        worst_gap: Duration::ZERO,
        worst_start: Duration::ZERO,
    };
    let limit = pace * 10;
    while let Some(joined) = tasks.join_next().await {
        if let Ok(Some((seen, gap, first))) = joined {
            let complete = seen == events;
            result.complete += complete as usize;
            result.stall_free += (complete && gap <= limit) as usize;
            result.worst_gap = result.worst_gap.max(gap);
            result.worst_start = result.worst_start.max(first);
        }
    }
    result
}

/// Opens `n` keep-alive connections, one small request on each, and keeps them open.
async fn idle_connections(addr: SocketAddr, n: usize) -> Vec<Sender> {
    let mix = Mix::passing();
    let host = HeaderValue::from_str(&addr.to_string()).unwrap();
    let session = HeaderValue::from_static("loadbench-idle");
    let mut senders = Vec::with_capacity(n);
    for _ in 0..n {
        let Ok(mut sender) = connect(addr).await else {
            continue;
        };
        let request = build_request(&mix.templates[0], &host, &session);
        if let Ok(response) = sender.send_request(request).await {
            let _ = response.into_body().collect().await;
            senders.push(sender);
        }
    }
    senders
}

// ---------------------------------------------------------------------------------------------
// Progress
// ---------------------------------------------------------------------------------------------

struct Progress {
    label: Arc<Mutex<String>>,
    done: Arc<AtomicU64>,
    phase_start: Arc<Mutex<Instant>>,
    run_start: Instant,
    stop: Arc<AtomicBool>,
    terminal: bool,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            label: Arc::new(Mutex::new(String::new())),
            done: Arc::new(AtomicU64::new(0)),
            phase_start: Arc::new(Mutex::new(Instant::now())),
            run_start: Instant::now(),
            stop: Arc::new(AtomicBool::new(false)),
            terminal: std::io::stderr().is_terminal(),
        }
    }

    /// Redraws one status line twice a second (a line per phase when stderr is not a terminal).
    fn spawn_printer(&self) {
        if !self.terminal {
            return;
        }
        let (label, done, phase_start, stop) = (
            self.label.clone(),
            self.done.clone(),
            self.phase_start.clone(),
            self.stop.clone(),
        );
        let run_start = self.run_start;
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let since = phase_start.lock().unwrap().elapsed().as_secs_f64();
                let n = done.load(Ordering::Relaxed);
                eprint!(
                    "\r\x1b[2K[{:>5.1} s] {} | {:.1} s, {n} requests, {:.0}/s",
                    run_start.elapsed().as_secs_f64(),
                    label.lock().unwrap(),
                    since,
                    n as f64 / since.max(0.001)
                );
            }
        });
    }

    fn phase(&self, label: String) {
        if !self.terminal {
            eprintln!(
                "[{:>5.1} s] {label}",
                self.run_start.elapsed().as_secs_f64()
            );
        }
        *self.label.lock().unwrap() = label;
        *self.phase_start.lock().unwrap() = Instant::now();
        self.done.store(0, Ordering::Relaxed);
    }

    fn finish(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if self.terminal {
            eprintln!();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

struct Bench {
    plan: Plan,
    quick: bool,
    out: PathBuf,
    haltgate: PathBuf,
    nginx: Option<PathBuf>,
    pinned: bool,
    progress: Progress,
}

/// What one closed-loop run cost, per request and per core.
struct Throughput {
    rps: f64,
    errors: u64,
    proxy_cpu_per_request: Option<Duration>,
    proxy_core_busy: Option<f64>,
    load_core_busy: f64,
    upstream_cpu_per_request: Duration,
}

struct TargetResult {
    name: &'static str,
    throughput: Throughput,
    concurrency_one: LoadResult,
    open: LoadResult,
    /// Proxy CPU per request during the open-loop phase, at the rate every target shares.
    open_cpu_per_request: Option<Duration>,
    first_bytes: Histogram<u64>,
    streams: StreamsResult,
    halts: LoadResult,
    memory: Option<Memory>,
}

struct Memory {
    idle_at_start: u64,
    /// The anonymous part of `idle_at_start`.
    anon_at_start: u64,
    anon_after_load: u64,
    idle_after_load: u64,
    peak: u64,
    per_idle_connection: f64,
    idle_connections: usize,
}

struct StoreCheck {
    halts: LoadResult,
    idle_calls: BTreeMap<String, u64>,
    passing_calls: BTreeMap<String, u64>,
    passing_requests: u64,
    halt_calls: BTreeMap<String, u64>,
}

impl Bench {
    fn core(&self, core: usize) -> Option<usize> {
        self.pinned.then_some(core)
    }

    async fn run(self) -> String {
        self.progress.spawn_printer();
        let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let upstream = spawn_upstream(self.core(LOAD_CORE));
        let redis = start_redis(&self.out.join("redis"), self.core(LOAD_CORE)).await;
        let rules = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/rules"));
        let store_dir = self.out.join("haltgate");
        let _ = std::fs::remove_dir_all(&store_dir);

        let haltgate_run = |dir: &str, rules: PathBuf, store: String| HaltgateRun {
            binary: &self.haltgate,
            dir: store_dir.join(dir),
            rules,
            store,
            upstream: &upstream,
            core: self.core(PROXY_CORE),
        };

        // haltgate first: half its maximum is the open-loop rate for every target.
        let redb = format!("redb:{}", store_dir.join("all-rules/state.redb").display());
        let (process, addr) = start_haltgate(haltgate_run("all-rules", rules.clone(), redb)).await;
        let haltgate = self
            .measure("haltgate", addr, Some(&process), &upstream, None)
            .await;
        let profile = self.profile(addr, &process, &upstream).await;
        drop(process);
        let rate = (haltgate.throughput.rps * 0.5).max(100.0);

        let direct = self
            .measure("direct", upstream.combined, None, &upstream, Some(rate))
            .await;

        let nginx = match &self.nginx {
            Some(binary) => {
                let (process, addr) = start_nginx(
                    binary,
                    &self.out.join("nginx"),
                    &upstream,
                    self.core(PROXY_CORE),
                )
                .await;
                let result = self
                    .measure("nginx", addr, Some(&process), &upstream, Some(rate))
                    .await;
                Some(result)
            }
            None => None,
        };

        // The engine's share: the same closed loop with one rule that no route's provider uses.
        let idle_rules = store_dir.join("idle-rules");
        std::fs::create_dir_all(&idle_rules).expect("rules dir");
        std::fs::write(idle_rules.join("unrouted.toml"), IDLE_RULE).expect("rule file");
        let redb = format!("redb:{}", store_dir.join("no-rules/state.redb").display());
        let (process, addr) = start_haltgate(haltgate_run("no-rules", idle_rules, redb)).await;
        self.progress
            .phase("haltgate, no rule inspecting: warm-up".into());
        self.closed_loop(addr, Some(&process), &upstream, self.plan.warmup)
            .await;
        self.progress
            .phase("haltgate, no rule inspecting: closed loop".into());
        let no_rules = self
            .closed_loop(addr, Some(&process), &upstream, self.plan.closed)
            .await;
        drop(process);

        let store_check = match &redis {
            Some(redis) => {
                let (process, addr) =
                    start_haltgate(haltgate_run("redis", rules.clone(), redis.url())).await;
                let check = self.store_check(addr, redis).await;
                drop(process);
                Some(check)
            }
            None => None,
        };
        drop(redis);
        drop(upstream);
        self.progress.finish();
        let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

        let report = Report {
            bench: &self,
            rate,
            haltgate,
            direct,
            nginx,
            no_rules,
            profile,
            store_check,
            load_before,
            load_after,
        };
        report.write()
    }

    async fn closed_loop(
        &self,
        addr: SocketAddr,
        proxy: Option<&Proc>,
        upstream: &Upstream,
        duration: Duration,
    ) -> Throughput {
        let mix = Arc::new(self.plan.mix());
        let own = std::process::id();
        let proxy_cpu = proxy.map(|p| cpu_time(p.pid()));
        let (self_cpu, upstream_cpu) = (cpu_time(own), cpu_time(upstream.process.pid()));
        let result = run_load(
            Load {
                addr,
                mix,
                connections: CONNECTIONS,
                schedule: Schedule::Closed,
                duration,
                limit: None,
            },
            &self.progress,
        )
        .await;
        let wall = result.elapsed.as_secs_f64();
        let requests = result.tally.done.max(1) as u32;
        let proxy_used = proxy
            .zip(proxy_cpu)
            .map(|(p, before)| cpu_time(p.pid()) - before);
        let upstream_used = cpu_time(upstream.process.pid()) - upstream_cpu;
        let load_used = cpu_time(own) - self_cpu + upstream_used;
        Throughput {
            rps: result.rps(),
            errors: result.tally.errors,
            proxy_cpu_per_request: proxy_used.map(|used| used / requests),
            proxy_core_busy: proxy_used.map(|used| used.as_secs_f64() / wall),
            load_core_busy: load_used.as_secs_f64() / wall,
            upstream_cpu_per_request: upstream_used / requests,
        }
    }

    async fn measure(
        &self,
        name: &'static str,
        addr: SocketAddr,
        proxy: Option<&Proc>,
        upstream: &Upstream,
        rate: Option<f64>,
    ) -> TargetResult {
        let plan = &self.plan;
        let idle_at_start = proxy.map(|p| memory(p.pid()));
        let mix = Arc::new(self.plan.mix());
        let phase = |what: &str| self.progress.phase(format!("{name}: {what}"));

        phase("warm-up");
        self.closed_loop(addr, proxy, upstream, plan.warmup).await;

        phase("concurrency 1");
        let load = |connections, schedule, duration, mix: &Arc<Mix>| Load {
            addr,
            mix: mix.clone(),
            connections,
            schedule,
            duration,
            limit: None,
        };
        let concurrency_one = run_load(
            load(1, Schedule::Closed, plan.concurrency_one, &mix),
            &self.progress,
        )
        .await;

        phase("closed loop, maximum throughput");
        let throughput = self.closed_loop(addr, proxy, upstream, plan.closed).await;

        let rate = rate.unwrap_or((throughput.rps * 0.5).max(100.0));
        phase(&format!("open loop at {rate:.0}/s"));
        let proxy_cpu = proxy.map(|p| cpu_time(p.pid()));
        let open = run_load(
            load(CONNECTIONS, Schedule::Open { rate }, plan.open, &mix),
            &self.progress,
        )
        .await;
        // Every proxy gets the same requests at the same rate here, so their CPU per request
        // compares like for like (at maximum throughput each runs at its own rate).
        let open_cpu_per_request = proxy
            .zip(proxy_cpu)
            .map(|(p, before)| (cpu_time(p.pid()) - before) / open.tally.done.max(1) as u32);

        phase("event streams, time to first byte");
        let first_bytes = stream_first_bytes(addr, plan.ttfb_streams, &self.progress).await;

        phase(&format!("{} concurrent event streams", plan.streams));
        let streams = concurrent_streams(addr, plan, &self.progress).await;

        phase("lost-access responses, concurrency 1");
        let lost = Arc::new(Mix::lost_only());
        let halts = run_load(
            Load {
                limit: Some(plan.halts),
                ..load(1, Schedule::Closed, Duration::from_secs(120), &lost)
            },
            &self.progress,
        )
        .await;

        let memory = match proxy {
            Some(proxy) => {
                phase(&format!(
                    "{} idle keep-alive connections",
                    plan.idle_connections
                ));
                tokio::time::sleep(Duration::from_millis(500)).await;
                let before = memory(proxy.pid()).0;
                let open = idle_connections(addr, plan.idle_connections).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                let with_open = memory(proxy.pid()).0;
                let count = open.len();
                drop(open);
                // Idle means a while after the load: long enough for haltgate's periodic heap
                // trim (every 5 s) to have handed back what the load freed.
                tokio::time::sleep(Duration::from_secs(6)).await;
                let (idle_after_load, peak, anon_after_load) = memory(proxy.pid());
                Some(Memory {
                    idle_at_start: idle_at_start.map_or(0, |m| m.0),
                    anon_at_start: idle_at_start.map_or(0, |m| m.2),
                    anon_after_load,
                    idle_after_load,
                    peak,
                    per_idle_connection: with_open.saturating_sub(before) as f64
                        / count.max(1) as f64,
                    idle_connections: count,
                })
            }
            None => None,
        };
        TargetResult {
            name,
            throughput,
            concurrency_one,
            open,
            open_cpu_per_request,
            first_bytes,
            streams,
            halts,
            memory,
        }
    }

    /// With Redis as the store: the halt path's latency, and the store calls that traffic
    /// matching nothing causes compared with an idle window as long.
    async fn store_check(&self, addr: SocketAddr, redis: &Redis) -> StoreCheck {
        let plan = &self.plan;
        let passing = Arc::new(Mix::passing());
        let lost = Arc::new(Mix::lost_only());
        let load = |mix: &Arc<Mix>, duration, limit| Load {
            addr,
            mix: mix.clone(),
            connections: 1,
            schedule: Schedule::Closed,
            duration,
            limit,
        };
        self.progress.phase("haltgate on Redis: warm-up".into());
        run_load(load(&passing, plan.warmup, None), &self.progress).await;

        self.progress.phase("haltgate on Redis: idle window".into());
        let before = redis.command_calls().await.unwrap_or_default();
        tokio::time::sleep(plan.store_window).await;
        let after = redis.command_calls().await.unwrap_or_default();
        let idle_calls = calls_between(&before, &after);

        self.progress
            .phase("haltgate on Redis: responses that match nothing".into());
        let passed = run_load(load(&passing, plan.store_window, None), &self.progress).await;
        let after_passing = redis.command_calls().await.unwrap_or_default();
        let passing_calls = calls_between(&after, &after_passing);

        self.progress
            .phase("haltgate on Redis: halt path, concurrency 1".into());
        let halts = run_load(
            load(&lost, Duration::from_secs(120), Some(plan.halts)),
            &self.progress,
        )
        .await;
        let after_halts = redis.command_calls().await.unwrap_or_default();
        StoreCheck {
            halt_calls: calls_between(&after_passing, &after_halts),
            halts,
            idle_calls,
            passing_calls,
            passing_requests: passed.tally.done,
        }
    }
}

/// Where haltgate's CPU goes, in percent of its samples.
struct Profile {
    samples: u64,
    kernel: f64,
    libc: f64,
    binary: f64,
    engine: f64,
    halt_layer: f64,
    hyper: f64,
    tokio: f64,
}

impl Bench {
    /// Samples haltgate with `perf` (when installed) during one more closed loop, so the
    /// sampling costs nothing to the measured runs.
    async fn profile(
        &self,
        addr: SocketAddr,
        proxy: &Proc,
        upstream: &Upstream,
    ) -> Option<Profile> {
        let perf = find_on_path("perf")?;
        let data = self.out.join("perf.data");
        let seconds = self.plan.closed.as_secs_f64() / 2.0;
        let mut command = Command::new(&perf);
        command
            .args(["record", "-F", "999", "-p", &proxy.pid().to_string(), "-o"])
            .arg(&data)
            .args(["--", "sleep", &format!("{seconds:.1}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        pin_child(&mut command, self.core(LOAD_CORE));
        let mut recording = Proc {
            child: command.spawn().ok()?,
        };
        self.progress
            .phase("haltgate: profile (perf record)".into());
        self.closed_loop(
            addr,
            Some(proxy),
            upstream,
            Duration::from_secs_f64(seconds),
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !recording.exited() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let report = Command::new(&perf)
            .args([
                "report",
                "--stdio",
                "--no-children",
                "-g",
                "none",
                "--sort",
                "dso,sym",
                "-i",
            ])
            .arg(&data)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&report.stdout);
        let samples = text
            .lines()
            .find_map(|l| l.strip_prefix("# Samples: "))
            .and_then(|n| n.split_whitespace().next())
            .and_then(|n| {
                n.trim_end_matches('K').parse::<f64>().ok().map(|v| {
                    if n.ends_with('K') {
                        (v * 1000.0) as u64
                    } else {
                        v as u64
                    }
                })
            })
            .unwrap_or(0);
        let binary = self.haltgate.file_name()?.to_string_lossy().into_owned();
        let mut profile = Profile {
            samples,
            kernel: 0.0,
            libc: 0.0,
            binary: 0.0,
            engine: 0.0,
            halt_layer: 0.0,
            hyper: 0.0,
            tokio: 0.0,
        };
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let mut fields = line.split_whitespace();
            let (Some(percent), Some(dso)) = (fields.next(), fields.next()) else {
                continue;
            };
            let Ok(percent) = percent.trim_end_matches('%').parse::<f64>() else {
                continue;
            };
            let symbol: String = fields.collect::<Vec<_>>().join(" ");
            if dso.contains("kernel") {
                profile.kernel += percent;
            } else if dso.starts_with("libc") {
                profile.libc += percent;
            } else if dso == binary {
                profile.binary += percent;
                let has = |names: &[&str]| names.iter().any(|n| symbol.contains(n));
                if has(&["haltgate::rules::", "aho_corasick", "regex", "serde_json"]) {
                    profile.engine += percent;
                } else if has(&["haltgate::halt::"]) {
                    profile.halt_layer += percent;
                } else if has(&["hyper", "httparse", "http::"]) {
                    profile.hyper += percent;
                } else if has(&["tokio::"]) {
                    profile.tokio += percent;
                }
            }
        }
        (profile.samples > 0).then_some(profile)
    }
}

/// One rule for a provider no route names: the proxy runs, the engine never inspects.
const IDLE_RULE: &str = r#"schema = 2

[[rule]]
id = "unrouted.never"
class = "lost_access"
description = "No route uses this provider, so no response is ever inspected."
reason = "Never matches."
[rule.when]
all = [{ source = "status", equals = 599 }]
"#;

// ---------------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------------

struct Report<'a> {
    bench: &'a Bench,
    rate: f64,
    haltgate: TargetResult,
    direct: TargetResult,
    nginx: Option<TargetResult>,
    no_rules: Throughput,
    profile: Option<Profile>,
    store_check: Option<StoreCheck>,
    load_before: String,
    load_after: String,
}

fn us(h: &Histogram<u64>, q: f64) -> i64 {
    if h.is_empty() {
        return 0;
    }
    h.value_at_quantile(q) as i64
}

fn signed(value: i64) -> String {
    if value < 0 {
        format!("−{} µs", -value)
    } else {
        format!("+{value} µs")
    }
}

fn verdict(pass: bool) -> &'static str {
    if pass {
        "**pass**"
    } else {
        "**fail**"
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn calls_text(calls: &BTreeMap<String, u64>) -> String {
    if calls.is_empty() {
        return "none".into();
    }
    calls
        .iter()
        .map(|(name, n)| format!("{name} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = online_cores();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_owned()))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpu}, {cores} cores, {memory} memory, Linux {}",
        kernel.trim()
    )
}

impl Report<'_> {
    fn targets(&self) -> Vec<&TargetResult> {
        let mut all = vec![&self.direct, &self.haltgate];
        all.extend(self.nginx.as_ref());
        all
    }

    fn write(&self) -> String {
        let out = &self.bench.out;
        let mut r = String::new();
        let (h, d) = (&self.haltgate, &self.direct);
        let _ = writeln!(r, "# haltgate load benchmark\n");
        let _ = writeln!(
            r,
            "- run: {} (`loadbench{}`), commit {}",
            if self.bench.quick {
                "quick smoke run, a few seconds per phase"
            } else {
                "full run"
            },
            if self.bench.quick { " --quick" } else { "" },
            git_commit()
        );
        let _ = writeln!(r, "- machine: {}", machine());
        let _ = writeln!(
            r,
            "- load average (1, 5, 15 min) before: {}; after: {}",
            self.load_before
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
            self.load_after
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        );
        let busy_before = self
            .load_before
            .split_whitespace()
            .next()
            .and_then(|l| l.parse::<f64>().ok())
            .unwrap_or(0.0);
        if busy_before > 0.3 * online_cores() as f64 {
            let _ = writeln!(
                r,
                "- **the machine was busy before the run** (1-minute load {busy_before:.2} on {} \
                 cores): other work shared the pinned cores, so latencies and rates are noisy; \
                 rerun on a quiet machine before comparing absolutes",
                online_cores()
            );
        }
        if self.bench.pinned {
            let _ = writeln!(
                r,
                "- layout: load generator (one current-thread runtime), emulated upstream and Redis \
                 on core {LOAD_CORE}; the proxy under test alone on core {PROXY_CORE} (sched_setaffinity, as \
                 taskset). \"Direct\" is what core {LOAD_CORE} does without a proxy."
            );
        } else {
            let _ = writeln!(
                r,
                "- layout: one core only, nothing pinned: compare ratios, not absolutes"
            );
        }
        let lost = if self.bench.plan.lost {
            "0.5 % Slack lost-access answers (`not_in_channel` on a write, each from a fresh \
             unscoped session)"
        } else {
            "no lost-access answers in the mixed phases (`--no-lost`)"
        };
        let _ = writeln!(
            r,
            "- traffic: Slack, GitHub, Linear, MCP and Anthropic JSON answers of 1–16 KB, 5 % \
             Anthropic event streams (12 events), {lost}; a session header and a \
             bearer token on every request; HTTP/1.1 keep-alive throughout"
        );
        let _ = writeln!(
            r,
            "- haltgate: the release binary of this tree (copied to `haltgate-under-test`) with \
             every shipped rule (`rules/`), embedded redb store except for the Redis section; \
             nginx: {}\n",
            match (&self.bench.nginx, &self.nginx) {
                (Some(path), Some(_)) => format!(
                    "`{}`, one worker, `proxy_pass` with `keepalive 64` per upstream, `proxy_buffering off` (config in `nginx/nginx.conf`)",
                    path.display()
                ),
                _ => "not installed, not measured".into(),
            }
        );

        // Targets.
        let _ = writeln!(r, "## Targets\n");
        let _ = writeln!(r, "| target | measured | result |\n| --- | --- | --- |");
        let micros = |d: Duration| d.as_secs_f64() * 1e6;
        let at_rate = |t: &TargetResult| t.open_cpu_per_request.map(micros);
        let at_max = |t: &TargetResult| t.throughput.proxy_cpu_per_request.map(micros);
        let nginx = self.nginx.as_ref();
        match (at_rate(h), nginx.and_then(at_rate)) {
            (Some(hg), Some(ng)) => {
                let (hg_max, ng_max) = (
                    at_max(h).unwrap_or(0.0),
                    nginx.and_then(at_max).unwrap_or(0.0),
                );
                let _ = writeln!(
                    r,
                    "| CPU per proxied request ≤ nginx's, every rule inspecting | at the same rate ({:.0}/s): haltgate {hg:.1} µs, nginx {ng:.1} µs ({:.2}×); each at its own maximum: haltgate {hg_max:.1} µs, nginx {ng_max:.1} µs ({:.2}×) | {} |",
                    self.rate,
                    hg / ng,
                    hg_max / ng_max.max(f64::MIN_POSITIVE),
                    verdict(hg <= ng)
                );
            }
            (Some(hg), None) => {
                let _ = writeln!(r, "| CPU per proxied request ≤ nginx's | haltgate {hg:.1} µs at {:.0}/s, nginx not measured | — |", self.rate);
            }
            _ => {}
        }
        let added = |t: &TargetResult,
                     base: &TargetResult,
                     q: f64,
                     pick: fn(&TargetResult) -> &Histogram<u64>| {
            us(pick(t), q) - us(pick(base), q)
        };
        let c1 = added(h, d, 0.99, |t| &t.concurrency_one.latency);
        let _ = writeln!(
            r,
            "| added p99 ≤ 150 µs at concurrency 1 | {} | {} |",
            signed(c1),
            verdict(c1 <= 150)
        );
        let open = added(h, d, 0.99, |t| &t.open.latency);
        let _ = writeln!(
            r,
            "| added p99 ≤ 1 ms at 50 % of max throughput ({:.0}/s) | {} (p99 {} µs against direct {} µs) | {} |",
            self.rate,
            signed(open),
            us(&h.open.latency, 0.99),
            us(&d.open.latency, 0.99),
            verdict(open <= 1000)
        );
        let ttfb = added(h, d, 0.99, |t| &t.first_bytes);
        let _ = writeln!(
            r,
            "| SSE added time to first byte ≤ 300 µs p99 | {} | {} |",
            signed(ttfb),
            verdict(ttfb <= 300)
        );
        let s = &h.streams;
        let _ = writeln!(
            r,
            "| {} concurrent SSE streams with no stall (> 10× the {} ms pace) | {}/{} stall-free (direct {}/{}) | {} |",
            s.streams,
            self.bench.plan.stream_pace.as_millis(),
            s.stall_free,
            s.streams,
            d.streams.stall_free,
            d.streams.streams,
            verdict(s.stall_free == s.streams && s.streams >= 1000)
        );
        if let Some(m) = &h.memory {
            let _ = writeln!(
                r,
                "| idle RSS ≤ 15 MB | {} at start, of which {} anonymous ({} idle after load) | {} |",
                mb(m.idle_at_start),
                mb(m.anon_at_start),
                mb(m.idle_after_load),
                verdict(m.idle_at_start <= 15_000_000)
            );
            let _ = writeln!(
                r,
                "| ≤ 20 KB per idle keep-alive connection | {:.1} KB ({} connections) | {} |",
                m.per_idle_connection / 1024.0,
                m.idle_connections,
                verdict(m.per_idle_connection <= 20.0 * 1024.0)
            );
        }
        match &self.store_check {
            Some(check) => {
                let halt = us(&check.halts.latency, 0.99) - us(&d.halts.latency, 0.99);
                let _ = writeln!(
                    r,
                    "| halt path ≤ 2 ms p99 with Redis | {} added (p99 {} µs; {}/{} halted) | {} |",
                    signed(halt),
                    us(&check.halts.latency, 0.99),
                    check.halts.tally.halted,
                    check.halts.tally.done + check.halts.tally.errors,
                    verdict(
                        halt <= 2000
                            && check.halts.tally.halted == check.halts.tally.done
                            && check.halts.tally.errors == 0
                    )
                );
                let idle: u64 = check.idle_calls.values().sum();
                let passing: u64 = check.passing_calls.values().sum();
                let _ = writeln!(
                    r,
                    "| no store call on responses that match nothing | {passing} Redis calls during {} such requests, {idle} in an idle window as long | {} |",
                    check.passing_requests,
                    verdict(passing <= idle)
                );
            }
            None => {
                let _ = writeln!(r, "| halt path ≤ 2 ms p99 with Redis | redis-server not found, not measured | — |");
            }
        }
        let share = self.engine_share();
        let _ = writeln!(
            r,
            "\nThe rule engine's share of haltgate's CPU: {share}. {}\n",
            self.profile_text()
        );

        // Throughput.
        let _ = writeln!(
            r,
            "## Maximum throughput (closed loop, {CONNECTIONS} connections)\n"
        );
        let _ = writeln!(r, "| | requests/s | proxy CPU per request | proxy core busy | core {LOAD_CORE} busy (generator + upstream) | upstream CPU per request | errors |");
        let _ = writeln!(r, "| --- | --: | --: | --: | --: | --: | --: |");
        let mut rows: Vec<(&str, &Throughput)> = self
            .targets()
            .iter()
            .map(|t| (t.name, &t.throughput))
            .collect();
        rows.push(("haltgate, no rule inspecting", &self.no_rules));
        for (name, t) in rows {
            let _ = writeln!(
                r,
                "| {name} | {:.0} | {} | {} | {:.0} % | {:.1} µs | {} |",
                t.rps,
                t.proxy_cpu_per_request
                    .map_or("—".into(), |c| format!("{:.1} µs", c.as_secs_f64() * 1e6)),
                t.proxy_core_busy
                    .map_or("—".into(), |b| format!("{:.0} %", b * 100.0)),
                t.load_core_busy * 100.0,
                t.upstream_cpu_per_request.as_secs_f64() * 1e6,
                t.errors
            );
        }
        let _ = writeln!(
            r,
            "\nCPU is utime + stime from `/proc/PID/stat` over the run (10 ms ticks), divided by the \
             answers completed. A core near 100 % is the limit of that run: when it is core \
             {LOAD_CORE}, the proxy was not saturated.\n"
        );

        // Latency tables.
        let latency_table =
            |r: &mut String, title: &str, pick: fn(&TargetResult) -> &LoadResult| {
                let _ = writeln!(r, "## {title}\n");
                let _ = writeln!(
                r,
                "| | answers | errors | p50 | p99 | p99.9 | added p50 | added p99 | added p99.9 |"
            );
                let _ = writeln!(r, "| --- | --: | --: | --: | --: | --: | --: | --: | --: |");
                for t in self.targets() {
                    let (l, base) = (pick(t), pick(d));
                    let _ = writeln!(
                        r,
                        "| {} | {} | {} | {} µs | {} µs | {} µs | {} | {} | {} |",
                        t.name,
                        l.tally.done,
                        l.tally.errors,
                        us(&l.latency, 0.5),
                        us(&l.latency, 0.99),
                        us(&l.latency, 0.999),
                        signed(us(&l.latency, 0.5) - us(&base.latency, 0.5)),
                        signed(us(&l.latency, 0.99) - us(&base.latency, 0.99)),
                        signed(us(&l.latency, 0.999) - us(&base.latency, 0.999)),
                    );
                }
                let _ = writeln!(r);
            };
        latency_table(
            &mut r,
            "Latency at concurrency 1 (one connection, next request after each answer)",
            |t| &t.concurrency_one,
        );
        latency_table(
            &mut r,
            &format!("Latency under open-loop load: {:.0} requests/s (half of haltgate's maximum), {CONNECTIONS} connections", self.rate),
            |t| &t.open,
        );
        let _ = writeln!(
            r,
            "Mixed traffic is timed without its lost-access requests (0.5 %), which have their own \
             phase: haltgate answers them only once their closure is durable. \
             Open-loop latency is corrected for coordinated omission: a request that was due while its \
             connection still waited for an earlier answer counts from its due time. Sent/due: {}.\n",
            self.targets()
                .iter()
                .map(|t| format!("{} {}/{}", t.name, t.open.tally.done + t.open.tally.errors, t.open.tally.planned))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let cpu_at_rate: Vec<String> = self
            .targets()
            .iter()
            .filter_map(|t| {
                t.open_cpu_per_request
                    .map(|c| format!("{} {:.1} µs", t.name, c.as_secs_f64() * 1e6))
            })
            .collect();
        if !cpu_at_rate.is_empty() {
            let _ = writeln!(
                r,
                "Proxy CPU per request at this rate (the same requests for each): {}.\n",
                cpu_at_rate.join(", ")
            );
        }
        latency_table(&mut r, "Lost-access answers at concurrency 1 (haltgate halts them; redb store, one fsync per closure)", |t| &t.halts);
        let _ = writeln!(
            r,
            "Halted by haltgate (answers carrying `x-haltgate-halt`): {} of {}.\n",
            h.halts.tally.halted,
            h.halts.tally.done + h.halts.tally.errors
        );

        // SSE.
        let _ = writeln!(r, "## Event streams\n");
        let _ = writeln!(r, "| | first byte p50 | p99 | added p99 | stall-free streams | complete | longest wait between events | longest wait for the first event |");
        let _ = writeln!(r, "| --- | --: | --: | --: | --: | --: | --: | --: |");
        for t in self.targets() {
            let _ = writeln!(
                r,
                "| {} | {} µs | {} µs | {} | {}/{} | {} | {:.0} ms | {:.0} ms |",
                t.name,
                us(&t.first_bytes, 0.5),
                us(&t.first_bytes, 0.99),
                signed(us(&t.first_bytes, 0.99) - us(&d.first_bytes, 0.99)),
                t.streams.stall_free,
                t.streams.streams,
                t.streams.complete,
                t.streams.worst_gap.as_secs_f64() * 1e3,
                t.streams.worst_start.as_secs_f64().min(1e6) * 1e3,
            );
        }
        let _ = writeln!(
            r,
            "\nFirst byte: {} streams one after another, time from sending the request to the first \
             body bytes. Concurrent: {} streams started at once, one connection each, {} events {} ms \
             apart; a stall is a wait between two events longer than 10× that pace; the wait for \
             the first event, while the proxy opens as many upstream connections, is shown apart.\n",
            self.bench.plan.ttfb_streams,
            self.bench.plan.streams,
            self.bench.plan.stream_events,
            self.bench.plan.stream_pace.as_millis()
        );

        // Memory.
        let _ = writeln!(r, "## Memory (resident set of the proxy process)\n");
        let _ = writeln!(
            r,
            "| | idle at start | of which anonymous | idle after load | of which anonymous | peak (VmHWM) | per idle keep-alive connection |"
        );
        let _ = writeln!(r, "| --- | --: | --: | --: | --: | --: | --: |");
        for t in self.targets() {
            if let Some(m) = &t.memory {
                let _ = writeln!(
                    r,
                    "| {} | {} | {} | {} | {} | {} | {:.1} KB |",
                    t.name,
                    mb(m.idle_at_start),
                    mb(m.anon_at_start),
                    mb(m.idle_after_load),
                    mb(m.anon_after_load),
                    mb(m.peak),
                    m.per_idle_connection / 1024.0
                );
            }
        }
        let _ = writeln!(
            r,
            "\nPer connection: the RSS growth with {} connections open, each after one request, \
             divided by their number. The part that is not anonymous is mapped files, mostly the \
             binary's own code, shared with the page cache.\n",
            self.bench.plan.idle_connections
        );

        // Redis.
        if let Some(check) = &self.store_check {
            let l = &check.halts.latency;
            let _ = writeln!(r, "## Halt path with Redis\n");
            let _ = writeln!(
                r,
                "haltgate with `--store redis://…` (a `redis-server` started for the run), a \
                 lost-access answer from a fresh session each time, concurrency 1: p50 {} µs, p99 \
                 {} µs, p99.9 {} µs (the same request direct: p99 {} µs); {} halted of {} sent.\n",
                us(l, 0.5),
                us(l, 0.99),
                us(l, 0.999),
                us(&d.halts.latency, 0.99),
                check.halts.tally.halted,
                check.halts.tally.done + check.halts.tally.errors
            );
            let _ = writeln!(r, "| Redis commands | calls |\n| --- | --- |");
            let _ = writeln!(
                r,
                "| idle window ({} s) | {} |",
                self.bench.plan.store_window.as_secs_f64(),
                calls_text(&check.idle_calls)
            );
            let _ = writeln!(
                r,
                "| {} requests that match nothing | {} |",
                check.passing_requests,
                calls_text(&check.passing_calls)
            );
            let _ = writeln!(
                r,
                "| {} halts | {} |\n",
                check.halts.tally.halted,
                calls_text(&check.halt_calls)
            );
        }

        // Plots.
        let mut plots = Vec::new();
        let series = |pick: fn(&TargetResult) -> &Histogram<u64>| -> Vec<(&str, &Histogram<u64>)> {
            self.targets()
                .into_iter()
                .map(|t| (t.name, pick(t)))
                .collect()
        };
        let mut plot =
            |file: &str, title: &str, data: Vec<(&str, &Histogram<u64>)>| match plot_percentiles(
                &out.join(file),
                title,
                &data,
            ) {
                Ok(()) => plots.push(format!("![{title}]({file})")),
                Err(error) => eprintln!("plot {file}: {error}"),
            };
        plot(
            "latency-concurrency-1.svg",
            "Latency at concurrency 1",
            series(|t| &t.concurrency_one.latency),
        );
        plot(
            "latency-open-loop.svg",
            "Latency at half of haltgate's maximum (open loop)",
            series(|t| &t.open.latency),
        );
        plot(
            "sse-first-byte.svg",
            "Event streams: time to first byte",
            series(|t| &t.first_bytes),
        );
        if let Some(check) = &self.store_check {
            plot(
                "halt-path.svg",
                "Lost-access answers: direct vs halted by haltgate on Redis",
                vec![
                    ("direct", &d.halts.latency),
                    ("haltgate on Redis (halt)", &check.halts.latency),
                ],
            );
        }
        let _ = writeln!(r, "## Plots\n");
        for p in plots {
            let _ = writeln!(r, "{p}\n");
        }
        r
    }

    fn profile_text(&self) -> String {
        let Some(p) = &self.profile else {
            return "`perf` not available: no profile.".into();
        };
        format!(
            "`perf record` of haltgate in a closed loop after the measured one ({} samples): \
             kernel {:.1} %, libc (malloc, free, memmove) {:.1} %, haltgate's binary {:.1} %, of \
             which the rule engine (`haltgate::rules`, aho-corasick, regex, serde_json) {:.1} %, \
             the halt layer around it (`haltgate::halt`) {:.1} %, hyper and http {:.1} %, tokio \
             {:.1} %. `perf report -i perf.data` shows the rest.",
            p.samples, p.kernel, p.libc, p.binary, p.engine, p.halt_layer, p.hyper, p.tokio
        )
    }

    fn engine_share(&self) -> String {
        let (Some(all), Some(none)) = (
            self.haltgate.throughput.proxy_cpu_per_request,
            self.no_rules.proxy_cpu_per_request,
        ) else {
            return "not measured".into();
        };
        let (all, none) = (all.as_secs_f64() * 1e6, none.as_secs_f64() * 1e6);
        format!(
            "{:.0} % ({all:.1} µs per request with every shipped rule, {none:.1} µs with one rule \
             that no route uses, in the same closed loop; by difference of two runs, so a few \
             percent either way is noise; the profile below measures it directly)",
            ((all - none) / all * 100.0).max(0.0)
        )
    }
}

fn git_commit() -> String {
    Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short",
            "HEAD",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// Latency by percentile, the x axis in "nines" (50 %, 90 %, 99 %, 99.9 %, 99.99 %).
fn plot_percentiles(
    path: &Path,
    title: &str,
    series: &[(&str, &Histogram<u64>)],
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let points = |h: &Histogram<u64>| -> Vec<(f64, f64)> {
        (0..=400)
            .map(|k| {
                let x = k as f64 / 100.0;
                let q = 1.0 - 10f64.powf(-x);
                (x, h.value_at_quantile(q.min(0.9999)) as f64)
            })
            .collect()
    };
    let present: Vec<_> = series.iter().filter(|(_, h)| !h.is_empty()).collect();
    let low = present
        .iter()
        .map(|(_, h)| h.min() as f64)
        .fold(f64::MAX, f64::min)
        .max(1.0);
    let high = present
        .iter()
        .map(|(_, h)| h.value_at_quantile(0.9999) as f64)
        .fold(1.0, f64::max);
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .margin_right(30)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..4f64, ((low * 0.8)..(high * 1.25)).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .x_labels(5)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_label_formatter(&|x| {
            let q = (1.0 - 10f64.powf(-x)) * 100.0;
            format!("{}%", (q * 100.0).round() / 100.0)
        })
        .draw()?;
    let colours = [BLUE, RED, GREEN, MAGENTA];
    for (i, (name, h)) in present.iter().enumerate() {
        let colour = colours[i % colours.len()];
        chart
            .draw_series(LineSeries::new(points(h), colour.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The benchmark's own rule file must load in the engine it measures.
    #[test]
    fn idle_rule_loads() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("unrouted.toml"), super::IDLE_RULE).expect("rule file");
        let rules = haltgate::rules::RuleSet::load_dir(dir.path())
            .unwrap_or_else(|errors| panic!("the idle rule does not load:\n{errors}"));
        assert_eq!(rules.rule_count(), 1);
    }
}
