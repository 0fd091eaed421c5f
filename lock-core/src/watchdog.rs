//! The watchdog of `auto_extend`: renews a lease every ttl/3 while its guard lives.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep, sleep_until, Instant};
use tracing::Instrument as _;

use crate::lease::Lease;
use crate::shared::Shared;
use crate::validate::MIN_TTL;

/// Starts the watchdog of `lease` on the current runtime and stores its handle in the lease.
pub(crate) fn start(shared: &Arc<Shared>, lease: &Arc<Lease>, max_hold: Option<Duration>) {
    let span = tracing::debug_span!("lock.watchdog", lock = %crate::validate::Logged(&lease.name));
    let task = tokio::spawn(run(Arc::clone(shared), Arc::clone(lease), max_hold).instrument(span));
    lease.set_watchdog(task);
}

/// Renews until the guard ends, a renewal finds the key gone, or `max_hold` is reached. While
/// Redis does not answer it keeps trying, faster: if the lease runs out meanwhile the guard
/// reports lost, and a renewal that then gets through (the key was still ours) revives it.
async fn run(shared: Arc<Shared>, lease: Arc<Lease>, max_hold: Option<Duration>) {
    let period = (lease.ttl / 3).max(MIN_TTL);
    let hold_end = max_hold.map(|max| lease.acquired + max);
    let mut pause = period;
    let mut reported_lost = false;
    // Renewals failed in a row: the first is a WARN, the rest DEBUG until one gets through.
    let mut failures = 0u32;
    loop {
        sleep(pause).await;
        if lease.is_finished() {
            return;
        }
        // Under max_hold, never renew past the end of the hold.
        let renew_for = match hold_end {
            Some(end) => {
                let left = end.saturating_duration_since(Instant::now());
                if left < MIN_TTL {
                    break;
                }
                left.min(lease.ttl)
            }
            None => lease.ttl,
        };
        match shared.extend(&lease, renew_for).await {
            Ok(true) => {
                failures = 0;
                if reported_lost {
                    tracing::warn!(lock = %crate::validate::Logged(&lease.name), holder = %crate::token::holder_or_unknown(&lease.token), "lease renewed after Redis answered again; held again");
                    reported_lost = false;
                    lease.held_again();
                }
                tracing::trace!(lock = %crate::validate::Logged(&lease.name), renewed_ms = renew_for.as_millis() as u64, "lease renewed");
                pause = period;
            }
            // Lost for good; `Shared::extend` said so.
            Ok(false) => return,
            Err(e) => {
                let left = lease.remaining();
                if left.is_zero() {
                    if !reported_lost {
                        lease.report_lost(crate::metrics::Lost::Expired);
                        lease.first_loss_warning();
                        tracing::warn!(lock = %crate::validate::Logged(&lease.name), holder = %crate::token::holder_or_unknown(&lease.token), error = %e, "lease lost: could not renew it before it ran out; still trying");
                        reported_lost = true;
                    }
                    pause = (period / 4).max(MIN_TTL);
                } else {
                    if failures == 0 {
                        tracing::warn!(lock = %crate::validate::Logged(&lease.name), holder = %crate::token::holder_or_unknown(&lease.token), error = %e, left_ms = left.as_millis() as u64, "lease renewal failed; retrying (later failures of this lease at DEBUG)");
                    } else {
                        tracing::debug!(lock = %crate::validate::Logged(&lease.name), error = %e, left_ms = left.as_millis() as u64, "lease renewal failed again; retrying");
                    }
                    failures += 1;
                    // Retry sooner than a full period, while the lease still runs.
                    pause = (period / 4).min(left / 2).max(MIN_TTL);
                }
            }
        }
    }
    tracing::debug!(lock = %crate::validate::Logged(&lease.name), "max_hold reached; the lease will lapse");
    sleep_until(lease.deadline()).await;
    if !lease.is_finished() {
        lease.report_lost(crate::metrics::Lost::MaxHold);
        tracing::warn!(lock = %crate::validate::Logged(&lease.name), holder = %crate::token::holder_or_unknown(&lease.token), "lease lapsed after max_hold");
    }
}
