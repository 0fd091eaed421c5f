//! The in-process backend: the same operations and semantics as Redis, on `tokio::time`, so
//! handlers can be unit-tested without a server (also under `tokio::time::pause()`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Attempt, LockKeys};

struct Held {
    token: String,
    expires: Instant,
}

#[derive(Default)]
struct State {
    locks: HashMap<String, Held>,
    fences: HashMap<String, u64>,
    /// Size of `locks` after the last sweep of expired entries.
    swept_len: usize,
}

#[derive(Default)]
pub(crate) struct MemoryBackend {
    state: Mutex<State>,
    /// Woken on every release (waiters of any lock re-check; cheap in one process).
    released: Arc<Notify>,
}

impl MemoryBackend {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // No code below panics while holding the lock, but a poisoned map is still consistent:
        // every update is a single insert or remove.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn acquire(&self, keys: &LockKeys, token: &str, ttl: Duration) -> Attempt {
        let now = Instant::now();
        let mut state = self.state();
        if let Some(held) = state.locks.get(&keys.lock) {
            if held.expires > now {
                // Same as the Redis script: a retry by the owner gets its own grant back.
                if held.token == token {
                    if let Some(&fence) = state.fences.get(&keys.fence) {
                        return Attempt::Granted(fence);
                    }
                }
                return Attempt::Held(Some(held.expires - now));
            }
        }
        // Expired entries stay until overwritten; sweep them when the map has doubled.
        if state.locks.len() >= 64 && state.locks.len() > 2 * state.swept_len {
            state.locks.retain(|_, held| held.expires > now);
            state.swept_len = state.locks.len();
        }
        state.locks.insert(
            keys.lock.clone(),
            Held {
                token: token.to_owned(),
                expires: now + ttl,
            },
        );
        let fence = state.fences.entry(keys.fence.clone()).or_insert(0);
        *fence += 1;
        Attempt::Granted(*fence)
    }

    fn owned<'a>(
        state: &'a mut State,
        keys: &LockKeys,
        token: &str,
        now: Instant,
    ) -> Option<&'a mut Held> {
        state
            .locks
            .get_mut(&keys.lock)
            .filter(|held| held.expires > now && held.token == token)
    }

    pub(crate) fn release(&self, keys: &LockKeys, token: &str, keep: Duration) -> bool {
        let now = Instant::now();
        let mut state = self.state();
        let Some(held) = Self::owned(&mut state, keys, token, now) else {
            return false;
        };
        if keep.is_zero() {
            state.locks.remove(&keys.lock);
            drop(state);
            self.released.notify_waiters();
        } else {
            held.expires = held.expires.min(now + keep);
        }
        true
    }

    pub(crate) fn extend(&self, keys: &LockKeys, token: &str, ttl: Duration) -> bool {
        let now = Instant::now();
        let mut state = self.state();
        match Self::owned(&mut state, keys, token, now) {
            Some(held) => {
                held.expires = now + ttl;
                true
            }
            None => false,
        }
    }

    pub(crate) fn released(&self) -> Arc<Notify> {
        Arc::clone(&self.released)
    }
}
