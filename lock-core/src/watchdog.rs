//! The watchdog of `auto_extend`: renews a lease every ttl/3 while its guard lives.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep, sleep_until, timeout_at, Instant};
use tracing::Instrument as _;

use crate::lease::Lease;
use crate::manager::Inner;
use crate::validate::MIN_TTL;

/// Starts the watchdog of `lease` on the current runtime and stores its handle in the lease.
pub(crate) fn start(inner: &Arc<Inner>, lease: &Arc<Lease>, max_hold: Option<Duration>) {
    let span = tracing::debug_span!("lock.watchdog", lock = %lease.name);
    let task = tokio::spawn(run(Arc::clone(inner), Arc::clone(lease), max_hold).instrument(span));
    *lease.watchdog.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
}

async fn run(inner: Arc<Inner>, lease: Arc<Lease>, max_hold: Option<Duration>) {
    let period = (lease.ttl / 3).max(MIN_TTL);
    let hold_end = max_hold.map(|max| lease.started + max);
    let mut pause = period;
    loop {
        sleep(pause).await;
        if lease.is_finished() {
            return;
        }
        let sent = Instant::now();
        // Under max_hold, never renew past the end of the hold.
        let renew_for = match hold_end {
            Some(end) => {
                let left = end.saturating_duration_since(sent);
                if left < MIN_TTL {
                    break;
                }
                left.min(lease.ttl)
            }
            None => lease.ttl,
        };
        let deadline = lease.deadline();
        // An extension that has not answered by the end of the lease cannot save it.
        match timeout_at(
            deadline,
            inner.backend.extend(&lease.keys, &lease.token, renew_for),
        )
        .await
        {
            Ok(Ok(true)) => {
                lease.renewed(sent, inner.backend.usable(renew_for));
                tracing::trace!(renewed_ms = renew_for.as_millis() as u64, "lease renewed");
                pause = period;
            }
            Ok(Ok(false)) => {
                tracing::warn!(
                    fencing_token = lease.fencing_token,
                    "lease lost: the key expired or another owner holds it"
                );
                lease.mark_lost();
                return;
            }
            Ok(Err(e)) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    tracing::warn!(error = %e, "lease lost: could not renew it before it ran out");
                    lease.mark_lost();
                    return;
                }
                tracing::warn!(error = %e, left_ms = left.as_millis() as u64, "lease renewal failed; retrying");
                // Retry sooner than a full period, while the lease still runs.
                pause = (period / 4).min(left / 2).max(MIN_TTL);
            }
            Err(_elapsed) => {
                tracing::warn!(
                    fencing_token = lease.fencing_token,
                    "lease lost: Redis did not answer before the lease ran out"
                );
                lease.mark_lost();
                return;
            }
        }
    }
    tracing::debug!("max_hold reached; the lease will lapse");
    sleep_until(lease.deadline()).await;
    if !lease.is_finished() {
        tracing::warn!(
            fencing_token = lease.fencing_token,
            "lease lapsed after max_hold"
        );
        lease.mark_lost();
    }
}
