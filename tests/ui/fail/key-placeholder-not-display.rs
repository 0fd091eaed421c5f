use lock_core::{distributed_lock, LockError};

struct Tenant(u64);

#[distributed_lock(key = "jobs:{tenant}", ttl = "30s")]
async fn job(tenant: Tenant) -> Result<(), LockError> {
    let _ = tenant.0;
    Ok(())
}

fn main() {}
