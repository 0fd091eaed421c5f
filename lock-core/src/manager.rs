//! `LockManager`: the entry point. It owns the backend connection, the table of held locks and
//! the background releases of dropped guards.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::backend::redis::{RedisBackend, Timeouts};
use crate::backend::redlock::{Drift, RedlockBackend};
use crate::backend::{memory::MemoryBackend, Backend, LockKeys};
use crate::lease::Lease;
use crate::request::LockRequest;
use crate::tasks::Tasks;
use crate::validate::check_prefix;
use crate::{LockError, LockGuard, Result};

/// The default of [`LockManagerBuilder::max_poll_interval`].
pub const DEFAULT_MAX_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The key prefix used unless [`LockManagerBuilder::key_prefix`] says otherwise.
pub const DEFAULT_KEY_PREFIX: &str = "lock:";

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
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) backend: Backend,
    pub(crate) prefix: String,
    pub(crate) tasks: Arc<Tasks>,
    /// Longest pause between a waiter's attempts when no release notification arrives.
    pub(crate) poll_cap: Duration,
    /// Locks acquired through this manager and not yet released, for `shutdown`.
    held: Mutex<HashMap<u64, Arc<Lease>>>,
    next_id: AtomicU64,
}

impl fmt::Debug for LockManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockManager")
            .field("backend", &self.inner.backend.kind())
            .field("key_prefix", &self.inner.prefix)
            .field("held", &self.inner.held().len())
            .field("pending_releases", &self.inner.tasks.pending())
            .finish()
    }
}

impl Inner {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Lease>>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn register(&self, lease: &Arc<Lease>) {
        self.held().insert(lease.id, Arc::clone(lease));
    }

    /// Claims the right to end `lease` (exactly one caller wins) and forgets it.
    pub(crate) fn claim(&self, lease: &Lease) -> bool {
        if !lease.claim() {
            return false;
        }
        self.held().remove(&lease.id);
        true
    }

    /// Ends a claimed lease: stops its watchdog (waiting until an extension in flight is gone),
    /// then compare-and-deletes the key.
    pub(crate) async fn release_claimed(&self, lease: &Lease) -> Result<bool> {
        if let Some(watchdog) = lease.stop_watchdog() {
            let _ = watchdog.await;
        }
        let released = self
            .backend
            .release(&lease.keys, &lease.token, lease.keep_for_min_hold())
            .await;
        match &released {
            Ok(true) => tracing::debug!(lock = %lease.name, "released"),
            Ok(false) => tracing::warn!(
                lock = %lease.name,
                fencing_token = lease.fencing_token,
                "release found the lock expired or held by another owner"
            ),
            Err(e) => {
                tracing::warn!(lock = %lease.name, error = %e, "release failed; the key expires with its ttl")
            }
        }
        released
    }

    /// Releases by token in the background on the current runtime, tracked for `shutdown`.
    /// Never blocks and never panics; with no runtime it logs and leaves the key to its TTL.
    pub(crate) fn release_in_background(self: &Arc<Self>, lease: Arc<Lease>) {
        let watchdog = lease.stop_watchdog();
        let Ok(handle) = Handle::try_current() else {
            tracing::warn!(
                lock = %lease.name,
                "lock guard dropped outside a tokio runtime; the key expires with its ttl"
            );
            return;
        };
        let inner = Arc::clone(self);
        let span = tracing::debug_span!("lock.drop_release", lock = %lease.name);
        self.tasks.spawn(
            &handle,
            async move {
                if let Some(watchdog) = watchdog {
                    let _ = watchdog.await;
                }
                let _ = inner.release_claimed(&lease).await;
            }
            .instrument(span),
        );
    }

    /// Deletes by token, in the background, a key whose state a dropped or failed command
    /// left unknown. With `hold_until` (min_hold) the key is only shortened to expire then.
    /// Quiet when there was nothing to delete: that outcome is expected here.
    fn clean_up_in_background(self: &Arc<Self>, on: &CleanUpOnDrop<'_>) {
        let Ok(handle) = Handle::try_current() else {
            return;
        };
        let inner = Arc::clone(self);
        let (keys, token, name) = (on.keys.clone(), on.token.to_owned(), on.name.to_owned());
        let (hold_until, give_up) = (on.hold_until, Instant::now() + on.expires_within);
        self.tasks.spawn(&handle, async move {
            // Retried while Redis cannot be reached, until the key would have expired anyway.
            let mut pause = Duration::from_millis(50);
            loop {
                let keep = hold_until.map_or(Duration::ZERO, |t| t.saturating_duration_since(Instant::now()));
                match inner.backend.release(&keys, &token, keep).await {
                    Ok(true) => tracing::debug!(lock = %name, "cleaned up after an interrupted command"),
                    Ok(false) => {}
                    Err(e) if Instant::now() + pause < give_up => {
                        tracing::debug!(lock = %name, error = %e, "clean-up failed; retrying");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(1));
                        continue;
                    }
                    Err(e) => tracing::warn!(lock = %name, error = %e, "clean-up after an interrupted command failed; the key expires with its ttl"),
                }
                return;
            }
        });
    }
}

/// Armed while a command on a lock key is in flight or failed without a reply (an acquire whose
/// SET may have been applied, a release that may not have run). Dropped while armed (the future
/// was cancelled, or gave up on an error), it deletes the key by token in the background.
pub(crate) struct CleanUpOnDrop<'a> {
    pub(crate) inner: &'a Arc<Inner>,
    pub(crate) keys: &'a LockKeys,
    pub(crate) token: &'a str,
    pub(crate) name: &'a str,
    /// With min_hold, the key must live until then rather than be deleted at once.
    pub(crate) hold_until: Option<Instant>,
    /// The key expires by itself within this long: retrying the clean-up past it is pointless.
    pub(crate) expires_within: Duration,
    pub(crate) armed: bool,
}

impl Drop for CleanUpOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.inner.clean_up_in_background(self);
        }
    }
}

impl LockManager {
    fn from_backend(backend: Backend, prefix: String, poll_cap: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                backend,
                prefix,
                poll_cap,
                tasks: Arc::default(),
                held: Mutex::default(),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// Connects to one Redis server: `redis://[user:password@]host[:port][/db]`,
    /// `rediss://...` (with TLS support compiled into the redis crate) or
    /// `redis+unix:///path/to/socket`.
    ///
    /// The connection is made (and authenticated) now: a wrong address or password is an
    /// [`LockError::Redis`] here.
    pub async fn connect(url: &str) -> Result<LockManager> {
        Self::builder().url(url).build().await
    }

    /// A manager whose locks live in this process only, with the same semantics as Redis
    /// (tokens, expiry, fencing, `Busy`/`Timeout`, release on drop) on `tokio::time`.
    ///
    /// Made for tests of code that takes locks: it works under `tokio::time::pause()`. It does
    /// not exclude other processes. Clones share the same locks; separate calls do not.
    pub fn in_memory() -> LockManager {
        Self::from_backend(
            Backend::Memory(MemoryBackend::default()),
            DEFAULT_KEY_PREFIX.to_owned(),
            DEFAULT_MAX_POLL_INTERVAL,
        )
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
        LockRequest::new(self, name.into())
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
    /// 3. waits for the releases spawned by dropped guards.
    ///
    /// Call it after your job handlers have stopped and before the runtime shuts down: stop
    /// taking work, let running jobs finish (or cancel them), then `shutdown`. Returns
    /// [`LockError::ShutdownTimeout`] if releases were still in flight when `within` ran out;
    /// their keys expire with their TTL. The manager stays usable afterwards.
    pub async fn shutdown(&self, within: Duration) -> Result<()> {
        let leases: Vec<Arc<Lease>> = self.inner.held().drain().map(|(_, l)| l).collect();
        for lease in leases {
            if lease.claim() {
                lease.mark_lost();
                self.inner.release_in_background(lease);
            }
        }
        let pending = self.inner.tasks.wait_idle();
        match tokio::time::timeout(within, pending).await {
            Ok(()) => Ok(()),
            Err(_) => Err(LockError::ShutdownTimeout {
                pending: self.inner.tasks.pending(),
            }),
        }
    }

    /// The prefix put in front of every lock key.
    pub fn key_prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The Redis key that holds the lock `name`: `<prefix>{<name>}`. Its fencing counter is
    /// the same key with `:fence` appended.
    pub fn key_for(&self, name: &str) -> String {
        LockKeys::new(&self.inner.prefix, name).lock
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
}

impl Default for LockManagerBuilder {
    fn default() -> Self {
        Self {
            targets: Vec::new(),
            drift: Drift::DEFAULT,
            prefix: DEFAULT_KEY_PREFIX.to_owned(),
            timeouts: Timeouts {
                connect: Duration::from_secs(1),
                response: Duration::from_secs(1),
            },
            poll_cap: DEFAULT_MAX_POLL_INTERVAL,
        }
    }
}

impl LockManagerBuilder {
    /// One Redis server; see [`LockManager::connect`] for the url forms.
    pub fn url(mut self, url: &str) -> Self {
        self.targets.push(Target::Single(url.to_owned()));
        self
    }

    /// Redlock over independent Redis masters (an odd number, at least 3; no replication
    /// between them). A lock is held when a majority granted it within the validity time
    /// (ttl minus the time the fan-out took minus clock drift, see
    /// [`redlock_clock_drift`](Self::redlock_clock_drift)). Every request goes to all
    /// instances in parallel, each bounded by the smaller of the response timeout and a tenth
    /// of the ttl. A failed attempt is released everywhere at once.
    ///
    /// The manager starts when a majority is reachable; the others are retried on use.
    ///
    /// In this mode [`LockGuard::fencing_token`] is not a fence: see its documentation.
    pub fn redlock<I: IntoIterator<Item = S>, S: AsRef<str>>(mut self, urls: I) -> Self {
        self.targets.push(Target::Redlock(
            urls.into_iter().map(|u| u.as_ref().to_owned()).collect(),
        ));
        self
    }

    /// A Redis Cluster, through any of its nodes (`redis://host:port` each). A lock's two keys
    /// share a hash tag, so they live in one slot and each script runs in one round trip;
    /// MOVED and ASK redirections (resharding, failover) are followed by the client.
    /// Needs the `cluster` feature.
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
        let mut targets = self.targets;
        let target = match (targets.pop(), targets.is_empty()) {
            (Some(target), true) => target,
            (None, _) => {
                return Err(invalid(
                    "no server given: call `.url(..)`, `.redlock(..)` or `.cluster(..)` on the builder",
                ))
            }
            (Some(_), false) => {
                return Err(invalid(
                    "more than one deployment given: call only one of `.url(..)`, `.redlock(..)`, `.cluster(..)`",
                ))
            }
        };
        let backend = match target {
            Target::Single(url) => {
                Backend::Redis(RedisBackend::connect(&url, self.timeouts).await?)
            }
            Target::Redlock(urls) => {
                if urls.len() < 3 || urls.len() % 2 == 0 {
                    return Err(LockError::InvalidConfig {
                        reason: format!(
                            "Redlock needs an odd number of independent masters, at least 3; got {}",
                            urls.len()
                        ),
                    });
                }
                let factor_ok =
                    self.drift.factor.is_finite() && (0.0..1.0).contains(&self.drift.factor);
                if !factor_ok {
                    return Err(invalid(
                        "the Redlock clock drift factor must be at least 0 and below 1",
                    ));
                }
                Backend::Redlock(RedlockBackend::connect(&urls, self.timeouts, self.drift).await?)
            }
            Target::Cluster(urls) => {
                if urls.is_empty() {
                    return Err(invalid("`.cluster(..)` needs at least one node url"));
                }
                #[cfg(feature = "cluster")]
                {
                    Backend::Redis(RedisBackend::connect_cluster(&urls, self.timeouts).await?)
                }
                #[cfg(not(feature = "cluster"))]
                {
                    return Err(invalid(
                        "Redis Cluster support is not compiled in: enable lock-core's `cluster` feature",
                    ));
                }
            }
        };
        Ok(LockManager::from_backend(
            backend,
            self.prefix,
            self.poll_cap,
        ))
    }
}

/// One deployment named on the builder.
#[derive(Debug, Clone)]
enum Target {
    Single(String),
    Redlock(Vec<String>),
    Cluster(Vec<String>),
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
