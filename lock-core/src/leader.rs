//! Leader election: a lock that a background task campaigns for, keeps with the watchdog and
//! campaigns for again after losing it.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::lease::Lease;
use crate::request::DEFAULT_TTL;
use crate::{locked, LockError, LockGuard, LockManager, Result};

/// The first pause before campaigning again after an acquire failed (the name held with
/// permits; the acquire itself retries communication errors while it waits).
const CAMPAIGN_RETRY: Duration = Duration::from_millis(500);

/// The longest pause between failed campaigns: failures that come back at once double the
/// pause up to this.
const CAMPAIGN_RETRY_MAX: Duration = Duration::from_secs(30);

/// A leader election on one lock name, made by [`LockManager::leader`]. Defaults: ttl 30 s.
#[must_use = "a leader election does nothing until `.start()`"]
#[derive(Debug)]
pub struct LeaderBuilder<'a> {
    manager: &'a LockManager,
    name: String,
    ttl: Duration,
}

impl<'a> LeaderBuilder<'a> {
    pub(crate) fn new(manager: &'a LockManager, name: String) -> Self {
        Self {
            manager,
            name,
            ttl: DEFAULT_TTL,
        }
    }

    /// The leader's lease (default 30 s): the watchdog renews it every ttl/3. When a leader
    /// dies without resigning (kill -9, a crash, a partition), another handle takes over once
    /// this lease has run out: within the ttl, plus the time of one attempt. A leader that
    /// cannot renew in time (Redis unreachable, the process paused) stops saying it leads when
    /// its local deadline passes, before the server lets the lease go.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Starts campaigning in the background at once, on the current tokio runtime, and returns
    /// the handle. The campaign waits for the lock (woken by its release, or when the holder's
    /// lease runs out), keeps it with the watchdog while it leads, and campaigns again after
    /// losing it. An invalid name or ttl ends the campaign: [`Leader::run_while_leader`] and
    /// [`Leader::resign`] return the error.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, like `tokio::spawn`.
    pub fn start(self) -> Leader {
        let (state, _) = watch::channel(false);
        let (stop, stopped) = watch::channel(false);
        let inner = Arc::new(Inner {
            name: self.name,
            term: Mutex::new(None),
            state,
            failed: Mutex::new(None),
            ended: AtomicBool::new(false),
        });
        let span =
            tracing::debug_span!("lock.leader", lock = %crate::validate::Logged(&inner.name));
        // Tracked with the manager's background work: `shutdown` ends the campaign and waits
        // until it has.
        let task = self
            .manager
            .shared()
            .spawn_tracked(tracing::Instrument::instrument(
                campaign(self.manager.clone(), Arc::clone(&inner), self.ttl, stopped),
                span,
            ));
        Leader {
            inner,
            stop,
            task: Some(task),
        }
    }
}

/// A handle in a leader election: one of the handles of a name leads at a time. Made by
/// [`LeaderBuilder::start`]; dropping it resigns (the lock is released in the background).
///
/// The guarantee is the lease truth of the lock: never do two handles both say they lead
/// ([`is_leader`](Self::is_leader)) while either one's lease is valid. A leader that loses its
/// lease (a renewal finds the lock gone, or the lease runs out while Redis does not answer or
/// the process is paused) stops saying so at its local deadline, which comes before the
/// server's expiry, and campaigns again.
///
/// [`LockManager::shutdown`] releases a leader's lock like any other and ends its campaign: it
/// no longer leads, and does not campaign again.
///
/// ```no_run
/// # async fn demo(locks: lock_core::LockManager) -> lock_core::Result<()> {
/// use std::time::Duration;
///
/// let leader = locks.leader("scheduler").ttl(Duration::from_secs(10)).start();
/// leader
///     .run_while_leader(|| async {
///         loop {
///             // the singleton's work: cancelled the moment leadership is lost, then started
///             // again once it is won back
///             tokio::time::sleep(Duration::from_secs(1)).await;
///         }
///     })
///     .await?;
/// # Ok(()) }
/// ```
pub struct Leader {
    inner: Arc<Inner>,
    /// Set to `true` to end the campaign (resign or drop).
    stop: watch::Sender<bool>,
    /// The campaign: its result is the release of the last term's lock.
    task: Option<JoinHandle<Result<()>>>,
}

/// What the campaign and the handle share.
struct Inner {
    name: String,
    /// The lease of the current term, while this handle leads.
    term: Mutex<Option<Arc<Lease>>>,
    /// `true` while leading. Sent on every change, and on the end of a failed campaign.
    state: watch::Sender<bool>,
    /// The error that ended the campaign, for `run_while_leader` and `resign`.
    failed: Mutex<Option<LockError>>,
    /// The campaign ended (stopped, failed, or the manager shut down).
    ended: AtomicBool,
}

impl Inner {
    /// The current term's lease while it is valid.
    fn term(&self) -> Option<Arc<Lease>> {
        locked(&self.term)
            .as_ref()
            .filter(|lease| !lease.is_lost() && !lease.is_finished())
            .cloned()
    }

    /// Ends the term: from here on nothing says this handle leads. Done before the lock is
    /// given back, so the next leader cannot overlap it.
    fn step_down(&self) {
        locked(&self.term).take();
        self.state.send_replace(false);
    }
}

/// Whether an acquire error will come again however often it is tried.
fn is_permanent(e: &LockError) -> bool {
    matches!(
        e,
        LockError::InvalidName { .. }
            | LockError::InvalidTtl { .. }
            | LockError::InvalidConfig { .. }
    )
}

/// Another copy of a campaign's ending error (every one [`is_permanent`] is made of strings),
/// so that every caller of `run_while_leader` and `resign` gets it.
fn again(e: &LockError) -> LockError {
    match e {
        LockError::InvalidName { reason } => LockError::InvalidName {
            reason: reason.clone(),
        },
        LockError::InvalidTtl { reason } => LockError::InvalidTtl {
            reason: reason.clone(),
        },
        LockError::InvalidConfig { reason } => LockError::InvalidConfig {
            reason: reason.clone(),
        },
        other => LockError::InvalidConfig {
            reason: other.to_string(),
        },
    }
}

/// Resolves once the campaign is asked to stop (or its handle is gone).
async fn stop_asked(stopped: &mut watch::Receiver<bool>) {
    // The borrowed value is not kept: it must not live across the caller's awaits.
    let _ = stopped.wait_for(|stop| *stop).await.map(|_| ());
}

/// Campaigns until `stopped` or the manager is shut down: wins the lock, leads until it is
/// lost, and starts again. Returns the outcome of giving the lock back when stopped while
/// leading.
async fn campaign(
    manager: LockManager,
    inner: Arc<Inner>,
    ttl: Duration,
    stopped: watch::Receiver<bool>,
) -> Result<()> {
    let outcome = campaign_until_stopped(&manager, &inner, ttl, stopped).await;
    inner.ended.store(true, Ordering::Release);
    // Wakes `run_while_leader`, which then returns.
    inner.state.send_replace(false);
    outcome
}

async fn campaign_until_stopped(
    manager: &LockManager,
    inner: &Inner,
    ttl: Duration,
    mut stopped: watch::Receiver<bool>,
) -> Result<()> {
    let mut pause = CAMPAIGN_RETRY;
    loop {
        if manager.shared().is_shut_down() {
            tracing::info!(lock = %crate::validate::Logged(&inner.name), "the manager was shut down; leader campaign ended");
            return Ok(());
        }
        let won = {
            let acquire = manager
                .lock(inner.name.clone())
                .ttl(ttl)
                .auto_extend(true)
                .wait(Duration::MAX)
                .acquire();
            tokio::select! {
                biased;
                // Dropping the acquire in flight leaves no lock behind.
                () = stop_asked(&mut stopped) => return Ok(()),
                () = manager.shared().shut_down() => continue,
                won = acquire => won,
            }
        };
        let guard = match won {
            // Won while the manager was being shut down: not led.
            Ok(guard) if manager.shared().is_shut_down() => {
                let _ = guard.release().await;
                continue;
            }
            Ok(guard) => {
                pause = CAMPAIGN_RETRY;
                guard
            }
            Err(e) if is_permanent(&e) => {
                tracing::error!(lock = %crate::validate::Logged(&inner.name), error = %e, "leader campaign ended");
                *locked(&inner.failed) = Some(e);
                inner.step_down();
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(lock = %crate::validate::Logged(&inner.name), error = %e, retry_ms = pause.as_millis() as u64, "leader campaign failed; campaigning again");
                tokio::select! {
                    biased;
                    () = stop_asked(&mut stopped) => return Ok(()),
                    () = manager.shared().shut_down() => continue,
                    () = tokio::time::sleep(pause) => {}
                }
                // A failure that comes back at once (the name held with permits) backs off.
                pause = (pause * 2).min(CAMPAIGN_RETRY_MAX);
                continue;
            }
        };
        if let Some(outcome) = lead(inner, guard, &mut stopped).await {
            return outcome;
        }
    }
}

/// One term: says it leads until the lease is lost (then `None`: campaign again) or the
/// campaign is stopped (then the lock is given back, and its outcome returned).
async fn lead(
    inner: &Inner,
    guard: LockGuard,
    stopped: &mut watch::Receiver<bool>,
) -> Option<Result<()>> {
    *locked(&inner.term) = Some(Arc::clone(guard.lease()));
    inner.state.send_replace(true);
    let (label, kind) = (guard.lease().label.clone(), guard.lease().keys.kind);
    crate::metrics::leader(&label, kind, "elected");
    tracing::info!(lock = %crate::validate::Logged(&inner.name), "elected leader");
    tokio::select! {
        biased;
        () = stop_asked(stopped) => {
            inner.step_down();
            crate::metrics::leader(&label, kind, "resigned");
            tracing::info!(lock = %crate::validate::Logged(&inner.name), "resigned leadership");
            Some(guard.release().await.map(|_| ()))
        }
        () = guard.lost() => {
            // For good, even if a late renewal would revive the lease: the term is over, and
            // `run_while_leader` (watching the same lease) must see it over too.
            // A loss by the deadline is the term's to count; one a renewal found (the key
            // gone, or evicted) is counted there, with its reason.
            if guard.lease().remaining().is_zero() {
                guard.lease().report_lost(crate::metrics::Lost::Expired);
            }
            guard.lease().mark_lost();
            inner.step_down();
            crate::metrics::leader(&label, kind, "lost");
            tracing::warn!(lock = %crate::validate::Logged(&inner.name), holder = %crate::token::holder_or_unknown(guard.token()), "leadership lost; campaigning again");
            // Dropped: released in the background in case the key is still ours.
            None
        }
    }
}

impl Leader {
    /// `true` while this handle leads: it holds the lock and its lease is valid by the local
    /// deadline (checked at the call, not cached).
    pub fn is_leader(&self) -> bool {
        self.inner.term().is_some()
    }

    /// The lease of the current term, while this handle leads (the simulator's checks).
    #[cfg(test)]
    pub(crate) fn term(&self) -> Option<Arc<crate::lease::Lease>> {
        self.inner.term()
    }

    /// The leadership state, `true` while leading, for `changed().await` loops. It follows
    /// [`is_leader`](Self::is_leader) with the delay of a task wake-up: when it matters that
    /// the lease is valid at an instant, ask `is_leader()`, or use
    /// [`run_while_leader`](Self::run_while_leader), which cancels the work at the deadline.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.inner.state.subscribe()
    }

    /// Stops campaigning and gives the lock back if leading. It says it no longer leads
    /// before the release is sent. `Err` when the release could not be sent (it then goes on
    /// in the background until the lease would have run out), or with the error that ended
    /// the campaign.
    pub async fn resign(mut self) -> Result<()> {
        self.stop.send_replace(true);
        let outcome = match self.task.take() {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        };
        if let Some(e) = locked(&self.inner.failed).as_ref() {
            return Err(again(e));
        }
        outcome
    }

    /// Runs `f()` while this handle leads: waits to be elected, runs the future, and cancels
    /// it (drops it at its next await) as soon as the lease is lost; then waits to lead
    /// again and runs a new `f()`. Returns `Ok(())` when a future finishes by itself while
    /// leading (the handle still leads; [`resign`](Self::resign) hands over) or when the
    /// campaign ended because the manager was [shut down](LockManager::shutdown), and `Err`
    /// when the campaign ended with an error that campaigning again cannot cure (an invalid
    /// name or ttl, or a Redlock manager asked for something it refuses). Other errors (Redis
    /// unreachable, the name held for a while with [`permits`](crate::LockRequest::permits))
    /// are logged, and the campaign goes on.
    ///
    /// The loss is checked before the future is polled again: once the local deadline passed
    /// (a renewal failed, or the process was paused past it), the future does not run
    /// another step.
    pub async fn run_while_leader<F, Fut>(&self, mut f: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut state = self.inner.state.subscribe();
        loop {
            let term = loop {
                if let Some(e) = locked(&self.inner.failed).as_ref() {
                    return Err(again(e));
                }
                if let Some(term) = self.inner.term() {
                    break term;
                }
                if self.inner.ended.load(Ordering::Acquire) {
                    return Ok(());
                }
                // The sender lives as long as `self`.
                let _ = state.changed().await;
            };
            // The loss is checked before every poll of the work (see `Lease::until_lost`).
            let finished = term.until_lost(f()).await.is_some();
            if finished {
                return Ok(());
            }
            // Over for good, also for the campaign, even if a late renewal would revive it.
            term.mark_lost();
            tracing::info!(lock = %crate::validate::Logged(&self.inner.name), "leadership lost; the work is cancelled");
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        // The campaign gives the lock back (in the background) and ends.
        self.stop.send_replace(true);
    }
}

impl std::fmt::Debug for Leader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leader")
            .field("name", &self.inner.name)
            .field("is_leader", &self.is_leader())
            .finish_non_exhaustive()
    }
}
