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
//! to go past them (every client of a name asks for the same permits). On the other names,
//! about a third of the requests are shared (read) holds, among exclusive and fair ones.
//!
//! After every command the servers apply, every millisecond, and around every client step, it
//! checks the invariants I1-I5 (see the crate docs) against the servers' truth; for permits,
//! I2 reads "at most `n` guards say they hold", and with shared holds "no guard of the lock
//! says it holds together with a shared hold's". A failing seed
//! is printed; `LOCK_SIM_SEED=<seed>` replays it alone, `LOCK_SIM_SEEDS=<n>` runs more.
//!
//! The files, each depending only on those before it: `faults` (the seeded draws), `server`
//! (a simulated server and the checker of I1/I2), `conn` (a client's faulted connection),
//! `link` (a client's faulted pub/sub link), `world` (one seed's servers and clients); this
//! file runs the seeds.

mod conn;
mod faults;
mod link;
mod server;
mod world;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::locked;
use faults::{Faults, Rng};
use server::{SimServer, Truth};
use world::{client, leader_client, World};

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
        // The servers have the native compare-and-set commands of Valkey 9, of Valkey 8.1
        // (`SET IFEQ` only) or none, as Redis 7.0: decided by the seed alone, so that the other
        // draws stay as they were.
        let native = crate::command::Native {
            delifeq: seed % 3 == 2,
            set_ifeq: !seed.is_multiple_of(3),
        };
        let servers: Vec<Arc<SimServer>> = (0..n)
            .map(|i| SimServer::new(i, Arc::clone(&truth), resends, native))
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
