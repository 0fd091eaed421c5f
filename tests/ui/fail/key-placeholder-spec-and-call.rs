use lock_core::{distributed_lock, LockError};

struct Job;
impl Job {
    fn name(&self) -> &str {
        "job"
    }
}

#[distributed_lock(key = "job:{id:04}", ttl = "30s")]
async fn padded(id: u32) -> Result<(), LockError> {
    Ok(())
}

#[distributed_lock(key = "job:{job.name()}", ttl = "30s")]
async fn named(job: Job) -> Result<(), LockError> {
    Ok(())
}

fn main() {}
