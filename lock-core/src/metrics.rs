//! Metrics through the `metrics` facade (feature `metrics`); without it, these do nothing. The
//! names and labels are listed in the crate docs' Metrics section.

use std::time::Duration;

use crate::kind::Kind;

/// The label of a lock without one of its own: its name up to the first `:` (all of it when
/// it has none).
pub(crate) fn default_label(name: &str) -> &str {
    name.split(':').next().unwrap_or(name)
}

#[cfg(feature = "metrics")]
mod on {
    use std::time::Duration;

    pub(crate) fn acquire(
        label: &str,
        kind: &'static str,
        outcome: &'static str,
        waited: Duration,
    ) {
        metrics::counter!("lock_acquire_total", "lock" => label.to_owned(), "kind" => kind, "outcome" => outcome)
            .increment(1);
        if outcome == "acquired" {
            metrics::histogram!("lock_wait_seconds", "lock" => label.to_owned(), "kind" => kind)
                .record(waited.as_secs_f64());
        }
    }

    pub(crate) fn held(label: &str, kind: &'static str) {
        metrics::gauge!("lock_held", "lock" => label.to_owned(), "kind" => kind).increment(1.0);
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

    pub(crate) fn lost(label: &str, kind: &'static str) {
        metrics::counter!("lock_lost_total", "lock" => label.to_owned(), "kind" => kind)
            .increment(1);
    }
}

#[cfg(not(feature = "metrics"))]
mod on {
    use std::time::Duration;

    pub(crate) fn acquire(_: &str, _: &'static str, _: &'static str, _: Duration) {}
    pub(crate) fn held(_: &str, _: &'static str) {}
    pub(crate) fn released(_: &str, _: &'static str, _: Duration) {}
    pub(crate) fn extend(_: &str, _: &'static str, _: &'static str) {}
    pub(crate) fn lost(_: &str, _: &'static str) {}
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

/// A held lock ended (released, dropped, or given up at shutdown) after `held_for`.
pub(crate) fn released(label: &str, kind: Kind, held_for: Duration) {
    on::released(label, kind.label(), held_for);
}

/// An extend ended: `renewed`, `not_ours` or `error`.
pub(crate) fn extend(label: &str, kind: Kind, outcome: &'static str) {
    on::extend(label, kind.label(), outcome);
}

/// A lease was found lost.
pub(crate) fn lost(label: &str, kind: Kind) {
    on::lost(label, kind.label());
}
