//! Evidence that the lock excludes: multi-process exclusion checker with a canary, fault
//! injection (TCP proxy, kill -9, restart, SIGSTOP of Redis and of a holder), lost replies,
//! cancellation and panic torture, bad input. RELIABILITY.md reports the long runs.
//!
//! Sizes scale with `LOCK_SOAK` (default 1). The soak that RELIABILITY.md reports:
//! `LOCK_SOAK=5 cargo test --release --test safety -- --nocapture --test-threads 1`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lock_core::{distributed_lock, LockError, LockManager};
use lock_test_support::{cancel_after_polls, eventually, FaultProxy, RedisServer};
use tokio::time::Instant;

/// One line per scenario for RELIABILITY.md (`--nocapture` shows them).
fn report(scenario: &str, figures: &str) {
    eprintln!("RELIABILITY {scenario}: {figures}");
}

fn soak() -> u64 {
    std::env::var("LOCK_SOAK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
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

fn counter(resource: &RedisServer, name: &str, which: &str) -> u64 {
    let v: Option<u64> = resource.query(redis::cmd("GET").arg(format!("checker:{name}:{which}")));
    v.unwrap_or(0)
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
    let locks = LockManager::builder()
        .url(&proxy.url())
        .response_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let key = locks.key_for("lost-reply");
    // Load the scripts first, so the reply dropped below is the acquire's, not a NOSCRIPT.
    let warm = locks
        .try_acquire("warm", Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    assert!(warm.release().await.unwrap());

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

// ---- Bad input ----------------------------------------------------------------------------

#[tokio::test]
async fn bad_input_sweep_gets_typed_errors_and_leaves_nothing() {
    let server = RedisServer::start();
    let locks = LockManager::connect(&server.url()).await.unwrap();
    let huge = "x".repeat(1 << 20);
    let braces = "}{".to_owned();
    for name in ["", huge.as_str(), braces.as_str()] {
        let err = locks
            .try_acquire(name, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, LockError::InvalidName { .. }), "{err:?}");
    }
    for ttl in [
        Duration::ZERO,
        Duration::from_micros(1),
        Duration::from_secs(u64::MAX),
    ] {
        let err = locks.try_acquire("ok", ttl).await.unwrap_err();
        assert!(matches!(err, LockError::InvalidTtl { .. }), "{err:?}");
    }
    for name in ["ünïcødé ✓", "{tag}", "a{b}c{d}", "sp ace"] {
        let g = locks
            .try_acquire(name, Duration::from_secs(1))
            .await
            .unwrap()
            .unwrap();
        assert!(g.release().await.unwrap());
    }
    assert!(server.lock_keys().is_empty());
    // Unreachable host, wrong password, TLS without TLS support: typed errors, no panic.
    let closed = format!("redis://127.0.0.1:{}", lock_test_support::free_port());
    assert!(matches!(
        LockManager::connect(&closed).await,
        Err(LockError::Redis(_))
    ));
    let secured = RedisServer::start_with(&["--requirepass", "p"]);
    let wrong = format!("redis://:nope@127.0.0.1:{}", secured.port());
    assert!(matches!(
        LockManager::connect(&wrong).await,
        Err(LockError::Redis(_))
    ));
    let tls = format!("rediss://127.0.0.1:{}", server.port());
    match LockManager::connect(&tls).await {
        Err(LockError::Redis(e)) => assert!(e.to_string().to_lowercase().contains("tls"), "{e}"),
        other => panic!("expected a TLS error, got {other:?}"),
    }
    let not_a_url = LockManager::connect("http://example").await;
    assert!(
        matches!(not_a_url, Err(LockError::Redis(_))),
        "{not_a_url:?}"
    );
}
