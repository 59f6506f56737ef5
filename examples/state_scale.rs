//! How the session state scales: restart-to-ready and memory with many closed sessions and
//! blocked credentials, and closures per second through the control API, on the embedded
//! redb store.
//!
//! ```sh
//! cargo run --release --example state_scale -- --sessions 1000000 --credentials 100000
//! ```
//!
//! It fills a store in `--dir` (kept between runs; filled once per size), starts the proxy as
//! a child process on it, times `/readyz`, reads the child's resident memory at ready, then
//! drives `POST /v1/sessions/{id}/close` from `--clients` concurrent connections for
//! `--seconds`. Results print as a Markdown table.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use haltgate::app::App;
use haltgate::body;
use haltgate::config::{Config, ConfigSpec, Overrides};
use haltgate::session::{
    Class, Closure, CredentialBlock, Fingerprint, RedbOptions, RedbStore, SessionId, SessionStore,
};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

struct Args {
    sessions: u64,
    credentials: u64,
    dir: PathBuf,
    clients: usize,
    seconds: u64,
    child: Option<(PathBuf, SocketAddr)>,
}

fn parse_args() -> Args {
    let mut args = Args {
        sessions: 1_000_000,
        credentials: 100_000,
        dir: PathBuf::from("target/state-scale"),
        clients: 64,
        seconds: 10,
        child: None,
    };
    let mut raw = std::env::args().skip(1);
    while let Some(flag) = raw.next() {
        let mut value = || raw.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--sessions" => args.sessions = value().parse().expect("--sessions N"),
            "--credentials" => args.credentials = value().parse().expect("--credentials N"),
            "--dir" => args.dir = PathBuf::from(value()),
            "--clients" => args.clients = value().parse().expect("--clients N"),
            "--seconds" => args.seconds = value().parse().expect("--seconds N"),
            "--child" => {
                let store = PathBuf::from(value());
                let control = value().parse().expect("--child STORE CONTROL_ADDR");
                args.child = Some((store, control));
            }
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

fn main() {
    let args = parse_args();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    if let Some((store, control)) = &args.child {
        runtime.block_on(serve_child(store, *control));
        return;
    }
    std::fs::create_dir_all(&args.dir).unwrap();
    let store_path = args
        .dir
        .join(format!("state-{}-{}.redb", args.sessions, args.credentials));
    if !store_path.exists() {
        runtime.block_on(fill(&store_path, args.sessions, args.credentials));
    }
    let file_mb = std::fs::metadata(&store_path).unwrap().len() as f64 / 1e6;

    let control = free_addr();
    let started = Instant::now();
    let mut child = spawn_child(&store_path, control);
    let ready = runtime.block_on(wait_ready(control, &mut child));
    let restart = started.elapsed();
    let (rss, peak) = memory_of(child.id());
    let rate = runtime.block_on(closures_per_second(control, args.clients, args.seconds));
    stop(&mut child);
    assert!(ready, "the proxy never became ready");

    let per_entry = |bytes: u64| bytes as f64 / (args.sessions + args.credentials).max(1) as f64;
    println!("| measure | value |");
    println!("| --- | --- |");
    println!(
        "| state | {} closed sessions, {} blocked credentials ({file_mb:.0} MB redb file) |",
        args.sessions, args.credentials
    );
    println!("| restart to ready | {:.2} s |", restart.as_secs_f64());
    println!(
        "| resident memory at ready | {:.1} MB ({:.0} B per entry) |",
        rss as f64 / 1e6,
        per_entry(rss)
    );
    println!(
        "| peak resident memory | {:.1} MB ({:.0} B per entry) |",
        peak as f64 / 1e6,
        per_entry(peak)
    );
    println!(
        "| closures through the control API | {rate:.0} /s ({} clients, {} s) |",
        args.clients, args.seconds
    );
}

/// Fills a redb store through its public API, many writes in flight (they share fsyncs).
async fn fill(path: &Path, sessions: u64, credentials: u64) {
    let partial = path.with_extension("filling");
    let _ = std::fs::remove_file(&partial);
    let store: Arc<dyn SessionStore> =
        Arc::new(RedbStore::open(&partial, RedbOptions::default()).expect("store opens"));
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..256)
        .map(|_| {
            let (store, next) = (store.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= sessions + credentials {
                        return;
                    }
                    if i < sessions {
                        let id = SessionId::parse(&format!("session-{i:08}")).unwrap();
                        let closure = Closure::new(
                            Class::LostAccess,
                            ["slack.not_in_channel", "github.bad_credentials"][i as usize % 2],
                            "filled by state_scale",
                        );
                        store.close(&id, closure).await.expect("close");
                    } else {
                        let fingerprint = Fingerprint::parse(&format!("{:064x}", i * 0x9e37_79b9))
                            .expect("fingerprint");
                        let block = CredentialBlock::new(
                            fingerprint,
                            Class::CredentialInvalid,
                            "slack.invalid_auth",
                            "filled by state_scale",
                        );
                        store.block_credential(block).await.expect("block");
                    }
                }
            })
        })
        .collect();
    let total = sessions + credentials;
    let report = tokio::spawn({
        let next = next.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let done = next.load(Ordering::Relaxed).min(total);
                eprintln!("filled {done}/{total}");
            }
        }
    });
    for writer in writers {
        writer.await.unwrap();
    }
    report.abort();
    drop(store);
    std::fs::rename(&partial, path).unwrap();
    eprintln!(
        "filled {total} entries in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// SIGTERM, so the store is closed cleanly and the next run measures a restart, not a crash
/// repair; SIGKILL if it does not stop.
fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn spawn_child(store: &Path, control: SocketAddr) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .arg("--child")
        .arg(store)
        .arg(control.to_string())
        .stdin(Stdio::null())
        .spawn()
        .expect("child starts")
}

async fn serve_child(store: &Path, control: SocketAddr) {
    let flags = Overrides {
        listen: Some("127.0.0.1:0".into()),
        control_listen: Some(control.to_string()),
        rules: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/rules").into()),
        store: Some(format!("redb:{}", store.display())),
        ..Overrides::default()
    };
    let config = Config::resolve(ConfigSpec::default(), flags, "state_scale").unwrap();
    let app = App::start(config).await.expect("proxy starts");
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    terminate.recv().await;
    app.shutdown();
    app.wait().await;
}

async fn wait_ready(control: SocketAddr, child: &mut Child) -> bool {
    let client = Client::builder(TokioExecutor::new()).build_http::<body::ProxyBody>();
    let url: http::Uri = format!("http://{control}/readyz").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let request = http::Request::get(url.clone()).body(body::empty()).unwrap();
        if let Ok(response) = client.request(request).await {
            if response.status() == 200 {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    false
}

/// (VmRSS, VmHWM) of a process, in bytes.
fn memory_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn closures_per_second(control: SocketAddr, clients: usize, seconds: u64) -> f64 {
    let client = Client::builder(TokioExecutor::new()).build_http::<body::ProxyBody>();
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (client, done) = (client.clone(), done.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < until {
                    let request = http::Request::post(format!(
                        "http://{control}/v1/sessions/bench-{c}-{n}/close"
                    ))
                    .header("content-type", "application/json")
                    .body(body::full(r#"{"reason":"state_scale"}"#))
                    .unwrap();
                    let response = client.request(request).await.expect("control answers");
                    assert_eq!(response.status(), 200, "close failed");
                    let _ = response.into_body().collect().await;
                    done.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}
