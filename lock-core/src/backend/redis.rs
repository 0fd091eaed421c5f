//! One Redis server (or a proxy in front of one), or a Redis Cluster, over one multiplexed,
//! reconnecting connection shared by every lock of a manager: the [`Node`] of the Redis
//! deployments. Each operation is one command: `SET NX PX` for an uncontended acquire, one
//! script for the rest (`EVALSHA`, with `EVAL` after `NOSCRIPT`).

use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, ErrorKind, FromRedisValue, Pipeline, ServerErrorKind, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::notify::{Dial, Notifier, PubSub, Watcher};
use super::{BoxFuture, Found, Node, Taken, Ticket, Timeouts};
use crate::error::{connect_failed, invalid_url};
use crate::keys::LockKeys;
use crate::validate::millis_ceil;
use crate::{locked, LockError, Result};

/// Where a client connects, for errors (a client holds no url, and never a password here).
fn address(client: &redis::Client) -> String {
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

/// A Lua script with its SHA1, computed once per process.
/// How long a fence key outlives its last use (the `PX` that fence.lua sets).
pub(crate) const FENCE_KEEP: Duration = Duration::from_secs(24 * 3600);

pub(crate) struct LuaScript {
    body: &'static str,
    sha1: String,
}

impl LuaScript {
    fn new(body: &'static str) -> Self {
        Self {
            body,
            sha1: redis::Script::new(body).get_hash().to_owned(),
        }
    }
}

static ACQUIRE: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new(include_str!("../scripts/acquire.lua")));
static FAIR: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new(include_str!("../scripts/fair.lua")));
static LEAVE: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new(include_str!("../scripts/leave.lua")));
static RELEASE: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new(include_str!("../scripts/release.lua")));
static EXTEND: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new(include_str!("../scripts/extend.lua")));
static FENCE: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new(include_str!("../scripts/fence.lua")));
static FORCE: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new(include_str!("../scripts/force.lua")));
static PERMIT_ACQUIRE: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new(include_str!("../scripts/permit_acquire.lua")));
static PERMIT_RELEASE: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new(include_str!("../scripts/permit_release.lua")));
static PERMIT_EXTEND: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new(include_str!("../scripts/permit_extend.lua")));
static PERMIT_PEEK: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new(include_str!("../scripts/permit_peek.lua")));

/// Keys asked for per `SCAN` call, and peeked at per round trip, by `list`.
const SCAN_BATCH: usize = 500;

/// The command connection: one server, or a Redis Cluster.
#[derive(Clone)]
enum Conn {
    /// One server, and its address (for the errors that say it could not be reached).
    Single(ConnectionManager, Arc<str>),
    /// A server modelled in this process (`LockManager::in_memory`).
    Model(super::memory::ModelConn),
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
    /// The primary named by Sentinel, whichever server that is now.
    #[cfg(feature = "sentinel")]
    Sentinel(Arc<super::sentinel::Following>),
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

/// `min_replicas(n, timeout)`: a grant, fence increment or extend counts once `replicas`
/// replicas acknowledged it, waiting at most `timeout` for them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MinReplicas {
    pub(crate) replicas: usize,
    pub(crate) timeout: Duration,
}

/// The most connections for commands followed by `WAIT` a manager opens; more such commands at
/// once wait for one to come free (within their attempt's time bound).
const REPLICATED_CONNECTIONS: usize = 64;

/// The connections of the commands that must be replicated. `WAIT` holds up every later
/// command of its connection until it returns, so each such command has a connection to itself
/// for its round trip, lent from this pool: a lagging replica delays only the grants and
/// renewals waiting for it, each by at most the timeout, and never a release (which uses the
/// main connection). `WAIT` counts the acknowledgements of its connection's latest write,
/// which is this command's, or a write after an earlier copy's (acquire.lua).
struct Replicated {
    want: MinReplicas,
    /// The settings of these connections: the reply comes after the wait for the replicas.
    timeouts: Timeouts,
    /// Connections not lent now.
    idle: Mutex<Vec<Conn>>,
    /// One per connection lent: at most [`REPLICATED_CONNECTIONS`].
    lendable: Arc<Semaphore>,
}

/// A connection lent for one command. It goes back to the pool only once that command has its
/// answer ([`Lent::answered`]): one dropped in flight, or failed, may still be blocked in
/// `WAIT`, so it is closed instead.
struct Lent<'a> {
    conn: Option<Conn>,
    pool: &'a Replicated,
    answered: bool,
    _slot: OwnedSemaphorePermit,
}

impl Lent<'_> {
    fn conn(&self) -> &Conn {
        self.conn.as_ref().expect("lent until dropped")
    }

    fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take().filter(|_| self.answered) {
            locked(&self.pool.idle).push(conn);
        }
    }
}

pub(crate) struct RedisNode {
    conn: Conn,
    /// Release notifications for waiters, on a connection of their own opened on the first wait.
    notifier: Arc<dyn Watcher>,
    /// Releases are published with `SPUBLISH` (a Redis 7 cluster), else with `PUBLISH`.
    sharded: bool,
    /// With `min_replicas`: the connections of the commands followed by `WAIT`.
    replicated: Option<Replicated>,
    /// Where the connections go, to open more of them.
    source: Source,
}

/// Where a node's connections go.
#[derive(Clone)]
enum Source {
    Client(Box<redis::Client>),
    /// The in-process server: its one connection is all there is.
    Model(super::memory::ModelConn),
    #[cfg(feature = "cluster")]
    Cluster(Vec<String>),
    #[cfg(feature = "sentinel")]
    Sentinel(Arc<super::sentinel::Primary>),
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
    pub(crate) fn in_process(server: Arc<super::memory::ModelServer>, resends: bool) -> Self {
        let conn = super::memory::ModelConn {
            server: Arc::clone(&server),
            resends,
        };
        Self {
            conn: Conn::Model(conn.clone()),
            notifier: Arc::new(super::memory::ModelWatcher(server)),
            sharded: false,
            replicated: None,
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
        }
    }

    /// From now on, a grant, a fence increment or an extend counts only once `want.replicas`
    /// replicas acknowledged it (`WAIT`), each on a connection lent to it alone. Unless
    /// `check` is false (a lazy manager), asks the server now whether it accepts `WAIT` (an
    /// ACL or a proxy may refuse it).
    pub(crate) async fn min_replicas(
        mut self,
        want: MinReplicas,
        timeouts: Timeouts,
        check: bool,
    ) -> Result<Self> {
        let replicated = Replicated {
            want,
            timeouts: Timeouts {
                response: timeouts.response + want.timeout,
                ..timeouts
            },
            idle: Mutex::new(Vec::new()),
            lendable: Arc::new(Semaphore::new(REPLICATED_CONNECTIONS)),
        };
        if check {
            let lent = self.lend(&replicated).await?;
            let probe: redis::RedisResult<i64> = lent
                .conn()
                .send(&Request::One(redis::cmd("WAIT").arg(0).arg(1)))
                .await;
            if let Err(e) = probe {
                return Err(LockError::InvalidConfig {
                    reason: format!(
                        "min_replicas needs the WAIT command, and the server refused it: {e}"
                    ),
                });
            }
            lent.answered();
        }
        self.replicated = Some(replicated);
        Ok(self)
    }

    /// A connection of `pool` for one command: an idle one, or a new one (connected on first
    /// use) while fewer than [`REPLICATED_CONNECTIONS`] are lent.
    async fn lend<'a>(&self, pool: &'a Replicated) -> Result<Lent<'a>> {
        let slot = Arc::clone(&pool.lendable)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let idle = locked(&pool.idle).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => self.open(pool.timeouts).await?,
        };
        Ok(Lent {
            conn: Some(conn),
            pool,
            answered: false,
            _slot: slot,
        })
    }

    /// Another connection to where this node's connections go.
    async fn open(&self, timeouts: Timeouts) -> Result<Conn> {
        Ok(match &self.source {
            Source::Model(conn) => Conn::Model(conn.clone()),
            Source::Client(client) => Conn::single(
                ConnectionManager::new_lazy_with_config((**client).clone(), Self::config(timeouts))
                    .map_err(|e| connect_failed(&address(client), e))?,
                client,
            ),
            #[cfg(feature = "cluster")]
            Source::Cluster(seeds) => Conn::Cluster(Self::cluster_conn(seeds, timeouts).await?),
            #[cfg(feature = "sentinel")]
            Source::Sentinel(primary) => Conn::Sentinel(Arc::new(super::sentinel::Following::new(
                Arc::clone(primary),
                Self::config(timeouts),
            ))),
        })
    }

    fn config(timeouts: Timeouts) -> ConnectionManagerConfig {
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
        let sharded = super::sharded::supported(&mut conn).await;
        let notifier: Arc<dyn Watcher> = if sharded {
            Arc::new(super::sharded::ShardedNotifier::new(
                seeds.to_vec(),
                timeouts,
            ))
        } else {
            Arc::new(Notifier::new(Dial::Client(Box::new(open(&seeds[0])?))))
        };
        Ok(Self {
            conn: Conn::Cluster(conn),
            notifier,
            sharded,
            replicated: None,
            source: Source::Cluster(seeds.to_vec()),
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
            .retries(6)
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
        let primary = Arc::new(super::sentinel::Primary::new(master, sentinels, timeouts)?);
        if !lazy {
            super::sentinel::check(&primary).await?;
        }
        let following =
            super::sentinel::Following::new(Arc::clone(&primary), Self::config(timeouts));
        Ok(Self {
            conn: Conn::Sentinel(Arc::new(following)),
            notifier: Arc::new(Notifier::new(Dial::Sentinel(Arc::clone(&primary)))),
            sharded: false,
            replicated: None,
            source: Source::Sentinel(primary),
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
            Conn::Cluster(_) => true,
            // Sent again to a new primary after a failover.
            #[cfg(feature = "sentinel")]
            Conn::Sentinel(_) => true,
        }
    }

    /// Release notifications through this server's pub/sub.
    pub(crate) fn pubsub(&self) -> PubSub {
        PubSub::new(Arc::clone(&self.notifier))
    }

    /// `EVALSHA`, one round trip while the server has the script cached. After `NOSCRIPT`
    /// (first use, `SCRIPT FLUSH`, or a restarted server) it sends `EVAL` with the body,
    /// which runs the script and caches it again: still no separate `SCRIPT LOAD`.
    async fn eval<T: FromRedisValue>(
        &self,
        script: &LuaScript,
        args: impl Fn(&mut Cmd),
    ) -> Result<T> {
        Ok(run_script(&self.conn, script, args, None).await?.0)
    }

    /// [`eval`](Self::eval) of a script whose write must reach the replicas: with
    /// `min_replicas`, followed by `WAIT` in the same round trip, on a connection for such
    /// commands. `applied` tells from the reply whether the script wrote what must be
    /// replicated; if it did and too few replicas acknowledged it in time, the answer is
    /// [`LockError::NotReplicated`] (what the script did stays done on the primary).
    async fn eval_replicated<T: FromRedisValue>(
        &self,
        keys: &LockKeys,
        script: &LuaScript,
        args: impl Fn(&mut Cmd),
        applied: impl Fn(&T) -> bool,
    ) -> Result<T> {
        let Some(replicated) = &self.replicated else {
            return self.eval(script, args).await;
        };
        let lent = self.lend(replicated).await?;
        let (reply, acked) = run_script(lent.conn(), script, args, Some(replicated.want)).await?;
        lent.answered();
        check_acked(keys, replicated.want, applied(&reply), acked)?;
        Ok(reply)
    }

    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> redis::RedisResult<T> {
        self.conn.send(&Request::One(cmd)).await
    }

    /// `GET` and `PTTL` of each of `keys`: in one round trip on one server, one per key on a
    /// cluster. Not atomic: a key that expires in between is left out. A lock of `permits(n)`
    /// (a hash, where `GET` is refused) is read with one more script: one `Found` per live
    /// permit, the earliest taken first.
    async fn peek_all(&self, keys: &[String]) -> Result<Vec<Vec<Found>>> {
        let mut out = Vec::with_capacity(keys.len());
        // One key per pipeline on a cluster (the keys live in many slots); all at once
        // elsewhere.
        let per = if self.is_cluster() {
            1
        } else {
            keys.len().max(1)
        };
        for chunk in keys.chunks(per) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.cmd("GET").arg(key).cmd("PTTL").arg(key);
            }
            // Each reply on its own: a key of another type under the same pattern (WRONGTYPE)
            // is not a lock, and must not fail the others.
            pipe.ignore_errors();
            let flat: Vec<Value> = self.conn.send(&Request::Pipe(&pipe)).await?;
            for (key, pair) in chunk.iter().zip(flat.chunks(2)) {
                let found = match pair[0].clone().extract_error() {
                    Ok(value) => {
                        let Ok(value) = redis::from_redis_value::<String>(value) else {
                            out.push(Vec::new());
                            continue;
                        };
                        let left: i64 = redis::from_redis_value(pair[1].clone())
                            .map_err(redis::RedisError::from)?;
                        // -2: it expired between the two commands; -1: no expiry (not one of
                        // ours, but shown as it is).
                        (left != -2)
                            .then(|| Found {
                                value,
                                left: u64::try_from(left).ok().map(Duration::from_millis),
                                permits: 1,
                            })
                            .into_iter()
                            .collect()
                    }
                    Err(e) if e.code() == Some("WRONGTYPE") => self.peek_permits(key).await?,
                    Err(_) => Vec::new(),
                };
                out.push(found);
            }
        }
        Ok(out)
    }

    /// The live permits of a lock of `permits(n)` at `key` (permit_peek.lua), the earliest
    /// taken first; none when `key` is a hash of something else.
    async fn peek_permits(&self, key: &str) -> Result<Vec<Found>> {
        let reply: Vec<String> = self
            .eval(&PERMIT_PEEK, |cmd| {
                cmd.arg(1).arg(key);
            })
            .await?;
        let Some((n, rest)) = reply.split_first() else {
            return Ok(Vec::new());
        };
        let Ok(permits) = n.parse::<u32>() else {
            return Ok(Vec::new());
        };
        let waited = rest.first().is_some_and(|w| w == "1");
        let mut found: Vec<Found> = rest
            .get(1..)
            .unwrap_or_default()
            .chunks(2)
            .filter_map(|pair| {
                let left: u64 = pair.get(1)?.parse().ok()?;
                // The mark of a plain lock's value, so that `waited_for` reads alike.
                let mark = if waited { "*" } else { "" };
                Some(Found {
                    value: format!("{}{mark}", pair[0]),
                    left: Some(Duration::from_millis(left)),
                    permits,
                })
            })
            .collect();
        super::taken_first(&mut found);
        Ok(found)
    }

    /// Refuses a primary whose `maxmemory-policy` can evict lock keys: every policy but
    /// `noeviction` may, as every lock key has an expiry (the `volatile-*` policies pick among
    /// exactly those), and an evicted lock lets a second holder in. Asked once, at `build`; a
    /// server that refuses `CONFIG` (a managed service, an ACL) is not checked, quietly.
    pub(crate) async fn refuse_evicting(&self) -> Result<()> {
        let Ok(primaries) = self.primaries().await else {
            return Ok(());
        };
        for at in primaries {
            let mut cmd = redis::cmd("CONFIG");
            cmd.arg("GET").arg("maxmemory-policy");
            let server = match (&at, &self.source) {
                (Some((host, port)), _) => format!("{host}:{port}"),
                (None, Source::Client(client)) => address(client),
                (None, _) => "the primary".to_owned(),
            };
            match self.on::<Vec<String>>(at.as_ref(), cmd).await {
                Ok(reply) => {
                    if let Some(policy) = reply.get(1).filter(|p| *p != "noeviction") {
                        return Err(LockError::InvalidConfig {
                            reason: format!(
                                "{server} has maxmemory-policy `{policy}`, which can evict lock keys (each has an expiry): an evicted lock lets a second holder in. Set `maxmemory-policy noeviction` (or keep locks on a server of their own), or accept the risk with `LockManagerBuilder::allow_eviction(true)`"
                            ),
                        });
                    }
                }
                Err(e) => {
                    tracing::debug!(%server, error = %e, "CONFIG GET maxmemory-policy refused; eviction not checked");
                }
            }
        }
        Ok(())
    }

    fn is_cluster(&self) -> bool {
        match self.conn {
            #[cfg(feature = "cluster")]
            Conn::Cluster(_) => true,
            _ => false,
        }
    }

    /// The primaries to `SCAN`: one (`None`, this connection's server) or, on a cluster,
    /// each master's address.
    async fn primaries(&self) -> Result<Vec<Option<(String, u16)>>> {
        match &self.conn {
            #[cfg(feature = "cluster")]
            Conn::Cluster(conn) => {
                use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
                let reply = conn
                    .clone()
                    .route_command(
                        redis::cmd("PING"),
                        RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
                    )
                    .await?;
                let Value::Map(answers) = reply else {
                    // Scanning one node only would list part of the locks as if it were all.
                    return Err(LockError::Redis(redis::RedisError::from((
                        ErrorKind::UnexpectedReturnType,
                        "the cluster did not tell its primaries",
                    ))));
                };
                let mut out = Vec::new();
                for (address, _) in answers {
                    let address: String =
                        redis::from_redis_value(address).map_err(redis::RedisError::from)?;
                    let Some((host, port)) = address.rsplit_once(':') else {
                        continue;
                    };
                    if let Ok(port) = port.parse() {
                        out.push(Some((host.to_owned(), port)));
                    }
                }
                Ok(out)
            }
            _ => Ok(vec![None]),
        }
    }

    /// `cmd` on this connection's server, or on a cluster's node at `at`.
    async fn on<T: FromRedisValue>(&self, at: Option<&(String, u16)>, cmd: Cmd) -> Result<T> {
        match (&self.conn, at) {
            #[cfg(feature = "cluster")]
            (Conn::Cluster(conn), Some((host, port))) => {
                use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
                let reply = conn
                    .clone()
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        }),
                    )
                    .await?;
                Ok(redis::from_redis_value(reply).map_err(redis::RedisError::from)?)
            }
            _ => {
                let _ = at;
                Ok(self.query(&cmd).await?)
            }
        }
    }
}

/// `script` with `args` on `conn` (see [`RedisNode::eval`]), followed by `WAIT` when `wait`
/// is given: its reply, and how many replicas acknowledged it (0 without `wait`).
async fn run_script<T: FromRedisValue>(
    conn: &Conn,
    script: &LuaScript,
    args: impl Fn(&mut Cmd),
    wait: Option<MinReplicas>,
) -> Result<(T, usize)> {
    let command = |name: &str, first: &str| {
        let mut cmd = redis::cmd(name);
        cmd.arg(first);
        args(&mut cmd);
        cmd
    };
    match send_waited(conn, &command("EVALSHA", &script.sha1), wait).await {
        Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            Ok(send_waited(conn, &command("EVAL", script.body), wait).await?)
        }
        other => Ok(other?),
    }
}

/// `cmd`, then `WAIT` in the same round trip when `wait` is given.
async fn send_waited<T: FromRedisValue>(
    conn: &Conn,
    cmd: &Cmd,
    wait: Option<MinReplicas>,
) -> redis::RedisResult<(T, usize)> {
    let Some(want) = wait else {
        return Ok((conn.send(&Request::One(cmd)).await?, 0));
    };
    let mut pipe = redis::pipe();
    pipe.add_command(cmd.clone())
        .cmd("WAIT")
        .arg(want.replicas)
        // `WAIT n 0` would wait forever.
        .arg(millis_ceil(want.timeout).max(1));
    // Each reply on its own: the command's error is the command's, and a refused `WAIT`
    // (checked at `build`, but an ACL can change) counts as no acknowledgement, so a grant it
    // followed is given back.
    pipe.ignore_errors();
    let (reply, waited): (Value, Value) = conn.send(&Request::Pipe(&pipe)).await?;
    let reply = redis::from_redis_value(reply.extract_error()?)?;
    let acked = match waited.extract_error() {
        Ok(n) => redis::from_redis_value(n)?,
        Err(e) => {
            tracing::warn!(error = %e, "WAIT refused; counting no replica");
            0
        }
    };
    Ok((reply, acked))
}

/// [`LockError::NotReplicated`] when a write was `applied` and fewer than wanted replicas
/// acknowledged it.
fn check_acked(keys: &LockKeys, want: MinReplicas, applied: bool, acked: usize) -> Result<()> {
    if applied && acked < want.replicas {
        return Err(LockError::NotReplicated {
            name: keys.name().to_owned(),
            acked,
            wanted: want.replicas,
        });
    }
    Ok(())
}

/// What [`Conn::send`] sends: one command, or one followed by `WAIT`.
enum Request<'a> {
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
    fn single(conn: ConnectionManager, client: &redis::Client) -> Self {
        Conn::Single(conn, address(client).into())
    }

    async fn send<T: FromRedisValue>(&self, request: &Request<'_>) -> redis::RedisResult<T> {
        match self {
            Conn::Single(conn, at) => request
                .on(&mut conn.clone())
                .await
                .map_err(|e| unreachable_at(at, e)),
            Conn::Model(conn) => request.on(&mut conn.clone()).await,
            #[cfg(feature = "sentinel")]
            Conn::Sentinel(following) => {
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
            #[cfg(feature = "cluster")]
            Conn::Cluster(conn) => {
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
                        other => return other,
                    }
                }
            }
        }
    }
}

/// The answer of acquire.lua or fair.lua: 1 ours; else minus the milliseconds worth waiting at
/// most (0 when unknown).
fn taken(reply: i64) -> Taken {
    if granted(&reply) {
        return Taken::Granted;
    }
    Taken::Held((reply < 0).then(|| Duration::from_millis(reply.unsigned_abs())))
}

/// [`LockError::PermitsMismatch`] for the `LOCKPERMITS <m>` error reply of the acquire
/// scripts (the lock is held with `m` permits); any other error as it is.
fn permits_refused(keys: &LockKeys, e: LockError) -> LockError {
    let held = match &e {
        LockError::Redis(re) if re.code() == Some("LOCKPERMITS") => re
            .detail()
            .and_then(|d| d.split_whitespace().next())
            .and_then(|m| m.parse().ok()),
        _ => None,
    };
    match held {
        Some(held) => LockError::PermitsMismatch {
            name: keys.name().to_owned(),
            held,
            requested: keys.permits,
        },
        None => e,
    }
}

/// The acquire and release scripts' last argument: `'1'` when the client re-sends commands by
/// itself, so that an attempt refused or released leaves its tomb (see acquire.lua).
fn tomb_arg(resends: bool) -> &'static str {
    if resends {
        "1"
    } else {
        "0"
    }
}

/// Whether acquire.lua or fair.lua granted the lock.
fn granted(reply: &i64) -> bool {
    *reply == 1
}

impl Node for RedisNode {
    fn acquire<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
        ttl: Duration,
        mark: bool,
        ticket: Option<Ticket<'a>>,
    ) -> BoxFuture<'a, Result<Taken>> {
        let taken = async move {
            let ttl_ms = millis_ceil(ttl);
            let mark_arg = if mark { "1" } else { "0" };
            let tomb = tomb_arg(self.resends());
            if keys.shared() {
                let reply: i64 = self
                    .eval_replicated(
                        keys,
                        &PERMIT_ACQUIRE,
                        |cmd| {
                            cmd.arg(1)
                                .arg(&keys.lock)
                                .arg(token)
                                .arg(ttl_ms)
                                .arg(keys.permits)
                                .arg(mark_arg)
                                .arg(tomb);
                        },
                        granted,
                    )
                    .await?;
                return Ok(taken(reply));
            }
            if let Some(ticket) = ticket {
                let reply: i64 = self
                    .eval_replicated(
                        keys,
                        &FAIR,
                        |cmd| {
                            cmd.arg(2)
                                .arg(&keys.lock)
                                .arg(keys.queue())
                                .arg(token)
                                .arg(ttl_ms)
                                .arg(ticket.id)
                                .arg(millis_ceil(ticket.keep))
                                .arg(mark_arg)
                                .arg(tomb);
                        },
                        granted,
                    )
                    .await?;
                return Ok(taken(reply));
            }
            // A plain SET NX cannot tell our own key from another's. That is enough where the
            // client never re-sends (one server); the cluster client re-sends after I/O errors,
            // so there, a copy of this attempt may already have set the key: the script says so.
            if !mark && !self.resends() {
                let mut cmd = redis::cmd("SET");
                cmd.arg(&keys.lock)
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms);
                let set: Option<String> = match &self.replicated {
                    None => self.query(&cmd).await?,
                    Some(replicated) => {
                        let lent = self.lend(replicated).await?;
                        let wait = Some(replicated.want);
                        let (set, acked) = send_waited(lent.conn(), &cmd, wait).await?;
                        lent.answered();
                        check_acked(keys, replicated.want, Option::is_some(&set), acked)?;
                        set
                    }
                };
                return Ok(if set.is_some() {
                    Taken::Granted
                } else {
                    Taken::Held(None)
                });
            }
            let reply: i64 = self
                .eval_replicated(
                    keys,
                    &ACQUIRE,
                    |cmd| {
                        cmd.arg(1)
                            .arg(&keys.lock)
                            .arg(token)
                            .arg(ttl_ms)
                            .arg(mark_arg)
                            .arg(tomb);
                    },
                    granted,
                )
                .await?;
            Ok(taken(reply))
        };
        Box::pin(async move { taken.await.map_err(|e| permits_refused(keys, e)) })
    }

    fn leave<'a>(&'a self, keys: &'a LockKeys, ticket: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let publish = if self.sharded { "SPUBLISH" } else { "PUBLISH" };
            let _: i64 = self
                .eval(&LEAVE, |cmd| {
                    cmd.arg(2)
                        .arg(keys.queue())
                        .arg(&keys.lock)
                        .arg(ticket)
                        .arg(publish);
                })
                .await?;
            Ok(())
        })
    }

    fn release<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
        keep: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let publish = if self.sharded { "SPUBLISH" } else { "PUBLISH" };
            let script = if keys.shared() {
                &PERMIT_RELEASE
            } else {
                &RELEASE
            };
            let tomb = tomb_arg(self.resends());
            let released: i64 = self
                .eval(script, |cmd| {
                    cmd.arg(1)
                        .arg(&keys.lock)
                        .arg(token)
                        .arg(millis_ceil(keep))
                        .arg(publish)
                        .arg(tomb);
                })
                .await?;
            Ok(released == 1)
        })
    }

    fn extend<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let script = if keys.shared() {
                &PERMIT_EXTEND
            } else {
                &EXTEND
            };
            let extended: i64 = self
                .eval_replicated(
                    keys,
                    script,
                    |cmd| {
                        cmd.arg(1).arg(&keys.lock).arg(token).arg(millis_ceil(ttl));
                    },
                    |&reply| reply == 1,
                )
                .await?;
            Ok(extended == 1)
        })
    }

    fn fence<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>>> {
        Box::pin(async move {
            let fence: u64 = self
                .eval_replicated(
                    keys,
                    &FENCE,
                    |cmd| {
                        cmd.arg(2)
                            .arg(&keys.lock)
                            .arg(keys.fence())
                            .arg(token)
                            .arg(millis_ceil(FENCE_KEEP));
                    },
                    |&fence| fence > 0,
                )
                .await?;
            Ok((fence > 0).then_some(fence))
        })
    }

    fn peek<'a>(&'a self, keys: &'a LockKeys) -> BoxFuture<'a, Result<Option<Found>>> {
        Box::pin(async move {
            Ok(self
                .peek_all(std::slice::from_ref(&keys.lock))
                .await?
                .pop()
                .and_then(|found| found.into_iter().next()))
        })
    }

    fn evict<'a>(&'a self, keys: &'a LockKeys) -> BoxFuture<'a, Result<Option<String>>> {
        Box::pin(async move {
            let publish = if self.sharded { "SPUBLISH" } else { "PUBLISH" };
            self.eval(&FORCE, |cmd| {
                cmd.arg(2)
                    .arg(&keys.lock)
                    .arg(keys.fence())
                    .arg(millis_ceil(FENCE_KEEP))
                    .arg(publish);
            })
            .await
        })
    }

    fn scan<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<Vec<(String, Found)>>> {
        Box::pin(async move {
            let mut keys = Vec::new();
            for at in self.primaries().await? {
                let mut cursor = 0u64;
                loop {
                    let mut cmd = redis::cmd("SCAN");
                    cmd.arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(SCAN_BATCH);
                    let (next, found): (u64, Vec<String>) = self.on(at.as_ref(), cmd).await?;
                    keys.extend(found);
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
            keys.sort();
            keys.dedup();
            let mut out = Vec::with_capacity(keys.len());
            for batch in keys.chunks(SCAN_BATCH) {
                let found = self.peek_all(batch).await?;
                for (key, found) in batch.iter().zip(found) {
                    out.extend(found.into_iter().map(|found| (key.clone(), found)));
                }
            }
            Ok(out)
        })
    }
}
