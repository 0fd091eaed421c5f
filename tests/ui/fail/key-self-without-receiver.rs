use lock_core::{distributed_lock, LockError};

#[distributed_lock(key = "jobs:{self.id}", ttl = "30s")]
async fn job(id: u64) -> Result<(), LockError> {
    let _ = id;
    Ok(())
}

fn main() {}
