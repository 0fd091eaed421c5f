//! One seed's world (servers, clients' managers, the truth) and what its clients do.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::conn::{SimConn, Woken};
use super::faults::{Faults, Rng, POLL_CAP, RESPONSE_TIMEOUT};
use super::link::{Link, SimLink};
use super::server::{check, SimServer, Truth, Watched};
use crate::backend::notify::{PubSub, Watcher};
use crate::backend::redlock::Redlock;
use crate::backend::single::Single;
use crate::backend::{Drift, Node, Store, Wake};
use crate::lease::Lease;
use crate::locked;
use crate::shared::{Settings, Shared};
use crate::{LockError, LockGuard, LockManager};

/// One seed's world.
pub(super) struct World {
    pub(super) truth: Arc<Mutex<Truth>>,
    pub(super) servers: Vec<Arc<SimServer>>,
    pub(super) quorum: usize,
    pub(super) faults: Faults,
    /// The `permits` every client asks for, per name (`job0`, `job1`).
    pub(super) permits: Vec<u32>,
}

impl World {
    /// A client's manager, and its pub/sub links (one per server).
    pub(super) fn manager(&self, rng: &Arc<Mutex<Rng>>) -> (LockManager, Vec<Arc<SimLink>>) {
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
                label_limit: crate::manager::DEFAULT_METRICS_LABEL_LIMIT,
            },
        ));
        (locks, links)
    }

    /// W3 once a manager shut down: no waiter is left registered on any of its links, and no
    /// link's driver runs.
    pub(super) fn check_links_closed(&self, links: &[Arc<SimLink>]) {
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

    pub(super) fn watch(&self, guard: &LockGuard) {
        self.watch_lease(guard.lease());
    }

    pub(super) fn watch_lease(&self, lease: &Arc<Lease>) {
        let mut truth = locked(&self.truth);
        if !truth.watched.iter().any(|w| Arc::ptr_eq(&w.lease, lease)) {
            truth.watched.push(Watched {
                lease: Arc::clone(lease),
                quorum: self.quorum,
            });
        }
    }

    pub(super) fn violation(&self, what: String) {
        locked(&self.truth).violation(what);
    }

    pub(super) fn check(&self) {
        check(&self.truth, &self.servers);
    }
}

/// What one client does with a guard it got.
pub(super) async fn hold(world: &World, guard: LockGuard, rng: &mut Rng, ttl: Duration) {
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
            Err(LockError::InvalidConfig { .. }) if guard.lease().keys.kind.counted() => {}
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
pub(super) async fn leader_client(world: Arc<World>, seed: u64, id: u64) {
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

pub(super) async fn client(world: Arc<World>, seed: u64, id: u64, names: u64) {
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
        // On a name of one holder, shared (read) holds too, among exclusive ones.
        let shared = permits == 1 && rng.chance(30);
        let fair = world.quorum == 1 && permits == 1 && !shared && rng.chance(25);
        let request = locks
            .lock(name.clone())
            .permits(permits)
            .shared(shared)
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
