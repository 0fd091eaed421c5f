//! Running the lock scripts (`crate::scripts`): each sent by its SHA1 (`EVALSHA`), with its
//! body after `NOSCRIPT`.

use std::sync::atomic::Ordering;

use redis::{Cmd, ErrorKind, FromRedisValue, ServerErrorKind};

use super::connect::Conn;
use super::replicas::{check_acked, send_waited, MinReplicas};
use super::RedisNode;
use crate::keys::LockKeys;
use crate::scripts::Script;
use crate::{LockError, Result};

impl RedisNode {
    /// `EVALSHA`, one round trip while the server has the script cached. After `NOSCRIPT`
    /// (first use, `SCRIPT FLUSH`, or a restarted server) it sends `EVAL` with the body,
    /// which runs the script and caches it again: still no separate `SCRIPT LOAD`.
    pub(super) async fn eval<T: FromRedisValue>(
        &self,
        script: &Script,
        args: impl Fn(&mut Cmd),
    ) -> Result<T> {
        Ok(self.run_script(&self.conn, script, args, None).await?.0)
    }

    /// [`eval`](Self::eval) of a script whose write must reach the replicas: with
    /// `min_replicas`, followed by `WAIT` in the same round trip, on a connection for such
    /// commands. `applied` tells from the reply whether the script wrote what must be
    /// replicated; if it did and too few replicas acknowledged it in time, the answer is
    /// [`LockError::NotReplicated`] (what the script did stays done on the primary).
    pub(super) async fn eval_replicated<T: FromRedisValue>(
        &self,
        keys: &LockKeys,
        script: &Script,
        args: impl Fn(&mut Cmd),
        applied: impl Fn(&T) -> bool,
    ) -> Result<T> {
        let Some(replicated) = &self.replicated else {
            return self.eval(script, args).await;
        };
        let lent = self.lend(replicated).await?;
        let sent = self
            .run_script(lent.conn(), script, args, Some(replicated.want))
            .await;
        // An error the server answered (OOM, WRONGTYPE, ...) leaves the connection good.
        if sent.as_ref().map_or_else(
            |e| matches!(e, LockError::Redis(e) if e.code().is_some()),
            |_| true,
        ) {
            lent.answered();
        }
        let (reply, acked) = sent?;
        check_acked(keys, replicated.want, applied(&reply), acked)?;
        Ok(reply)
    }
}

impl RedisNode {
    /// `script` with `args` on `conn` (see [`RedisNode::eval`]), followed by `WAIT` when `wait`
    /// is given: its reply, and how many replicas acknowledged it (0 without `wait`). A server
    /// that no longer knows a script it ran (`NOSCRIPT`) restarted or is another one (or its
    /// scripts were flushed): its native commands are asked again before the next release or
    /// extend.
    async fn run_script<T: FromRedisValue>(
        &self,
        conn: &Conn,
        script: &Script,
        args: impl Fn(&mut Cmd),
        wait: Option<MinReplicas>,
    ) -> Result<(T, usize)> {
        let command = |name: &str, first: &str| {
            let mut cmd = crate::command::cmd(name);
            cmd.arg(first);
            args(&mut cmd);
            cmd
        };
        let ran = match send_waited(conn, &command("EVALSHA", script.sha1()), wait).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                // Only a script it ran before tells that the server lost its scripts: a
                // script's first use meets NOSCRIPT anyway.
                if self.scripts_run.load(Ordering::Relaxed) & script.bit() != 0 {
                    self.maybe_another_server();
                }
                send_waited(conn, &command("EVAL", script.body), wait).await?
            }
            other => other?,
        };
        if self.scripts_run.load(Ordering::Relaxed) & script.bit() == 0 {
            self.scripts_run.fetch_or(script.bit(), Ordering::Relaxed);
        }
        Ok(ran)
    }
}
