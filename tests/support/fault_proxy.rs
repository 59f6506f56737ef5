//! A TCP fault proxy for putting between haltgate and Redis: it passes bytes through, and on
//! command delays them, swallows them (blackhole), resets connections, or refuses new ones.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Bytes pass through.
    Pass,
    /// Every chunk waits this long before it is passed on.
    Delay(Duration),
    /// Connections stay open, but nothing passes in either direction.
    Blackhole,
    /// Open connections are cut, new ones are accepted and reset at once (RST).
    Reset,
    /// Open connections are cut, new ones are closed before a byte is read.
    Refuse,
}

pub struct FaultProxy {
    addr: SocketAddr,
    fault: Arc<Mutex<Fault>>,
    /// Raised on every change, so pumps re-read the fault and cut connections when asked.
    changes: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fault = Arc::new(Mutex::new(Fault::Pass));
        let (changes, _) = watch::channel(0u64);
        let task = tokio::spawn(accept(listener, target, fault.clone(), changes.clone()));
        FaultProxy {
            addr,
            fault,
            changes,
            task,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.addr.port())
    }

    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
        self.changes.send_modify(|n| *n += 1);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.set(Fault::Refuse);
        self.task.abort();
    }
}

async fn accept(
    listener: TcpListener,
    target: SocketAddr,
    fault: Arc<Mutex<Fault>>,
    changes: watch::Sender<u64>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            return;
        };
        let now = *fault.lock().unwrap();
        match now {
            Fault::Refuse => drop(client),
            Fault::Reset => reset(client),
            _ => {
                let fault = fault.clone();
                let changes = changes.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let up = pump(client_read, server_write, fault.clone(), changes.clone());
                    let down = pump(server_read, client_write, fault, changes);
                    // Either direction ending ends the connection.
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                    }
                });
            }
        }
    }
}

fn reset(stream: TcpStream) {
    // Linger 0 makes the close an RST instead of a FIN.
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Copies one direction until either side closes or a fault cuts the connection.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    fault: Arc<Mutex<Fault>>,
    mut changes: watch::Receiver<u64>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            _ = changes.changed() => {
                if matches!(*fault.lock().unwrap(), Fault::Reset | Fault::Refuse) {
                    return;
                }
                continue;
            }
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        loop {
            let now = *fault.lock().unwrap();
            match now {
                Fault::Pass => break,
                Fault::Delay(delay) => {
                    tokio::time::sleep(delay).await;
                    break;
                }
                Fault::Reset | Fault::Refuse => return,
                Fault::Blackhole => {
                    // Hold the bytes until the fault changes; they are dropped unless it
                    // turns back to passing.
                    if changes.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
