//! `LockRequest`: the options of one acquisition, and the acquire loop.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument as _;

use crate::backend::{Attempt, LockKeys, Watch};
use crate::lease::Lease;
use crate::manager::{CleanUpOnDrop, LockManager};
use crate::token::{new_token, random_u64};
use crate::validate::{check_name, check_ttl, MIN_TTL};
use crate::{watchdog, LockError, LockGuard, Result};

/// The lease used when a request does not set one.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// One acquisition of a lock, made by [`LockManager::lock`]. Defaults: ttl 30 s, no waiting,
/// no watchdog.
///
/// Locks are not reentrant: a second acquisition of a name this task (or process) already holds
/// is `Busy` (or waits) like any other owner's.
#[derive(Debug, Clone)]
#[must_use = "a lock request does nothing until `.acquire()` or `.try_acquire()` is awaited"]
pub struct LockRequest<'a> {
    manager: &'a LockManager,
    name: String,
    ttl: Duration,
    wait: Duration,
    auto_extend: bool,
    min_hold: Option<Duration>,
    max_hold: Option<Duration>,
}

impl<'a> LockRequest<'a> {
    pub(crate) fn new(manager: &'a LockManager, name: String) -> Self {
        Self {
            manager,
            name,
            ttl: DEFAULT_TTL,
            wait: Duration::ZERO,
            auto_extend: false,
            min_hold: None,
            max_hold: None,
        }
    }

    /// The lease: the key expires this long after the acquire unless extended. At least 1 ms.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long [`acquire`](Self::acquire) waits for another owner to let go (default zero:
    /// fail at once with [`LockError::Busy`]).
    ///
    /// A waiter is woken by the release itself (Redis pub/sub on the lock's key name; the
    /// in-memory backend wakes it directly), retries when the holder's lease runs out, and
    /// otherwise at least every [`max_poll_interval`](crate::LockManagerBuilder::max_poll_interval).
    /// Attempts that fail on a communication error are retried while the wait lasts.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Runs a watchdog that renews the lease (owner-checked) every ttl/3 while the guard lives.
    /// If a renewal finds the lock gone, or the lease runs out while Redis does not answer, the
    /// guard is marked lost ([`LockGuard::is_lost`], [`LockGuard::lost`]).
    pub fn auto_extend(mut self, on: bool) -> Self {
        self.auto_extend = on;
        self
    }

    /// Keeps the lock at least this long after it was taken, even if released sooner
    /// (ShedLock's `lockAtLeastFor`): release then shortens the key's expiry to the end of the
    /// minimum hold instead of deleting it. Must not exceed the ttl.
    pub fn min_hold(mut self, min: Duration) -> Self {
        self.min_hold = Some(min);
        self
    }

    /// With `auto_extend`, the watchdog stops renewing once the lock has been held this long;
    /// the lease then lapses and the guard becomes lost. A runaway job cannot hold a lock
    /// forever. The first lease is shortened to `max_hold` if that is below the ttl.
    pub fn max_hold(mut self, max: Duration) -> Self {
        self.max_hold = Some(max);
        self
    }

    /// Takes the lock, waiting up to the request's `wait`. [`LockError::Busy`] when another
    /// owner holds it and `wait` is zero; [`LockError::Timeout`] when it is still held after
    /// waiting.
    pub async fn acquire(self) -> Result<LockGuard> {
        let wait = self.wait;
        let name = self.name.clone();
        match self.run(wait).await? {
            Ok(guard) => Ok(guard),
            Err(_) if wait.is_zero() => Err(LockError::Busy { name }),
            Err(waited) => Err(LockError::Timeout { name, waited }),
        }
    }

    /// Takes the lock if it is free right now; `Ok(None)` when another owner holds it.
    /// Ignores `wait`.
    pub async fn try_acquire(self) -> Result<Option<LockGuard>> {
        Ok(self.run(Duration::ZERO).await?.ok())
    }

    fn validate(&self) -> Result<()> {
        check_name(&self.name)?;
        check_ttl("ttl", self.ttl)?;
        if let Some(min) = self.min_hold {
            check_ttl("min_hold", min)?;
            if min > self.ttl {
                return Err(LockError::InvalidTtl {
                    reason: format!(
                        "min_hold ({min:?}) is longer than the ttl ({:?}); the key would expire before the minimum hold ends",
                        self.ttl
                    ),
                });
            }
        }
        if let Some(max) = self.max_hold {
            check_ttl("max_hold", max)?;
        }
        Ok(())
    }

    /// `Ok(Err(waited))` when another owner still held the lock at the deadline.
    async fn run(self, wait: Duration) -> Result<Result<LockGuard, Duration>> {
        self.validate()?;
        let span = tracing::debug_span!("lock.acquire", lock = %self.name);
        self.attempts(wait).instrument(span).await
    }

    async fn attempts(self, wait: Duration) -> Result<Result<LockGuard, Duration>> {
        let inner = &self.manager.inner;
        let keys = LockKeys::new(&inner.prefix, &self.name);
        let token = new_token();
        let lease_len = self.max_hold.map_or(self.ttl, |max| max.min(self.ttl));
        let began = Instant::now();
        let deadline = began + wait;
        // Armed while the key's state is unknown: a command in flight, or one that failed (its
        // SET may have been applied although the reply never came). If this future is dropped
        // or gives up while armed, the key is deleted by our token in the background.
        let mut cleanup = CleanUpOnDrop {
            inner,
            keys: &keys,
            token: &token,
            name: &self.name,
            hold_until: None,
            expires_within: lease_len,
            armed: false,
        };
        // Send time of the earliest attempt whose outcome is unknown: if it took the lock, the
        // lease started then, and a retry with the same token gets that grant back.
        let mut unknown_since: Option<Instant> = None;
        let mut last_error: Option<LockError>;
        let mut reconnected = false;
        // Release notifications, set up after the first refusal: never on the uncontended path.
        let mut watch: Option<Watch> = None;
        loop {
            let step = {
                // Enabled before the attempt, so a release that lands after it wakes us.
                let notified = watch.as_ref().map(|w| w.notify().notified());
                let mut notified = pin!(notified);
                if let Some(n) = notified.as_mut().as_pin_mut() {
                    n.enable();
                }
                let sent = Instant::now();
                cleanup.armed = true;
                let pause = match inner.backend.acquire(&keys, &token, lease_len).await {
                    Ok(Attempt::Granted(fencing_token)) => {
                        cleanup.armed = false;
                        drop(cleanup);
                        tracing::debug!(
                            fencing_token,
                            waited_ms = began.elapsed().as_millis() as u64,
                            "acquired"
                        );
                        let started = unknown_since.unwrap_or(sent);
                        return Ok(Ok(self.into_guard(
                            keys,
                            token,
                            fencing_token,
                            lease_len,
                            started,
                        )));
                    }
                    Ok(Attempt::Held(expires_in)) => {
                        // Held by another owner, so none of our attempts took it.
                        cleanup.armed = false;
                        unknown_since = None;
                        last_error = None;
                        if watch.is_none() && Instant::now() < deadline {
                            Step::Watch
                        } else {
                            // Woken by the release; else poll, no later than the holder's
                            // lease end (a crashed holder publishes nothing).
                            let poll = jittered(inner.poll_cap);
                            Step::Wait(expires_in.map_or(poll, |left| poll.min(left + MIN_TTL)))
                        }
                    }
                    Ok(Attempt::NoQuorum { granted, needed }) => {
                        // Redlock gave everything back; worth another try while the wait lasts.
                        cleanup.armed = false;
                        unknown_since = None;
                        let e = LockError::NoQuorum {
                            name: self.name.clone(),
                            granted,
                            needed,
                        };
                        if Instant::now() >= deadline {
                            return Err(e);
                        }
                        last_error = Some(e);
                        Step::Wait(jittered(ERROR_RETRY))
                    }
                    Err(e) if Instant::now() < deadline => {
                        // Worth another try while the wait lasts (a reconnect, a restart).
                        tracing::debug!(error = %e, "acquire attempt failed; retrying");
                        unknown_since.get_or_insert(sent);
                        last_error = Some(e);
                        Step::Wait(jittered(ERROR_RETRY))
                    }
                    Err(e) if !reconnected && e.is_connection_error() => {
                        // The shared connection was found broken (a restarted or failed-over
                        // server): it reconnects now, so one more attempt right away is worth
                        // it, even without a wait. Same token: if the first attempt did take
                        // the lock, the retry gets that grant back.
                        tracing::debug!(error = %e, "connection lost; retrying once on a new connection");
                        reconnected = true;
                        unknown_since.get_or_insert(sent);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let now = Instant::now();
                if now >= deadline {
                    if let Some(e) = last_error {
                        return Err(e);
                    }
                    let waited = now.duration_since(began);
                    tracing::debug!(
                        waited_ms = waited.as_millis() as u64,
                        "held by another owner"
                    );
                    return Ok(Err(waited));
                }
                if let Step::Wait(pause) = pause {
                    let pause = pause.min(deadline - now);
                    match notified.as_mut().as_pin_mut() {
                        Some(n) => {
                            let _ = tokio::time::timeout(pause, n).await;
                        }
                        None => tokio::time::sleep(pause).await,
                    }
                }
                pause
            };
            if let Step::Watch = step {
                // Then try again at once: the lock may have been released before the
                // subscription was in place.
                let subscribe = inner.backend.watch(&keys);
                watch = tokio::time::timeout_at(deadline, subscribe).await.ok();
                if watch.is_none() {
                    // No time left to subscribe; the next attempt is the last.
                    continue;
                }
            }
        }
    }

    fn into_guard(
        self,
        keys: LockKeys,
        token: String,
        fencing_token: u64,
        lease_len: Duration,
        sent: Instant,
    ) -> LockGuard {
        let inner = &self.manager.inner;
        let lease = Arc::new(Lease::new(
            inner.next_id(),
            self.name,
            keys,
            token,
            fencing_token,
            self.ttl,
            inner.backend.usable(lease_len),
            sent,
            self.min_hold,
        ));
        inner.register(&lease);
        if self.auto_extend {
            watchdog::start(inner, &lease, self.max_hold);
        }
        LockGuard::new(self.manager.clone(), lease)
    }
}

/// What a waiter does after a refused or failed attempt.
enum Step {
    /// Subscribe to release notifications, then try again at once.
    Watch,
    /// Wait for a notification, at most this long, then try again.
    Wait(Duration),
}

/// Pause before retrying after a communication error.
const ERROR_RETRY: Duration = Duration::from_millis(50);

/// A pause drawn uniformly from the upper half of `max`, so that pollers spread out.
fn jittered(max: Duration) -> Duration {
    let half = max / 2;
    let jitter_ns = random_u64() % (half.as_nanos() as u64 + 1);
    half + Duration::from_nanos(jitter_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_the_upper_half() {
        for max in [
            Duration::from_millis(1),
            Duration::from_millis(250),
            Duration::from_secs(3),
        ] {
            for _ in 0..100 {
                let d = jittered(max);
                assert!(d >= max / 2 && d <= max, "{d:?} outside {max:?}");
            }
        }
    }
}
