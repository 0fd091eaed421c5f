//! Sharded release notifications on a Redis Cluster of Redis 7 or later: the release script
//! `SPUBLISH`es on the lock key's own name, which reaches only the shard that owns the key's
//! slot (classic `PUBLISH` is copied to every node of the cluster), and waiters `SSUBSCRIBE`
//! there.
//!
//! Like the classic [`Notifier`](super::notify::Notifier), one driver task owns the
//! subscriptions and keeps them in line with the waiters' table (W1-W4 in notify.rs). Its
//! connection is a cluster connection of its own, on RESP3: the cluster client routes each
//! `SSUBSCRIBE` to the slot's node and subscribes again after a reconnect; when a slot moves,
//! the server drops its shard channels (an `sunsubscribe` push) and the driver subscribes them
//! anew, on the slot's new node. Messages and confirmations come back as pushes.

use std::sync::{Arc, Mutex};

use redis::cluster::ClusterClientBuilder;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::notify::{
    ensure_running, stop, Interest, Table, Watcher, COMMAND_TIMEOUT, RECONNECT_MAX, RECONNECT_MIN,
};
use super::{BoxFuture, Timeouts};
use crate::locked;

pub(crate) struct ShardedNotifier {
    seeds: Vec<String>,
    timeouts: Timeouts,
    table: Arc<Table>,
    driver: Mutex<Option<JoinHandle<()>>>,
}

impl ShardedNotifier {
    pub(crate) fn new(seeds: Vec<String>, timeouts: Timeouts) -> Self {
        Self {
            seeds,
            timeouts,
            table: Arc::default(),
            driver: Mutex::new(None),
        }
    }
}

impl Watcher for ShardedNotifier {
    fn watch(&self, channel: &str, waiter: &Arc<Notify>, ticket: Option<&str>) -> Interest {
        let interest = self.table.register(channel, waiter, ticket);
        ensure_running(&self.driver, || {
            drive(self.seeds.clone(), self.timeouts, Arc::clone(&self.table))
        });
        interest
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(stop(&self.driver))
    }
}

impl Drop for ShardedNotifier {
    fn drop(&mut self) {
        if let Some(driver) = locked(&self.driver).take() {
            driver.abort();
        }
    }
}

async fn drive(seeds: Vec<String>, timeouts: Timeouts, table: Arc<Table>) {
    let mut pause = RECONNECT_MIN;
    loop {
        table.lost();
        let (pushes, received) = unbounded_channel();
        let client = ClusterClientBuilder::new(seeds.iter().map(String::as_str))
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(pushes)
            .connection_timeout(timeouts.connect)
            .response_timeout(timeouts.response)
            .build();
        // The client connects to the seeds in parallel, each within the connect timeout, and
        // starts with those that answered: a hung node must be given up on by the client
        // first, or the driver could never connect (and no waiter on any shard be notified)
        // while one node hangs.
        let connected = match client {
            Ok(client) => {
                let within = timeouts.connect * 2 + COMMAND_TIMEOUT;
                tokio::time::timeout(within, client.get_async_connection()).await
            }
            Err(e) => {
                tracing::warn!(error = %e, "sharded notifications unavailable; waiters poll");
                return;
            }
        };
        let Ok(Ok(mut conn)) = connected else {
            tracing::debug!("no cluster connection for notifications; waiters poll");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RECONNECT_MAX);
            continue;
        };
        pause = RECONNECT_MIN;
        serve(&table, &mut conn, received).await;
        tracing::debug!("sharded notifications lost; reconnecting");
    }
}

/// Keeps the shard subscriptions in line with the table and forwards pushes, until a command
/// fails or the connection ends.
async fn serve(
    table: &Table,
    conn: &mut redis::cluster_async::ClusterConnection,
    mut received: UnboundedReceiver<PushInfo>,
) {
    loop {
        let (subscribe, unsubscribe) = table.plan();
        // One channel per command: shard channels of different slots live on different nodes.
        for channel in &unsubscribe {
            if !matches!(
                tokio::time::timeout(COMMAND_TIMEOUT, conn.sunsubscribe(channel)).await,
                Ok(Ok(()))
            ) {
                return;
            }
        }
        for channel in subscribe {
            if !matches!(
                tokio::time::timeout(COMMAND_TIMEOUT, conn.ssubscribe(&channel)).await,
                Ok(Ok(()))
            ) {
                return;
            }
            table.confirmed(&[channel]);
        }
        let push = tokio::select! {
            push = received.recv() => push,
            () = table.changed() => continue,
        };
        let Some(push) = push else {
            return;
        };
        match push.kind {
            // A message (naming the first fair waiter in line, or empty), or a subscription
            // made again after a reconnect (everyone tries again): try again now.
            PushKind::SMessage | PushKind::SSubscribe => {
                if let Some(Value::BulkString(channel)) = push.data.first() {
                    if let Ok(channel) = std::str::from_utf8(channel) {
                        let next = match (push.kind, push.data.get(1)) {
                            (PushKind::SMessage, Some(Value::BulkString(next))) => {
                                std::str::from_utf8(next).unwrap_or("")
                            }
                            _ => "",
                        };
                        table.wake(channel, next);
                    }
                }
            }
            // The server dropped it (its slot moved to another shard; redis-rs does not follow
            // that): subscribe it again. Our own SUNSUBSCRIBE's confirmation finds no entry.
            PushKind::SUnsubscribe => {
                if let Some(Value::BulkString(channel)) = push.data.first() {
                    if let Ok(channel) = std::str::from_utf8(channel) {
                        table.dropped(channel);
                    }
                }
            }
            // A node's connection closed: the client subscribes again; meanwhile, retry.
            PushKind::Disconnection => table.wake_all(),
            _ => {}
        }
    }
}

/// Whether every primary of the cluster takes `SSUBSCRIBE`/`SPUBLISH` (Redis 7 or later).
///
/// Every primary is asked, and the oldest decides: a release script that `SPUBLISH`es on a
/// Redis 6 primary (a cluster in the middle of a rolling upgrade) would fail. A primary that
/// does not answer is asked again, a few times; if some primary's version stays unknown, the
/// classic `PUBLISH`, which every version takes, is used.
pub(crate) async fn supported(conn: &mut redis::cluster_async::ClusterConnection) -> bool {
    const TRIES: u32 = 3;
    for attempt in 1..=TRIES {
        match oldest_primary(conn).await {
            Some(major) => return major >= 7,
            None if attempt < TRIES => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            None => {}
        }
    }
    tracing::warn!(
        "could not read the Redis version of every cluster primary; release notifications use \
         PUBLISH, which reaches every node"
    );
    false
}

/// The lowest major version among the cluster's primaries, if each of them told it.
async fn oldest_primary(conn: &mut redis::cluster_async::ClusterConnection) -> Option<u32> {
    use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
    let mut info = redis::cmd("INFO");
    info.arg("server");
    // No response policy: one answer per primary, keyed by its address.
    let reply = conn
        .route_command(
            info,
            RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
        )
        .await
        .ok()?;
    let Value::Map(answers) = reply else {
        return None;
    };
    let mut oldest: Option<u32> = None;
    for (_address, answer) in answers {
        let info: String = redis::from_redis_value(answer).ok()?;
        let major = major_version(&info)?;
        oldest = Some(oldest.map_or(major, |o| o.min(major)));
    }
    oldest
}

/// The major version in an `INFO server` reply.
fn major_version(info: &str) -> Option<u32> {
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .and_then(|v| v.trim().split('.').next()?.parse().ok())
}
