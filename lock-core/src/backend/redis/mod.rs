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
use crate::command::{Call, FENCE_KEEP};
use crate::keys::LockKeys;
use crate::validate::millis_ceil;
use crate::{LockError, Result};

mod connect;
mod native;
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
    /// The server's native compare-and-set commands, once probed.
    native: native::Capabilities,
    /// The scripts the server has run ([`Script::bit`](crate::scripts::Script::bit)s) since
    /// it last answered `NOSCRIPT`.
    scripts_run: std::sync::atomic::AtomicU32,
    /// The names whose releases found their key marked by a waiter lately.
    marked: native::Marked,
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
            let mut server = self.server(command).await;
            let keys = command.keys();
            let applied = |reply: &i64| command.answer(*reply).applied();
            let release = matches!(command, Command::Release { .. });
            // A name whose releases here found the key marked lately: the script first.
            if release && server.native.delifeq && self.marked.lately(&keys.lock) {
                server.native.delifeq = false;
            }
            let mut call = command.call(server);
            let mut fell_back = false;
            if call.is_native() {
                if let Some(reply) = self.native_reply(command, server, call).await? {
                    if release {
                        self.marked.clear(&keys.lock);
                    }
                    return Ok(command.answer(reply));
                }
                server = server.scripted();
                call = command.call(server);
                fell_back = true;
            }
            let reply: i64 = match call {
                Call::SetNx => {
                    let mut cmd = crate::command::cmd("SET");
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
                Call::DelIfEq | Call::SetIfEq => {
                    unreachable!("a scripted server sends no native command")
                }
            };
            let answer = command.answer(reply);
            if release && fell_back && answer.applied() {
                // DELIFEQ found it unequal, and the script found it ours: marked by a waiter.
                self.marked.found(&keys.lock);
            }
            Ok(answer)
        };
        Box::pin(async move {
            answer.await.map_err(|e| {
                if native::cut(&e) {
                    self.maybe_another_server();
                }
                permits_refused(command.keys(), e)
            })
        })
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
