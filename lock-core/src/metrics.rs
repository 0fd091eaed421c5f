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
    use std::time::Duration;

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

    pub(crate) fn held(label: &str, kind: &'static str) {
        metrics::gauge!("lock_held", "lock" => label.to_owned(), "kind" => kind).increment(1.0);
    }

    pub(crate) fn oldest(label: &str, kind: &'static str, held_for: Duration) {
        metrics::gauge!("lock_oldest_held_seconds", "lock" => label.to_owned(), "kind" => kind)
            .set(held_for.as_secs_f64());
    }

    pub(crate) fn released(label: &str, kind: &'static str, held_for: Duration) {
        metrics::gauge!("lock_held", "lock" => label.to_owned(), "kind" => kind).decrement(1.0);
        metrics::histogram!("lock_hold_seconds", "lock" => label.to_owned(), "kind" => kind)
            .record(held_for.as_secs_f64());
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

    pub(crate) fn describe() {}
    pub(crate) fn acquire(_: &str, _: &'static str, _: &'static str, _: Duration) {}
    pub(crate) fn held(_: &str, _: &'static str) {}
    pub(crate) fn oldest(_: &str, _: &'static str, _: Duration) {}
    pub(crate) fn released(_: &str, _: &'static str, _: Duration) {}
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

/// A lock was granted (one more held).
pub(crate) fn held(label: &str, kind: Kind) {
    on::held(label, kind.label());
}

/// The oldest lock of `label` and `kind` this process holds now was taken `held_for` ago (zero:
/// none is held).
pub(crate) fn oldest(label: &str, kind: Kind, held_for: Duration) {
    on::oldest(label, kind.label(), held_for);
}

/// Whether metrics are recorded at all (the `metrics` feature).
pub(crate) const ON: bool = cfg!(feature = "metrics");

/// A held lock ended (released, dropped, or given up at shutdown) after `held_for`.
pub(crate) fn released(label: &str, kind: Kind, held_for: Duration) {
    on::released(label, kind.label(), held_for);
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
