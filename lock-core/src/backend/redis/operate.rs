//! What operators ask of a node (`inspect`, `list`, `force_release`) and the check made at
//! `build` (the memory policy): none of it is on the path of a lock.

use std::time::Duration;

#[cfg(feature = "cluster")]
use redis::ErrorKind;
use redis::{Cmd, FromRedisValue, Value};

#[cfg(feature = "cluster")]
use super::connect::Conn;
use super::connect::{address, Request, Source};
use super::RedisNode;
use crate::backend::{waiters, Found};
use crate::scripts::PERMIT_PEEK;
use crate::{LockError, Result};

/// The fields of an `HGETALL` reply (none when it was not a hash: an error, or nothing).
fn fields(reply: &Value) -> Vec<(String, String)> {
    redis::from_redis_value(reply.clone()).unwrap_or_default()
}

/// Keys asked for per `SCAN` call, and peeked at per round trip, by `list`.
const SCAN_BATCH: usize = 500;

impl RedisNode {
    /// `GET` and `PTTL` of each of `keys`, and `HGETALL` of its writers' claims and of its fair
    /// line: in one round
    /// trip on one server, one per key on a cluster. Not atomic: a key that expires in between
    /// is left out. A lock of `permits(n)` (a hash, where `GET` is refused) is read with one
    /// more script: one `Found` per live permit, the earliest taken first. The writers waiting
    /// are the claims still live by this machine's clock (a claim lapses within a few poll
    /// intervals of its writer's last attempt, so one that just stopped may still count).
    pub(super) async fn peek_all(&self, keys: &[String]) -> Result<Vec<Vec<Found>>> {
        let mut out = Vec::with_capacity(keys.len());
        // One key per pipeline on a cluster (the keys live in many slots); all at once
        // elsewhere.
        let per = if self.is_cluster() {
            1
        } else {
            keys.len().max(1)
        };
        for chunk in keys.chunks(per) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.cmd("GET")
                    .arg(key)
                    .cmd("PTTL")
                    .arg(key)
                    .cmd("HGETALL")
                    .arg(format!("{key}:x"))
                    .cmd("HGETALL")
                    .arg(format!("{key}:q"));
            }
            // Each reply on its own: a key of another type under the same pattern (WRONGTYPE)
            // is not a lock, and must not fail the others.
            pipe.ignore_errors();
            let flat: Vec<Value> = self.conn.send(&Request::Pipe(&pipe)).await?;
            let now_ms = crate::token::unix_ms_now();
            for (key, pair) in chunk.iter().zip(flat.chunks(4)) {
                let waiters = waiters(&fields(&pair[2]), &fields(&pair[3]), now_ms);
                let found = match pair[0].clone().extract_error() {
                    Ok(value) => {
                        let Ok(value) = redis::from_redis_value::<String>(value) else {
                            out.push(Vec::new());
                            continue;
                        };
                        let left: i64 = redis::from_redis_value(pair[1].clone())
                            .map_err(redis::RedisError::from)?;
                        // -2: it expired between the two commands; -1: no expiry (not one of
                        // ours, but shown as it is).
                        (left != -2)
                            .then(|| Found {
                                value,
                                left: u64::try_from(left).ok().map(Duration::from_millis),
                                permits: 1,
                                waiters,
                            })
                            .into_iter()
                            .collect()
                    }
                    Err(e) if e.code() == Some("WRONGTYPE") => {
                        let mut found = self.peek_permits(key).await?;
                        for f in &mut found {
                            f.waiters.clone_from(&waiters);
                        }
                        found
                    }
                    Err(_) => Vec::new(),
                };
                out.push(found);
            }
        }
        Ok(out)
    }

    /// The live permits of a lock of `permits(n)` at `key` (permit_peek.lua), the earliest
    /// taken first; none when `key` is a hash of something else.
    async fn peek_permits(&self, key: &str) -> Result<Vec<Found>> {
        let reply: Vec<String> = self
            .eval(&PERMIT_PEEK, |cmd| {
                cmd.arg(1).arg(key);
            })
            .await?;
        let Some((n, rest)) = reply.split_first() else {
            return Ok(Vec::new());
        };
        let Ok(permits) = n.parse::<u32>() else {
            return Ok(Vec::new());
        };
        let waited = rest.first().is_some_and(|w| w == "1");
        let mut found: Vec<Found> = rest
            .get(1..)
            .unwrap_or_default()
            .chunks(2)
            .filter_map(|pair| {
                let left: u64 = pair.get(1)?.parse().ok()?;
                // The mark of a plain lock's value, so that `waited_for` reads alike.
                let mark = if waited { "*" } else { "" };
                Some(Found {
                    value: format!("{}{mark}", pair[0]),
                    left: Some(Duration::from_millis(left)),
                    permits,
                    waiters: Vec::new(),
                })
            })
            .collect();
        crate::backend::taken_first(&mut found);
        Ok(found)
    }

    /// Refuses a primary whose `maxmemory-policy` can evict lock keys: every policy but
    /// `noeviction` may, as every lock key has an expiry (the `volatile-*` policies pick among
    /// exactly those), and an evicted lock lets a second holder in. Asked once, at `build`; a
    /// server that refuses `CONFIG` (a managed service, an ACL) is not checked, quietly.
    pub(crate) async fn refuse_evicting(&self) -> Result<()> {
        let Ok(primaries) = self.primaries().await else {
            return Ok(());
        };
        for at in primaries {
            let mut cmd = redis::cmd("CONFIG");
            cmd.arg("GET").arg("maxmemory-policy");
            let server = match (&at, &self.source) {
                (Some((host, port)), _) => format!("{host}:{port}"),
                (None, Source::Client(client)) => address(client),
                (None, _) => "the primary".to_owned(),
            };
            match self.on::<Vec<String>>(at.as_ref(), cmd).await {
                Ok(reply) => {
                    if let Some(policy) = reply.get(1).filter(|p| *p != "noeviction") {
                        return Err(LockError::InvalidConfig {
                            reason: format!(
                                "{server} has maxmemory-policy `{policy}`, which can evict lock keys (each has an expiry): an evicted lock lets a second holder in. Set `maxmemory-policy noeviction` (or keep locks on a server of their own), or accept the risk with `LockManagerBuilder::allow_eviction(true)`"
                            ),
                        });
                    }
                }
                Err(e) => {
                    tracing::debug!(%server, error = %e, "CONFIG GET maxmemory-policy refused; eviction not checked");
                }
            }
        }
        Ok(())
    }

    fn is_cluster(&self) -> bool {
        match self.conn {
            #[cfg(feature = "cluster")]
            Conn::Cluster(..) => true,
            _ => false,
        }
    }

    /// The primaries to `SCAN`: one (`None`, this connection's server) or, on a cluster,
    /// each master's address.
    async fn primaries(&self) -> Result<Vec<Option<(String, u16)>>> {
        match &self.conn {
            #[cfg(feature = "cluster")]
            Conn::Cluster(conn, _) => {
                use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
                let reply = conn
                    .clone()
                    .route_command(
                        redis::cmd("PING"),
                        RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
                    )
                    .await?;
                let Value::Map(answers) = reply else {
                    // Scanning one node only would list part of the locks as if it were all.
                    return Err(LockError::Redis(redis::RedisError::from((
                        ErrorKind::UnexpectedReturnType,
                        "the cluster did not tell its primaries",
                    ))));
                };
                let mut out = Vec::new();
                for (address, _) in answers {
                    let address: String =
                        redis::from_redis_value(address).map_err(redis::RedisError::from)?;
                    let Some((host, port)) = address.rsplit_once(':') else {
                        continue;
                    };
                    if let Ok(port) = port.parse() {
                        out.push(Some((host.to_owned(), port)));
                    }
                }
                Ok(out)
            }
            _ => Ok(vec![None]),
        }
    }

    /// `cmd` on this connection's server, or on a cluster's node at `at`.
    async fn on<T: FromRedisValue>(&self, at: Option<&(String, u16)>, cmd: Cmd) -> Result<T> {
        match (&self.conn, at) {
            #[cfg(feature = "cluster")]
            (Conn::Cluster(conn, _), Some((host, port))) => {
                use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
                let reply = conn
                    .clone()
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        }),
                    )
                    .await?;
                Ok(redis::from_redis_value(reply).map_err(redis::RedisError::from)?)
            }
            _ => {
                let _ = at;
                Ok(self.query(&cmd).await?)
            }
        }
    }

    /// Every lock key matching `pattern` on every primary (`SCAN`, never `KEYS`), with what
    /// [`peek_all`](Self::peek_all) tells of it.
    pub(super) async fn scan_all(&self, pattern: &str) -> Result<Vec<(String, Found)>> {
        let mut keys = Vec::new();
        for at in self.primaries().await? {
            let mut cursor = 0u64;
            loop {
                let mut cmd = redis::cmd("SCAN");
                cmd.arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(SCAN_BATCH);
                let (next, found): (u64, Vec<String>) = self.on(at.as_ref(), cmd).await?;
                keys.extend(found);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        keys.sort();
        keys.dedup();
        let mut out = Vec::with_capacity(keys.len());
        for batch in keys.chunks(SCAN_BATCH) {
            let found = self.peek_all(batch).await?;
            for (key, found) in batch.iter().zip(found) {
                out.extend(found.into_iter().map(|found| (key.clone(), found)));
            }
        }
        Ok(out)
    }
}
