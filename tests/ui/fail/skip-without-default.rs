use lock_core::{distributed_lock, LockError};

struct Report;

#[distributed_lock(key = "job", ttl = "30s", on_busy = "skip")]
async fn job() -> Result<Report, LockError> {
    Ok(Report)
}

fn main() {}
