use lock_core::distributed_lock;

// An alias of a type that is no `Result`: the compiler says so through `LockResult`.
type Count = std::num::NonZeroU32;

#[distributed_lock(key = "job", ttl = "30s")]
async fn job() -> Count {
    Count::MIN
}

fn main() {}
