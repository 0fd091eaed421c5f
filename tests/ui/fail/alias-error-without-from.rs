use lock_core::distributed_lock;

// A `Result` alias whose error type cannot hold a lock error.
#[derive(Debug)]
struct PlainError;
type JobResult<T> = Result<T, PlainError>;

#[distributed_lock(key = "job", ttl = "30s")]
async fn job() -> JobResult<u32> {
    Ok(1)
}

fn main() {}
