//! Long jobs on real Redis: the auto_extend watchdog, lost-lease detection, max_hold, min_hold,
//! fencing across clients, and the attribute's on_lost handling.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lock_core::{distributed_lock, LockError, LockManager};
use lock_test_support::{eventually, server_and_manager, JobError, RedisServer};
use tokio::time::Instant;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_extend_keeps_the_lease_through_a_job_five_times_its_ttl() {
    let (server, locks) = server_and_manager().await;
    let other = LockManager::connect(&server.url()).await.unwrap();
    let guard = locks
        .lock("long")
        .ttl(ms(600))
        .auto_extend(true)
        .acquire()
        .await
        .unwrap();
    let key = locks.key_for("long");
    let began = Instant::now();
    while began.elapsed() < ms(3000) {
        let value: Option<String> = server.query(redis::cmd("GET").arg(&key));
        assert_eq!(
            value.as_deref(),
            Some(guard.token()),
            "same token the whole time"
        );
        assert!(other.try_acquire("long", ms(300)).await.unwrap().is_none());
        assert!(!guard.is_lost());
        tokio::time::sleep(ms(25)).await;
    }
    assert!(guard.release().await.unwrap());
    assert!(server.lock_keys().is_empty(), "gone right after the job");
}

#[tokio::test]
async fn no_extension_reaches_redis_after_release_or_drop() {
    let (server, locks) = server_and_manager().await;
    for drop_it in [false, true] {
        let guard = locks
            .lock("quiet")
            .ttl(ms(600))
            .auto_extend(true)
            .acquire()
            .await
            .unwrap();
        // Renewals happen (every 200 ms): wait for two to reach Redis (three script calls, as
        // the first may take two: `EVALSHA`, `NOSCRIPT`, `EVAL`).
        let scripts = || server.command_calls("evalsha") + server.command_calls("eval");
        let renewals = scripts();
        assert!(
            eventually(Duration::from_secs(10), || scripts() >= renewals + 3).await,
            "no renewals"
        );
        assert!(!guard.is_lost());
        if drop_it {
            drop(guard);
            locks.shutdown(Duration::from_secs(2)).await.unwrap();
        } else {
            assert!(guard.release().await.unwrap());
        }
        let _: () = server.query(redis::cmd("CONFIG").arg("RESETSTAT"));
        // Proving an absence takes a window: five renewal periods of silence.
        tokio::time::sleep(ms(1000)).await;
        assert_eq!(
            server.command_calls("evalsha") + server.command_calls("eval"),
            0
        );
        assert!(server.lock_keys().is_empty());
    }
}

#[tokio::test]
async fn key_deleted_behind_the_holders_back_is_lost_within_a_third_of_the_ttl() {
    let (server, locks) = server_and_manager().await;
    let ttl = ms(6000);
    let guard = locks
        .lock("stolen")
        .ttl(ttl)
        .auto_extend(true)
        .acquire()
        .await
        .unwrap();
    let _: () = server.query(redis::cmd("DEL").arg(locks.key_for("stolen")));
    let deleted = Instant::now();
    tokio::time::timeout(ttl / 3 + ms(750), guard.lost())
        .await
        .expect("lost() resolves");
    assert!(guard.is_lost());
    assert!(
        deleted.elapsed() < ttl,
        "noticed before the lease would have run out"
    );
    assert!(!guard.release().await.unwrap());
}

#[tokio::test]
async fn redis_paused_past_the_ttl_loses_the_guard_by_its_local_deadline() {
    let (server, locks) = server_and_manager().await;
    let ttl = ms(400);
    let guard = locks
        .lock("paused")
        .ttl(ttl)
        .auto_extend(true)
        .acquire()
        .await
        .unwrap();
    server.pause();
    let paused = Instant::now();
    let lost = tokio::time::timeout(ttl + ms(300), guard.lost()).await;
    let after = paused.elapsed();
    server.resume();
    lost.expect("the guard is lost although Redis never answered");
    assert!(after <= ttl + ms(300), "{after:?}");
    assert!(guard.remaining().is_zero());
}

#[tokio::test]
async fn max_hold_stops_renewing_and_the_lease_lapses() {
    let (server, locks) = server_and_manager().await;
    let guard = locks
        .lock("runaway")
        .ttl(ms(200))
        .auto_extend(true)
        .max_hold(ms(500))
        .acquire()
        .await
        .unwrap();
    let began = Instant::now();
    tokio::time::timeout(Duration::from_secs(3), guard.lost())
        .await
        .expect("lapses");
    let held = began.elapsed();
    assert!(held >= ms(450), "renewed until about max_hold: {held:?}");
    // The key expires in Redis at the same time, so another owner can take it.
    let next = locks
        .acquire("runaway", ms(200), Duration::from_secs(2))
        .await
        .unwrap();
    drop(next);
    drop(guard);
    locks.shutdown(Duration::from_secs(2)).await.unwrap();
    assert!(server.lock_keys().is_empty());
}

#[tokio::test]
async fn min_hold_keeps_others_out_after_a_quick_job_then_frees() {
    let (server, locks) = server_and_manager().await;
    let guard = locks
        .lock("quick")
        .ttl(Duration::from_secs(10))
        .min_hold(ms(500))
        .acquire()
        .await
        .unwrap();
    let taken = Instant::now();
    assert!(
        guard.release().await.unwrap(),
        "released (by shortening the expiry)"
    );
    let pttl: i64 = server.query(redis::cmd("PTTL").arg(locks.key_for("quick")));
    assert!(
        pttl > 0 && pttl <= 500,
        "expires at the end of the minimum hold: {pttl}"
    );
    assert!(
        locks.try_acquire("quick", ms(100)).await.unwrap().is_none(),
        "still held"
    );
    let next = locks
        .acquire("quick", ms(100), Duration::from_secs(2))
        .await
        .unwrap();
    assert!(
        taken.elapsed() >= ms(450),
        "freed only after about min_hold: {:?}",
        taken.elapsed()
    );
    drop(next);
}

#[tokio::test]
async fn fencing_tokens_keep_growing_across_client_restarts() {
    let server = RedisServer::start();
    let mut last = 0;
    for _client in 0..3 {
        let locks = LockManager::connect(&server.url()).await.unwrap();
        for _ in 0..10 {
            let g = locks.try_acquire("fence", ms(1000)).await.unwrap().unwrap();
            let fence = g.fencing_token().await.unwrap();
            assert!(fence > last);
            last = fence;
            assert!(g.release().await.unwrap());
        }
        drop(locks);
    }
    assert!(last > 0);
}

#[distributed_lock(key = "abort", ttl = "300ms", auto_extend = true, manager = locks)]
async fn aborted_job(
    locks: &LockManager,
    server: &RedisServer,
    after: &AtomicBool,
) -> Result<(), JobError> {
    let _: () = server.query(redis::cmd("DEL").arg(locks.key_for("abort")));
    tokio::time::sleep(Duration::from_secs(5)).await;
    after.store(true, Ordering::SeqCst); // must never run
    Ok(())
}

#[tokio::test]
async fn on_lost_abort_stops_the_body_and_returns_lost() {
    let (server, locks) = server_and_manager().await;
    let after = AtomicBool::new(false);
    let began = Instant::now();
    let result = aborted_job(&locks, &server, &after).await;
    assert!(
        matches!(result, Err(JobError::Lock(LockError::Lost { ref name })) if name == "abort"),
        "{result:?}"
    );
    assert!(
        !after.load(Ordering::SeqCst),
        "the side effect after the next await never happened"
    );
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "stopped early: {:?}",
        began.elapsed()
    );
}

#[distributed_lock(key = "cap", ttl = "200ms", auto_extend = true, max_hold = "500ms", manager = locks)]
async fn never_ending(locks: &LockManager) -> Result<(), JobError> {
    std::future::pending::<()>().await;
    Ok(())
}

#[tokio::test]
async fn max_hold_aborts_a_job_that_never_ends() {
    let (_server, locks) = server_and_manager().await;
    let result = tokio::time::timeout(Duration::from_secs(5), never_ending(&locks))
        .await
        .expect("aborted");
    assert!(
        matches!(result, Err(JobError::Lock(LockError::Lost { .. }))),
        "{result:?}"
    );
}

#[distributed_lock(key = "cont", ttl = "300ms", auto_extend = true, on_lost = "continue", manager = locks, guard = lock)]
async fn continued_job(locks: &LockManager, server: &RedisServer) -> Result<bool, JobError> {
    let _: () = server.query(redis::cmd("DEL").arg(locks.key_for("cont")));
    lock.lost().await;
    Ok(lock.is_lost())
}

#[tokio::test]
async fn on_lost_continue_lets_the_body_finish_and_see_the_loss() {
    let (server, locks) = server_and_manager().await;
    let saw_loss = tokio::time::timeout(Duration::from_secs(3), continued_job(&locks, &server))
        .await
        .unwrap();
    assert!(saw_loss.unwrap());
}

#[tokio::test(start_paused = true)]
async fn in_memory_watchdog_runs_on_paused_time() {
    let locks = LockManager::in_memory();
    let guard = locks
        .lock("mem")
        .ttl(Duration::from_secs(30))
        .auto_extend(true)
        .acquire()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(300)).await; // ten leases, auto-advanced
    assert!(!guard.is_lost());
    assert!(locks
        .try_acquire("mem", Duration::from_secs(1))
        .await
        .unwrap()
        .is_none());
    assert!(guard.release().await.unwrap());
}

#[distributed_lock(key = "stall", ttl = "1s", auto_extend = true, manager = locks)]
async fn stepping_job(
    locks: &LockManager,
    steps: &std::sync::Mutex<Vec<std::time::Instant>>,
) -> Result<(), JobError> {
    loop {
        tokio::time::sleep(ms(50)).await;
        steps.lock().unwrap().push(std::time::Instant::now());
    }
}

/// The holder's runtime thread stalls (a blocking call) past its lease while another process
/// takes the lock. When the stall ends, the body's timer and the loss are ready in the same
/// wake-up: the body must not run its next step (a write, in a real job), as the loss is
/// checked before every poll. Regression: `on_lost = "abort"` raced the body against the loss
/// with the body first, so one more step ran while the other process held the lock.
#[tokio::test]
async fn on_lost_abort_runs_no_step_after_a_stall_past_the_lease() {
    let (server, locks) = server_and_manager().await;
    let steps = std::sync::Mutex::new(Vec::new());
    // The other process: its own runtime on its own thread, unaffected by the stall.
    let taken = std::sync::Arc::new(std::sync::Mutex::new(None::<std::time::Instant>));
    let other = std::thread::spawn({
        let (url, taken) = (server.url(), taken.clone());
        move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let other = LockManager::connect(&url).await.unwrap();
                // Let the job take the lock first.
                tokio::time::sleep(ms(200)).await;
                let guard = other
                    .acquire("stall", Duration::from_secs(5), Duration::from_secs(20))
                    .await
                    .unwrap();
                *taken.lock().unwrap() = Some(std::time::Instant::now());
                tokio::time::sleep(Duration::from_secs(2)).await;
                guard.release().await.unwrap();
            });
        }
    });
    let stall = async {
        eventually(Duration::from_secs(10), || steps.lock().unwrap().len() >= 3).await;
        // Blocks the whole (current-thread) runtime: the job and its watchdog alike.
        std::thread::sleep(Duration::from_millis(2500));
        std::time::Instant::now()
    };
    let (outcome, stall_ended) = tokio::join!(stepping_job(&locks, &steps), stall);
    other.join().unwrap();
    assert!(
        matches!(outcome, Err(JobError::Lock(LockError::Lost { .. }))),
        "{outcome:?}"
    );
    let taken = taken
        .lock()
        .unwrap()
        .expect("the other process took the lock");
    assert!(
        taken < stall_ended,
        "the other process took the lock during the stall, as the scenario needs"
    );
    let steps = steps.lock().unwrap();
    let late = steps.iter().filter(|&&step| step > taken).count();
    assert_eq!(
        late, 0,
        "{late} body steps ran while another process held the lock"
    );
}
