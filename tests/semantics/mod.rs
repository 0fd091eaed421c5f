//! The semantic suite: what every backend must do the same way. Each `async fn(Fixture)`
//! runs against one server and in memory (tests/core.rs), against a Redis Cluster and against
//! Redlock over independent masters (tests/scale_out.rs).

#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lock_core::{LockError, LockGuard, LockManager};
use lock_test_support::RedisServer;
use tokio::time::Instant;

pub(crate) const LONG: Duration = Duration::from_secs(30);

/// Two managers on one backend: `locks` is "this replica", `other` another one.
pub(crate) struct Fixture {
    pub(crate) locks: LockManager,
    pub(crate) other: LockManager,
}

impl Fixture {
    pub(crate) async fn redis(server: &RedisServer) -> Self {
        Self {
            locks: LockManager::connect(&server.url()).await.unwrap(),
            other: LockManager::connect(&server.url()).await.unwrap(),
        }
    }

    /// Two managers on one server, with keys under `prefix` (tests share the server).
    pub(crate) async fn single(url: &str, prefix: &str) -> Self {
        let manager = || LockManager::builder().url(url).key_prefix(prefix).build();
        Self {
            locks: manager().await.unwrap(),
            other: manager().await.unwrap(),
        }
    }

    /// Two managers on a Redis Cluster, with keys under `prefix` (tests share one cluster).
    pub(crate) async fn cluster(urls: &[String], prefix: &str) -> Self {
        let manager = || {
            LockManager::builder()
                .cluster(urls)
                .key_prefix(prefix)
                .build()
        };
        Self {
            locks: manager().await.unwrap(),
            other: manager().await.unwrap(),
        }
    }

    /// Two managers on Redlock over independent masters, with keys under `prefix`.
    pub(crate) async fn redlock(urls: &[String], prefix: &str) -> Self {
        let manager = || {
            LockManager::builder()
                .redlock(urls)
                .key_prefix(prefix)
                .build()
        };
        Self {
            locks: manager().await.unwrap(),
            other: manager().await.unwrap(),
        }
    }

    pub(crate) fn memory() -> Self {
        let locks = LockManager::in_memory();
        Self {
            other: locks.clone(),
            locks,
        }
    }
}

/// Calls `$runner!(every semantic test fn, ...)`.
#[macro_export]
macro_rules! semantic_tests {
    ($runner:ident) => {
        $runner!(
            second_acquire_is_refused_while_held_and_succeeds_right_after_release,
            acquire_without_wait_is_busy_and_names_the_lock,
            operators_see_who_holds_what_and_free_it_with_the_fence_advanced,
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
            permits_admit_n_holders_each_on_its_own_lease,
            permits_refuse_a_different_n_and_fencing,
            twelve_tasks_on_three_permits_never_exceed_three,
            shared_holds_admit_many_and_exclude_an_exclusive_hold,
            a_waiting_writer_keeps_new_shared_holds_out_and_is_woken_by_the_last_release,
            shared_holds_and_permits_do_not_meet,
            a_writer_waiting_on_a_writer_goes_before_shared_requests,
        );
    };
}

pub(crate) async fn second_acquire_is_refused_while_held_and_succeeds_right_after_release(
    fx: Fixture,
) {
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

pub(crate) async fn acquire_without_wait_is_busy_and_names_the_lock(fx: Fixture) {
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
        matches!(&err, LockError::Busy { name, .. } if name == "reports"),
        "{err:?}"
    );
    assert!(err.to_string().contains("`reports`"), "{err}");
    // The holder's id rides in its token: `Busy` names it.
    let pid = format!(":{}", std::process::id());
    assert!(
        matches!(&err, LockError::Busy { holder: Some(h), .. } if h.ends_with(&pid)),
        "{err:?}"
    );
}

/// `inspect`, `list` and `force_release`: who holds what, and freeing it whoever holds it.
pub(crate) async fn operators_see_who_holds_what_and_free_it_with_the_fence_advanced(fx: Fixture) {
    let pid = format!(":{}", std::process::id());
    let started = std::time::SystemTime::now() - Duration::from_secs(1);
    let guard = fx.locks.try_acquire("ops:a", LONG).await.unwrap().unwrap();
    let info = fx.other.inspect("ops:a").await.unwrap().expect("held");
    assert_eq!(info.name, "ops:a");
    assert!(info.holder.ends_with(&pid), "{info:?}");
    let remaining = info.remaining.expect("an expiry");
    assert!(
        remaining <= LONG && remaining > LONG - Duration::from_secs(10),
        "{info:?}"
    );
    let at = info.acquired_at.expect("a time");
    assert!(
        at >= started && at <= std::time::SystemTime::now(),
        "{info:?}"
    );
    assert!(!info.waited_for);
    assert_eq!(fx.other.inspect("ops:free").await.unwrap(), None);

    let b = fx.locks.try_acquire("ops:b", LONG).await.unwrap().unwrap();
    let c = fx
        .locks
        .try_acquire("elsewhere", LONG)
        .await
        .unwrap()
        .unwrap();
    let fence = guard.fencing_token().await.unwrap();
    let names: Vec<String> = fx
        .other
        .list("ops:*")
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["ops:a", "ops:b"]);
    assert_eq!(fx.other.list("*").await.unwrap().len(), 3);

    // One holder's holds only: another holder id evicts nothing, the holder's own evicts it.
    assert!(fx
        .other
        .evict_holders("ops:b", Some("someone-else"))
        .await
        .unwrap()
        .is_empty());
    assert!(
        b.extend(LONG).await.unwrap(),
        "another holder's lock is left alone"
    );
    let evicted = fx
        .other
        .evict_holders("ops:b", Some(&info.holder))
        .await
        .unwrap();
    assert_eq!(evicted.len(), 1, "{evicted:?}");
    assert_eq!(evicted[0].holder, info.holder);
    assert!(!b.extend(LONG).await.unwrap(), "evicted");

    assert!(fx.other.force_release("ops:a").await.unwrap());
    assert!(
        !fx.other.force_release("ops:a").await.unwrap(),
        "already free"
    );
    // The evicted guard finds out at its next renewal, and cannot release the next owner's lock.
    assert!(!guard.extend(LONG).await.unwrap());
    assert!(guard.is_lost());
    let next = fx
        .other
        .try_acquire("ops:a", LONG)
        .await
        .unwrap()
        .expect("free");
    assert!(
        next.fencing_token().await.unwrap() > fence,
        "the fence moved on"
    );
    assert!(!guard.release().await.unwrap());
    assert!(!b.release().await.unwrap());
    for g in [next, c] {
        assert!(g.release().await.unwrap());
    }

    // Writers waiting are counted, from the claims they record while they wait.
    let held = fx.locks.try_acquire("ops:w", LONG).await.unwrap().unwrap();
    assert_eq!(fx.other.inspect("ops:w").await.unwrap().unwrap().waiting, 0);
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let other = fx.other.clone();
            tokio::spawn(async move {
                let guard = other
                    .acquire("ops:w", LONG, Duration::from_secs(30))
                    .await
                    .unwrap();
                assert!(guard.release().await.unwrap());
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info = fx.other.inspect("ops:w").await.unwrap().unwrap();
        if info.waiting == 2 {
            assert!(info.waited_for);
            break;
        }
        assert!(Instant::now() < deadline, "two writers counted: {info:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(held.release().await.unwrap());
    for waiter in waiters {
        waiter.await.unwrap();
    }
    assert!(fx.other.list("*").await.unwrap().is_empty());
}

pub(crate) async fn locks_are_not_reentrant(fx: Fixture) {
    let _held = fx.locks.try_acquire("again", LONG).await.unwrap().unwrap();
    let second = fx.locks.try_acquire("again", LONG).await.unwrap();
    assert!(
        second.is_none(),
        "a second acquire by the same manager must be refused"
    );
}

/// Waits (polling the backend, never sleeping blindly) until `name` can be taken again.
pub(crate) async fn acquire_after_expiry(m: &LockManager, name: &str, ttl: Duration) -> LockGuard {
    m.acquire(name, ttl, Duration::from_secs(5))
        .await
        .expect("the old lease expires")
}

pub(crate) async fn release_after_expiry_returns_false_and_leaves_the_new_owner_intact(
    fx: Fixture,
) {
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

pub(crate) async fn extend_renews_the_lease(fx: Fixture) {
    let guard = fx
        .locks
        .try_acquire("renew", Duration::from_secs(2))
        .await
        .unwrap()
        .unwrap();
    assert!(guard.extend(Duration::from_secs(20)).await.unwrap());
    assert!(guard.remaining() > Duration::from_secs(19));
    assert!(!guard.is_lost());
    assert!(fx.other.try_acquire("renew", LONG).await.unwrap().is_none());
    assert!(guard.release().await.unwrap());
}

pub(crate) async fn extend_after_expiry_or_takeover_returns_false_and_leaves_the_owner_intact(
    fx: Fixture,
) {
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

pub(crate) async fn wait_gives_up_at_about_the_deadline(fx: Fixture) {
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

pub(crate) async fn wait_succeeds_when_the_holder_releases_mid_wait(fx: Fixture) {
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

pub(crate) async fn sixteen_tasks_on_one_name_never_overlap(fx: Fixture) {
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

pub(crate) async fn fencing_tokens_strictly_increase_over_1000_acquisitions_including_expiry(
    fx: Fixture,
) {
    let mut last = 0;
    let mut expiring: Option<LockGuard> = None;
    for i in 0..1000 {
        let m = if i % 2 == 0 { &fx.locks } else { &fx.other };
        let short = i % 100 == 0;
        let guard = m
            .acquire("fenced", LONG, Duration::from_secs(5))
            .await
            .unwrap();
        let fence = guard.fencing_token().await.unwrap();
        assert!(fence > last, "{fence} after {last}");
        assert_eq!(
            guard.fencing_token().await.unwrap(),
            fence,
            "drawn once, then cached"
        );
        last = fence;
        if let Some(stale) = expiring.take() {
            assert!(!stale.release().await.unwrap(), "that lease had expired");
        }
        if short {
            // Cut to a lease that ends before the next acquisition, which waits it out; the
            // token was drawn first, so a loaded machine cannot make it `Lost`.
            assert!(guard.extend(Duration::from_millis(300)).await.unwrap());
            expiring = Some(guard);
        } else {
            assert!(guard.release().await.unwrap());
        }
    }
}

pub(crate) async fn tokens_are_unique_over_100000_acquisitions(fx: Fixture) {
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
            // `<holder>|<ms>|<lease>|<random>`: the random part alone must never repeat.
            let random = token.rsplit('|').next().unwrap().to_owned();
            assert_eq!(random.len(), 32, "128 bits as hex: {token}");
            assert!(random.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
            assert!(all.insert(random), "a token repeated");
        }
    }
    assert_eq!(all.len(), TASKS * EACH);
}

pub(crate) async fn dropped_guard_releases_in_the_background(fx: Fixture) {
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

pub(crate) async fn shutdown_finishes_releases_of_dropped_guards_and_releases_held_ones(
    fx: Fixture,
) {
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

pub(crate) async fn invalid_names_and_ttls_are_rejected(fx: Fixture) {
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
    // A minimum hold past the maximum could never be kept.
    let err = m
        .lock("ok")
        .ttl(Duration::from_secs(10))
        .auto_extend(true)
        .min_hold(Duration::from_secs(5))
        .max_hold(Duration::from_secs(2))
        .acquire()
        .await
        .unwrap_err();
    assert!(
        matches!(err, LockError::InvalidTtl { ref reason } if reason.contains("max_hold")),
        "{err:?}"
    );
    // Waiting "forever" is a wait, not an overflow.
    let g = m
        .lock("forever")
        .ttl(LONG)
        .wait(Duration::MAX)
        .acquire()
        .await
        .unwrap();
    assert!(g.release().await.unwrap());
    // A leading `}` would empty the Cluster hash tag `{<name>}`.
    let err = m.try_acquire("}{", LONG).await.unwrap_err();
    assert!(matches!(err, LockError::InvalidName { .. }), "{err:?}");
    // Non-ASCII and other brace-laden names are fine.
    for name in ["ünï/cødé", "a{b}c", "{}", "x}{"] {
        let g = m.try_acquire(name, LONG).await.unwrap().expect(name);
        assert_eq!(g.name(), name);
        assert!(g.release().await.unwrap());
    }
}

pub(crate) async fn remaining_counts_down_from_the_ttl(fx: Fixture) {
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

pub(crate) async fn debug_output_never_shows_the_token(fx: Fixture) {
    let g = fx.locks.try_acquire("secret", LONG).await.unwrap().unwrap();
    let token = g.token().to_owned();
    let shown = format!("{g:?} {:?}", fx.locks);
    assert!(!shown.contains(&token), "{shown}");
    assert!(shown.contains("secret"));
    drop(g);
}

/// Whether `m` is a Redlock manager, which refuses `permits(n > 1)`.
fn is_redlock(m: &LockManager) -> bool {
    format!("{m:?}").contains("\"redlock\"")
}

/// `permits(3)`: three holders at once, each permit on its own lease: released by its owner
/// only, expiring on its own, renewed on its own, a waiter woken when one frees.
pub(crate) async fn permits_admit_n_holders_each_on_its_own_lease(fx: Fixture) {
    fn permit(m: &LockManager, ttl: Duration) -> lock_core::LockRequest<'_> {
        m.lock("reports").permits(3).ttl(ttl)
    }
    if is_redlock(&fx.locks) {
        let err = permit(&fx.locks, LONG).try_acquire().await.unwrap_err();
        assert!(
            matches!(&err, LockError::InvalidConfig { reason } if reason.contains("Redlock")),
            "{err:?}"
        );
        // One permit is the lock itself, which Redlock serves.
        let one = fx.locks.lock("reports").permits(1).try_acquire().await;
        assert!(one.unwrap().unwrap().release().await.unwrap());
        return;
    }
    let a = permit(&fx.locks, LONG)
        .try_acquire()
        .await
        .unwrap()
        .unwrap();
    let b = permit(&fx.other, LONG)
        .try_acquire()
        .await
        .unwrap()
        .unwrap();
    let short = permit(&fx.locks, Duration::from_secs(1))
        .try_acquire()
        .await
        .unwrap()
        .expect("the third permit");
    assert!(permit(&fx.other, LONG)
        .try_acquire()
        .await
        .unwrap()
        .is_none());
    let err = permit(&fx.other, LONG).acquire().await.unwrap_err();
    assert!(
        matches!(&err, LockError::Busy { name, holder: Some(_), .. } if name == "reports"),
        "{err:?}"
    );

    // Operators see each permit.
    let info = fx.locks.list("reports").await.unwrap();
    assert_eq!(info.len(), 3, "{info:?}");
    assert!(info.iter().all(|i| i.permits == 3 && i.name == "reports"));
    assert_eq!(
        fx.locks.inspect("reports").await.unwrap().unwrap().permits,
        3
    );

    // The short permit expires on its own, and then is not its holder's any more; the
    // others are untouched.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(short.is_lost());
    let d = permit(&fx.other, LONG).try_acquire().await.unwrap();
    let d = d.expect("the expired permit is free again");
    assert!(
        !short.extend(LONG).await.unwrap(),
        "an expired permit is not renewed"
    );
    assert!(!short.release().await.unwrap());
    assert!(!a.is_lost() && !b.is_lost());

    // Renewed on its own lease.
    let e_short = {
        assert!(a.release().await.unwrap());
        permit(&fx.locks, Duration::from_secs(1))
            .try_acquire()
            .await
            .unwrap()
            .unwrap()
    };
    assert!(e_short.extend(LONG).await.unwrap());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(!e_short.is_lost(), "renewed past its first lease");
    assert!(permit(&fx.other, LONG)
        .try_acquire()
        .await
        .unwrap()
        .is_none());

    // A waiter is woken when a permit frees.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let waiter = {
        let m = fx.other.clone();
        tokio::spawn(async move {
            let request = m.lock("reports").permits(3).wait(LONG);
            let _ = tx.send(());
            request.acquire().await
        })
    };
    rx.await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let released_at = Instant::now();
    assert!(b.release().await.unwrap());
    let f = waiter
        .await
        .unwrap()
        .expect("the waiter gets the freed permit");
    assert!(released_at.elapsed() < Duration::from_secs(5));

    for g in [d, e_short, f] {
        assert!(g.release().await.unwrap());
    }
    assert!(
        fx.locks.inspect("reports").await.unwrap().is_none(),
        "the last permit out removes the key"
    );
    // `permits(1)` is the lock.
    let one = fx
        .locks
        .lock("reports")
        .permits(1)
        .try_acquire()
        .await
        .unwrap()
        .unwrap();
    assert!(fx
        .other
        .try_acquire("reports", LONG)
        .await
        .unwrap()
        .is_none());
    assert!(one.release().await.unwrap());
}

/// Every holder of a name must count to the same `n`; a permit has no fencing token.
pub(crate) async fn permits_refuse_a_different_n_and_fencing(fx: Fixture) {
    if is_redlock(&fx.locks) {
        return; // refused outright: see permits_admit_n_holders_each_on_its_own_lease
    }
    let mismatch = |err: LockError, held: u32, requested: u32| {
        assert!(
            matches!(&err, LockError::PermitsMismatch { name, held: h, requested: r }
                if name == "quota" && *h == held && *r == requested),
            "{err:?}"
        );
        assert!(err.to_string().contains("permits = "), "{err}");
    };
    let three = fx.locks.lock("quota").permits(3).acquire().await.unwrap();
    let err = fx
        .other
        .lock("quota")
        .permits(2)
        .try_acquire()
        .await
        .unwrap_err();
    mismatch(err, 3, 2);
    // A plain lock is permits(1): refused without waiting, and also when it would wait
    // (returned at once, not at the deadline).
    let err = fx.other.lock("quota").acquire().await.unwrap_err();
    mismatch(err, 3, 1);
    let began = Instant::now();
    let err = fx
        .other
        .lock("quota")
        .wait(LONG)
        .acquire()
        .await
        .unwrap_err();
    mismatch(err, 3, 1);
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "refused, not waited on"
    );
    // `try_acquire` says so too (`SET NX` alone cannot tell; the refusal path asks).
    let err = fx.other.lock("quota").try_acquire().await.unwrap_err();
    mismatch(err, 3, 1);
    // A reentrant acquisition inside the permit's hold is no lock either.
    let nested = three
        .holding(async { fx.locks.lock("quota").reentrant(true).acquire().await })
        .await;
    mismatch(nested.unwrap_err(), 3, 1);
    let same = three
        .holding(async {
            fx.locks
                .lock("quota")
                .permits(3)
                .reentrant(true)
                .acquire()
                .await
        })
        .await;
    drop(same.expect("the same permits: the enclosing hold is reused"));
    // No fencing token for a shared hold, and no command for it.
    let err = three.fencing_token().await.unwrap_err();
    assert!(
        matches!(&err, LockError::InvalidConfig { reason } if reason.contains("permits(3)")),
        "{err:?}"
    );
    assert!(three.release().await.unwrap());

    // The other way round: a lock held plainly refuses a permit request.
    let plain = fx
        .locks
        .acquire("quota", LONG, Duration::ZERO)
        .await
        .unwrap();
    let err = fx
        .other
        .lock("quota")
        .permits(3)
        .try_acquire()
        .await
        .unwrap_err();
    mismatch(err, 1, 3);
    assert!(plain.release().await.unwrap());
    // Once free, any n may take it, also when the last holders crashed (their leases ran out)
    // after a longer one was released.
    let long = fx.locks.lock("quota").permits(3).acquire().await.unwrap();
    let crashed = fx
        .locks
        .lock("quota")
        .permits(3)
        .ttl(Duration::from_millis(200))
        .acquire()
        .await
        .unwrap();
    assert!(long.release().await.unwrap());
    std::mem::forget(crashed); // never released
    tokio::time::sleep(Duration::from_millis(300)).await;
    let plain = fx
        .other
        .lock("quota")
        .acquire()
        .await
        .expect("free for a lock");
    assert!(plain.release().await.unwrap());
    let two = fx.other.lock("quota").permits(2).acquire().await.unwrap();
    assert!(two.release().await.unwrap());
    let err = fx
        .locks
        .lock("quota")
        .permits(0)
        .try_acquire()
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::InvalidConfig { .. }), "{err:?}");
    let err = fx
        .locks
        .lock("quota")
        .permits(2)
        .fair(true)
        .try_acquire()
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::InvalidConfig { .. }), "{err:?}");
}

/// Twelve tasks on `permits(3)`: at most three inside at once, and all of them get in.
pub(crate) async fn twelve_tasks_on_three_permits_never_exceed_three(fx: Fixture) {
    if is_redlock(&fx.locks) {
        return;
    }
    const TASKS: u64 = 12;
    const ROUNDS: u64 = 5;
    let inside = Arc::new(AtomicU64::new(0));
    let most = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let m = if i % 2 == 0 {
            fx.locks.clone()
        } else {
            fx.other.clone()
        };
        let (inside, most) = (inside.clone(), most.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                let guard = m
                    .lock("pool")
                    .permits(3)
                    .ttl(LONG)
                    .wait(Duration::from_secs(30))
                    .acquire()
                    .await
                    .unwrap();
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                assert!(guard.release().await.unwrap());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let most = most.load(Ordering::SeqCst);
    assert!(most <= 3, "{most} holders at once");
    assert!(most >= 2, "the permits were shared: {most} at most at once");
}

fn read(m: &LockManager, ttl: Duration) -> lock_core::LockRequest<'_> {
    m.lock("catalog").shared(true).ttl(ttl)
}

/// `shared(true)`: any number of shared holders at once, each on its own lease, and none
/// together with an exclusive holder; operators see every shared holder; no fencing token.
pub(crate) async fn shared_holds_admit_many_and_exclude_an_exclusive_hold(fx: Fixture) {
    let a = read(&fx.locks, LONG).try_acquire().await.unwrap().unwrap();
    let b = read(&fx.other, LONG).try_acquire().await.unwrap().unwrap();
    let short = read(&fx.locks, Duration::from_secs(1))
        .try_acquire()
        .await
        .unwrap()
        .expect("a third shared hold");
    // A writer is refused as busy (not as a mismatch), naming a holder.
    assert!(fx
        .other
        .try_acquire("catalog", LONG)
        .await
        .unwrap()
        .is_none());
    let err = fx.other.lock("catalog").acquire().await.unwrap_err();
    assert!(
        matches!(&err, LockError::Busy { name, holder: Some(_), .. } if name == "catalog"),
        "{err:?}"
    );
    // Operators see each shared holder.
    let info = fx.locks.list("catalog").await.unwrap();
    assert_eq!(info.len(), 3, "{info:?}");
    assert!(info.iter().all(|i| i.shared && i.permits == 0), "{info:?}");
    assert!(fx.locks.inspect("catalog").await.unwrap().unwrap().shared);
    // No fencing token, and the error says why.
    let err = a.fencing_token().await.unwrap_err();
    assert!(
        matches!(&err, LockError::InvalidConfig { reason } if reason.contains("shared hold carries no fencing token")),
        "{err:?}"
    );
    // Each on its own lease: the short one lapses alone, and is not renewed after.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(short.is_lost() && !a.is_lost() && !b.is_lost());
    assert!(!short.extend(LONG).await.unwrap());
    assert!(b.extend(LONG).await.unwrap());
    // Released by its owner only; the writer gets in once the last one is gone.
    assert!(a.release().await.unwrap());
    assert!(fx
        .other
        .try_acquire("catalog", LONG)
        .await
        .unwrap()
        .is_none());
    assert!(b.release().await.unwrap());
    let writer = fx.other.try_acquire("catalog", LONG).await.unwrap();
    let writer = writer.expect("free once the last shared hold is released");
    assert!(writer.fencing_token().await.is_ok());
    assert!(read(&fx.locks, LONG).try_acquire().await.unwrap().is_none());
    let err = read(&fx.locks, LONG).acquire().await.unwrap_err();
    assert!(matches!(&err, LockError::Busy { .. }), "{err:?}");
    assert!(!fx.locks.inspect("catalog").await.unwrap().unwrap().shared);
    assert!(writer.release().await.unwrap());
    let again = read(&fx.locks, LONG).try_acquire().await.unwrap();
    assert!(again.unwrap().release().await.unwrap());
    assert!(fx.locks.inspect("catalog").await.unwrap().is_none());
}

/// A writer waiting on shared holds keeps new ones out (writers do not starve) and takes the
/// lock when the last shared hold is released, long before their leases end; shared requests
/// waiting on that writer get in when it releases.
pub(crate) async fn a_waiting_writer_keeps_new_shared_holds_out_and_is_woken_by_the_last_release(
    fx: Fixture,
) {
    let a = read(&fx.locks, LONG).try_acquire().await.unwrap().unwrap();
    let b = read(&fx.other, LONG).try_acquire().await.unwrap().unwrap();
    let writers = fx.other.clone();
    let began = Instant::now();
    let writer = tokio::spawn(async move {
        let guard = writers
            .lock("catalog")
            .ttl(LONG)
            .wait(LONG)
            .acquire()
            .await
            .unwrap();
        (guard, Instant::now())
    });
    // Once the writer waits, a new shared hold is refused although only shared holds hold.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match read(&fx.locks, LONG).try_acquire().await.unwrap() {
            None => break,
            Some(late) => {
                assert!(late.release().await.unwrap());
                assert!(
                    Instant::now() < deadline,
                    "the writer's wait never kept a reader out"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    // Shared requests that wait now queue behind the writer.
    let readers = fx.locks.clone();
    let reader = tokio::spawn(async move {
        let guard = read(&readers, LONG).wait(LONG).acquire().await.unwrap();
        (guard, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!writer.is_finished() && !reader.is_finished());
    assert!(a.release().await.unwrap());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!writer.is_finished(), "one shared hold is still live");
    assert!(b.release().await.unwrap());
    let (guard, taken) = writer.await.unwrap();
    assert!(
        taken - began < Duration::from_secs(20),
        "the writer took the lock at the release, not at the shared leases' end ({:?})",
        taken - began
    );
    assert!(
        !reader.is_finished(),
        "the waiting reader went before the writer"
    );
    let released = Instant::now();
    assert!(guard.release().await.unwrap());
    let (shared, taken) = reader.await.unwrap();
    assert!(taken >= released && taken - released < Duration::from_secs(20));
    assert!(shared.release().await.unwrap());
}

/// Shared holds are not permits: a shared request on a name held with permits(n), or the
/// reverse, is refused at once with the mismatch.
pub(crate) async fn shared_holds_and_permits_do_not_meet(fx: Fixture) {
    if is_redlock(&fx.locks) {
        return; // permits(n) are refused on Redlock outright
    }
    let r = read(&fx.locks, LONG).try_acquire().await.unwrap().unwrap();
    let err = fx
        .other
        .lock("catalog")
        .permits(3)
        .acquire()
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            LockError::PermitsMismatch {
                held: 0,
                requested: 3,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("held by shared holds"), "{err}");
    assert!(r.release().await.unwrap());
    let p = fx.other.lock("catalog").permits(3).acquire().await.unwrap();
    let err = read(&fx.locks, LONG)
        .wait(LONG)
        .acquire()
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            LockError::PermitsMismatch {
                held: 3,
                requested: 0,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("asked for a shared hold"), "{err}");
    assert!(p.release().await.unwrap());
    // Mixed options are refused before any I/O.
    for request in [
        read(&fx.locks, LONG).fair(true),
        read(&fx.locks, LONG).permits(2),
    ] {
        let err = request.try_acquire().await.unwrap_err();
        assert!(matches!(&err, LockError::InvalidConfig { .. }), "{err:?}");
    }
}

/// A writer that waits on another writer keeps its claim through that writer's hold: when the
/// lock frees, it goes before a shared request that waited as long. A writer that stops
/// waiting lets shared holds in again within its claim's few poll intervals.
pub(crate) async fn a_writer_waiting_on_a_writer_goes_before_shared_requests(fx: Fixture) {
    let first = fx
        .other
        .try_acquire("catalog", LONG)
        .await
        .unwrap()
        .unwrap();
    let writers = fx.locks.clone();
    let writer = tokio::spawn(async move {
        let guard = writers.lock("catalog").ttl(LONG).wait(LONG).acquire();
        guard.await.unwrap()
    });
    // The writer's second attempt (after it subscribed) records its claim.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let readers = fx.other.clone();
    let reader = tokio::spawn(async move {
        let guard = read(&readers, LONG).wait(LONG).acquire().await.unwrap();
        (guard, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(first.release().await.unwrap());
    let second = writer.await.unwrap();
    assert!(
        !reader.is_finished(),
        "the shared request went before the waiting writer"
    );
    let released = Instant::now();
    assert!(second.release().await.unwrap());
    let (shared, taken) = reader.await.unwrap();
    assert!(taken >= released);
    assert!(shared.release().await.unwrap());

    // A writer that gives up: its claim lapses, shared holds come back.
    let held = fx
        .other
        .try_acquire("catalog", LONG)
        .await
        .unwrap()
        .unwrap();
    let err = fx
        .locks
        .lock("catalog")
        .wait(Duration::from_millis(600))
        .acquire()
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Timeout { .. }), "{err:?}");
    assert!(held.release().await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    let shared = loop {
        if let Some(guard) = read(&fx.locks, LONG).try_acquire().await.unwrap() {
            break guard;
        }
        assert!(
            Instant::now() < deadline,
            "an abandoned claim kept shared holds out"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(shared.release().await.unwrap());
}
