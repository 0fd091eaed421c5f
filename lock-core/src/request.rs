//! `LockRequest`: the options of one acquisition, checked before any I/O, and what becomes of
//! the acquire loop's outcome (`acquire.rs`): a guard, `Busy` or `Timeout`.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{timeout_at, Instant};
use tracing::Instrument as _;

use crate::acquire::{later, line_keep, Acquisition, Line, Outcome};
use crate::backend::Ticket;
use crate::keys::LockKeys;
use crate::kind::Kind;
use crate::lease::Grant;
use crate::shared::Shared;
use crate::validate::{check_name, check_ttl};
use crate::{watchdog, LockError, LockGuard, Result};

/// The lease used when a request does not set one.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// One acquisition of a lock, made by [`LockManager::lock`](crate::LockManager::lock).
/// Defaults: ttl 30 s, no waiting, no watchdog.
///
/// Locks are not reentrant: a second acquisition of a name this task (or process) already holds
/// is `Busy` (or waits) like any other owner's.
#[derive(Clone)]
#[must_use = "a lock request does nothing until `.acquire()` or `.try_acquire()` is awaited"]
pub struct LockRequest<'a> {
    shared: &'a Arc<Shared>,
    name: String,
    ttl: Duration,
    wait: Duration,
    auto_extend: bool,
    min_hold: Option<Duration>,
    max_hold: Option<Duration>,
    fair: bool,
    /// The `lock` label of its metrics, when not the default.
    label: Option<String>,
    reentrant: bool,
    permits: u32,
    /// A shared (read) hold.
    read: bool,
}

impl std::fmt::Debug for LockRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockRequest")
            .field("name", &self.name)
            .field("ttl", &self.ttl)
            .field("wait", &self.wait)
            .field("auto_extend", &self.auto_extend)
            .field("min_hold", &self.min_hold)
            .field("max_hold", &self.max_hold)
            .field("fair", &self.fair)
            .field("label", &self.label)
            .field("reentrant", &self.reentrant)
            .field("permits", &self.permits)
            .field("shared", &self.read)
            .finish_non_exhaustive()
    }
}

impl<'a> LockRequest<'a> {
    pub(crate) fn new(shared: &'a Arc<Shared>, name: String) -> Self {
        Self {
            shared,
            name,
            ttl: DEFAULT_TTL,
            wait: Duration::ZERO,
            auto_extend: false,
            min_hold: None,
            max_hold: None,
            fair: false,
            label: None,
            reentrant: false,
            permits: 1,
            read: false,
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
    /// Attempts that fail on a communication error are retried while the wait lasts. The
    /// acquire returns by the end of the wait plus at most one response timeout.
    /// `Duration::MAX` waits as long as it takes.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Runs a watchdog that renews the lease (owner-checked) every ttl/3 while the guard lives.
    /// If a renewal finds the lock gone, the guard is lost for good; if the lease runs out while
    /// Redis does not answer, the guard is lost until a renewal gets through
    /// ([`LockGuard::is_lost`], [`LockGuard::lost`]).
    pub fn auto_extend(mut self, on: bool) -> Self {
        self.auto_extend = on;
        self
    }

    /// Keeps the lock at least this long after it was taken, even if released sooner
    /// (ShedLock's `lockAtLeastFor`): release then shortens the key's expiry to the end of the
    /// minimum hold instead of deleting it. Must not exceed the ttl.
    ///
    /// For a scheduled job, keep it shorter than the schedule period: its purpose is that a
    /// replica whose clock runs a little late does not run the same tick again after a fast
    /// run. A `min_hold` equal to (or longer than) the period keeps the lock into the next
    /// tick, so every replica, the last holder included, finds it held then and skips it:
    /// about every other tick is lost (6 of 11 ran in a two-replica test). A few seconds, or
    /// the clock skew you expect between replicas, is enough.
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

    /// Serves waiters in arrival order (default off). Waiters line up in Redis
    /// (`<prefix>{<name>}:q`, a hash of tickets in the lock's hash slot), so the order holds
    /// across tasks, managers and processes: the lock is taken only by the first in line, and a
    /// newcomer never overtakes a waiter, so nobody starves (the longest wait is about the line's
    /// length times the hold time). Every attempt refreshes the waiter's ticket; a waiter that
    /// stops (crashed, cancelled) leaves the line at once or, if it cannot say so, after three
    /// poll intervals plus a response timeout. The price: every attempt runs a script, and a
    /// free lock waits for whoever is first. Fairness is among fair requests: an unfair request
    /// still takes a free lock whenever it sees one.
    ///
    /// One server or a cluster; a Redlock manager refuses it with
    /// [`LockError::InvalidConfig`] (each instance would keep its own line).
    pub fn fair(mut self, on: bool) -> Self {
        self.fair = on;
        self
    }

    /// At most `n` holders of this name at once (default 1: a lock). A counting semaphore
    /// whose permits are leases: each holder's permit has its own lease, expires on its own
    /// when its holder crashes, is renewed by its own watchdog (`auto_extend`), is released by
    /// its owner only and reports its own loss. Waiters are woken when a permit frees (or when
    /// the first lease among the holders' runs out). Taking a permit is one script and one round
    /// trip, and so is giving it back, on the one key `<prefix>{<name>}` (a hash of the
    /// holders' tokens and lease ends; Cluster-safe).
    ///
    /// Every holder of a name must use the same `n`: a request whose `n` differs from the one
    /// the live holders use fails at once with [`LockError::PermitsMismatch`] (a plain lock is
    /// `n = 1`). `permits(1)` is exactly the lock, on the same `SET NX` path.
    ///
    /// Not with [`fair`](Self::fair), and not on Redlock: both are refused with
    /// [`LockError::InvalidConfig`] (on Redlock, `n + 1` holders could each find a majority
    /// of instances with a free permit). A permit's
    /// [`fencing_token`](LockGuard::fencing_token) is refused too: fencing orders holders that
    /// exclude each other, and up to `n` hold at once.
    pub fn permits(mut self, n: u32) -> Self {
        self.permits = n;
        self
    }

    /// A shared (read) hold (default `false`: exclusive, a write lock). Any number of shared
    /// holders of a name hold it at once, each on its own lease (renewed by its own watchdog
    /// with `auto_extend`, released by its owner only, lost on its own), and none while an
    /// exclusive holder of the name holds it: a read-write lock, whose writers are the name's
    /// ordinary exclusive (or [`fair`](Self::fair)) requests.
    ///
    /// Writers do not starve. A writer (an exclusive or fair request) that waits records a
    /// claim on the lock (`<prefix>{<name>}:x`); while any claim is live, no new shared hold is
    /// granted, so a writer waits at most for the shared holds live when it came (the longest
    /// of their leases, or `max_hold` with `auto_extend`), for the writers that came before it,
    /// and one handoff. Its grant ends its claim; a writer that stops waiting ends it in the
    /// background, and one that crashed lets it lapse after three
    /// [`max_poll_interval`](crate::LockManagerBuilder::max_poll_interval)s and a response
    /// timeout. Shared holds wait for writers in turn: a shared request waiting on a writer is
    /// woken by the writer's release, and shared requests can wait as long as writers keep
    /// coming (writers go first).
    ///
    /// Taking and giving back a shared hold is one script and one round trip each, on the one
    /// key `<prefix>{<name>}` (a hash of the holders' tokens and lease ends, as for
    /// [`permits`](Self::permits); Cluster-safe). Works on every deployment, Redlock included:
    /// a shared hold and an exclusive hold each need a majority of the instances, any two
    /// majorities share an instance, and no instance grants both at once.
    ///
    /// Not with `fair` nor `permits(n)` for `n > 1` ([`LockError::InvalidConfig`], before any
    /// I/O); a shared request on a name held with permits, or the reverse, fails with
    /// [`LockError::PermitsMismatch`]. A shared hold has no
    /// [`fencing_token`](LockGuard::fencing_token) (shared holders do not exclude each other);
    /// the exclusive holds of the name keep theirs, drawn after every shared hold that ended
    /// before them.
    pub fn shared(mut self, on: bool) -> Self {
        self.read = on;
        self
    }

    /// How long this request waits (for the attribute's `on_busy = "skip"`).
    pub(crate) fn waits_for(&self) -> Duration {
        self.wait
    }

    /// Reentrant (default `false`): when the current task already holds this name through this
    /// manager, as the lock of an enclosing `#[distributed_lock]` fn or of a guard whose
    /// [`holding`](LockGuard::holding) future it runs in, the acquisition succeeds
    /// at once, without a command, and gives a guard on that same lease whose release and drop
    /// end nothing: the enclosing holder releases. Task-scoped: a task spawned from the body is
    /// another owner and acquires (or waits) as usual. Without it, such a nested acquisition is
    /// refused (`Busy`) or waits for itself until its deadline. A reentrant acquisition gets the
    /// enclosing hold as it is: its own `ttl`, `auto_extend`, `min_hold` and the like do not
    /// apply.
    pub fn reentrant(mut self, on: bool) -> Self {
        self.reentrant = on;
        self
    }

    /// The `lock` label of this lock's metrics (feature `metrics`; see the crate docs), for
    /// example `"invoices"` for `invoices:{tenant}`. Without one, the label is the name up to
    /// its first `:`: a name without `:` is its own label, so name locks `kind:id` or set a
    /// label, or each lock becomes a series of its own. `#[distributed_lock]` labels by its key
    /// template.
    pub fn metrics_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Takes the lock, waiting up to the request's `wait`. [`LockError::Busy`] when another
    /// owner holds it and `wait` is zero; [`LockError::Timeout`] when it is still held after
    /// waiting.
    pub async fn acquire(self) -> Result<LockGuard> {
        let wait = self.wait;
        let shared = self.shared;
        let kind = self.validate()?;
        let began = Instant::now();
        match self.run(kind, wait).await? {
            Acquired::Guard(guard) => Ok(guard),
            Acquired::Busy { name, .. } if wait.is_zero() => {
                Err(refusal(shared, name, kind, began).await)
            }
            Acquired::Busy { name, waited } => Err(LockError::Timeout { name, waited }),
        }
    }

    /// Takes the lock if it is free right now; `Ok(None)` when another owner holds it.
    /// Ignores `wait`. [`LockError::PermitsMismatch`] when it is held with another number of
    /// [`permits`](Self::permits) (told with one more command, on the refusal path only).
    pub async fn try_acquire(self) -> Result<Option<LockGuard>> {
        let shared = self.shared;
        let kind = self.validate()?;
        let began = Instant::now();
        match self.run(kind, Duration::ZERO).await? {
            Acquired::Guard(guard) => Ok(Some(guard)),
            // A permit request's script reports other permits itself.
            Acquired::Busy { .. } if kind.counted() => Ok(None),
            // `SET NX` alone cannot tell a lock held with other permits.
            Acquired::Busy { name, .. } => match refusal(shared, name, kind, began).await {
                e @ LockError::PermitsMismatch { .. } => Err(e),
                _ => Ok(None),
            },
        }
    }

    /// The request's kind, once its options are checked (before any I/O).
    fn validate(&self) -> Result<Kind> {
        check_name(&self.name)?;
        let kind = Kind::of(
            &self.name,
            self.fair,
            self.permits,
            self.read,
            self.shared.by_majority(),
        )?;
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
            if let Some(min) = self.min_hold.filter(|&min| min > max) {
                return Err(LockError::InvalidTtl {
                    reason: format!(
                        "min_hold ({min:?}) is longer than max_hold ({max:?}); the lease lapses when max_hold ends"
                    ),
                });
            }
        }
        Ok(kind)
    }

    async fn run(mut self, kind: Kind, wait: Duration) -> Result<Acquired> {
        if self.reentrant {
            if let Some(lease) = crate::held::find(self.shared, &self.name) {
                if lease.keys.kind.permits() != kind.permits() {
                    // The enclosing hold is of another kind: a permit is no lock, nor the
                    // reverse, and a shared hold is not an exclusive one.
                    return Err(LockError::PermitsMismatch {
                        name: self.name,
                        held: lease.keys.kind.permits(),
                        requested: kind.permits(),
                    });
                }
                tracing::debug!(lock = %crate::validate::Logged(&self.name), "held by this task already; reentrant");
                return Ok(Acquired::Guard(LockGuard::nested(
                    Arc::clone(self.shared),
                    lease,
                )));
            }
        }
        let span =
            tracing::debug_span!("lock.acquire", lock = %crate::validate::Logged(&self.name));
        let label = self.shared.label(match self.label.take() {
            Some(label) => label,
            None => crate::metrics::default_label(&self.name).to_owned(),
        });
        let lease_len = self.max_hold.map_or(self.ttl, |max| max.min(self.ttl));
        let began = Instant::now();
        let keys = self.shared.keys(&self.name).of_kind(kind);
        // A fair acquisition's place in line, or a waiting writer's claim (both keep new shared
        // holds out while it waits): the same id for all its attempts.
        let ticket = (kind == Kind::Fair || kind == Kind::Exclusive && !wait.is_zero())
            .then(|| crate::token::ticket(&self.shared.settings().holder));
        let line = ticket.as_deref().map(|id| Line {
            shared: self.shared,
            keys: &keys,
            ticket: id,
            left: false,
        });
        let acquisition = Acquisition {
            shared: self.shared,
            keys: &keys,
            ticket: ticket.as_deref().map(|id| Ticket {
                id: id.into(),
                keep: line_keep(self.shared.settings()),
            }),
            name: &self.name,
            label: &label,
            waiting: None,
            lease_len,
            renewed: self.auto_extend,
            began,
            deadline: later(began, wait),
            watch: None,
            retried_broken: false,
            splits: 0,
            errors: 0,
            woken_by: "nothing",
        };
        let outcome = acquisition.run().instrument(span).await;
        match (line, &outcome) {
            // On Redlock, instances that refused the granted attempt (or answered late) keep
            // the writer's claim: it leaves them in the background too.
            (Some(line), Outcome::Granted(_)) if !self.shared.by_majority() => line.taken(),
            // Without the lock, the ticket leaves the line in the background.
            (line, _) => drop(line),
        }
        let ended = match &outcome {
            Outcome::Granted(_) => "acquired",
            Outcome::Busy { .. } if wait.is_zero() => "busy",
            Outcome::Busy { .. } => "timeout",
            Outcome::Failed(_) => "error",
        };
        crate::metrics::acquire(&label, kind, ended, began.elapsed());
        match outcome {
            Outcome::Granted(grant) => Ok(Acquired::Guard(self.into_guard(keys, grant, label))),
            Outcome::Busy { waited } => Ok(Acquired::Busy {
                name: self.name,
                waited,
            }),
            Outcome::Failed(e) => Err(e),
        }
    }

    fn into_guard(self, keys: LockKeys, grant: Grant, label: String) -> LockGuard {
        let lease = self
            .shared
            .grant(self.name, label, keys, self.ttl, grant, self.min_hold);
        if self.auto_extend {
            watchdog::start(self.shared, &lease, self.max_hold);
        }
        LockGuard::new(Arc::clone(self.shared), lease)
    }
}

/// Why an attempt without wait on `name` was refused ([`Shared::busy`]): best effort, and
/// within the bound of I4 (no wait, plus one response timeout, counted from `began`);
/// [`LockError::Busy`] naming no holder when the question gets no answer by then.
async fn refusal(shared: &Shared, name: String, kind: Kind, began: Instant) -> LockError {
    let bound = began + shared.settings().response_timeout;
    let keys = shared.keys(&name).of_kind(kind);
    timeout_at(bound, shared.busy(&keys))
        .await
        .unwrap_or(LockError::Busy { name, holder: None })
}

/// What a request ends with, short of an error.
enum Acquired {
    Guard(LockGuard),
    Busy { name: String, waited: Duration },
}
