use lock_core::{distributed_lock, LockError};

#[distributed_lock(key = "jobs:{tnant}", ttl = "30s")]
async fn job(tenant: u64, job_id: u32) -> Result<(), LockError> {
    let _ = (tenant, job_id);
    Ok(())
}

fn main() {}
