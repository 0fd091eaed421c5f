use lock_core::{distributed_lock, LockError};

#[distributed_lock(key = "jobs:{tenant", ttl = "30s")]
async fn job(tenant: u64) -> Result<(), LockError> {
    let _ = tenant;
    Ok(())
}

fn main() {}
