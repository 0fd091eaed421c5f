//! The Redis key layout of a lock, in one place.
//!
//! A lock `name` lives at `<prefix>{<name>}`; its value is the holder's owner token (followed by
//! `*` once a waiter has asked to be told of its release). Its fencing counter, created only
//! when a guard asks for a fencing token, lives at `<prefix>{<name>}:fence`; fair waiters line
//! up in `<prefix>{<name>}:q`. On a deployment whose client re-sends commands by itself (Cluster),
//! an attempt refused or released leaves a tomb, `<prefix>{<name>}:gone:<token>`, for at most
//! its lease, so that a late copy of it takes nothing (scripts/prelude/tomb.lua). A
//! force-release leaves `<prefix>{<name>}:evicted:<token>` per evicted hold for a day, where
//! its holder reads who evicted it (force.lua). A
//! lock of `permits(n)`, `n > 1`, keeps all its holders in the
//! same `<prefix>{<name>}` key, a hash (see [`LockKeys::lock`]). Releases are
//! published on the channel named like the lock key. The braces are a Redis Cluster hash tag:
//! every key of a lock hashes to one slot.

use crate::kind::Kind;

/// The keys of one lock.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct LockKeys {
    /// `<prefix>{<name>}`: holds the owner token while the lock is held. Also the name of the
    /// pub/sub channel its releases are published on.
    ///
    /// With `permits(n)` for `n > 1`, the same key is a hash instead: `#n` -> `n`, `#w` -> `1`
    /// while a waiter asks for releases to be published, and one field per permit, the
    /// holder's token -> the server time (ms) its lease ends (permit_*.lua).
    pub(crate) lock: String,
    /// What kind of lock the request that made these keys asks for.
    pub(crate) kind: Kind,
}

impl LockKeys {
    pub(crate) fn new(prefix: &str, name: &str) -> Self {
        let mut lock = String::with_capacity(prefix.len() + name.len() + 2);
        lock.push_str(prefix);
        lock.push('{');
        lock.push_str(name);
        lock.push('}');
        Self {
            lock,
            kind: Kind::Exclusive,
        }
    }

    /// The same keys, for a request of `kind`.
    pub(crate) fn of_kind(mut self, kind: Kind) -> Self {
        self.kind = kind;
        self
    }

    /// The lock name, as given (the prefix has no braces, so the name runs from the first `{`
    /// to the last `}`).
    pub(crate) fn name(&self) -> &str {
        let open = self.lock.find('{').map_or(0, |i| i + 1);
        &self.lock[open..self.lock.len() - 1]
    }

    /// `<prefix>{<name>}:q`: the line of fair waiters (a hash of tickets). Made only by fair
    /// waiters, and gone a few poll intervals after the last one left.
    pub(crate) fn queue(&self) -> String {
        format!("{}:q", self.lock)
    }

    /// `<prefix>{<name>}:fence`: the last fencing token drawn for this name. Made only when a
    /// token is drawn.
    pub(crate) fn fence(&self) -> String {
        format!("{}:fence", self.lock)
    }

    /// `<prefix>{<name>}:evicted:<token>`: who evicted the hold of `token`, and when
    /// (`<who>|<server ms>`), written by force.lua. Read only once a hold is found gone.
    pub(crate) fn evicted(&self, token: &str) -> String {
        format!("{}:evicted:{token}", self.lock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_a_hash_tag() {
        let k = LockKeys::new("lock:", "invoices:7");
        assert_eq!(k.lock, "lock:{invoices:7}");
        assert_eq!(k.fence(), "lock:{invoices:7}:fence");
        assert_eq!(k.name(), "invoices:7");
        assert_eq!(LockKeys::new("", "a{b}c}").name(), "a{b}c}");
    }
}
