use lock_core::{distributed_lock, LockError};

#[distributed_lock(key = "catalog", ttl = "30s", shared = "yes")]
async fn reader() -> Result<(), LockError> {
    Ok(())
}

fn main() {}
