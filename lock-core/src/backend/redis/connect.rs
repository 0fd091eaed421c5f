//! Where a node's commands go (one server, a cluster, the primary Sentinel names, or the
//! server modelled in this process), how each connection is opened, and how a command is sent
//! on it: the cluster's and Sentinel's re-sends live here.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, Pipeline};

use super::RedisNode;
#[cfg(feature = "cluster")]
use crate::backend::notify::Watcher;
use crate::backend::notify::{Dial, Notifier, PubSub};
use crate::backend::Timeouts;
use crate::error::{connect_failed, invalid_url};
use crate::Result;

/// Where a client connects, for errors (a client holds no url, and never a password here).
pub(super) fn address(client: &redis::Client) -> String {
    client.get_connection_info().addr().to_string()
}

/// `e` with the server's address in its message when it says the server could not be reached
/// (a refused connection, a timeout): a lazy manager's first error, or any while the server is
/// down, then says where. The error keeps its kind, so whether the command may have been
/// applied is read from it as before.
fn unreachable_at(at: &str, e: redis::RedisError) -> redis::RedisError {
    let kind = if e.is_connection_refusal() {
        std::io::ErrorKind::ConnectionRefused
    } else if e.is_timeout() {
        std::io::ErrorKind::TimedOut
    } else {
        return e;
    };
    std::io::Error::new(kind, format!("{e} (Redis at {at})")).into()
}

/// Whether one server (or a cluster, or whichever server Sentinel names) answers, told once
/// per change: one WARN when its commands stop getting through (with its address and the
/// first error), one when it answers again (with how long it did not). What each lock then
/// logs stays at DEBUG or is told once per lock, so an outage reads as one event in the log
/// rather than a line per lock and retry. Shared by every connection to the same place (the
/// command connection and the pooled ones of `min_replicas`).
pub(super) struct Reachable {
    /// The server's address, or the cluster's seeds or Sentinel's master (never a password).
    at: Arc<str>,
    /// A cluster: one node can be down while the others answer, so the outage is over only
    /// once every lock whose command failed has been answered since (each lock's keys live on
    /// one node), not at the first answer from another node.
    by_lock: bool,
    state: std::sync::Mutex<Outage>,
}

/// An outage under way: since when and, on a cluster, the locks (their keys' hash tags) whose
/// last command failed, with when.
#[derive(Default)]
struct Outage {
    since: Option<tokio::time::Instant>,
    failing: std::collections::HashMap<Vec<u8>, tokio::time::Instant>,
}

/// A lock whose command failed and that has had no command since is forgotten after this
/// long: nothing is known of its node any more (no command asks), and an outage that only it
/// kept open ends at the next answer.
const FORGET: Duration = Duration::from_secs(60);

/// The cluster client's own retries of a command (a timeout or a dropped connection is sent
/// again at once).
#[cfg(feature = "cluster")]
const CLUSTER_RETRIES: u32 = 6;

/// The hash tag of the first key a command names (`{...}` of a lock key, so every key of one
/// lock gives the same), or the key itself; `None` for a command without a key.
fn lock_of(request: &Request<'_>) -> Option<Vec<u8>> {
    let cmd = match request {
        Request::One(cmd) => *cmd,
        Request::Pipe(pipe) => pipe.cmd_iter().next()?,
    };
    let mut args = cmd.args_iter().filter_map(|arg| match arg {
        redis::Arg::Simple(bytes) => Some(bytes),
        _ => None,
    });
    let name = args.next()?;
    let is = |command: &[u8]| name.eq_ignore_ascii_case(command);
    if is(b"EVALSHA") || is(b"EVAL") {
        args.next()?; // the script
        if args.next()? == b"0" {
            return None;
        }
    } else if ![
        &b"GET"[..],
        b"SET",
        b"PTTL",
        b"HGETALL",
        b"DEL",
        b"EXISTS",
        b"TYPE",
    ]
    .iter()
    .any(|command| is(command))
    {
        // Not a command about one key (WAIT, WAITAOF, SCAN, PING, INFO, CONFIG, ...).
        return None;
    }
    let key = args.next()?;
    let tag = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let close = key[open + 1..].iter().position(|&b| b == b'}')?;
            Some(&key[open + 1..open + 1 + close])
        })
        .filter(|tag| !tag.is_empty())
        .unwrap_or(key);
    Some(tag.to_vec())
}

impl Reachable {
    pub(super) fn new(at: Arc<str>, by_lock: bool) -> Self {
        Self {
            at,
            by_lock,
            state: std::sync::Mutex::default(),
        }
    }

    /// Notes how `request` fared: an error that says the server could not be reached (a
    /// refused or dropped connection, a timeout, an I/O error) starts an outage; any answer,
    /// an error reply included, ends one (on a cluster, once every lock that failed has been
    /// answered since, or forgotten).
    fn heard<T>(&self, request: &Request<'_>, answer: &redis::RedisResult<T>) {
        let (answered, unreachable) = match answer {
            Ok(_) => (true, None),
            // An error reply (OOM, NOSCRIPT, a script's error) is an answer too.
            Err(e) if matches!(e.kind(), redis::ErrorKind::Server(_)) => (true, None),
            Err(e)
                if e.is_connection_refusal()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_io_error() =>
            {
                (false, Some(e))
            }
            Err(_) => (false, None),
        };
        if !answered && unreachable.is_none() {
            return;
        }
        let now = tokio::time::Instant::now();
        let lock = || lock_of(request).unwrap_or_default();
        let mut outage = crate::locked(&self.state);
        if let Some(e) = unreachable {
            if self.by_lock {
                outage.failing.insert(lock(), now);
            }
            if outage.since.is_none() {
                outage.since = Some(now);
                tracing::warn!(redis = %self.at, error = %e, "Redis unreachable; locks on it fail or wait until it answers again");
            }
            return;
        }
        let Some(since) = outage.since else {
            return;
        };
        if self.by_lock {
            outage.failing.remove(&lock());
            outage
                .failing
                .retain(|_, failed| now.duration_since(*failed) < FORGET);
            if !outage.failing.is_empty() {
                return;
            }
        }
        *outage = Outage::default();
        let down = now.duration_since(since);
        tracing::warn!(
            redis = %self.at,
            down_ms = down.as_millis() as u64,
            "Redis answering again after {:.1} s",
            down.as_secs_f64()
        );
    }
}

/// How a cluster is named in the outage WARNs: by its seeds (passwords masked).
#[cfg(feature = "cluster")]
fn cluster_at(seeds: &[String]) -> String {
    let masked: Vec<String> = seeds.iter().map(|s| crate::error::masked(s)).collect();
    format!("cluster of {}", masked.join(", "))
}

/// A client for `url`, or an error that shows the url (password masked) and the forms accepted.
fn open(url: &str) -> Result<redis::Client> {
    redis::Client::open(url).map_err(|e| {
        if url.starts_with("rediss") && e.to_string().contains("TLS") {
            // A well-formed url this build cannot serve.
            crate::LockError::InvalidConfig {
                reason: format!(
                    "`{}` needs TLS, which this build of the redis crate lacks ({e})",
                    crate::error::masked(url)
                ),
            }
        } else {
            invalid_url(url, &e)
        }
    })
}

/// The command connection: one server, or a Redis Cluster.
#[derive(Clone)]
pub(super) enum Conn {
    /// One server, and whether it answers (with its address, for the errors that say it
    /// could not be reached).
    Single(ConnectionManager, Arc<Reachable>),
    /// A server modelled in this process (`LockManager::in_memory`).
    Model(crate::backend::memory::ModelConn),
    /// A Redis Cluster, and whether its nodes answer (one outage while any does not).
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster_async::ClusterConnection, Arc<Reachable>),
    /// The primary named by Sentinel, whichever server that is now, and whether it answers.
    #[cfg(feature = "sentinel")]
    Sentinel(Arc<crate::backend::sentinel::Following>, Arc<Reachable>),
}

/// Where one server is: a url, or the service's own client.
#[derive(Clone, Debug)]
pub(crate) enum Endpoint {
    Url(String),
    Client(Box<redis::Client>),
}

impl Endpoint {
    /// See [`RedisNode::connect`] and [`RedisNode::of_client`].
    pub(crate) async fn connect(&self, timeouts: Timeouts) -> Result<RedisNode> {
        match self {
            Endpoint::Url(url) => RedisNode::connect(url, timeouts).await,
            Endpoint::Client(client) => RedisNode::of_client((**client).clone(), timeouts).await,
        }
    }

    /// See [`RedisNode::connect_lazy`] and [`RedisNode::of_client_lazy`].
    pub(crate) fn connect_lazy(&self, timeouts: Timeouts) -> Result<RedisNode> {
        match self {
            Endpoint::Url(url) => RedisNode::connect_lazy(url, timeouts),
            Endpoint::Client(client) => RedisNode::of_client_lazy((**client).clone(), timeouts),
        }
    }
}

/// Where a node's connections go.
#[derive(Clone)]
pub(super) enum Source {
    Client(Box<redis::Client>),
    /// The in-process server: its one connection is all there is.
    Model(crate::backend::memory::ModelConn),
    #[cfg(feature = "cluster")]
    Cluster(Vec<String>),
    #[cfg(feature = "sentinel")]
    Sentinel(Arc<crate::backend::sentinel::Primary>),
}

impl RedisNode {
    /// Connects (and authenticates) now, so a wrong url or password fails here, not at the
    /// first lock.
    pub(crate) async fn connect(url: &str, timeouts: Timeouts) -> Result<Self> {
        Self::connect_as(open(url)?, timeouts, url).await
    }

    /// [`connect`](Self::connect) with the caller's own client (and its settings).
    pub(crate) async fn of_client(client: redis::Client, timeouts: Timeouts) -> Result<Self> {
        let address = address(&client);
        Self::connect_as(client, timeouts, &address).await
    }

    /// Connects `client`; an error names it as `named` (a url, masked there, or an address).
    async fn connect_as(client: redis::Client, timeouts: Timeouts, named: &str) -> Result<Self> {
        let conn = ConnectionManager::new_with_config(client.clone(), Self::config(timeouts))
            .await
            .map_err(|e| connect_failed(named, e))?;
        let conn = Conn::single(conn, &client);
        Ok(Self::with(client, conn))
    }

    /// Like [`connect`](Self::connect), but connects on first use (a lazy manager, or a
    /// Redlock instance that is down when the manager starts: the others can still form a
    /// quorum). Only the url is checked now.
    pub(crate) fn connect_lazy(url: &str, timeouts: Timeouts) -> Result<Self> {
        Self::of_client_lazy(open(url)?, timeouts)
    }

    /// [`connect_lazy`](Self::connect_lazy) with the caller's own client.
    pub(crate) fn of_client_lazy(client: redis::Client, timeouts: Timeouts) -> Result<Self> {
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), Self::config(timeouts))
            .map_err(|e| connect_failed(&address(&client), e))?;
        let conn = Conn::single(conn, &client);
        Ok(Self::with(client, conn))
    }

    /// A node on a server modelled in this process, with its release messages.
    /// `resends`: as if the client re-sent commands by itself (a cluster client; the
    /// simulator's re-sending worlds).
    pub(crate) fn in_process(
        server: Arc<crate::backend::memory::ModelServer>,
        resends: bool,
    ) -> Self {
        let conn = crate::backend::memory::ModelConn {
            server: Arc::clone(&server),
            resends,
        };
        let native = server.native();
        Self {
            conn: Conn::Model(conn.clone()),
            notifier: Arc::new(crate::backend::memory::ModelWatcher(server)),
            sharded: false,
            replicated: None,
            native: super::native::Capabilities::known(native),
            scripts_run: Default::default(),
            marked: Default::default(),
            source: Source::Model(conn),
        }
    }

    fn with(client: redis::Client, conn: Conn) -> Self {
        Self {
            conn,
            notifier: Arc::new(Notifier::new(Dial::Client(Box::new(client.clone())))),
            sharded: false,
            replicated: None,
            source: Source::Client(Box::new(client)),
            native: super::native::Capabilities::default(),
            scripts_run: Default::default(),
            marked: Default::default(),
        }
    }

    /// Another connection to where this node's connections go; an outage on it is the same
    /// outage as on the others (one [`Reachable`] for all).
    pub(super) async fn open(&self, timeouts: Timeouts) -> Result<Conn> {
        Ok(match &self.source {
            Source::Model(conn) => Conn::Model(conn.clone()),
            Source::Client(client) => Conn::Single(
                ConnectionManager::new_lazy_with_config((**client).clone(), Self::config(timeouts))
                    .map_err(|e| connect_failed(&address(client), e))?,
                self.conn
                    .reachable()
                    .unwrap_or_else(|| Arc::new(Reachable::new(address(client).into(), false))),
            ),
            #[cfg(feature = "cluster")]
            Source::Cluster(seeds) => Conn::Cluster(
                Self::cluster_conn(seeds, timeouts).await?,
                self.conn
                    .reachable()
                    .unwrap_or_else(|| Arc::new(Reachable::new(cluster_at(seeds).into(), true))),
            ),
            #[cfg(feature = "sentinel")]
            Source::Sentinel(primary) => Conn::Sentinel(
                Arc::new(crate::backend::sentinel::Following::new(
                    Arc::clone(primary),
                    Self::config(timeouts),
                )),
                self.conn
                    .reachable()
                    .unwrap_or_else(|| Arc::new(Reachable::new(primary.described().into(), false))),
            ),
        })
    }

    pub(super) fn config(timeouts: Timeouts) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeouts.connect))
            .set_response_timeout(Some(timeouts.response))
            // A lock request should fail fast while the server is down rather than sit in a
            // long reconnect loop; every later request triggers a fresh reconnect attempt.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(200))
    }

    /// Connects to a Redis Cluster through `seeds`. Commands are routed by the lock key's hash
    /// slot, and MOVED/ASK redirections are followed by the cluster client.
    ///
    /// Release notifications are sharded on Redis 7 or later (`SPUBLISH` reaches only the
    /// shard that owns the lock's slot, see `sharded.rs`). On older servers they use a plain
    /// pub/sub connection to the first seed: a cluster copies `PUBLISH` to every node, so any
    /// node hears every release.
    #[cfg(feature = "cluster")]
    pub(crate) async fn connect_cluster(seeds: &[String], timeouts: Timeouts) -> Result<Self> {
        for seed in seeds {
            open(seed)?;
        }
        let mut conn = Self::cluster_conn(seeds, timeouts).await?;
        let sharded = crate::backend::sharded::supported(&mut conn).await;
        let notifier: Arc<dyn Watcher> = if sharded {
            Arc::new(crate::backend::sharded::ShardedNotifier::new(
                seeds.to_vec(),
                timeouts,
            ))
        } else {
            Arc::new(Notifier::new(Dial::Client(Box::new(open(&seeds[0])?))))
        };
        Ok(Self {
            conn: Conn::Cluster(
                conn,
                Arc::new(Reachable::new(cluster_at(seeds).into(), true)),
            ),
            notifier,
            sharded,
            replicated: None,
            source: Source::Cluster(seeds.to_vec()),
            native: super::native::Capabilities::default(),
            scripts_run: Default::default(),
            marked: Default::default(),
        })
    }

    #[cfg(feature = "cluster")]
    async fn cluster_conn(
        seeds: &[String],
        timeouts: Timeouts,
    ) -> Result<redis::cluster_async::ClusterConnection> {
        let everywhere = || {
            let masked: Vec<String> = seeds.iter().map(|s| crate::error::masked(s)).collect();
            masked.join(", ")
        };
        redis::cluster::ClusterClientBuilder::new(seeds.iter().map(String::as_str))
            .connection_timeout(timeouts.connect)
            .response_timeout(timeouts.response)
            .retries(CLUSTER_RETRIES)
            .min_retry_wait(10)
            .max_retry_wait(200)
            .build()
            .map_err(|e| invalid_url(&everywhere(), &e))?
            .get_async_connection()
            .await
            .map_err(|e| connect_failed(&everywhere(), e))
    }

    /// The primary of `master` as the `sentinels` name it, followed across failovers: see
    /// sentinel.rs. Unless `lazy`, the primary is found (and its role checked) now.
    #[cfg(feature = "sentinel")]
    pub(crate) async fn connect_sentinel(
        master: &str,
        sentinels: &[String],
        timeouts: Timeouts,
        lazy: bool,
    ) -> Result<Self> {
        let primary = Arc::new(crate::backend::sentinel::Primary::new(
            master, sentinels, timeouts,
        )?);
        if !lazy {
            crate::backend::sentinel::check(&primary).await?;
        }
        let following =
            crate::backend::sentinel::Following::new(Arc::clone(&primary), Self::config(timeouts));
        let reachable = Reachable::new(primary.described().into(), false);
        Ok(Self {
            conn: Conn::Sentinel(Arc::new(following), Arc::new(reachable)),
            notifier: Arc::new(Notifier::new(Dial::Sentinel(Arc::clone(&primary)))),
            sharded: false,
            replicated: None,
            source: Source::Sentinel(primary),
            native: super::native::Capabilities::default(),
            scripts_run: Default::default(),
            marked: Default::default(),
        })
    }

    /// Whether the client sends a command again by itself after an I/O error (the cluster
    /// client does, and so does a Sentinel connection after a failover), so that one call may
    /// be applied twice.
    pub(crate) fn resends(&self) -> bool {
        match &self.conn {
            Conn::Single(..) => false,
            Conn::Model(conn) => conn.resends,
            #[cfg(feature = "cluster")]
            Conn::Cluster(..) => true,
            // Sent again to a new primary after a failover.
            #[cfg(feature = "sentinel")]
            Conn::Sentinel(..) => true,
        }
    }

    /// Release notifications through this server's pub/sub.
    pub(crate) fn pubsub(&self) -> PubSub {
        PubSub::new(Arc::clone(&self.notifier))
    }

    pub(super) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> redis::RedisResult<T> {
        self.conn.send(&Request::One(cmd)).await
    }

    /// `pipe` in one round trip on the node's connection.
    pub(super) async fn query_pipe<T: FromRedisValue>(
        &self,
        pipe: &Pipeline,
    ) -> redis::RedisResult<T> {
        self.conn.send(&Request::Pipe(pipe)).await
    }
}

/// What [`Conn::send`] sends: one command, or one followed by `WAIT`.
pub(super) enum Request<'a> {
    One(&'a Cmd),
    Pipe(&'a Pipeline),
}

impl Request<'_> {
    async fn on<T: FromRedisValue>(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
    ) -> redis::RedisResult<T> {
        match self {
            Request::One(cmd) => cmd.query_async(conn).await,
            Request::Pipe(pipe) => pipe.query_async(conn).await,
        }
    }
}

impl Conn {
    pub(super) fn single(conn: ConnectionManager, client: &redis::Client) -> Self {
        Conn::Single(
            conn,
            Arc::new(Reachable::new(address(client).into(), false)),
        )
    }

    /// Whether this connection's server answers, shared with the connections opened beside it.
    fn reachable(&self) -> Option<Arc<Reachable>> {
        match self {
            Conn::Single(_, reachable) => Some(Arc::clone(reachable)),
            Conn::Model(_) => None,
            #[cfg(feature = "cluster")]
            Conn::Cluster(_, reachable) => Some(Arc::clone(reachable)),
            #[cfg(feature = "sentinel")]
            Conn::Sentinel(_, reachable) => Some(Arc::clone(reachable)),
        }
    }

    pub(super) async fn send<T: FromRedisValue>(
        &self,
        request: &Request<'_>,
    ) -> redis::RedisResult<T> {
        match self {
            Conn::Single(conn, reachable) => {
                let answer = request.on(&mut conn.clone()).await;
                reachable.heard(request, &answer);
                answer.map_err(|e| unreachable_at(&reachable.at, e))
            }
            Conn::Model(conn) => request.on(&mut conn.clone()).await,
            #[cfg(feature = "sentinel")]
            Conn::Sentinel(following, reachable) => {
                let answer = async {
                    let (mut conn, generation) = following.conn().await?;
                    let answer = request.on(&mut conn).await;
                    if let Err(e) = &answer {
                        // This command and the next go to the new primary, if there is one.
                        if following.failed(e, generation).await {
                            let (mut conn, _) = following.conn().await?;
                            return request.on(&mut conn).await;
                        }
                    }
                    answer
                }
                .await;
                reachable.heard(request, &answer);
                answer
            }
            #[cfg(feature = "cluster")]
            Conn::Cluster(conn, reachable) => {
                // The cluster client follows MOVED/ASK itself, but its retries can run out
                // while the cluster settles after a failover or resharding (reconnecting to a
                // dead master uses them up fast). These replies mean the command did not run,
                // so sending it again is safe for every script.
                let mut pause = Duration::from_millis(50);
                let mut tries = 0;
                loop {
                    match request.on(&mut conn.clone()).await {
                        Err(e)
                            if tries < 4 && (e.is_cluster_error() || e.is_connection_refusal()) =>
                        {
                            tracing::debug!(error = %e, "cluster not settled; trying again");
                            tries += 1;
                            tokio::time::sleep(pause).await;
                            pause *= 2;
                        }
                        other => {
                            reachable.heard(request, &other);
                            return other;
                        }
                    }
                }
            }
        }
    }
}
