//! One client's pub/sub link to one simulated server, faulted like its commands.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::conn::Woken;
use super::faults::{Faults, Rng};
use super::server::SimServer;
use crate::backend::notify::{self, Interest, Table, Watcher};
use crate::backend::BoxFuture;
use crate::locked;

/// One client's pub/sub link to one server, faulted like its commands: each message lost,
/// delayed or delivered twice; the connection broken (the driver learns at once) or silent
/// (nothing arrives, and the driver learns only when a command it sends times out). It
/// keeps the real interest [`Table`] the way the pub/sub driver does (`plan`, `confirmed`,
/// `lost`, `wake`, see notify.rs): only the socket is simulated.
pub(super) struct SimLink {
    pub(super) link: Arc<Link>,
    pub(super) driver: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Watcher for SimLink {
    fn watch(&self, channel: &str, waiter: &Arc<Notify>, ticket: Option<&str>) -> Interest {
        let interest = self.link.table.register(channel, waiter, ticket);
        notify::ensure_running(&self.driver, || Arc::clone(&self.link).drive());
        interest
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(notify::stop(&self.driver))
    }
}

/// A link's side of the network, which its driver task runs with.
pub(super) struct Link {
    pub(super) server: Arc<SimServer>,
    pub(super) table: Arc<Table>,
    pub(super) rng: Arc<Mutex<Rng>>,
    pub(super) faults: Faults,
    pub(super) woken: Woken,
    /// One server: W1 is checked (a Redlock waiter pauses without listening after a split
    /// vote).
    pub(super) strict: bool,
}

impl Link {
    pub(super) fn draw<T>(&self, f: impl FnOnce(&mut Rng) -> T) -> T {
        f(&mut locked(&self.rng))
    }

    /// The driver's loop: connect, keep the subscriptions in line with the table, forward
    /// messages, and start over when the connection breaks or is given up.
    pub(super) async fn drive(self: Arc<Self>) {
        let mut pause = notify::RECONNECT_MIN;
        loop {
            self.table.lost();
            let rtt = self.draw(|r| r.ms(0, 2 * self.faults.max_delay_ms));
            tokio::time::sleep(rtt).await;
            let down = locked(&self.server.state)
                .down_until
                .is_some_and(|d| d > Instant::now());
            if down {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(notify::RECONNECT_MAX);
                continue;
            }
            pause = notify::RECONNECT_MIN;
            let (lives, silent) = self.draw(|r| (r.ms(20, 3000), r.chance(50)));
            let mut tap = self.server.model.tap();
            let mut subscribed = self.serve(&mut tap, rtt, Instant::now() + lives).await;
            if silent {
                // Nothing arrives any more; the driver notices when its next SUBSCRIBE or
                // UNSUBSCRIBE goes unanswered for COMMAND_TIMEOUT (no change, no command).
                loop {
                    let (subscribe, unsubscribe) = self.table.plan();
                    for channel in &unsubscribe {
                        subscribed.remove(channel);
                    }
                    if !subscribe.is_empty() || !unsubscribe.is_empty() {
                        break;
                    }
                    self.table.changed().await;
                }
                tokio::time::sleep(notify::COMMAND_TIMEOUT).await;
            }
            // W4: the waiters of what was subscribed try again (a release may have gone
            // unheard), as `table.lost()` at the top of the loop wakes them.
            for channel in &subscribed {
                self.expect_attempt(channel, "", "the link was given up");
            }
        }
    }

    /// One connection, until `ends`: as notify.rs's `serve`.
    pub(super) async fn serve(
        &self,
        tap: &mut tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
        rtt: Duration,
        ends: Instant,
    ) -> HashSet<String> {
        let mut subscribed: HashSet<String> = HashSet::new();
        loop {
            let (subscribe, unsubscribe) = self.table.plan();
            for channel in &unsubscribe {
                subscribed.remove(channel);
            }
            if !subscribe.is_empty() {
                tokio::time::sleep(rtt).await;
                if Instant::now() >= ends {
                    return subscribed;
                }
                subscribed.extend(subscribe.iter().cloned());
                // W4: each confirmation wakes its channel's waiters (a release before it
                // reached nobody).
                for channel in &subscribe {
                    self.expect_attempt(channel, "", "its subscription was confirmed");
                }
                self.table.confirmed(&subscribe);
            }
            tokio::select! {
                message = tap.recv() => {
                    let Some((channel, message)) = message else {
                        return subscribed;
                    };
                    if !subscribed.contains(&channel) {
                        continue;
                    }
                    let (lost, twice, delay) = self.draw(|r| {
                        (r.chance(5), r.chance(5), r.ms(0, self.faults.max_delay_ms))
                    });
                    if lost {
                        continue;
                    }
                    tokio::time::sleep(delay).await;
                    for _ in 0..1 + u8::from(twice) {
                        self.deliver(&channel, &message);
                    }
                }
                () = self.table.changed() => {}
                () = tokio::time::sleep_until(ends) => return subscribed,
            }
        }
    }

    /// A release message arrives: it wakes the waiters that may take the lock (W1).
    pub(super) fn deliver(&self, channel: &str, message: &str) {
        self.expect_attempt(channel, message, "a release");
        self.table.wake(channel, message);
    }

    /// The table is about to wake the waiters of `channel` that `message` concerns. Each such
    /// waiter of this manager with none of its commands on the lock in flight (it sleeps until
    /// a wake-up or its poll) must send one at once.
    pub(super) fn expect_attempt(&self, channel: &str, message: &str, why: &'static str) {
        let idle = !locked(&self.woken).in_flight.contains_key(channel);
        if !(self.strict && idle && self.table.wakes(channel, message)) {
            return;
        }
        let at = Instant::now();
        locked(&self.woken)
            .woken
            .entry(channel.to_owned())
            .or_insert(at);
        let (woken, table, truth) = (
            Arc::clone(&self.woken),
            Arc::clone(&self.table),
            Arc::clone(&self.server.truth),
        );
        let (channel, message) = (channel.to_owned(), message.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(W1_BOUND).await;
            let still = locked(&woken).woken.get(&channel) == Some(&at);
            if still && table.wakes(&channel, &message) {
                locked(&truth).violation(format!(
                    "W1/W4: a waiter on `{channel}` woken ({why}) with nothing in flight sent nothing in {W1_BOUND:?}"
                ));
            }
        });
    }
}

/// How soon a woken, idle waiter sends its attempt: at once, in the same instant of the
/// paused clock; a timer's millisecond of slack.
pub(super) const W1_BOUND: Duration = Duration::from_millis(2);
