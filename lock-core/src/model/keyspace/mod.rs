//! The keyspace: keys, their values and their expiry, and exactly the commands that the client
//! and the lock scripts send, with Redis 7.0's replies and errors.
//!
//! Commands outside that set answer `ERR unknown command` (from a script: `Unknown Redis command
//! called from script`, as Redis says), so a script that starts using a new command fails the
//! differential test instead of silently doing something else here.

use std::collections::HashMap;

use super::reply::{errors, Reply};
use crate::command::Native;

mod options;

/// The model's clock reading, given by the caller with every command and script: the in-memory
/// backend reads tokio's (pausable) clock, the simulator its virtual time, which may jump either
/// way. Microseconds, so that `TIME` can answer; everything else uses whole milliseconds, as
/// Redis' `mstime()` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Now {
    /// Microseconds since the Unix epoch.
    pub(crate) us: u64,
}

impl Now {
    #[cfg(test)]
    /// A reading in milliseconds (microsecond part zero).
    pub(crate) fn from_ms(ms: u64) -> Self {
        Now { us: ms * 1000 }
    }

    /// Redis' `mstime()`: whole milliseconds.
    pub(crate) fn ms(self) -> u64 {
        self.us / 1000
    }
}

/// A key's value: the types the lock's keys and the foreign values it must leave alone have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Value {
    /// A string: a lock's token, a fencing counter, or someone else's value.
    Str(Vec<u8>),
    /// A hash, in insertion order: what `HGETALL` answers for a small hash (Redis keeps hashes
    /// of at most 128 fields of at most 64 bytes as a listpack, which keeps that order and
    /// rewrites a field's value in place). Larger hashes come back in hash-table order there,
    /// which no model can predict; the lock's hashes stay small.
    Hash(Fields),
    /// A list: only so that a foreign key of a third type exists (`RPUSH`), for `TYPE` and
    /// `WRONGTYPE`.
    List(Vec<Vec<u8>>),
}

impl Value {
    /// What `TYPE` answers.
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "string",
            Value::Hash(_) => "hash",
            Value::List(_) => "list",
        }
    }
}

/// A hash's fields and values, in insertion order.
pub(crate) type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// A key's value and when it expires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The value.
    pub(crate) value: Value,
    /// The model clock's millisecond at which the key stops existing once the clock has passed
    /// it (Redis' `keyIsExpired`: expired when `now > when`); `None`: no expiry.
    pub(crate) expires_at_ms: Option<u64>,
}

/// A message sent with `PUBLISH` or `SPUBLISH`, kept until the caller drains it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Published {
    /// The channel.
    pub(crate) channel: Vec<u8>,
    /// The message.
    pub(crate) message: Vec<u8>,
    /// `SPUBLISH` (a cluster's shard channel) rather than `PUBLISH`.
    pub(crate) sharded: bool,
}

/// Who sends a command: the arity and unknown-command errors read differently from a script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Caller {
    /// A client connection.
    Client,
    /// `redis.call`/`redis.pcall` inside a script.
    Script,
}

/// Redis' keyspace (one database), with lazy expiry: a key past its expiry is removed when a
/// command touches it, as Redis' `expireIfNeeded` does. There is no active expiry cycle; no
/// reply can tell the difference (`SCAN` skips expired keys, as Redis' does).
#[derive(Clone, Debug, Default)]
pub(crate) struct Keyspace {
    keys: HashMap<Vec<u8>, Entry>,
    published: Vec<Published>,
    /// Used memory above `maxmemory` under `noeviction`: a command that may grow memory is
    /// refused with `OOM` (a script's only while it has written nothing: see lua.rs).
    full: bool,
    /// The native compare-and-set commands the server has (`DELIFEQ`: Valkey 9; `SET ...
    /// IFEQ`: Valkey 8.1); without them it answers as Redis 7.0 does (`ERR unknown command`,
    /// `ERR syntax error`).
    native: Native,
}

impl Keyspace {
    #[cfg(test)]
    /// An empty keyspace.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Runs one command as a client sends it. `args[0]` is the command's name, in any case.
    pub(crate) fn call<A: AsRef<[u8]>>(&mut self, now: Now, args: &[A]) -> Reply {
        let args: Vec<&[u8]> = args.iter().map(AsRef::as_ref).collect();
        self.exec(now, &args, Caller::Client)
    }

    /// The messages published since the last drain, oldest first.
    pub(crate) fn drain_published(&mut self) -> Vec<Published> {
        std::mem::take(&mut self.published)
    }

    #[cfg(test)]
    /// `key`'s value and expiry, if it is there (expired or not: nothing is expired by
    /// looking): for the simulator's checks.
    pub(crate) fn entry(&self, key: &[u8]) -> Option<&Entry> {
        self.keys.get(key)
    }

    #[cfg(test)]
    /// Every key with its value and expiry, expired ones included (nothing is expired by
    /// looking): for the simulator's and the tests' own checks.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&[u8], &Entry)> {
        self.keys.iter().map(|(k, e)| (k.as_slice(), e))
    }

    /// Runs one command for `caller`.
    pub(crate) fn exec(&mut self, now: Now, args: &[&[u8]], caller: Caller) -> Reply {
        let Some(name) = args.first() else {
            return Reply::error("ERR empty command");
        };
        let name = String::from_utf8_lossy(name).to_ascii_uppercase();
        let Some(arity) = arity(&name).filter(|_| self.native.delifeq || name != "DELIFEQ") else {
            return match caller {
                Caller::Script => Reply::error("ERR Unknown Redis command called from script"),
                Caller::Client => Reply::error(format!(
                    "ERR unknown command '{}', with args beginning with: {}",
                    String::from_utf8_lossy(args[0]),
                    args[1..]
                        .iter()
                        .map(|a| format!("'{}' ", String::from_utf8_lossy(a)))
                        .collect::<String>()
                )),
            };
        };
        let n = args.len() as i32;
        if (arity > 0 && n != arity) || (arity < 0 && n < -arity) {
            return match caller {
                Caller::Script => {
                    Reply::error("ERR Wrong number of args calling Redis command from script")
                }
                Caller::Client => Reply::error(errors::arity(&name)),
            };
        }
        if self.full && matches!(caller, Caller::Client) && denies_oom(&name) {
            return Reply::error(errors::OOM);
        }
        let now_ms = now.ms();
        let a = &args[1..];
        match name.as_str() {
            "GET" => match self.lookup(a[0], now_ms) {
                None => Reply::Nil,
                Some(Entry {
                    value: Value::Str(s),
                    ..
                }) => Reply::bulk(s),
                Some(_) => Reply::error(errors::WRONGTYPE),
            },
            "SET" => self.set(now_ms, a),
            "DELIFEQ" => match self.lookup(a[0], now_ms) {
                None => Reply::Int(0),
                Some(Entry {
                    value: Value::Str(s),
                    ..
                }) if s.as_slice() == a[1] => {
                    self.keys.remove(a[0]);
                    Reply::Int(1)
                }
                Some(Entry {
                    value: Value::Str(_),
                    ..
                }) => Reply::Int(0),
                Some(_) => Reply::error(errors::WRONGTYPE),
            },
            "DEL" => {
                let mut n = 0;
                for key in a {
                    if self.lookup(key, now_ms).is_some() {
                        self.keys.remove(*key);
                        n += 1;
                    }
                }
                Reply::Int(n)
            }
            "EXISTS" => Reply::Int(
                a.iter()
                    .filter(|key| self.lookup(key, now_ms).is_some())
                    .count() as i64,
            ),
            "TYPE" => Reply::Status(
                self.lookup(a[0], now_ms)
                    .map_or("none", |e| e.value.type_name())
                    .to_owned(),
            ),
            "PEXPIRE" => self.pexpire(now_ms, a, Some(now_ms)),
            "PEXPIREAT" => self.pexpire(now_ms, a, None),
            "PTTL" => match self.lookup(a[0], now_ms) {
                None => Reply::Int(-2),
                Some(Entry {
                    expires_at_ms: None,
                    ..
                }) => Reply::Int(-1),
                // A key at its very expiry millisecond still exists, with 0 left.
                Some(Entry {
                    expires_at_ms: Some(at),
                    ..
                }) => Reply::Int(at.saturating_sub(now_ms) as i64),
            },
            "TIME" => Reply::Array(vec![
                Reply::bulk((now.us / 1_000_000).to_string()),
                Reply::bulk((now.us % 1_000_000).to_string()),
            ]),
            "HGET" => match self.hash(a[0], now_ms) {
                Err(e) => e,
                Ok(None) => Reply::Nil,
                Ok(Some(h)) => h
                    .iter()
                    .find(|(f, _)| f == a[1])
                    .map_or(Reply::Nil, |(_, v)| Reply::bulk(v)),
            },
            "HEXISTS" => match self.hash(a[0], now_ms) {
                Err(e) => e,
                Ok(h) => Reply::Int(h.is_some_and(|h| h.iter().any(|(f, _)| f == a[1])) as i64),
            },
            "HLEN" => match self.hash(a[0], now_ms) {
                Err(e) => e,
                Ok(h) => Reply::Int(h.map_or(0, |h| h.len()) as i64),
            },
            "HGETALL" => match self.hash(a[0], now_ms) {
                Err(e) => e,
                Ok(h) => Reply::Array(
                    h.into_iter()
                        .flatten()
                        .flat_map(|(f, v)| [Reply::bulk(f), Reply::bulk(v)])
                        .collect(),
                ),
            },
            "HSET" => self.hset(now_ms, a),
            "HDEL" => self.hdel(now_ms, a),
            "HINCRBY" => self.hincrby(now_ms, a),
            "PUBLISH" | "SPUBLISH" => {
                self.published.push(Published {
                    channel: a[0].to_vec(),
                    message: a[1].to_vec(),
                    sharded: name == "SPUBLISH",
                });
                // Nobody subscribes to the model: the caller delivers what it drains.
                Reply::Int(0)
            }
            "RPUSH" => match self.lookup_mut(a[0], now_ms) {
                Some(Entry {
                    value: Value::List(list),
                    ..
                }) => {
                    list.extend(a[1..].iter().map(|v| v.to_vec()));
                    Reply::Int(list.len() as i64)
                }
                Some(_) => Reply::error(errors::WRONGTYPE),
                None => {
                    let list: Vec<Vec<u8>> = a[1..].iter().map(|v| v.to_vec()).collect();
                    let n = list.len() as i64;
                    self.insert(a[0], Value::List(list), None);
                    Reply::Int(n)
                }
            },
            "SCAN" => self.scan(now_ms, a),
            "PING" => match a {
                [] => Reply::Status("PONG".to_owned()),
                [message] => Reply::bulk(message),
                _ => Reply::error(errors::arity("ping")),
            },
            _ => unreachable!("arity() names every command"),
        }
    }

    /// The live entry at `key`, removing it first if it has expired (`expireIfNeeded`).
    fn lookup(&mut self, key: &[u8], now_ms: u64) -> Option<&Entry> {
        self.lookup_mut(key, now_ms).map(|e| &*e)
    }

    fn lookup_mut(&mut self, key: &[u8], now_ms: u64) -> Option<&mut Entry> {
        let expired = self
            .keys
            .get(key)?
            .expires_at_ms
            .is_some_and(|at| now_ms > at);
        if expired {
            self.keys.remove(key);
            return None;
        }
        self.keys.get_mut(key)
    }

    fn insert(&mut self, key: &[u8], value: Value, expires_at_ms: Option<u64>) {
        self.keys.insert(
            key.to_vec(),
            Entry {
                value,
                expires_at_ms,
            },
        );
    }

    /// The hash at `key`: `Ok(None)` if there is none, `Err(WRONGTYPE)` for another type.
    fn hash(&mut self, key: &[u8], now_ms: u64) -> Result<Option<&Fields>, Reply> {
        match self.lookup(key, now_ms) {
            None => Ok(None),
            Some(Entry {
                value: Value::Hash(h),
                ..
            }) => Ok(Some(h)),
            Some(_) => Err(Reply::error(errors::WRONGTYPE)),
        }
    }

    /// The hash at `key` for writing, created empty (without expiry) if missing.
    fn hash_mut(&mut self, key: &[u8], now_ms: u64) -> Result<&mut Fields, Reply> {
        if self.lookup(key, now_ms).is_none() {
            self.insert(key, Value::Hash(Vec::new()), None);
        }
        match self.keys.get_mut(key) {
            Some(Entry {
                value: Value::Hash(h),
                ..
            }) => Ok(h),
            _ => Err(Reply::error(errors::WRONGTYPE)),
        }
    }
}

impl Keyspace {
    /// Whether used memory is above `maxmemory` (under `noeviction`).
    pub(crate) fn is_full(&self) -> bool {
        self.full
    }

    /// Used memory goes above `maxmemory` (`true`) or back below it.
    #[cfg(test)]
    pub(crate) fn set_full(&mut self, full: bool) {
        self.full = full;
    }

    /// The native compare-and-set commands it answers (none, as Redis 7.0, by default).
    pub(crate) fn set_native(&mut self, native: Native) {
        self.native = native;
    }

    /// The native compare-and-set commands it answers.
    pub(crate) fn native(&self) -> Native {
        self.native
    }
}

/// A command Redis refuses while used memory is above `maxmemory` (`CMD_DENYOOM`): one that
/// may grow memory. `DEL`, `HDEL` and the expiry commands free or keep it, and are allowed.
pub(crate) fn denies_oom(name: &str) -> bool {
    matches!(name, "SET" | "HSET" | "HINCRBY" | "RPUSH")
}

/// A command that writes (`CMD_WRITE`): once a script has sent one (and it passed the checks),
/// no later command of the script is refused for memory (`SCRIPT_WRITE_DIRTY`).
pub(crate) fn writes(name: &str) -> bool {
    denies_oom(name) || matches!(name, "DEL" | "DELIFEQ" | "HDEL" | "PEXPIRE" | "PEXPIREAT")
}

/// The commands the model knows, with Redis' arity (negative: at least that many). `DELIFEQ`
/// only where the keyspace has it (see [`Keyspace::set_native`]).
fn arity(name: &str) -> Option<i32> {
    Some(match name {
        "GET" | "TYPE" | "PTTL" | "HGETALL" | "HLEN" => 2,
        "HGET" | "HEXISTS" | "PUBLISH" | "SPUBLISH" | "DELIFEQ" => 3,
        "HINCRBY" => 4,
        "TIME" => 1,
        "PING" => -1,
        "SET" | "PEXPIRE" | "PEXPIREAT" | "HDEL" | "RPUSH" => -3,
        "DEL" | "EXISTS" | "SCAN" => -2,
        "HSET" => -4,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::options::{glob_match, parse_i64};
    use super::*;

    fn call(ks: &mut Keyspace, ms: u64, args: &[&str]) -> Reply {
        ks.call(Now::from_ms(ms), args)
    }

    #[test]
    fn a_key_lives_through_its_expiry_millisecond() {
        let mut ks = Keyspace::new();
        assert_eq!(
            call(&mut ks, 1000, &["SET", "k", "v", "PX", "10"]),
            Reply::ok()
        );
        assert_eq!(call(&mut ks, 1010, &["PTTL", "k"]), Reply::Int(0));
        assert_eq!(call(&mut ks, 1010, &["GET", "k"]), Reply::bulk("v"));
        assert_eq!(call(&mut ks, 1011, &["GET", "k"]), Reply::Nil);
        assert_eq!(call(&mut ks, 1011, &["PTTL", "k"]), Reply::Int(-2));
    }

    #[test]
    fn native_compare_and_set_commands_where_the_server_has_them() {
        let mut ks = Keyspace::new();
        call(&mut ks, 1000, &["SET", "k", "t", "PX", "100"]);
        call(&mut ks, 1000, &["HSET", "h", "f", "v"]);
        // As Redis 7.0: neither.
        assert!(
            matches!(call(&mut ks, 1000, &["DELIFEQ", "k", "t"]), Reply::Error(e) if e.starts_with("ERR unknown command"))
        );
        assert_eq!(
            call(&mut ks, 1000, &["SET", "k", "t", "IFEQ", "t", "PX", "500"]),
            Reply::error(errors::SYNTAX)
        );
        // As Valkey 8.1: SET IFEQ only.
        ks.set_native(Native {
            delifeq: false,
            set_ifeq: true,
        });
        assert_eq!(
            call(&mut ks, 1000, &["SET", "k", "t", "IFEQ", "x", "PX", "500"]),
            Reply::Nil
        );
        assert_eq!(
            call(&mut ks, 1000, &["SET", "k", "t", "IFEQ", "t", "PX", "500"]),
            Reply::ok()
        );
        assert_eq!(call(&mut ks, 1000, &["PTTL", "k"]), Reply::Int(500));
        assert_eq!(
            call(&mut ks, 1000, &["SET", "gone", "t", "IFEQ", "t"]),
            Reply::Nil
        );
        assert_eq!(call(&mut ks, 1000, &["EXISTS", "gone"]), Reply::Int(0));
        assert_eq!(
            call(&mut ks, 1000, &["SET", "h", "t", "IFEQ", "t"]),
            Reply::error(errors::WRONGTYPE)
        );
        assert_eq!(
            call(&mut ks, 1000, &["SET", "k", "t", "IFEQ", "t", "NX"]),
            Reply::error(errors::SYNTAX)
        );
        // Expire time parsed before the key is read.
        assert_eq!(
            call(&mut ks, 1000, &["SET", "h", "t", "IFEQ", "t", "PX", "0"]),
            Reply::error(errors::expire_time("set"))
        );
        // Full memory: SET is refused whatever IFEQ would say.
        ks.set_full(true);
        assert_eq!(
            call(&mut ks, 1000, &["SET", "k", "t", "IFEQ", "t", "PX", "500"]),
            Reply::error(errors::OOM)
        );
        // As Valkey 9: DELIFEQ deletes only an equal string, even in a full memory.
        ks.set_native(Native {
            delifeq: true,
            set_ifeq: true,
        });
        assert_eq!(call(&mut ks, 1000, &["DELIFEQ", "k", "t*"]), Reply::Int(0));
        assert_eq!(call(&mut ks, 1000, &["DELIFEQ", "k", "t"]), Reply::Int(1));
        assert_eq!(call(&mut ks, 1000, &["DELIFEQ", "k", "t"]), Reply::Int(0));
        assert_eq!(
            call(&mut ks, 1000, &["DELIFEQ", "h", "v"]),
            Reply::error(errors::WRONGTYPE)
        );
    }

    #[test]
    fn an_expired_key_is_gone_for_every_command() {
        let mut ks = Keyspace::new();
        call(&mut ks, 1000, &["SET", "k", "v", "PX", "10"]);
        call(&mut ks, 1000, &["HSET", "h", "f", "v"]);
        call(&mut ks, 1000, &["PEXPIRE", "h", "10"]);
        assert_eq!(call(&mut ks, 1011, &["EXISTS", "k", "h"]), Reply::Int(0));
        call(&mut ks, 2000, &["SET", "k", "v", "PX", "10"]);
        assert_eq!(call(&mut ks, 2011, &["DEL", "k"]), Reply::Int(0));
        assert_eq!(call(&mut ks, 2011, &["HSET", "h", "g", "w"]), Reply::Int(1));
        assert_eq!(call(&mut ks, 2011, &["HLEN", "h"]), Reply::Int(1));
        assert_eq!(call(&mut ks, 2011, &["PTTL", "h"]), Reply::Int(-1));
    }

    #[test]
    fn an_expiry_in_the_past_deletes_at_once() {
        let mut ks = Keyspace::new();
        call(&mut ks, 1000, &["SET", "k", "v"]);
        assert_eq!(
            call(&mut ks, 1000, &["PEXPIREAT", "k", "1000"]),
            Reply::Int(1)
        );
        assert_eq!(ks.entries().count(), 0);
        call(&mut ks, 1000, &["SET", "k", "v"]);
        assert_eq!(call(&mut ks, 1000, &["PEXPIRE", "k", "-1"]), Reply::Int(1));
        assert_eq!(ks.entries().count(), 0);
        assert_eq!(call(&mut ks, 1000, &["PEXPIRE", "k", "10"]), Reply::Int(0));
    }

    #[test]
    fn hash_order_is_insertion_order_with_in_place_rewrites() {
        let mut ks = Keyspace::new();
        call(&mut ks, 0, &["HSET", "h", "a", "1", "b", "2"]);
        call(&mut ks, 0, &["HSET", "h", "a", "3"]);
        assert_eq!(
            call(&mut ks, 0, &["HGETALL", "h"]),
            Reply::Array(["a", "3", "b", "2"].iter().map(Reply::bulk).collect())
        );
        assert_eq!(call(&mut ks, 0, &["HDEL", "h", "a", "b"]), Reply::Int(2));
        assert_eq!(
            call(&mut ks, 0, &["TYPE", "h"]),
            Reply::Status("none".into())
        );
    }

    #[test]
    fn integers_parse_as_redis_does() {
        assert_eq!(parse_i64(b"12"), Some(12));
        assert_eq!(parse_i64(b"-12"), Some(-12));
        assert_eq!(parse_i64(b"0"), Some(0));
        for bad in [&b"012"[..], b"+1", b" 1", b"-0", b"", b"-", b"1.0"] {
            assert_eq!(parse_i64(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn glob_matches_as_redis_does() {
        assert!(glob_match(b"lock:*", b"lock:{a}"));
        assert!(glob_match(b"h?llo", b"hello"));
        assert!(glob_match(b"h[^e]llo", b"hallo"));
        assert!(!glob_match(b"h[^e]llo", b"hello"));
        assert!(glob_match(b"h[a-b]llo", b"hbllo"));
        assert!(glob_match(b"\\*", b"*"));
    }
}
