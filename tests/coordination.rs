//! Beyond one holder at a time: fair lines (`LockRequest::fair`: waiters in arrival order,
//! across managers and processes), permits (`permits(n)`: at most `n` holders), shared holds
//! (readers together, never with a writer) and leader election, against real `redis-server`
//! processes and worker processes (`lock-checker`). RELIABILITY.md reports the long runs.
//!
//! Sizes: the fair-line processes contend for 3 s times `LOCK_SOAK` (default 1);
//! `LOCK_LEADER_ROUNDS` kills and as many SIGSTOPs of the leader (default 3; the run
//! RELIABILITY.md reports used 20):
//! `LOCK_LEADER_ROUNDS=20 cargo test -p lock-tests --test coordination -- --nocapture leader_election_across`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::{distributed_lock, LockError, LockManager};
use lock_test_support::{
    cancel_after_polls, counter, eventually, monotonic_ns, never_polling, settled, soak,
    FaultProxy, RedisServer,
};
use tokio::time::Instant;

const LONG: Duration = Duration::from_secs(30);

/// One line per scenario for RELIABILITY.md (`--nocapture` shows them).
fn report(scenario: &str, figures: &str) {
    eprintln!("RELIABILITY {scenario}: {figures}");
}

/// A `lock-checker` worker process.
fn checker(lock: &RedisServer, resource: &RedisServer, name: &str, mode: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lock-checker"));
    cmd.args(["--lock-url", &lock.url(), "--resource-url", &resource.url()])
        .args(["--name", name, "--mode", mode])
        .stdout(Stdio::piped());
    cmd
}

/// The value of `key=` in the line of `out` that starts with `prefix`.
fn field(out: &str, prefix: &str, key: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} line in {out}"));
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
}

// ---- Fair lines (LockRequest::fair) ----
// Waiters take the lock in arrival order, across managers and processes.

/// A fair acquire of `name` on `locks`, waiting up to `wait`.
async fn fair_acquire(
    locks: &LockManager,
    name: &str,
    wait: Duration,
) -> lock_core::Result<lock_core::LockGuard> {
    locks
        .lock(name)
        .ttl(LONG)
        .wait(wait)
        .fair(true)
        .acquire()
        .await
}

/// [`fair_acquire`] in a task of its own.
fn spawn_fair(
    locks: &LockManager,
    name: &str,
    wait: Duration,
) -> tokio::task::JoinHandle<lock_core::Result<lock_core::LockGuard>> {
    let (locks, name) = (locks.clone(), name.to_owned());
    tokio::spawn(async move { fair_acquire(&locks, &name, wait).await })
}

/// Releases `held` and checks that `waiter` (which polls once a minute) is woken by it and
/// takes the lock, then releases that too.
async fn released_wakes(
    held: lock_core::LockGuard,
    waiter: tokio::task::JoinHandle<lock_core::Result<lock_core::LockGuard>>,
) {
    let released_at = Instant::now();
    assert!(held.release().await.unwrap());
    let g = waiter.await.unwrap().unwrap();
    // Not woken, it would wait out the holder's 30 s lease or its one-minute poll.
    assert!(
        released_at.elapsed() < Duration::from_secs(10),
        "woken by the release"
    );
    assert!(g.release().await.unwrap());
}

fn in_line(server: &RedisServer, name: &str) -> i64 {
    // The line's hash holds one field per ticket, plus the arrival counter `#`.
    let fields: i64 = server.query(redis::cmd("HLEN").arg(format!("lock:{{{name}}}:q")));
    (fields - 1).max(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fair_waiters_take_the_lock_in_arrival_order_across_managers() {
    let server = RedisServer::start();
    let mut managers = Vec::new();
    for _ in 0..3 {
        managers.push(LockManager::connect(&server.url()).await.unwrap());
    }
    let held = managers[0]
        .try_acquire("line", LONG)
        .await
        .unwrap()
        .unwrap();
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..6usize {
        let (m, order) = (managers[i % 3].clone(), order.clone());
        waiters.push(tokio::spawn(async move {
            let g = fair_acquire(&m, "line", Duration::from_secs(20))
                .await
                .unwrap();
            order.lock().unwrap().push(i);
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(g.release().await.unwrap());
        }));
        // The next one arrives once this one is in line.
        assert!(
            eventually(Duration::from_secs(5), || in_line(&server, "line")
                == i as i64 + 1)
            .await,
            "waiter {i} in line"
        );
    }
    assert!(held.release().await.unwrap());
    for w in waiters {
        w.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(in_line(&server, "line"), 0, "everyone left the line");
}

/// A release used to wake every fair waiter of its lock, and each ran the line script again,
/// though only the first in line may take the lock (at 64 waiters, a 5 ms handoff). The release
/// message now names the first ticket in line, and only that waiter tries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_wakes_only_the_first_fair_waiter_in_line() {
    let server = RedisServer::start();
    let locks = never_polling(&server).await;
    let held = locks.try_acquire("next", LONG).await.unwrap().unwrap();
    let mut waiters = Vec::new();
    for i in 0..8 {
        waiters.push(spawn_fair(&locks, "next", Duration::from_secs(30)));
        assert!(eventually(Duration::from_secs(5), || in_line(&server, "next") == i + 1).await);
    }
    // Every waiter has subscribed and marked the key, and sleeps.
    settled(std::slice::from_ref(&server), "lock:{next}").await;
    let _: () = server.query(redis::cmd("CONFIG").arg("RESETSTAT"));
    assert!(held.release().await.unwrap());
    let first = waiters.remove(0).await.unwrap().unwrap();
    // Time for any other waiter to try, had it been woken.
    settled(std::slice::from_ref(&server), "lock:{next}").await;
    assert_eq!(
        server.command_calls("evalsha"),
        2,
        "the release and the first waiter's attempt, no other waiter's"
    );
    assert_eq!(in_line(&server, "next"), 7);
    assert!(first.release().await.unwrap());
    // The rest follow in order, each woken by the release before it.
    for w in waiters {
        assert!(w.await.unwrap().unwrap().release().await.unwrap());
    }
}

/// 64 fair waiters taking turns (1 ms holds) with a one-minute poll interval: every handoff
/// must come from a release message naming the next waiter, as a missed one would stall for
/// the holder's 30 s lease. (In the bench, with the default 250 ms poll, a waiter's poll
/// occasionally fires just before its message arrives and takes the lock itself.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_fair_waiters_hand_over_by_messages_alone() {
    let server = RedisServer::start();
    let locks = never_polling(&server).await;
    let started = Instant::now();
    let workers: Vec<_> = (0..64)
        .map(|_| {
            let locks = locks.clone();
            tokio::spawn(async move {
                for _ in 0..6 {
                    let g = fair_acquire(&locks, "turns", Duration::from_secs(60))
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    assert!(g.release().await.unwrap());
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "384 handoffs with no stall on a poll or a lease end: {:?}",
        started.elapsed()
    );
}

/// The release message names the first fair ticket in line, kept in the holder's value; when
/// that waiter gives up, leaving the line names the next one there, or the release would wake
/// nobody (the next waiter polls once a minute here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_first_fair_waiter_gives_up_the_release_wakes_the_next() {
    let server = RedisServer::start();
    let locks = never_polling(&server).await;
    let held = locks.try_acquire("after", LONG).await.unwrap().unwrap();
    let first = spawn_fair(&locks, "after", Duration::from_secs(30));
    assert!(eventually(Duration::from_secs(5), || in_line(&server, "after") == 1).await);
    let second = spawn_fair(&locks, "after", Duration::from_secs(30));
    assert!(eventually(Duration::from_secs(5), || in_line(&server, "after") == 2).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    first.abort();
    assert!(eventually(Duration::from_secs(2), || in_line(&server, "after") == 1).await);
    released_wakes(held, second).await;
}

#[tokio::test]
async fn a_fair_waiter_that_gives_up_leaves_the_line_at_once() {
    let server = RedisServer::start();
    let locks = never_polling(&server).await;
    let held = locks.try_acquire("gone", LONG).await.unwrap().unwrap();
    let quitter = spawn_fair(&locks, "gone", Duration::from_secs(30));
    assert!(eventually(Duration::from_secs(5), || in_line(&server, "gone") == 1).await);
    quitter.abort();
    assert!(
        eventually(Duration::from_secs(2), || in_line(&server, "gone") == 0).await,
        "the dropped waiter's ticket left the line (it would otherwise stay a minute)"
    );
    // The next fair waiter is not held up by it.
    let next = spawn_fair(&locks, "gone", Duration::from_secs(30));
    assert!(eventually(Duration::from_secs(5), || in_line(&server, "gone") == 1).await);
    released_wakes(held, next).await;
}

#[tokio::test]
async fn a_briefly_kept_ticket_never_shortens_the_line_for_a_longer_kept_one() {
    let server = RedisServer::start();
    let holder = LockManager::connect(&server.url()).await.unwrap();
    let manager = |poll: Duration| {
        LockManager::builder()
            .url(&server.url())
            .max_poll_interval(poll)
            .build()
    };
    // Tickets stay in line three poll intervals plus a response timeout: ~31 s and ~1.3 s.
    let patient = manager(Duration::from_secs(10)).await.unwrap();
    let hasty = manager(Duration::from_millis(100)).await.unwrap();
    let held = holder.try_acquire("keep", LONG).await.unwrap().unwrap();
    let first = spawn_fair(&patient, "keep", Duration::from_secs(60));
    assert!(eventually(Duration::from_secs(5), || in_line(&server, "keep") == 1).await);
    let err = fair_acquire(&hasty, "keep", Duration::from_millis(800))
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Timeout { .. }), "{err:?}");
    // Longer than the hasty ticket's keep: had its refreshes shortened the line's expiry, the
    // patient waiter's ticket would be gone with it.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(
        in_line(&server, "keep"),
        1,
        "the first waiter kept its place"
    );
    assert!(held.release().await.unwrap());
    let g = first.await.unwrap().unwrap();
    assert!(g.release().await.unwrap());
}

/// Fair mode across processes: 8 workers contend for one lock for 3 s, each holding it 5 ms.
/// Every worker gets within 10% of the mean number of turns, and nobody waits much longer than
/// the line (8 waiters) times the hold. The same run without `fair` is reported beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_processes_share_a_fair_lock_evenly() {
    let mut figures = Vec::new();
    for fair in [true, false] {
        let (lock, resource) = (RedisServer::start(), RedisServer::start());
        let name = if fair { "fair" } else { "unfair" };
        let workers: Vec<Child> = (0..8)
            .map(|_| {
                checker(&lock, &resource, name, "contend")
                    .args(["--iterations", "0"])
                    .args([
                        "--fair",
                        if fair { "1" } else { "0" },
                        "--hold-ms",
                        "5",
                        "--ttl-ms",
                        "5000",
                    ])
                    .spawn()
                    .expect("start lock-checker")
            })
            .collect();
        let ready = format!("checker:{name}:ready");
        assert!(
            eventually(Duration::from_secs(20), || {
                let n: Option<u64> = resource.query(redis::cmd("GET").arg(&ready));
                n == Some(8)
            })
            .await
        );
        let _: () = resource.query(redis::cmd("SET").arg(format!("checker:{name}:go")).arg(1));
        tokio::time::sleep(Duration::from_secs(3 * soak())).await;
        let _: () = resource.query(redis::cmd("SET").arg(format!("checker:{name}:stop")).arg(1));
        let outputs = tokio::task::spawn_blocking(move || {
            workers
                .into_iter()
                .map(|w| w.wait_with_output().unwrap())
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        let mut turns = Vec::new();
        let mut longest_ms = 0u64;
        for out in outputs {
            assert!(out.status.success(), "a worker failed: {out:?}");
            let text = String::from_utf8(out.stdout).unwrap();
            for line in text.lines() {
                if let Some(ms) = line.strip_prefix("LONGEST_WAIT_MS ") {
                    longest_ms = longest_ms.max(ms.parse().unwrap());
                }
                if let Some(result) = line.strip_prefix("RESULT ") {
                    let acquisitions = result
                        .split_whitespace()
                        .find_map(|f| f.strip_prefix("acquisitions="))
                        .unwrap();
                    turns.push(acquisitions.parse::<u64>().unwrap());
                }
            }
        }
        let total: u64 = turns.iter().sum();
        assert_eq!(
            counter(&resource, name, "counter"),
            total,
            "{name}: no lost update"
        );
        let mean = total as f64 / turns.len() as f64;
        let spread = (*turns.iter().max().unwrap() - *turns.iter().min().unwrap()) as f64 / mean;
        figures.push(format!(
            "{name}: turns per process {turns:?} (spread {:.0}% of the mean), longest wait {longest_ms} ms",
            spread * 100.0
        ));
        if fair {
            assert!(
                spread <= 0.10,
                "fair turns spread {:.0}% of the mean: {turns:?}",
                spread * 100.0
            );
            // 8 in line, 5 ms each plus a handoff: about 50 ms; a generous bound for a shared VM.
            assert!(longest_ms < 1000, "a fair waiter waited {longest_ms} ms");
        }
    }
    report(
        "fair vs unfair, 8 processes, 5 ms holds",
        &figures.join("; "),
    );
}

// ---- Permits and shared holds ----

/// Runs `workers` permit workers of `iterations` each, asking for `permits` and checking the
/// bound `bound`: (acquisitions, entries that found more than `bound` inside, most inside).
fn run_permit_workers(
    lock: &RedisServer,
    resource: &RedisServer,
    name: &str,
    workers: u64,
    iterations: u64,
    permits: u32,
    bound: u64,
) -> (u64, u64, u64) {
    let children: Vec<Child> = (0..workers)
        .map(|_| {
            checker(lock, resource, name, "permits")
                .args(["--iterations", &iterations.to_string()])
                .args(["--permits", &permits.to_string()])
                .args(["--bound", &bound.to_string()])
                .args(["--hold-ms", "2", "--ttl-ms", "2000", "--wait-ms", "30000"])
                .spawn()
                .expect("start lock-checker")
        })
        .collect();
    let (mut acquisitions, mut overlaps, mut most) = (0, 0, 0);
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "a permit worker failed: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        acquisitions += field(&text, "RESULT ", "acquisitions");
        overlaps += field(&text, "PERMITS ", "overlaps");
        most = most.max(field(&text, "PERMITS ", "most"));
    }
    (acquisitions, overlaps, most)
}

/// Six processes on `permits(3)`: never more than three inside over 10,000 acquisitions, with
/// a counter of holders on a separate Redis; the same workers asking for four permits while
/// the check still counts to three (the canary) see the overlap.
#[test]
fn permits_across_six_processes_never_exceed_n_and_the_canary_does() {
    let lock = RedisServer::start();
    let resource = RedisServer::start();
    let began = std::time::Instant::now();
    let (acquisitions, overlaps, most) =
        run_permit_workers(&lock, &resource, "pool", 6, 10_000 / 6 + 1, 3, 3);
    let took = began.elapsed();
    assert!(acquisitions >= 10_000);
    assert_eq!(overlaps, 0, "more than 3 holders inside ({most} at most)");
    assert_eq!(most, 3, "the three permits were used at once");
    let (canary_acq, canary_overlaps, canary_most) =
        run_permit_workers(&lock, &resource, "canary", 6, 100, 4, 3);
    assert!(
        canary_overlaps > 0 && canary_most == 4,
        "the canary (4 permits checked against 3) must see a 4th holder: {canary_overlaps} overlaps, {canary_most} at most"
    );
    report(
        "permits across 6 processes",
        &format!(
            "permits(3): {acquisitions} acquisitions in {:.1} s, at most {most} inside, {overlaps} entries over 3; canary permits(4) checked against 3: {canary_overlaps} of {canary_acq} entries over 3, {canary_most} at most",
            took.as_secs_f64()
        ),
    );
    assert!(
        lock.lock_keys().is_empty(),
        "no permit left: {:?}",
        lock.lock_keys()
    );
}

/// What `rw` workers saw together: entries, violations, most readers inside at once, reads,
/// writes.
struct RwRun {
    acquisitions: u64,
    violations: u64,
    most_readers: u64,
    reads: u64,
    writes: u64,
}

/// Runs `workers` `rw` workers of `iterations` each on `name`; with `unlocked_writers` (the
/// canary), writers take shared holds too.
fn run_rw_workers(
    lock: &RedisServer,
    resource: &RedisServer,
    name: &str,
    workers: u64,
    iterations: u64,
    unlocked_writers: bool,
) -> RwRun {
    let children: Vec<Child> = (0..workers)
        .map(|_| {
            checker(lock, resource, name, "rw")
                .args(["--iterations", &iterations.to_string()])
                .args(["--writers-pct", "25", "--hold-ms", "3"])
                .args(["--ttl-ms", "2000", "--wait-ms", "30000"])
                .args([
                    "--unlocked-writers",
                    if unlocked_writers { "1" } else { "0" },
                ])
                .spawn()
                .expect("start lock-checker")
        })
        .collect();
    let mut run = RwRun {
        acquisitions: 0,
        violations: 0,
        most_readers: 0,
        reads: 0,
        writes: 0,
    };
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "an rw worker failed: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        run.acquisitions += field(&text, "RESULT ", "acquisitions");
        run.violations += field(&text, "RW ", "violations");
        run.most_readers = run.most_readers.max(field(&text, "RW ", "most_readers"));
        run.reads += field(&text, "RW ", "reads");
        run.writes += field(&text, "RW ", "writes");
    }
    run
}

/// Six processes, each a reader (shared hold) or a writer (exclusive) at random: no reader
/// ever sees a writer inside and no writer sees anyone, while readers do share; the writers'
/// non-atomic read-modify-write of a counter loses no update. The same workers whose writers
/// take shared holds too (the canary) see readers and writers meet.
#[test]
fn shared_holds_across_six_processes_never_meet_a_writer_and_the_canary_does() {
    let lock = RedisServer::start();
    let resource = RedisServer::start();
    let began = std::time::Instant::now();
    let run = run_rw_workers(&lock, &resource, "catalog", 6, 300, false);
    let took = began.elapsed();
    assert_eq!(run.acquisitions, 1800);
    assert_eq!(run.violations, 0, "a reader met a writer, or writers met");
    assert!(run.most_readers >= 2, "shared holds never overlapped");
    assert!(run.writes > 0 && run.reads > 0);
    let counter: Option<u64> = resource.query(redis::cmd("GET").arg("checker:catalog:counter"));
    assert_eq!(counter, Some(run.writes), "a write was lost");
    let canary = run_rw_workers(&lock, &resource, "canary", 6, 100, true);
    assert!(
        canary.violations > 0,
        "the canary (writers on shared holds) must see readers and writers meet"
    );
    report(
        "shared holds across 6 processes",
        &format!(
            "{} entries ({} reads, {} writes) in {:.1} s, up to {} readers at once, 0 violations, counter = writes; canary: {} violations in {} entries",
            run.acquisitions,
            run.reads,
            run.writes,
            took.as_secs_f64(),
            run.most_readers,
            canary.violations,
            canary.acquisitions
        ),
    );
    assert!(lock.lock_keys().is_empty(), "{:?}", lock.lock_keys());
}

/// Four readers whose shared holds overlap without a gap (a reader is always inside) cannot
/// starve a writer: once it waits, new shared holds wait behind it, and it takes the lock when
/// the holds live at its arrival end. Then the readers go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_is_not_starved_by_a_stream_of_overlapping_readers() {
    let lock = RedisServer::start();
    let locks = LockManager::connect(&lock.url()).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..4u64)
        .map(|i| {
            let (locks, stop, reads) = (locks.clone(), stop.clone(), reads.clone());
            tokio::spawn(async move {
                // Staggered, so that their holds overlap: some reader is always inside.
                tokio::time::sleep(Duration::from_millis(25 * i)).await;
                while !stop.load(Ordering::SeqCst) {
                    let guard = locks
                        .lock("catalog")
                        .shared(true)
                        .ttl(Duration::from_secs(5))
                        .wait(LONG)
                        .acquire()
                        .await
                        .unwrap();
                    reads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    assert!(guard.release().await.unwrap());
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (asked, reads_before) = (Instant::now(), reads.load(Ordering::SeqCst));
    let writer = locks
        .lock("catalog")
        .ttl(LONG)
        .wait(Duration::from_secs(20))
        .acquire()
        .await
        .expect("the writer gets in among a stream of readers");
    let waited = asked.elapsed();
    let reads_during = reads.load(Ordering::SeqCst) - reads_before;
    assert!(writer.release().await.unwrap());
    // The readers go on after the write.
    let after = reads.load(Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(10), || reads.load(Ordering::SeqCst)
            > after + 4)
        .await
    );
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        r.await.unwrap();
    }
    report(
        "writer among a stream of readers",
        &format!(
            "4 readers holding 100 ms each, overlapping: the writer waited {} ms; {reads_during} shared holds were granted while it waited (those already asked for)",
            waited.as_millis()
        ),
    );
}

/// A reader killed with kill -9 keeps the name from writers until its lease ends, and not
/// longer; so does a killed writer from readers. Nothing is left after.
#[tokio::test]
async fn killed_shared_holders_and_writers_free_the_name_at_their_lease_end() {
    let lock = RedisServer::start();
    let locks = LockManager::connect(&lock.url()).await.unwrap();
    for writer_killed in [false, true] {
        let mut holder = checker(&lock, &lock, "catalog", "shared-hold")
            .args(["--ttl-ms", "1500"])
            .args(["--writers-pct", if writer_killed { "100" } else { "0" }])
            .spawn()
            .unwrap();
        let mut out = BufReader::new(holder.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "HOLDING");
        // The watchdog renews a few times; kill it right after a renewal would be due.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let theirs = locks.inspect("catalog").await.unwrap().expect("held");
        assert_eq!(theirs.shared, !writer_killed);
        let left_at_kill = theirs.remaining.expect("a lease");
        // The operator's view of a live holder: its lease and watchdog, renewed within a third
        // of its ttl (plus a loaded machine's margin).
        assert_eq!(
            (theirs.ttl, theirs.auto_extend),
            (Some(Duration::from_millis(1500)), true)
        );
        assert!(
            theirs.renewed_ago.expect("known") < Duration::from_millis(1100),
            "{theirs:?}"
        );
        let killed = Instant::now();
        holder.kill().unwrap();
        holder.wait().unwrap();
        // The dead holder's: the time since its last renewal grows past what a live watchdog
        // allows, until the lock ends by itself.
        let dead = loop {
            match locks.inspect("catalog").await.unwrap() {
                Some(info) if info.renewed_ago.expect("known") >= Duration::from_millis(800) => {
                    break Some(info)
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                None => break None,
            }
        };
        let dead = dead.expect("seen stale before it expired");
        assert!(
            dead.remaining.expect("a lease") <= Duration::from_millis(700),
            "{dead:?}"
        );
        let taken = locks
            .lock("catalog")
            .shared(writer_killed)
            .wait(Duration::from_secs(10))
            .acquire()
            .await
            .expect("the name frees at the killed holder's lease end");
        let after = killed.elapsed();
        assert!(
            after + Duration::from_millis(50) >= left_at_kill,
            "taken after {after:?}, before the lease ({left_at_kill:?} left) ended"
        );
        assert!(
            after < Duration::from_millis(1500) + Duration::from_secs(2),
            "{after:?}"
        );
        report(
            if writer_killed {
                "killed writer, waiting reader"
            } else {
                "killed reader, waiting writer"
            },
            &format!(
                "lease 1.5 s with the watchdog, {} ms left at kill -9, taken {} ms after the kill",
                left_at_kill.as_millis(),
                after.as_millis()
            ),
        );
        assert!(taken.release().await.unwrap());
    }
    assert!(lock.lock_keys().is_empty(), "{:?}", lock.lock_keys());
}

/// A holder killed with kill -9 keeps its permit until its lease ends, and not longer: a
/// waiter gets it then.
#[tokio::test]
async fn a_killed_permit_holder_frees_its_permit_at_its_lease_end() {
    let lock = RedisServer::start();
    let locks = LockManager::connect(&lock.url()).await.unwrap();
    let mut holder = checker(&lock, &lock, "reports", "permit-hold")
        .args(["--permits", "2", "--ttl-ms", "1500"])
        .spawn()
        .unwrap();
    let mut out = BufReader::new(holder.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "HOLDING");
    let mine = locks.lock("reports").permits(2).acquire().await.unwrap();
    assert!(locks
        .lock("reports")
        .permits(2)
        .try_acquire()
        .await
        .unwrap()
        .is_none());

    // Let the watchdog renew a few times, then kill it right after a renewal would be due.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let theirs = locks.list("reports").await.unwrap();
    let left_at_kill = theirs
        .iter()
        .filter_map(|i| i.remaining)
        .min()
        .expect("the killed holder's permit");
    let killed = Instant::now();
    holder.kill().unwrap();
    holder.wait().unwrap();
    let taken = locks
        .lock("reports")
        .permits(2)
        .wait(Duration::from_secs(10))
        .acquire()
        .await
        .expect("the permit frees at its lease end");
    let after = killed.elapsed();
    assert!(
        after + Duration::from_millis(50) >= left_at_kill,
        "freed after {after:?}, before its lease ({left_at_kill:?} left) ended"
    );
    assert!(
        after < Duration::from_millis(1500) + Duration::from_secs(2),
        "{after:?}"
    );
    report(
        "killed permit holder",
        &format!(
            "lease 1.5 s with the watchdog, {} ms left at kill -9, permit taken by a waiter {} ms after the kill",
            left_at_kill.as_millis(),
            after.as_millis()
        ),
    );
    assert!(mine.release().await.unwrap());
    assert!(taken.release().await.unwrap());
}

/// 10,000 permit acquires cancelled in flight, the lock sometimes full and sometimes not: once
/// `shutdown` has finished the background clean-ups (and given back the permit held on
/// purpose), no permit is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_cancelled_permit_acquires_leave_no_permit_behind() {
    let lock = RedisServer::start();
    let locks = LockManager::connect(&lock.url()).await.unwrap();
    let held = locks.lock("cancel").permits(3).acquire().await.unwrap();
    let (mut cancelled, mut completed, mut refused) = (0u64, 0u64, 0u64);
    let mut i = 0u64;
    while cancelled < 10_000 {
        i += 1;
        let request = locks
            .lock("cancel")
            .permits(3)
            .ttl(LONG)
            .wait(if i.is_multiple_of(3) {
                Duration::from_millis(50)
            } else {
                Duration::ZERO
            });
        // Cut after one poll (the attempt is on the wire), now and then after two (it may
        // have been answered, or be waiting for the lock).
        let polls = if i.is_multiple_of(10) { 2 } else { 1 };
        match cancel_after_polls(request.acquire(), polls).await {
            None => cancelled += 1,
            Some(Ok(guard)) => {
                // Completed before the cut: a real holder, let go at once.
                completed += 1;
                drop(guard);
            }
            // The other two permits taken, for now, by attempts cut before this one whose
            // clean-up is still in flight (a loaded machine runs it late): refused, as any
            // request is while n are held.
            Some(Err(LockError::Busy { .. } | LockError::Timeout { .. })) => refused += 1,
            Some(Err(e)) => panic!("{e}"),
        }
    }
    locks.shutdown(Duration::from_secs(10)).await.unwrap();
    let left = LockManager::connect(&lock.url())
        .await
        .unwrap()
        .list("cancel")
        .await
        .unwrap();
    // `shutdown` gave back the permit held on purpose too.
    assert!(left.is_empty(), "permits left behind: {left:?}");
    assert!(held.is_lost());
    report(
        "cancelled permit acquires",
        &format!(
            "10,000 cancelled after 1 or 2 polls ({completed} more completed first, {refused} refused while earlier ones were being cleaned up), 0 permits left"
        ),
    );
}

/// A permit keeps its own watchdog, loss signal and `min_hold`, like a lock.
#[tokio::test]
async fn a_permit_has_its_own_watchdog_loss_signal_and_min_hold() {
    let lock = RedisServer::start();
    let locks = LockManager::connect(&lock.url()).await.unwrap();
    let kept = locks
        .lock("etl")
        .permits(2)
        .ttl(Duration::from_secs(1))
        .auto_extend(true)
        .acquire()
        .await
        .unwrap();
    let other = locks
        .lock("etl")
        .permits(2)
        .ttl(Duration::from_secs(1))
        .acquire()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!kept.is_lost(), "renewed by its watchdog");
    assert!(other.is_lost(), "not renewed: its own lease ran out");
    // A permit taken away (an operator's force-release takes them all) is reported lost at the
    // next renewal.
    assert!(locks.force_release("etl").await.unwrap());
    tokio::time::timeout(Duration::from_secs(2), kept.lost())
        .await
        .expect("the watchdog reports the loss");
    drop((kept, other));

    // min_hold: the released permit stays taken until the minimum hold ends.
    let short = locks
        .lock("etl")
        .permits(2)
        .min_hold(Duration::from_secs(2))
        .acquire()
        .await
        .unwrap();
    let second = locks.lock("etl").permits(2).acquire().await.unwrap();
    assert!(short.release().await.unwrap());
    assert!(
        locks
            .lock("etl")
            .permits(2)
            .try_acquire()
            .await
            .unwrap()
            .is_none(),
        "kept until min_hold ends"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let third = locks.lock("etl").permits(2).try_acquire().await.unwrap();
    assert!(third.is_some(), "free once min_hold ended");
    drop((second, third));
}

/// `#[distributed_lock(permits = 2)]`: two calls run at once, a third is refused.
/// A permit extended to a shorter lease brings the key's expiry down with it: once that
/// permit ends, nobody holds the name and a plain lock takes it. Regression: the hash kept its
/// first expiry (only ever moved later), so the lock was refused with `PermitsMismatch` or
/// `Busy` while no permit was live.
#[tokio::test]
async fn a_permit_extended_to_a_shorter_lease_leaves_no_hash_behind() {
    let server = RedisServer::start();
    let locks = LockManager::connect(&server.url()).await.unwrap();
    let permit = locks
        .lock("shortened")
        .permits(2)
        .ttl(Duration::from_secs(30))
        .acquire()
        .await
        .unwrap();
    assert!(permit.extend(Duration::from_millis(300)).await.unwrap());
    let pttl: i64 = server.query(redis::cmd("PTTL").arg(locks.key_for("shortened")));
    assert!(pttl <= 301, "the key outlives its only permit: {pttl} ms");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lock = locks
        .try_acquire("shortened", Duration::from_secs(5))
        .await
        .unwrap()
        .expect("nobody holds it");
    assert!(lock.release().await.unwrap());
    assert!(!permit.release().await.unwrap(), "its lease had ended");
}

#[tokio::test]
async fn the_attribute_takes_permits() {
    let lock = RedisServer::start();
    let locks = LockManager::connect(&lock.url()).await.unwrap();

    #[distributed_lock(key = "partner:{partner}", ttl = "10s", permits = 2, manager = locks)]
    async fn call_partner(
        locks: &LockManager,
        partner: &str,
        inside: &AtomicU64,
        go: &tokio::sync::Notify,
    ) -> Result<u64, LockError> {
        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
        go.notified().await;
        inside.fetch_sub(1, Ordering::SeqCst);
        Ok(now)
    }

    let inside = AtomicU64::new(0);
    let go = tokio::sync::Notify::new();
    let first = call_partner(&locks, "acme", &inside, &go);
    let second = call_partner(&locks, "acme", &inside, &go);
    let third = async {
        assert!(
            eventually(Duration::from_secs(5), || inside.load(Ordering::SeqCst)
                == 2)
            .await
        );
        let refused = call_partner(&locks, "acme", &inside, &go).await;
        go.notify_waiters();
        refused
    };
    let (a, b, c) = tokio::join!(first, second, third);
    assert_eq!(a.unwrap().max(b.unwrap()), 2, "both ran at once");
    assert!(matches!(c, Err(LockError::Busy { .. })), "{c:?}");
    // A plain lock on the same name is refused: the permits differ.
    let permit = locks
        .lock("partner:acme")
        .permits(2)
        .acquire()
        .await
        .unwrap();
    let plain = locks.acquire("partner:acme", LONG, Duration::ZERO).await;
    assert!(
        matches!(
            plain,
            Err(LockError::PermitsMismatch {
                held: 2,
                requested: 1,
                ..
            })
        ),
        "{plain:?}"
    );
    assert!(permit.release().await.unwrap());
}

// ---- Leader election ----

/// Samples `is_leader()` of each handle every millisecond for `span`: panics if two say leader
/// at once; returns how many samples each said it.
async fn sample_leaders(leaders: &[&lock_core::Leader], span: Duration) -> Vec<u64> {
    let mut said = vec![0; leaders.len()];
    let end = Instant::now() + span;
    while Instant::now() < end {
        let now: Vec<bool> = leaders.iter().map(|l| l.is_leader()).collect();
        assert!(
            now.iter().filter(|l| **l).count() <= 1,
            "two leaders: {now:?}"
        );
        for (i, l) in now.iter().enumerate() {
            said[i] += u64::from(*l);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    said
}

/// Three handles: one leads, the others wait; a resign or a drop hands over at once (woken by
/// the release, not by the lease's end).
#[tokio::test]
async fn one_of_three_leads_and_resign_or_drop_hands_over() {
    let lock = RedisServer::start();
    let mut managers = Vec::new();
    for _ in 0..3 {
        managers.push(LockManager::connect(&lock.url()).await.unwrap());
    }
    let ttl = Duration::from_secs(20);
    let mut leaders: Vec<Option<lock_core::Leader>> = managers
        .iter()
        .map(|m| Some(m.leader("scheduler").ttl(ttl).start()))
        .collect();
    let current = |leaders: &[Option<lock_core::Leader>]| {
        leaders
            .iter()
            .position(|l| l.as_ref().is_some_and(|l| l.is_leader()))
    };
    assert!(eventually(Duration::from_secs(5), || current(&leaders).is_some()).await);
    let live: Vec<&lock_core::Leader> = leaders.iter().flatten().collect();
    let said = sample_leaders(&live, Duration::from_millis(300)).await;
    assert_eq!(said.iter().filter(|s| **s > 0).count(), 1, "{said:?}");

    let first = current(&leaders).unwrap();
    let mut watch = leaders[first].as_ref().unwrap().watch();
    assert!(*watch.borrow_and_update());
    let handed = Instant::now();
    leaders[first].take().unwrap().resign().await.unwrap();
    assert!(eventually(Duration::from_secs(5), || current(&leaders).is_some()).await);
    assert!(
        handed.elapsed() < ttl / 4,
        "woken by the release: {:?}",
        handed.elapsed()
    );
    let second = current(&leaders).unwrap();
    assert_ne!(second, first);

    let handed = Instant::now();
    drop(leaders[second].take());
    assert!(eventually(Duration::from_secs(5), || current(&leaders).is_some()).await);
    assert!(
        handed.elapsed() < ttl / 4,
        "a drop resigns: {:?}",
        handed.elapsed()
    );
    let third = current(&leaders).unwrap();
    assert!(third != first && third != second);
    let last = leaders[third].take().unwrap();
    let mut watch = last.watch();
    assert!(*watch.borrow_and_update());
    last.resign().await.unwrap();
    assert!(lock.lock_keys().is_empty(), "{:?}", lock.lock_keys());
}

/// A leader cut off from Redis stops saying it leads at its local deadline, before another
/// handle is elected; once it can reach Redis again it does not lead while the other does.
#[tokio::test]
async fn a_leader_cut_off_from_redis_steps_down_before_another_is_elected() {
    let lock = RedisServer::start();
    let proxy = FaultProxy::start(lock.port()).await;
    let cut_off = LockManager::builder()
        .url(&proxy.url())
        .response_timeout(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let direct = LockManager::connect(&lock.url()).await.unwrap();
    let ttl = Duration::from_millis(900);
    let a = cut_off.leader("warmer").ttl(ttl).start();
    assert!(eventually(Duration::from_secs(5), || a.is_leader()).await);
    let b = direct.leader("warmer").ttl(ttl).start();
    let mut a_state = a.watch();

    proxy.blackhole(true);
    let cut = Instant::now();
    let (mut a_last, mut b_first) = (None, None);
    while b_first.is_none() && cut.elapsed() < Duration::from_secs(10) {
        let (la, lb) = (a.is_leader(), b.is_leader());
        assert!(!(la && lb), "two leaders");
        if la {
            a_last = Some(Instant::now());
        }
        if lb {
            b_first = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (a_last, b_first) = (a_last.expect("a led"), b_first.expect("b was elected"));
    assert!(a_last < b_first);
    assert!(
        a_last.duration_since(cut) < ttl,
        "a stepped down within its lease"
    );
    assert!(!*a_state.borrow_and_update(), "the watch says it too");
    report(
        "leader cut off from Redis",
        &format!(
            "ttl {} ms: the cut-off leader last said it led {} ms after the cut, the other was elected {} ms after the cut",
            ttl.as_millis(),
            a_last.duration_since(cut).as_millis(),
            b_first.duration_since(cut).as_millis()
        ),
    );

    proxy.blackhole(false);
    // The healed partition resets its connections (the blackhole dropped bytes of open
    // connections, which TCP never does silently).
    proxy.cut_all();
    let said = sample_leaders(&[&a, &b], Duration::from_millis(1500)).await;
    assert_eq!(said[0], 0, "the old leader campaigns but does not lead");
    assert!(said[1] > 0);
    b.resign().await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || a.is_leader()).await,
        "it campaigns again"
    );
    a.resign().await.unwrap();
}

/// `run_while_leader`: the work starts when elected, is cancelled on loss (here an operator's
/// force-release, found by the next renewal), and starts again once leadership is won back.
#[tokio::test]
async fn run_while_leader_cancels_the_work_on_loss_and_runs_it_again() {
    let lock = RedisServer::start();
    let locks = LockManager::connect(&lock.url()).await.unwrap();
    let leader = locks
        .leader("consumer")
        .ttl(Duration::from_millis(600))
        .start();
    let starts = Arc::new(AtomicU64::new(0));
    let cancelled = Arc::new(AtomicU64::new(0));
    let finish = Arc::new(AtomicBool::new(false));

    struct OnDrop(Arc<AtomicU64>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    let work = leader.run_while_leader(|| {
        let (starts, cancelled, finish) = (starts.clone(), cancelled.clone(), finish.clone());
        async move {
            starts.fetch_add(1, Ordering::SeqCst);
            let _armed = OnDrop(cancelled);
            while !finish.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            std::mem::forget(_armed); // finished, not cancelled
        }
    });
    let drive = async {
        assert!(
            eventually(Duration::from_secs(5), || starts.load(Ordering::SeqCst)
                == 1)
            .await
        );
        assert!(locks.force_release("consumer").await.unwrap());
        assert!(
            eventually(Duration::from_secs(5), || cancelled.load(Ordering::SeqCst)
                == 1)
            .await,
            "cancelled on loss"
        );
        assert!(
            eventually(Duration::from_secs(5), || starts.load(Ordering::SeqCst)
                == 2)
            .await,
            "run again once leading again"
        );
        finish.store(true, Ordering::SeqCst);
    };
    let (done, ()) = tokio::join!(work, drive);
    done.unwrap();
    assert_eq!(cancelled.load(Ordering::SeqCst), 1);
    assert!(
        leader.is_leader(),
        "the work finished; the handle still leads"
    );
    leader.resign().await.unwrap();

    // A campaign that cannot succeed ends with its error.
    let bad = locks.leader("").start();
    let err = bad.run_while_leader(|| async {}).await.unwrap_err();
    assert!(matches!(err, LockError::InvalidName { .. }), "{err:?}");
    let again = bad.run_while_leader(|| async {}).await.unwrap_err();
    assert!(
        matches!(again, LockError::InvalidName { .. }),
        "every caller learns it"
    );
    assert!(matches!(
        bad.resign().await,
        Err(LockError::InvalidName { .. })
    ));

    // A follower's campaign ends with its manager's shutdown, while another process leads.
    let elsewhere = LockManager::connect(&lock.url()).await.unwrap();
    let leading = elsewhere.leader("consumer").start();
    assert!(eventually(Duration::from_secs(5), || leading.is_leader()).await);
    let follower = locks.leader("consumer").start();
    let followed = follower.run_while_leader(std::future::pending::<()>);
    let (ran, ()) = tokio::time::timeout(Duration::from_secs(5), async {
        tokio::join!(followed, async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            locks.shutdown(Duration::from_secs(5)).await.unwrap();
        })
    })
    .await
    .expect("run_while_leader of a follower returns once its manager is shut down");
    ran.unwrap();
    leading.resign().await.unwrap();
    drop(follower);

    // `shutdown` gives the lock back and ends the campaign: `run_while_leader` returns.
    let locks = LockManager::connect(&lock.url()).await.unwrap();
    let leader = locks.leader("consumer").start();
    assert!(eventually(Duration::from_secs(5), || leader.is_leader()).await);
    let run = leader.run_while_leader(std::future::pending::<()>);
    let stop = async {
        locks.shutdown(Duration::from_secs(5)).await.unwrap();
    };
    let (ran, ()) = tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(run, stop) })
        .await
        .expect("run_while_leader returns once the manager is shut down");
    ran.unwrap();
    assert!(!leader.is_leader());
    assert!(lock.lock_keys().is_empty(), "{:?}", lock.lock_keys());
    leader.resign().await.unwrap();
}

/// A name held with permits is no lock: the campaign backs off and tries again, and leads once
/// the permits are given back.
#[tokio::test]
async fn a_leader_waits_out_a_name_held_with_permits() {
    let lock = RedisServer::start();
    let locks = LockManager::connect(&lock.url()).await.unwrap();
    let permit = locks.lock("cron").permits(2).acquire().await.unwrap();
    let leader = locks.leader("cron").start();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(!leader.is_leader());
    assert!(permit.release().await.unwrap());
    assert!(eventually(Duration::from_secs(10), || leader.is_leader()).await);
    leader.resign().await.unwrap();
}

/// In memory, under paused time: handlers that use leaders are testable without Redis.
#[tokio::test(start_paused = true)]
async fn leaders_in_memory_hand_over_on_resign() {
    let locks = LockManager::in_memory();
    let a = locks.leader("tick").ttl(Duration::from_secs(10)).start();
    let b = locks.leader("tick").ttl(Duration::from_secs(10)).start();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(a.is_leader() ^ b.is_leader());
    // An hour later (renewed all along), still one leader.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(a.is_leader() ^ b.is_leader());
    let (leading, waiting) = if a.is_leader() { (a, b) } else { (b, a) };
    leading.resign().await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(waiting.is_leader());
}

/// A `lock-checker --mode leader` process and what it printed so far.
struct Campaigner {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Arc<Mutex<Vec<String>>>,
    /// CLOCK_MONOTONIC when it was killed with kill -9.
    killed_at: Option<u64>,
}

impl Campaigner {
    fn start(lock: &RedisServer, ttl_ms: u64) -> Self {
        let mut child = checker(lock, lock, "leader", "leader")
            .args(["--ttl-ms", &ttl_ms.to_string()])
            .stdin(Stdio::piped())
            .spawn()
            .expect("start lock-checker");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self {
            stdin: child.stdin.take(),
            child,
            lines,
            killed_at: None,
        }
    }

    /// The start (CLOCK_MONOTONIC before its sample) of its open term, if it leads.
    fn leading_since(&self) -> Option<u64> {
        let lines = self.lines.lock().unwrap();
        let last = lines.iter().rev().find(|l| l.starts_with("TERM-"))?;
        let start = last.strip_prefix("TERM-START ")?;
        start.split_whitespace().next()?.parse().ok()
    }

    /// Its terms: (first sample's start, last sample's end), the open one ending at `end`.
    fn terms(&self, end: u64) -> Vec<(u64, u64)> {
        let mut terms = Vec::new();
        let mut open = None;
        for line in self.lines.lock().unwrap().iter() {
            let nums: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|n| n.parse().ok())
                .collect();
            if line.starts_with("TERM-START ") {
                open = Some(nums[0]);
            } else if line.starts_with("TERM-END ") {
                terms.push((open.take().expect("a start before an end"), nums[1]));
            }
        }
        if let Some(start) = open {
            terms.push((start, end));
        }
        terms
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success());
    }
}

/// Waits until exactly one campaigner other than `not` leads, started at or after `since`:
/// its index and the start of its term.
fn wait_for_leader(all: &[Campaigner], not: Option<usize>, since: u64) -> (usize, u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let leading: Vec<(usize, u64)> = all
            .iter()
            .enumerate()
            .filter(|(i, c)| Some(*i) != not && c.killed_at.is_none())
            .filter_map(|(i, c)| Some((i, c.leading_since()?)))
            .filter(|(_, at)| *at >= since)
            .collect();
        if let [one] = leading[..] {
            return one;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no single new leader: {leading:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Percentiles of handover times in ms: min / median / p90 / max.
fn spread(mut ms: Vec<u64>) -> String {
    ms.sort_unstable();
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    format!(
        "min {} / median {} / p90 {} / max {} ms",
        at(0.0),
        at(0.5),
        at(0.9),
        at(1.0)
    )
}

/// Five processes campaign on one name; the leader is killed with kill -9, and paused with
/// SIGSTOP past its ttl, `LOCK_LEADER_ROUNDS` times each. Each process logs its terms with
/// CLOCK_MONOTONIC (one clock for all); after the run, no two terms of different processes
/// overlap, and every new leader started after the old lease's end (as Redis had it at the
/// signal) and within 750 ms of it.
#[test]
fn leader_election_across_five_processes_survives_kill_and_sigstop() {
    let rounds: usize = std::env::var("LOCK_LEADER_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let ttl_ms = 1000;
    let lock = RedisServer::start();
    let mut all: Vec<Campaigner> = (0..5).map(|_| Campaigner::start(&lock, ttl_ms)).collect();
    let (mut after_kill, mut after_stop) = (Vec::new(), Vec::new());
    // How long after the lease end, as Redis had it at the signal, each new leader started.
    let mut past_lease_end: Vec<i64> = Vec::new();
    let (mut leader, _) = wait_for_leader(&all, None, 0);
    for round in 0..rounds * 2 {
        // Let it lead (and renew) a little first.
        std::thread::sleep(Duration::from_millis(300 + (round as u64 * 37) % 400));
        // Read before the lease time: the lease ends at or after `asked` + `left_ms`.
        let asked = monotonic_ns();
        let left_ms: i64 = lock.query(redis::cmd("PTTL").arg("lock:{leader}"));
        assert!(left_ms > 0, "the leader's key has a lease: {left_ms}");
        let at = monotonic_ns();
        let past = |started: u64| ((started - asked) / 1_000_000) as i64 - left_ms;
        if round % 2 == 0 {
            all[leader].signal("-KILL");
            all[leader].killed_at = Some(at);
            let (next, started) = wait_for_leader(&all, Some(leader), at);
            after_kill.push((started - at) / 1_000_000);
            past_lease_end.push(past(started));
            let _ = all[leader].child.wait();
            all.push(Campaigner::start(&lock, ttl_ms)); // five campaign again
            leader = next;
        } else {
            all[leader].signal("-STOP");
            let (next, started) = wait_for_leader(&all, Some(leader), at);
            after_stop.push((started - at) / 1_000_000);
            past_lease_end.push(past(started));
            all[leader].signal("-CONT");
            // It finds out it lost: its term ends (it printed nothing while stopped).
            let resumed = std::time::Instant::now();
            while all[leader].leading_since().is_some() {
                assert!(
                    resumed.elapsed() < Duration::from_secs(5),
                    "it never stepped down"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            leader = next;
        }
    }
    let end = monotonic_ns();
    for c in &mut all {
        drop(c.stdin.take()); // a closed stdin: resign and exit
    }
    let mut terms: Vec<(usize, u64, u64)> = Vec::new();
    for (i, c) in all.iter_mut().enumerate() {
        if c.killed_at.is_none() {
            let out = c.child.wait().unwrap();
            assert!(out.success(), "campaigner {i} failed: {out:?}");
        }
        let end = c.killed_at.unwrap_or(end);
        terms.extend(c.terms(end).into_iter().map(|(a, b)| (i, a, b)));
    }
    let mut overlaps = Vec::new();
    for (x, &(i, a_start, a_end)) in terms.iter().enumerate() {
        for &(j, b_start, b_end) in &terms[x + 1..] {
            if i != j && a_start <= b_end && b_start <= a_end {
                overlaps.push((i, j, (a_end.min(b_end) - a_start.max(b_start)) / 1_000));
            }
        }
    }
    assert!(
        overlaps.is_empty(),
        "two leaders at once (µs): {overlaps:?}"
    );
    // How close the next leader came: from the last sample of one term to the first of the
    // next (another process's).
    let mut by_start = terms.clone();
    by_start.sort_by_key(|t| t.1);
    let closest_gap_us = by_start
        .windows(2)
        .filter(|w| w[0].0 != w[1].0)
        .map(|w| w[1].1.saturating_sub(w[0].2) / 1_000)
        .min()
        .unwrap_or(0);
    // The followers never poll (see the checker): each takes over at the lease end its
    // refused attempts were told, plus one attempt. 750 ms past it leaves room for a loaded
    // machine and still catches a follower a whole ttl (1 s) late; one that missed the lease
    // end would take a minute, past `wait_for_leader`'s 20 s.
    assert!(
        past_lease_end.iter().all(|ms| (-1..=750).contains(ms)),
        "ms from the lease end to the next leader: {past_lease_end:?} (kill: {after_kill:?}, stop: {after_stop:?})"
    );
    report(
        "leader election, 5 processes",
        &format!(
            "ttl {ttl_ms} ms, {} terms, 0 overlapping (closest: {closest_gap_us} µs from one term's last sample to the next's first); handover after kill -9 ({}): {}; after SIGSTOP ({}): {}; the next leader's first sample after the lease end: {}",
            terms.len(),
            after_kill.len(),
            spread(after_kill.clone()),
            after_stop.len(),
            spread(after_stop.clone()),
            spread(past_lease_end.iter().map(|ms| (*ms).max(0) as u64).collect())
        ),
    );
    let _ = std::io::stdout().flush();
}
