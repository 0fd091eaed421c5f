use lock_core::{distributed_lock, LockError, LockManager};

// One mistake, one error: the parameter only the lock would have used is not also reported
// unused.
#[distributed_lock(key = "job", ttl = "30 sec", manager = locks)]
async fn job(locks: &LockManager) -> Result<(), LockError> {
    Ok(())
}

fn main() {}
