//! Metrics through the `metrics` facade (feature `metrics`); without it, these do nothing. The
//! names, units and labels are listed in the crate docs' Metrics section, and described to the
//! recorder when a manager is built ([`describe`]).

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use crate::kind::Kind;
use crate::locked;

/// The label of a lock without one of its own: its name up to the first `:` (all of it when
/// it has none).
pub(crate) fn default_label(name: &str) -> &str {
    name.split(':').next().unwrap_or(name)
}

/// The `lock` label value of locks past a manager's bound on distinct labels.
pub(crate) const OVERFLOW_LABEL: &str = "_other";

/// A manager's bound on the distinct values of the `lock` label: a new value past the bound is
/// reported as [`OVERFLOW_LABEL`], with one warning, so that names that carry an id (`job-17`,
/// `tenant.5.report`) cannot grow the series without end.
pub(crate) struct Labels {
    limit: usize,
    seen: Mutex<HashSet<String>>,
}

impl Labels {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            seen: Mutex::default(),
        }
    }

    /// The label to report for `wanted`: itself while it is among the first `limit` distinct
    /// values, else [`OVERFLOW_LABEL`].
    pub(crate) fn bound(&self, wanted: String) -> String {
        if !cfg!(feature = "metrics") {
            return wanted; // nothing is recorded: nothing to bound
        }
        let mut seen = locked(&self.seen);
        if seen.contains(&wanted) {
            return wanted;
        }
        if seen.len() < self.limit {
            seen.insert(wanted.clone());
            return wanted;
        }
        if seen.insert(OVERFLOW_LABEL.to_owned()) {
            tracing::warn!(
                limit = self.limit,
                label = %wanted.escape_debug(),
                "more distinct `lock` metric labels than the manager's metrics_label_limit; this one and later new ones are reported as `_other` (label locks by kind: `invoices:{{id}}`, or LockRequest::metrics_label)"
            );
        }
        OVERFLOW_LABEL.to_owned()
    }
}

/// Why a lease was lost, the `reason` of `lock_lost_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lost {
    /// The server said the key was gone or another owner's (a renewal, a fencing token or the
    /// release found it so), before the local deadline passed.
    NotOurs,
    /// The local deadline passed before the lease was renewed or ended: renewals failed
    /// (Redis unreachable), no watchdog renewed it, or the process stalled past it.
    Expired,
    /// The watchdog stopped renewing at `max_hold`, and the lease ran out while held.
    MaxHold,
    /// An operator force-released it (the record force.lua leaves says so).
    Evicted,
}

impl Lost {
    fn label(self) -> &'static str {
        match self {
            Lost::NotOurs => "not_ours",
            Lost::Expired => "expired",
            Lost::MaxHold => "max_hold",
            Lost::Evicted => "evicted",
        }
    }
}

#[cfg(feature = "metrics")]
mod on {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    use tokio::time::Instant;

    use crate::locked;

    use metrics::Unit;

    pub(crate) fn describe() {
        metrics::describe_counter!(
            "lock_acquire_total",
            Unit::Count,
            "Acquisitions ended, by outcome: acquired, busy (no wait), timeout, error"
        );
        metrics::describe_histogram!(
            "lock_wait_seconds",
            Unit::Seconds,
            "Time from a request to its end, by outcome (acquired, busy, timeout, error)"
        );
        metrics::describe_histogram!(
            "lock_hold_seconds",
            Unit::Seconds,
            "Time from a grant to its release, drop or shutdown"
        );
        metrics::describe_counter!(
            "lock_extend_total",
            Unit::Count,
            "Renewals ended, by outcome: renewed, not_ours, error"
        );
        metrics::describe_counter!(
            "lock_lost_total",
            Unit::Count,
            "Leases lost while held, each counted once, by reason: not_ours, evicted, expired, max_hold"
        );
        metrics::describe_gauge!("lock_held", Unit::Count, "Locks this process holds now");
        metrics::describe_gauge!(
            "lock_oldest_held_seconds",
            Unit::Seconds,
            "How long the oldest lock this process holds now has been held (0 when none), updated every second"
        );
        metrics::describe_gauge!(
            "lock_waiting",
            Unit::Count,
            "Acquisitions of this process waiting now (refused once, still within their wait)"
        );
        metrics::describe_gauge!(
            "lock_leader",
            Unit::Count,
            "1 while this process leads the election, else 0"
        );
        metrics::describe_counter!(
            "lock_leader_changes_total",
            Unit::Count,
            "Leadership changes of this process, by change: elected, lost, resigned"
        );
    }

    pub(crate) fn acquire(
        label: &str,
        kind: &'static str,
        outcome: &'static str,
        waited: Duration,
    ) {
        metrics::counter!("lock_acquire_total", "lock" => label.to_owned(), "kind" => kind, "outcome" => outcome)
            .increment(1);
        metrics::histogram!("lock_wait_seconds", "lock" => label.to_owned(), "kind" => kind, "outcome" => outcome)
            .record(waited.as_secs_f64());
    }

    pub(crate) fn held(label: &str, kind: &'static str, acquired: Instant) {
        metrics::gauge!("lock_held", "lock" => label.to_owned(), "kind" => kind).increment(1.0);
        *locked(&HOLDS)
            .entry(label.to_owned())
            .or_default()
            .entry(kind)
            .or_default()
            .entry(acquired)
            .or_default() += 1;
        if !TICKING.load(Ordering::Acquire) && !TICKING.swap(true, Ordering::AcqRel) {
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => drop(handle.spawn(keep_oldest())),
                Err(_) => TICKING.store(false, Ordering::Release),
            }
        }
    }

    pub(crate) fn released(label: &str, kind: &'static str, acquired: Instant) {
        metrics::gauge!("lock_held", "lock" => label.to_owned(), "kind" => kind).decrement(1.0);
        metrics::histogram!("lock_hold_seconds", "lock" => label.to_owned(), "kind" => kind)
            .record(acquired.elapsed().as_secs_f64());
        let (none_left, nothing_held) = {
            let mut holds = locked(&HOLDS);
            let Some(kinds) = holds.get_mut(label) else {
                return;
            };
            let none_left = kinds.get_mut(kind).is_some_and(|at| {
                if let Some(count) = at.get_mut(&acquired) {
                    *count -= 1;
                    if *count == 0 {
                        at.remove(&acquired);
                    }
                }
                at.is_empty()
            });
            if none_left {
                kinds.remove(kind);
                if kinds.is_empty() {
                    holds.remove(label);
                }
            }
            (none_left, holds.is_empty())
        };
        if none_left {
            metrics::gauge!("lock_oldest_held_seconds", "lock" => label.to_owned(), "kind" => kind)
                .set(0.0);
        }
        if nothing_held {
            EMPTIED.notify_waiters();
        }
    }

    /// This process's holds now, for `lock_oldest_held_seconds`: by label and kind, when each
    /// was taken (a count per instant). Process-wide, like the series it feeds: every manager
    /// of the process adds to it.
    static HOLDS: Mutex<BTreeMap<String, BTreeMap<&'static str, TakenAt>>> =
        Mutex::new(BTreeMap::new());

    /// When each hold of one label and kind was taken: how many at each instant.
    type TakenAt = BTreeMap<Instant, u32>;
    /// A task keeps `lock_oldest_held_seconds` up to date (while a lock is held).
    static TICKING: AtomicBool = AtomicBool::new(false);
    /// Woken when the last hold of the process ends, so that the task ends at once.
    static EMPTIED: tokio::sync::Notify = tokio::sync::Notify::const_new();

    /// Clears [`TICKING`] when the task ends, however it ends (its runtime shutting down
    /// included), so that the next grant starts it again.
    struct Running;

    impl Drop for Running {
        fn drop(&mut self) {
            TICKING.store(false, Ordering::Release);
        }
    }

    /// Sets `lock_oldest_held_seconds` every second while this process holds a lock: for each
    /// label and kind, how long ago its oldest hold was taken (a label and kind whose last hold
    /// ends is set to 0 then, by `released`). Ends once nothing is held; the next grant starts
    /// it again.
    async fn keep_oldest() {
        loop {
            let running = Running;
            while_held().await;
            drop(running);
            // A grant since the last look found the flag still set, and started nothing.
            if locked(&HOLDS).is_empty() || TICKING.swap(true, Ordering::AcqRel) {
                return;
            }
        }
    }

    async fn while_held() {
        loop {
            let emptied = EMPTIED.notified();
            tokio::pin!(emptied);
            emptied.as_mut().enable();
            let ages: Vec<(String, &'static str, Duration)> = {
                let holds = locked(&HOLDS);
                holds
                    .iter()
                    .flat_map(|(label, kinds)| {
                        kinds.iter().filter_map(move |(kind, at)| {
                            let (oldest, _) = at.first_key_value()?;
                            Some((label.clone(), *kind, oldest.elapsed()))
                        })
                    })
                    .collect()
            };
            if ages.is_empty() {
                return;
            }
            for (label, kind, age) in ages {
                metrics::gauge!("lock_oldest_held_seconds", "lock" => label, "kind" => kind)
                    .set(age.as_secs_f64());
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = &mut emptied => {}
            }
        }
    }

    pub(crate) fn extend(label: &str, kind: &'static str, outcome: &'static str) {
        metrics::counter!("lock_extend_total", "lock" => label.to_owned(), "kind" => kind, "outcome" => outcome)
            .increment(1);
    }

    pub(crate) fn lost(label: &str, kind: &'static str, reason: &'static str) {
        metrics::counter!("lock_lost_total", "lock" => label.to_owned(), "kind" => kind, "reason" => reason)
            .increment(1);
    }

    pub(crate) fn waiting(label: &str, kind: &'static str, delta: f64) {
        metrics::gauge!("lock_waiting", "lock" => label.to_owned(), "kind" => kind)
            .increment(delta);
    }

    pub(crate) fn leader(label: &str, kind: &'static str, change: &'static str) {
        let leads = if change == "elected" { 1.0 } else { 0.0 };
        metrics::gauge!("lock_leader", "lock" => label.to_owned(), "kind" => kind).set(leads);
        metrics::counter!("lock_leader_changes_total", "lock" => label.to_owned(), "kind" => kind, "change" => change)
            .increment(1);
    }
}

#[cfg(not(feature = "metrics"))]
mod on {
    use std::time::Duration;

    use tokio::time::Instant;

    pub(crate) fn describe() {}
    pub(crate) fn acquire(_: &str, _: &'static str, _: &'static str, _: Duration) {}
    pub(crate) fn held(_: &str, _: &'static str, _: Instant) {}
    pub(crate) fn released(_: &str, _: &'static str, _: Instant) {}
    pub(crate) fn extend(_: &str, _: &'static str, _: &'static str) {}
    pub(crate) fn lost(_: &str, _: &'static str, _: &'static str) {}
    pub(crate) fn waiting(_: &str, _: &'static str, _: f64) {}
    pub(crate) fn leader(_: &str, _: &'static str, _: &'static str) {}
}

/// Gives every metric its description and unit, for the recorder installed now (a recorder
/// installed later gets the series without them).
pub(crate) fn describe() {
    on::describe();
}

/// An acquisition of a lock of `kind` ([`Kind::label`]) ended: `acquired`, `busy`, `timeout`
/// or `error`, after `waited`.
pub(crate) fn acquire(label: &str, kind: Kind, outcome: &'static str, waited: Duration) {
    on::acquire(label, kind.label(), outcome, waited);
}

/// A lock was granted at `acquired` (one more held; `lock_oldest_held_seconds` counts from
/// then).
pub(crate) fn held(label: &str, kind: Kind, acquired: tokio::time::Instant) {
    on::held(label, kind.label(), acquired);
}

/// A held lock ended (released, dropped, or given up at shutdown): the one granted at
/// `acquired`.
pub(crate) fn released(label: &str, kind: Kind, acquired: tokio::time::Instant) {
    on::released(label, kind.label(), acquired);
}

/// An extend ended: `renewed`, `not_ours` or `error`.
pub(crate) fn extend(label: &str, kind: Kind, outcome: &'static str) {
    on::extend(label, kind.label(), outcome);
}

/// A lease was lost, for `reason`: counted once per lease by `Lease::report_lost`.
pub(crate) fn lost(label: &str, kind: Kind, reason: Lost) {
    on::lost(label, kind.label(), reason.label());
}

/// An acquisition waiting from its creation to its drop (`lock_waiting`): created at its first
/// refusal, dropped when the acquisition ends, however it ends (cancelled too).
pub(crate) struct Waiting<'a> {
    label: &'a str,
    kind: Kind,
}

impl<'a> Waiting<'a> {
    pub(crate) fn start(label: &'a str, kind: Kind) -> Self {
        on::waiting(label, kind.label(), 1.0);
        Self { label, kind }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        on::waiting(self.label, self.kind.label(), -1.0);
    }
}

/// This process's leadership of an election changed: `elected`, `lost` or `resigned`.
pub(crate) fn leader(label: &str, kind: Kind, change: &'static str) {
    on::leader(label, kind.label(), change);
}
