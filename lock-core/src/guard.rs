//! `LockGuard`: proof that this process holds a lock, and the way to give it back.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::lease::Lease;
use crate::manager::{CleanUpOnDrop, LockManager};
use crate::validate::check_ttl;
use crate::Result;

/// A held lock. Give it back with [`release`](Self::release); if the guard is dropped instead,
/// the release runs in the background.
///
/// # Drop
///
/// Dropping an unreleased guard spawns a compare-and-delete on the current tokio runtime and
/// returns at once. It never blocks and never panics: not on a current-thread runtime, not in
/// a `LocalSet`, not while the runtime shuts down (the spawn is then dropped and the key
/// expires with its TTL), not outside any runtime (it logs a warning and leaves the key to its
/// TTL). [`LockManager::shutdown`] waits for these background releases.
///
/// Prefer an explicit `release().await` where you can: it tells you whether the lease was
/// still yours, and the next owner can take the lock as soon as it returns.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard {
    manager: LockManager,
    lease: Arc<Lease>,
}

impl LockGuard {
    pub(crate) fn new(manager: LockManager, lease: Arc<Lease>) -> Self {
        Self { manager, lease }
    }

    /// Gives the lock back: deletes the key if it still holds this guard's token
    /// (or, with `min_hold`, shortens its expiry to the end of the minimum hold).
    ///
    /// `Ok(true)`: released. `Ok(false)`: the lease had expired or another owner holds the
    /// lock now (their lock is left intact). `Err`: Redis could not be reached; the key
    /// expires with its TTL.
    ///
    /// If this future is dropped before it completes, the guard's drop releases the lock in
    /// the background, so the lock never stays held by a forgotten owner.
    pub async fn release(self) -> Result<bool> {
        let inner = Arc::clone(&self.manager.inner);
        let lease = Arc::clone(&self.lease);
        if !inner.claim(&lease) {
            // Already given up by `shutdown`.
            return Ok(false);
        }
        // Claimed: dropping `self` no longer releases; `on_cancel` does, if we are cancelled.
        drop(self);
        // If this future is dropped, the release may or may not have run: finish it quietly.
        let mut on_cancel = CleanUpOnDrop {
            inner: &inner,
            keys: &lease.keys,
            token: &lease.token,
            name: &lease.name,
            hold_until: lease.min_hold_end(),
            expires_within: lease.remaining(),
            armed: true,
        };
        let result = inner.release_claimed(&lease).await;
        on_cancel.armed = false;
        result
    }

    /// Renews the lease, owner-checked: on success the lock expires `ttl` from now.
    /// `Ok(false)` when the lease had already expired or another owner holds the lock (which
    /// is left intact); the guard is then lost.
    pub async fn extend(&self, ttl: Duration) -> Result<bool> {
        check_ttl("ttl", ttl)?;
        if self.lease.is_finished() {
            return Ok(false);
        }
        let sent = Instant::now();
        let extended = self
            .manager
            .inner
            .backend
            .extend(&self.lease.keys, &self.lease.token, ttl)
            .await?;
        if extended {
            self.lease
                .renewed(sent, self.manager.inner.backend.usable(ttl));
            tracing::debug!(lock = %self.lease.name, ttl_ms = ttl.as_millis() as u64, "extended");
        } else {
            tracing::warn!(lock = %self.lease.name, "extend found the lock expired or held by another owner");
            self.lease.mark_lost();
        }
        Ok(extended)
    }

    /// The lock name as given, without the key prefix.
    pub fn name(&self) -> &str {
        &self.lease.name
    }

    /// This acquisition's random owner token (128 bits, hex). It is a credential: whoever has
    /// it can release or extend the lock. Do not log it.
    pub fn token(&self) -> &str {
        &self.lease.token
    }

    /// The fencing token: it grows strictly with every acquisition of this name (a counter in
    /// Redis, next to the lock key, that never expires).
    ///
    /// Send it with every write to the resource the lock protects, and have the resource
    /// refuse a token lower than the highest it has accepted. Then a holder whose lease ran out
    /// while it was paused (GC, SIGSTOP, a slow network) cannot overwrite the work of the next
    /// holder. The counter restarts if Redis loses its data (restart without persistence).
    ///
    /// What it guarantees depends on the deployment:
    /// - **One server**: strictly increasing per name for as long as the server keeps its data.
    /// - **Redis Cluster**: the same, through resharding (the counter moves with its slot). A
    ///   failover to a replica that missed the latest writes can lose the lock *and* set the
    ///   counter back; a guard with `auto_extend` then reports the lock lost, but a token handed
    ///   out just before may be handed out again.
    /// - **Redlock**: *not a fence*. It is the highest of the counters of the instances that
    ///   granted this acquisition. Each instance's counter grows, but they advance independently
    ///   (a refused attempt still bumps the instances it reached before being released), so two
    ///   holders' tokens are not guaranteed to be ordered. Use one server or a cluster when a
    ///   resource needs fencing.
    pub fn fencing_token(&self) -> u64 {
        self.lease.fencing_token
    }

    /// The lease requested at acquire time.
    pub fn ttl(&self) -> Duration {
        self.lease.ttl
    }

    /// A conservative local estimate of the lease time left: counted on a monotonic clock
    /// from before the acquire (or last renewal) was sent, so it never overstates what Redis
    /// grants. Zero once the lease has run out.
    pub fn remaining(&self) -> Duration {
        self.lease.remaining()
    }

    /// `true` once the lease is known lost: a renewal found the key gone or owned by another,
    /// the local deadline passed, or the manager was shut down.
    pub fn is_lost(&self) -> bool {
        self.lease.is_lost()
    }

    /// Resolves once the lease is known lost (see [`is_lost`](Self::is_lost)). Race your work
    /// against it to stop as soon as the lock is no longer yours:
    ///
    /// ```no_run
    /// # async fn demo(guard: lock_core::LockGuard, work: impl std::future::Future<Output = ()>) {
    /// tokio::select! {
    ///     () = work => {}
    ///     () = guard.lost() => eprintln!("lock lost, stopping"),
    /// }
    /// # }
    /// ```
    pub async fn lost(&self) {
        self.lease.lost().await;
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a credential: never shown.
        f.debug_struct("LockGuard")
            .field("name", &self.lease.name)
            .field("fencing_token", &self.lease.fencing_token)
            .field("ttl", &self.lease.ttl)
            .field("remaining", &self.remaining())
            .field("lost", &self.is_lost())
            .finish_non_exhaustive()
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.manager.inner.claim(&self.lease) {
            self.manager
                .inner
                .release_in_background(Arc::clone(&self.lease));
        }
    }
}
