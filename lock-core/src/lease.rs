//! The state of one acquisition, shared by its guard, its watchdog and its manager.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backend::LockKeys;

pub(crate) struct Lease {
    /// Key of this lease in the manager's table of held locks.
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) keys: LockKeys,
    pub(crate) token: String,
    pub(crate) fencing_token: u64,
    pub(crate) ttl: Duration,
    /// Taken just before the acquire command was sent, so every local deadline derived from it
    /// ends no later than the server's.
    pub(crate) started: Instant,
    pub(crate) min_hold: Option<Duration>,
    /// Conservative local end of the lease; moved on by each successful extension.
    deadline: Mutex<Instant>,
    /// Set once the lease is known lost (extension refused, deadline passed without an answer,
    /// or given up by `shutdown`).
    lost: AtomicBool,
    /// Set by whoever ends the lease (release, drop or shutdown): exactly one of them does.
    finished: AtomicBool,
    /// Woken when `lost` is set.
    changed: Notify,
    pub(crate) watchdog: Mutex<Option<JoinHandle<()>>>,
}

impl Lease {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: u64,
        name: String,
        keys: LockKeys,
        token: String,
        fencing_token: u64,
        ttl: Duration,
        lease: Duration,
        started: Instant,
        min_hold: Option<Duration>,
    ) -> Self {
        Self {
            id,
            name,
            keys,
            token,
            fencing_token,
            ttl,
            started,
            min_hold,
            deadline: Mutex::new(started + lease),
            lost: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            changed: Notify::new(),
            watchdog: Mutex::new(None),
        }
    }

    pub(crate) fn deadline(&self) -> Instant {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lease was renewed by a command sent at `sent`, for `lease` from then.
    pub(crate) fn renewed(&self, sent: Instant, lease: Duration) {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) = sent + lease;
    }

    pub(crate) fn remaining(&self) -> Duration {
        self.deadline().saturating_duration_since(Instant::now())
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire) || Instant::now() >= self.deadline()
    }

    pub(crate) fn mark_lost(&self) {
        if !self.lost.swap(true, Ordering::AcqRel) {
            self.changed.notify_waiters();
        }
    }

    /// Resolves once the lease is known lost: flagged lost, or its local deadline has passed.
    pub(crate) async fn lost(&self) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_lost() {
                return;
            }
            // The deadline may move on while we sleep; the loop re-reads it.
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(self.deadline()) => {}
            }
        }
    }

    /// Claims the right to end the lease. `true` for exactly one caller.
    pub(crate) fn claim(&self) -> bool {
        !self.finished.swap(true, Ordering::AcqRel)
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    /// Stops the watchdog without waiting for it (usable outside a runtime). Returns its handle
    /// so an async caller can wait until an extension in flight has been dropped.
    pub(crate) fn stop_watchdog(&self) -> Option<JoinHandle<()>> {
        let handle = self
            .watchdog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = &handle {
            h.abort();
        }
        handle
    }

    /// When `min_hold` ends, if one was asked for.
    pub(crate) fn min_hold_end(&self) -> Option<Instant> {
        self.min_hold.map(|min| self.started + min)
    }

    /// How long the key must still live at release for `min_hold`; zero deletes it.
    pub(crate) fn keep_for_min_hold(&self) -> Duration {
        self.min_hold_end().map_or(Duration::ZERO, |end| {
            end.saturating_duration_since(Instant::now())
        })
    }
}
