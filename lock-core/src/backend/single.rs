//! One server (or one Redis Cluster): a lock is held when its one node says so.
//!
//! A grant or renewal applied by the server at `T >= sent` expires at `T + ttl` on the server's
//! clock, so the `ttl` counted from the send time is usable, less the server's clock drift.

use std::time::Duration;

use super::{Answer, BoxFuture, Command, Drift, Eviction, Found, Leftover, Node, Store};
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
    fn run<'a>(&'a self, command: &'a Command<'a>) -> BoxFuture<'a, Result<(Answer, Leftover)>> {
        Box::pin(async move {
            let answer = match self.node.run(command).await? {
                // Applied by the server at `T >= sent`, it expires at `T + ttl` on the server's
                // clock: usable from the send, less the clock drift.
                Answer::Applied(ttl) => Answer::Applied(self.usable(ttl)),
                other => other,
            };
            Ok((answer, Leftover::Nothing))
        })
    }

    fn peek<'a>(&'a self, keys: &'a LockKeys) -> BoxFuture<'a, Result<Option<Found>>> {
        self.node.peek(keys)
    }

    fn evict<'a>(
        &'a self,
        keys: &'a LockKeys,
        eviction: Eviction<'a>,
    ) -> BoxFuture<'a, Result<Vec<String>>> {
        self.node.evict(keys, eviction)
    }

    fn evicted_by<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>>> {
        self.node.evicted_by(keys, token)
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
