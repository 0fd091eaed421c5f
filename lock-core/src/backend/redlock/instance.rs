//! One Redlock instance, whether it answers, and its answers to a fanned-out command.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use tokio::time::Instant;

use super::super::{Answer, BoxFuture, Node};
use crate::{locked, LockError, Result};

/// While an instance does not answer in time, at most one command per this interval is sent to
/// it, to find out when it answers again.
const PROBE_EVERY: Duration = Duration::from_millis(50);

/// The shortest silence that counts an instance as not answering.
const STALLED_AFTER: Duration = Duration::from_millis(100);

/// One instance, and whether it answers.
///
/// A paused instance answers nothing, yet a client keeps writing every command to its
/// connection, where they pile up: on every attempt, every waiter adds a `SET` and then its
/// give-back, and the growing write buffer takes the client's own CPU from the instances that
/// do answer, until their commands time out too (measured: with 4,000 waiters on 1,000 names,
/// most waits then failed). So once an instance has answered nothing at all for a whole
/// per-instance timeout (of [`STALLED_AFTER`] or more), it counts as down, as Redlock allows
/// for a minority: commands are not sent to it (answered at once as not applied), except one
/// probe per [`PROBE_EVERY`], until it answers again. A slow instance that still answers is not
/// affected. A give-back of an attempt that was sent is always sent, on the same connection
/// after it; but a guard's release or extend is not sent while the instance counts as down, so
/// a key of ours that lands there late stays until its ttl (the instance is one of a minority;
/// the lock is never held twice for it).
pub(super) struct Instance {
    pub(super) node: Box<dyn Node>,
    /// Its place among the instances, for the log.
    index: usize,
    health: Mutex<Health>,
}

struct Health {
    /// When the instance last answered anything.
    heard: Instant,
    /// `Some(next probe)` while it answers nothing.
    stalled: Option<Instant>,
}

impl Health {
    /// It answered: if it counted as down, one WARN says it is back, and after how long.
    fn answered(&mut self, index: usize) {
        let now = Instant::now();
        if self.stalled.is_some() {
            let down = now.duration_since(self.heard);
            tracing::warn!(
                instance = index,
                down_ms = down.as_millis() as u64,
                "Redlock instance {index} answering again after {:.1} s",
                down.as_secs_f64()
            );
        }
        self.heard = now;
        self.stalled = None;
    }
}

impl Instance {
    pub(super) fn new(index: usize, node: Box<dyn Node>) -> Arc<Self> {
        Arc::new(Self {
            node,
            index,
            health: Mutex::new(Health {
                heard: Instant::now(),
                stalled: None,
            }),
        })
    }

    /// Whether to send a command now: the instance answers, or it is time for a probe.
    pub(super) fn may_send(&self) -> bool {
        let mut health = locked(&self.health);
        match health.stalled {
            None => true,
            Some(probe) => {
                let now = Instant::now();
                if now < probe {
                    return false;
                }
                health.stalled = Some(now + PROBE_EVERY);
                true
            }
        }
    }

    /// Notes the reply to a command sent at `sent` and given `waited` to answer: an answer, or
    /// a timeout of at least [`STALLED_AFTER`] with nothing heard from the instance since the
    /// command was sent (it answers nothing). A shorter timeout (a lock with a short ttl gets
    /// short per-instance timeouts) says nothing about an instance that is merely a few
    /// milliseconds away.
    pub(super) fn heard(&self, reply: &Reply, sent: Instant, waited: Duration) {
        let mut health = locked(&self.health);
        match reply {
            // An error reply from the server is an answer too.
            Ok(Ok(_)) => health.answered(self.index),
            Ok(Err(LockError::Redis(e))) if matches!(e.kind(), redis::ErrorKind::Server(_)) => {
                health.answered(self.index);
            }
            Err(_elapsed) if waited >= STALLED_AFTER && health.heard <= sent => {
                if health.stalled.is_none() {
                    // One WARN per outage (a refused connection is told by the node itself).
                    tracing::warn!(
                        instance = self.index,
                        waited_ms = waited.as_millis() as u64,
                        "Redlock instance {} not answering; one probe per {} ms until it does, the others decide meanwhile",
                        self.index,
                        PROBE_EVERY.as_millis()
                    );
                }
                health
                    .stalled
                    .get_or_insert_with(|| Instant::now() + PROBE_EVERY);
            }
            _ => {}
        }
    }

    /// The answer of a command not sent: as if the instance refused the connection.
    pub(super) fn skipped(&self, index: usize) -> LockError {
        LockError::Redis(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            format!(
                "Redlock instance {index} did not answer in time; not sent until it answers again"
            ),
        )))
    }
}

/// The replies to one command sent to every instance, each with its instance's index.
pub(super) type Replies = FuturesUnordered<BoxFuture<'static, (usize, Reply)>>;

/// One instance's reply to a command, or its timeout.
pub(super) type Reply = std::result::Result<Result<Answer>, tokio::time::error::Elapsed>;

/// What was heard from one instance about a fanned-out command.
pub(super) enum Heard {
    Answered(Answer),
    /// Failed before anything was sent (refused connection) or refused by the server.
    NotApplied(LockError),
    /// Sent, no answer: it may have been applied, now or later.
    Unknown(Option<LockError>),
}

impl Heard {
    /// One instance's reply, or its timeout.
    pub(super) fn of(reply: Reply) -> Self {
        match reply {
            Ok(Ok(answer)) => Heard::Answered(answer),
            Ok(Err(e)) if e.may_have_applied() => Heard::Unknown(Some(e)),
            Ok(Err(e)) => Heard::NotApplied(e),
            Err(_elapsed) => Heard::Unknown(None),
        }
    }

    /// The instance applied the command.
    pub(super) fn applied(&self) -> bool {
        matches!(self, Heard::Answered(answer) if answer.applied())
    }
}
