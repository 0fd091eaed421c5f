//! Test support: real `redis-server` processes on free loopback ports, which a test can kill,
//! restart, pause and resume. Shared by every integration test and example of the workspace.
//!
//! Tests never touch the shared server on port 6379.

#![allow(missing_docs)]

mod checks;
mod cluster;
mod peers;
mod proxy;
mod sentinel;
mod server;
mod waiting;

pub use checks::{assert_truthful, counter, soak};
pub use cluster::{ClusterMaster, RedisCluster};
pub use lock_examples::{flag, remove_keys, run_workers};
pub use peers::{eval_cmd, redis_py, valkey_server};
pub use proxy::FaultProxy;
pub use sentinel::Sentinels;
pub use server::{free_port, server_binary, RedisServer, AOF_DIR};
pub use waiting::{cancel_after_polls, eventually, monotonic_ns, settled};

/// A fresh server and a manager connected to it: the start of most tests.
pub async fn server_and_manager() -> (RedisServer, lock_core::LockManager) {
    let server = RedisServer::start();
    let locks = lock_core::LockManager::connect(&server.url())
        .await
        .expect("connect to the test redis-server");
    (server, locks)
}

/// A manager whose waiters would poll only once a minute: any prompt handoff is a notification.
pub async fn never_polling(server: &RedisServer) -> lock_core::LockManager {
    lock_core::LockManager::builder()
        .url(&server.url())
        .max_poll_interval(std::time::Duration::from_secs(60))
        .build()
        .await
        .unwrap()
}

/// An application's error type, as annotated job handlers have: lock failures convert into it.
#[derive(Debug)]
pub enum JobError {
    Lock(lock_core::LockError),
    Failed(&'static str),
}

impl From<lock_core::LockError> for JobError {
    fn from(e: lock_core::LockError) -> Self {
        JobError::Lock(e)
    }
}
