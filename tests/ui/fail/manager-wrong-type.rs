use std::sync::{Arc, LazyLock};

use lock_core::{distributed_lock, LockError, LockManager};

static LOCKS: LazyLock<LockManager> = LazyLock::new(LockManager::in_memory);

#[distributed_lock(key = "job", ttl = "30s", manager = LOCKS)]
async fn from_a_static() -> Result<(), LockError> {
    Ok(())
}

#[distributed_lock(key = "job", ttl = "30s", manager = locks)]
async fn from_an_option(locks: Option<Arc<LockManager>>) -> Result<(), LockError> {
    Ok(())
}

fn main() {}
