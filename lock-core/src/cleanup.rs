//! Background clean-up: releases by token that go on after their caller stopped waiting (a
//! dropped guard, an attempt whose outcome is unknown, a release that failed), until Redis
//! answers or the key would have expired anyway. It owns what it needs, the store and the
//! manager's task tracker, and nothing else of the manager.
//!
//! What this guarantees about commands (I5): a command that failed before it was sent, or that
//! the server refused, is never cleaned up after; one that may have been applied (sent, no
//! answer, or its future dropped in flight) is undone by token in the background, retried
//! while Redis cannot be reached, and never past the moment the key would have expired anyway.

use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::backend::Store;
use crate::keys::LockKeys;
use crate::tasks::Tasks;

/// Runs releases in the background: a handle on the store and the task tracker.
#[derive(Clone)]
pub(crate) struct Cleaner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) tasks: Arc<Tasks>,
}

/// A release by token that runs in the background until it gets an answer or the key would
/// have expired by itself.
pub(crate) struct ReleaseJob {
    keys: LockKeys,
    token: String,
    name: String,
    /// With min_hold, the key must live until then rather than be deleted at once.
    hold_until: Option<Instant>,
    /// The key expires by itself by then: retrying past it is pointless.
    give_up: Instant,
    /// A clean-up after an interrupted command, or the release of a lease whose loss was
    /// already told: finding nothing is the expected outcome.
    quiet: bool,
    /// Its holder waited for it ([`Command::Release`]'s `contended`).
    ///
    /// [`Command::Release`]: crate::command::Command::Release
    contended: bool,
}

/// Armed while a command on a lock key is in flight or failed with an unknown outcome. Dropped
/// armed (its future was cancelled, or the command may have been applied), it releases by
/// token in the background. [`disarm`](Self::disarm) it once the outcome is known. It only
/// borrows what it needs until it fires, so arming it costs nothing on the common path.
pub(crate) struct CleanUp<'a> {
    cleaner: &'a Cleaner,
    job: Option<PendingRelease<'a>>,
}

/// A [`ReleaseJob`] not yet made: the borrowed parts of one.
pub(crate) struct PendingRelease<'a> {
    pub(crate) keys: &'a LockKeys,
    pub(crate) token: &'a str,
    pub(crate) name: &'a str,
    pub(crate) hold_until: Option<Instant>,
    pub(crate) give_up: Instant,
    pub(crate) quiet: bool,
    /// Its holder waited for it ([`Command::Release`]'s `contended`).
    ///
    /// [`Command::Release`]: crate::command::Command::Release
    pub(crate) contended: bool,
}

impl PendingRelease<'_> {
    pub(crate) fn to_job(&self) -> ReleaseJob {
        ReleaseJob {
            keys: self.keys.clone(),
            token: self.token.to_owned(),
            name: self.name.to_owned(),
            hold_until: self.hold_until,
            give_up: self.give_up,
            quiet: self.quiet,
            contended: self.contended,
        }
    }
}

impl<'a> CleanUp<'a> {
    /// Armed with `job`: released by `cleaner` unless disarmed.
    pub(crate) fn armed(cleaner: &'a Cleaner, job: PendingRelease<'a>) -> Self {
        Self {
            cleaner,
            job: Some(job),
        }
    }

    pub(crate) fn disarm(mut self) {
        self.job = None;
    }

    pub(crate) fn into_orphan(mut self) -> Orphan {
        Orphan {
            cleaner: self.cleaner.clone(),
            job: self.job.take().map(|pending| pending.to_job()),
        }
    }
}

impl Drop for CleanUp<'_> {
    fn drop(&mut self) {
        if let Some(pending) = self.job.take() {
            self.cleaner.spawn(None, pending.to_job());
        }
    }
}

/// The token of an attempt that may have set the key although nobody holds a guard for it.
/// Dropped, it is released in the background; [`release_now`](Self::release_now) does it first.
pub(crate) struct Orphan {
    cleaner: Cleaner,
    job: Option<ReleaseJob>,
}

impl Orphan {
    /// Nothing of the attempt remains: no release needed.
    pub(crate) fn disarm(mut self) {
        self.job = None;
    }

    /// Releases it now (on the connection that replaced a broken one), so that the next attempt
    /// does not find its own earlier key; left to the background if Redis does not answer.
    pub(crate) async fn release_now(mut self) {
        if let Some(job) = &self.job {
            if self
                .cleaner
                .store
                .release(&job.keys, &job.token, Duration::ZERO, job.contended)
                .await
                .is_ok()
            {
                self.job = None;
            }
        }
    }
}

impl Drop for Orphan {
    fn drop(&mut self) {
        if let Some(job) = self.job.take() {
            self.cleaner.spawn(None, job);
        }
    }
}

impl Cleaner {
    /// Runs `job` in the background on the current runtime (after `watchdog`, if any, has
    /// stopped), tracked for `shutdown`. Never blocks and never panics; with no runtime it logs
    /// and leaves the key to its ttl.
    pub(crate) fn spawn(&self, watchdog: Option<tokio::task::JoinHandle<()>>, job: ReleaseJob) {
        let Ok(handle) = Handle::try_current() else {
            tracing::warn!(
                lock = %crate::validate::Logged(&job.name), holder = %crate::token::holder_or_unknown(&job.token),
                "lock released outside a tokio runtime; the key expires with its ttl"
            );
            return;
        };
        let cleaner = self.clone();
        let span = tracing::debug_span!("lock.release", lock = %crate::validate::Logged(&job.name));
        self.tasks.spawn(
            &handle,
            async move {
                if let Some(watchdog) = watchdog {
                    let _ = watchdog.await;
                }
                cleaner.release_until_answered(job).await;
            }
            .instrument(span),
        );
    }

    /// The one retry policy of releases: back off from 50 ms to 1 s while Redis cannot be
    /// reached, and stop once the key would have expired.
    async fn release_until_answered(&self, job: ReleaseJob) {
        let mut pause = Duration::from_millis(50);
        loop {
            let keep = keep_for(job.hold_until);
            match self
                .store
                .release(&job.keys, &job.token, keep, job.contended)
                .await
            {
                Ok(true) => {
                    tracing::debug!(lock = %crate::validate::Logged(&job.name), "released in the background")
                }
                Ok(false) if job.quiet => {}
                Ok(false) => tracing::warn!(
                    lock = %crate::validate::Logged(&job.name), holder = %crate::token::holder_or_unknown(&job.token),
                    "release found the lock expired or held by another owner"
                ),
                Err(e) if Instant::now() + pause < job.give_up => {
                    tracing::debug!(lock = %crate::validate::Logged(&job.name), error = %e, "release failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                    continue;
                }
                // An attempt never granted: nothing the caller held, so nothing to warn of.
                Err(e) if job.quiet => tracing::debug!(
                    lock = %crate::validate::Logged(&job.name), error = %e,
                    "clean-up failed; the key, if it is there, expires with its ttl"
                ),
                Err(e) => tracing::warn!(
                    lock = %crate::validate::Logged(&job.name), holder = %crate::token::holder_or_unknown(&job.token),
                    error = %e,
                    "release failed; the key expires with its ttl"
                ),
            }
            return;
        }
    }
}

/// How long the key must still live at release for `min_hold`; zero deletes it.
pub(crate) fn keep_for(hold_until: Option<Instant>) -> Duration {
    hold_until.map_or(Duration::ZERO, |end| {
        end.saturating_duration_since(Instant::now())
    })
}
