//! Where locks live, in three separate concerns:
//!
//! - [`Node`]: one server's atomic operations on a lock key (a Redis server or cluster, or this
//!   process's memory). Each is one command or one script, checked against the owner token.
//! - [`Store`]: a deployment's policy over nodes: one node ([`single::Single`]), or a majority
//!   of independent nodes with a clock-drift allowance ([`redlock::Redlock`]). It answers in
//!   lease lengths that the caller counts from the moment it sent the command.
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

/// One server's answer to an acquire attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Taken {
    /// The key was free and now holds our token, for the full lease from when it was applied.
    Granted,
    /// Another owner holds it; their lease ends within this long, if known.
    Held(Option<Duration>),
}

/// A waiting acquisition's id, the same for all its attempts, and how long what it records
/// lasts unless an attempt refreshes it: a fair acquisition's ticket in line, or a waiting
/// exclusive acquisition's claim (both keep new shared holds out while it waits; see
/// scripts/prelude/claims.lua).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket<'a> {
    pub(crate) id: &'a str,
    pub(crate) keep: Duration,
}

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

/// One server's atomic operations on a lock key. Every one is owner-checked, and none re-grants
/// a key that already exists: a token is only ever set by `SET NX`.
pub(crate) trait Node: Send + Sync {
    /// `SET key token NX PX ttl`. With `mark`, a refused attempt also marks the key so that its
    /// release is published to waiters (only waiters pay for that). With a fair `ticket`, the
    /// lock is taken only when it is free and the ticket is first in line; otherwise the ticket
    /// is put in line (or kept there) (fair.lua). Any other kind's `ticket` is a waiting
    /// writer's claim (acquire.lua).
    fn acquire<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
        ttl: Duration,
        mark: bool,
        ticket: Option<Ticket<'a>>,
    ) -> BoxFuture<'a, Result<Taken>>;

    /// Takes `ticket` out of the line, or ends the writer's claim it names (leave.lua).
    fn leave<'a>(&'a self, keys: &'a LockKeys, ticket: &'a str) -> BoxFuture<'a, Result<()>>;

    /// Compare-and-delete. With `keep` above zero the key is only shortened to expire after
    /// `keep` (for `min_hold`), never lengthened. `true` when our lease ended here.
    fn release<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
        keep: Duration,
    ) -> BoxFuture<'a, Result<bool>>;

    /// Compare-and-pexpire: the key expires `ttl` after the server applies it. `true` when it was
    /// still ours.
    fn extend<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool>>;

    /// Draws the next fencing token while the key holds our token; `None` when it does not.
    fn fence<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>>>;

    /// The lock key's value and remaining life, if it exists (operators: `inspect`).
    fn peek<'a>(&'a self, keys: &'a LockKeys) -> BoxFuture<'a, Result<Option<Found>>> {
        let _ = keys;
        Box::pin(async { Err(unsupported("inspect")) })
    }

    /// Deletes the lock key whoever holds it, advances its fencing counter and wakes its
    /// waiters (force.lua): the value it had, if it existed.
    fn evict<'a>(&'a self, keys: &'a LockKeys) -> BoxFuture<'a, Result<Option<String>>> {
        let _ = keys;
        Box::pin(async { Err(unsupported("force_release")) })
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

/// A deployment's answer to an acquire attempt.
pub(crate) enum Attempt {
    /// The lock is ours for this long, counted from when the attempt was sent.
    Granted(Duration),
    /// Another owner holds it; their lease ends within this long, if known.
    Held {
        left: Option<Duration>,
        leftover: Leftover,
    },
    /// Redlock: not enough instances granted it in time, for reasons other than another owner
    /// (instances down or slow, or the lease too short for the round trips and clock drift).
    /// `refused`: instances where another owner held it (with some `granted`, a split vote).
    NoQuorum {
        granted: usize,
        needed: usize,
        refused: usize,
        leftover: Leftover,
    },
}

/// What a refused attempt may have left set, for the caller to finish.
pub(crate) enum Leftover {
    /// Nothing: it was refused everywhere, or given back and the release confirmed.
    Nothing,
    /// Some server may hold the attempt's token: release it by token in the background.
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

/// A deployment's answer to an extend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Renewal {
    /// Still ours, now for this long counted from when the extend was sent. `partial`: some
    /// instance's outcome is unknown (Redlock), so the command may still land there later.
    Renewed { usable: Duration, partial: bool },
    /// The key had expired or belongs to another owner.
    NotOurs,
}

/// A deployment: how the answers of its nodes make a lock.
pub(crate) trait Store: Send + Sync {
    /// One attempt with a token never sent before; see [`Node::acquire`].
    fn acquire<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
        ttl: Duration,
        mark: bool,
        ticket: Option<Ticket<'a>>,
    ) -> BoxFuture<'a, Result<Attempt>>;

    /// Takes a fair acquisition's ticket out of the line, or ends a waiting writer's claim.
    fn leave<'a>(&'a self, keys: &'a LockKeys, ticket: &'a str) -> BoxFuture<'a, Result<()>>;

    /// Whether this deployment decides by a majority of independent instances (Redlock),
    /// which cannot keep one line of fair waiters (each instance would keep its own, and they
    /// could disagree on who is first) nor bound a lock to `n > 1` holders (a permit counts
    /// where a majority grants it, and `n + 1` holders can each find a majority with free
    /// permits). [`Kind::of`](crate::kind::Kind::of) refuses those kinds there.
    fn by_majority(&self) -> bool {
        false
    }

    /// Compare-and-delete everywhere; see [`Node::release`].
    fn release<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
        keep: Duration,
    ) -> BoxFuture<'a, Result<bool>>;

    /// Owner-checked renewal for `ttl`.
    fn extend<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Renewal>>;

    /// See [`Node::fence`].
    fn fence<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>>>;

    /// See [`Node::peek`]; Redlock: the value a majority holds.
    fn peek<'a>(&'a self, keys: &'a LockKeys) -> BoxFuture<'a, Result<Option<Found>>>;

    /// See [`Node::evict`], everywhere.
    fn evict<'a>(&'a self, keys: &'a LockKeys) -> BoxFuture<'a, Result<Option<String>>>;

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
    fn acquire<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
        ttl: Duration,
        mark: bool,
        ticket: Option<Ticket<'a>>,
    ) -> BoxFuture<'a, Result<Taken>> {
        (**self).acquire(keys, token, ttl, mark, ticket)
    }

    fn leave<'a>(&'a self, keys: &'a LockKeys, ticket: &'a str) -> BoxFuture<'a, Result<()>> {
        (**self).leave(keys, ticket)
    }

    fn release<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
        keep: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        (**self).release(keys, token, keep)
    }

    fn extend<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        (**self).extend(keys, token, ttl)
    }

    fn fence<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>>> {
        (**self).fence(keys, token)
    }

    fn peek<'a>(&'a self, keys: &'a LockKeys) -> BoxFuture<'a, Result<Option<Found>>> {
        (**self).peek(keys)
    }

    fn evict<'a>(&'a self, keys: &'a LockKeys) -> BoxFuture<'a, Result<Option<String>>> {
        (**self).evict(keys)
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
