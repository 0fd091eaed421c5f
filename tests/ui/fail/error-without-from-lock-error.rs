use lock_core::distributed_lock;

#[distributed_lock(key = "job", ttl = "30s")]
async fn job() -> Result<(), String> {
    Ok(())
}

fn main() {}
