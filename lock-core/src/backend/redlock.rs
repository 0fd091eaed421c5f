//! Redlock: one lock over N independent Redis masters (no replication between them).
//!
//! Every command fans out to all instances in parallel, each bounded by a per-node timeout.
//! An acquisition holds when a majority (N/2+1) granted it while the lease is still valid:
//! `ttl - elapsed - drift > 0`, with `drift = ttl * factor + fixed` (1% + 2 ms by default)
//! for the clocks of the instances running at different rates. Otherwise the instances that
//! granted it, or whose answer was lost, are released by token at once. Every attempt uses a
//! token never sent before and `SET NX`, so an instance never re-grants an older key: each
//! grant is dated from this attempt's send. Release, extend and fence go to all instances.

use std::future::Future;
use std::time::Duration;

use futures_util::future::join_all;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use tokio::time::{timeout, Instant};

use super::notify::PubSub;
use super::redis::RedisNode;
use super::Timeouts;
use super::{Attempt, BoxFuture, Drift, Node, Renewal, Store, Taken, Ticket};
use crate::keys::LockKeys;
use crate::validate::MIN_TTL;
use crate::{LockError, Result};

pub(crate) struct Redlock {
    nodes: Vec<Box<dyn Node>>,
    quorum: usize,
    drift: Drift,
    response_timeout: Duration,
}

/// One instance's answer to a fanned-out command.
enum Answer<T> {
    Ok(T),
    /// Failed before anything was sent (refused connection) or refused by the server.
    NotApplied(LockError),
    /// Sent, no answer: it may have been applied, now or later.
    Unknown(Option<LockError>),
}

impl<T> Answer<T> {
    fn is_ok(&self) -> bool {
        matches!(self, Answer::Ok(_))
    }

    /// One instance's reply, or its timeout.
    fn of(reply: std::result::Result<Result<T>, tokio::time::error::Elapsed>) -> Self {
        match reply {
            Ok(Ok(answer)) => Answer::Ok(answer),
            Ok(Err(e)) if e.may_have_applied() => Answer::Unknown(Some(e)),
            Ok(Err(e)) => Answer::NotApplied(e),
            Err(_elapsed) => Answer::Unknown(None),
        }
    }
}

impl Redlock {
    pub(crate) fn new(nodes: Vec<Box<dyn Node>>, drift: Drift, response_timeout: Duration) -> Self {
        let quorum = nodes.len() / 2 + 1;
        Self {
            nodes,
            quorum,
            drift,
            response_timeout,
        }
    }

    /// Connects to every instance in parallel. Instances that cannot be reached now are
    /// connected on first use; the manager starts if a majority answered. A waiter is woken by
    /// the release message of whichever instance publishes it first.
    pub(crate) async fn connect(
        urls: &[String],
        timeouts: Timeouts,
        drift: Drift,
    ) -> Result<(Self, PubSub)> {
        let attempts = join_all(urls.iter().map(|url| RedisNode::connect(url, timeouts))).await;
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
                    nodes.push(RedisNode::connect_lazy(url, timeouts)?);
                }
            }
        }
        if reached < quorum {
            return Err(first_error.expect("some instance failed"));
        }
        let pubsub = PubSub::all(nodes.iter().map(RedisNode::pubsub));
        let nodes = nodes
            .into_iter()
            .map(|n| Box::new(n) as Box<dyn Node>)
            .collect();
        Ok((Self::new(nodes, drift, timeouts.response), pubsub))
    }

    /// Small relative to the lease, so one slow instance cannot eat the validity time.
    fn node_timeout(&self, ttl: Duration) -> Duration {
        self.response_timeout.min((ttl / 10).max(MIN_TTL * 2))
    }

    async fn fan_out<'a, T, F, Fut>(&'a self, per_node: Duration, op: F) -> Vec<Answer<T>>
    where
        F: Fn(&'a dyn Node) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let replies = join_all(
            self.nodes
                .iter()
                .map(|node| timeout(per_node, op(node.as_ref()))),
        )
        .await;
        replies.into_iter().map(Answer::of).collect()
    }

    /// Counts owner-checked answers: `Ok(Some(values))` with a majority that said yes,
    /// `Ok(None)` when so many said no that no majority is possible, else an error. The error
    /// says the command may have been applied whenever some instance applied it or its outcome
    /// is unknown, whatever the others answered.
    fn decide<T>(&self, answers: Vec<Answer<Option<T>>>, what: &str) -> Result<Option<Vec<T>>> {
        let total = answers.len();
        let mut yes = Vec::new();
        let mut no = 0;
        let mut not_applied = None;
        let mut unknown = None;
        for answer in answers {
            match answer {
                Answer::Ok(Some(v)) => yes.push(v),
                Answer::Ok(None) => no += 1,
                Answer::NotApplied(e) => {
                    not_applied.get_or_insert(e);
                }
                Answer::Unknown(e) => {
                    unknown.get_or_insert(e.unwrap_or_else(|| {
                        LockError::Redis(redis::RedisError::from(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("a Redlock instance did not answer the {what} in time"),
                        )))
                    }));
                }
            }
        }
        tracing::debug!(yes = yes.len(), no, total, "redlock {what}");
        if yes.len() >= self.quorum {
            Ok(Some(yes))
        } else if no > total - self.quorum {
            Ok(None)
        } else if let Some(e) = unknown {
            Err(e)
        } else if !yes.is_empty() {
            Err(LockError::Redis(redis::RedisError::from(
                std::io::Error::other(format!(
                    "only {} of the {} Redlock instances needed confirmed the {what}",
                    yes.len(),
                    self.quorum
                )),
            )))
        } else {
            Err(not_applied.expect("an answer that is neither yes nor no is an error"))
        }
    }
}

impl Store for Redlock {
    fn acquire<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
        ttl: Duration,
        mark: bool,
        ticket: Option<Ticket<'a>>,
    ) -> BoxFuture<'a, Result<Attempt>> {
        // Refused before any I/O (`orders_fairly`); a ticket here would be a bug.
        debug_assert!(ticket.is_none(), "Redlock keeps no line of fair waiters");
        Box::pin(async move {
            let start = Instant::now();
            let per_node = self.node_timeout(ttl);
            // Answers as they come: once a majority granted, a slow or paused instance costs
            // nothing more (its command may still land: see below). A refusal waits for every
            // answer (each bounded by the per-instance timeout), so that what it may have set is
            // given back before it returns: returning early would leave copies landing on
            // slower instances, keys that block them for a ttl.
            let mut pending: FuturesUnordered<_> = self
                .nodes
                .iter()
                .enumerate()
                .map(|(i, node)| async move {
                    (
                        i,
                        timeout(per_node, node.acquire(keys, token, ttl, mark, None)).await,
                    )
                })
                .collect();
            let mut answers: Vec<Answer<Taken>> = (0..self.nodes.len())
                .map(|_| Answer::Unknown(None))
                .collect();
            let mut granted = 0;
            while let Some((i, reply)) = pending.next().await {
                let answer = Answer::of(reply);
                if matches!(answer, Answer::Ok(Taken::Granted)) {
                    granted += 1;
                }
                answers[i] = answer;
                if granted >= self.quorum {
                    break;
                }
            }
            let silent = pending.len();
            drop(pending);
            let usable = self.usable(ttl);
            if granted >= self.quorum && start.elapsed() + MIN_TTL <= usable {
                // An instance that had not answered yet may still set our token: the guard's
                // release goes to every instance, and the key expires with its ttl anyway.
                return Ok(Attempt::Granted(usable));
            }
            // Give back what we may have got (a lost reply may hide a grant), before answering.
            // Instances that refused, or never got the command, have nothing of ours. Bounded
            // like the attempt: what an instance does not confirm, the caller finishes in the
            // background (`given_back: false`).
            let give_back = join_all(
                self.nodes
                    .iter()
                    .zip(&answers)
                    .filter(|(_, a)| matches!(a, Answer::Ok(Taken::Granted) | Answer::Unknown(_)))
                    .map(|(node, _)| timeout(per_node, node.release(keys, token, Duration::ZERO))),
            );
            let given_back = give_back
                .await
                .iter()
                .all(|released| matches!(released, Ok(Ok(_))));
            tracing::debug!(silent, "redlock attempt decided");
            let failed = answers.iter().filter(|a| !a.is_ok()).count();
            tracing::debug!(
                granted,
                failed,
                quorum = self.quorum,
                "redlock attempt refused"
            );
            if granted + failed >= self.quorum {
                // A majority was within reach but did not hold: too slow, or instances failed.
                return Ok(Attempt::NoQuorum {
                    granted,
                    needed: self.quorum,
                    given_back,
                });
            }
            // Other owners hold it on enough instances that no majority was possible.
            Ok(Attempt::Held {
                left: None,
                given_back,
            })
        })
    }

    fn leave<'a>(&'a self, _keys: &'a LockKeys, _ticket: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn orders_fairly(&self) -> bool {
        false
    }

    fn release<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
        keep: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let answers = self
                .fan_out(self.response_timeout, |node| async move {
                    Ok(node.release(keys, token, keep).await?.then_some(()))
                })
                .await;
            Ok(self.decide(answers, "release")?.is_some())
        })
    }

    fn extend<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Renewal>> {
        Box::pin(async move {
            let answers = self
                .fan_out(self.node_timeout(ttl), |node| async move {
                    Ok(node.extend(keys, token, ttl).await?.then_some(()))
                })
                .await;
            let partial = answers.iter().any(|a| matches!(a, Answer::Unknown(_)));
            // A renewal slower than its own validity leaves a deadline already in the past.
            Ok(match self.decide(answers, "extend")? {
                Some(_) => Renewal::Renewed {
                    usable: self.usable(ttl),
                    partial,
                },
                None => Renewal::NotOurs,
            })
        })
    }

    /// The highest of the tokens a majority drew: see `LockGuard::fencing_token` for why this
    /// is not a fence across holders.
    fn fence<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>>> {
        Box::pin(async move {
            let answers = self
                .fan_out(self.response_timeout, |node| node.fence(keys, token))
                .await;
            Ok(self
                .decide(answers, "fence")?
                .and_then(|tokens| tokens.into_iter().max()))
        })
    }

    fn usable(&self, ttl: Duration) -> Duration {
        ttl.saturating_sub(self.drift.of(ttl))
    }

    fn kind(&self) -> &'static str {
        "redlock"
    }
}
