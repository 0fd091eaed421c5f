//! `min_replicas`: the commands whose writes must reach replicas, each followed by `WAIT` (or,
//! with `min_replicas_aof`, `WAITAOF`) on a connection lent to it alone from a pool of such
//! connections.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::{Cmd, FromRedisValue, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::connect::{Conn, Request};
use super::RedisNode;
use crate::backend::Timeouts;
use crate::keys::LockKeys;
use crate::validate::millis_ceil;
use crate::{locked, LockError, Result};

/// `min_replicas(n, timeout)`: a grant, fence increment or extend counts once `replicas`
/// replicas acknowledged it, waiting at most `timeout` for them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MinReplicas {
    pub(crate) replicas: usize,
    pub(crate) timeout: Duration,
    /// `min_replicas_aof`: counts once written to the append-only file of the primary and of
    /// `replicas` replicas (`WAITAOF 1 n`), not only received by the replicas (`WAIT n`).
    pub(crate) aof: bool,
}

impl MinReplicas {
    /// The command that waits for the write before it on its connection: `WAIT n ms`, or
    /// `WAITAOF 1 n ms`.
    fn wait(&self) -> Cmd {
        // `WAIT n 0` would wait forever.
        let ms = millis_ceil(self.timeout).max(1);
        if self.aof {
            let mut cmd = redis::cmd("WAITAOF");
            cmd.arg(1).arg(self.replicas).arg(ms);
            cmd
        } else {
            let mut cmd = redis::cmd("WAIT");
            cmd.arg(self.replicas).arg(ms);
            cmd
        }
    }

    /// How many replicas a reply of [`wait`](Self::wait) counts: `WAIT`'s number, or
    /// `WAITAOF`'s replicas when the primary's own file has the write too (else none: the
    /// grant is not on the primary's disk).
    fn acked(&self, reply: Value) -> redis::RedisResult<usize> {
        if self.aof {
            let (local, replicas): (usize, usize) = redis::from_redis_value(reply)?;
            Ok(if local >= 1 { replicas } else { 0 })
        } else {
            Ok(redis::from_redis_value(reply)?)
        }
    }
}

/// The most connections for commands followed by `WAIT` a manager opens; more such commands at
/// once wait for one to come free (within their attempt's time bound).
const REPLICATED_CONNECTIONS: usize = 64;

/// The connections of the commands that must be replicated. `WAIT` holds up every later
/// command of its connection until it returns, so each such command has a connection to itself
/// for its round trip, lent from this pool: a lagging replica delays only the grants and
/// renewals waiting for it, each by at most the timeout, and never a release (which uses the
/// main connection). `WAIT` counts the acknowledgements of its connection's latest write,
/// which is this command's, or a write after an earlier copy's (acquire.lua).
pub(super) struct Replicated {
    pub(super) want: MinReplicas,
    /// The settings of these connections: the reply comes after the wait for the replicas.
    timeouts: Timeouts,
    /// Connections not lent now.
    idle: Mutex<Vec<Conn>>,
    /// One per connection lent: at most [`REPLICATED_CONNECTIONS`].
    lendable: Arc<Semaphore>,
}

/// A connection lent for one command. It goes back to the pool only once that command has its
/// answer ([`Lent::answered`]): one dropped in flight, or failed, may still be blocked in
/// `WAIT`, so it is closed instead.
pub(super) struct Lent<'a> {
    conn: Option<Conn>,
    pool: &'a Replicated,
    answered: bool,
    _slot: OwnedSemaphorePermit,
}

impl Lent<'_> {
    pub(super) fn conn(&self) -> &Conn {
        self.conn.as_ref().expect("lent until dropped")
    }

    pub(super) fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take().filter(|_| self.answered) {
            locked(&self.pool.idle).push(conn);
        }
    }
}

impl RedisNode {
    /// From now on, a grant, a fence increment or an extend counts only once `want.replicas`
    /// replicas acknowledged it (`WAIT`, or `WAITAOF` with `want.aof`), each on a connection
    /// lent to it alone. Unless `check` is false (a lazy manager), asks the server now whether
    /// it accepts that command (an ACL or a proxy may refuse it; `WAITAOF` needs Redis 7.2 or
    /// Valkey, and `appendonly yes` on the primary).
    pub(crate) async fn min_replicas(
        mut self,
        want: MinReplicas,
        timeouts: Timeouts,
        check: bool,
    ) -> Result<Self> {
        let replicated = Replicated {
            want,
            timeouts: Timeouts {
                response: timeouts.response + want.timeout,
                ..timeouts
            },
            idle: Mutex::new(Vec::new()),
            lendable: Arc::new(Semaphore::new(REPLICATED_CONNECTIONS)),
        };
        if check {
            let lent = self.lend(&replicated).await?;
            // Waits for nothing (no replica; for WAITAOF, the primary's file at most 1 ms).
            let probe = MinReplicas {
                replicas: 0,
                timeout: Duration::from_millis(1),
                ..want
            };
            let answer: redis::RedisResult<Value> =
                lent.conn().send(&Request::One(&probe.wait())).await;
            // `appendfsync no` never moves the offset WAITAOF waits for: every grant would
            // time out. Asked best effort (CONFIG may be refused: then not checked).
            let never_fsyncs = want.aof && {
                let asked: redis::RedisResult<Vec<String>> = lent
                    .conn()
                    .send(&Request::One(
                        redis::cmd("CONFIG").arg("GET").arg("appendfsync"),
                    ))
                    .await;
                asked.is_ok_and(|pair| pair.get(1).is_some_and(|v| v == "no"))
            };
            if never_fsyncs {
                return Err(LockError::InvalidConfig {
                    reason: "min_replicas_aof needs the primary to fsync its append-only file (`appendfsync always` or `everysec`); it has `appendfsync no`, so WAITAOF would never count a grant".to_owned(),
                });
            }
            if let Err(e) = answer {
                return Err(LockError::InvalidConfig {
                    reason: if want.aof {
                        format!(
                            "min_replicas_aof needs the WAITAOF command (Redis 7.2 or later, Valkey) and `appendonly yes` on the primary, and the server refused it: {e}"
                        )
                    } else {
                        format!(
                            "min_replicas needs the WAIT command, and the server refused it: {e}"
                        )
                    },
                });
            }
            lent.answered();
        }
        self.replicated = Some(replicated);
        Ok(self)
    }

    /// A connection of `pool` for one command: an idle one, or a new one (connected on first
    /// use) while fewer than [`REPLICATED_CONNECTIONS`] are lent.
    pub(super) async fn lend<'a>(&self, pool: &'a Replicated) -> Result<Lent<'a>> {
        let slot = Arc::clone(&pool.lendable)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let idle = locked(&pool.idle).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => self.open(pool.timeouts).await?,
        };
        Ok(Lent {
            conn: Some(conn),
            pool,
            answered: false,
            _slot: slot,
        })
    }

    /// A plain command (`SET NX`) whose write must reach the replicas, as
    /// [`eval_replicated`](Self::eval_replicated) sends a script.
    pub(super) async fn query_replicated<T: FromRedisValue>(
        &self,
        keys: &LockKeys,
        cmd: &Cmd,
        applied: impl Fn(&T) -> bool,
    ) -> Result<T> {
        let Some(replicated) = &self.replicated else {
            return Ok(self.query(cmd).await?);
        };
        let lent = self.lend(replicated).await?;
        let sent = send_waited(lent.conn(), cmd, Some(replicated.want)).await;
        // An error the server answered (OOM, WRONGTYPE, ...) leaves the connection good.
        if sent.as_ref().map_or_else(|e| e.code().is_some(), |_| true) {
            lent.answered();
        }
        let (reply, acked) = sent?;
        check_acked(keys, replicated.want, applied(&reply), acked)?;
        Ok(reply)
    }
}

/// `cmd`, then `WAIT` (or `WAITAOF`) in the same round trip when `wait` is given.
pub(super) async fn send_waited<T: FromRedisValue>(
    conn: &Conn,
    cmd: &Cmd,
    wait: Option<MinReplicas>,
) -> redis::RedisResult<(T, usize)> {
    let Some(want) = wait else {
        return Ok((conn.send(&Request::One(cmd)).await?, 0));
    };
    let mut pipe = redis::pipe();
    pipe.add_command(cmd.clone()).add_command(want.wait());
    // Each reply on its own: the command's error is the command's, and a refused `WAIT`
    // (checked at `build`, but an ACL can change) counts as no acknowledgement, so a grant it
    // followed is given back.
    pipe.ignore_errors();
    let (reply, waited): (Value, Value) = conn.send(&Request::Pipe(&pipe)).await?;
    let reply = redis::from_redis_value(reply.extract_error()?)?;
    let acked = match waited.extract_error() {
        Ok(reply) => want.acked(reply)?,
        Err(e) => {
            tracing::warn!(error = %e, "WAIT or WAITAOF refused; counting no replica");
            0
        }
    };
    Ok((reply, acked))
}

/// [`LockError::NotReplicated`] when a write was `applied` and fewer than wanted replicas
/// acknowledged it.
pub(super) fn check_acked(
    keys: &LockKeys,
    want: MinReplicas,
    applied: bool,
    acked: usize,
) -> Result<()> {
    if applied && acked < want.replicas {
        return Err(LockError::NotReplicated {
            name: keys.name().to_owned(),
            acked,
            wanted: want.replicas,
        });
    }
    Ok(())
}
