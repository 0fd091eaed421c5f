use lock_core::{distributed_lock, LockError};

#[distributed_lock(key = "job", ttl = "10s", min_hold = "1m")]
async fn job() -> Result<(), LockError> {
    Ok(())
}

fn main() {}
