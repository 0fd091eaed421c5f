//! A TCP proxy between clients and a Redis server that injects faults on demand.

use std::time::Duration;

/// A TCP proxy between clients and a Redis server that injects faults on demand: latency, a
/// reply dropped after the server applied the command, a request held back and delivered late
/// after its client's connection died, all connections cut, or a blackhole.
/// Runs on the current tokio runtime; stops with it or on drop.
pub struct FaultProxy {
    port: u16,
    faults: std::sync::Arc<Faults>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Faults {
    latency_us: std::sync::atomic::AtomicU64,
    drop_replies: std::sync::atomic::AtomicUsize,
    blackhole: std::sync::atomic::AtomicBool,
    stalled: std::sync::atomic::AtomicBool,
    blackhole_after_drop: std::sync::atomic::AtomicBool,
    hold_next_us: std::sync::atomic::AtomicU64,
    cut: tokio::sync::Notify,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:<upstream>`.
    pub async fn start(upstream: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let faults = std::sync::Arc::new(Faults::default());
        let task = tokio::spawn({
            let faults = faults.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let faults = faults.clone();
                    tokio::spawn(async move {
                        if let Ok(server) =
                            tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                        {
                            pump(client, server, faults).await;
                        }
                    });
                }
            }
        });
        Self { port, faults, task }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<proxy port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Delay added to every chunk in each direction.
    pub fn set_latency(&self, latency: Duration) {
        self.faults.latency_us.store(
            latency.as_micros() as u64,
            std::sync::atomic::Ordering::SeqCst,
        );
    }

    /// The next reply from the server (whatever the server sends next, on any connection) is
    /// swallowed and that connection closed: the command was applied, its client never hears
    /// so. (TCP never loses a reply on a live connection; a lost reply is a broken one.)
    pub fn drop_next_reply(&self) {
        self.faults
            .drop_replies
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Like [`drop_next_reply`](Self::drop_next_reply), then a blackhole from that moment:
    /// the command ran, and Redis is unreachable right after.
    pub fn drop_next_reply_then_blackhole(&self) {
        self.faults
            .blackhole_after_drop
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.drop_next_reply();
    }

    /// The next request (whatever a client sends next, on any connection) sits in the network:
    /// its client's connection is closed at once, and the request reaches the server `after`
    /// that, on the old server-side connection, whose reply nobody reads. The client cannot
    /// tell whether it ran; it runs later, after whatever the client sends meanwhile.
    pub fn hold_next_request(&self, after: Duration) {
        self.faults.hold_next_us.store(
            after.as_micros().max(1) as u64,
            std::sync::atomic::Ordering::SeqCst,
        );
    }

    /// Closes every open connection at once (new ones are accepted).
    pub fn cut_all(&self) {
        self.faults.cut.notify_waiters();
    }

    /// While on, the link is silent: nothing moves in either direction, and nothing is lost
    /// (as a TCP connection through a network that drops every packet for a while: no RST, the
    /// bytes are retransmitted once it heals). Off again, every connection that is still open
    /// delivers what was sent meanwhile, in order.
    pub fn stall(&self, on: bool) {
        self.faults
            .stalled
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// While on, bytes in both directions vanish: requests never reach the server.
    pub fn blackhole(&self, on: bool) {
        self.faults
            .blackhole
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.faults.cut.notify_waiters();
    }
}

async fn pump(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    faults: std::sync::Arc<Faults>,
) {
    use std::sync::atomic::Ordering::SeqCst;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let mut from_client = vec![0u8; 64 * 1024];
    let mut from_server = vec![0u8; 64 * 1024];
    let cut = faults.cut.notified();
    tokio::pin!(cut);
    // Read when a chunk arrives, so that a change applies to the very next chunk.
    let delay = || Duration::from_micros(faults.latency_us.load(SeqCst));
    loop {
        while faults.stalled.load(SeqCst) {
            tokio::select! {
                () = &mut cut => return,
                () = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
        tokio::select! {
            () = &mut cut => return,
            n = client_rx.read(&mut from_client) => {
                let Ok(n @ 1..) = n else { return };
                if faults.blackhole.load(SeqCst) { continue; }
                let hold = faults.hold_next_us.swap(0, SeqCst);
                if hold > 0 {
                    let held = from_client[..n].to_vec();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_micros(hold)).await;
                        let _ = server_tx.write_all(&held).await;
                        let mut reply = vec![0u8; 1024];
                        let _ = tokio::time::timeout(Duration::from_secs(2), server_rx.read(&mut reply)).await;
                    });
                    return; // the client's side of the connection closes now
                }
                tokio::time::sleep(delay()).await;
                // Still on the wire when the blackhole began: gone too.
                if faults.blackhole.load(SeqCst) { continue; }
                if server_tx.write_all(&from_client[..n]).await.is_err() { return; }
            }
            n = server_rx.read(&mut from_server) => {
                let Ok(n @ 1..) = n else { return };
                if faults.blackhole.load(SeqCst) { continue; }
                let dropped = faults
                    .drop_replies
                    .fetch_update(SeqCst, SeqCst, |d| d.checked_sub(1))
                    .is_ok();
                if dropped {
                    if faults.blackhole_after_drop.swap(false, SeqCst) {
                        faults.blackhole.store(true, SeqCst);
                    }
                    return;
                }
                tokio::time::sleep(delay()).await;
                if faults.blackhole.load(SeqCst) { continue; }
                if client_tx.write_all(&from_server[..n]).await.is_err() { return; }
            }
        }
    }
}
