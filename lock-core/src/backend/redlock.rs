//! Redlock: one lock over N independent Redis masters (no replication between them).
//!
//! Every command fans out to all instances in parallel, each bounded by a per-node timeout.
//! An acquisition holds when a majority (N/2+1) granted it while the lease is still valid:
//! `ttl - elapsed - drift > 0`, with `drift = ttl * factor + fixed` (1% + 2 ms by default)
//! for the clocks of the instances running at different rates. Otherwise every instance is
//! released by token at once, so a failed attempt leaves no key behind (also on instances whose
//! reply was lost). Release and extend go to all instances and count the successes.

use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::{timeout, Instant};

use super::notify::Interest;
use super::redis::{RedisBackend, Timeouts};
use super::{Attempt, LockKeys};
use crate::validate::MIN_TTL;
use crate::Result;

/// How far the instances' clocks may run apart, as part of a lease.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Drift {
    pub(crate) factor: f64,
    pub(crate) fixed: Duration,
}

impl Drift {
    pub(crate) const DEFAULT: Drift = Drift {
        factor: 0.01,
        fixed: Duration::from_millis(2),
    };

    pub(crate) fn of(&self, lease: Duration) -> Duration {
        lease.mul_f64(self.factor) + self.fixed
    }
}

pub(crate) struct RedlockBackend {
    nodes: Vec<RedisBackend>,
    quorum: usize,
    drift: Drift,
    response_timeout: Duration,
}

/// What each instance answered to one fanned-out command.
struct Tally<T> {
    answers: Vec<T>,
    /// Errors and timeouts.
    failed: usize,
    first_error: Option<crate::LockError>,
}

impl RedlockBackend {
    /// Connects to every instance in parallel. Instances that cannot be reached now are
    /// connected on first use; the manager starts if a majority answered.
    pub(crate) async fn connect(urls: &[String], timeouts: Timeouts, drift: Drift) -> Result<Self> {
        let attempts = join_all(urls.iter().map(|url| RedisBackend::connect(url, timeouts))).await;
        let quorum = urls.len() / 2 + 1;
        let mut nodes = Vec::with_capacity(urls.len());
        let mut reached = 0;
        let mut first_error = None;
        for (url, attempt) in urls.iter().zip(attempts) {
            match attempt {
                Ok(node) => {
                    reached += 1;
                    nodes.push(node);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a Redlock instance is unreachable; retrying it on use");
                    first_error.get_or_insert(e);
                    nodes.push(RedisBackend::connect_lazy(url, timeouts)?);
                }
            }
        }
        if reached < quorum {
            return Err(first_error.expect("some instance failed"));
        }
        Ok(Self {
            nodes,
            quorum,
            drift,
            response_timeout: timeouts.response,
        })
    }

    /// Small relative to the lease, so one slow instance cannot eat the validity time.
    fn node_timeout(&self, ttl: Duration) -> Duration {
        self.response_timeout.min((ttl / 10).max(MIN_TTL * 2))
    }

    pub(crate) fn drift(&self, lease: Duration) -> Duration {
        self.drift.of(lease)
    }

    async fn fan_out<'a, T, F, Fut>(&'a self, per_node: Duration, op: F) -> Tally<T>
    where
        F: Fn(&'a RedisBackend) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let replies = join_all(self.nodes.iter().map(|node| timeout(per_node, op(node)))).await;
        let mut tally = Tally {
            answers: Vec::with_capacity(replies.len()),
            failed: 0,
            first_error: None,
        };
        for reply in replies {
            match reply {
                Ok(Ok(answer)) => tally.answers.push(answer),
                Ok(Err(e)) => {
                    tally.failed += 1;
                    tally.first_error.get_or_insert(e);
                }
                Err(_elapsed) => tally.failed += 1,
            }
        }
        tally
    }

    pub(crate) async fn acquire(
        &self,
        keys: &LockKeys,
        token: &str,
        ttl: Duration,
    ) -> Result<Attempt> {
        let start = Instant::now();
        let tally = self
            .fan_out(self.node_timeout(ttl), |node| {
                node.acquire(keys, token, ttl)
            })
            .await;
        let fences: Vec<u64> = tally
            .answers
            .iter()
            .filter_map(|a| match a {
                Attempt::Granted(fence) => Some(*fence),
                _ => None,
            })
            .collect();
        let granted = fences.len();
        let elapsed = start.elapsed();
        let valid = ttl.saturating_sub(elapsed + self.drift.of(ttl));
        if granted >= self.quorum && valid >= MIN_TTL {
            // Not a fence across holders: see `LockGuard::fencing_token`.
            return Ok(Attempt::Granted(
                fences.into_iter().max().expect("a quorum granted"),
            ));
        }
        // Give back what we got, everywhere (a lost reply may hide a grant), before answering.
        if granted > 0 || tally.failed > 0 {
            let _ = self.release(keys, token, Duration::ZERO).await;
        }
        let held_elsewhere = tally.answers.len() - granted;
        tracing::debug!(
            granted,
            held_elsewhere,
            failed = tally.failed,
            quorum = self.quorum,
            "redlock attempt refused"
        );
        if granted >= self.quorum || granted + tally.failed >= self.quorum {
            // A majority was within reach but did not hold: too slow, or instances failed.
            return Ok(Attempt::NoQuorum {
                granted,
                needed: self.quorum,
            });
        }
        // Other owners hold it on enough instances that no majority was possible.
        Ok(Attempt::Held(None))
    }

    /// Counts successes; `Ok(true)` with a majority, `Ok(false)` when a majority refused, and
    /// the first error when failures left it undecided.
    fn decide(&self, tally: Tally<bool>, what: &str) -> Result<bool> {
        let ok = tally.answers.iter().filter(|&&b| b).count();
        let refused = tally.answers.len() - ok;
        tracing::debug!(
            ok,
            refused,
            failed = tally.failed,
            total = self.nodes.len(),
            "redlock {what}"
        );
        if ok >= self.quorum {
            Ok(true)
        } else if refused + ok == self.nodes.len() || tally.first_error.is_none() {
            Ok(false)
        } else {
            Err(tally.first_error.expect("checked"))
        }
    }

    pub(crate) async fn release(
        &self,
        keys: &LockKeys,
        token: &str,
        keep: Duration,
    ) -> Result<bool> {
        let per_node = self.response_timeout;
        let tally = self
            .fan_out(per_node, |node| node.release(keys, token, keep))
            .await;
        self.decide(tally, "release")
    }

    pub(crate) async fn extend(&self, keys: &LockKeys, token: &str, ttl: Duration) -> Result<bool> {
        let start = Instant::now();
        let tally = self
            .fan_out(self.node_timeout(ttl), |node| node.extend(keys, token, ttl))
            .await;
        let extended = self.decide(tally, "extend")?;
        // A renewal that took longer than its own validity renews nothing.
        Ok(extended && start.elapsed() + self.drift.of(ttl) < ttl)
    }

    /// Releases are published on every instance; the first one's is enough to wake a waiter,
    /// and waiters poll if it is down.
    pub(crate) async fn watch(&self, channel: &str) -> Interest {
        self.nodes[0].watch(channel).await
    }
}
