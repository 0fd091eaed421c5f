//! One Redis server (or a proxy in front of one) over a single multiplexed, reconnecting
//! connection shared by every lock of a manager.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, ErrorKind, ServerErrorKind};

use super::notify::{Interest, Notifier};
use super::{Attempt, LockKeys};
use crate::validate::millis_ceil;
use crate::Result;

/// A Lua script with its SHA1, computed once per process.
pub(crate) struct LuaScript {
    body: &'static str,
    sha1: String,
}

impl LuaScript {
    fn new(body: &'static str) -> Self {
        Self {
            body,
            sha1: redis::Script::new(body).get_hash().to_owned(),
        }
    }
}

pub(crate) static ACQUIRE: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new(include_str!("../scripts/acquire.lua")));
pub(crate) static RELEASE: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new(include_str!("../scripts/release.lua")));
pub(crate) static EXTEND: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new(include_str!("../scripts/extend.lua")));

/// Connection settings of the single-server backend.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    pub(crate) connect: Duration,
    pub(crate) response: Duration,
}

pub(crate) struct RedisBackend {
    conn: ConnectionManager,
    /// Release notifications for waiters, on a second connection opened on the first wait.
    notifier: Arc<Notifier>,
}

impl RedisBackend {
    /// Connects (and authenticates) now, so a wrong url or password fails here, not at the
    /// first lock.
    pub(crate) async fn connect(url: &str, timeouts: Timeouts) -> Result<Self> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeouts.connect))
            .set_response_timeout(Some(timeouts.response))
            // A lock request should fail fast while the server is down rather than sit in a
            // long reconnect loop; every later request triggers a fresh reconnect attempt.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_with_config(client.clone(), config).await?;
        Ok(Self {
            conn,
            notifier: Arc::new(Notifier::new(client)),
        })
    }

    pub(crate) async fn acquire(
        &self,
        keys: &LockKeys,
        token: &str,
        ttl: Duration,
    ) -> Result<Attempt> {
        let reply: i64 = self
            .eval(&ACQUIRE, |cmd| {
                cmd.arg(2)
                    .arg(&keys.lock)
                    .arg(&keys.fence)
                    .arg(token)
                    .arg(millis_ceil(ttl));
            })
            .await?;
        Ok(match u64::try_from(reply) {
            Ok(fence) if fence > 0 => Attempt::Granted(fence),
            // Minus the holder's remaining lease in ms, or 0 when unknown.
            _ => Attempt::Held((reply < 0).then(|| Duration::from_millis(reply.unsigned_abs()))),
        })
    }

    pub(crate) async fn release(
        &self,
        keys: &LockKeys,
        token: &str,
        keep: Duration,
    ) -> Result<bool> {
        let released: i64 = self
            .eval(&RELEASE, |cmd| {
                cmd.arg(1).arg(&keys.lock).arg(token).arg(millis_ceil(keep));
            })
            .await?;
        Ok(released == 1)
    }

    pub(crate) async fn extend(&self, keys: &LockKeys, token: &str, ttl: Duration) -> Result<bool> {
        let extended: i64 = self
            .eval(&EXTEND, |cmd| {
                cmd.arg(1).arg(&keys.lock).arg(token).arg(millis_ceil(ttl));
            })
            .await?;
        Ok(extended == 1)
    }

    pub(crate) async fn watch(&self, channel: &str) -> Interest {
        self.notifier.watch(channel).await
    }

    /// `EVALSHA`, one round trip while the server has the script cached. After `NOSCRIPT`
    /// (first use, `SCRIPT FLUSH`, or a restarted server) it sends `EVAL` with the body,
    /// which runs the script and caches it again: still no separate `SCRIPT LOAD`.
    async fn eval(&self, script: &LuaScript, args: impl Fn(&mut Cmd)) -> Result<i64> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&script.sha1);
        args(&mut cmd);
        match cmd.query_async(&mut conn).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(script.body);
                args(&mut cmd);
                Ok(cmd.query_async(&mut conn).await?)
            }
            other => Ok(other?),
        }
    }
}
