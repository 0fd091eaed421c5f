use lock_core::{distributed_lock, LockError};

#[distributed_lock(key = "job", ttl: "30s")]
async fn job() -> Result<(), LockError> {
    Ok(())
}

fn main() {}
