// The expansion is warning-free under #![deny(warnings)].
#![deny(warnings)]

use lock_core::{distributed_lock, LockError, LockManager};

#[distributed_lock(key = "job:{id}", ttl = "30s", wait = "1s", manager = locks)]
async fn job(locks: &LockManager, id: u32) -> Result<u32, LockError> {
    Ok(id)
}

#[distributed_lock(key = "skip", ttl = "500ms", on_busy = "skip", min_hold = "100ms", manager = locks)]
async fn skipping(locks: &LockManager) -> Result<Vec<u8>, LockError> {
    Ok(vec![1])
}

#[distributed_lock(key = "long", ttl = "1m30s", auto_extend = true, on_lost = "continue", max_hold = "1h", manager = locks, guard = lock)]
async fn long(locks: &LockManager) -> Result<bool, LockError> {
    Ok(lock.is_lost())
}

#[distributed_lock(key = "early", ttl = "1s", manager = locks)]
async fn early_return(locks: &LockManager, n: u32) -> Result<u32, LockError> {
    if n > 1 {
        return Ok(n);
    }
    Err(LockError::NotConfigured)
}

#[tokio::main]
async fn main() {
    let locks = LockManager::in_memory();
    assert_eq!(job(&locks, 3).await.unwrap(), 3);
    assert_eq!(skipping(&locks).await.unwrap(), vec![1]);
    assert!(!long(&locks).await.unwrap());
    assert_eq!(early_return(&locks, 2).await.unwrap(), 2);
}
