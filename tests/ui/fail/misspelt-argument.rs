use lock_core::{distributed_lock, LockError};

#[distributed_lock(key = "job", tll = "1s")]
async fn job() -> Result<(), LockError> {
    Ok(())
}

fn main() {}
