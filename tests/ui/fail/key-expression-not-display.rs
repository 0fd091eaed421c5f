use lock_core::{distributed_lock, LockError};

struct Job;

#[distributed_lock(key = job, ttl = "30s")]
async fn run(job: Job) -> Result<(), LockError> {
    Ok(())
}

fn main() {}
