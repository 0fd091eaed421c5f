//! Owner tokens: the random value stored in a lock key that proves who holds it.

/// Number of random bytes in a token (128 bits).
const TOKEN_BYTES: usize = 16;

/// Returns a fresh owner token: 128 bits from the operating system's CSPRNG, as 32 lowercase
/// hex characters.
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
