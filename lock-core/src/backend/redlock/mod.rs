//! Redlock: one lock over N independent Redis masters (no replication between them).
//!
//! Every command fans out to all instances in parallel, each bounded by a per-node timeout.
//! An acquisition holds when a majority (N/2+1) granted it while the lease is still valid:
//! `ttl - elapsed - drift > 0`, with `drift = ttl * factor + fixed` (1% + 2 ms by default)
//! for the clocks of the instances running at different rates. An attempt returns as soon as
//! its answers decide it (a majority granted, or too many refused for one), so a slow or paused
//! minority delays neither the winner nor the waiters it refuses. A failed attempt is released
//! by token at once where it was granted; the replies still to come are awaited in the
//! background, and it is given back where one granted or stayed silent (`Leftover::Later`).
//! Every attempt uses a
//! token never sent before and `SET NX`, so an instance never re-grants an older key: each
//! grant is dated from this attempt's send. Release, extend and fence go to all instances.
//!
//! By job: `instance` (one instance, whether it answers, its answers), `operate` (operators'
//! commands and the holds a majority agrees on); this file is the fan-out and the [`Store`].

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use futures_util::stream::StreamExt as _;
use tokio::time::{timeout, Instant};

use super::notify::PubSub;
use super::redis::{Endpoint, RedisNode};
use super::Timeouts;
use super::{Answer, BoxFuture, Command, Drift, Eviction, Found, Leftover, Node, Store};
use crate::keys::LockKeys;
use crate::kind::Kind;

mod instance;
mod operate;

use crate::tasks::Tasks;
use crate::validate::MIN_TTL;
use crate::{LockError, Result};
use instance::{Heard, Instance, Replies, Reply};

pub(crate) struct Redlock {
    nodes: Vec<Arc<Instance>>,
    quorum: usize,
    drift: Drift,
    response_timeout: Duration,
    /// Late replies of decided commands, awaited in the background: `shutdown` waits for them.
    background: Arc<Tasks>,
}

/// Releases an attempt's token on one instance, bounded by `per_node`: whether it confirmed.
/// A share given back follows a split vote or a refusal elsewhere: others want the lock, so
/// the script goes first (`contended`).
async fn give_back(node: &dyn Node, keys: &LockKeys, token: &str, per_node: Duration) -> bool {
    let release = Command::Release {
        keys: Cow::Borrowed(keys),
        token: Cow::Borrowed(token),
        keep: Duration::ZERO,
        contended: true,
    };
    matches!(timeout(per_node, node.run(&release)).await, Ok(Ok(_)))
}

impl Redlock {
    pub(crate) fn new(nodes: Vec<Box<dyn Node>>, drift: Drift, response_timeout: Duration) -> Self {
        let quorum = nodes.len() / 2 + 1;
        Self {
            nodes: nodes
                .into_iter()
                .enumerate()
                .map(|(i, node)| Instance::new(i, node))
                .collect(),
            quorum,
            drift,
            response_timeout,
            background: Arc::default(),
        }
    }

    /// Awaits replies the caller no longer needs, so that each instance's health hears of
    /// them and `shutdown` can wait until they are in (a slow instance's release among them).
    /// Each is bounded by its per-instance timeout.
    fn finish_in_background(&self, mut pending: Replies) {
        if pending.is_empty() {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            self.background.spawn(
                &handle,
                async move { while pending.next().await.is_some() {} },
            );
        }
    }

    /// Connects to every instance in parallel. Instances that cannot be reached now are
    /// connected on first use; the manager starts if a majority answered. A waiter is woken by
    /// the release message of whichever instance publishes it first.
    pub(crate) async fn connect(
        instances: &[Endpoint],
        timeouts: Timeouts,
        drift: Drift,
        lazy: bool,
        allow_eviction: bool,
    ) -> Result<(Self, PubSub)> {
        if lazy {
            let nodes = instances
                .iter()
                .map(|at| at.connect_lazy(timeouts))
                .collect::<Result<Vec<_>>>()?;
            return Ok(Self::of_nodes(nodes, timeouts, drift));
        }
        let attempts = join_all(instances.iter().map(|at| at.connect(timeouts))).await;
        let quorum = instances.len() / 2 + 1;
        let mut nodes = Vec::with_capacity(instances.len());
        let mut reached = 0;
        let mut first_error = None;
        for (at, attempt) in instances.iter().zip(attempts) {
            match attempt {
                Ok(node) => {
                    if !allow_eviction {
                        node.refuse_evicting().await?;
                    }
                    reached += 1;
                    nodes.push(node);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a Redlock instance is unreachable; retrying it on use");
                    first_error.get_or_insert(e);
                    nodes.push(at.connect_lazy(timeouts)?);
                }
            }
        }
        if reached < quorum {
            return Err(first_error.expect("some instance failed"));
        }
        Ok(Self::of_nodes(nodes, timeouts, drift))
    }

    fn of_nodes(nodes: Vec<RedisNode>, timeouts: Timeouts, drift: Drift) -> (Self, PubSub) {
        let pubsub = PubSub::all(nodes.iter().map(RedisNode::pubsub));
        let nodes = nodes
            .into_iter()
            .map(|n| Box::new(n) as Box<dyn Node>)
            .collect();
        (Self::new(nodes, drift, timeouts.response), pubsub)
    }

    /// Small relative to the lease, so one slow instance cannot eat the validity time.
    fn node_timeout(&self, ttl: Duration) -> Duration {
        self.response_timeout.min((ttl / 10).max(MIN_TTL * 2))
    }

    /// Sends `command` to every instance that answers (see [`Instance`]) in parallel, each
    /// bounded by `per_node`: the replies, each with its instance's index, in the order they
    /// come. Each reply is noted in its instance's health when it comes, so replies still to
    /// come once the caller has its answer are awaited in the background
    /// ([`finish_in_background`]).
    fn send(&self, per_node: Duration, command: &Command<'_>) -> Replies {
        let command = Arc::new(command.clone().into_owned());
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, instance)| {
                let (at, sent) = (Instant::now(), instance.may_send());
                let (instance, command) = (Arc::clone(instance), Arc::clone(&command));
                Box::pin(async move {
                    let reply = if sent {
                        timeout(per_node, instance.node.run(&command)).await
                    } else {
                        Ok(Err(instance.skipped(i)))
                    };
                    instance.heard(&reply, at, per_node);
                    (i, reply)
                }) as BoxFuture<'static, (usize, Reply)>
            })
            .collect()
    }

    /// Collects the replies of `pending` as they come until they decide the command: a
    /// majority applied it, or so many did not that no majority is possible. A slow or
    /// paused minority then costs nothing. `None` for an instance not heard from by then: its
    /// reply is still in `pending`, and its command may still land, in order after anything
    /// this client sent that instance before.
    async fn gather(&self, pending: &mut Replies) -> Vec<Option<Heard>> {
        let total = self.nodes.len();
        let mut heard: Vec<Option<Heard>> = (0..total).map(|_| None).collect();
        let (mut yes, mut no) = (0, 0);
        while let Some((i, reply)) = pending.next().await {
            let answer = Heard::of(reply);
            if let Heard::Answered(answer) = &answer {
                if answer.applied() {
                    yes += 1;
                } else {
                    no += 1;
                }
            }
            heard[i] = Some(answer);
            if yes >= self.quorum || no > total - self.quorum {
                break;
            }
        }
        heard
    }

    /// An owner-checked command to every instance, until the answers decide it; an instance
    /// not heard from by then counts as unknown.
    async fn fan_out(&self, per_node: Duration, command: &Command<'_>) -> Vec<Heard> {
        let mut pending = self.send(per_node, command);
        let heard = self.gather(&mut pending).await;
        self.finish_in_background(pending);
        heard
            .into_iter()
            .map(|a| a.unwrap_or(Heard::Unknown(None)))
            .collect()
    }

    /// Counts owner-checked answers: `Ok(Some(values))` with a majority that said yes,
    /// `Ok(None)` when so many said no that no majority is possible, else an error. The error
    /// says the command may have been applied whenever some instance applied it or its outcome
    /// is unknown, whatever the others answered.
    fn decide(&self, answers: Vec<Heard>, what: &str) -> Result<Option<Vec<Answer>>> {
        let total = answers.len();
        let mut yes = Vec::new();
        let mut no = 0;
        let mut not_applied = None;
        let mut unknown = None;
        for answer in answers {
            match answer {
                Heard::Answered(v) if v.applied() => yes.push(v),
                Heard::Answered(_) => no += 1,
                Heard::NotApplied(e) => {
                    not_applied.get_or_insert(e);
                }
                Heard::Unknown(e) => {
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

impl Redlock {
    /// An acquire attempt on every instance: granted by a majority within the lease's validity,
    /// or refused, with what it may have left where it was not decided.
    async fn acquire(&self, command: &Command<'_>, ttl: Duration) -> Result<(Answer, Leftover)> {
        let (keys, token) = match command {
            Command::Acquire { keys, token, .. } => (keys.as_ref(), token.as_ref()),
            _ => unreachable!("an acquire"),
        };
        // Fair requests are refused before any I/O (`Kind::of`); a waiting writer's claim is
        // recorded on each instance.
        debug_assert!(
            keys.kind != Kind::Fair,
            "Redlock keeps no line of fair waiters"
        );
        let start = Instant::now();
        let per_node = self.node_timeout(ttl);
        // Replies still to come when the attempt is decided are awaited after it returns.
        let mut pending = self.send(per_node, command);
        let heard = self.gather(&mut pending).await;
        let (mut granted, mut refused) = (0, 0);
        for answer in heard.iter().flatten() {
            match answer {
                Heard::Answered(a) if a.applied() => granted += 1,
                Heard::Answered(_) => refused += 1,
                _ => {}
            }
        }
        let usable = self.usable(ttl);
        if granted >= self.quorum && start.elapsed() + MIN_TTL <= usable {
            // An instance that had not answered yet may still set our token: the guard's
            // release goes to every instance, and the key expires with its ttl anyway.
            self.finish_in_background(pending);
            return Ok((Answer::Applied(usable), Leftover::Nothing));
        }
        // Given back at once where it was granted, so that our own keys never stand in the
        // way of the next attempt.
        let given_back = join_all(
            heard
                .iter()
                .enumerate()
                .filter(|(_, a)| a.as_ref().is_some_and(Heard::applied))
                .map(|(i, _)| give_back(self.nodes[i].node.as_ref(), keys, token, per_node)),
        )
        .await
        .into_iter()
        .all(|confirmed| confirmed);
        // Instances that did not answer in time, failed after sending, or were not heard
        // from before the answers decided: slow now, so waiting for them would only stall
        // this waiter. Their late replies are awaited after it returns, and the attempt is
        // given back only where one granted or stayed silent: a healthy minority that
        // answers a moment late costs no command, and a paused one gets its release on the
        // same connection, after the SET.
        let unsure: Vec<usize> = (0..heard.len())
            .filter(|&i| matches!(heard[i], Some(Heard::Unknown(_))))
            .collect();
        tracing::debug!(
            granted,
            refused,
            unsure = unsure.len(),
            silent = pending.len(),
            quorum = self.quorum,
            "redlock attempt refused"
        );
        let leftover = if unsure.is_empty() && pending.is_empty() {
            if given_back {
                Leftover::Nothing
            } else {
                Leftover::Unknown
            }
        } else {
            let (nodes, keys, token) = (self.nodes.clone(), keys.clone(), token.to_owned());
            Leftover::Later(Box::pin(async move {
                let mut all_back = given_back;
                for i in unsure {
                    all_back &= give_back(nodes[i].node.as_ref(), &keys, &token, per_node).await;
                }
                while let Some((i, reply)) = pending.next().await {
                    let refused = match Heard::of(reply) {
                        Heard::Answered(answer) => !answer.applied(),
                        Heard::NotApplied(_) => true,
                        Heard::Unknown(_) => false,
                    };
                    if !refused {
                        all_back &=
                            give_back(nodes[i].node.as_ref(), &keys, &token, per_node).await;
                    }
                }
                all_back
            }))
        };
        if refused <= self.nodes.len() - self.quorum {
            // A majority was within reach but did not hold: too slow, or instances failed.
            let undecided = Answer::Undecided {
                granted,
                needed: self.quorum,
                refused,
            };
            return Ok((undecided, leftover));
        }
        // Other owners hold it on enough instances that no majority was possible.
        Ok((Answer::NotApplied(None), leftover))
    }
}

impl Store for Redlock {
    fn run<'a>(&'a self, command: &'a Command<'a>) -> BoxFuture<'a, Result<(Answer, Leftover)>> {
        Box::pin(async move {
            match command {
                Command::Acquire { ttl, .. } => self.acquire(command, *ttl).await,
                // A waiting writer's claim, taken out wherever it was recorded (Redlock keeps
                // no line of fair waiters); an instance that does not answer lets it lapse by
                // itself.
                Command::Leave { .. } => {
                    let (_, error) = self
                        .everywhere(Some(self.response_timeout), |node| node.run(command))
                        .await;
                    error.map_or(
                        Ok((Answer::Applied(Duration::ZERO), Leftover::Nothing)),
                        Err,
                    )
                }
                Command::Release { .. } => {
                    let heard = self.fan_out(self.response_timeout, command).await;
                    let answer = match self.decide(heard, "release")? {
                        Some(_) => Answer::Applied(Duration::ZERO),
                        None => Answer::NotApplied(None),
                    };
                    Ok((answer, Leftover::Nothing))
                }
                Command::Extend { ttl, .. } => {
                    let heard = self.fan_out(self.node_timeout(*ttl), command).await;
                    // Some instance's outcome is unknown: the renewal may still land there.
                    let partial = heard.iter().any(|a| matches!(a, Heard::Unknown(_)));
                    Ok(match self.decide(heard, "extend")? {
                        Some(_) if partial => {
                            (Answer::Applied(self.usable(*ttl)), Leftover::Unknown)
                        }
                        Some(_) => (Answer::Applied(self.usable(*ttl)), Leftover::Nothing),
                        None => (Answer::NotApplied(None), Leftover::Nothing),
                    })
                }
                // The highest of the tokens a majority drew: see `LockGuard::fencing_token` for
                // why this is not a fence across holders.
                Command::Fence { .. } => {
                    let heard = self.fan_out(self.response_timeout, command).await;
                    let drawn = self.decide(heard, "fence")?.and_then(|answers| {
                        answers
                            .into_iter()
                            .filter_map(|a| match a {
                                Answer::Drawn(fence) => Some(fence),
                                _ => None,
                            })
                            .max()
                    });
                    let answer = drawn.map_or(Answer::NotApplied(None), Answer::Drawn);
                    Ok((answer, Leftover::Nothing))
                }
            }
        })
    }

    fn by_majority(&self) -> bool {
        true
    }

    fn peek<'a>(&'a self, keys: &'a LockKeys) -> BoxFuture<'a, Result<Option<Found>>> {
        Box::pin(async move {
            let (answers, error) = self
                .everywhere(Some(self.response_timeout), |node| node.peek(keys))
                .await;
            let agreed = self.agreed(self.majority_or(answers, error)?.into_iter().flatten());
            Ok(agreed.into_iter().next())
        })
    }

    /// Evicted where it answers. The values of the instances that held the key (each hold
    /// once), even when others did not answer: the lock may have lost its majority, which is
    /// what the operator asked for (a holder that did not lose it still fails its next renewal
    /// where it was evicted).
    fn evict<'a>(
        &'a self,
        keys: &'a LockKeys,
        eviction: Eviction<'a>,
    ) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(async move {
            let (answers, first_error) = self
                .everywhere(Some(self.response_timeout), |node| {
                    node.evict(keys, eviction)
                })
                .await;
            let mut evicted: Vec<String> = Vec::new();
            for value in answers.iter().flatten() {
                if !evicted.contains(value) {
                    evicted.push(value.clone());
                }
            }
            if !evicted.is_empty() {
                return Ok(evicted);
            }
            self.majority_or(answers, first_error).map(|_| evicted)
        })
    }

    fn evicted_by<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>>> {
        Box::pin(async move {
            let (answers, error) = self
                .everywhere(Some(self.response_timeout), |node| {
                    node.evicted_by(keys, token)
                })
                .await;
            match answers.into_iter().flatten().next() {
                Some(record) => Ok(Some(record)),
                None => error.map_or(Ok(None), Err),
            }
        })
    }

    fn scan<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<Vec<(String, Found)>>> {
        Box::pin(async move {
            // Each SCAN and peek has the response timeout; the whole walk has no bound of its
            // own (a large keyspace takes many round trips).
            let (answers, error) = self.everywhere(None, |node| node.scan(pattern)).await;
            let answers = self.majority_or(answers, error)?;
            let mut by_key: std::collections::BTreeMap<String, Vec<Found>> = Default::default();
            for (key, found) in answers.into_iter().flatten() {
                by_key.entry(key).or_default().push(found);
            }
            Ok(by_key
                .into_iter()
                .flat_map(|(key, found)| {
                    let agreed = self.agreed(found);
                    agreed.into_iter().map(move |found| (key.clone(), found))
                })
                .collect())
        })
    }

    fn usable(&self, ttl: Duration) -> Duration {
        ttl.saturating_sub(self.drift.of(ttl))
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.background.wait_idle())
    }

    fn kind(&self) -> &'static str {
        "redlock"
    }
}
