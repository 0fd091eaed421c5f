// A local `mod lock_core` must not capture the expansion's paths.
use ::lock_core::{distributed_lock, LockError, LockManager};

#[allow(dead_code)]
mod lock_core {
    pub struct LockManager;
    pub mod __private {}
}

#[distributed_lock(key = "job", ttl = "30s", manager = locks)]
async fn job(locks: &LockManager) -> Result<(), LockError> {
    Ok(())
}

#[tokio::main]
async fn main() {
    job(&LockManager::in_memory()).await.unwrap();
}
