//! Where locks live, in three separate concerns:
//!
//! - [`Node`]: one server runs the kernel's [`Command`]s on a lock key (a Redis server or
//!   cluster, or this process's memory), each as `command.rs` lays it out: one command or one
//!   script, checked against the owner token. It answers an [`Answer`].
//! - [`Store`]: a deployment's policy over nodes: one node ([`single::Single`]), or a majority
//!   of independent nodes with a clock-drift allowance ([`redlock::Redlock`]). It answers the
//!   same [`Answer`], in lease lengths that the caller counts from the moment it sent the
//!   command, with what the command may have left where it was not decided ([`Leftover`]).
//! - [`Wake`]: telling waiters that a lock may have become free (Redis pub/sub, or an in-process
//!   `Notify`).
//!
//! A new deployment or server kind adds a file that implements one of these traits.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::keys::LockKeys;
use crate::Result;

pub(crate) mod memory;
pub(crate) mod notify;
pub(crate) mod redis;
pub(crate) mod redlock;
#[cfg(feature = "sentinel")]
pub(crate) mod sentinel;
#[cfg(feature = "cluster")]
pub(crate) mod sharded;
pub(crate) mod single;

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub(crate) use crate::command::{Answer, Command, Ticket};

/// An operator's force-release: whose holds it ends, and who asks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Eviction<'a> {
    /// Only the holds taken by this holder id; every hold when `None`.
    pub(crate) holder: Option<&'a str>,
    /// Who evicts, as the evicted holders will read it.
    pub(crate) by: &'a str,
}

/// How long the record of an eviction lives: long enough for the evicted holder's next
/// renewal, fencing token or release to find it.
pub(crate) const EVICTION_RECORD: Duration = Duration::from_secs(24 * 3600);

/// A lock key as an operator sees it: its value (the holder's token, with a waiter's mark) and
/// how long it still lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Found {
    pub(crate) value: String,
    /// `None` when the key has no expiry (not one of ours).
    pub(crate) left: Option<Duration>,
    /// The lock's `permits` (1 for a lock). With more, one `Found` per live permit: its
    /// holder's token in `value` and its own lease in `left`.
    pub(crate) permits: u32,
    /// The writers (exclusive or fair acquisitions) waiting for it now: their live claims in
    /// `<key>:x` (scripts/prelude/claims.lua) and live tickets in the fair line `<key>:q`
    /// (fair.lua), one each, the fair line first in its order.
    pub(crate) waiters: Vec<Waiter>,
}

/// A writer waiting for a lock, as operators see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Waiter {
    /// Its ticket or claim id, `<holder>|<unix ms>|<random>` (token.rs), or an older
    /// version's bare random one. Never shown whole: the random part is not for operators.
    pub(crate) ticket: String,
    /// Its place in the fair line (an arrival number: lower is earlier), for a fair waiter.
    pub(crate) arrival: Option<u64>,
}

/// The live waiters in the `HGETALL` replies of a lock's claims (`<key>:x`: id -> the server
/// ms it lapses, negative for an ended claim's marker, and `#w`) and fair line (`<key>:q`:
/// ticket -> `<arrival> <expiry ms>`, and `#`), by the clock `now_ms`: each waiter once, the
/// fair line first in order, then the other claims by ticket.
pub(crate) fn waiters(
    claims: &[(String, String)],
    line: &[(String, String)],
    now_ms: u64,
) -> Vec<Waiter> {
    let mut out: Vec<Waiter> = line
        .iter()
        .filter_map(|(ticket, value)| {
            let (arrival, expiry) = value.split_once(' ')?;
            let expiry: u64 = expiry.parse().ok()?;
            (ticket != "#" && expiry > now_ms).then(|| Waiter {
                ticket: ticket.clone(),
                arrival: arrival.parse().ok(),
            })
        })
        .collect();
    // In order of arrival; an entry whose arrival does not read goes last, not first.
    out.sort_by_key(|w| (w.arrival.is_none(), w.arrival));
    let mut others: Vec<Waiter> = claims
        .iter()
        .filter(|(id, lapses)| {
            id != "#w"
                && lapses
                    .parse::<i64>()
                    .is_ok_and(|at| at > 0 && at.unsigned_abs() > now_ms)
                && !out.iter().any(|w| &w.ticket == id)
        })
        .map(|(id, _)| Waiter {
            ticket: id.clone(),
            arrival: None,
        })
        .collect();
    others.sort_by(|a, b| a.ticket.cmp(&b.ticket));
    out.extend(others);
    out
}

#[cfg(test)]
mod waiter_tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn the_fair_line_comes_first_in_order_then_other_claims_once_each() {
        let now = 1_000;
        let line = pairs(&[
            ("#", "7"),
            ("late", "5 2000"),
            ("early", "2 2000"),
            ("lapsed", "1 900"),
            ("garbled", "x 2000"),
        ]);
        let claims = pairs(&[
            ("#w", "1"),
            ("early", "2000"), // a fair waiter's claim too: listed once, in line
            ("racer", "2000"),
            ("ended", "-2000"),
            ("gone", "500"),
        ]);
        let got: Vec<(String, Option<u64>)> = waiters(&claims, &line, now)
            .into_iter()
            .map(|w| (w.ticket, w.arrival))
            .collect();
        assert_eq!(
            got,
            [
                ("early".to_owned(), Some(2)),
                ("late".to_owned(), Some(5)),
                ("garbled".to_owned(), None),
                ("racer".to_owned(), None),
            ]
        );
    }
}

/// Orders the permits of one lock the earliest taken first (by the time in their tokens), as
/// operators see them.
pub(crate) fn taken_first(found: &mut [Found]) {
    found.sort_by_key(|f| crate::token::holder_of(&f.value).map(|(_, at)| at));
}

/// The error of an operator command a deployment cannot serve.
fn unsupported(what: &str) -> crate::LockError {
    crate::LockError::InvalidConfig {
        reason: format!("{what} is not supported by this backend"),
    }
}

/// One server's atomic operations on a lock key. Every [`Command`] is owner-checked, and none
/// re-grants a key that already exists: a token is only ever set by an acquire.
pub(crate) trait Node: Send + Sync {
    /// Runs `command`, as the kernel laid it out ([`Command::call`]): one command or one
    /// script. Never [`Answer::Undecided`].
    fn run<'a>(&'a self, command: &'a Command<'a>) -> BoxFuture<'a, Result<Answer>>;

    /// The lock key's value and remaining life, if it exists (operators: `inspect`).
    fn peek<'a>(&'a self, keys: &'a LockKeys) -> BoxFuture<'a, Result<Option<Found>>> {
        let _ = keys;
        Box::pin(async { Err(unsupported("inspect")) })
    }

    /// Ends every hold of the lock, or `eviction.holder`'s only, advances its fencing counter,
    /// leaves a record for each evicted holder and wakes its waiters (force.lua): the evicted
    /// values, one per hold, none when nothing was evicted.
    fn evict<'a>(
        &'a self,
        keys: &'a LockKeys,
        eviction: Eviction<'a>,
    ) -> BoxFuture<'a, Result<Vec<String>>> {
        let _ = (keys, eviction);
        Box::pin(async { Err(unsupported("force_release")) })
    }

    /// The record force.lua left for the hold of `token`, `<who>|<server ms>`, while it lives.
    fn evicted_by<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>>> {
        let _ = (keys, token);
        Box::pin(async { Ok(None) })
    }

    /// Every lock key matching `pattern` (a `SCAN MATCH` glob over whole keys), with what
    /// [`peek`](Self::peek) tells of it; on every primary.
    fn scan<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<Vec<(String, Found)>>> {
        let _ = pattern;
        Box::pin(async { Err(unsupported("list")) })
    }
}

/// Connection settings of the Redis nodes (one server, a cluster, each Redlock instance).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    pub(crate) connect: Duration,
    pub(crate) response: Duration,
}

/// How far a server's clock may run from the client's over a lease, taken off every lease the
/// local deadline counts on: `lease * factor + fixed`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Drift {
    pub(crate) factor: f64,
    pub(crate) fixed: Duration,
}

impl Drift {
    /// Same clock, kept in whole milliseconds as Redis keeps it (the in-process server): a
    /// permit's end is written as the server's millisecond plus the ttl, up to 1 ms before
    /// the client's count.
    pub(crate) const MILLIS: Drift = Drift {
        factor: 0.0,
        fixed: Duration::from_millis(1),
    };

    /// One Redis server or cluster: its clock may run up to 0.1% faster than the client's (NTP
    /// slews clocks by at most 0.05%), and it keeps expiries in whole milliseconds of its own
    /// clock, which can end up to 1 ms before the client's count.
    pub(crate) const SERVER: Drift = Drift {
        factor: 0.001,
        fixed: Duration::from_millis(1),
    };

    /// Redlock's default: independent masters, 1% + 2 ms (the algorithm's description).
    pub(crate) const REDLOCK: Drift = Drift {
        factor: 0.01,
        fixed: Duration::from_millis(2),
    };

    pub(crate) fn of(&self, lease: Duration) -> Duration {
        lease.mul_f64(self.factor) + self.fixed
    }
}

/// What a command may have left where a deployment did not hear it decided, for the caller
/// to finish: with an [`Answer`] of one instance or server, always [`Leftover::Nothing`].
pub(crate) enum Leftover {
    /// Nothing: it was decided everywhere it was sent (an attempt refused everywhere, or
    /// given back and the release confirmed).
    Nothing,
    /// Some server may still apply it or hold it: an acquire's token, to release by token in
    /// the background; an extend that may still land somewhere, later.
    Unknown,
    /// The attempt was decided before every instance answered (Redlock): this awaits the late
    /// answers and gives the attempt back where one granted or stayed silent, sending nothing
    /// where it was refused. `true` once nothing of the attempt can remain anywhere; `false`
    /// when something may, as for [`Leftover::Unknown`].
    Later(BoxFuture<'static, bool>),
}

impl std::fmt::Debug for Leftover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Leftover::Nothing => "Nothing",
            Leftover::Unknown => "Unknown",
            Leftover::Later(_) => "Later(..)",
        })
    }
}

/// A deployment: how the answers of its nodes make a lock.
pub(crate) trait Store: Send + Sync {
    /// Runs `command` on the deployment: its [`Answer`] (an acquire or extend answers the
    /// part of the lease the local deadline may count on, from when it was sent), and what it
    /// may have left where it was not decided. An acquire's token was never sent before.
    fn run<'a>(&'a self, command: &'a Command<'a>) -> BoxFuture<'a, Result<(Answer, Leftover)>>;

    /// Whether this deployment decides by a majority of independent instances (Redlock),
    /// which cannot keep one line of fair waiters (each instance would keep its own, and they
    /// could disagree on who is first) nor bound a lock to `n > 1` holders (a permit counts
    /// where a majority grants it, and `n + 1` holders can each find a majority with free
    /// permits). [`Kind::of`](crate::kind::Kind::of) refuses those kinds there.
    fn by_majority(&self) -> bool {
        false
    }

    /// See [`Node::peek`]; Redlock: the value a majority holds.
    fn peek<'a>(&'a self, keys: &'a LockKeys) -> BoxFuture<'a, Result<Option<Found>>>;

    /// See [`Node::evict`], everywhere.
    fn evict<'a>(
        &'a self,
        keys: &'a LockKeys,
        eviction: Eviction<'a>,
    ) -> BoxFuture<'a, Result<Vec<String>>>;

    /// See [`Node::evicted_by`]; Redlock: the first instance's record found.
    fn evicted_by<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>>>;

    /// See [`Node::scan`]; Redlock: the keys a majority holds.
    fn scan<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<Vec<(String, Found)>>>;

    /// The part of a lease of `ttl`, sent at some instant, that the local deadline may count on
    /// from that instant.
    fn usable(&self, ttl: Duration) -> Duration;

    /// A name for `Debug` output.
    fn kind(&self) -> &'static str;

    /// Waits for the work this deployment still does in the background (Redlock: the late
    /// replies of decided commands, a slow instance's release among them), for `shutdown`.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// Whether the client may send a command again by itself after an error (the Redis Cluster
    /// client retries on I/O errors), so that a command answered once can still land a second
    /// time, later.
    fn replays(&self) -> bool {
        false
    }
}

impl dyn Store {
    /// Compare-and-delete of `token`'s hold (see [`Command::Release`], and `contended` there):
    /// `true` when our hold ended here.
    pub(crate) async fn release(
        &self,
        keys: &LockKeys,
        token: &str,
        keep: Duration,
        contended: bool,
    ) -> Result<bool> {
        let release = Command::Release {
            keys: std::borrow::Cow::Borrowed(keys),
            token: std::borrow::Cow::Borrowed(token),
            keep,
            contended,
        };
        Ok(self.run(&release).await?.0.applied())
    }
}

/// A waiter's handle on release notifications for one lock. Enable a `notify().notified()`
/// before each attempt; it fires when the lock may have become free.
pub(crate) struct Watch {
    notify: Arc<Notify>,
    /// Keeps the registrations alive while the waiter waits (one per server notifying it).
    _interests: Vec<notify::Interest>,
}

impl Watch {
    pub(crate) fn new(notify: Arc<Notify>, interests: Vec<notify::Interest>) -> Self {
        Self {
            notify,
            _interests: interests,
        }
    }

    pub(crate) fn notify(&self) -> &Arc<Notify> {
        &self.notify
    }
}

/// Release notifications for waiters.
pub(crate) trait Wake: Send + Sync {
    /// Starts watching `keys` for releases. Called by a waiter after its first refused
    /// attempt, so the uncontended path never pays for it.
    /// A fair waiter passes its `ticket`: a release message that names another fair waiter
    /// first in line need not wake it.
    fn watch<'a>(&'a self, keys: &'a LockKeys, ticket: Option<&'a str>) -> BoxFuture<'a, Watch>;

    /// Stops listening and waits until every task of it has ended (`shutdown`): no connection
    /// of it stays open. A waiter after that starts listening again.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// A node shared with something else (the in-process node is also its own [`Wake`]).
impl<T: Node + ?Sized> Node for Arc<T> {
    fn run<'a>(&'a self, command: &'a Command<'a>) -> BoxFuture<'a, Result<Answer>> {
        (**self).run(command)
    }

    fn peek<'a>(&'a self, keys: &'a LockKeys) -> BoxFuture<'a, Result<Option<Found>>> {
        (**self).peek(keys)
    }

    fn evict<'a>(
        &'a self,
        keys: &'a LockKeys,
        eviction: Eviction<'a>,
    ) -> BoxFuture<'a, Result<Vec<String>>> {
        (**self).evict(keys, eviction)
    }

    fn evicted_by<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>>> {
        (**self).evicted_by(keys, token)
    }

    fn scan<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<Vec<(String, Found)>>> {
        (**self).scan(pattern)
    }
}

impl<T: Wake + ?Sized> Wake for Arc<T> {
    fn watch<'a>(&'a self, keys: &'a LockKeys, ticket: Option<&'a str>) -> BoxFuture<'a, Watch> {
        (**self).watch(keys, ticket)
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        (**self).close()
    }
}
