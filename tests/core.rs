//! lock-core on real Redis servers (started per test on free ports) and on the in-process
//! backend: acquire, release, extend, waiting, cancellation, drop, validation, failures.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lock_core::{LockError, LockGuard, LockManager};
use lock_test_support::{eventually, RedisServer};
use tokio::time::Instant;

const LONG: Duration = Duration::from_secs(30);

/// Two managers on one backend: `locks` is "this replica", `other` another one.
struct Fixture {
    locks: LockManager,
    other: LockManager,
}

impl Fixture {
    async fn redis(server: &RedisServer) -> Self {
        Self {
            locks: LockManager::connect(&server.url()).await.unwrap(),
            other: LockManager::connect(&server.url()).await.unwrap(),
        }
    }

    fn memory() -> Self {
        let locks = LockManager::in_memory();
        Self {
            other: locks.clone(),
            locks,
        }
    }
}

/// Runs each listed `async fn(Fixture)` once against a fresh redis-server and once in memory.
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod redis_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let server = lock_test_support::RedisServer::start();
                    super::$test(super::Fixture::redis(&server).await).await;
                }
            )*
        }
        mod in_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Fixture::memory()).await;
                }
            )*
        }
    };
}

on_both_backends!(
    second_acquire_is_refused_while_held_and_succeeds_right_after_release,
    acquire_without_wait_is_busy_and_names_the_lock,
    locks_are_not_reentrant,
    release_after_expiry_returns_false_and_leaves_the_new_owner_intact,
    extend_renews_the_lease,
    extend_after_expiry_or_takeover_returns_false_and_leaves_the_owner_intact,
    wait_gives_up_at_about_the_deadline,
    wait_succeeds_when_the_holder_releases_mid_wait,
    sixteen_tasks_on_one_name_never_overlap,
    fencing_tokens_strictly_increase_over_1000_acquisitions_including_expiry,
    tokens_are_unique_over_100000_acquisitions,
    dropped_guard_releases_in_the_background,
    shutdown_finishes_releases_of_dropped_guards_and_releases_held_ones,
    invalid_names_and_ttls_are_rejected,
    remaining_counts_down_from_the_ttl,
    debug_output_never_shows_the_token,
);

async fn second_acquire_is_refused_while_held_and_succeeds_right_after_release(fx: Fixture) {
    let guard = fx
        .locks
        .try_acquire("job", LONG)
        .await
        .unwrap()
        .expect("free");
    assert!(fx.other.try_acquire("job", LONG).await.unwrap().is_none());
    assert!(guard.release().await.unwrap());
    let again = fx.other.try_acquire("job", LONG).await.unwrap();
    assert!(again.is_some(), "free right after release");
}

async fn acquire_without_wait_is_busy_and_names_the_lock(fx: Fixture) {
    let _held = fx
        .locks
        .try_acquire("reports", LONG)
        .await
        .unwrap()
        .unwrap();
    let err = fx
        .other
        .acquire("reports", LONG, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LockError::Busy { name } if name == "reports"),
        "{err:?}"
    );
    assert!(err.to_string().contains("`reports`"), "{err}");
}

async fn locks_are_not_reentrant(fx: Fixture) {
    let _held = fx.locks.try_acquire("again", LONG).await.unwrap().unwrap();
    let second = fx.locks.try_acquire("again", LONG).await.unwrap();
    assert!(
        second.is_none(),
        "a second acquire by the same manager must be refused"
    );
}

/// Waits (polling the backend, never sleeping blindly) until `name` can be taken again.
async fn acquire_after_expiry(m: &LockManager, name: &str, ttl: Duration) -> LockGuard {
    m.acquire(name, ttl, Duration::from_secs(5))
        .await
        .expect("the old lease expires")
}

async fn release_after_expiry_returns_false_and_leaves_the_new_owner_intact(fx: Fixture) {
    let old = fx
        .locks
        .try_acquire("expiring", Duration::from_millis(30))
        .await
        .unwrap()
        .unwrap();
    let new = acquire_after_expiry(&fx.other, "expiring", LONG).await;
    assert!(old.is_lost(), "the old lease ran out");
    assert!(
        !old.release().await.unwrap(),
        "release of an expired lease is false"
    );
    assert!(
        fx.locks
            .try_acquire("expiring", LONG)
            .await
            .unwrap()
            .is_none(),
        "the new owner's lock survived the stale release"
    );
    assert!(new.release().await.unwrap());
}

async fn extend_renews_the_lease(fx: Fixture) {
    let guard = fx
        .locks
        .try_acquire("renew", Duration::from_millis(200))
        .await
        .unwrap()
        .unwrap();
    assert!(guard.extend(Duration::from_secs(20)).await.unwrap());
    assert!(guard.remaining() > Duration::from_secs(19));
    assert!(!guard.is_lost());
    assert!(fx.other.try_acquire("renew", LONG).await.unwrap().is_none());
    assert!(guard.release().await.unwrap());
}

async fn extend_after_expiry_or_takeover_returns_false_and_leaves_the_owner_intact(fx: Fixture) {
    let old = fx
        .locks
        .try_acquire("ext", Duration::from_millis(30))
        .await
        .unwrap()
        .unwrap();
    let new = acquire_after_expiry(&fx.other, "ext", LONG).await;
    assert!(
        !old.extend(LONG).await.unwrap(),
        "extend of a lease now owned by another"
    );
    assert!(old.is_lost());
    assert!(
        new.remaining() > Duration::from_secs(29),
        "the new owner's lease is untouched"
    );
    assert!(fx.locks.try_acquire("ext", LONG).await.unwrap().is_none());
    drop(old);
    assert!(
        new.release().await.unwrap(),
        "the stale guard's drop did not free the new owner's lock"
    );
}

async fn wait_gives_up_at_about_the_deadline(fx: Fixture) {
    let _held = fx.locks.try_acquire("slow", LONG).await.unwrap().unwrap();
    let wait = Duration::from_millis(300);
    let began = Instant::now();
    let err = fx.other.acquire("slow", LONG, wait).await.unwrap_err();
    let elapsed = began.elapsed();
    match err {
        LockError::Timeout { name, waited } => {
            assert_eq!(name, "slow");
            assert!(waited >= wait, "gave up early: {waited:?}");
            assert!(waited <= elapsed);
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    // "About": it never sleeps past the deadline, so only scheduling noise is added.
    assert!(
        elapsed < wait + Duration::from_millis(250),
        "overslept: {elapsed:?}"
    );
}

async fn wait_succeeds_when_the_holder_releases_mid_wait(fx: Fixture) {
    let held = fx
        .locks
        .try_acquire("handoff", LONG)
        .await
        .unwrap()
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let waiter = {
        let other = fx.other.clone();
        tokio::spawn(async move {
            tx.send(()).unwrap();
            other
                .acquire("handoff", LONG, Duration::from_secs(10))
                .await
        })
    };
    rx.await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await; // let the waiter fail at least once
    let released_at = Instant::now();
    assert!(held.release().await.unwrap());
    let guard = waiter.await.unwrap().expect("the waiter gets the lock");
    assert!(released_at.elapsed() < Duration::from_secs(5));
    assert!(guard.release().await.unwrap());
}

async fn sixteen_tasks_on_one_name_never_overlap(fx: Fixture) {
    const TASKS: u64 = 16;
    const ROUNDS: u64 = 8;
    let counter = Arc::new(AtomicU64::new(0));
    let inside = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let m = if i % 2 == 0 {
            fx.locks.clone()
        } else {
            fx.other.clone()
        };
        let (counter, inside) = (counter.clone(), inside.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                let guard = m
                    .acquire("counter", LONG, Duration::from_secs(30))
                    .await
                    .unwrap();
                assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                // A non-atomic read-modify-write: lost updates show an overlap.
                let seen = counter.load(Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
                counter.store(seen + 1, Ordering::SeqCst);
                inside.store(false, Ordering::SeqCst);
                assert!(guard.release().await.unwrap());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(counter.load(Ordering::SeqCst), TASKS * ROUNDS);
}

async fn fencing_tokens_strictly_increase_over_1000_acquisitions_including_expiry(fx: Fixture) {
    let mut last = 0;
    let mut expiring: Option<LockGuard> = None;
    for i in 0..1000 {
        let m = if i % 2 == 0 { &fx.locks } else { &fx.other };
        let short = i % 100 == 0;
        let ttl = if short {
            Duration::from_millis(5)
        } else {
            LONG
        };
        let guard = m
            .acquire("fenced", ttl, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(
            guard.fencing_token() > last,
            "{} after {last}",
            guard.fencing_token()
        );
        last = guard.fencing_token();
        if let Some(stale) = expiring.take() {
            assert!(!stale.release().await.unwrap(), "that lease had expired");
        }
        if short {
            expiring = Some(guard); // left to expire; the next acquire waits it out
        } else {
            assert!(guard.release().await.unwrap());
        }
    }
}

async fn tokens_are_unique_over_100000_acquisitions(fx: Fixture) {
    const TASKS: usize = 50;
    const EACH: usize = 2000;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let m = fx.locks.clone();
        tasks.push(tokio::spawn(async move {
            let name = format!("unique:{t}");
            let mut tokens = Vec::with_capacity(EACH);
            for _ in 0..EACH {
                let g = m.try_acquire(&name, LONG).await.unwrap().unwrap();
                tokens.push(g.token().to_owned());
                assert!(g.release().await.unwrap());
            }
            tokens
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        for token in t.await.unwrap() {
            assert_eq!(token.len(), 32, "128 bits as hex");
            assert!(all.insert(token), "a token repeated");
        }
    }
    assert_eq!(all.len(), TASKS * EACH);
}

async fn dropped_guard_releases_in_the_background(fx: Fixture) {
    let guard = fx
        .locks
        .try_acquire("dropped", LONG)
        .await
        .unwrap()
        .unwrap();
    drop(guard);
    // The release runs on a spawned task; a waiter sees the lock free long before the TTL.
    let next = fx
        .other
        .acquire("dropped", LONG, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(next.release().await.unwrap());
}

async fn shutdown_finishes_releases_of_dropped_guards_and_releases_held_ones(fx: Fixture) {
    let mut kept = Vec::new();
    for i in 0..40 {
        let g = fx
            .locks
            .try_acquire(&format!("sd:{i}"), LONG)
            .await
            .unwrap()
            .unwrap();
        if i % 2 == 0 {
            drop(g);
        } else {
            kept.push(g);
        }
    }
    fx.locks.shutdown(Duration::from_secs(5)).await.unwrap();
    for i in 0..40 {
        let g = fx
            .other
            .try_acquire(&format!("sd:{i}"), LONG)
            .await
            .unwrap();
        assert!(g.is_some(), "sd:{i} is free after shutdown");
    }
    for g in kept {
        assert!(g.is_lost(), "shutdown gave the lock up");
        assert!(!g.release().await.unwrap(), "already released by shutdown");
    }
}

async fn invalid_names_and_ttls_are_rejected(fx: Fixture) {
    let m = &fx.locks;
    let too_long = "x".repeat(lock_core::MAX_NAME_LEN + 1);
    for name in ["", too_long.as_str()] {
        let err = m.try_acquire(name, LONG).await.unwrap_err();
        assert!(matches!(err, LockError::InvalidName { .. }), "{err:?}");
    }
    for ttl in [Duration::ZERO, Duration::from_micros(1), Duration::MAX] {
        let err = m.try_acquire("ok", ttl).await.unwrap_err();
        assert!(
            matches!(err, LockError::InvalidTtl { .. }),
            "{ttl:?}: {err:?}"
        );
        assert!(!err.to_string().is_empty());
    }
    let err = m
        .lock("ok")
        .ttl(Duration::from_secs(1))
        .min_hold(Duration::from_secs(2))
        .acquire()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("min_hold"), "{err}");
    // Non-ASCII and brace-laden names are fine.
    for name in ["ünï/cødé", "a{b}c", "}{", "{}"] {
        let g = m.try_acquire(name, LONG).await.unwrap().expect(name);
        assert_eq!(g.name(), name);
        assert!(g.release().await.unwrap());
    }
}

async fn remaining_counts_down_from_the_ttl(fx: Fixture) {
    let ttl = Duration::from_secs(10);
    let g = fx.locks.try_acquire("rem", ttl).await.unwrap().unwrap();
    assert_eq!(g.ttl(), ttl);
    let left = g.remaining();
    assert!(
        left <= ttl && left > ttl - Duration::from_secs(2),
        "{left:?}"
    );
    assert!(!g.is_lost());
    assert!(g.release().await.unwrap());
}

async fn debug_output_never_shows_the_token(fx: Fixture) {
    let g = fx.locks.try_acquire("secret", LONG).await.unwrap().unwrap();
    let token = g.token().to_owned();
    let shown = format!("{g:?} {:?}", fx.locks);
    assert!(!shown.contains(&token), "{shown}");
    assert!(shown.contains("secret"));
    drop(g);
}

// ---- Redis only -------------------------------------------------------------------------

#[tokio::test]
async fn acquired_key_holds_the_token_and_expires_within_the_ttl() {
    let server = RedisServer::start();
    let locks = LockManager::connect(&server.url()).await.unwrap();
    let ttl = Duration::from_millis(5000);
    let g = locks.try_acquire("invoices:7", ttl).await.unwrap().unwrap();
    let key = locks.key_for("invoices:7");
    assert_eq!(key, "lock:{invoices:7}");
    let value: String = server.query(redis::cmd("GET").arg(&key));
    assert_eq!(value, g.token());
    let pttl: i64 = server.query(redis::cmd("PTTL").arg(&key));
    assert!(pttl > 0 && pttl <= 5000, "{pttl}");
    let fence: u64 = server.query(redis::cmd("GET").arg("lock:{invoices:7}:fence"));
    assert_eq!(fence, g.fencing_token());
    let fence_ttl: i64 = server.query(redis::cmd("PTTL").arg("lock:{invoices:7}:fence"));
    assert_eq!(fence_ttl, -1, "the fencing counter never expires");
    assert!(g.release().await.unwrap());
    let exists: bool = server.query(redis::cmd("EXISTS").arg(&key));
    assert!(!exists, "release deletes the key");
}

#[tokio::test]
async fn key_prefix_is_applied() {
    let server = RedisServer::start();
    let locks = LockManager::builder()
        .url(&server.url())
        .key_prefix("app1:")
        .build()
        .await
        .unwrap();
    let g = locks.try_acquire("n", LONG).await.unwrap().unwrap();
    assert_eq!(server.keys("app1:{n}*").len(), 2);
    drop(g);
    let err = LockManager::builder()
        .url(&server.url())
        .key_prefix("a{")
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::InvalidName { .. }), "{err:?}");
}

#[tokio::test]
async fn bad_input_never_reaches_redis() {
    let server = RedisServer::start();
    let locks = LockManager::connect(&server.url()).await.unwrap();
    let _: () = server.query(redis::cmd("CONFIG").arg("RESETSTAT"));
    let huge = "n".repeat(1 << 20);
    assert!(locks.try_acquire("", LONG).await.is_err());
    assert!(locks.try_acquire(&huge, LONG).await.is_err());
    assert!(locks.try_acquire("x", Duration::ZERO).await.is_err());
    assert!(locks
        .try_acquire("x", Duration::from_nanos(1))
        .await
        .is_err());
    assert!(locks.try_acquire("x", Duration::MAX).await.is_err());
    assert!(locks
        .acquire("x", Duration::from_secs(u64::MAX), LONG)
        .await
        .is_err());
    for cmd in ["eval", "evalsha", "set", "script|load"] {
        assert_eq!(server.command_calls(cmd), 0, "{cmd} reached Redis");
    }
    assert!(server.keys("*").is_empty());
}

#[tokio::test]
async fn wrong_password_is_an_auth_error_not_busy() {
    let server = RedisServer::start_with(&["--requirepass", "right"]);
    let url = format!("redis://:wrong@127.0.0.1:{}", server.port());
    let err = LockManager::connect(&url).await.unwrap_err();
    match err {
        LockError::Redis(e) => assert!(
            e.to_string().to_lowercase().contains("pass") || e.code() == Some("WRONGPASS"),
            "{e}"
        ),
        other => panic!("expected an auth error, got {other:?}"),
    }
    let good = format!("redis://:right@127.0.0.1:{}", server.port());
    let locks = LockManager::connect(&good).await.unwrap();
    assert!(locks.try_acquire("auth", LONG).await.unwrap().is_some());
}

#[tokio::test]
async fn unreachable_server_is_an_error() {
    let port = lock_test_support::free_port();
    let err = LockManager::connect(&format!("redis://127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Redis(_)), "{err:?}");
    let err = LockManager::builder().build().await.unwrap_err();
    assert!(matches!(err, LockError::InvalidConfig { .. }), "{err:?}");
}

#[tokio::test]
async fn redis_killed_gives_an_error_not_a_hang() {
    let mut server = RedisServer::start();
    let locks = LockManager::connect(&server.url()).await.unwrap();
    let held = locks.try_acquire("k", LONG).await.unwrap().unwrap();
    server.kill();
    let attempt =
        tokio::time::timeout(Duration::from_secs(10), locks.try_acquire("k2", LONG)).await;
    let result = attempt.expect("an acquire against a dead server must not hang");
    assert!(matches!(result, Err(LockError::Redis(_))), "{result:?}");
    let release = tokio::time::timeout(Duration::from_secs(10), held.release()).await;
    assert!(
        matches!(release, Ok(Err(LockError::Redis(_)))),
        "{release:?}"
    );
}

#[tokio::test]
async fn redis_restarted_next_acquire_works_and_reloads_the_script() {
    let mut server = RedisServer::start();
    let locks = LockManager::connect(&server.url()).await.unwrap();
    let g = locks.try_acquire("r", LONG).await.unwrap().unwrap();
    drop(g);
    locks.shutdown(Duration::from_secs(5)).await.unwrap();
    server.restart();
    let _: () = server.query(redis::cmd("CONFIG").arg("RESETSTAT"));
    // The connection notices the restart and reconnects; the empty script cache answers NOSCRIPT
    // and the script is sent again.
    let g = locks
        .lock("r")
        .ttl(LONG)
        .acquire()
        .await
        .expect("acquire after a restart");
    assert_eq!(
        g.fencing_token(),
        1,
        "the restarted server starts a new fencing counter"
    );
    assert!(
        server.command_calls("eval") >= 1,
        "the script was sent again with EVAL"
    );
    assert!(g.release().await.unwrap());
    // And once reloaded, it is EVALSHA again.
    let _: () = server.query(redis::cmd("SCRIPT").arg("FLUSH"));
    let g = locks.try_acquire("r", LONG).await.unwrap().unwrap();
    assert!(g.release().await.unwrap());
}

/// Polls `fut` at most `polls` times, then drops it: cancellation at an exact await point,
/// independent of timer resolution and machine speed.
async fn cancel_after_polls<F: std::future::Future>(fut: F, polls: u32) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut done = 0;
    std::future::poll_fn(|cx| {
        if done == polls {
            return std::task::Poll::Ready(None);
        }
        done += 1;
        fut.as_mut().poll(cx).map(Some)
    })
    .await
}

#[tokio::test]
async fn dropped_acquire_futures_leave_no_key_behind() {
    let server = RedisServer::start();
    let locks = LockManager::connect(&server.url()).await.unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let (mut completed, mut cancelled) = (0, 0);
    for i in 0..400 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let name = format!("cancel:{}", i % 7);
        let attempt = locks.try_acquire(&name, LONG);
        // 0 polls: never sent; 1-2: dropped with the command queued or in flight; more: done.
        match cancel_after_polls(attempt, (seed % 5) as u32).await {
            Some(Ok(Some(g))) => {
                completed += 1;
                assert!(g.release().await.unwrap());
            }
            Some(Ok(None)) => panic!("{name} was left held by an earlier cancelled acquire"),
            Some(Err(e)) => panic!("{e}"),
            None => {
                cancelled += 1;
                // Wait for the background clean-up, so a leftover shows as `Ok(None)` above.
                locks.shutdown(Duration::from_secs(10)).await.unwrap();
            }
        }
    }
    // Clean-ups of cancelled attempts run in the background; shutdown waits for them.
    locks.shutdown(Duration::from_secs(10)).await.unwrap();
    assert!(
        server.lock_keys().is_empty(),
        "left behind: {:?}",
        server.lock_keys()
    );
    assert!(
        cancelled > 100 && completed > 10,
        "cancelled {cancelled}, completed {completed}"
    );
}

#[tokio::test]
async fn cancelled_release_keeps_the_lock_releasable() {
    let server = RedisServer::start();
    let locks = LockManager::connect(&server.url()).await.unwrap();
    for _ in 0..50 {
        let g = locks.try_acquire("rel", LONG).await.unwrap().unwrap();
        let fut = g.release();
        // Poll once, then drop: the command may or may not have been sent.
        let _ = tokio::time::timeout(Duration::ZERO, fut).await;
        locks.shutdown(Duration::from_secs(5)).await.unwrap();
        assert!(
            server.lock_keys().is_empty(),
            "a cancelled release left the key held"
        );
    }
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Acquires `name` on `rt`, drops the guard inside `rt` through `drop_it`, then checks the key
/// is gone once the manager's background releases finished.
fn drop_in(rt: &tokio::runtime::Runtime, server: &RedisServer) {
    rt.block_on(async {
        let locks = LockManager::connect(&server.url()).await.unwrap();
        let g = locks.try_acquire("ctx", LONG).await.unwrap().unwrap();
        drop(g);
        locks.shutdown(Duration::from_secs(5)).await.unwrap();
    });
    assert!(server.lock_keys().is_empty());
}

#[test]
fn drop_on_a_multi_thread_runtime_releases() {
    let server = RedisServer::start();
    drop_in(&multi_thread(), &server);
}

#[test]
fn drop_on_a_current_thread_runtime_releases() {
    let server = RedisServer::start();
    drop_in(&current_thread(), &server);
}

#[test]
fn drop_inside_a_local_set_releases() {
    let server = RedisServer::start();
    let rt = current_thread();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let locks = LockManager::connect(&server.url()).await.unwrap();
        let g = locks.try_acquire("local", LONG).await.unwrap().unwrap();
        // Drop it from a !Send local task.
        tokio::task::spawn_local(async move {
            let _not_send = std::rc::Rc::new(());
            drop(g);
        })
        .await
        .unwrap();
        locks.shutdown(Duration::from_secs(5)).await.unwrap();
    });
    assert!(server.lock_keys().is_empty());
}

#[test]
fn drop_during_runtime_shutdown_does_not_panic_and_the_key_expires() {
    let server = RedisServer::start();
    for rt in [multi_thread(), current_thread()] {
        rt.block_on(async {
            let locks = LockManager::connect(&server.url()).await.unwrap();
            let g = locks
                .try_acquire("sd", Duration::from_millis(300))
                .await
                .unwrap()
                .unwrap();
            // A task that holds the guard forever: the runtime drops it while shutting down.
            tokio::spawn(async move {
                let _g = g;
                std::future::pending::<()>().await;
            });
            tokio::task::yield_now().await;
        });
        drop(rt); // must not panic
        let check = current_thread();
        check.block_on(async {
            assert!(eventually(Duration::from_secs(5), || server.lock_keys().is_empty()).await);
        });
    }
}

#[test]
fn drop_outside_any_runtime_leaves_the_key_to_its_ttl() {
    let server = RedisServer::start();
    let rt = current_thread();
    let (locks, g) = rt.block_on(async {
        let locks = LockManager::connect(&server.url()).await.unwrap();
        let g = locks
            .try_acquire("nort", Duration::from_millis(300))
            .await
            .unwrap()
            .unwrap();
        (locks, g)
    });
    drop(g); // no runtime entered here: logs a warning, no panic
    assert_eq!(
        server.lock_keys(),
        vec!["lock:{nort}".to_owned()],
        "left to its TTL"
    );
    rt.block_on(async {
        let next = locks
            .acquire("nort", LONG, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(next.release().await.unwrap());
    });
}

#[tokio::test]
async fn default_manager_is_set_and_replaced() {
    let a = LockManager::in_memory();
    let b = LockManager::in_memory();
    lock_core::set_default_manager(a.clone());
    let g = lock_core::default_manager()
        .unwrap()
        .try_acquire("d", LONG)
        .await
        .unwrap()
        .unwrap();
    assert!(
        a.try_acquire("d", LONG).await.unwrap().is_none(),
        "same backend as `a`"
    );
    lock_core::set_default_manager(b.clone());
    assert!(lock_core::default_manager()
        .unwrap()
        .try_acquire("d", LONG)
        .await
        .unwrap()
        .is_some());
    drop(g);
}

#[tokio::test(start_paused = true)]
async fn in_memory_backend_follows_paused_time() {
    let locks = LockManager::in_memory();
    let g = locks
        .try_acquire("paused", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    tokio::time::advance(Duration::from_secs(59)).await;
    assert!(locks.try_acquire("paused", LONG).await.unwrap().is_none());
    assert!(!g.is_lost());
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(g.is_lost());
    let next = locks.try_acquire("paused", LONG).await.unwrap().unwrap();
    assert!(next.fencing_token() > g.fencing_token());
    assert!(!g.release().await.unwrap());
    // A waiter under paused time: auto-advance runs the clock to the holder's expiry.
    let err = locks
        .acquire("paused", LONG, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Timeout { .. }));
}

/// A `tracing` writer that keeps everything in memory.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn logs_at_every_level_never_contain_the_token() {
    let server = RedisServer::start();
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    // Current-thread runtime: spawned releases and watchdogs log on this thread too.
    let mut tokens = Vec::new();
    current_thread().block_on(async {
        let locks = LockManager::connect(&server.url()).await.unwrap();
        // Acquire, busy, extend, watchdog renewals, release, stale release, drop-release.
        let g = locks
            .lock("logged")
            .ttl(Duration::from_millis(60))
            .auto_extend(true)
            .acquire()
            .await
            .unwrap();
        tokens.push(g.token().to_owned());
        assert!(locks.try_acquire("logged", LONG).await.unwrap().is_none());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(g.extend(LONG).await.unwrap());
        assert!(g.release().await.unwrap());
        let stale = locks
            .try_acquire("logged", Duration::from_millis(5))
            .await
            .unwrap()
            .unwrap();
        tokens.push(stale.token().to_owned());
        let next = locks
            .acquire("logged", LONG, Duration::from_secs(2))
            .await
            .unwrap();
        tokens.push(next.token().to_owned());
        assert!(!stale.release().await.unwrap());
        drop(next);
        locks.shutdown(Duration::from_secs(2)).await.unwrap();
    });
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("acquired") && logs.contains("released"),
        "logging works: {logs}"
    );
    assert!(logs.contains("logged"), "events name the lock");
    for token in tokens {
        assert!(!logs.contains(&token), "a token leaked into the logs");
    }
}

// ---- Waiting: release notifications (Redis) ---------------------------------------------

/// A manager whose waiters would poll only once a minute: any prompt handoff is a notification.
async fn never_polling(server: &RedisServer) -> LockManager {
    LockManager::builder()
        .url(&server.url())
        .max_poll_interval(Duration::from_secs(60))
        .build()
        .await
        .unwrap()
}

fn subscribers(server: &RedisServer, channel: &str) -> i64 {
    let reply: (String, i64) = server.query(redis::cmd("PUBSUB").arg("NUMSUB").arg(channel));
    reply.1
}

#[tokio::test]
async fn waiter_is_woken_by_the_release_not_by_polling() {
    let server = RedisServer::start();
    let holder = LockManager::connect(&server.url()).await.unwrap();
    let waiter = never_polling(&server).await;
    let held = holder.try_acquire("woken", LONG).await.unwrap().unwrap();
    let waiting = tokio::spawn(async move {
        let began = Instant::now();
        let g = waiter.acquire("woken", LONG, Duration::from_secs(20)).await;
        (g, began.elapsed())
    });
    assert!(
        eventually(Duration::from_secs(5), || subscribers(
            &server,
            "lock:{woken}"
        ) == 1)
        .await
    );
    assert!(held.release().await.unwrap());
    let (g, took) = waiting.await.unwrap();
    let g = g.expect("woken and acquired");
    // Without the notification the waiter would sleep 30-60 s (poll interval) or 20 s (deadline).
    assert!(
        took < Duration::from_secs(10),
        "not woken by the release: {took:?}"
    );
    assert!(g.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_wake_up_is_missed_when_the_release_races_the_subscription() {
    let server = RedisServer::start();
    let holder = LockManager::connect(&server.url()).await.unwrap();
    let waiter = never_polling(&server).await;
    let mut seed = 0x9e37_79b9_u64;
    for round in 0..150 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let held = holder.try_acquire("race", LONG).await.unwrap().unwrap();
        let w = waiter.clone();
        let waiting =
            tokio::spawn(async move { w.acquire("race", LONG, Duration::from_secs(20)).await });
        // Release somewhere around the waiter's first attempt and its SUBSCRIBE.
        for _ in 0..(seed % 6) {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_micros(seed % 700)).await;
        assert!(held.release().await.unwrap());
        let g = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .unwrap_or_else(|_| panic!("round {round}: the waiter missed the release"))
            .unwrap()
            .unwrap();
        assert!(g.release().await.unwrap());
    }
}

#[tokio::test]
async fn uncontended_path_is_one_command_each_way_and_never_subscribes() {
    let server = RedisServer::start();
    let locks = LockManager::connect(&server.url()).await.unwrap();
    // Load the scripts once, then count.
    drop(locks.try_acquire("warm", LONG).await.unwrap());
    locks.shutdown(Duration::from_secs(2)).await.unwrap();
    let _: () = server.query(redis::cmd("CONFIG").arg("RESETSTAT"));
    for i in 0..100 {
        let g = locks
            .acquire(&format!("u:{i}"), LONG, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(g.release().await.unwrap());
    }
    assert_eq!(server.command_calls("evalsha"), 200);
    assert_eq!(server.command_calls("eval"), 0);
    assert_eq!(server.command_calls("subscribe"), 0);
    let clients: String = server.query(redis::cmd("CLIENT").arg("LIST"));
    assert_eq!(
        clients.lines().count(),
        2,
        "only the manager's connection and ours: {clients}"
    );
}

#[tokio::test]
async fn subscriptions_end_when_nobody_waits() {
    let server = RedisServer::start();
    let locks = LockManager::connect(&server.url()).await.unwrap();
    for round in 0..3 {
        let held = locks.try_acquire("sub", LONG).await.unwrap().unwrap();
        let w = locks.clone();
        let waiting =
            tokio::spawn(async move { w.acquire("sub", LONG, Duration::from_secs(10)).await });
        assert!(
            eventually(Duration::from_secs(5), || subscribers(
                &server,
                "lock:{sub}"
            ) == 1)
            .await,
            "round {round}"
        );
        assert!(held.release().await.unwrap());
        assert!(waiting.await.unwrap().unwrap().release().await.unwrap());
        assert!(
            eventually(Duration::from_secs(5), || subscribers(
                &server,
                "lock:{sub}"
            ) == 0)
            .await,
            "round {round}: the subscription outlived its waiters"
        );
    }
}

#[tokio::test]
async fn a_crashed_holders_lock_is_taken_as_soon_as_it_expires() {
    let server = RedisServer::start();
    let waiter = never_polling(&server).await;
    // A holder that died without releasing: its key just runs out, and nothing is published.
    let _: () = server.query(
        redis::cmd("SET")
            .arg("lock:{crashed}")
            .arg("foreign")
            .arg("PX")
            .arg(300),
    );
    let began = Instant::now();
    let g = waiter
        .acquire("crashed", LONG, Duration::from_secs(20))
        .await
        .unwrap();
    let took = began.elapsed();
    // The refusal told the waiter when the lease ends; it did not sleep its 30-60 s poll.
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert!(g.release().await.unwrap());
}

#[tokio::test]
async fn waiters_recover_when_the_pubsub_connection_is_killed() {
    let server = RedisServer::start();
    let locks = LockManager::builder()
        .url(&server.url())
        .max_poll_interval(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    for round in 0..2 {
        let held = locks.try_acquire("killed", LONG).await.unwrap().unwrap();
        let w = locks.clone();
        let waiting =
            tokio::spawn(async move { w.acquire("killed", LONG, Duration::from_secs(10)).await });
        assert!(
            eventually(Duration::from_secs(5), || subscribers(
                &server,
                "lock:{killed}"
            ) == 1)
            .await,
            "round {round}"
        );
        let _: i64 = server.query(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"));
        assert!(held.release().await.unwrap());
        let g = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(g.release().await.unwrap());
    }
}
