//! Where locks live: one Redis server, or this process's memory.
//!
//! Each backend offers the same three atomic operations, keyed by [`LockKeys`] and checked
//! against the owner token. The manager, guard and watchdog are written once on top of them.

use std::time::Duration;

use crate::Result;

pub(crate) mod memory;
pub(crate) mod notify;
pub(crate) mod redis;
pub(crate) mod redlock;

use std::sync::Arc;

use tokio::sync::Notify;

/// The two Redis keys of one lock. The name sits inside a Cluster hash tag (`{...}`), so both
/// keys hash to the same slot and a script can touch both in one round trip.
#[derive(Clone)]
pub(crate) struct LockKeys {
    /// `<prefix>{<name>}`: holds the owner token while the lock is held.
    pub(crate) lock: String,
    /// `<prefix>{<name>}:fence`: a counter that never expires; its value is the fencing token.
    pub(crate) fence: String,
}

impl LockKeys {
    pub(crate) fn new(prefix: &str, name: &str) -> Self {
        let mut lock = String::with_capacity(prefix.len() + name.len() + 2);
        lock.push_str(prefix);
        lock.push('{');
        lock.push_str(name);
        lock.push('}');
        let mut fence = String::with_capacity(lock.len() + 6);
        fence.push_str(&lock);
        fence.push_str(":fence");
        Self { lock, fence }
    }
}

/// The outcome of one acquire attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// The lock is ours, with this fencing token.
    Granted(u64),
    /// Another owner holds it; their lease ends within this long, if known.
    Held(Option<Duration>),
    /// Redlock: not enough instances granted it in time, for reasons other than another owner
    /// (instances down or slow, or the lease too short for the round trips and clock drift).
    NoQuorum { granted: usize, needed: usize },
}

/// A waiter's handle on release notifications for one lock. Enable a `notify().notified()`
/// before each attempt; it fires when the lock may have become free.
pub(crate) struct Watch {
    notify: Arc<Notify>,
    /// Keeps the Redis subscription alive while the waiter waits.
    _interest: Option<notify::Interest>,
}

impl Watch {
    pub(crate) fn notify(&self) -> &Notify {
        &self.notify
    }
}

pub(crate) enum Backend {
    /// One server, or a Redis Cluster.
    Redis(redis::RedisBackend),
    Redlock(redlock::RedlockBackend),
    Memory(memory::MemoryBackend),
}

impl Backend {
    /// `SET lock token NX PX ttl` and, when that took, `INCR fence`.
    pub(crate) async fn acquire(
        &self,
        keys: &LockKeys,
        token: &str,
        ttl: Duration,
    ) -> Result<Attempt> {
        match self {
            Backend::Redis(b) => b.acquire(keys, token, ttl).await,
            Backend::Redlock(b) => b.acquire(keys, token, ttl).await,
            Backend::Memory(b) => Ok(b.acquire(keys, token, ttl)),
        }
    }

    /// Compare-and-delete. With `keep` above zero the key is only shortened to expire after
    /// `keep` (for `min_hold`). `true` when our lease ended here.
    pub(crate) async fn release(
        &self,
        keys: &LockKeys,
        token: &str,
        keep: Duration,
    ) -> Result<bool> {
        match self {
            Backend::Redis(b) => b.release(keys, token, keep).await,
            Backend::Redlock(b) => b.release(keys, token, keep).await,
            Backend::Memory(b) => Ok(b.release(keys, token, keep)),
        }
    }

    /// Compare-and-pexpire: the lease runs `ttl` from now. `true` when it was still ours.
    pub(crate) async fn extend(&self, keys: &LockKeys, token: &str, ttl: Duration) -> Result<bool> {
        match self {
            Backend::Redis(b) => b.extend(keys, token, ttl).await,
            Backend::Redlock(b) => b.extend(keys, token, ttl).await,
            Backend::Memory(b) => Ok(b.extend(keys, token, ttl)),
        }
    }

    /// Starts watching `keys` for releases. Called by a waiter after its first refused
    /// attempt, so the uncontended path never pays for it.
    pub(crate) async fn watch(&self, keys: &LockKeys) -> Watch {
        match self {
            Backend::Redis(b) => {
                let interest = b.watch(&keys.lock).await;
                Watch {
                    notify: Arc::clone(interest.notify()),
                    _interest: Some(interest),
                }
            }
            Backend::Redlock(b) => {
                let interest = b.watch(&keys.lock).await;
                Watch {
                    notify: Arc::clone(interest.notify()),
                    _interest: Some(interest),
                }
            }
            Backend::Memory(b) => Watch {
                notify: b.released(),
                _interest: None,
            },
        }
    }

    /// The part of a lease that the local deadline may count on: all of it, except with
    /// Redlock, where the instances' clock drift is taken off.
    pub(crate) fn usable(&self, lease: Duration) -> Duration {
        match self {
            Backend::Redlock(b) => lease.saturating_sub(b.drift(lease)),
            _ => lease,
        }
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Backend::Redis(b) => b.kind(),
            Backend::Redlock(_) => "redlock",
            Backend::Memory(_) => "in-memory",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_a_hash_tag() {
        let k = LockKeys::new("lock:", "invoices:7");
        assert_eq!(k.lock, "lock:{invoices:7}");
        assert_eq!(k.fence, "lock:{invoices:7}:fence");
    }
}
