//! One client connection to one simulated server, with the network's faults on each command.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::faults::{Faults, Rng, RESPONSE_TIMEOUT};
use super::server::{Op, Reply, SimServer};
use crate::backend::{Answer, BoxFuture, Command, Node};
use crate::locked;
use crate::LockError;

/// One client connection to one simulated server: FIFO while it lives, with faults.
pub(super) struct SimConn {
    pub(super) server: Arc<SimServer>,
    pub(super) rng: Arc<Mutex<Rng>>,
    pub(super) faults: Faults,
    pub(super) conn: Mutex<ConnState>,
    /// The manager's waiters woken by a release message, per lock key, and when (W1).
    pub(super) woken: Woken,
}

/// A manager's commands on each lock key, for W1: a waiter woken by a release message while
/// none of its commands on the lock is in flight must send one at once.
#[derive(Default)]
pub(super) struct Commands {
    /// Per lock key: how many commands are in flight.
    pub(super) in_flight: HashMap<String, usize>,
    /// Per lock key: when a message woke a waiter with nothing in flight, if it has sent
    /// nothing since.
    pub(super) woken: HashMap<String, Instant>,
}

pub(super) type Woken = Arc<Mutex<Commands>>;

/// One command in flight on a lock key (until its reply, its timeout, or its drop).
pub(super) struct InFlight {
    pub(super) woken: Woken,
    pub(super) key: String,
}

impl InFlight {
    pub(super) fn new(woken: &Woken, key: &str) -> Self {
        let mut commands = locked(woken);
        commands.woken.remove(key);
        *commands.in_flight.entry(key.to_owned()).or_default() += 1;
        Self {
            woken: Arc::clone(woken),
            key: key.to_owned(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut commands = locked(&self.woken);
        if let Some(n) = commands.in_flight.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                commands.in_flight.remove(&self.key);
            }
        }
    }
}

pub(super) struct ConnState {
    /// Bumped when this connection is cut; replies of an older epoch never arrive.
    pub(super) epoch: u64,
    pub(super) generation: u64,
    pub(super) last_apply: Instant,
    pub(super) last_reply: Instant,
}

pub(super) fn io_error(kind: std::io::ErrorKind, what: &str) -> LockError {
    LockError::Redis(redis::RedisError::from(std::io::Error::new(
        kind,
        what.to_owned(),
    )))
}

/// What the network does to one command.
pub(super) enum Fate {
    Normal,
    LostReply,
    Cut {
        land_after: Option<Duration>,
    },
    /// Applied, its reply lost, and re-sent by the client: the reply is the second copy's.
    /// With `first_late`, the first copy was stuck on a connection the client gave up, and
    /// lands that long after it was sent: after later commands of the same client.
    Resent {
        again_after: Duration,
        first_late: Option<Duration>,
    },
}

impl SimConn {
    pub(super) fn new(
        server: Arc<SimServer>,
        rng: Arc<Mutex<Rng>>,
        faults: Faults,
        woken: Woken,
    ) -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Self {
            server,
            rng,
            faults,
            woken,
            conn: Mutex::new(ConnState {
                epoch: 0,
                generation: 0,
                last_apply: now,
                last_reply: now,
            }),
        })
    }

    pub(super) fn call(&self, op: Op) -> BoxFuture<'_, crate::Result<Reply>> {
        let now = Instant::now();
        let in_flight = InFlight::new(&self.woken, &op.keys().lock);
        let server_generation = {
            let st = locked(&self.server.state);
            if st.down_until.is_some_and(|d| d > now) {
                // A client that re-sends by itself cannot know a refusal came first: its errors
                // never prove nothing was sent, and it cleans up after every one.
                let resends = self.faults.duplicate > 0;
                if let (Command::Acquire { token, .. }, false) = (&op, resends) {
                    locked(&self.server.truth).refused.insert(token.to_string());
                }
                return Box::pin(async move {
                    drop(in_flight);
                    Err(io_error(std::io::ErrorKind::ConnectionRefused, "refused"))
                });
            }
            st.generation
        };
        let f = self.faults;
        let (fate, d_req, d_rep) = {
            let mut rng = locked(&self.rng);
            let roll = rng.below(100);
            let fate = if roll < f.cut {
                Fate::Cut {
                    land_after: rng.chance(50).then(|| rng.ms(0, f.max_late_ms)),
                }
            } else if roll < f.cut + f.lost_reply {
                Fate::LostReply
            } else if roll < f.cut + f.lost_reply + f.duplicate {
                Fate::Resent {
                    again_after: rng.ms(1, f.max_delay_ms + 1),
                    first_late: rng.chance(50).then(|| rng.ms(0, f.max_late_ms)),
                }
            } else {
                Fate::Normal
            };
            (fate, rng.ms(0, f.max_delay_ms), rng.ms(0, f.max_delay_ms))
        };
        if let Command::Acquire { token, .. } = &op {
            locked(&self.server.truth).sent.insert(token.to_string());
        }
        let op = Arc::new(op);
        let mut conn = locked(&self.conn);
        if conn.generation != server_generation {
            // The server restarted since this connection last spoke: reconnect.
            conn.generation = server_generation;
            conn.epoch += 1;
            conn.last_apply = now;
            conn.last_reply = now;
        }
        if let Fate::Cut { land_after } = fate {
            conn.epoch += 1;
            conn.last_apply = now;
            conn.last_reply = now;
            drop(conn);
            if let Some(late) = land_after {
                self.server.enqueue(now + late, op, None);
            }
            return Box::pin(async move {
                let _in_flight = in_flight;
                tokio::time::sleep(d_req).await;
                Err(io_error(
                    std::io::ErrorKind::ConnectionReset,
                    "connection reset",
                ))
            });
        }
        let apply_at = (now + d_req).max(conn.last_apply);
        conn.last_apply = apply_at;
        let reply_at = (apply_at + d_rep).max(conn.last_reply);
        conn.last_reply = reply_at;
        let epoch = conn.epoch;
        drop(conn);
        let (tx, rx) = oneshot::channel();
        let (apply_at, reply_at) = match fate {
            Fate::Resent {
                again_after,
                first_late,
            } => {
                let first_at = first_late.map_or(apply_at, |late| now + late);
                self.server.enqueue(first_at, Arc::clone(&op), None);
                (apply_at + again_after, reply_at + again_after)
            }
            _ => (apply_at, reply_at),
        };
        self.server.enqueue(apply_at, Arc::clone(&op), Some(tx));
        let lost = matches!(fate, Fate::LostReply);
        Box::pin(async move {
            let _in_flight = in_flight;
            let answer = async {
                let reply = rx.await;
                tokio::time::sleep_until(reply_at).await;
                if lost {
                    std::future::pending::<()>().await;
                }
                match reply {
                    Ok(reply) if locked(&self.conn).epoch == epoch => Ok(reply),
                    _ => Err(io_error(
                        std::io::ErrorKind::ConnectionReset,
                        "connection reset",
                    )),
                }
            };
            tokio::time::timeout(RESPONSE_TIMEOUT, answer)
                .await
                .unwrap_or_else(|_| {
                    Err(io_error(std::io::ErrorKind::TimedOut, "response timed out"))
                })
        })
    }
}

impl Node for SimConn {
    fn run<'a>(&'a self, command: &'a Command<'a>) -> BoxFuture<'a, crate::Result<Answer>> {
        let call = self.call(command.clone().into_owned());
        Box::pin(async move { call.await?.map_err(LockError::Redis) })
    }
}
