//! One Redis server (or a proxy in front of one), or a Redis Cluster, over one multiplexed,
//! reconnecting connection shared by every lock of a manager: the [`Node`] of the Redis
//! deployments. Each operation is one command: `SET NX PX` for an uncontended acquire, one
//! script for the rest (`EVALSHA`, with `EVAL` after `NOSCRIPT`).
//!
//! By job: `connect` (where commands go, and the cluster's and Sentinel's re-sends),
//! `replicas` (`min_replicas`: `WAIT` on lent connections), `scripts` (the script table) and
//! `operate` (operators' reads and scans); this file is the [`Node`] itself.

use std::sync::Arc;

use super::notify::Watcher;
use super::{Answer, BoxFuture, Command, Eviction, Found, Node, EVICTION_RECORD};
use crate::command::{Call, Server, FENCE_KEEP};
use crate::keys::LockKeys;
use crate::validate::millis_ceil;
use crate::{LockError, Result};

mod connect;
mod operate;
mod replicas;
mod scripts;

use crate::scripts::FORCE;
pub(crate) use connect::Endpoint;
use connect::{Conn, Source};
pub(crate) use replicas::MinReplicas;
use replicas::Replicated;

pub(crate) struct RedisNode {
    conn: Conn,
    /// Release notifications for waiters, on a connection of their own opened on the first wait.
    notifier: Arc<dyn Watcher>,
    /// Releases are published with `SPUBLISH` (a Redis 7 cluster), else with `PUBLISH`.
    sharded: bool,
    /// With `min_replicas`: the connections of the commands followed by `WAIT`.
    replicated: Option<Replicated>,
    /// Where the connections go, to open more of them.
    source: Source,
}

/// [`LockError::PermitsMismatch`] for the `LOCKPERMITS <m>` error reply of the acquire
/// scripts (the lock is held with `m` permits); any other error as it is.
fn permits_refused(keys: &LockKeys, e: LockError) -> LockError {
    let held = match &e {
        LockError::Redis(re) if re.code() == Some("LOCKPERMITS") => re
            .detail()
            .and_then(|d| d.split_whitespace().next())
            .and_then(|m| m.parse().ok()),
        _ => None,
    };
    match held {
        Some(held) => LockError::PermitsMismatch {
            name: keys.name().to_owned(),
            held,
            requested: keys.kind.permits(),
        },
        None => e,
    }
}

impl RedisNode {
    /// What the kernel's layout of a command depends on here.
    fn server(&self) -> Server {
        Server {
            resends: self.resends(),
            publish: self.publish(),
        }
    }

    /// How releases are published: `SPUBLISH` on a Redis 7 cluster, else `PUBLISH`.
    fn publish(&self) -> &'static str {
        if self.sharded {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }
}

impl Node for RedisNode {
    fn run<'a>(&'a self, command: &'a Command<'a>) -> BoxFuture<'a, Result<Answer>> {
        let answer = async move {
            let server = self.server();
            let keys = command.keys();
            let applied = |reply: &i64| command.answer(*reply).applied();
            let reply: i64 = match command.call(server) {
                Call::SetNx => {
                    let mut cmd = redis::cmd("SET");
                    command.lay_out(&mut cmd, server);
                    let set: Option<String> =
                        self.query_replicated(keys, &cmd, Option::is_some).await?;
                    i64::from(set.is_some())
                }
                Call::Script(script) if command.replicated() => {
                    self.eval_replicated(keys, script, |cmd| command.lay_out(cmd, server), applied)
                        .await?
                }
                Call::Script(script) => {
                    self.eval(script, |cmd| command.lay_out(cmd, server))
                        .await?
                }
            };
            Ok(command.answer(reply))
        };
        Box::pin(async move { answer.await.map_err(|e| permits_refused(command.keys(), e)) })
    }

    fn peek<'a>(&'a self, keys: &'a LockKeys) -> BoxFuture<'a, Result<Option<Found>>> {
        Box::pin(async move {
            Ok(self
                .peek_all(std::slice::from_ref(&keys.lock))
                .await?
                .pop()
                .and_then(|found| found.into_iter().next()))
        })
    }

    fn evict<'a>(
        &'a self,
        keys: &'a LockKeys,
        eviction: Eviction<'a>,
    ) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(async move {
            let publish = self.publish();
            self.eval(&FORCE, |cmd| {
                cmd.arg(2)
                    .arg(&keys.lock)
                    .arg(keys.fence())
                    .arg(millis_ceil(FENCE_KEEP))
                    .arg(publish)
                    .arg(eviction.by)
                    .arg(eviction.holder.unwrap_or(""))
                    .arg(millis_ceil(EVICTION_RECORD));
            })
            .await
        })
    }

    fn evicted_by<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>>> {
        Box::pin(async move {
            let mut get = redis::cmd("GET");
            get.arg(keys.evicted(token));
            Ok(self.query(&get).await?)
        })
    }

    fn scan<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<Vec<(String, Found)>>> {
        Box::pin(async move { self.scan_all(pattern).await })
    }
}
