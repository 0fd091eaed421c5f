//! lock-core's own cost per uncontended acquire+release, with no network and no server process:
//! what BENCHMARKS.md calls the client-side cost.
//!
//! - `in_memory_pair`: `try_acquire` + `release` on the in-memory backend: lock-core's client
//!   work plus the in-process server's (the keyspace model running `SET NX PX` and `DELIFEQ`).
//! - `keyspace_pair`: that server's share alone (the same two commands on the model).
//! - `codec_pair`: the encoding and decoding alone: the key and owner token made, both commands
//!   laid out and packed as RESP, both replies read.
//!
//! The client's own cost is `in_memory_pair - keyspace_pair`. Each also prints, once, how many
//! heap allocations one pair makes (a counting allocator wraps the system's).
//!
//! `cargo bench --manifest-path bench/Cargo.toml --bench client`; CI runs each once as a check
//! (`cargo test --manifest-path bench/Cargo.toml --benches`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion};
use lock_core::LockManager;

/// The system allocator, counting allocations.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` or `realloc` above, which are the system's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

const TTL: Duration = Duration::from_secs(30);

/// Heap allocations per call of `f`, over 1,000 calls after a warm-up.
fn allocations_per_call(mut f: impl FnMut()) -> f64 {
    for _ in 0..100 {
        f();
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..1000 {
        f();
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / 1000.0
}

fn client(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let locks = rt.block_on(async { LockManager::in_memory() });
    let mut in_memory_pair = || {
        rt.block_on(async {
            let g = locks
                .try_acquire("bench", TTL)
                .await
                .expect("in memory")
                .expect("free");
            assert!(g.release().await.expect("in memory"));
        })
    };
    println!(
        "in_memory_pair: {:.1} allocations per pair",
        allocations_per_call(&mut in_memory_pair)
    );
    c.bench_function("in_memory_pair", |b| b.iter(&mut in_memory_pair));

    let mut keyspace = lock_core::__private::bench::Keyspace::default();
    let token = "host:1|1733500000000|30000|0123456789abcdef0123456789abcdef";
    let now_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_micros() as u64;
    let mut keyspace_pair = || assert!(keyspace.pair(now_us, "lock:{bench}", token));
    println!(
        "keyspace_pair: {:.1} allocations per pair",
        allocations_per_call(&mut keyspace_pair)
    );
    c.bench_function("keyspace_pair", |b| b.iter(&mut keyspace_pair));

    let mut codec_pair = || {
        std::hint::black_box(lock_core::__private::bench::codec_pair(
            "lock:", "bench", "host:1",
        ));
    };
    println!(
        "codec_pair: {:.1} allocations per pair",
        allocations_per_call(&mut codec_pair)
    );
    c.bench_function("codec_pair", |b| b.iter(&mut codec_pair));
}

criterion_group!(benches, client);
criterion_main!(benches);
