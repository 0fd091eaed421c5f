//! One Redis server (or a proxy in front of one), or a Redis Cluster, over one multiplexed,
//! reconnecting connection shared by every lock of a manager: the [`Node`] of the Redis
//! deployments. Each operation is one command: `SET NX PX` for an uncontended acquire, one
//! script for the rest (`EVALSHA`, with `EVAL` after `NOSCRIPT`).
//!
//! By job: `connect` (where commands go, and the cluster's and Sentinel's re-sends),
//! `replicas` (`min_replicas`: `WAIT` on lent connections), `scripts` (the script table) and
//! `operate` (operators' reads and scans); this file is the [`Node`] itself.

use std::sync::Arc;
use std::time::Duration;

use super::notify::Watcher;
use super::{BoxFuture, Found, Node, Taken, Ticket};
use crate::keys::LockKeys;
use crate::kind::Kind;
use crate::validate::millis_ceil;
use crate::{LockError, Result};

mod connect;
mod operate;
mod replicas;
mod scripts;

use crate::scripts::{FENCE, FORCE, LEAVE};
pub(crate) use connect::Endpoint;
use connect::{Conn, Source};
pub(crate) use replicas::MinReplicas;
use replicas::Replicated;
pub(crate) use scripts::FENCE_KEEP;

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

/// The answer of acquire.lua or fair.lua: 1 ours; else minus the milliseconds worth waiting at
/// most (0 when unknown).
fn taken(reply: i64) -> Taken {
    if granted(&reply) {
        return Taken::Granted;
    }
    Taken::Held((reply < 0).then(|| Duration::from_millis(reply.unsigned_abs())))
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

/// The acquire and release scripts' last argument: `'1'` when the client re-sends commands by
/// itself, so that an attempt refused or released leaves its tomb (see scripts/prelude/tomb.lua).
fn tomb_arg(resends: bool) -> &'static str {
    if resends {
        "1"
    } else {
        "0"
    }
}

/// Whether acquire.lua or fair.lua granted the lock.
fn granted(reply: &i64) -> bool {
    *reply == 1
}

impl Node for RedisNode {
    fn acquire<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
        ttl: Duration,
        mark: bool,
        ticket: Option<Ticket<'a>>,
    ) -> BoxFuture<'a, Result<Taken>> {
        let taken = async move {
            let ttl_ms = millis_ceil(ttl);
            let mark_arg = if mark { "1" } else { "0" };
            let tomb = tomb_arg(self.resends());
            let scripts = keys.kind.scripts();
            // A plain SET NX cannot tell our own key from another's. That is enough where the
            // client never re-sends (one server); the cluster client re-sends after I/O errors,
            // so there, a copy of this attempt may already have set the key: the script says so.
            if scripts.set_nx && !mark && !self.resends() {
                let mut cmd = redis::cmd("SET");
                cmd.arg(&keys.lock)
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms);
                let set: Option<String> =
                    self.query_replicated(keys, &cmd, Option::is_some).await?;
                return Ok(if set.is_some() {
                    Taken::Granted
                } else {
                    Taken::Held(None)
                });
            }
            let reply: i64 = self
                .eval_replicated(
                    keys,
                    scripts.acquire,
                    |cmd| {
                        let fair = ticket.filter(|_| keys.kind == Kind::Fair);
                        match fair {
                            // fair.lua: the line too, and the ticket.
                            Some(ticket) => cmd
                                .arg(2)
                                .arg(&keys.lock)
                                .arg(keys.queue())
                                .arg(token)
                                .arg(ttl_ms)
                                .arg(ticket.id)
                                .arg(millis_ceil(ticket.keep)),
                            None => cmd.arg(1).arg(&keys.lock).arg(token).arg(ttl_ms),
                        };
                        cmd.arg(mark_arg).arg(tomb);
                        if let Some(bound) = scripts.bound {
                            cmd.arg(bound);
                        } else if let (Some(claim), None) = (ticket, fair) {
                            // acquire.lua: a waiting writer's claim.
                            cmd.arg(claim.id).arg(millis_ceil(claim.keep));
                        }
                    },
                    granted,
                )
                .await?;
            Ok(taken(reply))
        };
        Box::pin(async move { taken.await.map_err(|e| permits_refused(keys, e)) })
    }

    fn leave<'a>(&'a self, keys: &'a LockKeys, ticket: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let publish = if self.sharded { "SPUBLISH" } else { "PUBLISH" };
            let _: i64 = self
                .eval(&LEAVE, |cmd| {
                    cmd.arg(2)
                        .arg(keys.queue())
                        .arg(&keys.lock)
                        .arg(ticket)
                        .arg(publish)
                        .arg(tomb_arg(self.resends()));
                })
                .await?;
            Ok(())
        })
    }

    fn release<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
        keep: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let publish = if self.sharded { "SPUBLISH" } else { "PUBLISH" };
            let script = keys.kind.scripts().release;
            let tomb = tomb_arg(self.resends());
            let released: i64 = self
                .eval(script, |cmd| {
                    cmd.arg(1)
                        .arg(&keys.lock)
                        .arg(token)
                        .arg(millis_ceil(keep))
                        .arg(publish)
                        .arg(tomb);
                })
                .await?;
            Ok(released == 1)
        })
    }

    fn extend<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let script = keys.kind.scripts().extend;
            let extended: i64 = self
                .eval_replicated(
                    keys,
                    script,
                    |cmd| {
                        cmd.arg(1).arg(&keys.lock).arg(token).arg(millis_ceil(ttl));
                    },
                    |&reply| reply == 1,
                )
                .await?;
            Ok(extended == 1)
        })
    }

    fn fence<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>>> {
        Box::pin(async move {
            let fence: u64 = self
                .eval_replicated(
                    keys,
                    &FENCE,
                    |cmd| {
                        cmd.arg(2)
                            .arg(&keys.lock)
                            .arg(keys.fence())
                            .arg(token)
                            .arg(millis_ceil(FENCE_KEEP));
                    },
                    |&fence| fence > 0,
                )
                .await?;
            Ok((fence > 0).then_some(fence))
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

    fn evict<'a>(&'a self, keys: &'a LockKeys) -> BoxFuture<'a, Result<Option<String>>> {
        Box::pin(async move {
            let publish = if self.sharded { "SPUBLISH" } else { "PUBLISH" };
            self.eval(&FORCE, |cmd| {
                cmd.arg(2)
                    .arg(&keys.lock)
                    .arg(keys.fence())
                    .arg(millis_ceil(FENCE_KEEP))
                    .arg(publish);
            })
            .await
        })
    }

    fn scan<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<Vec<(String, Found)>>> {
        Box::pin(async move { self.scan_all(pattern).await })
    }
}
