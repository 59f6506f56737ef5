//! Real `redis-server` processes for tests: standalone or a 3-master cluster, on free
//! loopback ports, in temporary directories, killed when dropped.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

const REDIS_SERVER: &str = "/usr/bin/redis-server";
const REDIS_CLI: &str = "/usr/bin/redis-cli";

/// `redis-cli -p PORT ARGS…`, its standard output as text.
fn cli_on(port: u16, args: &[&str]) -> String {
    let out = Command::new(REDIS_CLI)
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One redis-server with AOF on, so a kill and restart on the same directory keeps the data.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    child: Option<Child>,
}

/// A port that is free, and whose cluster bus port (+10000) is free too.
fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = listener.local_addr().unwrap().port();
        if port > 55_000 {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Sends one inline command and returns the raw reply, or None if nothing answered.
pub fn raw_command(port: u16, command: &str) -> Option<String> {
    let mut stream =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
            .ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for redis");
        let mut server = RedisServer {
            port: 0,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn() {
                return server;
            }
        }
        panic!(
            "redis-server did not start; see {}",
            server.log_path().display()
        );
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the process on `self.port`; false if it did not come up.
    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new(REDIS_SERVER);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args([
                "--bind",
                "127.0.0.1",
                "--protected-mode",
                "no",
                "--daemonize",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
            ])
            .arg("--logfile")
            .arg(self.log_path())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn /usr/bin/redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if raw_command(self.port, "PING").is_some_and(|r| r.starts_with("+PONG")) {
                self.child = Some(child);
                return true;
            }
            sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing, like a hung server.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let child = self.child.as_ref().expect("redis-server is running");
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Starts again on the same port and directory (the AOF is replayed).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart on port {}",
                self.port
            );
            sleep(Duration::from_millis(100));
        }
    }

    /// Starts again on the same port and directory as a replica of the node at `port`, as a
    /// failed master comes back once its configuration names the new one.
    pub fn restart_as_replica_of(&mut self, port: u16) {
        if let Some(at) = self.extra.iter().position(|arg| arg == "--replicaof") {
            self.extra.drain(at..(at + 3).min(self.extra.len()));
        }
        self.extra
            .extend(["--replicaof".into(), "127.0.0.1".into(), port.to_string()]);
        self.restart();
    }

    /// This node's cluster id.
    pub fn node_id(&self) -> String {
        self.cli(&["cluster", "myid"]).trim().to_owned()
    }

    pub fn cli(&self, args: &[&str]) -> String {
        cli_on(self.port, args)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // A paused process ignores nothing but SIGKILL, which is what kill() sends.
        self.kill();
    }
}

/// A Redis Cluster: `nodes[..masters]` start as masters, the rest as their replicas.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// `masters` nodes without replicas.
    pub fn start(masters: usize) -> Self {
        Self::start_with_replicas(masters, 0, "5000")
    }

    /// `masters` nodes with `replicas` replicas each; `node_timeout_ms` bounds how long a dead
    /// master goes unnoticed before its replica takes over. Every node fsyncs every write.
    pub fn start_with_replicas(masters: usize, replicas: usize, node_timeout_ms: &str) -> Self {
        let cluster_args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            node_timeout_ms,
            "--stream-node-max-entries",
            "4",
            "--appendfsync",
            "always",
            // A replica is in sync at once instead of after the default 5 s wait.
            "--repl-diskless-sync-delay",
            "0",
        ];
        let nodes: Vec<RedisServer> = (0..masters * (1 + replicas))
            .map(|_| RedisServer::start_with(&cluster_args))
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let out = Command::new(REDIS_CLI)
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let all_ok = nodes
                .iter()
                .all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok"));
            let replicas_synced = nodes[..masters].iter().all(|n| {
                let info = n.cli(&["info", "replication"]);
                info.matches("state=online").count() == replicas
            });
            if all_ok && replicas_synced {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "cluster did not reach cluster_state:ok"
            );
            sleep(Duration::from_millis(100));
        }
        RedisCluster { nodes }
    }

    /// The store URL listing every node as a seed.
    pub fn store_url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    pub fn node_urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Nodes that are running and answer `cluster_state:ok`.
    pub fn healthy(&self) -> Vec<&RedisServer> {
        self.nodes
            .iter()
            .filter(|n| n.is_running() && n.cli(&["cluster", "info"]).contains("cluster_state:ok"))
            .collect()
    }

    /// The running node that serves `slot` as master.
    pub fn master_of(&self, slot: u16) -> &RedisServer {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .find(|n| {
                let info = n.cli(&["info", "replication"]);
                info.contains("role:master")
                    && n.cli(&["cluster", "countkeysinslot", &slot.to_string()])
                        .trim()
                        .parse::<u64>()
                        .is_ok()
                    && n.cli(&["cluster", "myid"]).trim() == Self::owner_id(n, slot)
            })
            .expect("a running master serves the slot")
    }

    /// The id of the node that owns `slot`, as `node` sees the cluster.
    pub fn owner_id(node: &RedisServer, slot: u16) -> String {
        for line in node.cli(&["cluster", "nodes"]).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") {
                continue;
            }
            for range in &fields[8..] {
                let (start, end) = match range.split_once('-') {
                    Some((a, b)) => (a.parse::<u16>().ok(), b.parse::<u16>().ok()),
                    None => (range.parse::<u16>().ok(), range.parse::<u16>().ok()),
                };
                if let (Some(start), Some(end)) = (start, end) {
                    if (start..=end).contains(&slot) {
                        return fields[0].to_owned();
                    }
                }
            }
        }
        panic!("no master owns slot {slot}");
    }
}

/// A master with one replica, watched by three sentinels that fail it over quickly.
pub struct RedisSentinel {
    pub master: RedisServer,
    pub replica: RedisServer,
    pub sentinels: Vec<SentinelProcess>,
}

/// The name the sentinels monitor the master under.
pub const SENTINEL_MASTER_NAME: &str = "hgmaster";

impl RedisSentinel {
    /// `down_after_ms`: how long the master may be silent before the sentinels fail it over.
    pub fn start(down_after_ms: u64) -> Self {
        // Every write fsynced, and a replica in sync at once instead of after the default 5 s.
        let data_args = ["--appendfsync", "always", "--repl-diskless-sync-delay", "0"];
        let master = RedisServer::start_with(&data_args);
        let master_port = master.port().to_string();
        let mut replica_args = data_args.to_vec();
        replica_args.extend(["--replicaof", "127.0.0.1", &master_port]);
        let replica = RedisServer::start_with(&replica_args);
        let sentinels: Vec<SentinelProcess> = (0..3)
            .map(|_| SentinelProcess::start(master.port(), down_after_ms))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let synced = master
                .cli(&["info", "replication"])
                .contains("state=online");
            // Sentinels find each other through hello messages on the master, every 2 s;
            // a failover needs a majority that knows the others.
            let acquainted = sentinels.iter().all(|s| {
                let master = s.cli(&["sentinel", "master", SENTINEL_MASTER_NAME]);
                field_after(&master, "num-other-sentinels") == Some("2")
                    && field_after(&master, "num-slaves") == Some("1")
            });
            if synced && acquainted {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "sentinels did not settle; see {}",
                sentinels[0].dir.path().display()
            );
            sleep(Duration::from_millis(100));
        }
        RedisSentinel {
            master,
            replica,
            sentinels,
        }
    }

    /// `redis+sentinel://` naming every sentinel.
    pub fn store_url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!(
            "redis+sentinel://{}/{SENTINEL_MASTER_NAME}",
            hosts.join(",")
        )
    }

    /// The master's port as a running sentinel reports it.
    pub fn master_port_reported(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let reply = s.cli(&["sentinel", "get-master-addr-by-name", SENTINEL_MASTER_NAME]);
            reply.lines().nth(1)?.trim().parse().ok()
        })
    }
}

/// In a `redis-cli` reply listing field names and values on alternate lines, the value
/// after `name`.
fn field_after<'a>(reply: &'a str, name: &str) -> Option<&'a str> {
    let mut lines = reply.lines();
    lines.find(|l| l.trim() == name)?;
    lines.next().map(str::trim)
}

/// One `redis-server --sentinel`, with its config file in a temporary directory (a sentinel
/// rewrites its config).
pub struct SentinelProcess {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl SentinelProcess {
    fn start(master_port: u16, down_after_ms: u64) -> Self {
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir for a sentinel");
            let port = free_port();
            let conf = dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\n\
                     dir {dir}\nlogfile {dir}/sentinel.log\n\
                     sentinel monitor {SENTINEL_MASTER_NAME} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {SENTINEL_MASTER_NAME} {down_after_ms}\n\
                     sentinel failover-timeout {SENTINEL_MASTER_NAME} 3000\n\
                     sentinel parallel-syncs {SENTINEL_MASTER_NAME} 1\n",
                    dir = dir.path().display()
                ),
            )
            .expect("write sentinel.conf");
            let mut child = Command::new(REDIS_SERVER)
                .arg(&conf)
                .arg("--sentinel")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server --sentinel");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if raw_command(port, "PING").is_some_and(|r| r.starts_with("+PONG")) {
                    return SentinelProcess { port, dir, child };
                }
                sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server --sentinel did not start");
    }

    pub fn cli(&self, args: &[&str]) -> String {
        cli_on(self.port, args)
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
