//! `LockManager`: the entry point. It owns the backend connection, the table of held locks and
//! the background releases of dropped guards.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::backend::redis::{Endpoint, MinReplicas};
use crate::backend::Drift;
use crate::backend::Timeouts;
use crate::deploy::{self, Connection, Target};
use crate::keys::LockKeys;
use crate::request::LockRequest;
use crate::shared::{Settings, Shared};
use crate::validate::{check_prefix, MAX_TTL, MIN_TTL};
use crate::{LockError, LockGuard, Result};

/// The default of [`LockManagerBuilder::max_poll_interval`].
pub const DEFAULT_MAX_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The bound on distinct `lock` metric labels unless
/// [`LockManagerBuilder::metrics_label_limit`] says otherwise.
pub const DEFAULT_METRICS_LABEL_LIMIT: usize = 100;

/// The key prefix used unless [`LockManagerBuilder::key_prefix`] says otherwise.
pub const DEFAULT_KEY_PREFIX: &str = "lock:";

/// How long one command waits for its reply unless [`LockManagerBuilder::response_timeout`]
/// says otherwise.
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Takes and tracks distributed locks.
///
/// One manager holds one multiplexed, reconnecting connection that every acquisition shares
/// (concurrent requests are pipelined on it). Clone it freely: clones share everything.
///
/// ```no_run
/// # async fn demo() -> lock_core::Result<()> {
/// use std::time::Duration;
/// use lock_core::LockManager;
///
/// let locks = LockManager::connect("redis://127.0.0.1:6379").await?;
/// if let Some(guard) = locks.try_acquire("reports:nightly", Duration::from_secs(30)).await? {
///     // ... only one replica gets here at a time ...
///     guard.release().await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct LockManager {
    shared: Arc<Shared>,
}

impl fmt::Debug for LockManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockManager")
            .field("backend", &self.shared.kind())
            .field("key_prefix", &self.shared.settings().prefix)
            .field("held", &self.shared.held_count())
            .field("pending_releases", &self.shared.pending_tasks())
            .finish()
    }
}

impl LockManager {
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub(crate) fn from_shared(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Connects to one Redis server: `redis://[user:password@]host[:port][/db]`,
    /// `rediss://...` (with lock-core's `tls` feature: rustls, verified against the system's
    /// trust store; for your own CA or a client certificate, pass a client made with
    /// `redis::Client::build_with_tls` to [`LockManagerBuilder::client`]) or
    /// `redis+unix:///path/to/socket`.
    ///
    /// The connection is made (and authenticated) now: a url that does not parse is a
    /// [`LockError::InvalidUrl`], and a server that cannot be reached or refuses the password a
    /// [`LockError::Connect`], each naming the url with its password masked.
    pub async fn connect(url: &str) -> Result<LockManager> {
        Self::builder().url(url).build().await
    }

    /// A manager whose locks live in this process only, with the same semantics as Redis
    /// (tokens, expiry, fencing, `Busy`/`Timeout`, release on drop) on `tokio::time`: the
    /// Redis backend's own commands and Lua scripts run against a Redis keyspace modelled in
    /// the process, so nothing about a lock differs but where its keys live. As on Redis, a key
    /// lives through the millisecond its expiry falls in, and a guard counts 1 ms less than its
    /// ttl (expiries are whole milliseconds): under paused time, advance a millisecond past a
    /// ttl to see the lock free.
    ///
    /// Made for tests of code that takes locks: it works under `tokio::time::pause()`. It does
    /// not exclude other processes. Clones share the same locks; separate calls do not.
    pub fn in_memory() -> LockManager {
        let (store, wake) = deploy::in_memory();
        Self::from_shared(Shared::new(
            store,
            wake,
            Settings {
                prefix: DEFAULT_KEY_PREFIX.to_owned(),
                poll_cap: DEFAULT_MAX_POLL_INTERVAL,
                response_timeout: DEFAULT_RESPONSE_TIMEOUT,
                holder: crate::token::default_holder(),
                label_limit: DEFAULT_METRICS_LABEL_LIMIT,
            },
        ))
    }

    /// Configures a manager: server, key prefix, timeouts.
    pub fn builder() -> LockManagerBuilder {
        LockManagerBuilder::default()
    }

    /// Starts a request for the lock `name`; set its options, then `acquire` or `try_acquire`.
    ///
    /// ```no_run
    /// # async fn demo(locks: lock_core::LockManager) -> lock_core::Result<()> {
    /// use std::time::Duration;
    /// let guard = locks
    ///     .lock("tenant:42")
    ///     .ttl(Duration::from_secs(10))
    ///     .wait(Duration::from_secs(2))
    ///     .acquire()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn lock(&self, name: impl Into<String>) -> LockRequest<'_> {
        LockRequest::new(&self.shared, name.into())
    }

    /// A leader election on `name`: of all the handles started on it (in this process or
    /// others), one leads at a time. See [`Leader`](crate::Leader).
    pub fn leader(&self, name: impl Into<String>) -> crate::LeaderBuilder<'_> {
        crate::LeaderBuilder::new(self, name.into())
    }

    /// Takes `name` for `ttl` if it is free: `Ok(None)` when another owner holds it. Never waits.
    pub async fn try_acquire(&self, name: &str, ttl: Duration) -> Result<Option<LockGuard>> {
        self.lock(name).ttl(ttl).try_acquire().await
    }

    /// Takes `name` for `ttl`, waiting up to `wait` for it to become free:
    /// [`LockError::Busy`] when `wait` is zero, [`LockError::Timeout`] when the wait ran out.
    pub async fn acquire(&self, name: &str, ttl: Duration, wait: Duration) -> Result<LockGuard> {
        self.lock(name).ttl(ttl).wait(wait).acquire().await
    }

    /// Stops this manager's background work, within `within`:
    ///
    /// 1. stops every watchdog;
    /// 2. releases the locks still held through this manager (their guards then report
    ///    [`is_lost`](LockGuard::is_lost), and their `release` returns `Ok(false)`);
    /// 3. waits for the releases spawned by dropped guards, for the clean-up of attempts that
    ///    were refused or cancelled, and for leader campaigns to end
    ///    ([`LockManager::leader`]);
    /// 4. on Redlock, waits for the late answers of instances that had not answered when a
    ///    command was decided (a slow instance's release among them), each within its
    ///    per-instance timeout;
    /// 5. closes the pub/sub connections that wake waiters (a waiter still waiting polls).
    ///
    /// When it returns `Ok`, nothing of the work started before the call is left running, and
    /// no key of it is left on an instance that answered, so the process may exit at once. An
    /// acquire still in flight when `shutdown` is called, or one started after it, is new work:
    /// release its guard (and call `shutdown` again) before exiting.
    ///
    /// Call it after your job handlers have stopped and before the runtime shuts down: stop
    /// taking work, let running jobs finish (or cancel them), then `shutdown`. Returns
    /// [`LockError::ShutdownTimeout`] if releases were still in flight when `within` ran out;
    /// their keys expire with their TTL. The manager stays usable afterwards.
    pub async fn shutdown(&self, within: Duration) -> Result<()> {
        self.shared.shutdown(within).await
    }

    /// The prefix put in front of every lock key.
    pub fn key_prefix(&self) -> &str {
        &self.shared.settings().prefix
    }

    /// The Redis key that holds the lock `name`: `<prefix>{<name>}`. Its fencing counter is
    /// the same key with `:fence` appended.
    pub fn key_for(&self, name: &str) -> String {
        LockKeys::new(&self.shared.settings().prefix, name).lock
    }
}

/// Configures a [`LockManager`]; made by [`LockManager::builder`].
#[derive(Debug, Clone)]
pub struct LockManagerBuilder {
    /// Every deployment named so far; `build` needs exactly one.
    targets: Vec<Target>,
    drift: Drift,
    prefix: String,
    timeouts: Timeouts,
    poll_cap: Duration,
    lazy: bool,
    allow_eviction: bool,
    min_replicas: Option<MinReplicas>,
    holder: Option<String>,
    label_limit: usize,
}

impl Default for LockManagerBuilder {
    fn default() -> Self {
        Self {
            targets: Vec::new(),
            drift: Drift::REDLOCK,
            prefix: DEFAULT_KEY_PREFIX.to_owned(),
            timeouts: Timeouts {
                connect: Duration::from_secs(1),
                response: DEFAULT_RESPONSE_TIMEOUT,
            },
            poll_cap: DEFAULT_MAX_POLL_INTERVAL,
            lazy: false,
            allow_eviction: false,
            min_replicas: None,
            holder: None,
            label_limit: DEFAULT_METRICS_LABEL_LIMIT,
        }
    }
}

impl LockManagerBuilder {
    /// One Redis server; see [`LockManager::connect`] for the url forms.
    pub fn url(mut self, url: &str) -> Self {
        self.targets
            .push(Target::One(Endpoint::Url(url.to_owned())));
        self
    }

    /// One Redis server, through the service's own client, with its settings (address,
    /// credentials, TLS, protocol). The manager opens connections of its own from it: one for
    /// commands and, on the first wait, one for release notifications.
    pub fn client(mut self, client: redis::Client) -> Self {
        self.targets
            .push(Target::One(Endpoint::Client(Box::new(client))));
        self
    }

    /// Builds without contacting Redis (default `false`): the first command connects, so a
    /// server that is down makes that command fail (or a waiting acquire retry until its
    /// deadline), not the start-up. Urls are still checked at `build`. One server (by url or
    /// [`client`](Self::client)), Sentinel and Redlock; a Redis Cluster is always contacted at
    /// `build`, to learn its slots.
    pub fn lazy(mut self, on: bool) -> Self {
        self.lazy = on;
        self
    }

    /// Accepts servers whose `maxmemory-policy` can evict lock keys (default `false`).
    ///
    /// Every lock key has an expiry, so every policy but `noeviction` may evict it under memory
    /// pressure (the `volatile-*` policies pick among exactly such keys), and an evicted lock
    /// lets a second holder in while the first still believes it holds. So `build` asks each
    /// primary (`CONFIG GET maxmemory-policy`) and refuses one with such a policy with
    /// [`LockError::InvalidConfig`], naming it. Keep locks on a server with `noeviction` (a
    /// full server then refuses new locks, `OOM`, and never drops a held one), or pass `true`
    /// to accept the risk. Not checked with [`lazy`](Self::lazy), nor where the server refuses
    /// `CONFIG` (managed services often do), nor when the policy is changed later.
    pub fn allow_eviction(mut self, on: bool) -> Self {
        self.allow_eviction = on;
        self
    }

    /// Who this manager's locks say holds them (default `hostname:pid`), as
    /// [`LockManager::inspect`], [`LockManager::list`], `lockctl` and `LockError::Busy` show it.
    /// It rides inside the owner token, so it costs no command; `*`, `|`, whitespace and
    /// control characters become `_`, and it is cut to 255 bytes. Not a secret, and not
    /// checked: any client can claim any id.
    pub fn holder_id(mut self, id: impl Into<String>) -> Self {
        self.holder = Some(id.into());
        self
    }

    /// A primary with replicas behind Redis Sentinel: `master_name` as the sentinels know it,
    /// and the sentinels' urls (`redis://host:26379`, any number; each is asked in turn).
    /// The primary is found through them (unless [`lazy`](Self::lazy), at `build`) and found
    /// again whenever a command, or the connection of release notifications, fails in a way
    /// that suggests a failover (a dropped, refused or timed-out connection, or `READONLY` from
    /// a demoted primary); commands, scripts and waiters' subscriptions then move to the new
    /// primary; a command that failed that way is sent once more, to the new primary, when
    /// the sentinels name one. The primary is connected to with the database, user name,
    /// password and TLS (`rediss://`) of the first sentinel url.
    ///
    /// Replication is asynchronous: a lock granted just before the primary fails can be
    /// missing on the replica promoted in its place, and then another owner can take it. The
    /// guard that held it learns so at its next renewal and reports itself lost; with
    /// [`min_replicas`](Self::min_replicas) such a grant does not count in the first place.
    /// A manager that can still reach a deposed primary (cut off from the sentinels, or paused
    /// and resumed before it was demoted) keeps using it until a command fails there, so two
    /// managers may grant the same name on two servers for that long; `min_replicas` (or the
    /// server's own `min-replicas-to-write`) stops a primary cut off from its replicas from
    /// granting.
    ///
    /// ```no_run
    /// # async fn demo() -> lock_core::Result<()> {
    /// let locks = lock_core::LockManager::builder()
    ///     .sentinel("mymaster", ["redis://10.0.0.1:26379", "redis://10.0.0.2:26379"])
    ///     .min_replicas(1, std::time::Duration::from_millis(50))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "sentinel")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sentinel")))]
    pub fn sentinel<I: IntoIterator<Item = S>, S: AsRef<str>>(
        mut self,
        master_name: &str,
        sentinels: I,
    ) -> Self {
        self.targets.push(Target::Sentinel(
            master_name.to_owned(),
            sentinels
                .into_iter()
                .map(|u| u.as_ref().to_owned())
                .collect(),
        ));
        self
    }

    /// A grant counts only once `n` replicas of the primary acknowledged it (`WAIT n timeout`,
    /// in the same round trip as the grant, on a connection lent to that command alone, so
    /// that a lagging replica holds up no other command). So do fencing-counter increments
    /// and extends. When fewer acknowledge within `timeout`, the grant is given back at once
    /// and the attempt fails with [`LockError::NotReplicated`] (a waiting acquire tries again
    /// until its deadline); a fencing token is not handed out; an extend leaves the lease's
    /// deadline where it was, and the watchdog tries again. Releases are not waited for.
    ///
    /// What it buys: a lock granted this way survives the primary's crash as long as the
    /// replica promoted in its place is one of those that acknowledged it. Sentinel promotes,
    /// among the replicas of the best `replica-priority`, the one that has processed the most
    /// of the primary's stream; a Cluster's replicas with more of it start their election
    /// earlier. With `n` equal to the number of replicas, every candidate has the grant. A
    /// primary cut off from its replicas (and so from the side that elects a new one) can no
    /// longer grant: its `WAIT`s time out. What it does not buy: `WAIT` is not a consensus
    /// protocol. A promoted replica that had not acknowledged the grant (`n` smaller than the
    /// number of replicas and a lagging one chosen, or a failover forced by hand), replicas
    /// that restart without persistence, or a release that was not replicated before the crash
    /// (the lock comes back on the new primary, held by nobody, until its ttl) remain possible.
    /// It costs one primary-to-replica round trip per grant and renewal, and with too few
    /// replicas answering, up to `timeout` per attempt.
    ///
    /// `build` checks that the server accepts `WAIT` (an ACL or a proxy may refuse it) unless
    /// [`lazy`](Self::lazy); a refused `WAIT` later counts as no acknowledgement. One server,
    /// Sentinel or Cluster; not Redlock (its instances have no replicas to wait for). `n` from
    /// 1, `timeout` from 1 ms.
    pub fn min_replicas(mut self, n: usize, timeout: Duration) -> Self {
        self.min_replicas = Some(MinReplicas {
            replicas: n,
            timeout,
            aof: false,
        });
        self
    }

    /// [`min_replicas`](Self::min_replicas), on disk: a grant, a fencing token or a renewal
    /// counts only once the primary and at least `n` replicas have written it to their
    /// append-only file (`WAITAOF 1 n`, Redis 7.2 or later and Valkey), within `timeout`; else
    /// it is given back and the attempt fails with
    /// [`LockError::NotReplicated`](crate::LockError::NotReplicated) (`acked` counts the
    /// replicas when the primary's file had it, else 0).
    ///
    /// What it buys beyond `min_replicas`: the grant survives a restart of the primary or of
    /// those replicas that reloads their append-only file (with `WAIT`, a server restarted
    /// within its `appendfsync` interval can come back without it). What it costs: a replica
    /// tells what it has written to its file about once a second, and with `appendfsync
    /// everysec` (the default) each server also waits for its next fsync, so a grant, renewal
    /// or fencing token waits one to two seconds: give a `timeout` of at least 3 s, and a
    /// `ttl` several times that. A waiting acquisition's refused attempts that record its
    /// claim wait too (a pooled connection each, at most `timeout`).
    ///
    /// `build` checks that the primary accepts `WAITAOF` (which needs `appendonly yes`) and
    /// does not run `appendfsync no` (CONFIG permitting), unless [`lazy`](Self::lazy). Every
    /// server that may become primary, and every replica counted, needs `appendonly yes` and
    /// Redis 7.2 or Valkey: a replica without it never acknowledges, and after a failover to
    /// such a primary every grant fails with `NotReplicated`. Tested on one Valkey server with a
    /// replica; on Sentinel and Cluster it sends the same commands. Not Redlock. `n` from 1.
    pub fn min_replicas_aof(mut self, n: usize, timeout: Duration) -> Self {
        self.min_replicas = Some(MinReplicas {
            replicas: n,
            timeout,
            aof: true,
        });
        self
    }

    /// Redlock over independent Redis masters (an odd number, at least 3; no replication
    /// between them). A lock is held when a majority granted it within the validity time
    /// (ttl minus the time the fan-out took minus clock drift, see
    /// [`redlock_clock_drift`](Self::redlock_clock_drift)). Every request goes to all
    /// instances in parallel, each bounded by the smaller of the response timeout and a tenth
    /// of the ttl. A failed attempt is released at once on the instances that granted it or
    /// did not answer.
    ///
    /// The manager starts when a majority is reachable; the others are retried on use.
    ///
    /// In this mode [`LockGuard::fencing_token`] is not a fence: see its documentation.
    pub fn redlock<I: IntoIterator<Item = S>, S: AsRef<str>>(mut self, urls: I) -> Self {
        self.targets.push(Target::Redlock(
            urls.into_iter()
                .map(|u| Endpoint::Url(u.as_ref().to_owned()))
                .collect(),
        ));
        self
    }

    /// [`redlock`](Self::redlock) over the service's own clients, one per master, with their
    /// settings (credentials, TLS, protocol), as [`client`](Self::client) is for one server.
    pub fn redlock_clients<I: IntoIterator<Item = redis::Client>>(mut self, clients: I) -> Self {
        self.targets.push(Target::Redlock(
            clients
                .into_iter()
                .map(|c| Endpoint::Client(Box::new(c)))
                .collect(),
        ));
        self
    }

    /// A Redis Cluster, through any of its nodes (`redis://host:port` each). A lock's two keys
    /// share a hash tag, so they live in one slot and each script runs in one round trip;
    /// MOVED and ASK redirections (resharding, failover) are followed by the client.
    ///
    /// ```no_run
    /// # async fn demo() -> lock_core::Result<()> {
    /// let locks = lock_core::LockManager::builder()
    ///     .cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"])
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "cluster")))]
    pub fn cluster<I: IntoIterator<Item = S>, S: AsRef<str>>(mut self, urls: I) -> Self {
        self.targets.push(Target::Cluster(
            urls.into_iter().map(|u| u.as_ref().to_owned()).collect(),
        ));
        self
    }

    /// Redlock's allowance for the instances' clocks running at different rates, taken off
    /// every lease: `ttl * factor + fixed` (default 1% + 2 ms).
    pub fn redlock_clock_drift(mut self, factor: f64, fixed: Duration) -> Self {
        self.drift = Drift { factor, fixed };
        self
    }

    /// The prefix of every key this manager writes (default `"lock:"`). Managers that must
    /// exclude each other need the same prefix. It must not contain `{` or `}`: the braces
    /// around the name are a Redis Cluster hash tag.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long one command may wait for its reply before it fails with a Redis timeout error
    /// (default 1 s). Keep it well under your TTLs: the watchdog needs replies in time.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.response = timeout;
        self
    }

    /// The longest a waiter goes between attempts when no release notification reaches it
    /// (default 250 ms). Waiters are normally woken by the release itself (a `PUBLISH` from
    /// the release script to the lock's channel); this bound matters only when notifications
    /// are lost, e.g. while the pub/sub connection reconnects. A holder that crashes publishes
    /// nothing, but waiters also retry as soon as its lease has run out.
    pub fn max_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_cap = interval;
        self
    }

    /// The most distinct values of the `lock` label this manager's metrics report (default
    /// [`DEFAULT_METRICS_LABEL_LIMIT`], feature `metrics`). Locks whose label comes after that
    /// many others are reported as `_other`, with one warning: names that carry an id and no
    /// `:` (`job-17`, `tenant.5.report`) would otherwise each make series of their own, kept
    /// for the life of the process. Label such locks with
    /// [`LockRequest::metrics_label`](crate::LockRequest::metrics_label) instead.
    pub fn metrics_label_limit(mut self, limit: usize) -> Self {
        self.label_limit = limit;
        self
    }

    /// How long one connection attempt may take (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.connect = timeout;
        self
    }

    /// Connects and returns the manager.
    pub async fn build(self) -> Result<LockManager> {
        check_prefix(&self.prefix)?;
        let invalid = |reason: &str| LockError::InvalidConfig {
            reason: reason.to_owned(),
        };
        for (what, value) in [
            ("max_poll_interval", self.poll_cap),
            ("response_timeout", self.timeouts.response),
            ("connect_timeout", self.timeouts.connect),
        ] {
            if !(MIN_TTL..=MAX_TTL).contains(&value) {
                return Err(invalid(&format!(
                    "{what} is {value:?}; it must be between 1ms and {MAX_TTL:?}"
                )));
            }
        }
        if let Some(want) = self.min_replicas {
            if want.replicas == 0 {
                return Err(invalid(
                    "min_replicas(0, ..) and min_replicas_aof(0, ..) wait for no replica; leave them out instead",
                ));
            }
            if !(MIN_TTL..=MAX_TTL).contains(&want.timeout) {
                return Err(invalid(&format!(
                    "the min_replicas timeout is {:?}; it must be between 1ms and {MAX_TTL:?}",
                    want.timeout
                )));
            }
            if self.targets.iter().any(|t| matches!(t, Target::Redlock(_))) {
                return Err(invalid(
                    "min_replicas does not apply to Redlock: its instances are independent masters with no replicas to wait for",
                ));
            }
        }
        let mut targets = self.targets;
        let target = match (targets.pop(), targets.is_empty()) {
            (Some(target), true) => target,
            (None, _) => {
                return Err(invalid(
                    "no server given: call `.url(..)`, `.client(..)`, `.sentinel(..)`, `.redlock(..)` or `.cluster(..)` on the builder",
                ))
            }
            (Some(_), false) => {
                return Err(invalid(
                    "more than one deployment given: call only one of `.url(..)`, `.client(..)`, `.sentinel(..)`, `.redlock(..)`, `.cluster(..)`",
                ))
            }
        };
        let (store, wake) = deploy::connect(
            target,
            &Connection {
                timeouts: self.timeouts,
                drift: self.drift,
                lazy: self.lazy,
                allow_eviction: self.allow_eviction,
                min_replicas: self.min_replicas,
            },
        )
        .await?;
        Ok(LockManager::from_shared(Shared::new(
            store,
            wake,
            Settings {
                prefix: self.prefix,
                poll_cap: self.poll_cap,
                // A reply may come after the wait for the replicas.
                response_timeout: self.timeouts.response
                    + self
                        .min_replicas
                        .map_or(Duration::ZERO, |want| want.timeout),
                holder: self
                    .holder
                    .as_deref()
                    .map_or_else(crate::token::default_holder, crate::token::clean_holder),
                label_limit: self.label_limit,
            },
        )))
    }
}

static DEFAULT_MANAGER: RwLock<Option<LockManager>> = RwLock::new(None);

/// Sets the manager that `#[distributed_lock]` uses when it is given no `manager = ...`.
/// Replaces an earlier one.
pub fn set_default_manager(manager: LockManager) {
    *DEFAULT_MANAGER.write().unwrap_or_else(|e| e.into_inner()) = Some(manager);
}

/// The manager set by [`set_default_manager`], if any.
pub fn default_manager() -> Option<LockManager> {
    DEFAULT_MANAGER
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}
