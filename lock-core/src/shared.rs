//! The state a manager's guards, requests and watchdogs share, and the only path from them to
//! the backend: every command about a lock is sent, timed and accounted for here. What a
//! command may leave behind is handed to the background clean-up (`cleanup.rs`, I5).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::Instant;

use crate::backend::{Attempt, Found, Leftover, Renewal, Store, Ticket, Wake, Watch};
use crate::cleanup::{keep_for, CleanUp, Cleaner, Orphan, PendingRelease};
use crate::keys::LockKeys;
use crate::lease::{Grant, Landed, Lease};
use crate::locked;
use crate::tasks::Tasks;
use crate::token::owner_token;
use crate::{LockError, Result};

/// Settings of a manager that its requests read.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) prefix: String,
    /// Longest pause between a waiter's attempts when no release notification arrives.
    pub(crate) poll_cap: Duration,
    /// How long one command may wait for its reply.
    pub(crate) response_timeout: Duration,
    /// Who this manager's locks say holds them (`holder_id`), made fit for a token.
    pub(crate) holder: String,
}

pub(crate) struct Shared {
    store: Arc<dyn Store>,
    /// Releases that go on in the background; shares `store` and `tasks`.
    cleaner: Cleaner,
    wake: Box<dyn Wake>,
    settings: Settings,
    tasks: Arc<Tasks>,
    /// Locks acquired through this manager and not yet released, for `shutdown`.
    held: Mutex<HashMap<u64, Arc<Lease>>>,
    next_id: AtomicU64,
    /// `shutdown` was called: leader campaigns end instead of taking their lock again.
    shut_down: AtomicBool,
    /// Woken when `shut_down` is set.
    shutting: tokio::sync::Notify,
}

/// The answer to one acquire attempt.
pub(crate) enum Tried {
    Granted(Grant),
    Held(Option<Duration>),
    NoQuorum {
        granted: usize,
        needed: usize,
        refused: usize,
    },
    /// With the attempt's token when the command may have set the key.
    Failed(LockError, Option<Orphan>),
}

impl Shared {
    pub(crate) fn new(store: Box<dyn Store>, wake: Box<dyn Wake>, settings: Settings) -> Arc<Self> {
        let store: Arc<dyn Store> = Arc::from(store);
        let tasks: Arc<Tasks> = Arc::default();
        Arc::new(Self {
            cleaner: Cleaner {
                store: Arc::clone(&store),
                tasks: Arc::clone(&tasks),
            },
            store,
            wake,
            settings,
            tasks,
            held: Mutex::default(),
            next_id: AtomicU64::new(1),
            shut_down: AtomicBool::new(false),
            shutting: tokio::sync::Notify::new(),
        })
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    pub(crate) fn keys(&self, name: &str) -> LockKeys {
        LockKeys::new(&self.settings.prefix, name)
    }

    pub(crate) fn kind(&self) -> &'static str {
        self.store.kind()
    }

    /// Spawns `fut` on the current runtime as background work of this manager, which
    /// `shutdown` waits for. Panics outside a tokio runtime, like `tokio::spawn`.
    pub(crate) fn spawn_tracked<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(&Handle::current(), fut)
    }

    /// Whether `shutdown` was called.
    pub(crate) fn is_shut_down(&self) -> bool {
        self.shut_down.load(Ordering::Acquire)
    }

    /// Resolves once `shutdown` is called (at once if it was).
    pub(crate) async fn shut_down(&self) {
        let notified = self.shutting.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !self.is_shut_down() {
            notified.await;
        }
    }

    pub(crate) fn held_count(&self) -> usize {
        locked(&self.held).len()
    }

    pub(crate) fn pending_tasks(&self) -> usize {
        self.tasks.pending()
    }

    /// One acquire attempt with a fresh token. With `mark`, a refusal asks the holder's release
    /// to be published (waiters only). If this future is dropped in flight, or the attempt fails
    /// in a way that may have set the key, the token is released in the background.
    pub(crate) async fn attempt(
        self: &Arc<Self>,
        keys: &LockKeys,
        name: &str,
        ttl: Duration,
        mark: bool,
        ticket: Option<Ticket<'_>>,
    ) -> Tried {
        let token = owner_token(&self.settings.holder);
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
            },
        );
        match self.store.acquire(keys, &token, ttl, mark, ticket).await {
            Ok(Attempt::Granted(usable)) => {
                cleanup.disarm();
                Tried::Granted(Grant {
                    token,
                    sent,
                    usable,
                })
            }
            Ok(Attempt::Held { left, leftover }) => {
                self.finish(leftover, cleanup);
                Tried::Held(left)
            }
            Ok(Attempt::NoQuorum {
                granted,
                needed,
                refused,
                leftover,
            }) => {
                self.finish(leftover, cleanup);
                Tried::NoQuorum {
                    granted,
                    needed,
                    refused,
                }
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

    /// Frees a lock whoever holds it (see `LockManager::force_release`): the evicted value.
    pub(crate) async fn evict(&self, keys: &LockKeys) -> Result<Option<String>> {
        self.store.evict(keys).await
    }

    /// The lock keys matching a `SCAN` pattern (see `LockManager::list`).
    pub(crate) async fn scan(&self, pattern: &str) -> Result<Vec<(String, Found)>> {
        self.store.scan(pattern).await
    }

    /// Whether the deployment decides by a majority of independent instances (see
    /// [`Store::by_majority`]).
    pub(crate) fn by_majority(&self) -> bool {
        self.store.by_majority()
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
            if let Err(e) = shared.store.leave(&keys, &ticket).await {
                tracing::debug!(error = %e, "leaving the line failed; the ticket expires by itself");
            }
        });
    }

    /// Makes the lease of a granted attempt and tracks it for `shutdown`.
    pub(crate) fn grant(
        &self,
        name: String,
        label: String,
        keys: LockKeys,
        ttl: Duration,
        grant: Grant,
        min_hold: Option<Duration>,
    ) -> Arc<Lease> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        crate::metrics::held(&label, keys.kind);
        let lease = Arc::new(Lease::new(id, name, label, keys, ttl, grant, min_hold));
        locked(&self.held).insert(id, Arc::clone(&lease));
        lease
    }

    /// Waits for release notifications on `keys`, for a waiter.
    pub(crate) async fn watch(&self, keys: &LockKeys, ticket: Option<&str>) -> Watch {
        self.wake.watch(keys, ticket).await
    }

    /// Owner-checked renewal for `ttl` from now. `Ok(false)` (and the lease lost for good)
    /// when the key is gone or another's.
    pub(crate) async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        let renewing = lease.renewing(self.store.usable(ttl));
        match self.store.extend(&lease.keys, &lease.token, ttl).await {
            Ok(Renewal::Renewed { usable, partial }) => {
                // A client that re-sends by itself may land this renewal again, later.
                renewing.finish(if partial || self.store.replays() {
                    Landed::AppliedPartly(usable)
                } else {
                    Landed::Applied(usable)
                });
                crate::metrics::extend(&lease.label, lease.keys.kind, "renewed");
                Ok(true)
            }
            Ok(Renewal::NotOurs) => {
                renewing.finish(Landed::NotApplied);
                crate::metrics::extend(&lease.label, lease.keys.kind, "not_ours");
                if !lease.is_lost() {
                    crate::metrics::lost(&lease.label, lease.keys.kind);
                }
                tracing::warn!(lock = %lease.name, holder = %crate::token::holder_or_unknown(&lease.token), "lease lost: the key expired or another owner holds it");
                lease.mark_lost();
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
                match self.store.fence(&lease.keys, &lease.token).await? {
                    Some(fence) => Ok(fence),
                    None => {
                        if !lease.is_lost() {
                            crate::metrics::lost(&lease.label, lease.keys.kind);
                        }
                        tracing::warn!(lock = %lease.name, holder = %crate::token::holder_or_unknown(&lease.token), "no fencing token: the key expired or another owner holds it");
                        lease.mark_lost();
                        Err(lost())
                    }
                }
            })
            .await?;
        Ok(*fence)
    }

    /// Claims the right to end `lease` (exactly one caller wins) and forgets it.
    pub(crate) fn claim(&self, lease: &Lease) -> bool {
        if !lease.claim() {
            return false;
        }
        crate::metrics::released(&lease.label, lease.keys.kind, lease.acquired.elapsed());
        // Over for every guard on it: a reentrant (nested) guard that outlives its holder must
        // not say it still holds.
        lease.mark_lost();
        locked(&self.held).remove(&lease.id);
        true
    }

    fn release_job(lease: &Lease) -> PendingRelease<'_> {
        PendingRelease {
            keys: &lease.keys,
            token: &lease.token,
            name: &lease.name,
            hold_until: lease.min_hold_end(),
            give_up: lease.deadline(),
            quiet: false,
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
        let released = self.store.release(&lease.keys, &lease.token, keep).await;
        match &released {
            Ok(true) => tracing::debug!(lock = %lease.name, "released"),
            Ok(false) => tracing::warn!(
                lock = %lease.name, holder = %crate::token::holder_or_unknown(&lease.token),
                "release found the lock expired or held by another owner"
            ),
            Err(e) => {
                tracing::warn!(lock = %lease.name, holder = %crate::token::holder_or_unknown(&lease.token), error = %e, "release failed; retrying in the background until the key expires");
                return released;
            }
        }
        on_failure.disarm();
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

    /// Gives up every lease still held and waits for the background releases, within `within`.
    pub(crate) async fn shutdown(self: &Arc<Self>, within: Duration) -> Result<()> {
        self.shut_down.store(true, Ordering::Release);
        self.shutting.notify_waiters();
        let leases: Vec<Arc<Lease>> = locked(&self.held).drain().map(|(_, l)| l).collect();
        for lease in leases {
            if lease.claim() {
                crate::metrics::released(&lease.label, lease.keys.kind, lease.acquired.elapsed());
                lease.mark_lost();
                self.release_in_background(&lease);
            }
        }
        let drained = async {
            self.tasks.wait_idle().await;
            self.store.close().await;
        };
        let drained = tokio::time::timeout(within, drained).await;
        // Last, the notifiers' connections close (a waiter still waiting polls from then on).
        // Not timed: a driver is aborted, which takes effect at its next await, so this returns
        // within a turn of the scheduler; and `shutdown(Duration::ZERO)` with nothing in
        // flight must not report a timeout for it.
        self.wake.close().await;
        drained.map_err(|_| LockError::ShutdownTimeout {
            pending: self.tasks.pending(),
        })
    }
}
