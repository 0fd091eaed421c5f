//! Release notifications for waiters on the Redis backends.
//!
//! A waiter registers interest in the channel named like the lock key, then makes every further
//! attempt with acquire.lua, which marks the holder's key; the release script `PUBLISH`es on
//! that channel when it deletes a marked key. So a waiter is woken by the release itself, and a
//! release nobody waits for publishes nothing.
//!
//! Waiters never touch the pub/sub connection. Registering is a table update plus a poke to one
//! driver task per server, started on the first wait (never on the uncontended path), which
//! owns the connection: it connects, subscribes the channels that have waiters and unsubscribes
//! those that have none left, in batches, and forwards each message to the waiters of its
//! channel. So:
//!
//! - **W1** a release wakes the live waiters of its lock by one message, whatever happens to
//!   other names (of a fair lock's line, only the first: the message names its ticket, as
//!   only it may take the lock);
//! - **W2** a slow, paused or dead server or connection delays nobody past
//!   `max_poll_interval` (waiters poll meanwhile) and serializes no waiter behind another: no
//!   waiter ever waits for a connect or a `SUBSCRIBE`;
//! - **W3** when a wait ends (granted, timed out, or its future dropped at any await point), its
//!   interest goes with it at once, and the driver unsubscribes the channels nobody waits on:
//!   no channel, table entry or task of it remains;
//! - **W4** when the connection breaks, every waiter is woken to try again, and the driver
//!   reconnects and subscribes every channel that still has waiters; each confirmation wakes
//!   that channel's waiters once more, so a release that happened meanwhile is not missed.
//!
//! A waiter's own `Notify` stores a permit when it is not waiting yet, so a message that
//! arrives while it is busy with an attempt is not lost either.

use std::collections::HashMap;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_core::Stream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::{BoxFuture, Wake, Watch};
use crate::keys::LockKeys;
use crate::locked;

/// How long connecting, or one `SUBSCRIBE`/`UNSUBSCRIBE`, may take before the driver gives up
/// on the connection and starts over (waiters poll meanwhile).
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

/// Pause between connection attempts while the server cannot be reached: doubling up to the
/// maximum.
pub(crate) const RECONNECT_MIN: Duration = Duration::from_millis(50);
pub(crate) const RECONNECT_MAX: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Channel {
    /// The waiters on this channel, each with its own `Notify`, and a fair waiter's ticket.
    waiters: HashMap<u64, (Arc<Notify>, Option<String>)>,
    /// Confirmed subscribed on the current connection.
    subscribed: bool,
}

impl Channel {
    fn wake(&self) {
        for (waiter, _) in self.waiters.values() {
            waiter.notify_one();
        }
    }

    /// A release message: it names the first fair waiter in line, if any. Only that one may
    /// take the lock now, so the other fair waiters sleep on (their next poll keeps their
    /// place); waiters without a ticket may take it and are woken.
    fn wake_for(&self, next: &str) {
        for (waiter, ticket) in self.waiters.values() {
            if next.is_empty() || ticket.as_deref().is_none_or(|t| t == next) {
                waiter.notify_one();
            }
        }
    }
}

/// What the waiters and a driver share: who waits on which channel, and what is subscribed.
/// Both drivers (classic pub/sub on one server, sharded pub/sub on a cluster) keep it the same
/// way.
#[derive(Default)]
pub(crate) struct Table {
    channels: Mutex<HashMap<String, Channel>>,
    /// Wakes the driver: a channel gained its first waiter or lost its last one.
    poke: Notify,
    next_id: AtomicU64,
}

impl Table {
    /// Registers `waiter` (a fair one with its `ticket`) on `channel`, and pokes the driver
    /// when it has to subscribe.
    pub(crate) fn register(
        self: &Arc<Self>,
        channel: &str,
        waiter: &Arc<Notify>,
        ticket: Option<&str>,
    ) -> Interest {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let first = {
            let mut channels = locked(&self.channels);
            let entry = channels.entry(channel.to_owned()).or_default();
            entry
                .waiters
                .insert(id, (Arc::clone(waiter), ticket.map(str::to_owned)));
            entry.waiters.len() == 1 && !entry.subscribed
        };
        if first {
            self.poke.notify_one();
        }
        Interest {
            table: Arc::clone(self),
            channel: channel.to_owned(),
            id,
        }
    }

    /// Registers `waiter` on a channel whose messages are always delivered (the in-process
    /// server publishes into this table itself): nothing to subscribe, no driver. Entries
    /// nobody waits on any more go now.
    pub(crate) fn register_listening(
        self: &Arc<Self>,
        channel: &str,
        waiter: &Arc<Notify>,
        ticket: Option<&str>,
    ) -> Interest {
        let interest = self.register(channel, waiter, ticket);
        locked(&self.channels).retain(|_, entry| !entry.waiters.is_empty());
        interest
    }

    /// What to change on the server: channels with waiters not yet subscribed, and subscribed
    /// ones with none left. Entries nobody waits on go now (they are unsubscribed by the
    /// caller, or were never subscribed).
    pub(crate) fn plan(&self) -> (Vec<String>, Vec<String>) {
        let mut channels = locked(&self.channels);
        let subscribe = channels
            .iter()
            .filter(|(_, e)| !e.subscribed && !e.waiters.is_empty())
            .map(|(name, _)| name.clone())
            .collect();
        let unsubscribe = channels
            .iter()
            .filter(|(_, e)| e.subscribed && e.waiters.is_empty())
            .map(|(name, _)| name.clone())
            .collect();
        channels.retain(|_, e| !e.waiters.is_empty());
        (subscribe, unsubscribe)
    }

    /// `channels` are subscribed now: a release before this moment sent its message to
    /// nobody, so their waiters try again at once.
    pub(crate) fn confirmed(&self, channels: &[String]) {
        let mut table = locked(&self.channels);
        for name in channels {
            if let Some(entry) = table.get_mut(name) {
                entry.subscribed = true;
                entry.wake();
            }
        }
    }

    /// A release message on `channel`, naming the first fair waiter in line or empty: the
    /// waiters that may take the lock now try again.
    pub(crate) fn wake(&self, channel: &str, message: &str) {
        if let Some(entry) = locked(&self.channels).get(channel) {
            entry.wake_for(message);
        }
    }

    /// The connection is gone: nothing is subscribed any more, and the waiters of what was
    /// subscribed try again (a release may have gone unheard). The others were polling anyway:
    /// waking them at every reconnect attempt while a server is down would be a storm.
    pub(crate) fn lost(&self) {
        let mut channels = locked(&self.channels);
        channels.retain(|_, entry| !entry.waiters.is_empty());
        for entry in channels.values_mut() {
            if std::mem::take(&mut entry.subscribed) {
                entry.wake();
            }
        }
    }

    /// The server dropped `channel`'s subscription (a shard channel whose slot moved): its
    /// waiters try again, and the driver subscribes it anew.
    #[cfg(feature = "cluster")]
    pub(crate) fn dropped(&self, channel: &str) {
        if let Some(entry) = locked(&self.channels).get_mut(channel) {
            entry.subscribed = false;
            entry.wake();
        }
        self.poke.notify_one();
    }

    /// Every waiter tries again (a connection somewhere closed), subscriptions unchanged.
    #[cfg(feature = "cluster")]
    pub(crate) fn wake_all(&self) {
        for entry in locked(&self.channels).values() {
            entry.wake();
        }
    }

    /// Waits until the table changes.
    pub(crate) async fn changed(&self) {
        self.poke.notified().await;
    }

    /// Whether a release message on `channel` would wake a waiter now (the simulator's W1
    /// check).
    #[cfg(test)]
    pub(crate) fn wakes(&self, channel: &str, message: &str) -> bool {
        locked(&self.channels).get(channel).is_some_and(|entry| {
            entry.waiters.values().any(|(_, ticket)| {
                message.is_empty() || ticket.as_deref().is_none_or(|t| t == message)
            })
        })
    }

    /// How many waiters are registered, on every channel (the simulator's W3 check).
    #[cfg(test)]
    pub(crate) fn waiters(&self) -> usize {
        locked(&self.channels)
            .values()
            .map(|e| e.waiters.len())
            .sum()
    }
}

/// Where a [`Notifier`] connects: one server, or whichever the sentinels name as primary.
#[derive(Clone)]
pub(crate) enum Dial {
    Client(Box<redis::Client>),
    #[cfg(feature = "sentinel")]
    Sentinel(Arc<super::sentinel::Primary>),
}

impl Dial {
    /// The server to connect to; with Sentinel, after the connection of `lost` (a
    /// generation) broke, the primary as the sentinels name it now.
    async fn client(&self, lost: Option<u64>) -> redis::RedisResult<(redis::Client, u64)> {
        match self {
            Dial::Client(client) => {
                let _ = lost;
                Ok(((**client).clone(), 0))
            }
            #[cfg(feature = "sentinel")]
            Dial::Sentinel(primary) => match lost {
                Some(generation) => primary.lookup(generation).await,
                None => primary.client().await,
            },
        }
    }
}

/// Release notifications from one server: the interest table and its driver task.
pub(crate) struct Notifier {
    dial: Dial,
    table: Arc<Table>,
    driver: Mutex<Option<JoinHandle<()>>>,
}

/// A waiter's registration on one channel; dropping it removes it, at once and without I/O.
pub(crate) struct Interest {
    table: Arc<Table>,
    channel: String,
    id: u64,
}

impl Notifier {
    pub(crate) fn new(dial: Dial) -> Self {
        Self {
            dial,
            table: Arc::default(),
            driver: Mutex::new(None),
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        if let Some(driver) = locked(&self.driver).take() {
            driver.abort();
        }
    }
}

impl Drop for Interest {
    fn drop(&mut self) {
        // Only the driver removes entries: a `SUBSCRIBE` of this channel may be in flight, and
        // its confirmation must find the entry to know it has to unsubscribe again.
        let last = locked(&self.table.channels)
            .get_mut(&self.channel)
            .is_some_and(|entry| {
                entry.waiters.remove(&self.id);
                entry.waiters.is_empty()
            });
        if last {
            self.table.poke.notify_one();
        }
    }
}

/// Starts `driver` on the current runtime unless it is running already. Without a runtime it
/// does nothing: waiters then poll.
pub(crate) fn ensure_running<F>(slot: &Mutex<Option<JoinHandle<()>>>, driver: impl FnOnce() -> F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let mut running = locked(slot);
    if running.as_ref().is_some_and(|d| !d.is_finished()) {
        return;
    }
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        *running = Some(handle.spawn(driver()));
    }
}

/// Stops the driver in `slot`, if one runs, and waits until it has ended: its pub/sub
/// connection is dropped with it (`shutdown`). A later waiter starts a new one.
pub(crate) async fn stop(slot: &Mutex<Option<JoinHandle<()>>>) {
    let running = locked(slot).take();
    if let Some(driver) = running {
        driver.abort();
        let _ = driver.await;
    }
}

/// The driver: owns the pub/sub connection for as long as the manager lives.
async fn drive(dial: Dial, table: Arc<Table>) {
    let mut pause = RECONNECT_MIN;
    // The generation of the server whose connection broke last (Sentinel: look it up again).
    let mut lost = None;
    loop {
        // Nothing is subscribed without a connection.
        table.lost();
        let connected = tokio::time::timeout(COMMAND_TIMEOUT, async {
            let (client, generation) = dial.client(lost).await?;
            lost = Some(generation);
            client.get_async_pubsub().await
        })
        .await;
        let Ok(Ok(pubsub)) = connected else {
            tracing::debug!("no pub/sub connection; waiters poll");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RECONNECT_MAX);
            continue;
        };
        pause = RECONNECT_MIN;
        let (mut sink, mut stream) = pubsub.split();
        serve(&table, &mut sink, &mut stream).await;
        // The connection is gone or failed a command: every waiter tries again now, and is
        // woken again when its channel is subscribed anew.
        table.lost();
        tracing::debug!("pub/sub connection lost; reconnecting");
    }
}

/// Keeps the subscriptions in line with the table and forwards messages, until the connection
/// fails.
async fn serve(
    table: &Table,
    sink: &mut redis::aio::PubSubSink,
    stream: &mut redis::aio::PubSubStream,
) {
    loop {
        let (subscribe, unsubscribe) = table.plan();
        if !unsubscribe.is_empty()
            && !matches!(
                tokio::time::timeout(COMMAND_TIMEOUT, sink.unsubscribe(&unsubscribe)).await,
                Ok(Ok(()))
            )
        {
            return;
        }
        if !subscribe.is_empty() {
            if !matches!(
                tokio::time::timeout(COMMAND_TIMEOUT, sink.subscribe(&subscribe)).await,
                Ok(Ok(()))
            ) {
                return;
            }
            table.confirmed(&subscribe);
        }
        let next = poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx));
        let message = tokio::select! {
            message = next => message,
            () = table.changed() => continue,
        };
        let Some(message) = message else {
            return;
        };
        let next: String = message.get_payload().unwrap_or_default();
        table.wake(message.get_channel_name(), &next);
    }
}

/// Something that delivers release notifications for channels: a server's [`Notifier`], or a
/// cluster's sharded one.
pub(crate) trait Watcher: Send + Sync {
    fn watch(&self, channel: &str, waiter: &Arc<Notify>, ticket: Option<&str>) -> Interest;

    /// Stops the driver and waits until it has ended (see [`stop`]).
    fn stop(&self) -> BoxFuture<'_, ()>;
}

impl Watcher for Notifier {
    /// Registers `waiter` for releases published on `channel`. Never waits: the driver
    /// (started here on the first wait, or again if it ended) subscribes in the background and
    /// wakes `waiter` once the subscription is confirmed.
    fn watch(&self, channel: &str, waiter: &Arc<Notify>, ticket: Option<&str>) -> Interest {
        let interest = self.table.register(channel, waiter, ticket);
        let (dial, table) = (&self.dial, &self.table);
        ensure_running(&self.driver, || drive(dial.clone(), Arc::clone(table)));
        interest
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(stop(&self.driver))
    }
}

/// The [`Wake`] of the Redis deployments: one server's notifier, a cluster's, or every
/// Redlock instance's (a waiter is woken by whichever instance publishes first, so losing one
/// costs nothing).
pub(crate) struct PubSub(Vec<Arc<dyn Watcher>>);

impl PubSub {
    pub(crate) fn new(watcher: Arc<dyn Watcher>) -> Self {
        Self(vec![watcher])
    }

    /// Every instance's notifications together.
    pub(crate) fn all(parts: impl IntoIterator<Item = PubSub>) -> Self {
        Self(parts.into_iter().flat_map(|p| p.0).collect())
    }
}

impl Wake for PubSub {
    fn watch<'a>(&'a self, keys: &'a LockKeys, ticket: Option<&'a str>) -> BoxFuture<'a, Watch> {
        let waiter = Arc::new(Notify::new());
        let interests = self
            .0
            .iter()
            .map(|watcher| watcher.watch(&keys.lock, &waiter, ticket))
            .collect();
        let watch = Watch::new(waiter, interests);
        Box::pin(async move { watch })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            for watcher in &self.0 {
                watcher.stop().await;
            }
        })
    }
}
