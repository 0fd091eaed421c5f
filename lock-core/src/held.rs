//! What the current task holds, for `held(name)` and reentrant acquisitions.
//!
//! An annotated fn's body runs inside a task-local scope that lists the locks of the annotated
//! fns it is nested in (this one included). A future spawned from the body is another task:
//! it does not see the scope, so it is another owner.

use std::future::Future;
use std::sync::Arc;

use crate::lease::Lease;
use crate::shared::Shared;
use crate::LockGuard;

/// One lock held by an enclosing annotated fn.
#[derive(Clone)]
struct Held {
    shared: Arc<Shared>,
    lease: Arc<Lease>,
}

impl Held {
    fn holds(&self) -> bool {
        !self.lease.is_lost() && !self.lease.is_finished()
    }
}

tokio::task_local! {
    static HELD: Vec<Held>;
}

/// Whether the current task holds the lock `name` (through any manager), with its lease still
/// valid: inside the body of a `#[distributed_lock]` fn, for that fn's lock and the locks of
/// the annotated fns it was called from in the same task. For assertions in code that must
/// only run under a lock (ShedLock's `LockAssert`):
///
/// ```
/// # async fn demo() {
/// fn write_ledger() {
///     assert!(lock_core::held("ledger"), "the ledger is written under its lock only");
///     // ...
/// }
/// # }
/// ```
///
/// `false` outside any annotated body, in a task spawned from one (another owner), and once
/// the lease is lost.
pub fn held(name: &str) -> bool {
    HELD.try_with(|held| held.iter().any(|h| h.lease.name == name && h.holds()))
        .unwrap_or(false)
}

/// The lease of `name` the current task holds through `shared`, if it is still valid.
pub(crate) fn find(shared: &Arc<Shared>, name: &str) -> Option<Arc<Lease>> {
    HELD.try_with(|held| {
        held.iter()
            .find(|h| Arc::ptr_eq(&h.shared, shared) && h.lease.name == name && h.holds())
            .map(|h| Arc::clone(&h.lease))
    })
    .ok()
    .flatten()
}

/// Runs `body` with `guard`'s lock added to the current task's held locks.
pub(crate) fn scope<F: Future>(guard: &LockGuard, body: F) -> impl Future<Output = F::Output> {
    let mut held = HELD.try_with(Clone::clone).unwrap_or_default();
    let (shared, lease) = guard.parts();
    held.push(Held {
        shared: Arc::clone(shared),
        lease: Arc::clone(lease),
    });
    HELD.scope(held, body)
}
