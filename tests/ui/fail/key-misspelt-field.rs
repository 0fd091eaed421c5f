use lock_core::{distributed_lock, LockError};

struct Tenant {
    id: u64,
}

#[distributed_lock(key = "jobs:{tenant.idd}", ttl = "30s")]
async fn job(tenant: &Tenant) -> Result<u64, LockError> {
    Ok(tenant.id)
}

fn main() {}
