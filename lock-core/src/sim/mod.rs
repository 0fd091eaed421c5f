//! A deterministic fault simulator for the lease model.
//!
//! The real acquire loop, guard, extend, watchdog, release, drop and waiting code runs against
//! simulated servers under paused tokio time. Each server is the in-memory backend's: a Redis
//! keyspace modelled in the process, running the lock's own Lua scripts, driven by the Redis
//! backend's own node code (the command or script it sends a server for each operation), so
//! what is checked is the protocol as Redis runs it, not a model of it. Release messages reach
//! the waiters as they are published. Between each client connection and its server sits a
//! network that a seeded schedule of faults perturbs:
//!
//! - delays of every request and reply (a connection stays FIFO, as a TCP connection is);
//! - a reply lost after the command was applied (the client times out);
//! - a connection cut with a command in flight: the client gets an error at once, and the
//!   command is applied later, after commands sent on the new connection, or never;
//! - a command re-sent by a client that retries by itself (the cluster client): applied twice,
//!   the client hears only the second copy's reply; half the time the first copy was stuck on
//!   a connection the client gave up, and lands late, after later commands of the client;
//! - a refused connection (nothing sent);
//! - the server paused past the ttl (commands wait, keys expire meanwhile);
//! - the server restarted, with or without its data.
//!
//! Some names are locks of `permits(2)` or `permits(3)` on one server, with enough clients
//! to go past them (every client of a name asks for the same permits).
//!
//! After every command the servers apply, every millisecond, and around every client step, it
//! checks the invariants I1-I5 (see the crate docs) against the servers' truth; for permits,
//! I2 reads "at most `n` guards say they hold". A failing seed
//! is printed; `LOCK_SIM_SEED=<seed>` replays it alone, `LOCK_SIM_SEEDS=<n>` runs more.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::backend::memory::ModelServer;
use crate::backend::notify::{self, Interest, PubSub, Table, Watcher};
use crate::backend::redis::RedisNode;
use crate::backend::redlock::Redlock;
use crate::backend::single::Single;
use crate::backend::{BoxFuture, Drift, Node, Store, Taken, Ticket, Wake};
use crate::keys::LockKeys;
use crate::lease::Lease;
use crate::locked;
use crate::shared::{Settings, Shared};
use crate::{LockError, LockGuard, LockManager};

/// splitmix64: small, seedable, good enough to draw faults.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// How often each fault strikes a command, in percent, and how large delays are.
#[derive(Clone, Copy, Debug)]
struct Faults {
    cut: u64,
    lost_reply: u64,
    duplicate: u64,
    max_delay_ms: u64,
    /// How late a command from a cut connection, or a duplicate, may land.
    max_late_ms: u64,
}

const RESPONSE_TIMEOUT: Duration = Duration::from_millis(100);

/// The clients' `max_poll_interval`.
const POLL_CAP: Duration = Duration::from_millis(50);

/// `LOCK_SIM_TRACE=1` prints every command the servers apply.
static TRACE: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| std::env::var_os("LOCK_SIM_TRACE").is_some());

enum Op {
    Acquire {
        keys: LockKeys,
        token: String,
        ttl: Duration,
        mark: bool,
        /// A fair acquisition's ticket and how long it stays in line.
        ticket: Option<(String, Duration)>,
    },
    Leave {
        keys: LockKeys,
        ticket: String,
    },
    Release {
        keys: LockKeys,
        token: String,
        keep: Duration,
    },
    Extend {
        keys: LockKeys,
        token: String,
        ttl: Duration,
    },
    Fence {
        keys: LockKeys,
        token: String,
    },
}

impl Op {
    fn keys(&self) -> &LockKeys {
        match self {
            Op::Acquire { keys, .. }
            | Op::Leave { keys, .. }
            | Op::Release { keys, .. }
            | Op::Extend { keys, .. }
            | Op::Fence { keys, .. } => keys,
        }
    }
}

#[derive(Debug, Clone)]
enum Reply {
    Taken(Taken),
    Yes(bool),
    Fence(Option<u64>),
    /// An error reply from the server (`OOM`).
    Failed(redis::RedisError),
}

struct Queued {
    op: Arc<Op>,
    reply: Option<oneshot::Sender<Reply>>,
    /// The server generation it was sent to; a restart loses what has not landed.
    generation: u64,
}

/// A leased guard the checker watches, with what it needs to judge it.
struct Watched {
    lease: Arc<Lease>,
    /// How many nodes must hold the token (1, or Redlock's majority).
    quorum: usize,
}

/// Everything the checker knows, shared by the servers and the scenario.
#[derive(Default)]
struct Truth {
    violations: Vec<String>,
    watched: Vec<Watched>,
    /// Tokens of acquire attempts refused before being sent, somewhere.
    refused: HashSet<String>,
    /// Tokens of acquire attempts that went out to some server. A cancelled Redlock attempt
    /// cannot know where it got, and gives back everywhere: only an attempt that reached no
    /// server must never be cleaned up after.
    sent: HashSet<String>,
    /// Per server and token, on a world whose clients re-send: an attempt refused there, or
    /// released, from when until when its tomb lives (the attempt's ttl; the lease's rest), so
    /// that no late copy of it may take the lock for nobody meanwhile.
    tombs: HashMap<(usize, String), (Instant, Instant)>,

    /// Per server: the last time it lost its data; leases acquired before are exempt.
    data_lost_at: Vec<Option<Instant>>,
}

impl Truth {
    fn violation(&mut self, what: String) {
        if self.violations.len() < 8 {
            self.violations.push(what);
        }
    }
}

struct ServerState {
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    pending: std::collections::HashMap<u64, Queued>,
    seq: u64,
    generation: u64,
    down_until: Option<Instant>,
    paused_until: Option<Instant>,
    started: Instant,
}

struct SimServer {
    index: usize,
    state: Mutex<ServerState>,
    wake_driver: Notify,
    /// The server: a Redis keyspace modelled in the process, running the lock's scripts. Its
    /// published releases reach the waiters at once.
    model: Arc<ModelServer>,
    /// What applies a command the network delivered: the Redis backend's own code, on the
    /// model (the command, or script, that it sends a server for each operation).
    node: RedisNode,
    truth: Arc<Mutex<Truth>>,
}

impl SimServer {
    /// `resends`: the world's clients re-send by themselves (the cluster client), so the node
    /// sends what it sends a cluster.
    fn new(index: usize, truth: Arc<Mutex<Truth>>, resends: bool) -> Arc<Self> {
        let model = ModelServer::with_clock(1_700_000_000_000_000);
        Arc::new(Self {
            index,
            state: Mutex::new(ServerState {
                queue: BinaryHeap::new(),
                pending: std::collections::HashMap::new(),
                seq: 0,
                generation: 0,
                down_until: None,
                paused_until: None,
                started: Instant::now(),
            }),
            wake_driver: Notify::new(),
            node: RedisNode::in_process(Arc::clone(&model), resends),
            model,
            truth,
        })
    }

    fn enqueue(&self, at: Instant, op: Arc<Op>, reply: Option<oneshot::Sender<Reply>>) {
        let mut st = locked(&self.state);
        st.seq += 1;
        let seq = st.seq;
        let generation = st.generation;
        st.queue.push(Reverse((at, seq)));
        st.pending.insert(
            seq,
            Queued {
                op,
                reply,
                generation,
            },
        );
        drop(st);
        self.wake_driver.notify_one();
    }

    /// Applies queued commands in (time, send order), as the server would.
    async fn drive(self: Arc<Self>, all: Vec<Arc<SimServer>>) {
        loop {
            let next = {
                let mut st = locked(&self.state);
                let now = Instant::now();
                let blocked_until = st.paused_until.filter(|&p| p > now);
                let mut applied = false;
                while blocked_until.is_none() {
                    let Some(&Reverse((at, seq))) = st.queue.peek() else {
                        break;
                    };
                    if at > now {
                        break;
                    }
                    st.queue.pop();
                    let Some(q) = st.pending.remove(&seq) else {
                        continue;
                    };
                    if q.generation != st.generation {
                        continue; // lost with the restart
                    }
                    let reply = self.apply(&q.op);
                    if *TRACE {
                        eprintln!(
                            "{:>6}ms server {} applies {} -> {reply:?}",
                            (now - st.started).as_millis(),
                            self.index,
                            describe(&q.op)
                        );
                    }
                    if let Some(tx) = q.reply {
                        let _ = tx.send(reply);
                    }
                    applied = true;
                }
                drop(st);
                if applied {
                    check(&self.truth, &all);
                }
                let st = locked(&self.state);
                blocked_until.or_else(|| st.queue.peek().map(|Reverse((at, _))| *at))
            };
            match next {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = self.wake_driver.notified() => {}
                    }
                }
                None => self.wake_driver.notified().await,
            }
        }
    }

    fn apply(&self, op: &Op) -> Reply {
        let node = &self.node;
        match op {
            Op::Acquire {
                keys,
                token,
                ttl,
                mark,
                ticket,
            } => {
                let ticket = ticket.as_ref().map(|(id, keep)| Ticket { id, keep: *keep });
                let before = self.lease_of(keys, token);
                // Every client of a name asks for the same permits here: no mismatch, and no
                // error but OOM is expected of a script.
                let what = format!("acquire of `{}` (permits {})", keys.name(), keys.permits);
                let taken = at_once(node.acquire(keys, token, *ttl, *mark, ticket));
                self.answer(&what, taken, |taken| {
                    self.check_tomb(keys, token, *ttl, before.is_some(), &taken);
                    Reply::Taken(taken)
                })
            }
            Op::Leave { keys, ticket } => {
                self.answer("leave", at_once(node.leave(keys, ticket)), |()| {
                    Reply::Yes(true)
                })
            }
            Op::Release { keys, token, keep } => {
                let truth = locked(&self.truth);
                let cleanup_of_unsent =
                    truth.refused.contains(token) && !truth.sent.contains(token);
                drop(truth);
                if cleanup_of_unsent {
                    locked(&self.truth).violation(format!(
                        "I5: a release was sent for token {} whose acquire reached no server (server {})",
                        &token[token.len() - 6..],
                        self.index
                    ));
                }
                let before = self.lease_of(keys, token);
                let released = at_once(node.release(keys, token, *keep));
                self.answer("release", released, |released| {
                    if let (true, Some(until), true) = (released, before, node.resends()) {
                        let key = (self.index, token.clone());
                        locked(&self.truth)
                            .tombs
                            .insert(key, (Instant::now(), until));
                    }
                    Reply::Yes(released)
                })
            }
            Op::Extend { keys, token, ttl } => {
                let extended = at_once(node.extend(keys, token, *ttl));
                self.answer("extend", extended, Reply::Yes)
            }
            Op::Fence { keys, token } => {
                self.answer("fence", at_once(node.fence(keys, token)), Reply::Fence)
            }
        }
    }

    /// On a world whose clients re-send: an attempt refused here leaves its tomb for its ttl,
    /// and a late copy of an attempt refused or released must not take the lock while its tomb
    /// lives (but for a server that lost its data or stepped its clock forward since). `held`:
    /// whether the key held the attempt's token before this copy.
    fn check_tomb(&self, keys: &LockKeys, token: &str, ttl: Duration, held: bool, taken: &Taken) {
        if !self.node.resends() {
            return;
        }
        let now = Instant::now();
        let mut truth = locked(&self.truth);
        let key = (self.index, token.to_owned());
        match taken {
            Taken::Held(_) if held => truth.violation(format!(
                "I5: attempt {} of `{}` was told `held` by its own key (a re-sent copy set it): the key is left to its ttl",
                &token[token.len() - 6..],
                keys.name()
            )),
            Taken::Held(_) => {
                truth.tombs.insert(key, (now, now + ttl));
            }
            Taken::Granted if !held => {
                let Some(&(since, until)) = truth.tombs.get(&key) else {
                    return;
                };
                let kept = truth.data_lost_at[self.index].is_none_or(|at| at < since);
                // Redis keeps expiries in whole milliseconds: a margin of two.
                if kept && now + Duration::from_millis(2) < until {
                    truth.violation(format!(
                        "I5: a late copy of attempt {} of `{}`, refused or released {:?} before, took the lock for nobody while its tomb should live {:?} more",
                        &token[token.len() - 6..],
                        keys.name(),
                        now - since,
                        until - now
                    ));
                }
            }
            Taken::Granted => {}
        }
    }

    /// The reply to a command: `ok` of its answer; an `OOM` refusal (the server's memory is
    /// full) as the error it is; any other error is one no lock script should give, a
    /// violation.
    fn answer<T>(
        &self,
        what: &str,
        answer: crate::Result<T>,
        ok: impl FnOnce(T) -> Reply,
    ) -> Reply {
        match answer {
            Ok(value) => ok(value),
            Err(LockError::Redis(e)) if e.code() == Some("OOM") => Reply::Failed(e),
            Err(e) => {
                let at = self.index;
                let what = format!("{what} failed on server {at}: {e}");
                locked(&self.truth).violation(what.clone());
                Reply::Failed(std::io::Error::other(what).into())
            }
        }
    }

    /// The lease `token` has on `keys` here, and until when: the key holds it (marked or not),
    /// or, for a lock of permits, its permit's end.
    fn lease_of(&self, keys: &LockKeys, token: &str) -> Option<Instant> {
        if keys.shared() {
            return self
                .model
                .lease_at(&keys.lock, Some(token))
                .map(|(_, ends)| ends);
        }
        let (value, ends) = self.model.lease_at(&keys.lock, None)?;
        (owner(&value) == token).then_some(ends)
    }

    /// A restart: in-flight commands are lost, connections break, clients are refused for
    /// `down`, and without persistence every key is gone.
    fn restart(&self, down: Duration, keep_data: bool) {
        let mut st = locked(&self.state);
        let now = Instant::now();
        st.generation += 1;
        st.queue.clear();
        st.pending.clear();
        st.down_until = Some(now + down);
        if keep_data {
            // Redis keeps no script across a restart: every script meets NOSCRIPT once.
            self.model.flush_scripts();
        } else {
            self.model.flush();
            locked(&self.truth).data_lost_at[self.index] = Some(now);
        }
        drop(st);
        self.wake_driver.notify_one();
    }

    /// The server's wall clock steps by `by_us` (back when negative). A step forward expires
    /// keys early, so the leases taken before it are exempt from I1/I2, as after a loss of
    /// data: a Redis lock promises nothing across it (documented).
    fn step_clock(&self, by_us: i64) {
        self.model.jump(by_us);
        if by_us > 0 {
            locked(&self.truth).data_lost_at[self.index] = Some(Instant::now());
        }
    }

    fn pause(&self, length: Duration) {
        locked(&self.state).paused_until = Some(Instant::now() + length);
        self.wake_driver.notify_one();
    }
}

/// Runs a future of the in-process node, which answers at once (no I/O, no timer).
fn at_once<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => panic!("the in-process server answers at once"),
    }
}

/// The token a lock key's value belongs to: up to a waiter's mark (`*`, then maybe a ticket).
fn owner(value: &str) -> &str {
    value.split('*').next().unwrap_or(value)
}

fn describe(op: &Op) -> String {
    let short = |t: &str| t[t.len() - 6..].to_owned();
    match op {
        Op::Acquire {
            keys,
            token,
            ttl,
            mark,
            ..
        } => {
            format!(
                "acquire {} {} ttl {ttl:?} mark {mark}",
                keys.lock,
                short(token)
            )
        }
        Op::Release { keys, token, keep } => {
            format!("release {} {} keep {keep:?}", keys.lock, short(token))
        }
        Op::Extend { keys, token, ttl } => {
            format!("extend {} {} ttl {ttl:?}", keys.lock, short(token))
        }
        Op::Fence { keys, token } => format!("fence {} {}", keys.lock, short(token)),
        Op::Leave { keys, ticket } => format!("leave {} {}", keys.lock, short(ticket)),
    }
}

/// One client connection to one simulated server: FIFO while it lives, with faults.
struct SimConn {
    server: Arc<SimServer>,
    rng: Arc<Mutex<Rng>>,
    faults: Faults,
    conn: Mutex<ConnState>,
    /// The manager's waiters woken by a release message, per lock key, and when (W1).
    woken: Woken,
}

/// A manager's commands on each lock key, for W1: a waiter woken by a release message while
/// none of its commands on the lock is in flight must send one at once.
#[derive(Default)]
struct Commands {
    /// Per lock key: how many commands are in flight.
    in_flight: HashMap<String, usize>,
    /// Per lock key: when a message woke a waiter with nothing in flight, if it has sent
    /// nothing since.
    woken: HashMap<String, Instant>,
}

type Woken = Arc<Mutex<Commands>>;

/// One command in flight on a lock key (until its reply, its timeout, or its drop).
struct InFlight {
    woken: Woken,
    key: String,
}

impl InFlight {
    fn new(woken: &Woken, key: &str) -> Self {
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

struct ConnState {
    /// Bumped when this connection is cut; replies of an older epoch never arrive.
    epoch: u64,
    generation: u64,
    last_apply: Instant,
    last_reply: Instant,
}

fn io_error(kind: std::io::ErrorKind, what: &str) -> LockError {
    LockError::Redis(redis::RedisError::from(std::io::Error::new(
        kind,
        what.to_owned(),
    )))
}

/// What the network does to one command.
enum Fate {
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
    fn new(
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

    fn call(&self, op: Op) -> BoxFuture<'_, crate::Result<Reply>> {
        let now = Instant::now();
        let in_flight = InFlight::new(&self.woken, &op.keys().lock);
        let server_generation = {
            let st = locked(&self.server.state);
            if st.down_until.is_some_and(|d| d > now) {
                // A client that re-sends by itself cannot know a refusal came first: its errors
                // never prove nothing was sent, and it cleans up after every one.
                let resends = self.faults.duplicate > 0;
                if let (Op::Acquire { token, .. }, false) = (&op, resends) {
                    locked(&self.server.truth).refused.insert(token.clone());
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
        if let Op::Acquire { token, .. } = &op {
            locked(&self.server.truth).sent.insert(token.clone());
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

impl SimConn {
    /// Sends `op` and takes its reply apart with `unpack`.
    fn ask<T: Send + 'static>(
        &self,
        op: Op,
        unpack: fn(Reply) -> Option<T>,
    ) -> BoxFuture<'_, crate::Result<T>> {
        let call = self.call(op);
        Box::pin(async move {
            let reply = call.await?;
            if let Reply::Failed(e) = reply {
                return Err(LockError::Redis(e));
            }
            let shown = format!("{reply:?}");
            Ok(unpack(reply).unwrap_or_else(|| panic!("{shown} answers another command")))
        })
    }
}

impl Node for SimConn {
    fn acquire<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
        ttl: Duration,
        mark: bool,
        ticket: Option<Ticket<'a>>,
    ) -> BoxFuture<'a, crate::Result<Taken>> {
        let (keys, token) = (keys.clone(), token.to_owned());
        let op = Op::Acquire {
            keys,
            token,
            ttl,
            mark,
            ticket: ticket.map(|t| (t.id.to_owned(), t.keep)),
        };
        self.ask(op, |r| match r {
            Reply::Taken(t) => Some(t),
            _ => None,
        })
    }

    fn leave<'a>(
        &'a self,
        keys: &'a LockKeys,
        ticket: &'a str,
    ) -> BoxFuture<'a, crate::Result<()>> {
        let (keys, ticket) = (keys.clone(), ticket.to_owned());
        self.ask(Op::Leave { keys, ticket }, |_| Some(()))
    }

    fn release<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
        keep: Duration,
    ) -> BoxFuture<'a, crate::Result<bool>> {
        let (keys, token) = (keys.clone(), token.to_owned());
        self.ask(Op::Release { keys, token, keep }, yes)
    }

    fn extend<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, crate::Result<bool>> {
        let (keys, token) = (keys.clone(), token.to_owned());
        self.ask(Op::Extend { keys, token, ttl }, yes)
    }

    fn fence<'a>(
        &'a self,
        keys: &'a LockKeys,
        token: &'a str,
    ) -> BoxFuture<'a, crate::Result<Option<u64>>> {
        let (keys, token) = (keys.clone(), token.to_owned());
        self.ask(Op::Fence { keys, token }, |r| match r {
            Reply::Fence(f) => Some(f),
            _ => None,
        })
    }
}

fn yes(reply: Reply) -> Option<bool> {
    match reply {
        Reply::Yes(b) => Some(b),
        _ => None,
    }
}

/// I1 and I2: every guard that says it holds has its token on (a majority of) the servers,
/// expiring no earlier than its local deadline; at most `n` guards of a lock of `permits(n)`
/// say they hold at once (one of a lock).
fn check(truth: &Mutex<Truth>, nodes: &[Arc<SimServer>]) {
    let now = Instant::now();
    let mut truth = locked(truth);
    truth.watched.retain(|w| !w.lease.is_finished());
    let mut problems = Vec::new();
    let mut holding: Vec<(&str, u32, usize)> = Vec::new();
    for (i, w) in truth.watched.iter().enumerate() {
        let lease = &w.lease;
        if lease.is_finished() || lease.is_lost() || lease.remaining().is_zero() {
            continue;
        }
        let deadline = lease.deadline();
        let mut confirmed = 0;
        let mut exempt = 0;
        let mut seen = Vec::new();
        for node in nodes {
            if truth.data_lost_at[node.index].is_some_and(|at| at > lease.acquired) {
                exempt += 1;
                continue;
            }
            let held = match node.lease_of(&lease.keys, &lease.token) {
                Some(ends) => Some((lease.token.as_str(), ends)),
                None => node
                    .model
                    .lease_at(&lease.keys.lock, None)
                    .map(|(_, ends)| ("another", ends)),
            };
            match held {
                Some((token, expires)) => {
                    let ours = token == lease.token;
                    if ours && expires >= deadline {
                        confirmed += 1;
                    }
                    seen.push(format!(
                        "{} token, expires {:?} {} the deadline",
                        if ours { "our" } else { "another" },
                        if expires >= deadline {
                            expires - deadline
                        } else {
                            deadline - expires
                        },
                        if expires >= deadline {
                            "after"
                        } else {
                            "before"
                        }
                    ));
                }
                None => seen.push("no key".to_owned()),
            }
        }
        if exempt > 0 {
            continue; // a server that lost its data promises nothing (documented)
        }
        if confirmed < w.quorum {
            problems.push(format!(
                "I1/I2: guard #{i} on `{}` says it holds for {:?} more, but only {confirmed} of {} servers hold its token until then ({})",
                lease.name,
                lease.remaining(),
                w.quorum,
                seen.join("; ")
            ) + &format!(" token ..{} acquired {:?} ago", &lease.token[lease.token.len() - 6..], now - lease.acquired));
        }
        holding.push((lease.keys.lock.as_str(), lease.keys.permits, i));
    }
    holding.sort();
    for group in holding.chunk_by(|a, b| a.0 == b.0) {
        let permits = group[0].1 as usize;
        if group.len() > permits {
            let who: Vec<String> = group.iter().map(|g| format!("#{}", g.2)).collect();
            problems.push(format!(
                "I2: guards {} all say they hold `{}` (at most {permits} may)",
                who.join(", "),
                group[0].0
            ));
        }
    }
    for p in problems {
        truth.violation(p);
    }
}

/// One client's pub/sub link to one server, faulted like its commands: each message lost,
/// delayed or delivered twice; the connection broken (the driver learns at once) or silent
/// (nothing arrives, and the driver learns only when a command it sends times out). It
/// keeps the real interest [`Table`] the way the pub/sub driver does (`plan`, `confirmed`,
/// `lost`, `wake`, see notify.rs): only the socket is simulated.
struct SimLink {
    link: Arc<Link>,
    driver: Mutex<Option<tokio::task::JoinHandle<()>>>,
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
struct Link {
    server: Arc<SimServer>,
    table: Arc<Table>,
    rng: Arc<Mutex<Rng>>,
    faults: Faults,
    woken: Woken,
    /// One server: W1 is checked (a Redlock waiter pauses without listening after a split
    /// vote).
    strict: bool,
}

impl Link {
    fn draw<T>(&self, f: impl FnOnce(&mut Rng) -> T) -> T {
        f(&mut locked(&self.rng))
    }

    /// The driver's loop: connect, keep the subscriptions in line with the table, forward
    /// messages, and start over when the connection breaks or is given up.
    async fn drive(self: Arc<Self>) {
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
    async fn serve(
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
    fn deliver(&self, channel: &str, message: &str) {
        self.expect_attempt(channel, message, "a release");
        self.table.wake(channel, message);
    }

    /// The table is about to wake the waiters of `channel` that `message` concerns. Each such
    /// waiter of this manager with none of its commands on the lock in flight (it sleeps until
    /// a wake-up or its poll) must send one at once.
    fn expect_attempt(&self, channel: &str, message: &str, why: &'static str) {
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
const W1_BOUND: Duration = Duration::from_millis(2);

/// One seed's world.
struct World {
    truth: Arc<Mutex<Truth>>,
    servers: Vec<Arc<SimServer>>,
    quorum: usize,
    faults: Faults,
    /// The `permits` every client asks for, per name (`job0`, `job1`).
    permits: Vec<u32>,
}

impl World {
    /// A client's manager, and its pub/sub links (one per server).
    fn manager(&self, rng: &Arc<Mutex<Rng>>) -> (LockManager, Vec<Arc<SimLink>>) {
        let woken = Woken::default();
        let conns: Vec<Arc<SimConn>> = self
            .servers
            .iter()
            .map(|s| {
                SimConn::new(
                    Arc::clone(s),
                    Arc::clone(rng),
                    self.faults,
                    Arc::clone(&woken),
                )
            })
            .collect();
        // Release messages reach the waiters through a pub/sub link per server, with its own
        // faults (on Redlock, whichever instance's message arrives first wakes).
        let links: Vec<Arc<SimLink>> = self
            .servers
            .iter()
            .map(|s| {
                Arc::new(SimLink {
                    link: Arc::new(Link {
                        server: Arc::clone(s),
                        table: Arc::default(),
                        rng: Arc::clone(rng),
                        faults: self.faults,
                        woken: Arc::clone(&woken),
                        strict: self.servers.len() == 1,
                    }),
                    driver: Mutex::default(),
                })
            })
            .collect();
        let wake: Box<dyn Wake> = Box::new(PubSub::all(
            links
                .iter()
                .map(|l| PubSub::new(Arc::clone(l) as Arc<dyn Watcher>)),
        ));
        let store: Box<dyn Store> = if conns.len() == 1 {
            Box::new(Single::new(
                Box::new(Arc::clone(&conns[0])),
                "sim",
                Drift::MILLIS,
                self.faults.duplicate > 0,
            ))
        } else {
            Box::new(Redlock::new(
                conns
                    .iter()
                    .map(|c| Box::new(Arc::clone(c)) as Box<dyn Node>)
                    .collect(),
                Drift::REDLOCK,
                RESPONSE_TIMEOUT,
            ))
        };
        let locks = LockManager::from_shared(Shared::new(
            store,
            wake,
            Settings {
                prefix: "sim:".to_owned(),
                poll_cap: POLL_CAP,
                response_timeout: RESPONSE_TIMEOUT,
                holder: "sim".to_owned(),
            },
        ));
        (locks, links)
    }

    /// W3 once a manager shut down: no waiter is left registered on any of its links, and no
    /// link's driver runs.
    fn check_links_closed(&self, links: &[Arc<SimLink>]) {
        for link in links {
            let waiters = link.link.table.waiters();
            let running = locked(&link.driver).is_some();
            if waiters > 0 || running {
                self.violation(format!(
                    "W3: after shutdown, server {}'s link has {waiters} waiter(s) registered, driver running: {running}",
                    link.link.server.index
                ));
            }
        }
    }

    fn watch(&self, guard: &LockGuard) {
        self.watch_lease(guard.lease());
    }

    fn watch_lease(&self, lease: &Arc<Lease>) {
        let mut truth = locked(&self.truth);
        if !truth.watched.iter().any(|w| Arc::ptr_eq(&w.lease, lease)) {
            truth.watched.push(Watched {
                lease: Arc::clone(lease),
                quorum: self.quorum,
            });
        }
    }

    fn violation(&self, what: String) {
        locked(&self.truth).violation(what);
    }

    fn check(&self) {
        check(&self.truth, &self.servers);
    }
}

/// What one client does with a guard it got.
async fn hold(world: &World, guard: LockGuard, rng: &mut Rng, ttl: Duration) {
    let name = guard.name().to_owned();
    // A longer lease at once, as a job that knows it runs long asks for.
    if rng.chance(25) {
        let long = rng.ms(ttl.as_millis() as u64, 3 * ttl.as_millis() as u64);
        let _ = guard.extend(long).await;
        world.check();
    }
    // Overlapping extends with different leases, as a watchdog and a manual extend make.
    if rng.chance(30) {
        let long = rng.ms(ttl.as_millis() as u64, 3 * ttl.as_millis() as u64);
        let short = rng.ms(20, ttl.as_millis() as u64);
        let (a, b) = tokio::join!(guard.extend(long), async {
            tokio::time::sleep(rng.ms(0, 5)).await;
            guard.extend(short).await
        });
        let _ = (a, b);
        world.check();
    }
    if rng.chance(30) {
        match guard.fencing_token().await {
            Ok(_) | Err(LockError::Redis(_) | LockError::NoQuorum { .. }) => {}
            Err(LockError::Lost { .. }) if guard.is_lost() => {}
            // A permit has no fencing token, by design.
            Err(LockError::InvalidConfig { .. }) if guard.lease().keys.shared() => {}
            Err(e) => world.violation(format!("fencing token on `{name}`: {e}")),
        }
    }
    let pause = rng.ms(0, ttl.as_millis() as u64 * 3 / 2);
    let end = Instant::now() + pause;
    if rng.chance(40) {
        // The body of a `#[distributed_lock(on_lost = "abort")]` fn, run as the attribute runs
        // it: steps of 1-20 ms, each a write the lock protects. No step may run once its
        // guard's lease is lost (its local deadline passed, or known lost); I1 and I2 then say
        // the server still held it for this guard alone.
        let steps: Vec<Duration> = (0..pause.as_millis()).map(|_| rng.ms(1, 20)).collect();
        let lease = Arc::clone(guard.lease());
        let body = async {
            for step in steps {
                if Instant::now() >= end {
                    break;
                }
                tokio::time::sleep(step).await;
                if lease.is_lost() {
                    world.violation(format!(
                        "a step of an `on_lost = \"abort\"` body on `{name}` ran after its lease was lost"
                    ));
                }
                world.check();
            }
        };
        let _ = crate::__private::holding(&guard, crate::__private::until_lost(&guard, body)).await;
    } else {
        let step = Duration::from_millis(7);
        while Instant::now() < end {
            tokio::time::sleep(step).await;
            world.check();
        }
    }
    if rng.chance(20) {
        let _ = guard.extend(rng.ms(10, 2 * ttl.as_millis() as u64)).await;
        world.check();
    }
    match rng.below(10) {
        0..=5 => {
            let _ = guard.release().await;
        }
        6..=7 => drop(guard),
        _ => {
            // A release cancelled at some await point.
            let cut = rng.ms(0, 20);
            let _ = tokio::time::timeout(cut, guard.release()).await;
        }
    }
    world.check();
}

/// A client that campaigns for leadership of `job0` (a lock, never permits) for a while: every
/// term it says it leads is watched like a guard (terms never overlap each other, nor another
/// holder's guard, as the servers saw them: I1/I2).
async fn leader_client(world: Arc<World>, seed: u64, id: u64) {
    let mut rng = Rng(seed ^ (id + 1).wrapping_mul(0x9FB2_1C65_1E98_DF25));
    let (locks, links) = world.manager(&Arc::new(Mutex::new(Rng(rng.next()))));
    let leader = locks.leader("job0").ttl(rng.ms(400, 1200)).start();
    let end = Instant::now() + rng.ms(500, 4000);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(7)).await;
        if let Some(term) = leader.term() {
            world.watch_lease(&term);
        }
        world.check();
    }
    if rng.chance(50) {
        let _ = leader.resign().await;
    } else {
        drop(leader);
    }
    world.check();
    tokio::time::sleep(Duration::from_secs(5)).await;
    if let Err(e) = locks.shutdown(Duration::ZERO).await {
        world.violation(format!(
            "I5: background work left 5 s after a leader resigned: {e}"
        ));
    }
    world.check_links_closed(&links);
}

async fn client(world: Arc<World>, seed: u64, id: u64, names: u64) {
    let mut rng = Rng(seed ^ (id + 1).wrapping_mul(0xA24B_AED4_963E_E407));
    let (locks, links) = world.manager(&Arc::new(Mutex::new(Rng(rng.next()))));
    for _ in 0..6 {
        let which = rng.below(names);
        let name = format!("job{which}");
        let permits = world.permits[which as usize];
        let ttl = rng.ms(400, 1200);
        let wait = if rng.chance(30) {
            Duration::ZERO
        } else {
            rng.ms(50, 800)
        };
        let auto_extend = rng.chance(40);
        let fair = world.quorum == 1 && permits == 1 && rng.chance(25);
        let request = locks
            .lock(name.clone())
            .permits(permits)
            .ttl(ttl)
            .wait(wait)
            .auto_extend(auto_extend)
            .fair(fair);
        let started = Instant::now();
        let cancel_after = rng.chance(10).then(|| rng.ms(0, 300));
        let result = match cancel_after {
            Some(after) => match tokio::time::timeout(after, request.acquire()).await {
                Ok(r) => r,
                Err(_) => continue,
            },
            None => request.acquire().await,
        };
        let took = started.elapsed();
        // I4: by the deadline plus one response timeout (timers fire on whole milliseconds).
        if took > wait + RESPONSE_TIMEOUT + Duration::from_millis(2) {
            world.violation(format!(
                "I4: acquire(`{name}`, wait {wait:?}) returned after {took:?}"
            ));
        }
        match result {
            Ok(guard) => {
                world.watch(&guard);
                // I3: born with the lease the server granted.
                let usable = guard.lease().deadline() - guard.lease().acquired;
                if guard.is_lost() || guard.remaining() + RESPONSE_TIMEOUT < usable {
                    world.violation(format!(
                        "I3: a new guard on `{name}` is lost={} with {:?} left of a {usable:?} lease",
                        guard.is_lost(),
                        guard.remaining()
                    ));
                }
                world.check();
                hold(&world, guard, &mut rng, ttl).await;
            }
            Err(_) => tokio::time::sleep(rng.ms(0, 50)).await,
        }
    }
    // I5: whatever it cleans up ends by the key's ttl (plus late landings and retry pauses).
    tokio::time::sleep(Duration::from_secs(5)).await;
    if let Err(e) = locks.shutdown(Duration::ZERO).await {
        world.violation(format!(
            "I5: background work left 5 s after the last lock: {e}"
        ));
    }
    world.check_links_closed(&links);
}

/// Runs one seed; the violations it found, if any.
fn run_seed(seed: u64) -> Vec<String> {
    crate::token::SEEDED_JITTER.set(Some(seed));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let violations = rt.block_on(async move {
        let mut rng = Rng(seed);
        let redlock = rng.chance(25);
        let n = if redlock { 3 } else { 1 };
        let truth = Arc::new(Mutex::new(Truth {
            data_lost_at: vec![None; n],
            ..Truth::default()
        }));
        let faults = Faults {
            cut: rng.below(4),
            lost_reply: rng.below(4),
            // Only a client that re-sends by itself duplicates (the cluster client): one server
            // in three is such a deployment.
            duplicate: if !redlock && rng.chance(33) {
                1 + rng.below(3)
            } else {
                0
            },
            max_delay_ms: rng.below(15),
            max_late_ms: 50 + rng.below(400),
        };
        let resends = faults.duplicate > 0;
        let servers: Vec<Arc<SimServer>> = (0..n)
            .map(|i| SimServer::new(i, Arc::clone(&truth), resends))
            .collect();
        for s in &servers {
            tokio::spawn(Arc::clone(s).drive(servers.clone()));
        }
        let names = 1 + rng.below(2);
        // One server: some names are locks of 2 or 3 permits (Redlock refuses them).
        let permits: Vec<u32> = (0..names)
            .map(|_| {
                if !redlock && rng.chance(40) {
                    2 + rng.below(2) as u32
                } else {
                    1
                }
            })
            .collect();
        // Enough clients to go past the permits if the bound failed.
        let clients = if permits.iter().any(|&n| n > 1) {
            3 + rng.below(2)
        } else {
            2 + rng.below(2)
        };
        let world = Arc::new(World {
            truth: Arc::clone(&truth),
            servers: servers.clone(),
            quorum: n / 2 + 1,
            faults,
            permits,
        });
        // Server-wide faults at seeded moments.
        let chaos = {
            let servers = servers.clone();
            let mut rng = Rng(rng.next());
            tokio::spawn(async move {
                for _ in 0..rng.below(3) {
                    tokio::time::sleep(rng.ms(0, 3000)).await;
                    let s = &servers[rng.below(servers.len() as u64) as usize];
                    match rng.below(7) {
                        0 => s.pause(rng.ms(100, 2000)),
                        // The server's clock steps back (NTP, an operator): keys live longer,
                        // permit ends and fencing tokens are read off an earlier clock.
                        4 => s.step_clock(-(rng.ms(1, 1000).as_micros() as i64)),
                        // Or forward: keys expire early; the leases taken before are exempt,
                        // the rest (I3-I5, later leases) must hold. Redlock promises nothing
                        // to instances that break their word (as with lost data).
                        5 if !redlock => s.step_clock(rng.ms(1, 1000).as_micros() as i64),
                        // An operator's SCRIPT FLUSH: the next EVALSHA meets NOSCRIPT.
                        3 => s.model.flush_scripts(),
                        // The server's memory is full (noeviction) for 0.1-2 s: what may grow
                        // it is refused with OOM, each script whole or not at all.
                        6 => {
                            s.model.set_full(true);
                            let (s, free_after) = (Arc::clone(s), rng.ms(100, 2000));
                            tokio::spawn(async move {
                                tokio::time::sleep(free_after).await;
                                s.model.set_full(false);
                            });
                        }
                        // Redlock promises nothing to a majority that lost its data.
                        1 if !redlock => s.restart(rng.ms(10, 500), false),
                        _ => s.restart(rng.ms(10, 500), true),
                    }
                }
            })
        };

        // One client in five campaigns for leadership of `job0` instead, where it is a lock.
        let leaders = world.permits[0] == 1;
        let tasks: Vec<_> = (0..clients)
            .map(|id| {
                let world = Arc::clone(&world);
                if leaders && rng.chance(20) {
                    tokio::spawn(leader_client(world, seed, id))
                } else {
                    tokio::spawn(client(world, seed, id, names))
                }
            })
            .collect();
        for t in tasks {
            if let Err(e) = t.await {
                world.violation(format!("a client panicked: {e}"));
            }
        }
        chaos.abort();
        // I5 at the end: once every lease could have run out (the longest lease, a late copy
        // and a pause after the last client's last lock), no lock key, permit hash or fair line
        // is left anywhere; only the fencing counters, which outlive their last use a day.
        tokio::time::sleep(Duration::from_secs(6)).await;
        for server in &servers {
            let left: Vec<String> = server
                .model
                .live_keys("sim:")
                .into_iter()
                .filter(|key| !key.ends_with(":fence"))
                .collect();
            if !left.is_empty() {
                world.violation(format!(
                    "I5: left on server {} after every lease ran out: {left:?}",
                    server.index
                ));
            }
        }
        let violations = std::mem::take(&mut locked(&truth).violations);
        violations
    });
    crate::token::SEEDED_JITTER.set(None);
    violations
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Held by the tests that load every core (this simulator) or that a loaded machine disturbs
/// (the model's differential test, whose steps must each take less than its margin): they run
/// one after the other.
pub(crate) fn alone() -> std::sync::MutexGuard<'static, ()> {
    static ALONE: Mutex<()> = Mutex::new(());
    ALONE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn lease_invariants_hold_under_seeded_faults() {
    let _alone = alone();
    let seeds: Vec<u64> = match env_u64("LOCK_SIM_SEED") {
        Some(seed) => vec![seed],
        None => (0..env_u64("LOCK_SIM_SEEDS").unwrap_or(10_000)).collect(),
    };
    // Each seed runs on its own runtime; seeds are spread over the cores.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let failures: Vec<(u64, Vec<String>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let mine: Vec<u64> = seeds.iter().copied().skip(t).step_by(threads).collect();
                scope.spawn(move || {
                    mine.into_iter()
                        .map(|seed| (seed, run_seed(seed)))
                        .find(|(_, v)| !v.is_empty())
                })
            })
            .collect();
        workers
            .into_iter()
            .filter_map(|w| w.join().expect("a simulator thread panicked"))
            .collect()
    });
    if let Some((seed, violations)) = failures.into_iter().min_by_key(|(seed, _)| *seed) {
        panic!(
            "seed {seed} broke the lease model (replay: LOCK_SIM_SEED={seed} cargo test -p lock-core sim):\n  {}",
            violations.join("\n  ")
        );
    }
}
