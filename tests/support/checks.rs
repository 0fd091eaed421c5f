//! Shared by the tests that gather evidence the lock excludes (safety.rs, coordination.rs,
//! scale_out.rs): the size of their runs, the counters the `lock-checker` workers keep, and the
//! check that a guard tells the truth about its lease.

use std::time::Duration;

use lock_core::LockGuard;
use tokio::time::Instant;

use crate::RedisServer;

/// How many times the default size the runs are: `LOCK_SOAK` (default 1). RELIABILITY.md's
/// soak uses 5.
pub fn soak() -> u64 {
    std::env::var("LOCK_SOAK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// A counter the `lock-checker` workers keep on their resource server: `checker:<name>:<which>`,
/// 0 before the first write.
pub fn counter(resource: &RedisServer, name: &str, which: &str) -> u64 {
    let v: Option<u64> = resource.query(redis::cmd("GET").arg(format!("checker:{name}:{which}")));
    v.unwrap_or(0)
}

/// I1 against a real server: a guard that says it holds has its token in the key, and the key
/// outlives the guard's local deadline. Checks nothing once the guard says it lost.
pub fn assert_truthful(server: &RedisServer, key: &str, guard: &LockGuard, what: &str) {
    let before = Instant::now();
    let remaining = guard.remaining();
    if guard.is_lost() || remaining.is_zero() {
        return;
    }
    let value: Option<String> = server.query(redis::cmd("GET").arg(key));
    let pttl: i64 = server.query(redis::cmd("PTTL").arg(key));
    let elapsed = before.elapsed();
    // A waiter may have marked the holder's token with a `*`, then maybe a fair ticket.
    let holder = value.as_deref().map(|v| v.split('*').next().unwrap_or(v));
    assert_eq!(
        holder,
        Some(guard.token()),
        "{what}: the guard says it holds for {remaining:?}, but the key is another's or gone"
    );
    let server_left = Duration::from_millis(u64::try_from(pttl).unwrap_or(0));
    assert!(
        remaining <= server_left + elapsed + Duration::from_millis(1),
        "{what}: the guard says {remaining:?} left, the server {pttl} ms"
    );
}
