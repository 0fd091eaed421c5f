//! A simulated server: the in-process Redis model behind a queue of commands that the
//! network delivers, and the checker that watches every guard against it (I1, I2).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::faults::TRACE;
use crate::backend::memory::ModelServer;
use crate::backend::redis::RedisNode;
use crate::backend::{Answer, Command, Node};
use crate::keys::LockKeys;
use crate::lease::Lease;
use crate::locked;
use crate::LockError;

/// A command as the network carries it: the kernel's, owning what it names.
pub(super) type Op = Command<'static>;

/// A server's reply: the command's answer, or an error reply (`OOM`).
pub(super) type Reply = std::result::Result<Answer, redis::RedisError>;

pub(super) struct Queued {
    pub(super) op: Arc<Op>,
    pub(super) reply: Option<oneshot::Sender<Reply>>,
    /// The server generation it was sent to; a restart loses what has not landed.
    pub(super) generation: u64,
}

/// A leased guard the checker watches, with what it needs to judge it.
pub(super) struct Watched {
    pub(super) lease: Arc<Lease>,
    /// How many nodes must hold the token (1, or Redlock's majority).
    pub(super) quorum: usize,
}

/// Everything the checker knows, shared by the servers and the scenario.
#[derive(Default)]
pub(super) struct Truth {
    pub(super) violations: Vec<String>,
    pub(super) watched: Vec<Watched>,
    /// Tokens of acquire attempts refused before being sent, somewhere.
    pub(super) refused: HashSet<String>,
    /// Tokens of acquire attempts that went out to some server. A cancelled Redlock attempt
    /// cannot know where it got, and gives back everywhere: only an attempt that reached no
    /// server must never be cleaned up after.
    pub(super) sent: HashSet<String>,
    /// Per server and token, on a world whose clients re-send: an attempt refused there, or
    /// released, from when until when its tomb lives (the attempt's ttl; the lease's rest), so
    /// that no late copy of it may take the lock for nobody meanwhile.
    pub(super) tombs: HashMap<(usize, String), (Instant, Instant)>,

    /// Per server: the last time it lost its data; leases acquired before are exempt.
    pub(super) data_lost_at: Vec<Option<Instant>>,
}

impl Truth {
    pub(super) fn violation(&mut self, what: String) {
        if self.violations.len() < 8 {
            self.violations.push(what);
        }
    }
}

pub(super) struct ServerState {
    pub(super) queue: BinaryHeap<Reverse<(Instant, u64)>>,
    pub(super) pending: std::collections::HashMap<u64, Queued>,
    pub(super) seq: u64,
    pub(super) generation: u64,
    pub(super) down_until: Option<Instant>,
    pub(super) paused_until: Option<Instant>,
    pub(super) started: Instant,
}

pub(super) struct SimServer {
    pub(super) index: usize,
    pub(super) state: Mutex<ServerState>,
    pub(super) wake_driver: Notify,
    /// The server: a Redis keyspace modelled in the process, running the lock's scripts. Its
    /// published releases reach the waiters at once.
    pub(super) model: Arc<ModelServer>,
    /// What applies a command the network delivered: the Redis backend's own code, on the
    /// model (the command, or script, that it sends a server for each operation).
    pub(super) node: RedisNode,
    pub(super) truth: Arc<Mutex<Truth>>,
}

impl SimServer {
    /// `resends`: the world's clients re-send by themselves (the cluster client), so the node
    /// sends what it sends a cluster. `native`: the server's native compare-and-set commands
    /// (which a node that does not re-send then uses).
    pub(super) fn new(
        index: usize,
        truth: Arc<Mutex<Truth>>,
        resends: bool,
        native: crate::command::Native,
    ) -> Arc<Self> {
        let model = ModelServer::with_clock(1_700_000_000_000_000, native);
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

    pub(super) fn enqueue(&self, at: Instant, op: Arc<Op>, reply: Option<oneshot::Sender<Reply>>) {
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
    pub(super) async fn drive(self: Arc<Self>, all: Vec<Arc<SimServer>>) {
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

    pub(super) fn apply(&self, op: &Op) -> Reply {
        let node = &self.node;
        match op {
            Command::Acquire {
                keys, token, ttl, ..
            } => {
                let before = self.lease_of(keys, token);
                // Every client of a name asks for the same permits here: no mismatch, and no
                // error but OOM is expected of a script.
                let what = format!(
                    "acquire of `{}` (permits {})",
                    keys.name(),
                    keys.kind.permits()
                );
                self.answer(&what, at_once(node.run(op)), |answer| {
                    self.check_tomb(keys, token, *ttl, before.is_some(), answer);
                })
            }
            Command::Release { keys, token, .. } => {
                let truth = locked(&self.truth);
                let cleanup_of_unsent =
                    truth.refused.contains(token.as_ref()) && !truth.sent.contains(token.as_ref());
                drop(truth);
                if cleanup_of_unsent {
                    locked(&self.truth).violation(format!(
                        "I5: a release was sent for token {} whose acquire reached no server (server {})",
                        &token[token.len() - 6..],
                        self.index
                    ));
                }
                let before = self.lease_of(keys, token);
                self.answer("release", at_once(node.run(op)), |answer| {
                    if let (true, Some(until), true) = (answer.applied(), before, node.resends()) {
                        let key = (self.index, token.to_string());
                        locked(&self.truth)
                            .tombs
                            .insert(key, (Instant::now(), until));
                    }
                })
            }
            Command::Leave { .. } => self.answer("leave", at_once(node.run(op)), |_| {}),
            Command::Extend { .. } => self.answer("extend", at_once(node.run(op)), |_| {}),
            Command::Fence { .. } => self.answer("fence", at_once(node.run(op)), |_| {}),
        }
    }

    /// On a world whose clients re-send: an attempt refused here leaves its tomb for its ttl,
    /// and a late copy of an attempt refused or released must not take the lock while its tomb
    /// lives (but for a server that lost its data or stepped its clock forward since). `held`:
    /// whether the key held the attempt's token before this copy.
    pub(super) fn check_tomb(
        &self,
        keys: &LockKeys,
        token: &str,
        ttl: Duration,
        held: bool,
        answer: &Answer,
    ) {
        if !self.node.resends() {
            return;
        }
        let now = Instant::now();
        let mut truth = locked(&self.truth);
        let key = (self.index, token.to_owned());
        match answer.applied() {
            false if held => truth.violation(format!(
                "I5: attempt {} of `{}` was told `held` by its own key (a re-sent copy set it): the key is left to its ttl",
                &token[token.len() - 6..],
                keys.name()
            )),
            false => {
                truth.tombs.insert(key, (now, now + ttl));
            }
            true if !held => {
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
            true => {}
        }
    }

    /// The reply to a command: its answer, once `check` has seen it; an `OOM` refusal (the
    /// server's memory is full) as the error it is; any other error is one no lock script
    /// should give, a violation.
    pub(super) fn answer(
        &self,
        what: &str,
        answer: crate::Result<Answer>,
        check: impl FnOnce(&Answer),
    ) -> Reply {
        match answer {
            Ok(answer) => {
                check(&answer);
                Ok(answer)
            }
            Err(LockError::Redis(e)) if e.code() == Some("OOM") => Err(e),
            Err(e) => {
                let at = self.index;
                let what = format!("{what} failed on server {at}: {e}");
                locked(&self.truth).violation(what.clone());
                Err(std::io::Error::other(what).into())
            }
        }
    }

    /// The lease `token` has on `keys` here, and until when: the key holds it (marked or not),
    /// or, for a lock of permits, its permit's end.
    pub(super) fn lease_of(&self, keys: &LockKeys, token: &str) -> Option<Instant> {
        if keys.kind.counted() {
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
    pub(super) fn restart(&self, down: Duration, keep_data: bool) {
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
    pub(super) fn step_clock(&self, by_us: i64) {
        self.model.jump(by_us);
        if by_us > 0 {
            locked(&self.truth).data_lost_at[self.index] = Some(Instant::now());
        }
    }

    pub(super) fn pause(&self, length: Duration) {
        locked(&self.state).paused_until = Some(Instant::now() + length);
        self.wake_driver.notify_one();
    }
}

/// Runs a future of the in-process node, which answers at once (no I/O, no timer).
pub(super) fn at_once<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => panic!("the in-process server answers at once"),
    }
}

/// The token a lock key's value belongs to: up to a waiter's mark (`*`, then maybe a ticket).
pub(super) fn owner(value: &str) -> &str {
    value.split('*').next().unwrap_or(value)
}

pub(super) fn describe(op: &Op) -> String {
    let short = |t: &str| t[t.len() - 6..].to_owned();
    match op {
        Command::Acquire {
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
        Command::Release {
            keys,
            token,
            keep,
            contended,
        } => {
            format!(
                "release {} {} keep {keep:?} contended {contended}",
                keys.lock,
                short(token)
            )
        }
        Command::Extend { keys, token, ttl } => {
            format!("extend {} {} ttl {ttl:?}", keys.lock, short(token))
        }
        Command::Fence { keys, token } => format!("fence {} {}", keys.lock, short(token)),
        Command::Leave { keys, ticket } => format!("leave {} {}", keys.lock, short(ticket)),
    }
}

/// I1 and I2: every guard that says it holds has its token on (a majority of) the servers,
/// expiring no earlier than its local deadline; at most `n` guards of a lock of `permits(n)`
/// say they hold at once (one of a lock), and a guard of a lock never says so together with a
/// shared hold's (any number of which may hold together).
pub(super) fn check(truth: &Mutex<Truth>, nodes: &[Arc<SimServer>]) {
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
        holding.push((lease.keys.lock.as_str(), lease.keys.kind.permits(), i));
    }
    holding.sort();
    for group in holding.chunk_by(|a, b| a.0 == b.0) {
        // Shared holds (permits 0) sort first: any number of them, but with nothing else.
        let shared = group.iter().filter(|g| g.1 == 0).count();
        let permits = group[group.len() - 1].1 as usize;
        if shared > 0 && shared < group.len() {
            let who: Vec<String> = group.iter().map(|g| format!("#{}", g.2)).collect();
            problems.push(format!(
                "I2: guards {} say they hold `{}`, {shared} of them shared and the others not",
                who.join(", "),
                group[0].0
            ));
        } else if shared == 0 && group.len() > permits {
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
