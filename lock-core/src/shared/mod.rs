//! The state a manager's guards, requests and watchdogs share: settings, the held leases, the
//! background work and shutdown. No command about a lock is built here: `commands.rs` is the
//! only path from guards, requests and watchdogs to the deployment (attempts, extends, fencing
//! tokens, releases, and operators' reads), each sent, timed and accounted for there.

mod commands;

pub(crate) use commands::Tried;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::Handle;

use crate::backend::{Store, Wake};
use crate::cleanup::Cleaner;
use crate::keys::LockKeys;
use crate::lease::{Grant, Lease};
use crate::locked;
use crate::tasks::Tasks;
use crate::{LockError, Result};

/// Settings of a manager that its requests read.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) prefix: String,
    /// Longest pause between a waiter's attempts when no release notification arrives.
    pub(crate) poll_cap: Duration,
    /// How long one command may wait for its reply.
    pub(crate) response_timeout: Duration,
    /// Who this manager's locks say holds them (`holder_id`), made fit for a token.
    pub(crate) holder: String,
    /// The most distinct `lock` metric labels (`metrics_label_limit`).
    pub(crate) label_limit: usize,
}

pub(crate) struct Shared {
    store: Arc<dyn Store>,
    /// Releases that go on in the background; shares `store` and `tasks`.
    cleaner: Cleaner,
    wake: Box<dyn Wake>,
    settings: Settings,
    tasks: Arc<Tasks>,
    /// Locks acquired through this manager and not yet released, for `shutdown`.
    held: Mutex<HashMap<u64, Arc<Lease>>>,
    next_id: AtomicU64,
    /// `shutdown` was called: leader campaigns end instead of taking their lock again.
    shut_down: AtomicBool,
    /// Woken when `shut_down` is set.
    shutting: tokio::sync::Notify,
    /// The `lock` metric labels seen, bounded by `label_limit`.
    labels: crate::metrics::Labels,
}

impl Shared {
    pub(crate) fn new(store: Box<dyn Store>, wake: Box<dyn Wake>, settings: Settings) -> Arc<Self> {
        let store: Arc<dyn Store> = Arc::from(store);
        let tasks: Arc<Tasks> = Arc::default();
        crate::metrics::describe();
        Arc::new(Self {
            labels: crate::metrics::Labels::new(settings.label_limit),
            cleaner: Cleaner {
                store: Arc::clone(&store),
                tasks: Arc::clone(&tasks),
            },
            store,
            wake,
            settings,
            tasks,
            held: Mutex::default(),
            next_id: AtomicU64::new(1),
            shut_down: AtomicBool::new(false),
            shutting: tokio::sync::Notify::new(),
        })
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The `lock` label to report for `wanted`, within the manager's bound.
    pub(crate) fn label(&self, wanted: String) -> String {
        self.labels.bound(wanted)
    }

    pub(crate) fn keys(&self, name: &str) -> LockKeys {
        LockKeys::new(&self.settings.prefix, name)
    }

    pub(crate) fn kind(&self) -> &'static str {
        self.store.kind()
    }

    /// Spawns `fut` on the current runtime as background work of this manager, which
    /// `shutdown` waits for. Panics outside a tokio runtime, like `tokio::spawn`.
    pub(crate) fn spawn_tracked<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(&Handle::current(), fut)
    }

    /// Whether `shutdown` was called.
    pub(crate) fn is_shut_down(&self) -> bool {
        self.shut_down.load(Ordering::Acquire)
    }

    /// Resolves once `shutdown` is called (at once if it was).
    pub(crate) async fn shut_down(&self) {
        let notified = self.shutting.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !self.is_shut_down() {
            notified.await;
        }
    }

    pub(crate) fn held_count(&self) -> usize {
        locked(&self.held).len()
    }

    pub(crate) fn pending_tasks(&self) -> usize {
        self.tasks.pending()
    }

    /// Whether the deployment decides by a majority of independent instances (see
    /// [`Store::by_majority`]).
    pub(crate) fn by_majority(&self) -> bool {
        self.store.by_majority()
    }

    /// Makes the lease of a granted attempt and tracks it for `shutdown`.
    pub(crate) fn grant(
        &self,
        name: String,
        label: String,
        keys: LockKeys,
        ttl: Duration,
        grant: Grant,
        min_hold: Option<Duration>,
    ) -> Arc<Lease> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        crate::metrics::held(&label, keys.kind, grant.sent);
        let lease = Arc::new(Lease::new(id, name, label, keys, ttl, grant, min_hold));
        locked(&self.held).insert(id, Arc::clone(&lease));
        lease
    }

    /// Claims the right to end `lease` (exactly one caller wins) and forgets it.
    pub(crate) fn claim(&self, lease: &Lease) -> bool {
        if !lease.claim() {
            return false;
        }
        Self::ended(lease);
        // Over for every guard on it: a reentrant (nested) guard that outlives its holder must
        // not say it still holds.
        lease.mark_lost();
        locked(&self.held).remove(&lease.id);
        true
    }

    /// Accounts for the end of `lease` (its release, drop or shutdown): one held lock less,
    /// its hold's length, and its loss if it ran out before it ended.
    fn ended(lease: &Lease) {
        crate::metrics::released(&lease.label, lease.keys.kind, lease.acquired);
        if lease.remaining().is_zero() {
            lease.report_lost(crate::metrics::Lost::Expired);
        } else if lease.marked_lost() {
            // Found not ours by a renewal or a fencing token whose report did not finish (the
            // guard was dropped while it asked why): counted all the same.
            lease.report_lost(crate::metrics::Lost::NotOurs);
        }
    }

    /// Gives up every lease still held and waits for the background releases, within `within`.
    pub(crate) async fn shutdown(self: &Arc<Self>, within: Duration) -> Result<()> {
        self.shut_down.store(true, Ordering::Release);
        self.shutting.notify_waiters();
        let leases: Vec<Arc<Lease>> = locked(&self.held).drain().map(|(_, l)| l).collect();
        for lease in leases {
            if lease.claim() {
                Self::ended(&lease);
                lease.mark_lost();
                self.release_in_background(&lease);
            }
        }
        let drained = async {
            self.tasks.wait_idle().await;
            self.store.close().await;
        };
        let drained = tokio::time::timeout(within, drained).await;
        // Last, the notifiers' connections close (a waiter still waiting polls from then on).
        // Not timed: a driver is aborted, which takes effect at its next await, so this returns
        // within a turn of the scheduler; and `shutdown(Duration::ZERO)` with nothing in
        // flight must not report a timeout for it.
        self.wake.close().await;
        drained.map_err(|_| LockError::ShutdownTimeout {
            pending: self.tasks.pending(),
        })
    }
}
