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
//!   other names;
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
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

/// Pause between connection attempts while the server cannot be reached: doubling up to the
/// maximum.
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Channel {
    /// The waiters on this channel, each with its own `Notify`.
    waiters: HashMap<u64, Arc<Notify>>,
    /// Confirmed subscribed on the current connection.
    subscribed: bool,
}

impl Channel {
    fn wake(&self) {
        for waiter in self.waiters.values() {
            waiter.notify_one();
        }
    }
}

/// What the waiters and the driver share.
#[derive(Default)]
struct Table {
    channels: Mutex<HashMap<String, Channel>>,
    /// Wakes the driver: a channel gained its first waiter or lost its last one.
    poke: Notify,
    next_id: AtomicU64,
}

/// Release notifications from one server: the interest table and its driver task.
pub(crate) struct Notifier {
    client: redis::Client,
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
    pub(crate) fn new(client: redis::Client) -> Self {
        Self {
            client,
            table: Arc::default(),
            driver: Mutex::new(None),
        }
    }

    /// Registers `waiter` for releases published on `channel`. Never waits: the driver
    /// subscribes in the background and wakes `waiter` once the subscription is confirmed.
    pub(crate) fn watch(&self, channel: &str, waiter: &Arc<Notify>) -> Interest {
        let id = self.table.next_id.fetch_add(1, Ordering::Relaxed);
        let first = {
            let mut channels = locked(&self.table.channels);
            let entry = channels.entry(channel.to_owned()).or_default();
            entry.waiters.insert(id, Arc::clone(waiter));
            entry.waiters.len() == 1 && !entry.subscribed
        };
        self.ensure_driver();
        if first {
            self.table.poke.notify_one();
        }
        Interest {
            table: Arc::clone(&self.table),
            channel: channel.to_owned(),
            id,
        }
    }

    /// Starts the driver on the current runtime if it is not running (first wait, or it ended).
    fn ensure_driver(&self) {
        let mut driver = locked(&self.driver);
        if driver.as_ref().is_some_and(|d| !d.is_finished()) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return; // no runtime: the waiter polls
        };
        let (client, table) = (self.client.clone(), Arc::clone(&self.table));
        *driver = Some(handle.spawn(drive(client, table)));
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

/// The driver: owns the pub/sub connection for as long as the manager lives.
async fn drive(client: redis::Client, table: Arc<Table>) {
    let mut pause = RECONNECT_MIN;
    loop {
        // Nothing is subscribed without a connection: entries nobody waits on can go.
        locked(&table.channels).retain(|_, entry| !entry.waiters.is_empty());
        let connected = tokio::time::timeout(COMMAND_TIMEOUT, client.get_async_pubsub()).await;
        let Ok(Ok(pubsub)) = connected else {
            tracing::debug!("no pub/sub connection; waiters poll");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RECONNECT_MAX);
            continue;
        };
        pause = RECONNECT_MIN;
        let (mut sink, mut stream) = pubsub.split();
        serve(&table, &mut sink, &mut stream).await;
        // The connection is gone or failed a command: nothing is subscribed any more. Every
        // waiter tries again now, and is woken again when its channel is subscribed anew.
        let mut channels = locked(&table.channels);
        for entry in channels.values_mut() {
            entry.subscribed = false;
            entry.wake();
        }
        drop(channels);
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
        // What to change: channels with waiters not yet subscribed, and subscribed ones with
        // none left (their entries go now; a waiter that comes back makes a new one).
        let (subscribe, unsubscribe) = {
            let mut channels = locked(&table.channels);
            let subscribe: Vec<String> = channels
                .iter()
                .filter(|(_, e)| !e.subscribed && !e.waiters.is_empty())
                .map(|(name, _)| name.clone())
                .collect();
            let unsubscribe: Vec<String> = channels
                .iter()
                .filter(|(_, e)| e.subscribed && e.waiters.is_empty())
                .map(|(name, _)| name.clone())
                .collect();
            // Entries nobody waits on go now: unsubscribed just below, or never subscribed.
            channels.retain(|_, e| !e.waiters.is_empty());
            (subscribe, unsubscribe)
        };
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
            let mut channels = locked(&table.channels);
            for name in &subscribe {
                if let Some(entry) = channels.get_mut(name) {
                    entry.subscribed = true;
                    // Subscribed now: a release before this moment sent its message to nobody,
                    // so the waiters try again at once.
                    entry.wake();
                }
            }
        }
        let next = poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx));
        let message = tokio::select! {
            message = next => message,
            () = table.poke.notified() => continue,
        };
        let Some(message) = message else {
            return;
        };
        if let Some(entry) = locked(&table.channels).get(message.get_channel_name()) {
            entry.wake();
        }
    }
}

/// The [`Wake`] of the Redis deployments: one server's notifier, or every instance's (Redlock:
/// a waiter is woken by whichever instance publishes first, so losing one costs nothing).
pub(crate) struct PubSub(Vec<Arc<Notifier>>);

impl PubSub {
    pub(crate) fn new(notifier: Arc<Notifier>) -> Self {
        Self(vec![notifier])
    }

    /// Every instance's notifications together.
    pub(crate) fn all(parts: impl IntoIterator<Item = PubSub>) -> Self {
        Self(parts.into_iter().flat_map(|p| p.0).collect())
    }
}

impl Wake for PubSub {
    fn watch<'a>(&'a self, keys: &'a LockKeys) -> BoxFuture<'a, Watch> {
        let waiter = Arc::new(Notify::new());
        let interests = self
            .0
            .iter()
            .map(|notifier| notifier.watch(&keys.lock, &waiter))
            .collect();
        let watch = Watch::new(waiter, interests);
        Box::pin(async move { watch })
    }
}
