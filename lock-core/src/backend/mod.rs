//! Where locks live: one Redis server, or this process's memory.
//!
//! Each backend offers the same three atomic operations, keyed by [`LockKeys`] and checked
//! against the owner token. The manager, guard and watchdog are written once on top of them.

use std::time::Duration;

use crate::Result;

pub(crate) mod memory;
pub(crate) mod redis;

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

pub(crate) enum Backend {
    Redis(redis::RedisBackend),
    Memory(memory::MemoryBackend),
}

impl Backend {
    /// `SET lock token NX PX ttl` and, when that took, `INCR fence`. `Some(fencing token)` when
    /// the lock is ours, `None` when another owner holds it.
    pub(crate) async fn acquire(
        &self,
        keys: &LockKeys,
        token: &str,
        ttl: Duration,
    ) -> Result<Option<u64>> {
        match self {
            Backend::Redis(b) => b.acquire(keys, token, ttl).await,
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
            Backend::Memory(b) => Ok(b.release(keys, token, keep)),
        }
    }

    /// Compare-and-pexpire: the lease runs `ttl` from now. `true` when it was still ours.
    pub(crate) async fn extend(&self, keys: &LockKeys, token: &str, ttl: Duration) -> Result<bool> {
        match self {
            Backend::Redis(b) => b.extend(keys, token, ttl).await,
            Backend::Memory(b) => Ok(b.extend(keys, token, ttl)),
        }
    }

    /// Resolves when a lock of this backend may have become free, or after `at_most`,
    /// whichever comes first. Waiters call it between attempts.
    pub(crate) async fn wait_for_release(&self, at_most: Duration) {
        match self {
            Backend::Redis(_) => tokio::time::sleep(at_most).await,
            Backend::Memory(b) => b.wait_for_release(at_most).await,
        }
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Backend::Redis(_) => "redis",
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
