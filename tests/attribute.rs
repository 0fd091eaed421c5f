//! `#[distributed_lock]` on real Redis: exclusion, key rendering, release on every exit path,
//! on_busy, wait, managers, guard binding, crate renaming.

// lock-core under another name, as a `[dependencies] my_locks = { package = "lock-core" }`
// rename would give it, for the attribute's `crate = "..."` argument.
extern crate lock_core as renamed_lock_core;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lock_core::{distributed_lock, LockError, LockGuard, LockManager};
use lock_test_support::{server_and_manager, JobError, RedisServer};

#[distributed_lock(key = "count", ttl = "10s", wait = "20s", manager = locks)]
async fn count_exclusively(
    locks: &LockManager,
    inside: &AtomicBool,
    counter: &AtomicU32,
) -> Result<(), JobError> {
    assert!(!inside.swap(true, Ordering::SeqCst), "two bodies at once");
    let seen = counter.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1)).await;
    counter.store(seen + 1, Ordering::SeqCst);
    inside.store(false, Ordering::SeqCst);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_never_runs_twice_at_once_across_concurrent_calls() {
    let (_server, locks) = server_and_manager().await;
    let inside = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU32::new(0));
    let mut calls = Vec::new();
    for _ in 0..24 {
        let (locks, inside, counter) = (locks.clone(), inside.clone(), counter.clone());
        calls.push(tokio::spawn(async move {
            count_exclusively(&locks, &inside, &counter).await
        }));
    }
    for c in calls {
        c.await.unwrap().unwrap();
    }
    assert_eq!(counter.load(Ordering::SeqCst), 24);
}

/// Readers and writers of one catalog: `inside` counts the readers in their body, `writing`
/// is set while the writer is in its own.
struct Catalog {
    inside: AtomicU32,
    most: AtomicU32,
    writing: AtomicBool,
    writes: AtomicU32,
}

#[distributed_lock(key = "catalog:{id}", ttl = "10s", wait = "20s", shared = true, manager = locks)]
async fn read_catalog(locks: &LockManager, id: u32, catalog: &Catalog) -> Result<(), JobError> {
    let now = catalog.inside.fetch_add(1, Ordering::SeqCst) + 1;
    catalog.most.fetch_max(now, Ordering::SeqCst);
    assert!(
        !catalog.writing.load(Ordering::SeqCst),
        "read during a write"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !catalog.writing.load(Ordering::SeqCst),
        "read during a write"
    );
    catalog.inside.fetch_sub(1, Ordering::SeqCst);
    Ok(())
}

#[distributed_lock(key = "catalog:{id}", ttl = "10s", wait = "20s", manager = locks)]
async fn write_catalog(locks: &LockManager, id: u32, catalog: &Catalog) -> Result<(), JobError> {
    assert!(!catalog.writing.swap(true, Ordering::SeqCst), "two writers");
    assert_eq!(
        catalog.inside.load(Ordering::SeqCst),
        0,
        "write during a read"
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        catalog.inside.load(Ordering::SeqCst),
        0,
        "write during a read"
    );
    catalog.writes.fetch_add(1, Ordering::SeqCst);
    catalog.writing.store(false, Ordering::SeqCst);
    Ok(())
}

/// `shared = true`: calls of the reader run together, never with the writer (the same key
/// without `shared`), which still gets its turns among them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_true_reads_together_and_never_with_a_write() {
    let (_server, locks) = server_and_manager().await;
    let catalog = Arc::new(Catalog {
        inside: AtomicU32::new(0),
        most: AtomicU32::new(0),
        writing: AtomicBool::new(false),
        writes: AtomicU32::new(0),
    });
    let mut calls = Vec::new();
    for i in 0..24 {
        let (locks, catalog) = (locks.clone(), catalog.clone());
        calls.push(tokio::spawn(async move {
            if i % 6 == 5 {
                write_catalog(&locks, 7, &catalog).await
            } else {
                read_catalog(&locks, 7, &catalog).await
            }
        }));
    }
    for c in calls {
        c.await.unwrap().unwrap();
    }
    assert_eq!(catalog.writes.load(Ordering::SeqCst), 4);
    assert!(
        catalog.most.load(Ordering::SeqCst) >= 2,
        "shared holds ran together"
    );
    assert!(locks.inspect("catalog:7").await.unwrap().is_none());
}

#[distributed_lock(key = "fair-count", ttl = "10s", wait = "20s", fair = true, manager = locks)]
async fn count_in_turn(
    locks: &LockManager,
    turns: &std::sync::Mutex<Vec<u32>>,
    me: u32,
) -> Result<(), JobError> {
    turns.lock().unwrap().push(me);
    tokio::time::sleep(Duration::from_millis(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fair_true_serves_concurrent_calls_one_at_a_time_in_arrival_order() {
    let (server, locks) = server_and_manager().await;
    let turns = Arc::new(std::sync::Mutex::new(Vec::new()));
    let held = locks
        .try_acquire("fair-count", Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    let mut calls = Vec::new();
    for me in 0..5u32 {
        let (locks, turns) = (locks.clone(), turns.clone());
        calls.push(tokio::spawn(async move {
            count_in_turn(&locks, &turns, me).await
        }));
        // Each call is in line before the next one arrives.
        let in_line = || {
            let fields: i64 = server.query(redis::cmd("HLEN").arg("lock:{fair-count}:q"));
            fields - 1 == i64::from(me) + 1
        };
        assert!(lock_test_support::eventually(Duration::from_secs(5), in_line).await);
    }
    assert!(held.release().await.unwrap());
    for c in calls {
        c.await.unwrap().unwrap();
    }
    assert_eq!(*turns.lock().unwrap(), vec![0, 1, 2, 3, 4]);
}

#[distributed_lock(key = "tenant:{tenant}", ttl = "10s", manager = locks)]
async fn meet(
    locks: &LockManager,
    tenant: u32,
    barrier: &tokio::sync::Barrier,
) -> Result<(), JobError> {
    // Both bodies must be inside at once to pass the barrier.
    tokio::time::timeout(Duration::from_secs(5), barrier.wait())
        .await
        .map_err(|_| JobError::Failed("keys did not run in parallel"))?;
    Ok(())
}

#[tokio::test]
async fn different_keys_run_in_parallel() {
    let (_server, locks) = server_and_manager().await;
    let barrier = tokio::sync::Barrier::new(2);
    let (a, b) = tokio::join!(meet(&locks, 1, &barrier), meet(&locks, 2, &barrier));
    a.unwrap();
    b.unwrap();
}

struct Invoice {
    tenant: u64,
    region: &'static str,
}

#[distributed_lock(key = "invoices:{invoice.tenant}:{invoice.region}:{{literal}}", ttl = "10s", manager = locks)]
async fn render(
    locks: &LockManager,
    server: &RedisServer,
    invoice: Invoice,
) -> Result<Vec<String>, JobError> {
    let _ = &invoice;
    Ok(server.lock_keys())
}

#[tokio::test]
async fn key_renders_from_arguments() {
    let (server, locks) = server_and_manager().await;
    let keys = render(
        &locks,
        &server,
        Invoice {
            tenant: 7,
            region: "eu",
        },
    )
    .await
    .unwrap();
    assert_eq!(keys, vec!["lock:{invoices:7:eu:{literal}}".to_owned()]);
}

#[distributed_lock(key = format!("expr:{}", n * 2), ttl = "10s", manager = locks)]
async fn key_from_expression(
    locks: &LockManager,
    server: &RedisServer,
    n: u32,
) -> Result<Vec<String>, JobError> {
    Ok(server.lock_keys())
}

#[tokio::test]
async fn key_may_be_any_expression() {
    let (server, locks) = server_and_manager().await;
    assert_eq!(
        key_from_expression(&locks, &server, 21).await.unwrap(),
        vec!["lock:{expr:42}"]
    );
}

#[distributed_lock(key = "exit", ttl = "30s", manager = locks)]
async fn exits(locks: &LockManager, how: u8) -> Result<u8, JobError> {
    match how {
        0 => Ok(0),
        1 => Err(JobError::Failed("early"))?,
        2 => return Ok(2),
        _ => panic!("body panicked"),
    }
}

async fn assert_free_now(locks: &LockManager) {
    let g = locks
        .try_acquire("exit", Duration::from_secs(1))
        .await
        .unwrap();
    let g = g.expect("the lock must be free the moment the fn returns");
    assert!(g.release().await.unwrap());
}

#[tokio::test]
async fn lock_is_free_the_moment_the_fn_returns() {
    let (_server, locks) = server_and_manager().await;
    assert_eq!(exits(&locks, 0).await.unwrap(), 0);
    assert_free_now(&locks).await;
    assert_eq!(
        exits(&locks, 2).await.unwrap(),
        2,
        "`return` inside the body"
    );
    assert_free_now(&locks).await;
}

#[tokio::test]
async fn lock_is_free_after_the_body_returns_err_through_question_mark() {
    let (_server, locks) = server_and_manager().await;
    assert!(matches!(
        exits(&locks, 1).await,
        Err(JobError::Failed("early"))
    ));
    assert_free_now(&locks).await;
}

#[tokio::test]
async fn lock_is_released_after_the_body_panics() {
    let (server, locks) = server_and_manager().await;
    let call = {
        let locks = locks.clone();
        tokio::spawn(async move { exits(&locks, 3).await })
    };
    assert!(call.await.unwrap_err().is_panic());
    // Released by the guard's drop in the background: a short wait, far below the 30 s TTL.
    let g = locks
        .acquire("exit", Duration::from_secs(1), Duration::from_secs(2))
        .await
        .unwrap();
    drop(g);
    locks.shutdown(Duration::from_secs(2)).await.unwrap();
    assert!(server.lock_keys().is_empty());
}

#[distributed_lock(key = "root-panic", ttl = "30s", manager = locks)]
async fn panics_in_the_root_task(locks: &LockManager) -> Result<(), JobError> {
    panic!("the job failed");
}

/// A panic in the root task (`#[tokio::test]`, `block_on`) ends its runtime, so a release left
/// to the guard's drop never ran and the lock stayed held for its whole ttl (PTTL 29.7 s of 30
/// s). The release is awaited before the panic goes on, on either runtime flavour.
#[test]
fn a_panic_in_a_root_task_releases_the_lock_before_it_unwinds() {
    let server = RedisServer::start();
    for multi_thread in [false, true] {
        let mut builder = if multi_thread {
            tokio::runtime::Builder::new_multi_thread()
        } else {
            tokio::runtime::Builder::new_current_thread()
        };
        let runtime = builder.enable_all().build().unwrap();
        let url = server.url();
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runtime.block_on(async {
                let locks = LockManager::connect(&url).await.unwrap();
                let _ = panics_in_the_root_task(&locks).await;
            })
        }));
        assert!(unwound.is_err(), "the panic goes on");
        drop(runtime);
        let left = server.lock_keys();
        assert!(
            left.is_empty(),
            "multi_thread {multi_thread}: {left:?} still held"
        );
    }
}

#[distributed_lock(key = "forever", ttl = "30s", manager = locks)]
async fn never_ends(
    locks: &LockManager,
    started: tokio::sync::oneshot::Sender<()>,
) -> Result<(), JobError> {
    started.send(()).unwrap();
    std::future::pending::<()>().await;
    Ok(())
}

#[tokio::test]
async fn lock_is_released_when_the_caller_drops_the_future_mid_body() {
    let (server, locks) = server_and_manager().await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let call = tokio::spawn({
        let locks = locks.clone();
        async move { never_ends(&locks, tx).await }
    });
    rx.await.unwrap();
    assert!(locks
        .try_acquire("forever", Duration::from_secs(1))
        .await
        .unwrap()
        .is_none());
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    let g = locks
        .acquire("forever", Duration::from_secs(1), Duration::from_secs(2))
        .await
        .unwrap();
    drop(g);
    locks.shutdown(Duration::from_secs(2)).await.unwrap();
    assert!(server.lock_keys().is_empty(), "no leak");
}

#[distributed_lock(key = "nightly", ttl = "30s", on_busy = "skip", manager = locks)]
async fn nightly_report(locks: &LockManager, ran: &AtomicBool) -> Result<u32, JobError> {
    ran.store(true, Ordering::SeqCst);
    Ok(7)
}

#[tokio::test]
async fn on_busy_skip_returns_default_without_running_the_body() {
    let (_server, locks) = server_and_manager().await;
    let ran = AtomicBool::new(false);
    let held = locks
        .try_acquire("nightly", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        nightly_report(&locks, &ran).await.unwrap(),
        0,
        "u32::default()"
    );
    assert!(
        !ran.load(Ordering::SeqCst),
        "the body must not run when skipped"
    );
    drop(held);
    locks.shutdown(Duration::from_secs(2)).await.unwrap();
    assert_eq!(nightly_report(&locks, &ran).await.unwrap(), 7);
    assert!(ran.load(Ordering::SeqCst));
}

#[distributed_lock(key = "busy", ttl = "30s", manager = locks)]
async fn no_wait(locks: &LockManager) -> Result<(), JobError> {
    Ok(())
}

#[distributed_lock(key = "busy", ttl = "30s", wait = "3s", manager = locks)]
async fn waits_3s(locks: &LockManager) -> Result<(), JobError> {
    Ok(())
}

#[distributed_lock(key = "busy", ttl = "30s", wait = "200ms", manager = locks)]
async fn waits_200ms(locks: &LockManager) -> Result<(), JobError> {
    Ok(())
}

#[tokio::test]
async fn busy_and_wait_outcomes() {
    let (_server, locks) = server_and_manager().await;
    let held = locks
        .try_acquire("busy", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let busy = no_wait(&locks).await.unwrap_err();
    assert!(
        matches!(busy, JobError::Lock(LockError::Busy { ref name, .. }) if name == "busy"),
        "{busy:?}"
    );
    let timeout = waits_200ms(&locks).await.unwrap_err();
    assert!(
        matches!(timeout, JobError::Lock(LockError::Timeout { .. })),
        "{timeout:?}"
    );
    // The holder finishes in time: the waiting call runs.
    let release = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        held.release().await.unwrap()
    };
    let (waited, released) = tokio::join!(waits_3s(&locks), release);
    assert!(released);
    waited.unwrap();
}

struct Service {
    locks: LockManager,
    id: u32,
    runs: u32,
}

impl Service {
    #[distributed_lock(key = "svc:{self.id}", ttl = "10s", manager = self.locks, guard = lock)]
    async fn by_ref(&self) -> Result<u64, JobError> {
        assert_eq!(lock.name(), "svc:5");
        Ok(lock.fencing_token().await?)
    }

    #[distributed_lock(key = "svc:{self.id}", ttl = "10s", manager = self.locks.clone())]
    async fn by_mut(&mut self) -> Result<u32, JobError> {
        self.runs += 1;
        Ok(self.runs)
    }

    #[distributed_lock(key = "svc:{self.id}", ttl = "10s", manager = self.locks.clone())]
    async fn by_value(self) -> Result<u32, JobError> {
        Ok(self.runs)
    }
}

#[tokio::test]
async fn methods_take_their_manager_from_self_and_bind_the_guard() {
    let (_server, locks) = server_and_manager().await;
    let mut svc = Service {
        locks: locks.clone(),
        id: 5,
        runs: 0,
    };
    let first = svc.by_ref().await.unwrap();
    let second = svc.by_ref().await.unwrap();
    assert!(
        second > first,
        "the guard exposes the fencing token: {first} then {second}"
    );
    assert_eq!(svc.by_mut().await.unwrap(), 1);
    assert_eq!(svc.by_value().await.unwrap(), 1);
    assert!(locks
        .try_acquire("svc:5", Duration::from_secs(1))
        .await
        .unwrap()
        .is_some());
}

#[distributed_lock(key = "default", ttl = "10s")]
async fn uses_default_manager() -> Result<bool, JobError> {
    Ok(true)
}

#[tokio::test]
async fn default_manager_is_used_and_not_configured_without_one() {
    // This is the only test of this binary that touches the process-wide default.
    let err = uses_default_manager().await.unwrap_err();
    assert!(
        matches!(err, JobError::Lock(LockError::NotConfigured)),
        "{err:?}"
    );
    let locks = LockManager::in_memory();
    lock_core::set_default_manager(locks.clone());
    assert!(uses_default_manager().await.unwrap());
    let held = locks
        .try_acquire("default", Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        uses_default_manager().await,
        Err(JobError::Lock(LockError::Busy { .. }))
    ));
    drop(held);
}

#[distributed_lock(key = "renamed", ttl = "10s", manager = locks, crate = "renamed_lock_core")]
async fn through_renamed_crate(
    locks: &renamed_lock_core::LockManager,
) -> Result<(), renamed_lock_core::LockError> {
    Ok(())
}

#[tokio::test]
async fn crate_argument_follows_a_renamed_dependency() {
    let locks = renamed_lock_core::LockManager::in_memory();
    through_renamed_crate(&locks).await.unwrap();
}

#[allow(dead_code)]
fn guard_type_is_nameable(_: &LockGuard) {}

// ---- Reentrancy and `held` ------------------------------------------------------------------

/// The inner step of a ledger posting: takes the same lock as its caller.
#[distributed_lock(key = "ledger:{id}", ttl = "10s", manager = locks, reentrant = true)]
async fn post_line(locks: &LockManager, id: u32) -> Result<bool, LockError> {
    Ok(lock_core::held(&format!("ledger:{id}")))
}

/// The same step, not reentrant: its own caller holds the lock, so it is busy.
#[distributed_lock(key = "ledger:{id}", ttl = "10s", manager = locks)]
async fn post_line_plain(locks: &LockManager, id: u32) -> Result<(), LockError> {
    Ok(())
}

#[distributed_lock(key = "ledger:{id}", ttl = "10s", manager = locks, reentrant = true)]
async fn post(locks: &LockManager, server: &RedisServer, id: u32) -> Result<(), LockError> {
    let key = locks.key_for(&format!("ledger:{id}"));
    assert!(lock_core::held(&format!("ledger:{id}")));
    assert!(!lock_core::held("ledger:other"));
    // Nested in the same task: no second SET, and nothing released when it ends.
    let sets = server.command_calls("set");
    assert!(
        post_line(locks, id).await?,
        "held inside the nested body too"
    );
    assert!(post_line(locks, id).await?);
    assert_eq!(
        server.command_calls("set"),
        sets,
        "no round trip for a nested hold"
    );
    let value: Option<String> = server.query(redis::cmd("GET").arg(&key));
    assert!(value.is_some(), "the outer hold is still there");
    // Not reentrant: the task's own hold makes it busy.
    assert!(matches!(
        post_line_plain(locks, id).await,
        Err(LockError::Busy { .. })
    ));
    // A spawned task is another owner: it does not inherit the hold.
    let spawned = {
        let locks = locks.clone();
        tokio::spawn(async move {
            let held_there = lock_core::held(&format!("ledger:{id}"));
            (held_there, post_line(&locks, id).await)
        })
    };
    let (held_there, outcome) = spawned.await.unwrap();
    assert!(!held_there);
    assert!(
        matches!(outcome, Err(LockError::Busy { .. })),
        "{outcome:?}"
    );
    Ok(())
}

/// Hands out a reentrant guard on its own hold, which then outlives that hold.
#[distributed_lock(key = "ledger:{id}", ttl = "10s", manager = locks)]
async fn leak_nested(locks: &LockManager, id: u32) -> Result<LockGuard, LockError> {
    let nested = locks
        .lock(format!("ledger:{id}"))
        .reentrant(true)
        .acquire()
        .await?;
    assert!(!nested.is_lost());
    assert!(
        nested.release().await?,
        "a nested release ends nothing and reports the hold"
    );
    locks
        .lock(format!("ledger:{id}"))
        .reentrant(true)
        .acquire()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reentrant_guard_that_outlives_its_holder_says_it_is_lost() {
    let (server, locks) = server_and_manager().await;
    let nested = leak_nested(&locks, 3).await.unwrap();
    assert!(server.lock_keys().is_empty(), "the holder released");
    assert!(
        nested.is_lost(),
        "its holder released: it must not say it holds"
    );
    assert!(matches!(
        nested.fencing_token().await,
        Err(LockError::Lost { .. })
    ));
    assert!(!nested.extend(Duration::from_secs(5)).await.unwrap());
    tokio::time::timeout(Duration::from_secs(1), nested.lost())
        .await
        .expect("lost() resolves");
    assert!(!nested.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reentrant_holds_are_task_scoped_and_cost_no_round_trip() {
    let (server, locks) = server_and_manager().await;
    assert!(!lock_core::held("ledger:1"), "nothing held outside a body");
    post(&locks, &server, 1).await.unwrap();
    // The outer holder released: the key is gone, and the lock is free again.
    assert!(server.lock_keys().is_empty());
    let again = locks
        .try_acquire("ledger:1", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(again.unwrap().release().await.unwrap());
    // A reentrant call with no enclosing holder acquires (one SET) and releases as usual.
    let sets = server.command_calls("set");
    assert!(
        post_line(&locks, 2).await.unwrap(),
        "its own lock, inside its body"
    );
    assert_eq!(server.command_calls("set"), sets + 1);
    assert!(server.lock_keys().is_empty());
}

// ---- #[async_trait] -----------------------------------------------------------------------

#[async_trait::async_trait]
trait Billing: Send + Sync {
    async fn bill(&self, tenant: u32) -> Result<u32, LockError>;
}

struct Biller {
    locks: LockManager,
    inside: AtomicBool,
    runs: AtomicU32,
}

#[async_trait::async_trait]
impl Billing for Biller {
    /// The attribute on a method of an `#[async_trait]` impl: the lock is taken inside the
    /// boxed future async-trait makes of the body.
    #[distributed_lock(key = "bill:{tenant}", ttl = "10s", wait = "20s", manager = self.locks)]
    async fn bill(&self, tenant: u32) -> Result<u32, LockError> {
        assert!(lock_core::held(&format!("bill:{tenant}")));
        assert!(
            !self.inside.swap(true, Ordering::SeqCst),
            "two bodies at once"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.inside.store(false, Ordering::SeqCst);
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(tenant * 10)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_of_async_trait_impls_run_under_the_lock() {
    let (server, locks) = server_and_manager().await;
    let biller: Arc<dyn Billing> = Arc::new(Biller {
        locks: locks.clone(),
        inside: AtomicBool::new(false),
        runs: AtomicU32::new(0),
    });
    let mut calls = Vec::new();
    for _ in 0..12 {
        let biller = Arc::clone(&biller);
        calls.push(tokio::spawn(async move { biller.bill(7).await }));
    }
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), 70);
    }
    // Held by someone else: the method waits for it, then runs.
    let held = locks
        .try_acquire("bill:8", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let waiting = {
        let biller = Arc::clone(&biller);
        tokio::spawn(async move { biller.bill(8).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "it waits for the holder");
    assert!(held.release().await.unwrap());
    assert_eq!(waiting.await.unwrap().unwrap(), 80);
    assert!(server.lock_keys().is_empty(), "released after each call");
}

// ---- Code as users write it: macro fragments, aliases, raw identifiers ----------------------

// A fn written by a `macro_rules!`: its arguments arrive as `$key:expr`, `$key:literal`,
// `$ttl:literal` fragments (invisible groups), and its template names a parameter that the
// macro, not its caller, declares.
macro_rules! job_by_expr {
    ($name:ident, $key:expr, $ttl:literal, $fair:literal) => {
        #[distributed_lock(key = $key, ttl = $ttl, fair = $fair, manager = locks)]
        async fn $name(locks: &LockManager, id: u32) -> Result<bool, JobError> {
            Ok(lock_core::held(&format!("job-a:{id}")))
        }
    };
}
job_by_expr!(job_from_expr_fragment, "job-a:{id}", "10s", false);

macro_rules! job_by_literal {
    ($name:ident, $key:literal, $permits:literal) => {
        #[distributed_lock(key = $key, ttl = "10s", permits = $permits, manager = locks)]
        async fn $name(locks: &LockManager, id: u32) -> Result<bool, JobError> {
            Ok(lock_core::held(&format!("job-a:{id}")))
        }
    };
}
job_by_literal!(job_from_literal_fragment, "job-a:{id}", 2);

/// Item 1 of the third pass: a key passed through `macro_rules!` was locked literally
/// (`"job-a:{id}"` for every id, one lock for all); literal arguments from fragments were
/// refused. The template is rendered per call, and each call holds its own name.
#[tokio::test]
async fn a_template_passed_through_macro_rules_is_rendered_per_call() {
    let (_server, locks) = server_and_manager().await;
    assert!(job_from_expr_fragment(&locks, 7).await.unwrap());
    assert!(job_from_literal_fragment(&locks, 8).await.unwrap());
    // Two ids at once: two names, so neither waits for the other.
    let busy = locks
        .try_acquire("job-a:1", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert!(job_from_expr_fragment(&locks, 2).await.unwrap());
    assert!(matches!(
        job_from_expr_fragment(&locks, 1).await,
        Err(JobError::Lock(LockError::Busy { .. }))
    ));
    assert!(busy.release().await.unwrap());
}

type JobResult<T> = Result<T, JobError>;

#[distributed_lock(key = "alias", ttl = "10s", manager = locks)]
async fn returns_an_alias(locks: &LockManager) -> JobResult<u8> {
    Ok(1)
}

#[distributed_lock(key = "raw:{type}:{r#type}", ttl = "10s", manager = locks)]
async fn raw_parameter(locks: &LockManager, r#type: u32) -> Result<bool, JobError> {
    Ok(lock_core::held(&format!("raw:{0}:{0}", r#type)))
}

/// Items 7 and 10: a `Result` alias of another name is accepted, and a lock error comes back as
/// its `Err`; a raw identifier parameter is named `{type}` or `{r#type}`.
#[tokio::test]
async fn a_result_alias_and_a_raw_parameter_are_accepted() {
    let (_server, locks) = server_and_manager().await;
    assert_eq!(returns_an_alias(&locks).await.unwrap(), 1);
    let busy = locks
        .try_acquire("alias", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        returns_an_alias(&locks).await,
        Err(JobError::Lock(LockError::Busy { .. }))
    ));
    assert!(busy.release().await.unwrap());
    assert!(raw_parameter(&locks, 5).await.unwrap());
}

#[distributed_lock(key = "stack-first", ttl = "10s", wait = "5s", manager = locks)]
#[distributed_lock(key = "stack-second", ttl = "10s", wait = "5s", manager = locks)]
async fn takes_two(locks: &LockManager) -> Result<(bool, bool), JobError> {
    Ok((
        lock_core::held("stack-first"),
        lock_core::held("stack-second"),
    ))
}

/// Stacked attributes take their locks top-down, as the code reads. They used to take them
/// bottom-up: with `stack-second` busy, the call held nothing while it waited for it (the
/// top lock, taken second, was free for anyone), inverting the order hand-written code uses.
#[tokio::test]
async fn stacked_attributes_take_their_locks_top_down() {
    let (server, locks) = server_and_manager().await;
    let other = LockManager::connect(&server.url()).await.unwrap();
    let second = other
        .try_acquire("stack-second", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let call = tokio::spawn({
        let locks = locks.clone();
        async move { takes_two(&locks).await }
    });
    // While it waits for the second, it holds the first (polled, within a deadline).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while other.inspect("stack-first").await.unwrap().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the top lock is not held while the call waits for the one below"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!call.is_finished(), "it waits for the second");
    assert!(second.release().await.unwrap());
    assert_eq!(call.await.unwrap().unwrap(), (true, true));
}

struct Account {
    id: u32,
    #[allow(dead_code)]
    owner: &'static str,
}

#[distributed_lock(key = "move:{from}:{to}", ttl = "10s", manager = locks)]
async fn by_tuple_pattern(locks: &LockManager, (from, to): (u32, u32)) -> Result<bool, JobError> {
    Ok(lock_core::held(&format!("move:{from}:{to}")))
}

#[distributed_lock(key = "account:{id}", ttl = "10s", manager = locks)]
async fn by_struct_pattern(
    locks: &LockManager,
    Account { id, .. }: Account,
) -> Result<bool, JobError> {
    Ok(lock_core::held(&format!("account:{id}")))
}

/// Parameters written as patterns bind names a template may use (they said "the fn has no
/// parameters").
#[tokio::test]
async fn names_bound_by_parameter_patterns_are_placeholders() {
    let (_server, locks) = server_and_manager().await;
    assert!(by_tuple_pattern(&locks, (1, 2)).await.unwrap());
    let account = Account { id: 9, owner: "x" };
    assert!(by_struct_pattern(&locks, account).await.unwrap());
}
