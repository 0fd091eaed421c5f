//! Running the lock scripts (`crate::scripts`): each sent by its SHA1 (`EVALSHA`), with its
//! body after `NOSCRIPT`.

use redis::{Cmd, ErrorKind, FromRedisValue, ServerErrorKind};

use super::connect::Conn;
use super::replicas::{check_acked, send_waited, MinReplicas};
use super::RedisNode;
use crate::keys::LockKeys;
use crate::scripts::Script;
use crate::Result;

impl RedisNode {
    /// `EVALSHA`, one round trip while the server has the script cached. After `NOSCRIPT`
    /// (first use, `SCRIPT FLUSH`, or a restarted server) it sends `EVAL` with the body,
    /// which runs the script and caches it again: still no separate `SCRIPT LOAD`.
    pub(super) async fn eval<T: FromRedisValue>(
        &self,
        script: &Script,
        args: impl Fn(&mut Cmd),
    ) -> Result<T> {
        Ok(run_script(&self.conn, script, args, None).await?.0)
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
        let (reply, acked) = run_script(lent.conn(), script, args, Some(replicated.want)).await?;
        lent.answered();
        check_acked(keys, replicated.want, applied(&reply), acked)?;
        Ok(reply)
    }
}

/// `script` with `args` on `conn` (see [`RedisNode::eval`]), followed by `WAIT` when `wait`
/// is given: its reply, and how many replicas acknowledged it (0 without `wait`).
pub(super) async fn run_script<T: FromRedisValue>(
    conn: &Conn,
    script: &Script,
    args: impl Fn(&mut Cmd),
    wait: Option<MinReplicas>,
) -> Result<(T, usize)> {
    let command = |name: &str, first: &str| {
        let mut cmd = redis::cmd(name);
        cmd.arg(first);
        args(&mut cmd);
        cmd
    };
    match send_waited(conn, &command("EVALSHA", script.sha1()), wait).await {
        Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            Ok(send_waited(conn, &command("EVAL", script.body), wait).await?)
        }
        other => Ok(other?),
    }
}
