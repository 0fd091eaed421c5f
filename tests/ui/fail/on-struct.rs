use lock_core::distributed_lock;

#[distributed_lock(key = "job", ttl = "30s")]
struct Job;

fn main() {}
