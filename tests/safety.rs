//! Evidence that one lock on one server excludes: multi-process exclusion checker with a
//! canary, fault injection (TCP proxy, kill -9, restart, SIGSTOP of Redis and of a holder), lost
//! replies, cancellation and panic torture, lease truth (a guard never believes it holds what
//! Redis gave away), writers' claims and late copies of attempts, out of memory and eviction.
//! RELIABILITY.md reports the long runs.
//!
//! Elsewhere: bad input in core.rs; fair lines, permits, shared holds and leaders across
//! processes in coordination.rs; Redlock, Sentinel and Cluster faults in scale_out.rs.
//!
//! Sizes scale with `LOCK_SOAK` (default 1). The soak that RELIABILITY.md reports:
//! `LOCK_SOAK=5 cargo test --release -p lock-tests --test safety -- --nocapture --test-threads 1`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lock_core::{distributed_lock, LockError, LockManager};
use lock_test_support::{
    assert_truthful, cancel_after_polls, counter, eval_cmd, eventually, soak, FaultProxy,
    RedisServer,
};
use tokio::time::Instant;

/// One line per scenario for RELIABILITY.md (`--nocapture` shows them).
fn report(scenario: &str, figures: &str) {
    eprintln!("RELIABILITY {scenario}: {figures}");
}

/// The totals of some checker worker processes.
#[derive(Debug, Default)]
struct Totals {
    acquisitions: u64,
    errors: u64,
    accepted: u64,
    refused: u64,
}

fn checker(
    lock_url: &str,
    resource: &RedisServer,
    name: &str,
    mode: &str,
    iterations: u64,
    extra: &[&str],
) -> Child {
    Command::new(env!("CARGO_BIN_EXE_lock-checker"))
        .args([
            "--lock-url",
            lock_url,
            "--resource-url",
            &resource.url(),
            "--name",
            name,
            "--mode",
            mode,
        ])
        .args(["--iterations", &iterations.to_string()])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start lock-checker")
}

fn finish(children: Vec<Child>) -> Totals {
    let mut totals = Totals::default();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "a checker worker failed: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let result = text
            .lines()
            .find_map(|l| l.strip_prefix("RESULT "))
            .expect("a RESULT line");
        for field in result.split_whitespace() {
            let (k, v) = field.split_once('=').unwrap();
            let v: u64 = v.parse().unwrap();
            match k {
                "acquisitions" => totals.acquisitions += v,
                "errors" => totals.errors += v,
                "accepted" => totals.accepted += v,
                "refused" => totals.refused += v,
                _ => {}
            }
        }
    }
    totals
}

/// Starts four lock-mode workers on `name` and returns once they have done ten iterations,
/// so a fault lands mid-run.
async fn four_workers_under_way(
    lock: &RedisServer,
    resource: &RedisServer,
    name: &str,
    each: u64,
    ttl_ms: &str,
) -> Vec<Child> {
    let workers = (0..4)
        .map(|_| {
            checker(
                &lock.url(),
                resource,
                name,
                "lock",
                each,
                &["--ttl-ms", ttl_ms],
            )
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(20), || counter(
            resource, name, "counter"
        ) >= 10)
        .await
    );
    workers
}

async fn finish_async(children: Vec<Child>) -> Totals {
    tokio::task::spawn_blocking(move || finish(children))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusion_holds_across_processes_and_the_canary_proves_the_checker_sees_overlaps() {
    let (lock, resource) = (RedisServer::start(), RedisServer::start());
    let each = 40 * soak();
    let workers = (0..4)
        .map(|_| checker(&lock.url(), &resource, "x", "lock", each, &[]))
        .collect();
    let t = finish_async(workers).await;
    assert_eq!(t.acquisitions, 4 * each);
    assert_eq!(
        counter(&resource, "x", "counter"),
        t.acquisitions,
        "lost updates under the lock: {t:?}"
    );
    assert_eq!(counter(&resource, "x", "fenced"), t.accepted);
    assert_eq!((t.accepted, t.refused), (4 * each, 0), "{t:?}");
    assert!(
        lock.lock_keys().is_empty(),
        "keys left: {:?}",
        lock.lock_keys()
    );

    let canaries = (0..4)
        .map(|_| checker(&lock.url(), &resource, "canary", "canary", each, &[]))
        .collect();
    let c = finish_async(canaries).await;
    let lost = c.acquisitions - counter(&resource, "canary", "counter");
    report(
        "4 processes",
        &format!(
            "acquisitions={} lost_updates=0 stale_accepted=0 keys_left=0; canary runs={} lost_updates={lost}",
            t.acquisitions, c.acquisitions
        ),
    );
    assert!(
        lost > 0,
        "the canary (no lock) lost no update: the checker would not see a violation"
    );
}

#[tokio::test]
async fn a_holder_paused_past_its_ttl_has_its_late_write_refused_and_knows_it_lost() {
    let (lock, resource) = (RedisServer::start(), RedisServer::start());
    let stalled = checker(
        &lock.url(),
        &resource,
        "s",
        "stall",
        1,
        &["--ttl-ms", "300", "--hold-ms", "600"],
    );
    let pid = stalled.id().to_string();
    let mut stalled = stalled;
    let mut out = BufReader::new(stalled.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("HOLDING"), "{line}");
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    // While it is stopped its lease runs out and another worker does its write.
    let other = finish_async(vec![checker(
        &lock.url(),
        &resource,
        "s",
        "lock",
        1,
        &["--ttl-ms", "300"],
    )])
    .await;
    assert_eq!((other.acquisitions, other.accepted), (1, 1), "{other:?}");
    assert!(Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    let mut late = String::new();
    out.read_line(&mut late).unwrap();
    assert_eq!(
        late.trim(),
        "LATE accepted=0 lost=true",
        "the stale write must be refused"
    );
    assert!(stalled.wait().unwrap().success());
    assert_eq!(
        counter(&resource, "s", "fenced"),
        1,
        "only the current holder's write landed"
    );
    report(
        "holder SIGSTOPped past its ttl",
        "acquisitions=2 late_write_refused=1 guard_lost=true",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_recover_from_redis_killed_and_restarted_mid_run() {
    let (mut lock, resource) = (RedisServer::start(), RedisServer::start());
    let each = 30 * soak();
    let workers = four_workers_under_way(&lock, &resource, "k", each, "500").await;
    lock.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    lock.restart();
    let t = finish_async(workers).await;
    // Every worker finished its iterations after the restart: no hang, no panic.
    assert_eq!(t.acquisitions, 4 * each, "{t:?}");
    assert!(
        lock.lock_keys().is_empty(),
        "keys left: {:?}",
        lock.lock_keys()
    );
    let lost = t.acquisitions - counter(&resource, "k", "counter");
    report(
        "redis kill -9 + restart",
        &format!(
            "acquisitions={} errors={} lost_updates={lost} fenced_refused={} keys_left=0",
            t.acquisitions, t.errors, t.refused
        ),
    );
    // Without persistence the restart forgets held locks and resets the fencing counters, so
    // this scenario may lose an update or refuse fenced writes: RELIABILITY.md counts them.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_past_the_ttl_mid_run_loses_no_update() {
    let (lock, resource) = (RedisServer::start(), RedisServer::start());
    let each = 30 * soak();
    let workers = four_workers_under_way(&lock, &resource, "p", each, "400").await;
    lock.pause();
    tokio::time::sleep(Duration::from_millis(1200)).await; // three ttls
    lock.resume();
    let t = finish_async(workers).await;
    assert_eq!(t.acquisitions, 4 * each, "{t:?}");
    assert_eq!(
        counter(&resource, "p", "counter"),
        t.acquisitions,
        "lost update: {t:?}"
    );
    assert_eq!(t.refused, 0, "stale fenced writes: {t:?}");
    assert!(lock.lock_keys().is_empty());
    report(
        "redis SIGSTOP 3x ttl",
        &format!(
            "acquisitions={} errors={} lost_updates=0 stale_accepted=0 keys_left=0",
            t.acquisitions, t.errors
        ),
    );
}

#[tokio::test]
async fn a_lost_set_reply_leaves_no_lock_behind_and_is_never_held_twice() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port()).await;
    // Scripts loaded first, so the reply dropped below is the acquire's, not a NOSCRIPT.
    let locks = manager_via(&proxy.url(), Duration::from_millis(300)).await;
    let key = locks.key_for("lost-reply");

    // Applied, reply lost (the connection broke), and Redis unreachable for a while: an error,
    // and the key is deleted by token as soon as Redis answers again, not left for its ttl.
    proxy.drop_next_reply_then_blackhole();
    let err = locks
        .try_acquire("lost-reply", Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Redis(_)), "{err:?}");
    assert_eq!(
        server.lock_keys(),
        vec![key.clone()],
        "held by nobody who knows it"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.blackhole(false);
    proxy.cut_all();
    assert!(
        eventually(Duration::from_secs(5), || server.lock_keys().is_empty()).await,
        "the orphan lock stayed for its 30 s ttl"
    );

    // Applied, reply lost: the immediate retry on a new connection first deletes the lost
    // attempt's key by its token, then takes the lock with a fresh token, instead of finding
    // its own orphan busy. The lease is dated from the retry, the attempt that was answered.
    proxy.drop_next_reply();
    let guard = locks
        .try_acquire("lost-reply", Duration::from_secs(30))
        .await
        .unwrap()
        .expect("the retry takes the lock");
    let value: String = server.query(redis::cmd("GET").arg(&key));
    assert_eq!(value, guard.token(), "held by the retry's token");
    assert!(!guard.is_lost());
    assert!(guard.remaining() > Duration::from_secs(29));
    assert!(guard.release().await.unwrap());
}

#[tokio::test]
async fn blackholed_redis_is_an_error_within_the_timeout_then_recovers() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port()).await;
    let locks = LockManager::builder()
        .url(&proxy.url())
        .response_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    proxy.blackhole(true);
    let began = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        locks.try_acquire("bh", Duration::from_secs(5)),
    )
    .await;
    assert!(matches!(r, Ok(Err(LockError::Redis(_)))), "{r:?}");
    assert!(began.elapsed() < Duration::from_secs(5));
    proxy.blackhole(false);
    proxy.cut_all(); // the client sees a dead connection and reconnects
    let g = locks
        .acquire("bh", Duration::from_secs(5), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(g.release().await.unwrap());
    locks.shutdown(Duration::from_secs(5)).await.unwrap();
    assert!(eventually(Duration::from_secs(6), || server.lock_keys().is_empty()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusion_holds_through_cut_connections_and_latency() {
    let server = RedisServer::start();
    let proxy = Arc::new(FaultProxy::start(server.port()).await);
    proxy.set_latency(Duration::from_millis(2));
    let counter = Arc::new(AtomicU64::new(0));
    let inside = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let rounds = 25 * soak();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let locks = LockManager::builder()
            .url(&proxy.url())
            .response_timeout(Duration::from_millis(300))
            .build()
            .await
            .unwrap();
        let (counter, inside, done) = (counter.clone(), inside.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            while ok < rounds {
                let Ok(g) = locks
                    .acquire("cut", Duration::from_secs(2), Duration::from_secs(5))
                    .await
                else {
                    continue; // a cut connection: try again
                };
                assert_eq!(
                    inside.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two holders at once"
                );
                let seen = counter.load(Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
                counter.store(seen + 1, Ordering::SeqCst);
                inside.fetch_sub(1, Ordering::SeqCst);
                ok += 1;
                let _ = g.release().await; // may meet a cut: the key then expires
            }
            done.fetch_add(1, Ordering::SeqCst);
            locks.shutdown(Duration::from_secs(5)).await.unwrap();
        }));
    }
    let cutter = {
        let proxy = proxy.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut cuts = 0;
            while done.load(Ordering::SeqCst) < 6 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                proxy.cut_all();
                cuts += 1;
            }
            cuts
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    let cuts = cutter.await.unwrap();
    assert!(cuts > 0);
    assert_eq!(counter.load(Ordering::SeqCst), 6 * rounds);
    assert!(eventually(Duration::from_secs(3), || server.lock_keys().is_empty()).await);
    report(
        "proxy: 2 ms latency + connections cut every 150 ms",
        &format!(
            "acquisitions={} cuts={cuts} overlaps=0 lost_updates=0 keys_left=0",
            6 * rounds
        ),
    );
}

// ---- Cancellation and panic torture -----------------------------------------------------

#[distributed_lock(key = "torture:{n}", ttl = "300ms", manager = locks)]
async fn body(locks: &LockManager, n: u64, action: u64) -> Result<(), LockError> {
    tokio::task::yield_now().await;
    if action == 0 {
        panic!("intentional panic in a locked body");
    }
    tokio::time::sleep(Duration::from_micros(action * 50)).await;
    Ok(())
}

#[test]
fn cancellation_and_panic_torture_leaves_no_key_and_no_panic_from_drop() {
    let runs = 2_000 * soak();
    let server = RedisServer::start();
    let unexpected = Arc::new(AtomicU64::new(0));
    let hook_count = unexpected.clone();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info.payload().downcast_ref::<&str>().copied().unwrap_or("");
        if !msg.contains("intentional panic") {
            hook_count.fetch_add(1, Ordering::SeqCst);
            default_hook(info);
        }
    }));
    let mut seed = 0x5eed_u64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let locks = rt.block_on(LockManager::connect(&server.url())).unwrap();
    let mut done = 0;
    while done < runs {
        // Every 200th run: guards dropped by a runtime that is shutting down.
        if done % 200 == 199 {
            let small = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let url = server.url();
            small.block_on(async {
                let m = LockManager::connect(&url).await.unwrap();
                for i in 0..5 {
                    let g = m
                        .try_acquire(&format!("torture:rt{i}"), Duration::from_millis(300))
                        .await
                        .unwrap();
                    tokio::spawn(async move {
                        let _g = g;
                        std::future::pending::<()>().await;
                    });
                }
            });
            drop(small);
            done += 1;
            continue;
        }
        let n = next(8);
        let polls = next(6);
        let kind = next(4);
        rt.block_on(async {
            match kind {
                // Cancel an acquire at a random await point.
                0 => {
                    let _ = cancel_after_polls(
                        locks.try_acquire(&format!("torture:{n}"), Duration::from_millis(300)),
                        polls,
                    )
                    .await;
                }
                // Cancel a release at a random await point.
                1 => {
                    if let Ok(Some(g)) = locks
                        .try_acquire(&format!("torture:{n}"), Duration::from_millis(300))
                        .await
                    {
                        let _ = cancel_after_polls(g.release(), polls).await;
                    }
                }
                // An annotated fn: panics in its body, or is dropped mid-body.
                2 => {
                    let action = next(4);
                    let l = locks.clone();
                    let call = tokio::spawn(async move {
                        cancel_after_polls(body(&l, n, action), polls + 1).await
                    });
                    let _ = call.await; // a panic stays in the task
                }
                // Drop a guard from another task.
                _ => {
                    if let Ok(Some(g)) = locks
                        .try_acquire(&format!("torture:{n}"), Duration::from_millis(300))
                        .await
                    {
                        tokio::spawn(async move { drop(g) });
                    }
                }
            }
        });
        done += 1;
    }
    rt.block_on(async {
        locks.shutdown(Duration::from_secs(10)).await.unwrap();
        // Keys left to their ttl (300 ms) by dropped runtimes are gone after that window.
        assert!(
            eventually(Duration::from_secs(3), || server.lock_keys().is_empty()).await,
            "keys left: {:?}",
            server.lock_keys()
        );
    });
    let _ = std::panic::take_hook();
    assert_eq!(
        unexpected.load(Ordering::SeqCst),
        0,
        "a panic other than the intentional ones"
    );
    report(
        "cancellation and panic torture",
        &format!("runs={runs} keys_left=0 unexpected_panics=0"),
    );
}

// ---- Lease truth: regressions for the ways a guard could believe it holds a lock that Redis
// gave away (lock-core's docs, "The lease model", I1-I5). The fault simulator in lock-core
// checks the same invariants under seeded faults; these show them against real servers. The
// `assert_truthful` check is in tests/support; defect 3 needs Redlock: it is in scale_out.rs
// (redlock_with_an_instance_down_and_a_lost_reply_never_lets_two_clients_hold). ----

async fn manager_via(url: &str, response_timeout: Duration) -> LockManager {
    let locks = LockManager::builder()
        .url(url)
        .response_timeout(response_timeout)
        .build()
        .await
        .unwrap();
    // Load the scripts first, so that the faults below hit the commands under test.
    let warm = locks.try_acquire("warm", LONG).await.unwrap().unwrap();
    assert!(warm.extend(LONG).await.unwrap());
    assert!(warm.release().await.unwrap());
    locks
}

const LONG: Duration = Duration::from_secs(30);

/// Defect 1 of the review: an attempt sat in a network buffer while its connection died; the
/// client retried with the same token and found the lock held; the first attempt then landed
/// on the freed key, and the next attempt found its own token and was granted with a lease
/// dated from its own, later send (the guard said 3.0 s, the server had 1.5 s). Every attempt
/// now has its own token and no key is ever granted twice: the late attempt is an orphan that
/// nobody believes it holds, and the waiter takes the lock once that orphan expires.
#[tokio::test]
async fn a_delayed_acquire_that_lands_late_never_makes_a_guard_overstate_its_lease() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port()).await;
    let locks = LockManager::builder()
        .url(&proxy.url())
        .response_timeout(Duration::from_millis(300))
        // The waiter must not learn of the key's end by itself (no release is published below).
        .max_poll_interval(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let warm = locks.try_acquire("warm", LONG).await.unwrap().unwrap();
    assert!(warm.release().await.unwrap());
    let other = LockManager::connect(&server.url()).await.unwrap();
    let key = locks.key_for("delayed");
    let holder = other.try_acquire("delayed", LONG).await.unwrap().unwrap();
    // Our first attempt waits in the network for 800 ms; our connection dies at once. The
    // retry finds the lock held and the waiter settles in to poll.
    proxy.hold_next_request(Duration::from_millis(800));
    let waiter = tokio::spawn({
        let locks = locks.clone();
        async move {
            locks
                .lock("delayed")
                .ttl(Duration::from_secs(2))
                .wait(Duration::from_secs(6))
                .acquire()
                .await
        }
    });
    // The holder's key vanishes without a release message (as when its lease runs out), and
    // the delayed attempt lands on the free key before the waiter looks again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _: () = server.query(redis::cmd("DEL").arg(&key));
    drop(holder);
    assert!(
        eventually(Duration::from_secs(3), || server.lock_keys()
            == vec![key.clone()])
        .await,
        "the delayed attempt took the free key"
    );
    let guard = waiter.await.unwrap().expect("taken by the end of the wait");
    assert_truthful(&server, &key, &guard, "just taken");
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until && !guard.is_lost() {
        assert_truthful(&server, &key, &guard, "while held");
        let stolen = other.try_acquire("delayed", LONG).await.unwrap();
        if !guard.is_lost() {
            assert!(
                stolen.is_none(),
                "another client took the lock while the guard holds"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(guard.release().await.unwrap());
}

/// Defect 2: with `extend(30s)` in flight, `extend(300ms)` completed, then the first one: the
/// server had 300 ms, the guard said 29.9 s. Now the extend sent last sets the deadline,
/// whatever order the replies are handled in, and a renewal in flight caps the deadline from
/// the moment it is sent.
#[tokio::test]
async fn overlapping_extends_leave_the_guard_no_more_than_what_redis_applied_last() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port()).await;
    let locks = manager_via(&proxy.url(), Duration::from_secs(2)).await;
    let key = locks.key_for("extends");
    let guard = locks
        .try_acquire("extends", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    proxy.set_latency(Duration::from_millis(40));
    // The long extend is sent, and its reply is handled only after the short one's (as a
    // watchdog's task may be on a busy multi-thread runtime).
    let mut long = std::pin::pin!(guard.extend(Duration::from_secs(30)));
    assert!(
        tokio::time::timeout(Duration::from_millis(20), &mut long)
            .await
            .is_err(),
        "in flight"
    );
    let checking = async {
        for _ in 0..40 {
            assert_truthful(&server, &key, &guard, "while the short extend is in flight");
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    };
    let (short, ()) = tokio::join!(guard.extend(Duration::from_millis(300)), checking);
    assert!(short.unwrap());
    assert!(long.await.unwrap());
    let pttl: i64 = server.query(redis::cmd("PTTL").arg(&key));
    assert!(
        pttl <= 300,
        "Redis applied the short extend last: {pttl} ms"
    );
    assert!(
        guard.remaining() <= Duration::from_millis(300),
        "the guard says {:?}",
        guard.remaining()
    );
    assert_truthful(&server, &key, &guard, "after both");
}

/// Defect 4: after an outage during a wait, `acquire` returned a guard that was already lost:
/// the lease was dated from the first failed attempt, even a refused one where nothing was
/// sent. Now a guard is born with the lease of the attempt that took the lock.
#[tokio::test]
async fn a_guard_taken_after_an_outage_longer_than_the_ttl_is_born_with_its_lease() {
    let mut server = RedisServer::start();
    let locks = manager_via(&server.url(), Duration::from_millis(300)).await;
    let ttl = Duration::from_secs(1);
    server.kill();
    let waiting = tokio::spawn({
        let locks = locks.clone();
        async move {
            locks
                .lock("outage")
                .ttl(ttl)
                .wait(Duration::from_secs(10))
                .auto_extend(true)
                .acquire()
                .await
        }
    });
    // The outage outlasts the ttl, with attempts failing all along.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.restart();
    let guard = waiting.await.unwrap().expect("taken once Redis is back");
    assert!(!guard.is_lost(), "born lost");
    assert!(
        guard.remaining() > ttl / 2,
        "born with {:?} of a {ttl:?} lease",
        guard.remaining()
    );
    assert_truthful(
        &server,
        &locks.key_for("outage"),
        &guard,
        "after the outage",
    );
    // And the watchdog keeps it: the job does not fail with `Lost` after every restart.
    tokio::time::sleep(ttl * 2).await;
    assert!(!guard.is_lost());
    assert!(guard.release().await.unwrap());
}

/// Defect 6: a refused connection (nothing sent) spawned a clean-up that retried for the whole
/// ttl: 20 refused `try_acquire` left 20 tasks and `shutdown` timed out with nothing held.
#[tokio::test]
async fn refused_attempts_leave_nothing_behind_and_shutdown_returns_at_once() {
    let mut server = RedisServer::start();
    let locks = manager_via(&server.url(), Duration::from_millis(300)).await;
    server.kill();
    // The first command after the kill meets the broken connection: whether it ran is unknown
    // to the client, so its short-lived key is cleaned up (until its 200 ms ttl at most).
    let first = locks.try_acquire("down", Duration::from_millis(200)).await;
    assert!(matches!(first, Err(LockError::Redis(_))), "{first:?}");
    locks.shutdown(Duration::from_secs(3)).await.unwrap();
    for _ in 0..20 {
        let refused = locks.try_acquire("down", LONG).await;
        assert!(matches!(refused, Err(LockError::Redis(_))), "{refused:?}");
    }
    locks
        .shutdown(Duration::ZERO)
        .await
        .expect("nothing was sent, so nothing is left to clean up");
}

/// A timeout is not a broken connection: the stalled attempt is not sent again at once (which
/// doubled the latency and sent a second SET), and its key is cleaned up once Redis answers.
#[tokio::test]
async fn a_timed_out_attempt_is_not_retried_at_once_and_is_cleaned_up() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port()).await;
    let locks = manager_via(&proxy.url(), Duration::from_millis(300)).await;
    let _: () = server.query(redis::cmd("CONFIG").arg("RESETSTAT"));
    proxy.set_latency(Duration::from_millis(700));
    let err = locks.try_acquire("stalled", LONG).await.unwrap_err();
    assert!(matches!(err, LockError::Redis(_)), "{err:?}");
    proxy.set_latency(Duration::ZERO);
    assert!(
        eventually(Duration::from_secs(5), || server.lock_keys().is_empty()
            && server.command_calls("set") == 1)
        .await,
        "one SET, landed late and deleted by token: set calls {}, keys {:?}",
        server.command_calls("set"),
        server.lock_keys()
    );
}

/// A lease whose local deadline passed while Redis was slow (the key still ours on the
/// server) comes back with a renewal that gets through. (Before, the watchdog set a sticky
/// "lost" flag when it gave up, so even a successful manual extend left the guard lost; the
/// watchdog now never gives up on errors, and only "not ours" is final.)
#[tokio::test]
async fn a_renewal_that_gets_through_after_the_deadline_revives_the_guard() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port()).await;
    let locks = manager_via(&proxy.url(), Duration::from_secs(5)).await;
    // The grant lands 1 s after the send and its reply takes 1 s more: the guard counts
    // 2.5 s from the send, the server from 1 s later, which leaves the renewal 1 s to get
    // through after the local deadline.
    proxy.set_latency(Duration::from_secs(1));
    let guard = locks
        .try_acquire("revive", Duration::from_millis(2500))
        .await
        .unwrap()
        .unwrap();
    proxy.set_latency(Duration::ZERO);
    guard.lost().await;
    assert!(guard.is_lost());
    assert!(
        guard.extend(Duration::from_secs(5)).await.unwrap(),
        "the key was still ours"
    );
    assert!(!guard.is_lost(), "held again");
    assert!(guard.remaining() > Duration::from_secs(4));
    assert_truthful(&server, &locks.key_for("revive"), &guard, "revived");
    assert!(guard.release().await.unwrap());
}

/// Fencing tokens are drawn on demand, while held: none after the lease ran out.
#[tokio::test]
async fn a_fencing_token_is_drawn_only_while_the_lease_holds() {
    let server = RedisServer::start();
    let locks = LockManager::connect(&server.url()).await.unwrap();
    let fence_key = format!("{}:fence", locks.key_for("fenced"));
    let guard = locks
        .try_acquire("fenced", Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    guard.lost().await;
    let err = guard.fencing_token().await.unwrap_err();
    assert!(
        matches!(err, LockError::Lost { ref name } if name == "fenced"),
        "{err:?}"
    );
    let exists: bool = server.query(redis::cmd("EXISTS").arg(&fence_key));
    assert!(!exists, "nothing drawn");
    // The guard counts itself lost a little before the server lets the key go (its clock
    // margin): the next holder waits for that, as any waiter would.
    let next = locks
        .acquire("fenced", LONG, Duration::from_secs(2))
        .await
        .unwrap();
    let token = next.fencing_token().await.unwrap();
    assert_eq!(next.fencing_token().await.unwrap(), token, "cached");
    let stored: u64 = server.query(redis::cmd("GET").arg(&fence_key));
    assert_eq!(stored, token);
    // A counter lost with the server's data does not send tokens back: the server's clock
    // keeps them above every earlier one.
    let _: () = server.query(redis::cmd("DEL").arg(&fence_key));
    assert!(next.release().await.unwrap());
    let after = locks.try_acquire("fenced", LONG).await.unwrap().unwrap();
    assert!(after.fencing_token().await.unwrap() > token);
    assert!(after.release().await.unwrap());
}

/// A `min_hold` release leaves the key until the minimum hold ends, with its token retired: an
/// extend that lands after it (one still in flight, or a late copy) cannot make the key live
/// longer again. Checked on the scripts themselves.
#[tokio::test]
async fn an_extend_after_a_min_hold_release_cannot_lengthen_the_key() {
    let server = RedisServer::start();
    let locks = LockManager::connect(&server.url()).await.unwrap();
    let key = locks.key_for("held-at-least");
    let guard = locks
        .lock("held-at-least")
        .ttl(LONG)
        .min_hold(Duration::from_secs(2))
        .acquire()
        .await
        .unwrap();
    let token = guard.token().to_owned();
    assert!(guard.release().await.unwrap());
    let pttl: i64 = server.query(redis::cmd("PTTL").arg(&key));
    assert!(pttl > 0 && pttl <= 2000, "kept until min_hold ends: {pttl}");
    // The extend a watchdog may still have had in flight, arriving now.
    let extended: i64 = script(
        &server,
        lock_core::__private::script("extend"),
        &[&key],
        &[&token, "30000"],
    );
    assert_eq!(extended, 0, "the retired token is no longer the owner");
    let pttl: i64 = server.query(redis::cmd("PTTL").arg(&key));
    assert!(pttl <= 2000, "still ends with the minimum hold: {pttl}");
}

/// Runs one of lock-core's scripts on `server`, as the client sends it.
fn script<T: redis::FromRedisValue>(
    server: &RedisServer,
    source: &str,
    keys: &[&str],
    args: &[&str],
) -> T {
    server.query(&eval_cmd(source, keys, args))
}

/// A waiting writer's claim keeps shared holds out while it waits, ends with its grant, and a
/// late attempt of the same acquisition (a cluster client's re-send that ran first after the
/// grant) records nothing: shared holds are not kept out by a writer that is done.
#[tokio::test]
async fn a_claim_ends_with_its_grant_and_a_late_attempt_cannot_renew_it() {
    let server = RedisServer::start();
    let acquire = lock_core::__private::script("acquire");
    let release = lock_core::__private::script("release");
    let shared = lock_core::__private::script("shared_acquire");
    let (key, claims) = ("lock:{catalog}", "lock:{catalog}:x");
    let token = |n: u32| format!("test|1733500000000|{n:032x}");
    let (holder, attempt, granted, late, reader) =
        (token(1), token(2), token(3), token(4), token(5));
    let ok: i64 = script(&server, acquire, &[key], &[&holder, "60000", "0", "0"]);
    assert_eq!(ok, 1);
    // The writer waits: refused, marked, its claim recorded.
    let refused: i64 = script(
        &server,
        acquire,
        &[key],
        &[&attempt, "60000", "1", "1", "w1", "60000"],
    );
    assert!(refused < 0);
    let claim: Option<i64> = server.query(redis::cmd("HGET").arg(claims).arg("w1"));
    assert!(claim.is_some_and(|c| c > 0), "{claim:?}");
    // The lock is free, but a shared request is kept out while the claim lives, and asks to
    // be told.
    let released: i64 = script(&server, release, &[key], &[&holder, "0", "PUBLISH", "1"]);
    assert_eq!(released, 1);
    let kept_out: i64 = script(&server, shared, &[key], &[&reader, "60000", "1", "1"]);
    assert!(kept_out < 0);
    // The writer's grant ends the claim, and takes the lock marked for the reader.
    let ok: i64 = script(
        &server,
        acquire,
        &[key],
        &[&granted, "60000", "1", "1", "w1", "60000"],
    );
    assert_eq!(ok, 1);
    let value: String = server.query(redis::cmd("GET").arg(key));
    assert_eq!(
        value,
        format!("{granted}*"),
        "marked: the release wakes the reader"
    );
    let ended: i64 = server.query(redis::cmd("HGET").arg(claims).arg("w1"));
    assert!(ended < 0, "{ended}");
    // A late attempt of the same acquisition is refused and records no claim.
    let refused: i64 = script(
        &server,
        acquire,
        &[key],
        &[&late, "60000", "1", "1", "w1", "60000"],
    );
    assert!(refused < 0);
    let still: i64 = server.query(redis::cmd("HGET").arg(claims).arg("w1"));
    assert!(still < 0, "a late attempt renewed an ended claim: {still}");
    let released: i64 = script(&server, release, &[key], &[&granted, "0", "PUBLISH", "1"]);
    assert_eq!(released, 1);
    let ok: i64 = script(&server, shared, &[key], &[&token(6), "60000", "1", "1"]);
    assert_eq!(ok, 1, "no live claim: the shared hold is granted");
}

/// The cluster client re-sends an attempt after an I/O error, with the same token; the re-sent
/// copy is granted, the guard extends its lease to a minute, and then the first copy lands
/// late. Regression: the scripts' "another copy of this attempt" branch set the expiry (or the
/// permit's end) back to the attempt's ttl, so the key lapsed under a guard that counted on a
/// minute, and another owner took it. Checked on the scripts themselves, for the lock, a fair
/// lock and a permit, each then contended by another manager past the attempt's ttl.
#[tokio::test]
async fn a_late_copy_of_a_granting_attempt_never_shortens_the_lease() {
    let server = RedisServer::start();
    let locks = LockManager::connect(&server.url()).await.unwrap();
    let other = LockManager::connect(&server.url()).await.unwrap();
    let acquire = lock_core::__private::script("acquire");
    let fair = lock_core::__private::script("fair");
    let extend = lock_core::__private::script("extend");
    let permit = lock_core::__private::script("permit_acquire");
    let permit_extend = lock_core::__private::script("permit_extend");
    let token = "test:1|1|0123456789abcdef0123456789abcdef";
    let (plain, line) = (locks.key_for("copied"), locks.key_for("copied-fair"));
    let queue = format!("{line}:q");
    let permits = locks.key_for("copied-permits");
    // The first permit of two goes to another holder, so that ours is the last one free.
    let neighbour = other
        .lock("copied-permits")
        .permits(2)
        .ttl(LONG)
        .acquire()
        .await
        .unwrap();
    for round in ["first copy", "late copy"] {
        let granted: i64 = script(&server, acquire, &[&plain], &[token, "1000", "0"]);
        assert_eq!(granted, 1, "acquire.lua, {round}");
        let granted: i64 = script(
            &server,
            fair,
            &[&line, &queue],
            &[token, "1000", "ticket", "5000", "0"],
        );
        assert_eq!(granted, 1, "fair.lua, {round}");
        let granted: i64 = script(
            &server,
            permit,
            &[&permits],
            &[token, "1000", "0", "0", "2"],
        );
        assert_eq!(granted, 1, "permit_acquire.lua, {round}");
        if round == "first copy" {
            // The guards' renewals, between the two copies.
            for key in [&plain, &line] {
                let renewed: i64 = script(&server, extend, &[key], &[token, "60000"]);
                assert_eq!(renewed, 1);
            }
            let renewed: i64 = script(&server, permit_extend, &[&permits], &[token, "60000"]);
            assert_eq!(renewed, 1);
        }
    }
    for key in [&plain, &line, &permits] {
        let pttl: i64 = server.query(redis::cmd("PTTL").arg(key));
        assert!(
            pttl > 59_000,
            "{key}: the late copy cut the lease to {pttl} ms"
        );
    }
    let time: Vec<u64> = server.query(&redis::cmd("TIME"));
    let now_ms = time[0] * 1000 + time[1] / 1000;
    let ends: u64 = server.query(redis::cmd("HGET").arg(&permits).arg(token));
    assert!(
        ends > now_ms + 59_000,
        "the permit's end was cut to {} ms",
        ends.saturating_sub(now_ms)
    );
    // Past the attempt's ttl, nobody else gets in.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    for name in ["copied", "copied-fair"] {
        assert!(
            other.try_acquire(name, LONG).await.unwrap().is_none(),
            "{name}: two holders"
        );
    }
    let third = other.lock("copied-permits").permits(2).try_acquire().await;
    assert!(third.unwrap().is_none(), "three holders of permits(2)");
    assert!(neighbour.release().await.unwrap());
}

/// The soak's finding: a client that re-sends (Cluster, Sentinel) can have an earlier copy of an
/// attempt still on its way when the attempt is refused, or after the lease it took is given
/// back; landing on the free key, that copy took the lock for a token no guard has, and the name
/// was busy for nobody until the attempt's ttl. Such a client asks the scripts for the
/// attempt's tomb (`<lock>:gone:<token>`): a refusal or a release leaves it, and a late copy
/// then takes nothing. The same schedule without the tomb (what a client that never re-sends sends) shows
/// the hazard, so the test can fail.
#[tokio::test]
async fn a_late_copy_of_a_refused_or_released_attempt_takes_nothing() {
    let server = RedisServer::start();
    let locks = LockManager::connect(&server.url()).await.unwrap();
    let acquire = lock_core::__private::script("acquire");
    let fair = lock_core::__private::script("fair");
    let permit = lock_core::__private::script("permit_acquire");
    let release = lock_core::__private::script("release");
    let permit_release = lock_core::__private::script("permit_release");
    let ttl = "20000";
    for entombed in [true, false] {
        for (kind, n) in [("plain", 1), ("fair", 1), ("permits", 2)] {
            let name = format!("late-{kind}-{entombed}");
            let key = locks.key_for(&name);
            let queue = format!("{key}:q");
            // One attempt of each story, copies of the same command each time; a client that
            // re-sends asks for the tomb with the last argument.
            let flag = if entombed { "1" } else { "0" };
            let attempt = |token: &str| -> i64 {
                match kind {
                    "plain" => script(&server, acquire, &[&key], &[token, ttl, "1", flag]),
                    "fair" => script(
                        &server,
                        fair,
                        &[&key, &queue],
                        &[token, ttl, token, "5000", "1", flag],
                    ),
                    _ => script(&server, permit, &[&key], &[token, ttl, "1", flag, "2"]),
                }
            };
            let give_back = |token: &str| -> i64 {
                let source = if n > 1 { permit_release } else { release };
                script(&server, source, &[&key], &[token, "0", "PUBLISH", flag])
            };
            // Refused: every permit is held by others, then given back.
            let holders: Vec<String> = (0..n.max(1))
                .map(|i| format!("other:{i}|1|{i:032x}"))
                .collect();
            for holder in &holders {
                assert_eq!(attempt(holder), 1, "{kind}: a holder");
            }
            let refused = "late:1|1|0123456789abcdef0123456789abcdef";
            assert!(attempt(refused) < 1, "{kind}: refused while held");
            if entombed {
                let tomb_ttl: i64 =
                    server.query(redis::cmd("PTTL").arg(format!("{key}:gone:{refused}")));
                assert!(
                    (1..=20_000).contains(&tomb_ttl),
                    "{kind}: the refusal's tomb lives {tomb_ttl} ms"
                );
            }
            for holder in &holders {
                assert_eq!(give_back(holder), 1, "{kind}: a holder's release");
            }
            let _: i64 = server.query(redis::cmd("DEL").arg(&queue));
            let late = attempt(refused);
            // Granted: taken, given back, then a late copy.
            let released = "late:2|1|fedcba9876543210fedcba9876543210";
            if late != 1 {
                assert_eq!(attempt(released), 1, "{kind}: a free lock");
                assert_eq!(give_back(released), 1, "{kind}: its release");
            }
            let late_after_release = attempt(released);
            let left: i64 = server.query(redis::cmd("EXISTS").arg(&key));
            if entombed {
                assert_ne!(
                    late, 1,
                    "{kind}: a late copy of a refused attempt took the lock"
                );
                assert_ne!(
                    late_after_release, 1,
                    "{kind}: a late copy of a released attempt took the lock"
                );
                assert_eq!(left, 0, "{kind}: the name is busy for nobody");
            } else {
                // Without tombs, the hazard the tombs close.
                assert_eq!(late, 1, "{kind}: the schedule no longer shows the hazard");
            }
            let _: i64 = server.query(redis::cmd("DEL").arg(&key).arg(&queue));
        }
    }
}

/// Under `maxmemory` with `noeviction`, Redis refuses a script's first write that may grow
/// memory, and none after it (script.c, `scriptVerifyOOM`: only while the script has no side
/// effects yet), so no lock script stops half-way: each is whole or changes nothing. An acquire
/// is refused with nothing set; a plain release (a `DEL`) completes; a `min_hold` release,
/// whose first write is the retired token's `SET`, is refused whole and retried in the
/// background until it gets through; a permit's `min_hold` release (an `HDEL` first) completes.
#[tokio::test]
async fn under_noeviction_oom_scripts_are_whole_or_nothing() {
    let server = RedisServer::start_with(&["--maxmemory-policy", "noeviction"]);
    let locks = LockManager::connect(&server.url()).await.unwrap();
    let min_hold = |name: &'static str, permits: u32| {
        locks
            .lock(name)
            .permits(permits)
            .ttl(LONG)
            .min_hold(Duration::from_secs(5))
            .acquire()
    };
    let lock = min_hold("oom", 1).await.unwrap();
    let lock_token = lock.token().to_owned();
    let permit = min_hold("oom-permits", 2).await.unwrap();
    let permit_token = permit.token().to_owned();
    let plain = locks.try_acquire("oom-plain", LONG).await.unwrap().unwrap();
    let key = |name: &str| locks.key_for(name);
    let exists = |name: &str| -> bool { server.query(redis::cmd("EXISTS").arg(key(name))) };
    // Every byte is over the limit now.
    let _: () = server.query(redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(1));
    let refused = locks.try_acquire("oom-new", LONG).await.unwrap_err();
    assert!(refused.to_string().contains("OOM"), "{refused}");
    assert!(!exists("oom-new"), "a refused acquire set nothing");
    assert!(plain.release().await.unwrap());
    assert!(!exists("oom-plain"), "released");
    let refused = lock.release().await.unwrap_err();
    assert!(refused.to_string().contains("OOM"), "{refused}");
    let value: String = server.query(redis::cmd("GET").arg(key("oom")));
    assert_eq!(
        value, lock_token,
        "a refused min_hold release changed nothing"
    );
    let pttl: i64 = server.query(redis::cmd("PTTL").arg(key("oom")));
    assert!(
        pttl > 5000,
        "a refused min_hold release changed nothing: {pttl}"
    );
    assert!(permit.release().await.unwrap());
    let fields: Vec<String> = server.query(redis::cmd("HKEYS").arg(key("oom-permits")));
    assert!(
        fields.contains(&format!("{permit_token}~")) && !fields.contains(&permit_token),
        "the permit given back and kept under its retired token: {fields:?}"
    );
    let _: () = server.query(redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(0));
    // The refused release, retried in the background, gets through.
    assert!(
        eventually(Duration::from_secs(10), || {
            let value: Option<String> = server.query(redis::cmd("GET").arg(key("oom")));
            value.is_some_and(|v| v.ends_with('~'))
        })
        .await,
        "the min_hold release retried once memory allowed it"
    );
    let pttl: i64 = server.query(redis::cmd("PTTL").arg(key("oom")));
    assert!(pttl > 0 && pttl <= 5000, "kept until min_hold ends: {pttl}");
}

/// A server whose `maxmemory-policy` can evict lock keys (every policy but `noeviction`: each
/// lock key has an expiry) is refused at `build`, naming the server and the policy, unless the
/// caller accepts the risk; a Redlock with one such instance too. An evicted lock would let a
/// second holder in while the first still believes it holds.
#[tokio::test]
async fn a_server_that_can_evict_lock_keys_is_refused_unless_accepted() {
    let evicting = RedisServer::start_with(&["--maxmemory-policy", "volatile-lru"]);
    let refused = LockManager::connect(&evicting.url()).await.unwrap_err();
    let text = refused.to_string();
    assert!(
        matches!(refused, LockError::InvalidConfig { .. }),
        "{refused:?}"
    );
    assert!(
        text.contains("volatile-lru") && text.contains(&evicting.port().to_string()),
        "{text}"
    );
    assert!(
        text.contains("allow_eviction(true)"),
        "says how to accept it: {text}"
    );
    let accepted = LockManager::builder()
        .url(&evicting.url())
        .allow_eviction(true)
        .build()
        .await
        .unwrap();
    let guard = accepted
        .try_acquire("evictable", LONG)
        .await
        .unwrap()
        .unwrap();
    assert!(guard.release().await.unwrap());
    let others = [RedisServer::start(), RedisServer::start()];
    let refused = LockManager::builder()
        .redlock([others[0].url(), others[1].url(), evicting.url()])
        .build()
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("volatile-lru"), "{refused}");
    // The servers the suite starts keep the default, `noeviction`: nothing refused there.
    LockManager::connect(&others[0].url()).await.unwrap();
}
