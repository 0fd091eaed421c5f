//! One server (or one Redis Cluster): a lock is held when its one node says so.
//!
//! A grant or renewal applied by the server at `T >= sent` expires at `T + ttl` on the server's
//! clock, so the `ttl` counted from the send time is usable, less the server's clock drift.

use std::time::Duration;

use super::{Attempt, BoxFuture, Drift, Found, Leftover, Node, Renewal, Store, Taken, Ticket};
use crate::keys::LockKeys;
use crate::Result;

pub(crate) struct Single {
    node: Box<dyn Node>,
    kind: &'static str,
    drift: Drift,
    replays: bool,
}

impl Single {
    /// `replays`: see [`Store::replays`].
    pub(crate) fn new(
        node: Box<dyn Node>,
        kind: &'static str,
        drift: Drift,
        replays: bool,
    ) -> Self {
        Self {
            node,
            kind,
            drift,
            replays,
        }
    }
}

impl Store for Single {
    fn acquire<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
        ttl: Duration,
        mark: bool,
        ticket: Option<Ticket<'a>>,
    ) -> BoxFuture<'a, Result<Attempt>> {
        Box::pin(async move {
            Ok(
                match self.node.acquire(keys, token, ttl, mark, ticket).await? {
                    Taken::Granted => Attempt::Granted(self.usable(ttl)),
                    Taken::Held(left) => Attempt::Held {
                        left,
                        leftover: Leftover::Nothing,
                    },
                },
            )
        })
    }

    fn leave<'a>(&'a self, keys: &'a LockKeys, ticket: &'a str) -> BoxFuture<'a, Result<()>> {
        self.node.leave(keys, ticket)
    }

    fn release<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
        keep: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        self.node.release(keys, token, keep)
    }

    fn extend<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Renewal>> {
        Box::pin(async move {
            Ok(if self.node.extend(keys, token, ttl).await? {
                Renewal::Renewed {
                    usable: self.usable(ttl),
                    partial: false,
                }
            } else {
                Renewal::NotOurs
            })
        })
    }

    fn fence<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>>> {
        self.node.fence(keys, token)
    }

    fn peek<'a>(&'a self, keys: &'a LockKeys) -> BoxFuture<'a, Result<Option<Found>>> {
        self.node.peek(keys)
    }

    fn evict<'a>(&'a self, keys: &'a LockKeys) -> BoxFuture<'a, Result<Option<String>>> {
        self.node.evict(keys)
    }

    fn scan<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<Vec<(String, Found)>>> {
        self.node.scan(pattern)
    }

    fn usable(&self, ttl: Duration) -> Duration {
        ttl.saturating_sub(self.drift.of(ttl))
    }

    fn kind(&self) -> &'static str {
        self.kind
    }

    fn replays(&self) -> bool {
        self.replays
    }
}
