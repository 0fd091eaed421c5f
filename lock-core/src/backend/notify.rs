//! Release notifications for waiters on the Redis backend.
//!
//! A waiter subscribes to the channel named like the lock key (one dedicated pub/sub connection
//! per manager, opened on the first wait, never on the uncontended path), then makes every
//! further attempt with acquire.lua, which marks the holder's key. The release script `PUBLISH`es
//! on that channel when it deletes a marked key, so the waiter is woken by the release itself
//! instead of polling, and a release nobody waits for publishes nothing.
//!
//! A waiter enables its `Notified` before every attempt, and its first marking attempt comes
//! after its subscription is confirmed. A release that Redis ran before that attempt leaves the
//! lock free for it; one that ran after it finds the mark, and its message goes to the
//! subscribed channel and reaches the enabled `Notified`.
//!
//! If the pub/sub connection breaks, every waiter is woken to try again, and waiters fall back
//! to polling (capped, and never later than the holder's lease end) until the next wait opens a
//! new connection.

use std::collections::HashMap;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_core::Stream;
use redis::aio::PubSubSink;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::{BoxFuture, Wake, Watch};
use crate::keys::LockKeys;

/// How long opening the pub/sub connection or a subscription may take before the waiter gives
/// up on notifications and polls.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(1);

struct Channel {
    /// Waiters registered on this channel right now.
    interested: usize,
    notify: Arc<Notify>,
    /// Confirmed subscribed on the current connection.
    subscribed: bool,
}

type Channels = Arc<Mutex<HashMap<String, Channel>>>;

fn lock(channels: &Channels) -> MutexGuard<'_, HashMap<String, Channel>> {
    crate::locked(channels)
}

/// The pub/sub connection and the task that reads it.
struct Link {
    sink: PubSubSink,
    alive: Arc<AtomicBool>,
    reader: JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

pub(crate) struct Notifier {
    client: redis::Client,
    /// Held while subscribing or unsubscribing, so those commands reach Redis in the order in
    /// which the table below was changed.
    link: tokio::sync::Mutex<Option<Link>>,
    channels: Channels,
}

/// A waiter's registration on one channel; dropping it may unsubscribe.
pub(crate) struct Interest {
    notifier: Arc<Notifier>,
    channel: String,
    notify: Arc<Notify>,
}

impl Interest {
    pub(crate) fn notify(&self) -> &Arc<Notify> {
        &self.notify
    }
}

impl Notifier {
    pub(crate) fn new(client: redis::Client) -> Self {
        Self {
            client,
            link: tokio::sync::Mutex::new(None),
            channels: Arc::default(),
        }
    }

    /// Registers interest in releases published on `channel` and makes sure the channel is
    /// subscribed. When Redis cannot be subscribed to, the interest still works: it is woken
    /// only by connection loss, and the waiter polls.
    pub(crate) async fn watch(self: &Arc<Self>, channel: &str) -> Interest {
        let mut link = self.link.lock().await;
        let (notify, subscribed) = {
            let mut channels = lock(&self.channels);
            let entry = channels
                .entry(channel.to_owned())
                .or_insert_with(|| Channel {
                    interested: 0,
                    notify: Arc::new(Notify::new()),
                    subscribed: false,
                });
            entry.interested += 1;
            (Arc::clone(&entry.notify), entry.subscribed)
        };
        let interest = Interest {
            notifier: Arc::clone(self),
            channel: channel.to_owned(),
            notify,
        };
        if link
            .as_ref()
            .is_some_and(|l| !l.alive.load(Ordering::Acquire))
        {
            *link = None;
        }
        if link.is_none() {
            match tokio::time::timeout(SUBSCRIBE_TIMEOUT, self.connect()).await {
                Ok(Ok(new)) => *link = Some(new),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "no pub/sub connection; waiters poll");
                    return interest;
                }
                Err(_) => {
                    tracing::debug!("pub/sub connection timed out; waiters poll");
                    return interest;
                }
            }
        }
        let Some(active) = link.as_mut() else {
            return interest;
        };
        if !subscribed {
            match tokio::time::timeout(SUBSCRIBE_TIMEOUT, active.sink.subscribe(channel)).await {
                Ok(Ok(())) => {
                    if let Some(entry) = lock(&self.channels).get_mut(channel) {
                        entry.subscribed = true;
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "subscribe failed; waiters poll");
                    *link = None;
                }
                Err(_) => {
                    tracing::debug!("subscribe timed out; waiters poll");
                    *link = None;
                }
            }
        }
        interest
    }

    /// Opens the pub/sub connection and starts its reader. Every channel counts as not
    /// subscribed on it yet.
    async fn connect(&self) -> redis::RedisResult<Link> {
        let (sink, mut stream) = self.client.get_async_pubsub().await?.split();
        for entry in lock(&self.channels).values_mut() {
            entry.subscribed = false;
        }
        let alive = Arc::new(AtomicBool::new(true));
        let reader = tokio::spawn({
            let channels = Arc::clone(&self.channels);
            let alive = Arc::clone(&alive);
            async move {
                while let Some(msg) = poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)).await {
                    if let Some(entry) = lock(&channels).get(msg.get_channel_name()) {
                        entry.notify.notify_waiters();
                    }
                }
                // The connection is gone: wake everyone so they try again (and re-subscribe).
                alive.store(false, Ordering::Release);
                for entry in lock(&channels).values_mut() {
                    entry.subscribed = false;
                    entry.notify.notify_waiters();
                }
                tracing::debug!("pub/sub connection closed");
            }
        });
        Ok(Link {
            sink,
            alive,
            reader,
        })
    }

    /// Unsubscribes from `channel` if nobody registered on it since its last waiter left.
    async fn forget(&self, channel: String) {
        let mut link = self.link.lock().await;
        let was_subscribed = {
            let mut channels = lock(&self.channels);
            match channels.get(&channel) {
                Some(entry) if entry.interested == 0 => {
                    channels.remove(&channel).is_some_and(|e| e.subscribed)
                }
                _ => return,
            }
        };
        if let (true, Some(active)) = (was_subscribed, link.as_mut()) {
            if tokio::time::timeout(SUBSCRIBE_TIMEOUT, active.sink.unsubscribe(&channel))
                .await
                .map_or(true, |r| r.is_err())
            {
                // Its state is unknown now; start over on the next wait.
                *link = None;
            }
        }
    }
}

impl Drop for Interest {
    fn drop(&mut self) {
        let last = {
            let mut channels = lock(&self.notifier.channels);
            match channels.get_mut(&self.channel) {
                Some(entry) => {
                    entry.interested -= 1;
                    entry.interested == 0
                }
                None => false,
            }
        };
        if last {
            // Outside a runtime the entry stays, unused, until the next wait on it.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let notifier = Arc::clone(&self.notifier);
                let channel = std::mem::take(&mut self.channel);
                drop(handle.spawn(async move { notifier.forget(channel).await }));
            }
        }
    }
}

/// The [`Wake`] of the Redis deployments: a manager's one pub/sub connection.
pub(crate) struct PubSub(Arc<Notifier>);

impl PubSub {
    pub(crate) fn new(notifier: Arc<Notifier>) -> Self {
        Self(notifier)
    }
}

impl Wake for PubSub {
    fn watch<'a>(&'a self, keys: &'a LockKeys) -> BoxFuture<'a, Watch> {
        Box::pin(async move {
            let interest = self.0.watch(&keys.lock).await;
            Watch::new(Arc::clone(interest.notify()), Some(interest))
        })
    }
}
