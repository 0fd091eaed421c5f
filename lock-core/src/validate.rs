//! Input checks that run before any I/O.

use std::time::Duration;

use crate::{LockError, Result};

/// The longest lock name accepted, in bytes of UTF-8 (4 KiB).
///
/// Redis itself accepts keys up to 512 MB, but a lock name travels with every command of the
/// lock and is kept in memory by the server for as long as the lock lives; names past a few
/// kilobytes are almost always a bug (a serialized payload used as a key).
pub const MAX_NAME_LEN: usize = 4096;

/// The longest lease accepted: Redis' `PX` takes milliseconds as a signed 64-bit integer and
/// adds them to the current time, so the bound is kept well below `i64::MAX` milliseconds
/// (about 292 million years); 100 years is plenty for a lease.
pub const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The shortest lease accepted: Redis' expiry has millisecond resolution.
pub const MIN_TTL: Duration = Duration::from_millis(1);

/// Characters that change how a line reads without showing themselves: bidirectional
/// overrides and isolates, zero-width characters, line and paragraph separators.
pub(crate) fn hidden(c: char) -> bool {
    matches!(c,
        '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2028}' | '\u{2029}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// A lock name as logs show it: control and [`hidden`] characters escaped (`\n`, `\u{1b}`,
/// `\u{202e}`), so that a name cannot end a log line, forge the next one, or reorder it. Other names are shown as they are.
pub(crate) struct Logged<'a>(pub(crate) &'a str);

impl std::fmt::Display for Logged<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            if c.is_control() || hidden(c) {
                write!(f, "{}", c.escape_default())?;
            } else {
                std::fmt::Write::write_char(f, c)?;
            }
        }
        Ok(())
    }
}

pub(crate) fn check_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(LockError::InvalidName {
            reason: "the name is empty".to_owned(),
        });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(LockError::InvalidName {
            reason: format!(
                "the name is {} bytes long; the maximum is {MAX_NAME_LEN} bytes",
                name.len()
            ),
        });
    }
    if name.starts_with('}') {
        // `<prefix>{}...}` has an empty hash tag: Redis Cluster would hash the whole key, and the
        // lock and its fencing counter would land in different slots.
        return Err(LockError::InvalidName {
            reason:
                "the name starts with `}`, which would empty the Redis Cluster hash tag `{<name>}`"
                    .to_owned(),
        });
    }
    Ok(())
}

pub(crate) fn check_prefix(prefix: &str) -> Result<()> {
    if prefix.contains(['{', '}']) {
        return Err(LockError::InvalidName {
            reason: format!(
                "the key prefix `{prefix}` contains `{{` or `}}`; braces are reserved for the hash tag around the lock name"
            ),
        });
    }
    if prefix.len() > MAX_NAME_LEN {
        return Err(LockError::InvalidName {
            reason: format!("the key prefix is longer than {MAX_NAME_LEN} bytes"),
        });
    }
    Ok(())
}

pub(crate) fn check_ttl(what: &str, ttl: Duration) -> Result<()> {
    if ttl.is_zero() {
        return Err(LockError::InvalidTtl {
            reason: format!("{what} is zero; it must be at least 1ms"),
        });
    }
    if ttl < MIN_TTL {
        return Err(LockError::InvalidTtl {
            reason: format!(
                "{what} is {ttl:?}; Redis expires keys in whole milliseconds, so it must be at least 1ms"
            ),
        });
    }
    if ttl > MAX_TTL {
        return Err(LockError::InvalidTtl {
            reason: format!("{what} is {ttl:?}; the maximum is {MAX_TTL:?} (100 years)"),
        });
    }
    Ok(())
}

/// Whole milliseconds of a checked duration, rounded up so a lease is never shorter than asked.
pub(crate) fn millis_ceil(d: Duration) -> u64 {
    let ms = d.as_millis();
    let ms = if !d.subsec_nanos().is_multiple_of(1_000_000) {
        ms + 1
    } else {
        ms
    };
    u64::try_from(ms).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_names_cannot_forge_a_line() {
        assert_eq!(Logged("jobs:1 ünï").to_string(), "jobs:1 ünï");
        assert_eq!(
            Logged("a\nlevel=WARN b\u{1b}[2J").to_string(),
            "a\\nlevel=WARN b\\u{1b}[2J"
        );
        assert_eq!(
            Logged("x\u{202e}y\u{2028}").to_string(),
            "x\\u{202e}y\\u{2028}"
        );
    }

    #[test]
    fn names() {
        assert!(check_name("jobs:1").is_ok());
        assert!(check_name("ünïcødé {with} braces").is_ok());
        assert!(check_name("{}").is_ok());
        assert!(matches!(
            check_name("}{"),
            Err(LockError::InvalidName { .. })
        ));
        assert!(check_name(&"x".repeat(MAX_NAME_LEN)).is_ok());
        assert!(matches!(check_name(""), Err(LockError::InvalidName { .. })));
        assert!(matches!(
            check_name(&"x".repeat(MAX_NAME_LEN + 1)),
            Err(LockError::InvalidName { .. })
        ));
    }

    #[test]
    fn ttls() {
        assert!(check_ttl("ttl", Duration::from_millis(1)).is_ok());
        assert!(check_ttl("ttl", MAX_TTL).is_ok());
        for bad in [
            Duration::ZERO,
            Duration::from_micros(1),
            Duration::from_micros(999),
            MAX_TTL + Duration::from_secs(1),
            Duration::MAX,
        ] {
            assert!(
                matches!(check_ttl("ttl", bad), Err(LockError::InvalidTtl { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn millis_round_up() {
        assert_eq!(millis_ceil(Duration::from_millis(30)), 30);
        assert_eq!(millis_ceil(Duration::from_micros(1500)), 2);
    }

    #[test]
    fn prefixes() {
        assert!(check_prefix("lock:").is_ok());
        assert!(check_prefix("").is_ok());
        assert!(check_prefix("a{b").is_err());
    }
}
