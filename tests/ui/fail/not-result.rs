use lock_core::distributed_lock;

#[distributed_lock(key = "job", ttl = "30s")]
async fn job() -> u32 {
    1
}

fn main() {}
