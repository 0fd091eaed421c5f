//! One Redis server (or a proxy in front of one), or a Redis Cluster, over one multiplexed,
//! reconnecting connection shared by every lock of a manager: the [`Node`] of the Redis
//! deployments. Each operation is one command: `SET NX PX` for an uncontended acquire, one
//! script for the rest (`EVALSHA`, with `EVAL` after `NOSCRIPT`).

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, ErrorKind, FromRedisValue, ServerErrorKind};

use super::memory::FENCE_KEEP;
use super::notify::{Notifier, PubSub, Watcher};
use super::{BoxFuture, Node, Taken, Ticket, Timeouts};
use crate::error::{connect_failed, invalid_url};
use crate::keys::LockKeys;
use crate::validate::millis_ceil;
use crate::Result;

/// Where a client connects, for errors (a client holds no url, and never a password here).
fn address(client: &redis::Client) -> String {
    client.get_connection_info().addr().to_string()
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

/// The command connection: one server, or a Redis Cluster.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

pub(crate) struct RedisNode {
    conn: Conn,
    /// Release notifications for waiters, on a connection of their own opened on the first wait.
    notifier: Arc<dyn Watcher>,
    /// Releases are published with `SPUBLISH` (a Redis 7 cluster), else with `PUBLISH`.
    sharded: bool,
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
        Ok(Self::with(client, Conn::Single(conn)))
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
        Ok(Self::with(client, Conn::Single(conn)))
    }

    fn with(client: redis::Client, conn: Conn) -> Self {
        Self {
            conn,
            notifier: Arc::new(Notifier::new(client)),
            sharded: false,
        }
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
        let everywhere = || {
            let masked: Vec<String> = seeds.iter().map(|s| crate::error::masked(s)).collect();
            masked.join(", ")
        };
        let mut conn = redis::cluster::ClusterClientBuilder::new(seeds.iter().map(String::as_str))
            .connection_timeout(timeouts.connect)
            .response_timeout(timeouts.response)
            .retries(6)
            .min_retry_wait(10)
            .max_retry_wait(200)
            .build()
            .map_err(|e| invalid_url(&everywhere(), &e))?
            .get_async_connection()
            .await
            .map_err(|e| connect_failed(&everywhere(), e))?;
        let sharded = super::sharded::supported(&mut conn).await;
        let notifier: Arc<dyn Watcher> = if sharded {
            Arc::new(super::sharded::ShardedNotifier::new(
                seeds.to_vec(),
                timeouts,
            ))
        } else {
            Arc::new(Notifier::new(open(&seeds[0])?))
        };
        Ok(Self {
            conn: Conn::Cluster(conn),
            notifier,
            sharded,
        })
    }

    /// Whether the client sends a command again by itself after an I/O error (the cluster
    /// client does), so that one call may be applied twice.
    pub(crate) fn resends(&self) -> bool {
        match self.conn {
            Conn::Single(_) => false,
            #[cfg(feature = "cluster")]
            Conn::Cluster(_) => true,
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
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&script.sha1);
        args(&mut cmd);
        match self.query(&cmd).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(script.body);
                args(&mut cmd);
                Ok(self.query(&cmd).await?)
            }
            other => Ok(other?),
        }
    }

    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> redis::RedisResult<T> {
        match &self.conn {
            Conn::Single(conn) => cmd.query_async(&mut conn.clone()).await,
            #[cfg(feature = "cluster")]
            Conn::Cluster(conn) => {
                // The cluster client follows MOVED/ASK itself, but its retries can run out
                // while the cluster settles after a failover or resharding (reconnecting to a
                // dead master uses them up fast). These replies mean the command did not run,
                // so sending it again is safe for every script.
                let mut pause = Duration::from_millis(50);
                let mut tries = 0;
                loop {
                    match cmd.query_async(&mut conn.clone()).await {
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
    match reply {
        1 => Taken::Granted,
        _ => Taken::Held((reply < 0).then(|| Duration::from_millis(reply.unsigned_abs()))),
    }
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
        Box::pin(async move {
            let ttl_ms = millis_ceil(ttl);
            let mark_arg = if mark { "1" } else { "0" };
            if let Some(ticket) = ticket {
                let reply: i64 = self
                    .eval(&FAIR, |cmd| {
                        cmd.arg(2)
                            .arg(&keys.lock)
                            .arg(keys.queue())
                            .arg(token)
                            .arg(ttl_ms)
                            .arg(ticket.id)
                            .arg(millis_ceil(ticket.keep))
                            .arg(mark_arg);
                    })
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
                let set: Option<String> = self.query(&cmd).await?;
                return Ok(if set.is_some() {
                    Taken::Granted
                } else {
                    Taken::Held(None)
                });
            }
            let reply: i64 = self
                .eval(&ACQUIRE, |cmd| {
                    cmd.arg(1)
                        .arg(&keys.lock)
                        .arg(token)
                        .arg(ttl_ms)
                        .arg(mark_arg);
                })
                .await?;
            Ok(taken(reply))
        })
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
            let released: i64 = self
                .eval(&RELEASE, |cmd| {
                    cmd.arg(1)
                        .arg(&keys.lock)
                        .arg(token)
                        .arg(millis_ceil(keep))
                        .arg(publish);
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
            let extended: i64 = self
                .eval(&EXTEND, |cmd| {
                    cmd.arg(1).arg(&keys.lock).arg(token).arg(millis_ceil(ttl));
                })
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
                .eval(&FENCE, |cmd| {
                    cmd.arg(2)
                        .arg(&keys.lock)
                        .arg(keys.fence())
                        .arg(token)
                        .arg(millis_ceil(FENCE_KEEP));
                })
                .await?;
            Ok((fence > 0).then_some(fence))
        })
    }
}
