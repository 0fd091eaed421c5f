//! The server's native compare-and-set commands (`command::Native`): which ones it has, probed
//! once per server, and sending them with the script after a "not done".
//!
//! The probe is one round trip: `COMMAND INFO DELIFEQ` (a command, or nil where the server has
//! none of that name) and `COMMAND DOCS SET` (whether `SET` takes an `IFEQ` token). It runs on
//! the first release or extend of a node that never re-sends (one server, a Redlock instance),
//! and again after an I/O error or a timeout, or a `NOSCRIPT` (a server that does not know lock-core's
//! scripts restarted, or is another one behind the same address), so that a server upgraded
//! in place is asked again. A server that answers the probe with an error (Redis 6.2 has no
//! `COMMAND DOCS`; a proxy or an ACL may refuse `COMMAND`) has none of them. A native command the
//! server refuses anyway (`ERR unknown command`, `ERR syntax error`: say, a failover to an
//! older replica behind a proxy; `NOPERM` from an ACL) is not sent again until the next probe,
//! and the script does its job at once. A probe that gets no answer is tried again by a later
//! command, at most once a second; meanwhile the scripts are sent.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use redis::Value;

use super::RedisNode;
use crate::command::{Call, Command, Native, Server};
use crate::{LockError, Result};

const PROBED: u32 = 1;
const DELIFEQ: u32 = 2;
const SET_IFEQ: u32 = 4;
/// A probe is in flight: the commands meanwhile are sent as scripts, not as more probes.
const PROBING: u32 = 8;
/// The flags are the low byte; the rest counts the changes a probe's answer must not undo.
const FLAGS: u32 = 0xff;
const GENERATION: u32 = 0x100;

/// How long after a probe that got no answer the next may go: while a server does not answer,
/// each release and extend would otherwise wait for a probe's timeout before its own.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// What a node knows of its server's native commands.
#[derive(Debug, Default)]
pub(super) struct Capabilities {
    /// The flags, and a generation that [`forget`](Self::forget) and
    /// [`refused`](Self::refused) move on.
    state: AtomicU32,
    /// When the last probe that got no answer ended, in ms after [`epoch`], plus one (0:
    /// never).
    failed_at: AtomicU64,
    /// The in-process server's: known for good, never asked.
    fixed: bool,
}

/// The instant [`Capabilities::failed_at`] counts from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Now, in ms after [`epoch`], plus one (never 0).
fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX) + 1
}

fn bits(native: Native) -> u32 {
    PROBED | if native.delifeq { DELIFEQ } else { 0 } | if native.set_ifeq { SET_IFEQ } else { 0 }
}

/// The one probe in flight, ended when dropped (also when the command that probes is
/// cancelled: a Redlock instance's timeout, a caller's `select!`).
struct Probing<'a> {
    caps: &'a Capabilities,
    /// The generation when it started.
    generation: u32,
}

impl Drop for Probing<'_> {
    fn drop(&mut self) {
        self.caps.state.fetch_and(!PROBING, Ordering::Relaxed);
    }
}

impl Capabilities {
    /// Known for good, never asked: the in-process server's commands. (A server's are asked
    /// on first use: [`Capabilities::default`].)
    pub(super) fn known(native: Native) -> Self {
        Self {
            state: AtomicU32::new(bits(native)),
            fixed: true,
            ..Self::default()
        }
    }

    /// The native commands, or `None` before the probe.
    fn get(&self) -> Option<Native> {
        let bits = self.state.load(Ordering::Relaxed);
        (bits & PROBED != 0).then_some(Native {
            delifeq: bits & DELIFEQ != 0,
            set_ifeq: bits & SET_IFEQ != 0,
        })
    }

    /// Moves the state on with `change` of its flags (and the generation).
    fn change(&self, change: impl Fn(u32) -> u32) {
        let _ = self
            .state
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |state| {
                let flags = change(state & FLAGS) & FLAGS;
                Some((state & !FLAGS).wrapping_add(GENERATION) | flags)
            });
    }

    /// Takes the one probe in flight, unless another has it or one got no answer less than
    /// [`PROBE_EVERY`] ago.
    fn start_probe(&self) -> Option<Probing<'_>> {
        let last = self.failed_at.load(Ordering::Relaxed);
        let every = u64::try_from(PROBE_EVERY.as_millis()).unwrap_or(u64::MAX);
        if last != 0 && now_ms().saturating_sub(last) < every {
            return None;
        }
        let before = self.state.fetch_or(PROBING, Ordering::Relaxed);
        if before & PROBING != 0 {
            return None;
        }
        Some(Probing {
            caps: self,
            generation: before & !FLAGS,
        })
    }

    /// The probe got no answer: the next waits [`PROBE_EVERY`].
    fn unanswered(&self) {
        self.failed_at.store(now_ms(), Ordering::Relaxed);
    }

    /// The probe's answer, unless the state moved on since it started (the server was
    /// forgotten, or refused a command, meanwhile: its answer may be the old server's).
    fn probed(&self, probe: &Probing<'_>, native: Native) {
        let _ = self
            .state
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |state| {
                (state & !FLAGS == probe.generation)
                    .then_some(probe.generation | (state & PROBING) | bits(native))
            });
    }

    /// The server may be another one by the next command (a failed connection, a server that
    /// lost lock-core's scripts): asked again before the next release or extend. The
    /// in-process server is known for good.
    pub(super) fn forget(&self) {
        if !self.fixed {
            self.change(|flags| flags & !(PROBED | DELIFEQ | SET_IFEQ));
        }
    }

    /// The server refused `call` as a command it does not have.
    fn refused(&self, call: Call) {
        let bit = match call {
            Call::DelIfEq => DELIFEQ,
            Call::SetIfEq => SET_IFEQ,
            _ => return,
        };
        self.change(|flags| flags & !bit);
    }
}

/// Slots of [`Marked`]; names share one by their hash.
const MARKED_SLOTS: usize = 256;

/// How many releases of a name go to the script first after one found the key marked by a
/// waiter (then `DELIFEQ` is tried again).
const MARKED_RELEASES: u8 = 32;

/// The names whose releases found their key marked by a waiter lately (`DELIFEQ` answered 0 and
/// release.lua then gave the hold back), so that their next releases send the script first and
/// save the round trip. A worker that gives a name back and takes it again at once, ahead of
/// the waiters it woke, holds it without having waited, and its next release would otherwise
/// try `DELIFEQ` on a key the waiters marked. A fixed table: names that share a slot share a
/// count, which costs a name at most a script where `DELIFEQ` would do, or the reverse.
pub(super) struct Marked([AtomicU8; MARKED_SLOTS]);

impl Default for Marked {
    fn default() -> Self {
        Self(std::array::from_fn(|_| AtomicU8::new(0)))
    }
}

impl Marked {
    fn slot(&self, key: &str) -> &AtomicU8 {
        // FNV-1a: a few ns for a lock key.
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        &self.0[(hash % MARKED_SLOTS as u64) as usize]
    }

    /// Whether the release of `key` should send the script first; counts it down.
    pub(super) fn lately(&self, key: &str) -> bool {
        self.slot(key)
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    /// A release of `key` found it marked.
    pub(super) fn found(&self, key: &str) {
        self.slot(key).store(MARKED_RELEASES, Ordering::Relaxed);
    }

    /// `DELIFEQ` gave `key` back: nobody had marked it.
    pub(super) fn clear(&self, key: &str) {
        let slot = self.slot(key);
        if slot.load(Ordering::Relaxed) != 0 {
            slot.store(0, Ordering::Relaxed);
        }
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

/// Whether `e` is the server (or a proxy, or an ACL) refusing the native command itself
/// (`ERR unknown command`, `ERR syntax error`, `NOPERM`, a proxy's own code), rather than
/// answering it about the key or its own state, which the script would meet too.
fn refusal(e: &LockError) -> bool {
    const ANSWERS: [&str; 10] = [
        "WRONGTYPE",
        "OOM",
        "READONLY",
        "LOADING",
        "BUSY",
        "MASTERDOWN",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "MOVED",
        "ASK",
    ];
    matches!(e, LockError::Redis(e) if e.code().is_some_and(|code| !ANSWERS.contains(&code)))
}

impl RedisNode {
    /// The server behind the connection may be another one from the next command on (the
    /// connection failed, or the server lost scripts it had run): nothing is known of its
    /// native commands, nor of the scripts it has run.
    pub(super) fn maybe_another_server(&self) {
        self.native.forget();
        self.scripts_run.store(0, Ordering::Relaxed);
    }

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

    /// Asks the server which native commands it has; none when it cannot tell now, while
    /// another command asks, or within [`PROBE_EVERY`] of a probe that got no answer (a later
    /// command asks again).
    async fn probe(&self) -> Native {
        let Some(probing) = self.native.start_probe() else {
            return Native::NONE;
        };
        match self.ask().await {
            Some(native) => {
                self.native.probed(&probing, native);
                native
            }
            None => {
                self.native.unanswered();
                Native::NONE
            }
        }
    }

    async fn ask(&self) -> Option<Native> {
        let mut pipe = redis::pipe();
        pipe.cmd("COMMAND")
            .arg("INFO")
            .arg("DELIFEQ")
            .cmd("COMMAND")
            .arg("DOCS")
            .arg("SET");
        pipe.ignore_errors();
        match self.query_pipe::<Vec<Value>>(&pipe).await {
            Ok(replies) => {
                let native = read_probe(&replies);
                tracing::debug!(?native, "probed the server's native commands");
                Some(native)
            }
            Err(e) => {
                tracing::debug!(error = %e, "probing the server's native commands failed");
                None
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
            Err(e) if refusal(&e) => {
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
            contended: false,
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
    fn one_probe_at_a_time_ended_when_dropped_and_an_answer_from_before_a_change_is_dropped() {
        let caps = Capabilities::default();
        let long_ago = || caps.failed_at.store(0, Ordering::Relaxed);
        let probe = caps.start_probe().expect("the first probe");
        assert!(caps.start_probe().is_none(), "one at a time");
        // Cancelled (its future dropped): the next may go.
        drop(probe);
        let probe = caps.start_probe().expect("a probe after a cancelled one");
        // Unanswered: the next waits PROBE_EVERY.
        caps.unanswered();
        drop(probe);
        assert!(
            caps.start_probe().is_none(),
            "at most one a second after no answer"
        );
        long_ago();
        let probe = caps.start_probe().expect("a probe a second later");
        // The connection failed while it was out: its answer may be the old server's.
        caps.forget();
        caps.probed(&probe, Native::ALL);
        drop(probe);
        assert_eq!(caps.get(), None, "asked again");
        let probe = caps.start_probe().unwrap();
        caps.probed(&probe, Native::ALL);
        drop(probe);
        assert_eq!(caps.get(), Some(Native::ALL));
        caps.refused(Call::DelIfEq);
        assert_eq!(
            caps.get(),
            Some(Native {
                delifeq: false,
                set_ifeq: true
            })
        );
        caps.forget();
        assert_eq!(caps.get(), None);
    }

    #[test]
    fn a_name_found_marked_is_released_by_script_for_a_while() {
        let marked = Marked::default();
        assert!(!marked.lately("lock:{a}"));
        marked.found("lock:{a}");
        for _ in 0..MARKED_RELEASES {
            assert!(marked.lately("lock:{a}"));
        }
        assert!(!marked.lately("lock:{a}"), "then DELIFEQ again");
        marked.found("lock:{a}");
        marked.clear("lock:{a}");
        assert!(!marked.lately("lock:{a}"));
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
