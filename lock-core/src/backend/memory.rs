//! The in-process backend: the Redis backend's own code ([`RedisNode`]: the same commands, the
//! same scripts, the same reply handling) talking to a Redis server modelled in this process
//! ([`crate::model`]: a keyspace with Redis' rules, and the scripts run in an embedded Lua 5.1)
//! instead of one across a socket. So `LockManager::in_memory()` cannot drift from what a
//! server does: the scripts are the only definition of a lock, here as there.
//!
//! Time is tokio's clock, so handlers can be unit-tested under `tokio::time::pause()`: the
//! model's `now` is the wall clock when the server was made, moved on by tokio's `Instant`
//! since. Published release messages are delivered to the waiters' table at once, as the
//! command that published them returns.
//!
//! [`RedisNode`]: super::redis::RedisNode

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use redis::{Arg, Cmd, RedisFuture, Value};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::notify::{Interest, Table, Watcher};
use super::BoxFuture;
use crate::command::Native;
use crate::locked;
use crate::model::{Model, Now, Reply};

/// One modelled Redis server, shared by the connections to it.
pub(crate) struct ModelServer {
    model: Mutex<Model>,
    /// The wall clock (µs since the epoch) at `started`, and tokio's clock then. It moves only
    /// when the simulator makes the server's clock jump.
    epoch_us: AtomicU64,
    started: Instant,
    /// The waiters, woken by what the scripts publish.
    table: Arc<Table>,
    /// The simulator's pub/sub links: each gets every message published, to deliver it (or
    /// not) through its network.
    #[cfg(test)]
    taps: Mutex<Vec<tokio::sync::mpsc::UnboundedSender<(String, String)>>>,
}

impl ModelServer {
    /// The in-memory backend's server: with Valkey 9's native compare-and-set commands, which
    /// its connections use as they would on Valkey 9 ([`Native`]).
    pub(crate) fn new() -> Arc<Self> {
        let epoch_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        Self::with_clock(
            epoch_us,
            Native {
                delifeq: true,
                set_ifeq: true,
            },
        )
    }

    /// A server whose clock reads `epoch_us` (µs since the Unix epoch) now: the simulator's,
    /// so that a seed replays exactly, with the `native` compare-and-set commands.
    pub(crate) fn with_clock(epoch_us: u64, native: Native) -> Arc<Self> {
        let mut model = Model::new();
        model.set_native(native);
        Arc::new(Self {
            model: Mutex::new(model),
            epoch_us: AtomicU64::new(epoch_us),
            started: Instant::now(),
            table: Arc::default(),
            #[cfg(test)]
            taps: Mutex::default(),
        })
    }

    /// Every message published from now on, as `(channel, message)`: a simulated pub/sub
    /// connection's view of the server (it filters by what it has subscribed).
    #[cfg(test)]
    pub(crate) fn tap(&self) -> tokio::sync::mpsc::UnboundedReceiver<(String, String)> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        locked(&self.taps).push(tx);
        rx
    }

    /// A restart without persistence: every key is gone, and every cached script.
    #[cfg(test)]
    pub(crate) fn flush(&self) {
        let mut model = locked(&self.model);
        let native = model.native();
        *model = Model::new();
        model.set_native(native);
    }

    /// The native compare-and-set commands it has.
    pub(crate) fn native(&self) -> Native {
        locked(&self.model).native()
    }

    /// It has these native compare-and-set commands from now on (a server restarted as another
    /// version behind the same address).
    #[cfg(test)]
    pub(crate) fn set_native(&self, native: Native) {
        locked(&self.model).set_native(native);
    }

    /// `SCRIPT FLUSH`, or a restart that kept the data: the next `EVALSHA` of every script
    /// gets `NOSCRIPT`.
    #[cfg(test)]
    pub(crate) fn flush_scripts(&self) {
        locked(&self.model).flush();
    }

    /// The server's memory fills up to `maxmemory` under `noeviction` (`true`), or is freed:
    /// see [`Model::set_full`].
    #[cfg(test)]
    pub(crate) fn set_full(&self, full: bool) {
        locked(&self.model).set_full(full);
    }

    /// The keys whose name starts with `prefix` that are still there (not expired): for the
    /// simulator's end-of-run check.
    #[cfg(test)]
    pub(crate) fn live_keys(&self, prefix: &str) -> Vec<String> {
        let model = locked(&self.model);
        let now = self.now().ms();
        model
            .keyspace()
            .entries()
            .filter(|(key, entry)| {
                key.starts_with(prefix.as_bytes()) && entry.expires_at_ms.is_none_or(|at| now <= at)
            })
            .map(|(key, _)| String::from_utf8_lossy(key).into_owned())
            .collect()
    }

    /// The first instant at which the model's clock is past millisecond `ms` (when a key that
    /// expires at `ms` is gone).
    #[cfg(test)]
    pub(crate) fn instant_after_ms(&self, ms: u64) -> Instant {
        self.instant_at_ms(ms + 1)
    }

    /// The instant the model's clock reads millisecond `ms`.
    #[cfg(test)]
    pub(crate) fn instant_at_ms(&self, ms: u64) -> Instant {
        let us = ms.saturating_mul(1000).saturating_sub(self.epoch());
        self.started + std::time::Duration::from_micros(us)
    }

    /// For the simulator's checks, without touching anything: the string at `key` and until
    /// when it lives, or the hash field `field` of `key` and until when its lease runs (the
    /// server time in the field, as the permit scripts write it).
    #[cfg(test)]
    pub(crate) fn lease_at(&self, key: &str, field: Option<&str>) -> Option<(String, Instant)> {
        use crate::model::keyspace::Value as Stored;
        let model = locked(&self.model);
        let entry = model.keyspace().entry(key.as_bytes())?;
        let now = self.now().ms();
        if entry.expires_at_ms.is_some_and(|at| now > at) {
            return None;
        }
        let key_end = entry
            .expires_at_ms
            .map_or(self.started + crate::validate::MAX_TTL, |at| {
                self.instant_after_ms(at)
            });
        match (&entry.value, field) {
            (Stored::Str(value), None) => {
                Some((String::from_utf8_lossy(value).into_owned(), key_end))
            }
            (Stored::Hash(fields), Some(field)) => {
                let (_, ends) = fields.iter().find(|(f, _)| f == field.as_bytes())?;
                let ends: u64 = std::str::from_utf8(ends).ok()?.parse().ok()?;
                (ends > now).then(|| (field.to_owned(), self.instant_at_ms(ends).min(key_end)))
            }
            _ => None,
        }
    }

    fn epoch(&self) -> u64 {
        self.epoch_us.load(Ordering::Relaxed)
    }

    /// The server's wall clock jumps by `by_us` (forward, or back when negative), as an NTP
    /// step or an operator's `date -s` makes it: expiries and `TIME` alike move with it.
    #[cfg(test)]
    pub(crate) fn jump(&self, by_us: i64) {
        let _model = locked(&self.model);
        let epoch = self.epoch().saturating_add_signed(by_us);
        self.epoch_us.store(epoch, Ordering::Relaxed);
    }

    fn now(&self) -> Now {
        let since = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        Now {
            us: self.epoch().saturating_add(since),
        }
    }

    /// Runs one command as the server would, and delivers what it published.
    fn run(&self, cmd: &Cmd) -> Value {
        let args: Vec<&[u8]> = cmd
            .args_iter()
            .filter_map(|arg| match arg {
                Arg::Simple(bytes) => Some(bytes),
                // The client's commands name their cursors themselves.
                _ => None,
            })
            .collect();
        let (reply, published) = {
            let mut model = locked(&self.model);
            // Read under the lock: commands run in the order of their clock readings, as on a
            // server, whatever thread sends them.
            let now = self.now();
            let reply = match args.first().map(|c| c.to_ascii_uppercase()) {
                Some(c) if c == b"EVAL" || c == b"EVALSHA" => script(&mut model, now, &c, &args),
                _ => model.call(now, &args),
            };
            (reply, model.drain_published())
        };
        for message in published {
            let channel = String::from_utf8_lossy(&message.channel);
            let message = String::from_utf8_lossy(&message.message);
            self.table.wake(&channel, &message);
            #[cfg(test)]
            locked(&self.taps)
                .retain(|tap| tap.send((channel.to_string(), message.to_string())).is_ok());
        }
        value(reply)
    }
}

/// `EVAL`/`EVALSHA script numkeys key... arg...` on the model.
fn script(model: &mut Model, now: Now, command: &[u8], args: &[&[u8]]) -> Reply {
    let numkeys = args
        .get(2)
        .and_then(|n| std::str::from_utf8(n).ok())
        .and_then(|n| n.parse::<usize>().ok());
    let (Some(body), Some(numkeys)) = (args.get(1), numkeys) else {
        return Reply::error("ERR wrong number of arguments for 'eval' command");
    };
    let Some((keys, argv)) = args
        .get(3..)
        .and_then(|rest| (numkeys <= rest.len()).then(|| rest.split_at(numkeys)))
    else {
        return Reply::error("ERR Number of keys can't be greater than number of args");
    };
    let body = String::from_utf8_lossy(body);
    if command == b"EVAL" {
        model.eval(now, &body, keys, argv)
    } else {
        model.evalsha(now, &body, keys, argv)
    }
}

/// A model reply as the redis crate reads a server's.
fn value(reply: Reply) -> Value {
    match reply {
        Reply::Nil => Value::Nil,
        Reply::Int(n) => Value::Int(n),
        Reply::Bulk(bytes) => Value::BulkString(bytes),
        Reply::Status(status) if status == "OK" => Value::Okay,
        Reply::Status(status) => Value::SimpleString(status),
        // Parsed from the wire form, so that the error's kind (NOSCRIPT, WRONGTYPE, OOM, ...)
        // is what the redis crate makes of a server's.
        Reply::Error(text) => redis::parse_redis_value(format!("-{text}\r\n").as_bytes())
            .unwrap_or_else(|e| Value::SimpleString(format!("unparsable error reply: {e}"))),
        Reply::Array(items) => Value::Array(items.into_iter().map(value).collect()),
    }
}

/// A connection to a [`ModelServer`]: every command runs at once, in the caller's task.
#[derive(Clone)]
pub(crate) struct ModelConn {
    pub(crate) server: Arc<ModelServer>,
    /// Whether the client on it re-sends commands by itself (the simulator's stand-in for a
    /// cluster client), so that the node sends what it sends to a cluster.
    pub(crate) resends: bool,
}

impl redis::aio::ConnectionLike for ModelConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let reply = self.server.run(cmd);
        Box::pin(async move { Ok(reply) })
    }

    /// A plain pipeline (the client's `WAIT` pipelines, `GET`+`PTTL` batches): every command
    /// in order, the replies `offset..offset + count` of them. No `MULTI`/`EXEC`: the client
    /// sends none.
    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let replies: Vec<Value> = pipeline
            .cmd_iter()
            .map(|cmd| self.server.run(cmd))
            .collect();
        Box::pin(async move { Ok(replies.into_iter().skip(offset).take(count).collect()) })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

/// Release messages of a [`ModelServer`]: waiters register in its table, and every message is
/// delivered as it is published (no connection, no subscription to confirm).
pub(crate) struct ModelWatcher(pub(crate) Arc<ModelServer>);

impl Watcher for ModelWatcher {
    fn watch(&self, channel: &str, waiter: &Arc<Notify>, ticket: Option<&str>) -> Interest {
        self.0.table.register_listening(channel, waiter, ticket)
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
