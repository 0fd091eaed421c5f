use lock_core::{distributed_lock, LockError};

#[distributed_lock]
async fn job() -> Result<(), LockError> {
    Ok(())
}

fn main() {}
