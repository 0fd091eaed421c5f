//! The simulator's server: a hand-written state machine with the semantics of the Redis
//! scripts, on `tokio::time`. It was the in-memory backend's too, until that backend began to
//! run the scripts themselves (`backend/memory.rs` over the `model`); moving the simulator onto
//! the model as well, so that it checks the scripts Redis runs, is the next step. One
//! difference, in who is woken, not in who holds: the mark is the `*` alone (the scripts add
//! the first fair ticket in line after it, for the release message to name).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::redis::FENCE_KEEP;
use crate::backend::{Taken, Ticket};
use crate::keys::LockKeys;

/// The suffix a waiter appends to the holder's token (acquire.lua).
const MARK: char = '*';

/// The suffix a `min_hold` release gives the token, so that no later extend finds it
/// (release.lua).
const RETIRED: char = '~';

struct Entry {
    value: String,
    expires: Instant,
}

/// A line of fair waiters (fair.lua's hash): ticket -> (arrival, expiry).
#[derive(Default)]
struct Line {
    tickets: HashMap<String, (u64, Instant)>,
    arrivals: u64,
}

/// A lock of `permits(n)`, `n > 1` (permit_acquire.lua's hash): its holders' tokens and when
/// each lease ends, and whether a waiter asked for releases to be told.
struct Permits {
    n: u32,
    holders: HashMap<String, Instant>,
    waited: bool,
}

impl Permits {
    fn forget_expired(&mut self, now: Instant) {
        self.holders.retain(|_, ends| *ends > now);
    }
}

/// What the Redis scripts do, as one state machine over lock, fence and queue keys.
#[derive(Default)]
pub(crate) struct Server {
    keys: HashMap<String, Entry>,
    /// Size of `keys` after the last sweep of expired entries.
    swept_len: usize,
    lines: HashMap<String, Line>,
    /// Locks of `permits(n)`, by lock key; a key is in `keys` or here, never both while live.
    permits: HashMap<String, Permits>,
}

/// The token a key's value belongs to, without a waiter's mark.
fn owner(value: &str) -> &str {
    value.strip_suffix(MARK).unwrap_or(value)
}

impl Server {
    fn live(&self, key: &str, now: Instant) -> Option<&Entry> {
        self.keys.get(key).filter(|e| e.expires > now)
    }

    fn live_mut(&mut self, key: &str, now: Instant) -> Option<&mut Entry> {
        self.keys.get_mut(key).filter(|e| e.expires > now)
    }

    fn owned_by(&mut self, key: &str, token: &str, now: Instant) -> Option<&mut Entry> {
        self.live_mut(key, now).filter(|e| owner(&e.value) == token)
    }

    /// acquire.lua: `SET NX PX`; a key already holding this attempt's own token (an earlier
    /// copy of the same attempt) is ours too; the mark when `mark`. With a ticket, fair.lua.
    pub(crate) fn acquire(
        &mut self,
        now: Instant,
        keys: &LockKeys,
        token: &str,
        ttl: Duration,
        mark: bool,
        ticket: Option<Ticket<'_>>,
    ) -> Taken {
        if let Some(ticket) = ticket {
            return self.acquire_fair(now, keys, token, ttl, mark, ticket);
        }
        if let Some(held) = self.live_mut(&keys.lock, now) {
            if owner(&held.value) == token {
                return Taken::Granted;
            }
            if mark && !held.value.ends_with(MARK) {
                held.value.push(MARK);
            }
            return Taken::Held(Some(held.expires - now));
        }
        // Expired entries stay until overwritten; sweep them when the map has doubled.
        if self.keys.len() >= 64 && self.keys.len() > 2 * self.swept_len {
            self.keys.retain(|_, e| e.expires > now);
            self.swept_len = self.keys.len();
        }
        self.keys.insert(
            keys.lock.clone(),
            Entry {
                value: token.to_owned(),
                expires: now + ttl,
            },
        );
        Taken::Granted
    }

    /// The permits the live holders of `keys` use when they differ from `keys.permits`
    /// (permit_acquire.lua's and acquire.lua's `LOCKPERMITS`).
    pub(crate) fn permits_mismatch(&mut self, now: Instant, keys: &LockKeys) -> Option<u32> {
        if let Some(set) = self.permits.get_mut(&keys.lock) {
            set.forget_expired(now);
            if set.holders.is_empty() {
                self.permits.remove(&keys.lock);
            } else if set.n != keys.permits {
                return Some(set.n);
            }
        }
        (keys.shared() && self.live(&keys.lock, now).is_some()).then_some(1)
    }

    /// permit_acquire.lua, once [`permits_mismatch`](Self::permits_mismatch) found none.
    pub(crate) fn acquire_permit(
        &mut self,
        now: Instant,
        keys: &LockKeys,
        token: &str,
        ttl: Duration,
        mark: bool,
    ) -> Taken {
        let set = self
            .permits
            .entry(keys.lock.clone())
            .or_insert_with(|| Permits {
                n: keys.permits,
                holders: HashMap::new(),
                waited: false,
            });
        set.forget_expired(now);
        set.n = keys.permits;
        let others = set.holders.len() - usize::from(set.holders.contains_key(token));
        if others < keys.permits as usize {
            set.holders.insert(token.to_owned(), now + ttl);
            return Taken::Granted;
        }
        if mark {
            set.waited = true;
        }
        let soonest = set.holders.values().min().copied().unwrap_or(now);
        Taken::Held(Some(
            soonest
                .saturating_duration_since(now)
                .max(Duration::from_millis(1)),
        ))
    }

    /// permit_release.lua: `(ours, published)`.
    fn release_permit(
        &mut self,
        now: Instant,
        keys: &LockKeys,
        token: &str,
        keep: Duration,
    ) -> (bool, bool) {
        let Some(set) = self.permits.get_mut(&keys.lock) else {
            return (false, false);
        };
        let Some(ends) = set.holders.remove(token) else {
            return (false, false);
        };
        if ends <= now {
            return (false, false);
        }
        if !keep.is_zero() {
            set.holders
                .insert(format!("{token}{RETIRED}"), ends.min(now + keep));
            return (true, false);
        }
        let published = std::mem::take(&mut set.waited);
        if set.holders.is_empty() {
            self.permits.remove(&keys.lock);
        }
        (true, published)
    }

    /// permit_extend.lua.
    fn extend_permit(&mut self, now: Instant, keys: &LockKeys, token: &str, ttl: Duration) -> bool {
        let Some(set) = self.permits.get_mut(&keys.lock) else {
            return false;
        };
        match set.holders.get_mut(token) {
            Some(ends) if *ends > now => {
                *ends = now + ttl;
                true
            }
            _ => false,
        }
    }

    /// fair.lua.
    fn acquire_fair(
        &mut self,
        now: Instant,
        keys: &LockKeys,
        token: &str,
        ttl: Duration,
        mark: bool,
        ticket: Ticket<'_>,
    ) -> Taken {
        let queue = keys.queue();
        let line = self.lines.entry(queue.clone()).or_default();
        line.tickets.retain(|_, (_, expires)| *expires >= now);
        let mine = line.tickets.get(ticket.id).map(|(arrival, _)| *arrival);
        let first = line
            .tickets
            .iter()
            .min_by_key(|(_, (arrival, _))| *arrival)
            .map(|(id, (_, expires))| (id.clone(), *expires));
        let others = line.tickets.len() - usize::from(mine.is_some());
        let holder = self.live(&keys.lock, now).map(|e| owner(&e.value) == token);
        let my_turn = first.as_ref().is_none_or(|(first, _)| first == ticket.id);
        if holder == Some(true) || (holder.is_none() && my_turn) {
            if holder.is_none() {
                // Taken already marked while others wait: its release is published to them.
                let mut value = token.to_owned();
                if others > 0 {
                    value.push(MARK);
                }
                self.keys.insert(
                    keys.lock.clone(),
                    Entry {
                        value,
                        expires: now + ttl,
                    },
                );
            }
            self.leave(now, keys, ticket.id);
            return Taken::Granted;
        }
        let line = self.lines.get_mut(&queue).expect("made above");
        let arrival = mine.unwrap_or_else(|| {
            line.arrivals += 1;
            line.arrivals
        });
        line.tickets
            .insert(ticket.id.to_owned(), (arrival, now + ticket.keep));
        match self.live_mut(&keys.lock, now) {
            // Free, another ticket first: at most until that ticket would leave the line.
            None => {
                Taken::Held(first.map(|(_, expires)| (expires - now).max(Duration::from_millis(1))))
            }
            Some(held) => {
                if mark && !held.value.ends_with(MARK) {
                    held.value.push(MARK);
                }
                Taken::Held(Some(held.expires - now))
            }
        }
    }

    /// leave.lua: `true` when the waiters behind the ticket are to be told (it was in line and
    /// the lock is free).
    pub(crate) fn leave(&mut self, now: Instant, keys: &LockKeys, ticket: &str) -> bool {
        let queue = keys.queue();
        let Some(line) = self.lines.get_mut(&queue) else {
            return false;
        };
        let was_in_line = line.tickets.remove(ticket).is_some();
        if line.tickets.is_empty() {
            self.lines.remove(&queue);
        }
        was_in_line && self.live(&keys.lock, now).is_none()
    }

    /// release.lua: `(ours, published)`.
    pub(crate) fn release(
        &mut self,
        now: Instant,
        keys: &LockKeys,
        token: &str,
        keep: Duration,
    ) -> (bool, bool) {
        if keys.shared() {
            return self.release_permit(now, keys, token, keep);
        }
        let Some(held) = self.owned_by(&keys.lock, token, now) else {
            return (false, false);
        };
        if !keep.is_zero() {
            held.value = format!("{token}{RETIRED}");
            held.expires = held.expires.min(now + keep);
            return (true, false);
        }
        let marked = held.value.ends_with(MARK);
        self.keys.remove(&keys.lock);
        (true, marked)
    }

    /// extend.lua.
    pub(crate) fn extend(
        &mut self,
        now: Instant,
        keys: &LockKeys,
        token: &str,
        ttl: Duration,
    ) -> bool {
        if keys.shared() {
            return self.extend_permit(now, keys, token, ttl);
        }
        match self.owned_by(&keys.lock, token, now) {
            Some(held) => {
                held.expires = now + ttl;
                true
            }
            None => false,
        }
    }

    /// fence.lua, with the server's clock at `clock_us` microseconds.
    pub(crate) fn fence(
        &mut self,
        now: Instant,
        keys: &LockKeys,
        token: &str,
        clock_us: u64,
    ) -> Option<u64> {
        self.owned_by(&keys.lock, token, now)?;
        Some(self.advance_fence(now, keys, clock_us))
    }

    /// The next fencing token (the larger of the last + 1 and the clock in µs), stored.
    fn advance_fence(&mut self, now: Instant, keys: &LockKeys, clock_us: u64) -> u64 {
        let fence_key = keys.fence();
        let last = self
            .live(&fence_key, now)
            .and_then(|e| e.value.parse::<u64>().ok())
            .unwrap_or(0);
        let next = clock_us.max(last + 1);
        self.keys.insert(
            fence_key,
            Entry {
                value: next.to_string(),
                expires: now + FENCE_KEEP,
            },
        );
        next
    }

    /// The owner token in `key` and when it expires, if it is live.
    #[cfg(test)]
    pub(crate) fn holder(&self, key: &str, now: Instant) -> Option<(&str, Instant)> {
        self.live(key, now).map(|e| (owner(&e.value), e.expires))
    }

    /// When the permit of `token` in the lock of `permits(n)` at `key` ends, if it is live.
    #[cfg(test)]
    pub(crate) fn permit_end(&self, key: &str, token: &str, now: Instant) -> Option<Instant> {
        let ends = *self.permits.get(key)?.holders.get(token)?;
        (ends > now).then_some(ends)
    }

    /// Forgets everything (a restart without persistence).
    #[cfg(test)]
    pub(crate) fn flush(&mut self) {
        self.keys.clear();
        self.swept_len = 0;
        self.lines.clear();
        self.permits.clear();
    }
}
