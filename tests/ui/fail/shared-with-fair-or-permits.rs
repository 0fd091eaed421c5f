use lock_core::{distributed_lock, LockError};

#[distributed_lock(key = "catalog", ttl = "30s", shared = true, fair = true)]
async fn fair_reader() -> Result<(), LockError> {
    Ok(())
}

#[distributed_lock(key = "catalog", ttl = "30s", shared = true, permits = 3)]
async fn counted_reader() -> Result<(), LockError> {
    Ok(())
}

fn main() {}
