//! The server's native compare-and-set commands (`command::Native`): which ones it has, probed
//! once per server, and sending them with the script after a "not done".
//!
//! The probe is one round trip: `COMMAND INFO DELIFEQ` (a command, or nil where the server has
//! none of that name) and `COMMAND DOCS SET` (whether `SET` takes an `IFEQ` token). It runs on
//! the first release or extend of a node that never re-sends (one server, a Redlock instance),
//! and again after an I/O error or a `NOSCRIPT` (a server that does not know lock-core's
//! scripts restarted, or is another one behind the same address), so that a server upgraded
//! in place is asked again. A server that answers the probe with an error (Redis 6.2 has no
//! `COMMAND DOCS`; a proxy or an ACL may refuse `COMMAND`) has none of them. A native command the
//! server refuses anyway (`ERR unknown command`, `ERR syntax error`: say, a failover to an
//! older replica behind a proxy) is not sent again until the next probe, and the script does
//! its job at once.

use std::sync::atomic::{AtomicU8, Ordering};

use redis::Value;

use super::connect::{Conn, Request};
use super::RedisNode;
use crate::command::{Call, Command, Native, Server};
use crate::{LockError, Result};

const PROBED: u8 = 1;
const DELIFEQ: u8 = 2;
const SET_IFEQ: u8 = 4;
/// A probe is in flight: the commands meanwhile are sent as scripts, not as more probes.
const PROBING: u8 = 8;

/// What a node knows of its server's native commands.
#[derive(Debug, Default)]
pub(super) struct Capabilities(AtomicU8);

impl Capabilities {
    /// What is known of `conn`'s server before any command: the in-process server's commands,
    /// else nothing yet (a server is probed on first use).
    pub(super) fn of(conn: &Conn) -> Self {
        let caps = Self::default();
        if let Conn::Model(conn) = conn {
            caps.set(conn.server.native());
        }
        caps
    }

    /// The native commands, or `None` before the probe.
    fn get(&self) -> Option<Native> {
        let bits = self.0.load(Ordering::Relaxed);
        (bits & PROBED != 0).then_some(Native {
            delifeq: bits & DELIFEQ != 0,
            set_ifeq: bits & SET_IFEQ != 0,
        })
    }

    fn set(&self, native: Native) {
        let bits = PROBED
            | if native.delifeq { DELIFEQ } else { 0 }
            | if native.set_ifeq { SET_IFEQ } else { 0 };
        self.0.store(bits, Ordering::Relaxed);
    }

    /// Takes the one probe in flight; false when another has it.
    fn start_probe(&self) -> bool {
        self.0.fetch_or(PROBING, Ordering::Relaxed) & PROBING == 0
    }

    fn end_probe(&self) {
        self.0.fetch_and(!PROBING, Ordering::Relaxed);
    }

    /// The server may be another one by the next command (a failed connection, a server that
    /// lost lock-core's scripts): asked again before the next release or extend.
    pub(super) fn forget(&self) {
        self.0.fetch_and(!PROBED, Ordering::Relaxed);
    }

    /// The server refused `call` as a command it does not know.
    fn refused(&self, call: Call) {
        let bit = match call {
            Call::DelIfEq => DELIFEQ,
            Call::SetIfEq => SET_IFEQ,
            _ => return,
        };
        self.0.fetch_and(!bit, Ordering::Relaxed);
    }
}

/// Whether `value` (a `COMMAND DOCS SET` reply) names an `IFEQ` token anywhere.
fn names_ifeq(value: &Value) -> bool {
    match value {
        Value::BulkString(b) => b.eq_ignore_ascii_case(b"IFEQ"),
        Value::SimpleString(s) => s.eq_ignore_ascii_case("IFEQ"),
        Value::Array(items) | Value::Set(items) => items.iter().any(names_ifeq),
        Value::Map(pairs) => pairs.iter().any(|(k, v)| names_ifeq(k) || names_ifeq(v)),
        _ => false,
    }
}

/// The probe's two replies read as the native commands the server has.
fn read_probe(replies: &[Value]) -> Native {
    let delifeq = matches!(replies.first(), Some(Value::Array(found)) if found.iter().any(|c| !matches!(c, Value::Nil)));
    let set_ifeq = replies.get(1).is_some_and(names_ifeq);
    Native { delifeq, set_ifeq }
}

/// Whether `e` says the connection failed (so the next command may reach another server).
pub(super) fn cut(e: &LockError) -> bool {
    matches!(e, LockError::Redis(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal())
}

/// Whether `e` is the server refusing a command or option it does not know.
fn unknown(e: &LockError) -> bool {
    let LockError::Redis(e) = e else {
        return false;
    };
    let detail = e.detail().unwrap_or_default();
    e.code() == Some("ERR")
        && (detail.starts_with("unknown command") || detail.starts_with("syntax error"))
}

impl RedisNode {
    /// What the kernel's layout of `command` depends on here: the server's native commands,
    /// asked first if they are not known yet and `command` is one they could do (see the
    /// module's docs). While one command asks, the others are sent as their scripts.
    pub(super) async fn server(&self, command: &Command<'_>) -> Server {
        let scripted = Server {
            resends: self.resends(),
            publish: self.publish(),
            native: Native::NONE,
        };
        // A client that re-sends (a cluster, Sentinel) needs the scripts' tombs: never native.
        if scripted.resends {
            return scripted;
        }
        let native = match self.native.get() {
            Some(native) => native,
            None if command.call(scripted.with(Native::ALL)).is_native() => self.probe().await,
            None => Native::NONE,
        };
        scripted.with(native)
    }

    /// Asks the server which native commands it has; none when it cannot tell now, or while
    /// another command asks (the next command asks again).
    async fn probe(&self) -> Native {
        if !self.native.start_probe() {
            return Native::NONE;
        }
        let native = self.ask().await;
        self.native.end_probe();
        native
    }

    async fn ask(&self) -> Native {
        let mut pipe = redis::pipe();
        pipe.cmd("COMMAND")
            .arg("INFO")
            .arg("DELIFEQ")
            .cmd("COMMAND")
            .arg("DOCS")
            .arg("SET");
        pipe.ignore_errors();
        match self.conn.send::<Vec<Value>>(&Request::Pipe(&pipe)).await {
            Ok(replies) => {
                let native = read_probe(&replies);
                tracing::debug!(?native, "probed the server's native commands");
                self.native.set(native);
                native
            }
            Err(e) => {
                tracing::debug!(error = %e, "probing the server's native commands failed");
                Native::NONE
            }
        }
    }

    /// `command` as its native `call`: its reply when that is the script's answer too, `None`
    /// when the script must run (the native command did nothing: a marked hold, not ours, a key
    /// of another type, a full memory, a command refused).
    pub(super) async fn native_reply(
        &self,
        command: &Command<'_>,
        server: Server,
        call: Call,
    ) -> Result<Option<i64>> {
        let keys = command.keys();
        let reply = match call {
            Call::DelIfEq => {
                let mut cmd = crate::command::cmd("DELIFEQ");
                command.lay_out(&mut cmd, server);
                self.query::<i64>(&cmd)
                    .await
                    .map(|deleted| (deleted == 1).then_some(1))
                    .map_err(LockError::from)
            }
            Call::SetIfEq => {
                let mut cmd = crate::command::cmd("SET");
                command.lay_out(&mut cmd, server);
                self.query_replicated(keys, &cmd, Option::<String>::is_some)
                    .await
                    .map(|set| set.map(|_| 1))
            }
            Call::SetNx | Call::Script(_) => return Ok(None),
        };
        match reply {
            Ok(reply) => Ok(reply),
            Err(e) if unknown(&e) => {
                tracing::debug!(error = %e, "native command refused; the script does its job");
                self.native.refused(call);
                Ok(None)
            }
            // Another answer of the server (WRONGTYPE, OOM, a replica's READONLY): the script's
            // is the one that counts.
            Err(LockError::Redis(e)) if e.code().is_some() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::backend::memory::ModelServer;
    use crate::backend::Node;
    use crate::command::Answer;
    use crate::keys::LockKeys;

    /// A server that loses its native commands under a node that knew them (a downgrade behind
    /// the same address): the refused command is answered by the script at once, and not sent
    /// again.
    #[tokio::test]
    async fn a_native_command_refused_is_done_by_the_script_and_not_sent_again() {
        let server = ModelServer::new();
        let node = RedisNode::in_process(Arc::clone(&server), false);
        let keys = LockKeys::new("t:", "n");
        let token = crate::token::owner_token("test", Duration::from_secs(5), false);
        let acquire = Command::Acquire {
            keys: Cow::Borrowed(&keys),
            token: Cow::Borrowed(&token),
            ttl: Duration::from_secs(5),
            mark: false,
            ticket: None,
        };
        let extend = Command::Extend {
            keys: Cow::Borrowed(&keys),
            token: Cow::Borrowed(&token),
            ttl: Duration::from_secs(9),
        };
        let release = Command::Release {
            keys: Cow::Borrowed(&keys),
            token: Cow::Borrowed(&token),
            keep: Duration::ZERO,
        };
        assert!(node.run(&acquire).await.unwrap().applied());
        let server_native = node.server(&release).await.native;
        assert_eq!(server_native, server.native(), "known without a probe");
        server.set_native(Native::NONE);
        assert_eq!(
            node.run(&extend).await.unwrap(),
            Answer::Applied(Duration::from_secs(9))
        );
        assert_eq!(
            node.run(&release).await.unwrap(),
            Answer::Applied(Duration::ZERO)
        );
        assert_eq!(
            node.server(&release).await.native,
            Native::NONE,
            "not sent again"
        );
        assert_eq!(node.run(&release).await.unwrap(), Answer::NotApplied(None));
    }

    #[test]
    fn the_probe_reads_each_servers_answer() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        // Redis 7.0: no DELIFEQ, SET without IFEQ.
        let redis7 = [
            Value::Array(vec![Value::Nil]),
            Value::Array(vec![
                bulk("set"),
                Value::Array(vec![bulk("arguments"), bulk("NX"), bulk("XX")]),
            ]),
        ];
        assert_eq!(read_probe(&redis7), Native::NONE);
        // Valkey 9: both.
        let valkey9 = [
            Value::Array(vec![Value::Array(vec![bulk("delifeq"), Value::Int(3)])]),
            Value::Map(vec![(
                bulk("set"),
                Value::Array(vec![bulk("token"), bulk("IFEQ")]),
            )]),
        ];
        assert_eq!(
            read_probe(&valkey9),
            Native {
                delifeq: true,
                set_ifeq: true
            }
        );
        // Redis 6.2: COMMAND DOCS is an error (read as no reply); a proxy that refuses both.
        assert_eq!(read_probe(&[Value::Array(vec![Value::Nil])]), Native::NONE);
        assert_eq!(read_probe(&[]), Native::NONE);
    }
}
