//! The seeded randomness of a run, and how often each fault strikes.

use std::time::Duration;

/// splitmix64: small, seedable, good enough to draw faults.
#[derive(Clone)]
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub(super) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub(super) fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// How often each fault strikes a command, in percent, and how large delays are.
#[derive(Clone, Copy, Debug)]
pub(super) struct Faults {
    pub(super) cut: u64,
    pub(super) lost_reply: u64,
    pub(super) duplicate: u64,
    pub(super) max_delay_ms: u64,
    /// How late a command from a cut connection, or a duplicate, may land.
    pub(super) max_late_ms: u64,
}

pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_millis(100);

/// The clients' `max_poll_interval`.
pub(super) const POLL_CAP: Duration = Duration::from_millis(50);

/// `LOCK_SIM_TRACE=1` prints every command the servers apply.
pub(super) static TRACE: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| std::env::var_os("LOCK_SIM_TRACE").is_some());
