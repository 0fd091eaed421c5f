//! `LockGuard`: proof that this process holds a lock, and the way to give it back.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::lease::Lease;
use crate::shared::Shared;
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
/// TTL). [`LockManager::shutdown`](crate::LockManager::shutdown) waits for these background releases.
///
/// Prefer an explicit `release().await` where you can: it tells you whether the lease was
/// still yours, and the next owner can take the lock as soon as it returns.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard {
    shared: Arc<Shared>,
    lease: Arc<Lease>,
    /// A reentrant acquisition of a lock an enclosing holder in the same task has: it ends
    /// nothing, the outer guard releases.
    nested: bool,
}

impl LockGuard {
    pub(crate) fn new(shared: Arc<Shared>, lease: Arc<Lease>) -> Self {
        Self {
            shared,
            lease,
            nested: false,
        }
    }

    /// A guard on the lease an enclosing holder in the same task has (`reentrant`).
    pub(crate) fn nested(shared: Arc<Shared>, lease: Arc<Lease>) -> Self {
        Self {
            shared,
            lease,
            nested: true,
        }
    }

    pub(crate) fn parts(&self) -> (&Arc<Shared>, &Arc<Lease>) {
        (&self.shared, &self.lease)
    }

    pub(crate) fn lease(&self) -> &Arc<Lease> {
        &self.lease
    }

    /// Gives the lock back: deletes the key if it still holds this guard's token
    /// (or, with `min_hold`, shortens its expiry to the end of the minimum hold).
    ///
    /// `Ok(true)`: released. `Ok(false)`: the lease had expired or another owner holds the
    /// lock now (their lock is left intact). A reentrant guard (see
    /// [`LockRequest::reentrant`](crate::LockRequest::reentrant)) releases nothing: `Ok(true)`
    /// then says its holder's lease is still valid, and that holder releases. `Err`: Redis could not be reached; the release is
    /// retried in the background until the key would have expired anyway.
    ///
    /// If this future is dropped before it completes, the guard's drop releases the lock in
    /// the background, so the lock never stays held by a forgotten owner.
    pub async fn release(self) -> Result<bool> {
        if self.nested {
            // The enclosing holder releases; this one only reports whether the lease holds.
            return Ok(!self.lease.is_lost() && !self.lease.is_finished());
        }
        let shared = Arc::clone(&self.shared);
        let lease = Arc::clone(&self.lease);
        if !shared.claim(&lease) {
            // Already given up by `shutdown`.
            return Ok(false);
        }
        // Claimed: dropping `self` no longer releases; `Shared::release` finishes the job in
        // the background if this future is dropped.
        drop(self);
        shared.release(&lease).await
    }

    /// [`release`](Self::release) through a reference, for a panic on its way out of an
    /// annotated body: awaited here, so that the lock is free before the unwinding goes on (a
    /// root task's panic ends its runtime, which would never run a release left to the
    /// background). The guard's drop then has nothing left to do.
    pub(crate) async fn release_in_place(&self) {
        if !self.nested && self.shared.claim(&self.lease) {
            let _ = self.shared.release(&self.lease).await;
        }
    }

    /// Runs `body` with this lock among the current task's held locks, as a
    /// `#[distributed_lock]` body runs: inside it, [`held`](crate::held) is `true` for this
    /// lock and a [`reentrant`](crate::LockRequest::reentrant) acquisition of it (an annotated
    /// fn with `reentrant = true`, say) reuses this hold instead of being refused. Futures
    /// spawned from `body` are other tasks and do not share it.
    ///
    /// ```no_run
    /// # async fn demo(locks: lock_core::LockManager) -> lock_core::Result<()> {
    /// let guard = locks.lock("ledger:7").acquire().await?;
    /// guard
    ///     .holding(async {
    ///         assert!(lock_core::held("ledger:7"));
    ///         // calls annotated `reentrant = true` fns on "ledger:7" here
    ///     })
    ///     .await;
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub fn holding<F: std::future::Future>(
        &self,
        body: F,
    ) -> impl std::future::Future<Output = F::Output> {
        crate::held::scope(self, body)
    }

    /// Renews the lease, owner-checked: on success the lock expires `ttl` from now, and the
    /// guard holds again even if its deadline had passed while Redis did not answer.
    /// `Ok(false)` when the lease had already expired or another owner holds the lock (which
    /// is left intact); the guard is then lost for good.
    ///
    /// The local deadline moves only for the extend sent last, whatever order the replies come
    /// back in. An extend that fails without an answer may still be applied later, so the
    /// guard counts on no more than its `ttl` from then on.
    pub async fn extend(&self, ttl: Duration) -> Result<bool> {
        check_ttl("ttl", ttl)?;
        if self.lease.is_finished() {
            return Ok(false);
        }
        let extended = self.shared.extend(&self.lease, ttl).await?;
        if extended {
            tracing::debug!(lock = %crate::validate::Logged(&self.lease.name), ttl_ms = ttl.as_millis() as u64, "extended");
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

    /// The fencing token: a number that grows with every hold period of this name, drawn on
    /// first call while the lock is held and cached afterwards (also after the lease is lost:
    /// it is the token of the hold period it was drawn in). `Err(`[`LockError::Lost`](crate::LockError::Lost)`)`
    /// when the lease is gone before a token was drawn (nothing is drawn then).
    ///
    /// Send it with every write to the resource the lock protects, and have the resource
    /// refuse a token lower than the highest it has accepted. Then a holder whose lease ran out
    /// while it was paused (GC, SIGSTOP, a slow network) cannot overwrite the work of the next
    /// holder.
    ///
    /// Why a token drawn after the acquire is still a fence: the draw is one script that
    /// advances `<prefix>{<name>}:fence` only while the lock key still holds this guard's
    /// token. The key holds one owner at a time, so every draw happens inside its drawer's hold
    /// period, and the periods of one name follow each other; the counter only grows, so a
    /// later holder's token is higher than any earlier holder's. A holder that draws its token
    /// after its lease ran out gets `Lost`, not a token. Locks that never ask for a token cost
    /// nothing for it: no counter, no command.
    ///
    /// The token is the larger of the last one + 1 and the server's clock in microseconds, so
    /// it keeps growing after the counter expires (a day after its last use) and after Redis
    /// lost its data, as long as the server's clock does not go back by more than that.
    ///
    /// What it guarantees depends on the deployment:
    /// - **One server** and **Redis Cluster** (the counter moves with its slot): ordered like
    ///   the hold periods. A failover to a replica that missed the latest writes can lose the
    ///   lock; a guard with `auto_extend` then reports it lost.
    /// - **Redlock**: *not a fence*. It is the highest of the tokens drawn on a majority of
    ///   instances, which advance independently, so two holders' tokens are not guaranteed to
    ///   be ordered. Use one server or a cluster when a resource needs fencing.
    ///
    /// A permit of [`permits(n)`](crate::LockRequest::permits) with `n > 1` has no fencing
    /// token: up to `n` holders hold at once, so "refuse a token lower than the highest
    /// accepted" would refuse holders that are entitled to write. It returns
    /// [`LockError::InvalidConfig`](crate::LockError::InvalidConfig) without a command.
    pub async fn fencing_token(&self) -> Result<u64> {
        self.shared.fencing_token(&self.lease).await
    }

    /// The lease requested at acquire time.
    pub fn ttl(&self) -> Duration {
        self.lease.ttl
    }

    /// A conservative local estimate of the lease time left: counted on a monotonic clock
    /// from the send time of the command that set the key's current expiry (the acquire or
    /// the renewal sent last), so it never overstates what Redis grants. Zero once the lease
    /// has run out.
    pub fn remaining(&self) -> Duration {
        self.lease.remaining()
    }

    /// `true` once the lease is lost: a renewal found the key gone or owned by another, the
    /// manager was shut down (both for good), or the local deadline passed (until a renewal
    /// gets through: the key may still be ours on the server).
    pub fn is_lost(&self) -> bool {
        self.lease.is_lost()
    }

    /// Resolves once the lease is known lost (see [`is_lost`](Self::is_lost)). To stop work
    /// when the lock is no longer yours, prefer [`until_lost`](Self::until_lost): a
    /// `select!` between the work and `lost()` can run one more step of the work when both
    /// become ready in the same wake-up (a runtime thread that stalled past the lease).
    pub async fn lost(&self) {
        self.lease.lost().await;
    }

    /// Runs `work` while the lease holds: `Ok(output)` when it finished first,
    /// `Err(`[`LockError::Lost`](crate::LockError::Lost)`)` once the lease is lost, with
    /// `work` dropped at its current await point. This is what `#[distributed_lock]` does
    /// with `on_lost = "abort"`.
    ///
    /// The loss is checked before every poll of `work`, not only when a timer or a message
    /// says so: a runtime thread that stalled past the lease (a blocking call) wakes the
    /// work's timer and the loss at the same time, and the work is not polled again then.
    /// Once polled, `work` runs until it next yields (an await that is not ready): what runs
    /// in between, or is running when the lease ends, cannot be stopped from outside, so
    /// guard its writes with a [fencing token](Self::fencing_token).
    ///
    /// ```no_run
    /// # async fn demo(locks: lock_core::LockManager) -> lock_core::Result<()> {
    /// # async fn copy_rows() {}
    /// let guard = locks.lock("migrate").auto_extend(true).acquire().await?;
    /// match guard.until_lost(copy_rows()).await {
    ///     Ok(()) => {}
    ///     Err(lost) => eprintln!("stopped: {lost}"),
    /// }
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn until_lost<F: std::future::Future>(&self, work: F) -> Result<F::Output> {
        self.lease
            .until_lost(work)
            .await
            .ok_or_else(|| crate::LockError::Lost {
                name: self.lease.name.clone(),
            })
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a credential: never shown.
        f.debug_struct("LockGuard")
            .field("name", &self.lease.name)
            .field("fencing_token", &self.lease.fence.get())
            .field("ttl", &self.lease.ttl)
            .field("remaining", &self.remaining())
            .field("lost", &self.is_lost())
            .finish_non_exhaustive()
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if !self.nested && self.shared.claim(&self.lease) {
            self.shared.release_in_background(&self.lease);
        }
    }
}
