//! The inner loop: every command about a lock, sent, timed and accounted for. An attempt, an
//! extend, a fencing token, a release (now or in the background), a fair ticket or writer's
//! claim leaving, and operators' reads; what a command may leave behind is handed to the
//! background clean-up (`cleanup.rs`, I5).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::Instant;

use super::Shared;
use crate::backend::{Answer, Command, Eviction, Found, Leftover, Ticket, Watch};
use crate::cleanup::{keep_for, CleanUp, Orphan, PendingRelease};
use crate::keys::LockKeys;
use crate::lease::{Grant, Landed, Lease};
use crate::metrics::Lost;
use crate::token::owner_token;
use crate::{LockError, Result};

/// How one acquire attempt went: the deployment's [`Answer`], with the grant's token and
/// timing when it was applied, and with what a failed attempt may have left.
pub(crate) enum Tried {
    Granted(Grant),
    /// [`Answer::NotApplied`] (held by another owner) or [`Answer::Undecided`] (Redlock).
    Refused(Answer),
    /// With the attempt's token when the command may have set the key.
    Failed(LockError, Option<Orphan>),
}

impl Shared {
    /// One acquire attempt with a fresh token for a lease of `ttl` (`renewed`: by a watchdog, as the token records). With `mark`, a refusal asks the holder's release
    /// to be published (waiters only). If this future is dropped in flight, or the attempt fails
    /// in a way that may have set the key, the token is released in the background.
    pub(crate) async fn attempt(
        self: &Arc<Self>,
        keys: &LockKeys,
        name: &str,
        (ttl, renewed): (Duration, bool),
        mark: bool,
        ticket: Option<Ticket<'_>>,
    ) -> Tried {
        let token = owner_token(&self.settings.holder, ttl, renewed);
        let sent = Instant::now();
        let cleanup = CleanUp::armed(
            &self.cleaner,
            PendingRelease {
                keys,
                token: &token,
                name,
                hold_until: None,
                give_up: sent + ttl,
                quiet: true,
                contended: mark,
            },
        );
        let command = Command::Acquire {
            keys: Cow::Borrowed(keys),
            token: Cow::Borrowed(&token),
            ttl,
            mark,
            ticket,
        };
        let answer = self.store.run(&command).await;
        drop(command);
        match answer {
            Ok((Answer::Applied(usable), _)) => {
                cleanup.disarm();
                Tried::Granted(Grant {
                    token,
                    sent,
                    usable,
                    waited: mark,
                })
            }
            Ok((answer, leftover)) => {
                self.finish(leftover, cleanup);
                Tried::Refused(answer)
            }
            Err(e @ LockError::NotReplicated { .. }) => {
                // Granted by the primary alone: given back now (which wakes waiters), so that
                // nothing of the attempt is left; the background does it if this fails.
                cleanup.into_orphan().release_now().await;
                Tried::Failed(e, None)
            }
            Err(e) if self.may_have_applied(&e) => Tried::Failed(e, Some(cleanup.into_orphan())),
            Err(e) => {
                cleanup.disarm();
                Tried::Failed(e, None)
            }
        }
    }

    /// Finishes what a refused attempt may have left set: nothing, a release by token in the
    /// background, or the attempt's own late answers awaited in the background (tracked for
    /// `shutdown`), with a release by token if they leave its outcome unknown.
    fn finish(self: &Arc<Self>, leftover: Leftover, cleanup: CleanUp<'_>) {
        match leftover {
            Leftover::Nothing => cleanup.disarm(),
            // Dropped armed, it releases the token in the background.
            Leftover::Unknown => drop(cleanup),
            Leftover::Later(rest) => {
                let Ok(handle) = Handle::try_current() else {
                    return; // the armed clean-up logs that the key expires with its ttl
                };
                let orphan = cleanup.into_orphan();
                self.tasks.spawn(&handle, async move {
                    if rest.await {
                        orphan.disarm();
                    } // else dropped armed: released by token in the background
                });
            }
        }
    }

    /// Whether the command that failed with `e` may have been applied: see
    /// [`LockError::may_have_applied`]. Always, on a store whose client re-sends commands by
    /// itself: an error may follow a copy that was applied.
    fn may_have_applied(&self, e: &LockError) -> bool {
        self.store.replays() || e.may_have_applied()
    }

    /// An operator's look at a lock key (see `LockManager::inspect`).
    pub(crate) async fn peek(&self, keys: &LockKeys) -> Result<Option<Found>> {
        self.store.peek(keys).await
    }

    /// Why an acquisition without wait was refused, told with one more command (best effort):
    /// [`LockError::Busy`] naming the holder if it can be told, or
    /// [`LockError::PermitsMismatch`] when the lock is held with another number of permits
    /// (`SET NX` alone cannot tell).
    pub(crate) async fn busy(&self, keys: &LockKeys) -> LockError {
        let name = keys.name().to_owned();
        let found = self.store.peek(keys).await.ok().flatten();
        match found {
            Some(found) if !keys.kind.meets(found.permits) => LockError::PermitsMismatch {
                name,
                held: found.permits,
                requested: keys.kind.permits(),
            },
            found => LockError::Busy {
                name,
                holder: found.and_then(|found| {
                    crate::token::holder_of(&found.value).map(|(holder, _)| holder)
                }),
            },
        }
    }

    /// Ends every hold of a lock, or one holder's (see `LockManager::evict_holders`): the
    /// evicted values. The evicted holders read who did it from the records it leaves, as
    /// this manager's holder id.
    pub(crate) async fn evict(&self, keys: &LockKeys, holder: Option<&str>) -> Result<Vec<String>> {
        let by = &self.settings.holder;
        self.store.evict(keys, Eviction { holder, by }).await
    }

    /// Counts `lease`, found not ours, as lost for its reason: [`Lost::Evicted`] when an
    /// operator force-released it (the eviction's record, `<who>|<server ms>`, is returned), else
    /// [`Lost::NotOurs`]. One read, only once a loss is found, bounded by the response timeout;
    /// `NotOurs` when it cannot be told. Also whether the caller's WARN is the first of this
    /// loss ([`Lease::first_loss_warning`]).
    async fn count_not_ours(&self, lease: &Lease) -> (Option<String>, bool) {
        let read = self.store.evicted_by(&lease.keys, &lease.token);
        let record = match tokio::time::timeout(self.settings.response_timeout, read).await {
            Ok(Ok(record)) => record,
            _ => None,
        };
        lease.report_lost(if record.is_some() {
            Lost::Evicted
        } else {
            Lost::NotOurs
        });
        (record, lease.first_loss_warning())
    }

    /// The lock keys matching a `SCAN` pattern (see `LockManager::list`).
    pub(crate) async fn scan(&self, pattern: &str) -> Result<Vec<(String, Found)>> {
        self.store.scan(pattern).await
    }

    /// Takes a fair acquisition's ticket out of the line (a waiting writer's claim out of the
    /// claims) in the background, tracked for `shutdown`; one try, as either lapses by itself a
    /// few poll intervals later.
    pub(crate) fn leave_in_background(self: &Arc<Self>, keys: LockKeys, ticket: String) {
        let Ok(handle) = Handle::try_current() else {
            return;
        };
        let shared = Arc::clone(self);
        self.tasks.spawn(&handle, async move {
            let leave = Command::Leave {
                keys: Cow::Borrowed(&keys),
                ticket: Cow::Borrowed(&ticket),
            };
            if let Err(e) = shared.store.run(&leave).await {
                tracing::debug!(error = %e, "leaving the line failed; the ticket expires by itself");
            }
        });
    }

    /// Waits for release notifications on `keys`, for a waiter.
    pub(crate) async fn watch(&self, keys: &LockKeys, ticket: Option<&str>) -> Watch {
        self.wake.watch(keys, ticket).await
    }

    /// Owner-checked renewal for `ttl` from now. `Ok(false)` (and the lease lost for good)
    /// when the key is gone or another's.
    pub(crate) async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        let renewing = lease.renewing(self.store.usable(ttl));
        let extend = Command::Extend {
            keys: Cow::Borrowed(&lease.keys),
            token: Cow::Borrowed(&lease.token),
            ttl,
        };
        match self.store.run(&extend).await {
            Ok((Answer::Applied(usable), leftover)) => {
                // A renewal whose outcome is unknown somewhere (Redlock), or on a client that
                // re-sends by itself, may land again, later.
                let partial = !matches!(leftover, Leftover::Nothing);
                renewing.finish(if partial || self.store.replays() {
                    Landed::AppliedPartly(usable)
                } else {
                    Landed::Applied(usable)
                });
                crate::metrics::extend(&lease.label, lease.keys.kind, "renewed");
                Ok(true)
            }
            Ok(_not_ours) => {
                renewing.finish(Landed::NotApplied);
                crate::metrics::extend(&lease.label, lease.keys.kind, "not_ours");
                // Lost now, before the read below: a caller that drops this future while it
                // reads must not find the guard still saying it holds.
                lease.mark_lost();
                let (record, first) = self.count_not_ours(lease).await;
                if let (Some(record), true) = (&record, first) {
                    tracing::warn!(lock = %crate::validate::Logged(&lease.name), holder = %crate::token::holder_or_unknown(&lease.token), evicted_by = %crate::validate::Logged(record), "lease lost: evicted by an operator (force-release)");
                } else if first {
                    tracing::warn!(lock = %crate::validate::Logged(&lease.name), holder = %crate::token::holder_or_unknown(&lease.token), "lease lost: the key expired or another owner holds it");
                } else {
                    tracing::info!(lock = %crate::validate::Logged(&lease.name), holder = %crate::token::holder_or_unknown(&lease.token), "lease lost for good: the key expired or another owner holds it");
                }
                Ok(false)
            }
            Err(e) => {
                renewing.finish(if self.may_have_applied(&e) {
                    Landed::Unknown
                } else {
                    Landed::NotApplied
                });
                crate::metrics::extend(&lease.label, lease.keys.kind, "error");
                Err(e)
            }
        }
    }

    /// The lease's fencing token, drawn on first use while it is held.
    pub(crate) async fn fencing_token(&self, lease: &Lease) -> Result<u64> {
        let lost = || LockError::Lost {
            name: lease.name.clone(),
        };
        lease.keys.kind.fenced(&lease.name)?;
        if let Some(&fence) = lease.fence.get() {
            return Ok(fence);
        }
        if lease.is_lost() || lease.is_finished() {
            return Err(lost());
        }
        let fence = lease
            .fence
            .get_or_try_init(|| async {
                let fence = Command::Fence {
                    keys: Cow::Borrowed(&lease.keys),
                    token: Cow::Borrowed(&lease.token),
                };
                match self.store.run(&fence).await?.0 {
                    Answer::Drawn(fence) => Ok(fence),
                    _not_ours => {
                        lease.mark_lost();
                        let (record, first) = self.count_not_ours(lease).await;
                        if first {
                            tracing::warn!(lock = %crate::validate::Logged(&lease.name), holder = %crate::token::holder_or_unknown(&lease.token), evicted_by = %crate::validate::Logged(record.as_deref().unwrap_or("-")), "no fencing token: the key expired, another owner holds it, or an operator evicted it");
                        }
                        Err(lost())
                    }
                }
            })
            .await?;
        Ok(*fence)
    }

    fn release_job(lease: &Lease) -> PendingRelease<'_> {
        PendingRelease {
            keys: &lease.keys,
            token: &lease.token,
            name: &lease.name,
            hold_until: lease.min_hold_end(),
            give_up: lease.deadline(),
            quiet: lease.loss_warned(),
            contended: lease.waited,
        }
    }

    /// Ends a claimed lease: stops its watchdog (waiting until an extension in flight is gone),
    /// then compare-and-deletes the key. If this future is dropped, or Redis cannot be reached,
    /// the release goes on in the background until the key would have expired.
    pub(crate) async fn release(self: &Arc<Self>, lease: &Lease) -> Result<bool> {
        let on_failure = CleanUp::armed(&self.cleaner, Self::release_job(lease));
        if let Some(watchdog) = lease.stop_watchdog() {
            let _ = watchdog.await;
        }
        let keep = keep_for(lease.min_hold_end());
        let released = self
            .store
            .release(&lease.keys, &lease.token, keep, lease.waited)
            .await;
        match &released {
            Ok(true) => tracing::debug!(lock = %crate::validate::Logged(&lease.name), "released"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(lock = %crate::validate::Logged(&lease.name), holder = %crate::token::holder_or_unknown(&lease.token), error = %e, "release failed; retrying in the background until the key expires");
                return released;
            }
        }
        // Answered: nothing left for the background, even if this future is dropped below.
        on_failure.disarm();
        if let Ok(false) = released {
            // A release that found the key gone or another's: why, for the loss's reason.
            let (record, first) = self.count_not_ours(lease).await;
            if let (Some(record), true) = (&record, first) {
                tracing::warn!(
                    lock = %crate::validate::Logged(&lease.name), holder = %crate::token::holder_or_unknown(&lease.token),
                    evicted_by = %crate::validate::Logged(record),
                    "release found the lock evicted by an operator (force-release)"
                );
            } else if first {
                tracing::warn!(
                    lock = %crate::validate::Logged(&lease.name), holder = %crate::token::holder_or_unknown(&lease.token),
                    "release found the lock expired or held by another owner"
                );
            } else {
                tracing::debug!(lock = %crate::validate::Logged(&lease.name), "release found the lost lock gone, as told");
            }
        }
        released
    }

    /// Releases a claimed lease in the background on the current runtime, tracked for
    /// `shutdown`. Never blocks and never panics; with no runtime it logs and leaves the key
    /// to its ttl.
    pub(crate) fn release_in_background(self: &Arc<Self>, lease: &Lease) {
        let watchdog = lease.stop_watchdog();
        self.cleaner
            .spawn(watchdog, Self::release_job(lease).to_job());
    }
}
