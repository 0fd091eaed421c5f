//! Owner tokens: the random value stored in a lock key that proves who holds it.

/// Number of random bytes in a token (128 bits).
const TOKEN_BYTES: usize = 16;

/// An owner token: `<holder>|<unix ms when the attempt was made>|<new_token()>`. The holder
/// and the time ride in the token so that `inspect` can tell who holds a lock and since when,
/// at no cost in commands; only the random part is a secret (the whole token proves ownership,
/// and the random part makes it unguessable).
pub(crate) fn owner_token(holder: &str) -> String {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{holder}|{since}|{}", new_token())
}

/// This machine's wall clock, in ms since the Unix epoch.
pub(crate) fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What a lock key's value tells of its holder: the holder id and when it took the lock (from
/// its own clock), for values written by [`owner_token`]; `None` for others (a bare random
/// token, as versions before holder ids wrote). Whether a waiter marked the key is the `*`.
pub(crate) fn holder_of(value: &str) -> Option<(String, std::time::SystemTime)> {
    let token = value.split('*').next().unwrap_or(value);
    let mut parts = token.rsplitn(3, '|');
    let (_random, since, holder) = (parts.next()?, parts.next()?, parts.next()?);
    let since = std::time::UNIX_EPOCH + std::time::Duration::from_millis(since.parse().ok()?);
    Some((holder.to_owned(), since))
}

/// The holder id in `token`, or `"unknown"`, for log events.
pub(crate) fn holder_or_unknown(token: &str) -> String {
    holder_of(token).map_or_else(|| "unknown".to_owned(), |(holder, _)| holder)
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

/// Returns a fresh random value: 128 bits from the operating system's CSPRNG, as 32 lowercase
/// hex characters (the secret part of an owner token, and a fair waiter's ticket).
///
/// The token is a credential: whoever knows it can release or extend the lock. It is never
/// logged and never shown by `Debug`.
pub(crate) fn new_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    // The OS CSPRNG only fails on platforms without one; a lock without an unguessable owner
    // token would be unsafe, so there is nothing sensible to fall back to.
    getrandom::fill(&mut bytes).expect("the operating system's random number generator failed");
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut token = String::with_capacity(TOKEN_BYTES * 2);
    for byte in bytes {
        token.push(char::from(HEX[usize::from(byte >> 4)]));
        token.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    token
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
        let token = owner_token("web-1:42");
        let (holder, since) = holder_of(&token).unwrap();
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
