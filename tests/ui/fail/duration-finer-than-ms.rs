use lock_core::{distributed_lock, LockError};

#[distributed_lock(key = "job", ttl = "1.0005s")]
async fn job() -> Result<(), LockError> {
    Ok(())
}

fn main() {}
