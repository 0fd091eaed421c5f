use lock_core::{distributed_lock, LockError};

#[distributed_lock(key = "reports", ttl = "30s", fair = true, permits = 3)]
async fn job() -> Result<(), LockError> {
    Ok(())
}

fn main() {}
