//! lock-core on one real Redis server (started per test on a free port) and on the in-process
//! backend: the semantic suite on both; then acquire, release, extend, drop, cancellation and
//! failures; bad input (typed errors, nothing sent to Redis); waiting, woken by release
//! notifications; connections (urls, TLS, lazy builds), scripts, force release, reentrancy.
//!
//! Elsewhere: fair lines, permits, shared holds and leaders in coordination.rs; Valkey,
//! min_replicas, Sentinel, Cluster and Redlock in scale_out.rs; fault injection and
//! multi-process exclusion in safety.rs.

use std::time::Duration;

use lock_core::{LockError, LockManager};
use lock_test_support::{
    cancel_after_polls, eventually, free_port, never_polling, FaultProxy, RedisServer,
};
use tokio::time::Instant;

mod semantics;

use semantics::LONG;

/// Runs each listed `async fn(Fixture)` once against a fresh redis-server and once in memory.
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod redis_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let server = lock_test_support::RedisServer::start();
                    super::semantics::$test(super::semantics::Fixture::redis(&server).await).await;
                }
            )*
        }
        mod in_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::semantics::$test(super::semantics::Fixture::memory()).await;
                }
            )*
        }
    };
}

semantic_tests!(on_both_backends);

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
    assert_eq!(
        server.keys("lock:*"),
        vec![key.clone()],
        "one key: no fencing counter until a token is asked for"
    );
    let drawn = g.fencing_token().await.unwrap();
    let fence: u64 = server.query(redis::cmd("GET").arg("lock:{invoices:7}:fence"));
    assert_eq!(fence, drawn);
    let fence_ttl: i64 = server.query(redis::cmd("PTTL").arg("lock:{invoices:7}:fence"));
    assert!(
        fence_ttl > 23 * 3600 * 1000 && fence_ttl <= 24 * 3600 * 1000,
        "the fencing counter expires a day after its last use: {fence_ttl}"
    );
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
    assert_eq!(server.keys("app1:*"), vec!["app1:{n}".to_owned()]);
    g.fencing_token().await.unwrap();
    assert_eq!(server.keys("app1:{n}*").len(), 2, "the lock and its fence");
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
async fn wrong_password_is_an_auth_error_not_busy() {
    let server = RedisServer::start_with(&["--requirepass", "right"]);
    let url = format!("redis://:wrong@127.0.0.1:{}", server.port());
    let err = LockManager::connect(&url).await.unwrap_err();
    match err {
        LockError::Connect { source: e, .. } => assert!(
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
    assert!(matches!(err, LockError::Connect { .. }), "{err:?}");
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
    assert!(
        g.fencing_token().await.unwrap() > 0,
        "a fencing token from the restarted server"
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
        match cancel_after_polls(attempt, seed % 5).await {
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
            .try_acquire("nort", Duration::from_secs(2))
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
    let fence = g.fencing_token().await.unwrap();
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(g.is_lost());
    assert!(
        matches!(g.fencing_token().await, Ok(f) if f == fence),
        "a token drawn while held stays cached"
    );
    let next = locks.try_acquire("paused", LONG).await.unwrap().unwrap();
    assert!(next.fencing_token().await.unwrap() > fence);
    assert!(!g.release().await.unwrap());
    // A waiter under paused time: auto-advance runs the clock to the holder's expiry.
    let err = locks
        .acquire("paused", LONG, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Timeout { .. }));
}

// ---- Bad input --------------------------------------------------------------------------

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
    // Unreachable host, wrong password, TLS to a plain server: typed errors, no panic.
    let closed = format!("redis://127.0.0.1:{}", lock_test_support::free_port());
    assert!(matches!(
        LockManager::connect(&closed).await,
        Err(LockError::Connect { .. })
    ));
    let secured = RedisServer::start_with(&["--requirepass", "p"]);
    let wrong = format!("redis://:nope@127.0.0.1:{}", secured.port());
    assert!(matches!(
        LockManager::connect(&wrong).await,
        Err(LockError::Connect { .. })
    ));
    // TLS (the `tls` feature is on in these tests) against a server that speaks plain text.
    let tls = format!("rediss://127.0.0.1:{}", server.port());
    match LockManager::connect(&tls).await {
        Err(e @ LockError::Connect { .. }) => assert!(e.to_string().contains(&tls), "{e}"),
        other => panic!("expected a TLS error, got {other:?}"),
    }
    let not_a_url = LockManager::connect("http://example").await;
    assert!(
        matches!(not_a_url, Err(LockError::InvalidUrl { .. })),
        "{not_a_url:?}"
    );
}

// ---- Waiting: release notifications (Redis) ---------------------------------------------

#[tokio::test]
async fn waiter_is_woken_by_the_release_not_by_polling() {
    let server = RedisServer::start();
    let holder = LockManager::connect(&server.url()).await.unwrap();
    let waiter = never_polling(&server).await;
    let held = holder.try_acquire("woken", LONG).await.unwrap().unwrap();
    let waiting = listening_waiter(&server, waiter, "woken").await;
    assert!(held.release().await.unwrap());
    let g = woken(waiting).await;
    assert!(g.release().await.unwrap());
}

/// A wait of `waiter` (a [`never_polling`] manager) for `name`, up to 20 s, in a task of its
/// own, once it listens for the release: what it got, and how long it waited.
async fn listening_waiter(
    server: &RedisServer,
    waiter: LockManager,
    name: &'static str,
) -> tokio::task::JoinHandle<(Result<lock_core::LockGuard, LockError>, Duration)> {
    let waiting = tokio::spawn(async move {
        let began = Instant::now();
        let got = waiter.acquire(name, LONG, Duration::from_secs(20)).await;
        (got, began.elapsed())
    });
    let channel = format!("lock:{{{name}}}");
    assert!(eventually(Duration::from_secs(5), || server.subscribers(&channel) == 1).await);
    waiting
}

/// The guard of a [`listening_waiter`], which the release woke: without the notification it
/// would sleep 30-60 s (its poll interval) or 20 s (its deadline).
async fn woken(
    waiting: tokio::task::JoinHandle<(Result<lock_core::LockGuard, LockError>, Duration)>,
) -> lock_core::LockGuard {
    let (got, took) = waiting.await.unwrap();
    let g = got.expect("woken and granted");
    assert!(
        took < Duration::from_secs(10),
        "not woken by the release: {took:?}"
    );
    g
}

/// The pub/sub link goes silent (no RST) while a wait ends, so the notifier's `UNSUBSCRIBE`
/// gets no answer and it gives the link up; then the network is healthy again. Waiters that
/// start afterwards are woken by the release again (W1), cycle after cycle, not by their poll.
#[tokio::test]
async fn after_a_silent_link_is_given_up_waiters_are_woken_by_the_release_again() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port()).await;
    let holder = LockManager::connect(&server.url()).await.unwrap();
    let waiter = LockManager::builder()
        .url(&proxy.url())
        .max_poll_interval(Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    let mut held = holder.try_acquire("silent", LONG).await.unwrap().unwrap();
    let first = tokio::spawn({
        let waiter = waiter.clone();
        async move {
            waiter
                .acquire("silent", LONG, Duration::from_secs(30))
                .await
        }
    });
    assert!(
        eventually(Duration::from_secs(5), || server
            .subscribers("lock:{silent}")
            == 1)
        .await
    );
    proxy.stall(true);
    // The wait ends while the link is silent.
    first.abort();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    proxy.stall(false);
    for cycle in 0..3 {
        let waiting = tokio::spawn({
            let waiter = waiter.clone();
            async move {
                let g = waiter
                    .acquire("silent", LONG, Duration::from_secs(20))
                    .await;
                (g, Instant::now())
            }
        });
        assert!(
            eventually(Duration::from_secs(10), || server
                .subscribers("lock:{silent}")
                == 1)
            .await,
            "cycle {cycle}: subscribed again ({} subscribers)",
            server.subscribers("lock:{silent}")
        );
        // Its attempt after the subscription marks the key.
        assert!(
            eventually(Duration::from_secs(10), || {
                let v: Option<String> = server.query(redis::cmd("GET").arg("lock:{silent}"));
                v.is_some_and(|v| v.contains('*'))
            })
            .await,
            "cycle {cycle}: the waiter marked the key"
        );
        let released = Instant::now();
        assert!(held.release().await.unwrap());
        let (g, taken) = waiting.await.unwrap();
        let g = g.unwrap_or_else(|e| panic!("cycle {cycle}: not woken by the release: {e}"));
        // Unwoken, it would have waited out its 20 s wait (its poll is a minute).
        assert!(
            taken - released < Duration::from_secs(10),
            "cycle {cycle}: not woken by the release: {:?}",
            taken - released
        );
        assert!(g.release().await.unwrap());
        held = holder.try_acquire("silent", LONG).await.unwrap().unwrap();
    }
    assert!(held.release().await.unwrap());
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
    let native = server.has_delifeq();
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
    // Acquire is a plain SET NX PX, release one script that publishes nothing when nobody
    // waits: the same commands as the floor; or, where the server has it (Valkey 9), one
    // DELIFEQ instead of the script.
    assert_eq!(server.command_calls("set"), 100);
    assert_eq!(
        server.command_calls("evalsha"),
        if native { 0 } else { 100 }
    );
    assert_eq!(
        server.command_calls("delifeq"),
        if native { 100 } else { 0 }
    );
    assert_eq!(
        probes(&server),
        0,
        "the native commands were asked for once, before"
    );
    assert_eq!(server.command_calls("eval"), 0);
    assert_eq!(server.command_calls("publish"), 0);
    assert_eq!(server.command_calls("subscribe"), 0);
    let clients: String = server.query(redis::cmd("CLIENT").arg("LIST"));
    assert_eq!(
        clients.lines().count(),
        2,
        "only the manager's connection and ours: {clients}"
    );
}

/// How many times the server was asked for its native commands: its `COMMAND INFO`s, counted
/// as `command|info` from Redis 7; Redis 6.2 counts every `COMMAND` call as `command`, and the
/// probe sends two (`INFO`, and `DOCS`, which it refuses).
fn probes(server: &RedisServer) -> u64 {
    if server.sharded_pubsub() {
        server.command_calls("command|info")
    } else {
        server.command_calls("command") / 2
    }
}

/// `command`'s calls, or the probes for `"command"`.
fn probes_or(server: &RedisServer, command: &str) -> u64 {
    match command {
        "command" => probes(server),
        _ => server.command_calls(command),
    }
}

/// Where the server has them (Valkey 9: `DELIFEQ`; Valkey 8.1 and 9: `SET ... IFEQ`), an
/// uncontended release and a renewal are one native command; everywhere else, and whenever the
/// native command does nothing (a waiter marked the key, a full memory refuses `SET`, the hold
/// is not ours), the script does the job, so every answer is the script's.
#[tokio::test]
async fn release_and_extend_are_native_commands_where_the_server_has_them() {
    let mut server = RedisServer::start();
    let (delifeq, ifeq) = (server.has_delifeq(), server.has_set_ifeq());
    let calls = |server: &RedisServer| {
        ["set", "delifeq", "evalsha", "command"].map(|c| probes_or(server, c))
    };
    let holder = LockManager::connect(&server.url()).await.unwrap();
    let waiter = never_polling(&server).await;
    // Scripts loaded and the server probed.
    let g = holder.try_acquire("warm", LONG).await.unwrap().unwrap();
    assert!(g.extend(LONG).await.unwrap());
    assert!(g.release().await.unwrap());
    let _: () = server.query(redis::cmd("CONFIG").arg("RESETSTAT"));

    // Uncontended: SET NX, then SET IFEQ or extend.lua, then DELIFEQ or release.lua.
    let g = holder.try_acquire("n", LONG).await.unwrap().unwrap();
    assert!(g.extend(Duration::from_secs(40)).await.unwrap());
    let left: i64 = server.query(redis::cmd("PTTL").arg("lock:{n}"));
    assert!(left > 30_000, "renewed to 40 s: {left} ms left");
    assert!(g.release().await.unwrap());
    assert_eq!(
        calls(&server),
        [
            1 + u64::from(ifeq),
            u64::from(delifeq),
            u64::from(!ifeq) + u64::from(!delifeq),
            0
        ],
        "set, delifeq, evalsha, command (DELIFEQ: {delifeq}, SET IFEQ: {ifeq})"
    );
    assert!(server.lock_keys().is_empty());

    // Contended: the waiter's refused attempt marks the key, so the native commands find it
    // unequal and the scripts renew it and publish the release that wakes the waiter.
    let g = holder.try_acquire("c", LONG).await.unwrap().unwrap();
    let waiting = listening_waiter(&server, waiter, "c").await;
    let _: () = server.query(redis::cmd("CONFIG").arg("RESETSTAT"));
    assert!(g.extend(LONG).await.unwrap(), "a marked hold is renewed");
    assert!(g.release().await.unwrap(), "a marked hold is given back");
    let next = woken(waiting).await;
    assert_eq!(server.command_calls("publish"), 1, "the release published");
    assert_eq!(server.command_calls("delifeq"), u64::from(delifeq));
    // A holder that waited for its lock sends the script first: others likely wait too.
    let _: () = server.query(redis::cmd("CONFIG").arg("RESETSTAT"));
    assert!(next.release().await.unwrap());
    assert_eq!(
        (
            server.command_calls("delifeq"),
            server.command_calls("evalsha")
        ),
        (0, 1)
    );
    // So does, for a while, a holder of a name whose release here found the key marked (the
    // holder's, above), though it took the lock without waiting; then DELIFEQ again.
    let _: () = server.query(redis::cmd("CONFIG").arg("RESETSTAT"));
    for _ in 0..32 {
        let g = holder.try_acquire("c", LONG).await.unwrap().unwrap();
        assert!(g.release().await.unwrap());
    }
    assert_eq!(server.command_calls("delifeq"), 0);
    let g = holder.try_acquire("c", LONG).await.unwrap().unwrap();
    assert!(g.release().await.unwrap());
    assert_eq!(server.command_calls("delifeq"), u64::from(delifeq));

    // A full memory refuses SET (IFEQ or not); extend.lua's PEXPIRE renews all the same.
    let g = holder.try_acquire("full", LONG).await.unwrap().unwrap();
    let _: () = server.query(redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("1"));
    let renewed = g.extend(LONG).await;
    let released = g.release().await;
    let _: () = server.query(redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("0"));
    assert!(renewed.unwrap(), "renewed in a full memory");
    assert!(released.unwrap(), "given back in a full memory");

    // Not ours any more (another client's value, a hash of another kind): both say so.
    for foreign in [
        redis::cmd("SET")
            .arg("lock:{gone}")
            .arg("someone-else")
            .clone(),
        redis::cmd("HSET")
            .arg("lock:{gone}")
            .arg("f")
            .arg("v")
            .clone(),
    ] {
        let g = holder.try_acquire("gone", LONG).await.unwrap().unwrap();
        let _: () = server.query(redis::cmd("DEL").arg("lock:{gone}"));
        let _: redis::Value = server.query(&foreign);
        assert!(!g.extend(LONG).await.unwrap(), "{foreign:?}: not renewed");
        assert!(!g.release().await.unwrap(), "{foreign:?}: not ours");
        let _: () = server.query(redis::cmd("DEL").arg("lock:{gone}"));
    }

    // A restarted server (maybe another version behind the same address) is asked again, once:
    // after the I/O error of the first command sent to it, or the NOSCRIPT of the first script
    // it ran before (here, the fencing token's, drawn on both sides of the restart).
    let g = holder.try_acquire("r", LONG).await.unwrap().unwrap();
    assert!(g.fencing_token().await.unwrap() > 0);
    assert!(g.release().await.unwrap());
    server.restart();
    let g = holder
        .acquire("r", LONG, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(g.fencing_token().await.unwrap() > 0);
    assert!(g.release().await.unwrap());
    assert_eq!(probes(&server), 1, "probed again, once");
    let _: () = server.query(redis::cmd("CONFIG").arg("RESETSTAT"));
    let g = holder.try_acquire("r", LONG).await.unwrap().unwrap();
    assert!(g.release().await.unwrap());
    assert_eq!(probes(&server), 0);
    assert_eq!(server.command_calls("delifeq"), u64::from(delifeq));
}

/// A process that forks after drawing a token: the child never repeats one of the parent's
/// (its generator is seeded again in the new process), and neither side repeats its own.
#[test]
fn a_forked_child_never_repeats_its_parents_tokens() {
    let n = 200;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fork-tokens"))
        .arg(n.to_string())
        .output()
        .expect("fork-tokens runs");
    assert!(out.status.success(), "{out:?}");
    // The child's lines arrive when it exits, which may be after the parent's.
    let text = String::from_utf8(out.stdout).unwrap();
    let mut seen = std::collections::HashMap::new();
    let mut per_role = std::collections::HashMap::new();
    for line in text.lines() {
        let (role, token) = line.split_once(' ').unwrap();
        *per_role.entry(role.to_owned()).or_insert(0) += 1;
        let random = token.rsplit('|').next().unwrap().to_owned();
        assert_eq!(random.len(), 32, "{token}");
        if let Some(first) = seen.insert(random, role.to_owned()) {
            panic!("{role} drew a random part {first} had drawn: {token}");
        }
    }
    assert_eq!(per_role.get("parent"), Some(&n), "{text}");
    assert_eq!(per_role.get("child"), Some(&n), "{text}");
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
            eventually(Duration::from_secs(5), || server.subscribers("lock:{sub}")
                == 1)
            .await,
            "round {round}"
        );
        assert!(held.release().await.unwrap());
        assert!(waiting.await.unwrap().unwrap().release().await.unwrap());
        assert!(
            eventually(Duration::from_secs(5), || server.subscribers("lock:{sub}")
                == 0)
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
            eventually(Duration::from_secs(5), || server
                .subscribers("lock:{killed}")
                == 1)
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

// ---- Wake-ups (W1-W4 in lock-core's backend/notify.rs): regressions for the review's three
// notifier defects. Each failed on the notifier before the rewrite. Defect 1 needs Redlock: it
// is in scale_out.rs (a_paused_redlock_instance_serializes_no_waiters_of_other_names). ----

fn channels(server: &RedisServer) -> Vec<String> {
    server.query(redis::cmd("PUBSUB").arg("CHANNELS"))
}

/// One whole wait on `name`: `holder` takes it, a waiter on `waiter` subscribes, the release
/// wakes it, and it takes the lock and gives it back.
async fn wait_cycle(server: &RedisServer, holder: &LockManager, waiter: &LockManager, name: &str) {
    let held = holder.try_acquire(name, LONG).await.unwrap().unwrap();
    let (w, n) = (waiter.clone(), name.to_owned());
    let waiting = tokio::spawn(async move { w.acquire(&n, LONG, Duration::from_secs(10)).await });
    let channel = format!("lock:{{{name}}}");
    assert!(eventually(Duration::from_secs(5), || server.subscribers(&channel) == 1).await);
    assert!(held.release().await.unwrap());
    assert!(waiting.await.unwrap().unwrap().release().await.unwrap());
}

/// Defect 2 (W3): a wait that ended while its SUBSCRIBE was in flight left the channel
/// subscribed with no waiter (8 of 10 did), growing with every distinct name. Now the
/// subscription is undone as soon as it is confirmed.
#[tokio::test]
async fn waits_that_end_while_subscribing_leave_no_subscription_behind() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port()).await;
    let holder = LockManager::connect(&server.url()).await.unwrap();
    let waiter = LockManager::connect(&proxy.url()).await.unwrap();
    // One whole wait first, so the pub/sub connection is up and only the SUBSCRIBEs are slow.
    wait_cycle(&server, &holder, &waiter, "warm").await;
    let mut held = Vec::new();
    for i in 0..10 {
        held.push(
            holder
                .try_acquire(&format!("brief:{i}"), LONG)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    // Every command through the proxy now takes 2 x 150 ms: a wait of 450 ms is refused once
    // (300 ms), starts to subscribe, and ends before the subscription is confirmed.
    proxy.set_latency(Duration::from_millis(150));
    let waits: Vec<_> = (0..10)
        .map(|i| {
            let w = waiter.clone();
            tokio::spawn(async move {
                w.acquire(&format!("brief:{i}"), LONG, Duration::from_millis(450))
                    .await
            })
        })
        .collect();
    for wait in waits {
        let err = wait.await.unwrap().unwrap_err();
        assert!(matches!(err, LockError::Timeout { .. }), "{err:?}");
    }
    assert!(
        eventually(Duration::from_secs(5), || channels(&server).is_empty()).await,
        "channels still subscribed with nobody waiting: {:?}",
        channels(&server)
    );
    drop(held);
}

/// W3 at scale: 10,000 distinct names waited on and abandoned (timed out, or the acquire
/// dropped at some await point) leave no subscription, and the manager keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_abandoned_waits_leave_no_subscription() {
    let server = RedisServer::start();
    let holder = LockManager::connect(&server.url()).await.unwrap();
    let waiter = LockManager::connect(&server.url()).await.unwrap();
    let _held = holder.try_acquire("crowd", LONG).await.unwrap().unwrap();
    // One held lock per name would take 10,000 keys; a foreign key with a long ttl per name is
    // the same to a waiter.
    let mut pipe = redis::pipe();
    for i in 0..10_000 {
        pipe.cmd("SET")
            .arg(format!("lock:{{crowd:{i}}}"))
            .arg("foreign")
            .arg("PX")
            .arg(60_000)
            .ignore();
    }
    let _: () = pipe.query(&mut server.conn()).unwrap();
    let tasks: Vec<_> = (0..10_000u64)
        .map(|i| {
            let w = waiter.clone();
            tokio::spawn(async move {
                let name = format!("crowd:{i}");
                if i % 2 == 0 {
                    let r = w.acquire(&name, LONG, Duration::from_millis(5)).await;
                    assert!(matches!(r, Err(LockError::Timeout { .. })), "{r:?}");
                } else {
                    let acquiring = w.acquire(&name, LONG, Duration::from_secs(30));
                    assert!(cancel_after_polls(acquiring, 1 + i % 4).await.is_none());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        eventually(Duration::from_secs(10), || channels(&server).is_empty()).await,
        "{} channels still subscribed",
        channels(&server).len()
    );
    // Still works: a fresh wait is woken by its release.
    wait_cycle(&server, &holder, &waiter, "after").await;
}

/// Defect 3 (W4): after the pub/sub connection was killed, a stale "subscribed" flag skipped
/// SUBSCRIBE: two waiters, NUMSUB 0, and the waiter woke by polling 1.5 s after the release.
/// Now the driver reconnects and subscribes again, and the release wakes the waiter.
#[tokio::test]
async fn waiters_are_subscribed_again_after_the_pubsub_connection_is_killed() {
    let server = RedisServer::start();
    let holder = LockManager::connect(&server.url()).await.unwrap();
    let waiter = never_polling(&server).await;
    let held = holder.try_acquire("again", LONG).await.unwrap().unwrap();
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let w = waiter.clone();
            tokio::spawn(async move {
                let g = w.acquire("again", LONG, Duration::from_secs(30)).await;
                (Instant::now(), g)
            })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(5), || server
            .subscribers("lock:{again}")
            == 1)
        .await
    );
    let _: i64 = server.query(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"));
    assert!(
        eventually(Duration::from_secs(5), || server
            .subscribers("lock:{again}")
            == 1)
        .await,
        "subscribed again after the kill"
    );
    let released_at = Instant::now();
    assert!(held.release().await.unwrap());
    // One waiter takes it, woken by the message (the poll interval is a minute).
    let mut results = Vec::new();
    for w in waiting {
        results.push(tokio::time::timeout(Duration::from_secs(2), w).await);
    }
    let (at, g) = results
        .into_iter()
        .find_map(|r| r.ok())
        .expect("a waiter finished")
        .unwrap();
    assert!(
        at.duration_since(released_at) < Duration::from_secs(1),
        "woken by polling, not by the release"
    );
    assert!(g.unwrap().release().await.unwrap());
}

// ---- Connections (urls, TLS, lazy builds, a service's own client), scripts, force release,
// reentrancy ----

/// A bad url, a server nobody runs and a wrong password each fail the build with an error that
/// names the url (its password masked) and, for a bad url, the forms accepted. Before, they said
/// "Redis URL did not parse - InvalidClientConfig" or "Connection refused (os error 111)", with
/// no url.
#[tokio::test]
async fn url_and_connection_errors_say_where_without_the_password() {
    let shows = |e: &LockError, what: &str| {
        let text = e.to_string();
        assert!(text.contains(what), "{text:?} does not show {what:?}");
        assert!(!text.contains("s3cret"), "{text:?} shows the password");
    };
    for url in [
        "redis://app:s3cret@localhost:notaport",
        "http://app:s3cret@localhost",
    ] {
        let e = LockManager::connect(url).await.unwrap_err();
        assert!(matches!(e, LockError::InvalidUrl { .. }), "{e:?}");
        shows(&e, "app:****@localhost");
        shows(&e, "redis+unix://");
        shows(&e, ".sentinel(master_name");
    }
    let port = free_port();
    let e = LockManager::connect(&format!("redis://:s3cret@127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert!(matches!(e, LockError::Connect { .. }), "{e:?}");
    shows(&e, &format!("redis://:****@127.0.0.1:{port}"));
    let server = RedisServer::start_with(&["--requirepass", "right"]);
    let wrong = format!("redis://:s3cret@127.0.0.1:{}", server.port());
    let e = LockManager::connect(&wrong).await.unwrap_err();
    assert!(matches!(e, LockError::Connect { .. }), "{e:?}");
    shows(&e, &format!("127.0.0.1:{}", server.port()));
    // Redlock names the instance it could not reach.
    let e = LockManager::builder()
        .redlock([
            format!("redis://127.0.0.1:{port}"),
            format!("redis://127.0.0.1:{}", free_port()),
            format!("redis://:right@127.0.0.1:{}", server.port()),
        ])
        .build()
        .await
        .unwrap_err();
    shows(&e, "127.0.0.1:");
}

/// A release whose caller stopped waiting once it was sent, to a server that has lost its
/// scripts (`SCRIPT FLUSH`, a restart that kept the data): its `EVALSHA` meets `NOSCRIPT` with
/// nobody left to send the `EVAL`. The release is finished in the background, body and all,
/// so the key goes now, not at its ttl.
#[tokio::test]
async fn a_release_dropped_in_flight_to_a_server_without_its_scripts_still_completes() {
    let server = RedisServer::start();
    let locks = LockManager::connect(&server.url()).await.unwrap();
    let key = locks.key_for("noscript");
    let guard = locks.try_acquire("noscript", LONG).await.unwrap().unwrap();
    let flushed: String = server.query(redis::cmd("SCRIPT").arg("FLUSH"));
    assert_eq!(flushed, "OK");
    // One poll sends the EVALSHA; the future is dropped before its answer.
    assert!(cancel_after_polls(guard.release(), 1).await.is_none());
    let gone = eventually(Duration::from_secs(5), || {
        server.query::<i64>(redis::cmd("EXISTS").arg(&key)) == 0
    })
    .await;
    assert!(gone, "the key waits for its ttl");
    // And a manager whose waiters started a pub/sub driver shuts down at once when nothing
    // is in flight. (Closing the notifier used to count against `within`; on a real clock the
    // aborted driver usually ended within the timer's first millisecond anyway, so it is the
    // simulator, under paused time, that showed `ShutdownTimeout { pending: 0 }`.)
    let holder = locks.try_acquire("noscript", LONG).await.unwrap().unwrap();
    let waiter = locks.acquire("noscript", LONG, Duration::from_millis(300));
    let (waited, released) = tokio::join!(waiter, async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        holder.release().await
    });
    assert!(released.unwrap());
    assert!(waited.unwrap().release().await.unwrap());
    locks
        .shutdown(Duration::ZERO)
        .await
        .expect("nothing was in flight");
}

/// Lazy start: a manager builds while its server is down (a service can boot during a Redis
/// outage); the first acquire fails with the connection error, a waiting one retries until the
/// server is back, and a url that does not parse still fails the build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_manager_builds_while_redis_is_down_and_works_once_it_is_up() {
    let mut server = RedisServer::start();
    server.kill();
    let eager = LockManager::connect(&server.url()).await.unwrap_err();
    assert!(matches!(eager, LockError::Connect { .. }), "{eager:?}");
    let locks = LockManager::builder()
        .url(&server.url())
        .lazy(true)
        .build()
        .await
        .expect("builds without contacting Redis");
    let e = locks.try_acquire("lazy", LONG).await.unwrap_err();
    assert!(matches!(e, LockError::Redis(_)), "{e:?}");
    // It says where Redis was looked for.
    let at = format!("127.0.0.1:{}", server.port());
    assert!(e.to_string().contains(&at), "{e} does not say {at}");
    let l = locks.clone();
    let waiting =
        tokio::spawn(async move { l.acquire("lazy", LONG, Duration::from_secs(10)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart();
    let g = waiting.await.unwrap().expect("taken once Redis is up");
    assert!(g.release().await.unwrap());
    // Redlock too: every instance down at build.
    let down: Vec<String> = (0..3)
        .map(|_| format!("redis://127.0.0.1:{}", free_port()))
        .collect();
    let redlock = LockManager::builder()
        .redlock(&down)
        .lazy(true)
        .build()
        .await
        .expect("builds without contacting any instance");
    assert!(redlock.try_acquire("lazy", LONG).await.is_err());
    let bad = LockManager::builder()
        .url("redis://localhost:notaport")
        .lazy(true)
        .build()
        .await
        .unwrap_err();
    assert!(matches!(bad, LockError::InvalidUrl { .. }), "{bad:?}");
}

/// `client(..)`: the service's own `redis::Client` (its address, credentials and settings) for
/// commands and for release notifications; a client for a server that is down names its address.
/// `redlock_clients(..)`: the same for Redlock's masters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_uses_the_services_own_client() {
    let server = RedisServer::start_with(&["--requirepass", "right"]);
    let client =
        redis::Client::open(format!("redis://:right@127.0.0.1:{}", server.port())).unwrap();
    let locks = LockManager::builder().client(client).build().await.unwrap();
    let held = locks.try_acquire("own", LONG).await.unwrap().unwrap();
    let w = locks.clone();
    let waiting =
        tokio::spawn(async move { w.acquire("own", LONG, Duration::from_secs(10)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(held.release().await.unwrap());
    let g = waiting.await.unwrap().unwrap();
    assert!(g.release().await.unwrap());
    let port = free_port();
    let down = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let e = LockManager::builder()
        .client(down)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(&e, LockError::Connect { url, .. } if url.contains(&port.to_string())),
        "{e:?}"
    );

    // Redlock over three of the service's clients, each with its own password: a lock is
    // held on all three (a majority would do), and a second manager is refused.
    let masters: Vec<RedisServer> = (0..3)
        .map(|i| RedisServer::start_with(&["--requirepass", &format!("pw{i}")]))
        .collect();
    let clients = || {
        masters.iter().enumerate().map(|(i, m)| {
            redis::Client::open(format!("redis://:pw{i}@127.0.0.1:{}", m.port())).unwrap()
        })
    };
    let redlock = LockManager::builder()
        .redlock_clients(clients())
        .build()
        .await
        .unwrap();
    let other = LockManager::builder()
        .redlock_clients(clients())
        .build()
        .await
        .unwrap();
    let held = redlock.try_acquire("own", LONG).await.unwrap().unwrap();
    for (i, master) in masters.iter().enumerate() {
        let mut conn = master.conn();
        let _: () = redis::cmd("AUTH")
            .arg(format!("pw{i}"))
            .query(&mut conn)
            .unwrap();
        let value: Option<String> = redis::cmd("GET")
            .arg(redlock.key_for("own"))
            .query(&mut conn)
            .unwrap();
        assert!(value.is_some(), "held on every master");
    }
    assert!(other.try_acquire("own", LONG).await.unwrap().is_none());
    assert!(held.release().await.unwrap());
    assert!(other.try_acquire("own", LONG).await.unwrap().is_some());
}

/// A throwaway CA, and a server and a client certificate it signed (for 127.0.0.1), made with
/// the `openssl` command line tool in a directory of their own.
struct Certificates {
    dir: std::path::PathBuf,
}

impl Certificates {
    fn make() -> Self {
        let dir = std::env::temp_dir().join(format!("lock-tests-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("the openssl command line tool");
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        };
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=lock-tests CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ]);
        for who in ["server", "client"] {
            openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                &format!("{who}.key"),
                "-out",
                &format!("{who}.csr"),
            ]);
            openssl(&[
                "x509",
                "-req",
                "-days",
                "1",
                "-in",
                &format!("{who}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-extfile",
                "san.ext",
                "-out",
                &format!("{who}.crt"),
            ]);
        }
        Self { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_str().unwrap().to_owned()
    }

    fn read(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(file)).unwrap()
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// TLS (feature `tls`): a `redis-server` with a TLS port and certificates the test makes, which
/// requires client certificates. With the test's CA and a client certificate passed through
/// `client(..)`, locks, waits and releases work over `rediss://`; without a client certificate
/// the server refuses, and a CA the system does not trust fails verification. Always on the
/// system's `redis-server`: TLS is the client's part here, and the server matrix's builds from
/// PyPI (`.ci/run`) have none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_work_over_tls_with_a_ca_and_a_client_certificate() {
    let certs = Certificates::make();
    let tls_port = free_port();
    let server = RedisServer::start_binary(
        "redis-server",
        &[
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &certs.path("server.crt"),
            "--tls-key-file",
            &certs.path("server.key"),
            "--tls-ca-cert-file",
            &certs.path("ca.crt"),
            "--tls-auth-clients",
            "yes",
        ],
    );
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let tls = |client_tls: Option<redis::ClientTlsConfig>| {
        redis::Client::build_with_tls(
            url.as_str(),
            redis::TlsCertificates {
                client_tls,
                root_cert: Some(certs.read("ca.crt")),
            },
        )
        .unwrap()
    };
    let client_cert = || {
        Some(redis::ClientTlsConfig {
            client_cert: certs.read("client.crt"),
            client_key: certs.read("client.key"),
        })
    };
    let locks = LockManager::builder()
        .client(tls(client_cert()))
        .build()
        .await
        .expect("connects over TLS");
    let held = locks.try_acquire("tls", LONG).await.unwrap().unwrap();
    let w = locks.clone();
    let waiting =
        tokio::spawn(async move { w.acquire("tls", LONG, Duration::from_secs(10)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(held.release().await.unwrap());
    let g = waiting
        .await
        .unwrap()
        .expect("woken over the TLS pub/sub connection");
    assert_eq!(server.lock_keys(), vec![locks.key_for("tls")]);
    assert!(g.release().await.unwrap());
    // No client certificate: the server refuses the handshake.
    let e = LockManager::builder()
        .client(tls(None))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(e, LockError::Connect { .. }), "{e:?}");
    // The system's trust store does not know the test's CA.
    let e = LockManager::connect(&url).await.unwrap_err();
    assert!(matches!(e, LockError::Connect { .. }), "{e:?}");
}

/// `force_release` wakes the waiters by message, fair ones included, like a release: with a
/// one-minute poll interval and a holder lease of a minute, only the message can wake them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_release_wakes_the_waiters_at_once() {
    let server = RedisServer::start();
    let manager = || {
        LockManager::builder()
            .url(&server.url())
            .max_poll_interval(Duration::from_secs(60))
            .build()
    };
    let (holder, waiters) = (manager().await.unwrap(), manager().await.unwrap());
    for fair in [false, true] {
        let name = format!("stuck:{fair}");
        let stuck = holder
            .lock(name.clone())
            .ttl(Duration::from_secs(60))
            .acquire()
            .await
            .unwrap();
        let waiter = {
            let (waiters, name) = (waiters.clone(), name.clone());
            tokio::spawn(async move {
                waiters
                    .lock(name)
                    .ttl(LONG)
                    .wait(Duration::from_secs(30))
                    .fair(fair)
                    .acquire()
                    .await
            })
        };
        // Subscribed and marked: the waiter waits for the message.
        assert!(
            eventually(Duration::from_secs(5), || {
                let value: Option<String> =
                    server.query(redis::cmd("GET").arg(holder.key_for(&name)));
                value.is_some_and(|v| v.contains('*'))
            })
            .await
        );
        let freed = Instant::now();
        assert!(holder.force_release(&name).await.unwrap());
        let taken = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the force-release, not by a poll")
            .unwrap()
            .unwrap();
        assert!(freed.elapsed() < Duration::from_secs(5));
        assert!(!stuck.release().await.unwrap(), "evicted");
        assert!(taken.release().await.unwrap());
    }
}

/// A force-release of one holder (`evict_holders(name, Some(holder))`): a lock of permits
/// loses that holder's permits only, and a lock that changed hands since the operator looked
/// is left to its new holder (a second `release --force` used to evict it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicting_one_holder_leaves_the_others_and_the_next_holder() {
    let server = RedisServer::start();
    let worker = |id: &'static str| {
        LockManager::builder()
            .url(&server.url())
            .holder_id(id)
            .build()
    };
    let (seven, nine) = (
        worker("worker-7").await.unwrap(),
        worker("worker-9").await.unwrap(),
    );
    let ops = LockManager::connect(&server.url()).await.unwrap();

    let p7 = seven
        .lock("quota")
        .permits(3)
        .ttl(LONG)
        .acquire()
        .await
        .unwrap();
    let p9 = nine
        .lock("quota")
        .permits(3)
        .ttl(LONG)
        .acquire()
        .await
        .unwrap();
    let evicted = ops.evict_holders("quota", Some("worker-7")).await.unwrap();
    assert_eq!(evicted.len(), 1, "{evicted:?}");
    assert_eq!(evicted[0].holder, "worker-7");
    assert!(!p7.extend(LONG).await.unwrap(), "worker-7's permit is gone");
    assert!(p9.extend(LONG).await.unwrap(), "worker-9 keeps its permit");
    let left: Vec<String> = ops
        .list("quota")
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.holder)
        .collect();
    assert_eq!(left, ["worker-9"]);

    assert!(
        matches!(
            ops.evict_holders("quota", Some("")).await,
            Err(LockError::InvalidConfig { .. })
        ),
        "an empty holder id evicts nobody, and is refused"
    );
    assert!(p9.extend(LONG).await.unwrap());

    // The hash lives as long as the holds it keeps, not as long as the evicted one's.
    let _q7 = seven
        .lock("quota2")
        .permits(3)
        .ttl(LONG)
        .acquire()
        .await
        .unwrap();
    let _q9 = nine
        .lock("quota2")
        .permits(3)
        .ttl(Duration::from_secs(2))
        .acquire()
        .await
        .unwrap();
    assert_eq!(
        ops.evict_holders("quota2", Some("worker-7"))
            .await
            .unwrap()
            .len(),
        1
    );
    let pttl: i64 = server.query(redis::cmd("PTTL").arg(ops.key_for("quota2")));
    assert!(
        (0..=2_001).contains(&pttl),
        "the key outlives its last hold: {pttl} ms"
    );

    let stuck = seven.try_acquire("job", LONG).await.unwrap().unwrap();
    assert_eq!(
        ops.evict_holders("job", Some("worker-7"))
            .await
            .unwrap()
            .len(),
        1
    );
    let next = nine.try_acquire("job", LONG).await.unwrap().unwrap();
    assert!(
        ops.evict_holders("job", Some("worker-7"))
            .await
            .unwrap()
            .is_empty(),
        "the lock changed hands: the next holder stays"
    );
    assert!(next.extend(LONG).await.unwrap());
    assert!(!stuck.release().await.unwrap());
    assert!(next.release().await.unwrap());
    assert!(p9.release().await.unwrap());
}

/// `LockGuard::holding`: a guard taken with the runtime API lends its hold to reentrant
/// acquisitions inside the future it runs (no command, nothing released); outside it, or in a
/// task spawned from it, the lock is held by another owner as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_lends_its_hold_to_reentrant_acquisitions_inside_holding() {
    let server = RedisServer::start();
    let locks = LockManager::connect(&server.url()).await.unwrap();
    let outer = locks.try_acquire("books", LONG).await.unwrap().unwrap();
    assert!(!lock_core::held("books"), "not inside holding()");
    assert!(locks
        .lock("books")
        .reentrant(true)
        .try_acquire()
        .await
        .unwrap()
        .is_none());
    let sets = server.command_calls("set");
    outer
        .holding(async {
            assert!(lock_core::held("books"));
            let inner = locks.lock("books").reentrant(true).acquire().await.unwrap();
            assert!(
                inner.release().await.unwrap(),
                "ends nothing, reports the hold"
            );
            let spawned = {
                let locks = locks.clone();
                tokio::spawn(async move {
                    (
                        lock_core::held("books"),
                        locks.lock("books").reentrant(true).try_acquire().await,
                    )
                })
            };
            let (held_there, other) = spawned.await.unwrap();
            assert!(!held_there);
            assert!(other.unwrap().is_none(), "another task is another owner");
        })
        .await;
    // One SET: the spawned task's refused attempt; none for the nested hold.
    assert_eq!(server.command_calls("set"), sets + 1);
    let value: Option<String> = server.query(redis::cmd("GET").arg(locks.key_for("books")));
    assert!(value.is_some(), "still held by the outer guard");
    assert!(outer.release().await.unwrap());
    assert!(server.lock_keys().is_empty());
}

/// The server matrix (`.ci/run` runs this binary and scale_out.rs once per server, naming it in
/// `LOCK_TESTS_SERVER` and its version in `LOCK_TESTS_SERVER_VERSION`): the servers the tests
/// start are that version, so that a matrix entry cannot quietly test the default server.
#[test]
fn the_servers_started_are_the_matrix_entry_asked_for() {
    let server = RedisServer::start();
    let version = server.version();
    match std::env::var("LOCK_TESTS_SERVER_VERSION") {
        // Whole components: `8.1` is 8.1.8, not 8.10.0.
        Ok(expected) => assert!(
            version == expected || version.starts_with(&format!("{expected}.")),
            "{} is {version}, not {expected}",
            lock_test_support::server_binary()
        ),
        Err(_) => eprintln!("testing on {version} (no LOCK_TESTS_SERVER_VERSION to check)"),
    }
}
