//! Owner tokens: the random value stored in a lock key that proves who holds it.

/// Number of random bytes in a token (128 bits).
const TOKEN_BYTES: usize = 16;

/// An owner token: `<holder>|<unix ms when the attempt was made>|<lease ms>[w]|<32 random hex>`.
/// The holder, the time, the lease the attempt asks for and whether a watchdog renews it
/// (`w`: `auto_extend`) ride in the token so that `inspect` can tell who holds a lock, since
/// when, for how long a lease and whether it is kept alive, at no cost in commands; only the
/// random part is a secret (the whole token proves ownership, and the random part makes it
/// unguessable). lock-core 0.1.0 wrote `<holder>|<unix ms>|<random>`, which is still read.
pub(crate) fn owner_token(holder: &str, lease: std::time::Duration, renewed: bool) -> String {
    let since = unix_ms_now();
    let lease = lease.as_millis();
    let renewed = if renewed { "w" } else { "" };
    format!(
        "{holder}|{since}|{lease}{renewed}|{}",
        random_hex().as_str()
    )
}

/// A fair waiter's ticket, or a waiting writer's claim id: `<holder>|<unix ms>|<32 random hex>`,
/// the same for all the attempts of one acquisition. The holder and the time it started
/// waiting are there for operators (`lockctl queue`); the random part keeps it unique.
pub(crate) fn ticket(holder: &str) -> String {
    format!("{holder}|{}|{}", unix_ms_now(), random_hex().as_str())
}

/// This machine's wall clock, in ms since the Unix epoch.
pub(crate) fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What a lock key's value (or a ticket) tells of its holder, for values written by
/// [`owner_token`] or [`ticket`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    /// The holder id.
    pub(crate) holder: String,
    /// When it made the attempt that took the lock (or started waiting), by its own clock.
    pub(crate) since: std::time::SystemTime,
    /// The lease the attempt asked for; `None` in tokens of lock-core 0.1.0, and tickets.
    pub(crate) lease: Option<std::time::Duration>,
    /// Whether its watchdog renews it (`auto_extend`).
    pub(crate) renewed: bool,
}

/// The [`Record`] in a lock key's value, a hash field or a ticket; `None` for values written
/// by other clients (a bare random token, as versions before holder ids wrote, redis-py's and
/// redsync's). What follows a waiter's `*` mark is not part of it.
pub(crate) fn record_of(value: &str) -> Option<Record> {
    let token = value.split('*').next().unwrap_or(value);
    let parts: Vec<&str> = token.split('|').collect();
    let (holder, since, lease, random) = match parts[..] {
        [holder, since, random] => (holder, since, None, random),
        [holder, since, lease, random] => (holder, since, Some(lease), random),
        _ => return None,
    };
    // The random part as `new_token` makes it (a hash field of a given-back permit ends in `~`):
    // another client's value that happens to hold `|`s is not read as one of ours.
    let random = random.strip_suffix('~').unwrap_or(random);
    if holder.is_empty()
        || random.len() != 2 * TOKEN_BYTES
        || !random
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    let since = std::time::UNIX_EPOCH + std::time::Duration::from_millis(since.parse().ok()?);
    let (lease, renewed) = match lease {
        None => (None, false),
        Some(lease) => {
            let renewed = lease.ends_with('w');
            let ms = lease.strip_suffix('w').unwrap_or(lease).parse().ok()?;
            (Some(std::time::Duration::from_millis(ms)), renewed)
        }
    };
    Some(Record {
        holder: holder.to_owned(),
        since,
        lease,
        renewed,
    })
}

/// What a lock key's value tells of its holder: the holder id and when it took the lock (from
/// its own clock); see [`record_of`].
pub(crate) fn holder_of(value: &str) -> Option<(String, std::time::SystemTime)> {
    record_of(value).map(|r| (r.holder, r.since))
}

/// The holder id in `token`, or `"unknown"`, for log events.
pub(crate) fn holder_or_unknown(token: &str) -> String {
    holder_named(record_of(token).as_ref())
}

/// The holder id `record` names, or `"unknown"` without one (a value another client wrote),
/// as logs and operators show it.
pub(crate) fn holder_named(record: Option<&Record>) -> String {
    record.map_or_else(|| "unknown".to_owned(), |r| r.holder.clone())
}

/// A holder id that fits in a token: `*` and `|` (the token's separators), whitespace and
/// control characters become `_`, and it is cut to 255 bytes.
pub(crate) fn clean_holder(id: &str) -> String {
    let mut out: String = id
        .chars()
        .map(|c| {
            if c == '*' || c == '|' || c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    while out.len() > 255 {
        out.pop();
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

/// `hostname:pid`, the default holder id.
pub(crate) fn default_holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    clean_holder(&format!("{host}:{}", std::process::id()))
}

/// Tokens drawn from one seed before the generator is seeded again from the OS: few, so that a
/// copy of a generator that the pid check cannot tell from its original (a process cloned with
/// its pid, as a VM snapshot or CRIU restores it; a descendant that happens to get a dead
/// ancestor's pid) draws at most this many of the original's tokens. 32 seed bytes every 16
/// tokens cost about 20 ns a token, where a `getrandom` per token cost 340 ns.
const TOKENS_PER_SEED: u32 = 16;

/// A thread's token generator: ChaCha12 seeded from the OS, in the process that seeded it.
struct Source {
    /// The process it was seeded in: a forked child (another pid) seeds its own.
    pid: u32,
    /// Tokens left before it is seeded again.
    left: u32,
    rng: rand::rngs::StdRng,
}

thread_local! {
    static SOURCE: std::cell::RefCell<Option<Source>> = const { std::cell::RefCell::new(None) };
}

/// 128 random bits for a token: from this thread's ChaCha12 generator, seeded with 256 bits
/// from the OS on first use, every [`TOKENS_PER_SEED`] tokens, and in a forked child. A child
/// of `fork` starts with a copy of its parent's generator; it has another pid, so it never
/// draws a token from the copy (the pid is read with every token: one `getpid`, where asking
/// the OS for the bytes costs a `getrandom` call of about twice as long). While a thread is
/// being torn down (its generator gone), the bytes come from the OS directly. The one case the
/// pid cannot tell is a copy with the same pid ([`TOKENS_PER_SEED`] bounds it).
fn random_bytes() -> [u8; TOKEN_BYTES] {
    use rand::{Rng, SeedableRng};
    let mut bytes = [0u8; TOKEN_BYTES];
    let pid = std::process::id();
    let drawn = SOURCE.try_with(|cell| {
        let mut source = cell.borrow_mut();
        let source = match &mut *source {
            Some(s) if s.pid == pid && s.left > 0 => s,
            stale => stale.insert(Source {
                pid,
                left: TOKENS_PER_SEED,
                rng: rand::rngs::StdRng::from_seed(os_seed()),
            }),
        };
        source.left -= 1;
        source.rng.fill_bytes(&mut bytes);
    });
    if drawn.is_err() {
        fill_from_os(&mut bytes);
    }
    bytes
}

/// 256 bits from the OS.
fn os_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    fill_from_os(&mut seed);
    seed
}

fn fill_from_os(bytes: &mut [u8]) {
    // The OS CSPRNG only fails on platforms without one; a lock without an unguessable owner
    // token would be unsafe, so there is nothing sensible to fall back to.
    getrandom::fill(bytes).expect("the operating system's random number generator failed");
}

/// Returns a fresh random value: 128 bits from a CSPRNG seeded from the operating system's
/// ([`random_bytes`]), as 32 lowercase hex characters (the secret part of an owner token, and
/// a fair waiter's ticket).
///
/// The token is a credential: whoever knows it can release or extend the lock. It is never
/// logged and never shown by `Debug`. (Written into tokens through [`random_hex`], without
/// this allocation.)
#[cfg(test)]
pub(crate) fn new_token() -> String {
    random_hex().as_str().to_owned()
}

/// [`new_token`] without its allocation: for a token written into a longer value.
struct Hex([u8; 2 * TOKEN_BYTES]);

impl Hex {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }
}

fn random_hex() -> Hex {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = [0u8; 2 * TOKEN_BYTES];
    for (pair, byte) in hex.chunks_exact_mut(2).zip(random_bytes()) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
    Hex(hex)
}

#[cfg(test)]
thread_local! {
    /// Set by the fault simulator so that retry jitter, and so every timing, replays from its
    /// seed.
    pub(crate) static SEEDED_JITTER: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// A uniformly random `u64` from the OS, used to jitter retry pauses.
pub(crate) fn random_u64() -> u64 {
    #[cfg(test)]
    if let Some(state) = SEEDED_JITTER.get() {
        let next = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        SEEDED_JITTER.set(Some(next));
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        return z ^ (z >> 31);
    }
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // Jitter is not a security property: a fixed value only makes retries less spread out.
        return 0x9E37_79B9_7F4A_7C15;
    }
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_32_hex_chars_and_differ() {
        let a = new_token();
        let b = new_token();
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }
}

#[cfg(test)]
mod holder_tests {
    use super::*;

    #[test]
    fn a_token_carries_its_holder_and_time_and_nothing_else_readable() {
        let token = owner_token("web-1:42", std::time::Duration::from_millis(30_000), true);
        let (holder, since) = holder_of(&token).unwrap();
        let record = record_of(&token).unwrap();
        assert_eq!(record.lease, Some(std::time::Duration::from_secs(30)));
        assert!(record.renewed);
        let plain = record_of(&owner_token(
            "w",
            std::time::Duration::from_millis(1500),
            false,
        ));
        assert_eq!(
            plain.map(|r| (r.lease, r.renewed)),
            Some((Some(std::time::Duration::from_millis(1500)), false))
        );
        // A token of lock-core 0.1.0: no lease recorded.
        let old = format!("web-1:42|1700000000000|{}", new_token());
        let old = record_of(&old).unwrap();
        assert_eq!((old.holder.as_str(), old.lease), ("web-1:42", None));
        // A ticket names its waiter.
        assert_eq!(record_of(&ticket("web-2:7")).unwrap().holder, "web-2:7");
        // A permit given back (`~`) still reads; another client's value with `|`s does not.
        assert!(record_of(&format!("{token}~")).is_some());
        assert!(record_of("a|1|2|x").is_none());
        assert!(record_of(&format!("|1|{}", new_token())).is_none());
        assert_eq!(holder, "web-1:42");
        let age = std::time::SystemTime::now().duration_since(since).unwrap();
        assert!(age < std::time::Duration::from_secs(5));
        // Marked by a waiter, with a fair ticket after the mark.
        assert_eq!(holder_of(&format!("{token}*ticket")).unwrap().0, "web-1:42");
        // A bare token from an older version.
        assert!(holder_of(&new_token()).is_none());
        assert_eq!(clean_holder("a b*c|d\n"), "a_b_c_d_");
        assert_eq!(clean_holder(""), "_");
        assert!(default_holder().ends_with(&format!(":{}", std::process::id())));
    }
}
