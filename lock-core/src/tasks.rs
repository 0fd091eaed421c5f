//! Background work a manager owns: releases spawned by dropped guards, clean-ups of attempts,
//! leader campaigns. `shutdown` waits for it.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

#[derive(Default)]
pub(crate) struct Tasks {
    pending: AtomicUsize,
    idle: Notify,
}

/// Counts one task as pending until it is dropped: on completion, or when the runtime drops the
/// task unfinished (shutdown), so the count never leaks.
struct Pending(Arc<Tasks>);

impl Drop for Pending {
    fn drop(&mut self) {
        if self.0.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Tasks {
    /// Spawns `fut` on `handle` and counts it until it ends. Never blocks, never panics: on a
    /// runtime that is shutting down, tokio drops the task at once.
    pub(crate) fn spawn<F>(self: &Arc<Self>, handle: &Handle, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.pending.fetch_add(1, Ordering::AcqRel);
        let pending = Pending(Arc::clone(self));
        handle.spawn(async move {
            let _pending = pending;
            fut.await
        })
    }

    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.pending() == 0 {
                return;
            }
            notified.await;
        }
    }
}
