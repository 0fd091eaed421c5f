//! The acquire loop: attempts, each with a fresh token, until one is granted or the deadline
//! passes; the waiting between them (woken by the release, bounded by polls); and a fair
//! acquisition's place in line.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{timeout_at, Instant};

use crate::backend::{Answer, Ticket, Watch};
use crate::keys::LockKeys;
use crate::kind::Kind;
use crate::lease::Grant;
use crate::shared::{Shared, Tried};
use crate::token::random_u64;
use crate::validate::MIN_TTL;
use crate::LockError;
/// How an acquisition ended.
pub(crate) enum Outcome {
    Granted(Grant),
    /// Another owner still held the lock at the deadline.
    Busy {
        waited: Duration,
    },
    Failed(LockError),
}

/// What the acquisition does next, as an attempt's answer calls for.
pub(crate) enum Step {
    /// Attempt again at once.
    Attempt,
    /// Subscribe to release notifications, then attempt again at once.
    Subscribe,
    /// Wait for a release notification, at most this long, then attempt again; the label
    /// says what the pause was for if it runs out ("timer": a poll; "retry": a pause after a
    /// failed attempt).
    Sleep(Duration, &'static str),
    /// Pause this long whatever happens, then attempt again (after a split vote: the other
    /// waiters' give-backs publish too, and waking on those would keep them all in step).
    Pause(Duration),
    Done(Outcome),
}

/// The acquire loop: attempts, each with a fresh token, until one is granted or the deadline
/// passes. Every attempt is bounded by the deadline plus one response timeout (I4).
pub(crate) struct Acquisition<'a> {
    pub(crate) shared: &'a Arc<Shared>,
    pub(crate) keys: &'a LockKeys,
    /// A fair acquisition's place in line.
    pub(crate) ticket: Option<Ticket<'a>>,
    pub(crate) name: &'a str,
    /// Its `lock` metric label.
    pub(crate) label: &'a str,
    /// Counted in `lock_waiting` from its first refusal to its end.
    pub(crate) waiting: Option<crate::metrics::Waiting<'a>>,
    pub(crate) lease_len: Duration,
    /// Whether a watchdog will renew the lease (`auto_extend`), recorded in the token.
    pub(crate) renewed: bool,
    pub(crate) began: Instant,
    pub(crate) deadline: Instant,
    /// Release notifications, set up after the first refusal: never on the uncontended path.
    pub(crate) watch: Option<Watch>,
    /// The one immediate retry after a broken connection was used.
    pub(crate) retried_broken: bool,
    /// Split votes in a row (Redlock), each answered with a short random pause.
    pub(crate) splits: u32,
    /// Failed attempts in a row: the pause before the next doubles with each (from
    /// [`ERROR_RETRY`] to [`ERROR_RETRY_MAX`]), so that waiters do not hammer a server that is
    /// down.
    pub(crate) errors: u32,
    /// What ended the last sleep ("message": a release or subscription notification, "timer":
    /// the poll interval or the holder's lease end, "retry": the pause after a failed attempt),
    /// reported with the grant.
    pub(crate) woken_by: &'static str,
}

impl Acquisition<'_> {
    pub(crate) async fn run(mut self) -> Outcome {
        let mut step = Step::Attempt;
        loop {
            step = match step {
                Step::Done(outcome) => return outcome,
                Step::Attempt => self.attempt().await,
                Step::Sleep(..) | Step::Pause(_) => unreachable!("slept in `attempt`"),
                Step::Subscribe => {
                    self.waiting = Some(crate::metrics::Waiting::start(self.label, self.keys.kind));
                    // An attempt follows at once: the lock may have been released before the
                    // subscription was in place. With no time left to subscribe, it is the last.
                    // Only a fair waiter may skip a release that names another one first.
                    let fair = self
                        .ticket
                        .as_ref()
                        .filter(|_| self.keys.kind == Kind::Fair);
                    let subscribe = self.shared.watch(self.keys, fair.map(|t| t.id.as_ref()));
                    self.watch = timeout_at(self.deadline, subscribe).await.ok();
                    Step::Attempt
                }
            };
        }
    }

    /// One attempt, then the wait its answer calls for (woken early by a release).
    async fn attempt(&mut self) -> Step {
        // Enabled before the attempt, so a release that lands after it wakes us.
        let notify = self.watch.as_ref().map(|w| Arc::clone(w.notify()));
        let notified = notify.as_ref().map(|n| n.notified());
        let mut notified = pin!(notified);
        if let Some(n) = notified.as_mut().as_pin_mut() {
            n.enable();
        }
        let bound = self.bound();
        let attempt = self.shared.attempt(
            self.keys,
            self.name,
            (self.lease_len, self.renewed),
            self.watch.is_some(),
            self.ticket.clone(),
        );
        let tried = timeout_at(bound, attempt)
            .await
            .unwrap_or_else(|_| Tried::Failed(no_answer_by_deadline(), None));
        match self.decide(tried).await {
            Step::Sleep(pause, timer) => {
                let pause = pause.min(self.deadline.saturating_duration_since(Instant::now()));
                self.woken_by = match notified.as_mut().as_pin_mut() {
                    Some(n) => match tokio::time::timeout(pause, n).await {
                        Ok(()) => "message",
                        Err(_) => timer,
                    },
                    None => {
                        tokio::time::sleep(pause).await;
                        timer
                    }
                };
                Step::Attempt
            }
            Step::Pause(pause) => {
                let pause = pause.min(self.deadline.saturating_duration_since(Instant::now()));
                tokio::time::sleep(pause).await;
                self.woken_by = "retry";
                Step::Attempt
            }
            step => step,
        }
    }

    async fn decide(&mut self, tried: Tried) -> Step {
        if !matches!(tried, Tried::Refused(Answer::Undecided { .. })) {
            self.splits = 0;
        }
        // Only an answer resets the backoff: a Redlock attempt without a majority either way
        // (instances down) backs off like an error.
        if matches!(
            tried,
            Tried::Granted(_) | Tried::Refused(Answer::NotApplied(_))
        ) {
            self.errors = 0;
        }
        let now = Instant::now();
        let out_of_time = now >= self.deadline;
        match tried {
            Tried::Granted(grant) => {
                tracing::debug!(
                    waited_ms = self.began.elapsed().as_millis() as u64,
                    woken_by = self.woken_by,
                    "acquired"
                );
                Step::Done(Outcome::Granted(grant))
            }
            Tried::Refused(Answer::Undecided {
                granted,
                needed,
                refused,
            }) => {
                let e = LockError::NoQuorum {
                    name: self.name.to_owned(),
                    granted,
                    needed,
                };
                if granted > 0 && refused > 0 && !out_of_time && self.splits < MAX_SPLITS {
                    // A split vote: waiters woken by the same release took different instances,
                    // and each has given its share back. Pauses of a few round trips, drawn at
                    // random, let one of them take them all on the next try. A few in a row at
                    // most: the same answers also come from a holder that only a minority sees.
                    self.splits += 1;
                    tracing::debug!(granted, refused, "split vote; retrying shortly");
                    Step::Pause(split_pause())
                } else {
                    self.retry_after(e, out_of_time)
                }
            }
            Tried::Refused(held) => {
                let left = held.left();
                if out_of_time {
                    let waited = now.duration_since(self.began);
                    tracing::debug!(
                        waited_ms = waited.as_millis() as u64,
                        "held by another owner"
                    );
                    Step::Done(Outcome::Busy { waited })
                } else if self.watch.is_none() {
                    Step::Subscribe
                } else {
                    // Woken by the release; else poll, no later than the holder's lease end
                    // (a crashed holder publishes nothing).
                    let poll = jittered(self.shared.settings().poll_cap);
                    Step::Sleep(left.map_or(poll, |left| poll.min(left + MIN_TTL)), "timer")
                }
            }
            // Waiting cannot end it: the other holders keep their `n` until they all let go.
            Tried::Failed(e @ LockError::PermitsMismatch { .. }, _) => {
                Step::Done(Outcome::Failed(e))
            }
            Tried::Failed(e, orphan) if e.is_broken_connection() && !self.retried_broken => {
                // The shared connection reconnects now: one more attempt right away is worth
                // it, even without a wait (the first acquire after a Redis restart). If the
                // broken attempt may have set the key, it is deleted by its token first, so
                // the retry does not find it.
                tracing::debug!(error = %e, "connection lost; retrying once on a new connection");
                self.retried_broken = true;
                if let Some(orphan) = orphan {
                    // Within the same bound as the attempts; past it, the background does it.
                    let _ = timeout_at(self.bound(), orphan.release_now()).await;
                }
                Step::Attempt
            }
            Tried::Failed(e, _orphan) => self.retry_after(e, out_of_time),
        }
    }

    /// No attempt runs past the deadline plus one response timeout (I4).
    fn bound(&self) -> Instant {
        later(self.deadline, self.shared.settings().response_timeout)
    }

    /// After an error: another try while the wait lasts (a reconnect, a restart), else the
    /// error.
    fn retry_after(&mut self, e: LockError, out_of_time: bool) -> Step {
        if out_of_time {
            return Step::Done(Outcome::Failed(e));
        }
        let pause = ERROR_RETRY
            .saturating_mul(1 << self.errors.min(8))
            .min(ERROR_RETRY_MAX);
        self.errors += 1;
        tracing::debug!(error = %e, pause_ms = pause.as_millis() as u64, "retrying while the wait lasts");
        Step::Sleep(jittered(pause), "retry")
    }
}

/// The attempt in flight when the deadline plus one response timeout passed.
fn no_answer_by_deadline() -> LockError {
    LockError::Redis(redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "no answer to the acquire attempt by the end of the wait plus the response timeout",
    )))
}

/// A fair acquisition's ticket while it may be in line, or a waiting writer's claim: when the
/// acquisition ends without the lock (timed out, failed, or its future dropped), the ticket
/// leaves the line (the claim is taken out) in the background, so that the waiters behind it
/// need not wait for it to expire.
pub(crate) struct Line<'a> {
    pub(crate) shared: &'a Arc<Shared>,
    pub(crate) keys: &'a LockKeys,
    pub(crate) ticket: &'a str,
    pub(crate) left: bool,
}

impl Line<'_> {
    /// The acquisition took the lock: its winning attempt took the ticket out of the line (the
    /// claim out of the claims).
    pub(crate) fn taken(mut self) {
        self.left = true;
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if !self.left {
            self.shared
                .leave_in_background(self.keys.clone(), self.ticket.to_owned());
        }
    }
}

/// How long a fair ticket stays in line without an attempt refreshing it: a waiter attempts at
/// least every `max_poll_interval`, each attempt within a response timeout.
pub(crate) fn line_keep(settings: &crate::shared::Settings) -> Duration {
    settings.poll_cap * 3 + settings.response_timeout
}

/// `t + d`, or a century after `t` when that overflows: `wait(Duration::MAX)` waits "forever".
pub(crate) fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .unwrap_or_else(|| t + crate::validate::MAX_TTL)
}

/// Pause before retrying after a communication error; it doubles with each error in a row.
const ERROR_RETRY: Duration = Duration::from_millis(50);

/// The longest pause between attempts that fail in a row.
const ERROR_RETRY_MAX: Duration = Duration::from_secs(1);

/// The longest pause after a split vote (Redlock): a few round trips on a LAN.
const SPLIT_RETRY: Duration = Duration::from_millis(4);

/// Split votes in a row answered with a short pause; after that, the usual error pause.
const MAX_SPLITS: u32 = 3;

/// A pause drawn uniformly from zero to [`SPLIT_RETRY`].
fn split_pause() -> Duration {
    Duration::from_nanos(random_u64() % (SPLIT_RETRY.as_nanos() as u64 + 1))
}

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
