//! The state of one held lock, shared by its guard, its watchdog and its manager: above all its
//! local deadline, and where that deadline came from.
//!
//! # How the deadline is kept (I1)
//!
//! A command that sets the key's expiry to `ttl` is applied by the server at some `T` no
//! earlier than its send time `s`, so the key lives at least until `s + ttl` unless a later
//! command changes it. The deadline is therefore always dated from a send time:
//!
//! - A grant gives `acquired + usable` (the attempt that took the lock, never an earlier one).
//! - A successful renewal sent at `s` moves the deadline to `s + usable` if `s` is later than
//!   the send time of the command that set the current one: the server applies one
//!   connection's commands in order, so the command sent last is the one whose expiry stands.
//!   A reply to an older command can only shorten the deadline, to its own `s + usable`: if
//!   it was applied last after all (a `NOSCRIPT` fallback sends its `EVAL` later than its
//!   first try), the key expires no earlier than that.
//! - A renewal in flight may be applied at any moment, before its reply is back, and set the
//!   expiry to `T + ttl'` with `T` no earlier than its send. So from the moment it is sent it
//!   caps the deadline at `max(basis send, its send) + ttl'`. Its answer lifts the cap: the
//!   server applied it exactly once, before answering.
//! - A renewal whose outcome stays unknown (timed out, connection cut, future dropped) may still
//!   land at any later time, also after a later command it overtakes. Its cap stays, as a
//!   *stray*, for the rest of the lease. So does every renewal's cap on a deployment whose
//!   client re-sends commands by itself (Redis Cluster): a copy may land later. Caps of the lease's usual length cost nothing; a
//!   shorter one (a manual `extend` with a smaller ttl) keeps the lease that short.
//!
//! Losing is not final in one case: a deadline that passed while Redis did not answer (the
//! lease may still exist on the server) comes back to life if a renewal then succeeds. A lease
//! found gone or owned by another is lost for good.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Notify, OnceCell};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::keys::LockKeys;
use crate::locked;

/// What the server granted to the attempt that took a lock.
pub(crate) struct Grant {
    /// That attempt's owner token.
    pub(crate) token: String,
    /// When that attempt was sent: the lease is dated from here.
    pub(crate) sent: Instant,
    /// The part of the lease the local deadline may count on, from `sent`.
    pub(crate) usable: Duration,
    /// A waiter's attempt took it (one that marks the key when refused): other waiters likely
    /// wait for it too, and have marked the key (see [`Command::Release`]'s `contended`).
    ///
    /// [`Command::Release`]: crate::command::Command::Release
    pub(crate) waited: bool,
}

pub(crate) struct Lease {
    /// Key of this lease in the manager's table of held locks.
    pub(crate) id: u64,
    pub(crate) name: String,
    /// The `lock` label of its metrics.
    pub(crate) label: String,
    pub(crate) keys: LockKeys,
    pub(crate) token: String,
    /// The lease requested at acquire time.
    pub(crate) ttl: Duration,
    /// A waiter's attempt took it ([`Grant::waited`]): its release sends the script first.
    pub(crate) waited: bool,
    /// Send time of the attempt that took the lock.
    pub(crate) acquired: Instant,
    pub(crate) min_hold: Option<Duration>,
    clock: Mutex<Clock>,
    /// Set once the lease is known lost for good (a store said it is not ours, `shutdown`).
    lost: AtomicBool,
    /// Set once its loss was counted (`lock_lost_total`), by whoever noticed it first.
    reported: AtomicBool,
    /// Set once a WARN has told of its loss: later news of the same loss is logged lower.
    warned: AtomicBool,
    /// Set by whoever ends the lease (release, drop or shutdown): exactly one of them does.
    finished: AtomicBool,
    /// Woken when `lost` is set or the deadline moves.
    changed: Notify,
    watchdog: Mutex<Option<JoinHandle<()>>>,
    /// The fencing token, drawn on first use.
    pub(crate) fence: OnceCell<u64>,
}

/// Where the deadline came from.
struct Clock {
    /// Send time of the latest-sent command known to have set the key's expiry.
    basis: Instant,
    /// `basis` plus that command's usable lease.
    deadline: Instant,
    /// Commands whose outcome is unknown, merged conservatively: the earliest send and the
    /// shortest usable lease among them.
    stray: Option<(Instant, Duration)>,
    /// Renewals sent and not answered yet: (ticket, send time, usable lease).
    in_flight: Vec<(u64, Instant, Duration)>,
    next_ticket: u64,
}

impl Clock {
    fn deadline(&self) -> Instant {
        let cap = |sent: Instant, len: Duration| sent.max(self.basis) + len;
        let mut deadline = self.deadline;
        if let Some((sent, len)) = self.stray {
            deadline = deadline.min(cap(sent, len));
        }
        for &(_, sent, len) in &self.in_flight {
            deadline = deadline.min(cap(sent, len));
        }
        deadline
    }

    fn add_stray(&mut self, sent: Instant, usable: Duration) {
        self.stray = Some(match self.stray {
            Some((s, l)) => (s.min(sent), l.min(usable)),
            None => (sent, usable),
        });
    }
}

/// How a renewal ended, for [`Renewing::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Landed {
    /// Applied, for this usable lease from the send.
    Applied(Duration),
    /// Applied where it was answered, unknown elsewhere (Redlock): it may still land there.
    AppliedPartly(Duration),
    /// Certainly not applied (refused, never sent, or the key was not ours).
    NotApplied,
    /// Sent, no answer: it may land at any time.
    Unknown,
}

/// A renewal in flight: caps the deadline until [`finish`](Self::finish)ed. Dropped unfinished
/// (its future was cancelled), its outcome is unknown.
pub(crate) struct Renewing<'a> {
    lease: &'a Lease,
    ticket: u64,
    sent: Instant,
    usable: Duration,
    finished: bool,
}

impl Renewing<'_> {
    pub(crate) fn finish(mut self, landed: Landed) {
        self.finished = true;
        self.lease
            .landed(self.ticket, self.sent, self.usable, landed);
    }
}

impl Drop for Renewing<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.lease
                .landed(self.ticket, self.sent, self.usable, Landed::Unknown);
        }
    }
}

impl Lease {
    pub(crate) fn new(
        id: u64,
        name: String,
        label: String,
        keys: LockKeys,
        ttl: Duration,
        grant: Grant,
        min_hold: Option<Duration>,
    ) -> Self {
        Self {
            id,
            name,
            label,
            keys,
            token: grant.token,
            ttl,
            waited: grant.waited,
            acquired: grant.sent,
            min_hold,
            clock: Mutex::new(Clock {
                basis: grant.sent,
                deadline: grant.sent + grant.usable,
                stray: None,
                in_flight: Vec::new(),
                next_ticket: 0,
            }),
            lost: AtomicBool::new(false),
            reported: AtomicBool::new(false),
            warned: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            changed: Notify::new(),
            watchdog: Mutex::new(None),
            fence: OnceCell::new(),
        }
    }

    /// The local end of the lease: never later than the server's expiry (I1).
    pub(crate) fn deadline(&self) -> Instant {
        locked(&self.clock).deadline()
    }

    /// A renewal for `usable` is being sent now: it caps the deadline until it is answered.
    pub(crate) fn renewing(&self, usable: Duration) -> Renewing<'_> {
        let sent = Instant::now();
        let mut clock = locked(&self.clock);
        let ticket = clock.next_ticket;
        clock.next_ticket += 1;
        clock.in_flight.push((ticket, sent, usable));
        drop(clock);
        // The cap may bring the deadline closer: `lost()` must wake for the new one.
        self.changed.notify_waiters();
        Renewing {
            lease: self,
            ticket,
            sent,
            usable,
            finished: false,
        }
    }

    fn landed(&self, ticket: u64, sent: Instant, usable: Duration, landed: Landed) {
        let mut clock = locked(&self.clock);
        clock.in_flight.retain(|&(t, ..)| t != ticket);
        let applied = match landed {
            Landed::Applied(usable) => Some(usable),
            Landed::AppliedPartly(usable) => {
                clock.add_stray(sent, usable);
                Some(usable)
            }
            Landed::Unknown => {
                clock.add_stray(sent, usable);
                None
            }
            Landed::NotApplied => None,
        };
        if let Some(usable) = applied {
            if sent > clock.basis {
                clock.basis = sent;
                clock.deadline = sent + usable;
            } else {
                // Sent no later than the command that set the deadline: either may have been
                // applied last, and the key lives at least until the earlier of the two ends.
                clock.deadline = clock.deadline.min(sent + usable);
            }
        }
        drop(clock);
        self.changed.notify_waiters();
    }

    pub(crate) fn remaining(&self) -> Duration {
        self.deadline().saturating_duration_since(Instant::now())
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire) || Instant::now() >= self.deadline()
    }

    /// Whether it was marked lost ([`mark_lost`](Self::mark_lost)), whatever its deadline says.
    pub(crate) fn marked_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Known lost for good: the key is gone or another owner's.
    pub(crate) fn mark_lost(&self) {
        if !self.lost.swap(true, Ordering::AcqRel) {
            self.changed.notify_waiters();
        }
    }

    /// Counts the lease's loss for `reason` (`lock_lost_total`), once per lease whoever notices
    /// it (a renewal, a fencing token, the watchdog, the end of the lease, a leader): `true`
    /// for the first, which also logs it.
    pub(crate) fn report_lost(&self, reason: crate::metrics::Lost) -> bool {
        if self.reported.swap(true, Ordering::AcqRel) {
            return false;
        }
        // Whatever the server says now, a lease whose local deadline had passed ran out first.
        let reason = match reason {
            crate::metrics::Lost::NotOurs if Instant::now() >= self.deadline() => {
                crate::metrics::Lost::Expired
            }
            reason => reason,
        };
        crate::metrics::lost(&self.label, self.keys.kind, reason);
        true
    }

    /// Whether this is the first WARN about the lease's loss (`true` once): a renewal, the
    /// release and the watchdog that each find the same loss warn once between them.
    pub(crate) fn first_loss_warning(&self) -> bool {
        !self.warned.swap(true, Ordering::AcqRel)
    }

    /// The lease holds again (a renewal got through after it ran out): a later loss is news.
    pub(crate) fn held_again(&self) {
        self.warned.store(false, Ordering::Release);
    }

    /// Whether a WARN has told of the lease's loss already.
    pub(crate) fn loss_warned(&self) -> bool {
        self.warned.load(Ordering::Acquire)
    }

    /// Resolves once the lease is lost: flagged lost, or its local deadline has passed.
    pub(crate) async fn lost(&self) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_lost() {
                return;
            }
            // The deadline may move while we sleep; the loop re-reads it.
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(self.deadline()) => {}
            }
        }
    }

    /// Runs `work` while the lease holds: `Some(output)` when it finished first, `None` once
    /// the lease is lost (`work` is then dropped at its current await point).
    ///
    /// The loss is checked before every poll of `work`, not only when a timer or a message says
    /// so. A runtime thread that stalled past the deadline (a blocking call) wakes the work's
    /// timer and the loss together; the work must not run one more step then, whatever order
    /// the wake-ups come in.
    pub(crate) async fn until_lost<F: std::future::Future>(&self, work: F) -> Option<F::Output> {
        use std::future::Future as _;
        let mut work = std::pin::pin!(work);
        let mut lost = std::pin::pin!(self.lost());
        std::future::poll_fn(|cx| {
            if self.is_lost() || lost.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(None);
            }
            work.as_mut().poll(cx).map(Some)
        })
        .await
    }

    /// Claims the right to end the lease. `true` for exactly one caller.
    pub(crate) fn claim(&self) -> bool {
        !self.finished.swap(true, Ordering::AcqRel)
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    pub(crate) fn set_watchdog(&self, task: JoinHandle<()>) {
        *locked(&self.watchdog) = Some(task);
    }

    /// Stops the watchdog without waiting for it (usable outside a runtime). Returns its handle
    /// so an async caller can wait until an extension in flight has been dropped.
    pub(crate) fn stop_watchdog(&self) -> Option<JoinHandle<()>> {
        let handle = locked(&self.watchdog).take();
        if let Some(h) = &handle {
            h.abort();
        }
        handle
    }

    /// When `min_hold` ends, if one was asked for. Dated from the acquire's send: the key
    /// cannot have been set earlier, so it is kept at least that long.
    pub(crate) fn min_hold_end(&self) -> Option<Instant> {
        self.min_hold.map(|min| self.acquired + min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(ttl: Duration) -> Lease {
        Lease::new(
            1,
            "n".to_owned(),
            "n".to_owned(),
            LockKeys::new("lock:", "n"),
            ttl,
            Grant {
                token: "t".to_owned(),
                sent: Instant::now(),
                usable: ttl,
                waited: false,
            },
            None,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn lost_wakes_for_a_renewal_in_flight_that_shortens_the_lease() {
        let lease = lease(Duration::from_secs(30));
        let renewing = lease.renewing(Duration::from_secs(2));
        assert!(
            lease.remaining() <= Duration::from_secs(2),
            "capped at once"
        );
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(3), lease.lost())
            .await
            .expect("lost() resolves at the capped deadline, not the old one");
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        renewing.finish(Landed::Unknown);
        assert!(lease.is_lost());
    }

    #[tokio::test(start_paused = true)]
    async fn the_renewal_sent_last_sets_the_deadline_and_older_replies_only_shorten_it() {
        let lease = lease(Duration::from_secs(10));
        let long = lease.renewing(Duration::from_secs(30));
        tokio::time::advance(Duration::from_millis(5)).await;
        let short = lease.renewing(Duration::from_millis(300));
        short.finish(Landed::Applied(Duration::from_millis(300)));
        long.finish(Landed::Applied(Duration::from_secs(30)));
        assert_eq!(lease.remaining(), Duration::from_millis(300));
        // An unknown outcome stays a cap for the rest of the lease.
        let lost = lease.renewing(Duration::from_millis(100));
        lost.finish(Landed::Unknown);
        let next = lease.renewing(Duration::from_secs(30));
        next.finish(Landed::Applied(Duration::from_secs(30)));
        assert_eq!(lease.remaining(), Duration::from_millis(100));
    }
}
