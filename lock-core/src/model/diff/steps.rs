//! The differential test's random steps: every lock script with arguments drawn from a few
//! names, tokens and tickets (valid and not), the plain commands the client sends, and the
//! server's memory filling up now and then.

use crate::scripts::{
    ACQUIRE, EXTEND, FAIR, FENCE, FORCE, LEAVE, PERMIT_ACQUIRE, PERMIT_EXTEND, PERMIT_PEEK,
    PERMIT_RELEASE, RELEASE, SHARED_ACQUIRE,
};

/// xorshift64*: a seeded sequence needs no crate.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub(super) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    pub(super) fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// One step: a plain command or a script, and whether its reply is a figure read from a clock.
#[derive(Debug)]
pub(super) enum Step {
    Command(Vec<String>),
    Eval {
        name: &'static str,
        script: &'static str,
        keys: Vec<String>,
        argv: Vec<String>,
        /// Sent as `EVALSHA`, as the client sends a script first.
        by_sha: bool,
    },
    Scan,
    /// `SCRIPT FLUSH`: later `EVALSHA`s meet `NOSCRIPT` until an `EVAL` of the same script.
    Flush,
    /// `CONFIG SET maxmemory 1` (`true`: used memory is above it, and under the default
    /// `noeviction` commands that may grow memory are refused with `OOM`) or `0` (no limit).
    Memory(bool),
    Sleep(u64),
}

impl Step {
    pub(super) fn eval(
        name: &'static str,
        script: &'static str,
        keys: &[&str],
        argv: &[&str],
    ) -> Step {
        Step::Eval {
            name,
            script,
            keys: keys.iter().map(|s| s.to_string()).collect(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            by_sha: false,
        }
    }

    pub(super) fn command(args: &[&str]) -> Step {
        Step::Command(args.iter().map(|s| s.to_string()).collect())
    }

    /// Whether the reply's shape is tallied: a script's, and a native command's.
    pub(super) fn tallied(&self) -> bool {
        match self {
            Step::Eval { .. } => true,
            Step::Command(args) => args[0] == "DELIFEQ" || args.iter().any(|a| a == "IFEQ"),
            _ => false,
        }
    }

    /// Which of its reply's figures are milliseconds left, read from a clock.
    pub(super) fn left(&self) -> Left {
        match self {
            Step::Command(args) if args[0] == "PTTL" => Left::Positive,
            Step::Eval { name, .. } => match *name {
                "acquire" | "fair" | "permit_acquire" | "shared_acquire" => Left::Negative,
                "permit_peek" => Left::PeekList,
                _ => Left::None,
            },
            _ => Left::None,
        }
    }
}

/// Where a reply carries milliseconds left: compared within the tolerance, every other figure
/// exactly (PTTL's -1 and -2, a script's 1 and 0, permit_peek's n).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Left {
    None,
    /// PTTL: a figure of 0 or more.
    Positive,
    /// acquire, fair, permit_acquire, shared_acquire: minus the figure.
    Negative,
    /// permit_peek: `{n, waited, token, left, token, left, ...}`.
    PeekList,
}

/// The world the random steps play in: two locks, their queue and fence keys, a few owners.
pub(super) struct Names {
    /// The server has `SPUBLISH`.
    pub(super) sharded: bool,
    locks: [&'static str; 2],
    tokens: Vec<String>,
    tickets: Vec<String>,
}

impl Names {
    pub(super) fn new() -> Self {
        let hex = |i: u64| format!("{:032x}", i.wrapping_mul(0x1234_5678_9abc_def1));
        Names {
            sharded: true,
            locks: ["lock:{a}", "lock:{b}"],
            // In the token formats of lock-core (holder | ms | lease ms, `w` when a watchdog
            // renews it | 128 random bits; and 0.1.0's, without the lease): short enough that
            // Redis keeps a hash of them as a listpack (fields of at most 64 bytes).
            tokens: (1..=4)
                .map(|i| match i {
                    1 => format!("host:{i}|1733500000000|30000w|{}", hex(i)),
                    2 => format!("host:{i}|1733500000000|{}", hex(i)),
                    _ => format!("host:{i}|1733500000000|{}|{}", 1000 * i, hex(i)),
                })
                .collect(),
            // Tickets naming their waiter, and one of a version before holder ids.
            tickets: (1..=3)
                .map(|i| match i {
                    3 => hex(100 + i),
                    _ => format!("w:{i}|1733500000000|{}", hex(100 + i)),
                })
                .collect(),
        }
    }

    pub(super) fn step(&self, rng: &mut Rng) -> Step {
        let mut step = self.any_step(rng);
        if let Step::Eval { by_sha, .. } = &mut step {
            *by_sha = rng.chance(25);
        }
        step
    }

    pub(super) fn any_step(&self, rng: &mut Rng) -> Step {
        let lock = *rng.pick(&self.locks);
        let queue = format!("{lock}:q");
        let fence = format!("{lock}:fence");
        let claims = format!("{lock}:x");
        let token = rng.pick(&self.tokens).clone();
        let ticket = rng.pick(&self.tickets).clone();
        let ttl = if rng.chance(40) {
            (15 + rng.below(50)).to_string()
        } else {
            "60000".to_owned()
        };
        let keep = rng.pick(&["0", "0", "25", "60000"]).to_string();
        let mark = rng.pick(&["0", "1"]).to_string();
        // SPUBLISH only where the server has it (Redis 7+, Valkey): the client never sends it
        // to Redis 6.2.
        let publish = if rng.chance(85) || !self.sharded {
            "PUBLISH"
        } else {
            "SPUBLISH"
        };
        let n = rng.pick(&["2", "2", "3"]).to_string();
        // Half the time, as a client that re-sends (Cluster) sends them: with the attempt's tomb.
        let tomb = rng.pick(&["0", "1"]).to_string();
        // Lock {b} is mostly a lock of permits(n), so that their steps get past the refusal a
        // plain holder gives them.
        let kind = match rng.below(100) {
            r if lock == self.locks[1] && rng.chance(50) => 50 + r % 20,
            r => r,
        };
        match kind {
            0..=7 => Step::eval(
                "acquire",
                ACQUIRE.body,
                &[lock],
                &[&token, &ttl, &mark, &tomb],
            ),
            // A waiting writer's attempt, with its claim.
            8..=14 => {
                let keep_claim = rng.pick(&["30", "60000"]);
                Step::eval(
                    "acquire",
                    ACQUIRE.body,
                    &[lock],
                    &[&token, &ttl, &mark, &tomb, &ticket, keep_claim],
                )
            }
            15..=24 => {
                let keep_ticket = rng.pick(&["30", "60000"]);
                Step::eval(
                    "fair",
                    FAIR.body,
                    &[lock, &queue],
                    &[&token, &ttl, &ticket, keep_ticket, &mark, &tomb],
                )
            }
            25..=27 => Step::eval(
                "leave",
                LEAVE.body,
                &[&queue, lock],
                &[&ticket, publish, &tomb],
            ),
            // The native compare-and-delete and compare-and-set of Valkey 9 and 8.1 (errors
            // elsewhere, which must read alike too), as a release and an extend send them.
            28..=37 if rng.chance(30) => Step::command(&["DELIFEQ", lock, &token]),
            38..=43 if rng.chance(40) => {
                Step::command(&["SET", lock, &token, "IFEQ", &token, "PX", &ttl])
            }
            28..=37 => Step::eval(
                "release",
                RELEASE.body,
                &[lock],
                &[&token, &keep, publish, &tomb],
            ),
            38..=43 => Step::eval("extend", EXTEND.body, &[lock], &[&token, &ttl]),
            44..=47 => Step::eval("fence", FENCE.body, &[lock, &fence], &[&token, "60000"]),
            48..=49 => Step::eval(
                "force",
                FORCE.body,
                &[lock, &fence],
                &["60000", publish, "ops", "", "30000"],
            ),
            50..=55 => Step::eval(
                "permit_acquire",
                PERMIT_ACQUIRE.body,
                &[lock],
                &[&token, &ttl, &mark, &tomb, &n],
            ),
            56..=59 => Step::eval(
                "shared_acquire",
                SHARED_ACQUIRE.body,
                &[lock],
                &[&token, &ttl, &mark, &tomb],
            ),
            60..=64 => Step::eval(
                "permit_release",
                PERMIT_RELEASE.body,
                &[lock],
                &[&token, &keep, publish, &tomb],
            ),
            65..=67 => Step::eval(
                "permit_extend",
                PERMIT_EXTEND.body,
                &[lock],
                &[&token, &ttl],
            ),
            68..=69 => Step::eval("permit_peek", PERMIT_PEEK.body, &[lock], &[]),
            // The uncontended acquire and the operator's reads.
            70..=74 => Step::command(&["SET", lock, &token, "NX", "PX", &ttl]),
            75..=77 => Step::command(&["GET", lock]),
            78..=80 => Step::command(&["PTTL", lock]),
            81 => Step::command(&["TYPE", lock]),
            82 => Step::command(&[
                "HGETALL",
                *rng.pick(&[lock, queue.as_str(), claims.as_str()]),
            ]),
            83 => Step::command(&["GET", &fence]),
            84 => Step::Scan,
            85 => Step::command(&["DEL", lock, &queue]),
            // Values the lock must live with: foreign ones (each one step in three, and
            // soon gone), and its own in every state.
            86..=88 if rng.chance(67) => Step::command(&["DEL", lock]),
            86 => Step::command(&["SET", lock, "not-a-token", "PX", &ttl]),
            87 => Step::command(&["HSET", lock, "field", "value"]),
            88 => Step::command(&["RPUSH", lock, "item"]),
            89 => Step::command(&["SET", lock, &format!("{token}*"), "PX", &ttl]),
            90 => Step::command(&["SET", lock, &format!("{token}*{ticket}"), "KEEPTTL"]),
            91 => Step::command(&["SET", lock, &format!("{token}~"), "PX", &ttl]),
            92 => Step::command(&["HSET", lock, "#n", &n]),
            93 => Step::command(&["SET", &fence, *rng.pick(&["17", "oops"]), "PX", "60000"]),
            94 => Step::command(&["HSET", &queue, &ticket, "1 1"]),
            95 => Step::command(&["PEXPIRE", lock, &ttl]),
            96 => Step::command(&["EXISTS", lock, &queue, &fence]),
            97 if rng.chance(50) => Step::command(&["HGET", lock, &token]),
            97 => Step::command(&["PTTL", &format!("{lock}:gone:{token}")]),
            98 if rng.chance(20) => Step::Flush,
            // Out of memory now and then, for about a hundred steps.
            98 if rng.chance(30) => Step::Memory(true),
            99 => Step::Memory(false),
            _ => Step::Sleep(5 + rng.below(60) as u64),
        }
    }
}
