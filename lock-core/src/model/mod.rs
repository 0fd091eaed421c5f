//! A model of one Redis server, small enough to run inside the process: a keyspace with Redis'
//! rules ([`keyspace`]) and the lock's own Lua scripts running against it ([`lua`]).
//!
//! Why: the scripts in `src/scripts`, with the plain commands the client sends, are the only
//! definition of what a lock does (DESIGN.md, "One semantics"). The in-memory backend and the
//! fault simulator run those same scripts here, so they cannot drift from what a server does;
//! the differential test (`diff.rs`) holds this model to a real `redis-server`.
//!
//! # Time
//!
//! The model has no clock of its own: every [`Model::call`] and [`Model::eval`] takes the
//! caller's [`Now`] (the in-memory backend passes tokio's pausable clock, the simulator its
//! virtual time, which may jump forward or back between calls). A script runs at one instant:
//! every expiry check, `PEXPIRE`/`SET PX` base, `PTTL` and `TIME` inside it use the same `now`.
//!
//! What Redis 7.0 does (read from the 7.0.15 tag of github.com/redis/redis):
//! - Keys cannot expire during a script. `keyIsExpired` (src/db.c) compares against
//!   `scriptTimeSnapshot()` while `server.script_caller` is set, and that snapshot is taken once
//!   by `scriptPrepareForRun` (src/script.c: `run_ctx->snapshot_time = mstime()`), so a key
//!   live at the script's start stays live to its end (issue #1525: replicas and the AOF must
//!   see the same thing). A key is expired when `now > when`: it still exists in its expiry
//!   millisecond, with `PTTL` 0.
//! - Relative expiries count from the live clock, not from that snapshot: `pexpireCommand`
//!   passes `mstime()` as `basetime` to `expireGenericCommand` (src/expire.c), `SET ... PX`
//!   adds `mstime()` in `getExpireMillisecondsOrReply` (src/t_string.c), `ttlGenericCommand`
//!   answers `expire - mstime()` (clamped at 0), and `checkAlreadyExpired` deletes on
//!   `when <= mstime()`.
//! - `TIME` reads `gettimeofday` on every call (`timeCommand`, src/server.c), so it advances
//!   within a script, and may disagree with the expiry snapshot by the script's run time.
//! - (Redis 7.2 replaced these `mstime()` calls with `commandTimeSnapshot()`, which is the
//!   script's start for everything but `TIME`.)
//!
//! So in 7.0 only a script that runs for a while (or a wall clock that jumps while it runs)
//! tells the difference between "one instant" and Redis: its `PEXPIRE`/`PTTL`/`TIME` move on
//! while its expiry checks do not. The lock's scripts run in microseconds; the model treats
//! each script as instantaneous, which is the common case on every version since 6.2. A
//! simulator that wants a jump inside a script cannot get it from this model.
//!
//! # Limits
//!
//! - Only the commands the client and the scripts send (see [`keyspace`]), plus `RPUSH` to
//!   create a foreign key of a third type, and `SCAN` answering every match in one page.
//! - `PUBLISH`/`SPUBLISH` answer 0 receivers: nobody subscribes to the model. The messages wait
//!   in an outbox ([`Model::drain_published`]) for the caller to deliver.
//! - Hashes answer `HGETALL` in insertion order, which is Redis' order only while a hash is a
//!   listpack (at most 128 fields, each field and value at most 64 bytes).
//! - Memory is full or not, as the simulator says ([`Model::set_full`]); never by the keys'
//!   size. When full, a command that may grow memory (`SET`, `HSET`, `HINCRBY`, `RPUSH`) is
//!   refused with `OOM`; in a script, only until its first write command (script.c's
//!   `scriptVerifyOOM`: a script that has written cannot stop half-way). `EVAL` itself is not
//!   refused (a script without flags, as the lock's are).

pub(crate) mod keyspace;
pub(crate) mod lua;
pub(crate) mod reply;

#[cfg(test)]
mod diff;

pub(crate) use keyspace::{Keyspace, Now, Published};
pub(crate) use lua::Scripts;
pub(crate) use reply::Reply;

use crate::command::Native;

/// A Redis server in a box: one keyspace and the scripts that run on it.
#[derive(Default)]
pub(crate) struct Model {
    keyspace: Keyspace,
    scripts: Scripts,
}

impl Model {
    /// An empty server.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// One plain command, as a client sends it (`args[0]` is the command).
    pub(crate) fn call<A: AsRef<[u8]>>(&mut self, now: Now, args: &[A]) -> Reply {
        self.keyspace.call(now, args)
    }

    /// `EVAL script numkeys keys... argv...`, at `now`.
    pub(crate) fn eval<K: AsRef<[u8]>, A: AsRef<[u8]>>(
        &mut self,
        now: Now,
        script: &str,
        keys: &[K],
        argv: &[A],
    ) -> Reply {
        self.scripts
            .eval(&mut self.keyspace, now, script, keys, argv)
    }

    /// `EVALSHA sha1 numkeys keys... argv...`, at `now`: `NOSCRIPT` unless `EVAL` ran
    /// that script since the last [`flush`](Self::flush).
    pub(crate) fn evalsha<K: AsRef<[u8]>, A: AsRef<[u8]>>(
        &mut self,
        now: Now,
        sha1: &str,
        keys: &[K],
        argv: &[A],
    ) -> Reply {
        self.scripts
            .evalsha(&mut self.keyspace, now, sha1, keys, argv)
    }

    #[cfg(test)]
    /// `SCRIPT FLUSH`.
    pub(crate) fn flush(&mut self) {
        self.scripts.flush();
    }

    #[cfg(test)]
    /// Used memory goes above `maxmemory` under `noeviction` (`true`), or back below it: a
    /// command that may grow memory is refused with `OOM`, in a script only until its first
    /// write (Redis 7.0's `scriptVerifyOOM`).
    pub(crate) fn set_full(&mut self, full: bool) {
        self.keyspace.set_full(full);
    }

    /// The native compare-and-set commands it answers (`DELIFEQ`, `SET ... IFEQ`); none, as
    /// Redis 7.0, by default.
    pub(crate) fn set_native(&mut self, native: Native) {
        self.keyspace.set_native(native);
    }

    /// The native compare-and-set commands it answers.
    pub(crate) fn native(&self) -> Native {
        self.keyspace.native()
    }

    /// The messages published since the last drain, oldest first.
    pub(crate) fn drain_published(&mut self) -> Vec<Published> {
        self.keyspace.drain_published()
    }

    #[cfg(test)]
    /// The keyspace, to inspect.
    pub(crate) fn keyspace(&self) -> &Keyspace {
        &self.keyspace
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// How many scripts a second the model runs (the simulator runs ~10^6 per test run):
    /// acquire, extend, fence and release in turn over 64 locks, the clock moving 50 µs a
    /// script. `cargo test -p lock-core --lib model::tests::throughput -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn throughput() {
        let scripts = [
            crate::scripts::ACQUIRE.body,
            crate::scripts::EXTEND.body,
            crate::scripts::FENCE.body,
            crate::scripts::RELEASE.body,
        ];
        let mut model = Model::new();
        let runs = 200_000u64;
        let started = Instant::now();
        let mut now = 1_733_500_000_000_000u64;
        for i in 0..runs {
            let lock = format!("lock:{{{}}}", i / 4 % 64);
            let fence = format!("{lock}:fence");
            let token = format!("host:1|1733500000000|{:032x}", i / 256);
            let reply = match i % 4 {
                0 => model.eval(
                    Now { us: now },
                    scripts[0],
                    &[&lock],
                    &[&token, "30000", "0"],
                ),
                1 => model.eval(Now { us: now }, scripts[1], &[&lock], &[&token, "30000"]),
                2 => model.eval(
                    Now { us: now },
                    scripts[2],
                    &[&lock, &fence],
                    &[&token, "60000"],
                ),
                _ => model.eval(
                    Now { us: now },
                    scripts[3],
                    &[&lock],
                    &[&token, "0", "PUBLISH"],
                ),
            };
            assert!(!matches!(reply, Reply::Error(_)), "{reply:?}");
            now += 50;
        }
        let elapsed = started.elapsed();
        eprintln!(
            "{runs} scripts in {elapsed:.2?}: {:.0} scripts/s",
            runs as f64 / elapsed.as_secs_f64()
        );
    }
}
