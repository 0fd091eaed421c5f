//! The commands that take options and numbers (`SET`, `PEXPIRE`, the hash writes, `SCAN`),
//! parsed as Redis parses them, with its errors in its order; and Redis' own number and glob
//! rules.

use super::{errors, Entry, Keyspace, Reply, Value};

impl Keyspace {
    /// `SET key value [NX|XX|IFEQ old] [PX ms|EX s|KEEPTTL]`, parsed as `setGenericCommand`
    /// does: options first (syntax errors), then the expire time, then the key's type and value
    /// (`IFEQ`, Valkey 8.1+, only where the keyspace has it: a string equal to `old`, else nil;
    /// a missing key is not created).
    pub(super) fn set(&mut self, now_ms: u64, a: &[&[u8]]) -> Reply {
        let (key, value) = (a[0], a[1]);
        let (mut nx, mut xx, mut keepttl) = (false, false, false);
        let mut ifeq: Option<&[u8]> = None;
        let mut expire: Option<(&[u8], u64)> = None;
        let mut i = 2;
        while i < a.len() {
            let opt = a[i].to_ascii_uppercase();
            let next = a.get(i + 1);
            match opt.as_slice() {
                b"NX" if !xx && ifeq.is_none() => nx = true,
                b"XX" if !nx && ifeq.is_none() => xx = true,
                b"IFEQ"
                    if self.native.set_ifeq && !nx && !xx && ifeq.is_none() && next.is_some() =>
                {
                    ifeq = next.copied();
                    i += 1;
                }
                b"KEEPTTL" if expire.is_none() => keepttl = true,
                b"PX" | b"EX" if expire.is_none() && !keepttl && next.is_some() => {
                    let unit = if opt == b"PX" { 1 } else { 1000 };
                    expire = Some((next.copied().unwrap_or_default(), unit));
                    i += 1;
                }
                b"GET" | b"EXAT" | b"PXAT" => {
                    return Reply::error(format!(
                        "ERR the model does not implement SET {}",
                        String::from_utf8_lossy(&opt)
                    ))
                }
                _ => return Reply::error(errors::SYNTAX),
            }
            i += 1;
        }
        let expires_at_ms = match expire {
            None => None,
            Some((raw, unit)) => match parse_i64(raw) {
                None => return Reply::error(errors::NOT_INTEGER),
                Some(ms) if ms <= 0 || ms > i64::MAX / unit as i64 => {
                    return Reply::error(errors::expire_time("set"))
                }
                Some(ms) => match (ms * unit as i64).checked_add(now_ms as i64) {
                    None => return Reply::error(errors::expire_time("set")),
                    Some(at) => Some(at as u64),
                },
            },
        };
        if let Some(expected) = ifeq {
            match self.lookup(key, now_ms) {
                Some(Entry {
                    value: Value::Str(s),
                    ..
                }) if s.as_slice() == expected => {}
                Some(Entry {
                    value: Value::Str(_),
                    ..
                })
                | None => return Reply::Nil,
                Some(_) => return Reply::error(errors::WRONGTYPE),
            }
        }
        let old = self.lookup(key, now_ms).map(|e| e.expires_at_ms);
        if (nx && old.is_some()) || (xx && old.is_none()) {
            return Reply::Nil;
        }
        let expires_at_ms = if keepttl {
            old.flatten()
        } else {
            expires_at_ms
        };
        self.insert(key, Value::Str(value.to_vec()), expires_at_ms);
        Reply::ok()
    }

    /// `PEXPIRE key ms [NX|XX|GT|LT]` (`base` = now) and `PEXPIREAT key when [...]` (no base),
    /// as `expireGenericCommand`: a time at or before now deletes the key and answers 1.
    pub(super) fn pexpire(&mut self, now_ms: u64, a: &[&[u8]], base: Option<u64>) -> Reply {
        let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
        for opt in &a[2..] {
            match opt.to_ascii_uppercase().as_slice() {
                b"NX" => nx = true,
                b"XX" => xx = true,
                b"GT" => gt = true,
                b"LT" => lt = true,
                _ => {
                    return Reply::error(format!(
                        "ERR Unsupported option {}",
                        String::from_utf8_lossy(opt)
                    ))
                }
            }
        }
        if nx && (xx || gt || lt) {
            return Reply::error(
                "ERR NX and XX, GT or LT options at the same time are not compatible",
            );
        }
        if gt && lt {
            return Reply::error("ERR GT and LT options at the same time are not compatible");
        }
        let Some(when) = parse_i64(a[1]) else {
            return Reply::error(errors::NOT_INTEGER);
        };
        let base = base.unwrap_or(0) as i64;
        if when > i64::MAX - base {
            let name = if base == 0 { "pexpireat" } else { "pexpire" };
            return Reply::error(errors::expire_time(name));
        }
        let when = when + base;
        let Some(entry) = self.lookup_mut(a[0], now_ms) else {
            return Reply::Int(0);
        };
        let current = entry.expires_at_ms.map(|at| at as i64);
        let refused = (nx && current.is_some())
            || (xx && current.is_none())
            || (gt && current.is_none_or(|c| when <= c))
            || (lt && current.is_some_and(|c| when >= c));
        if refused {
            return Reply::Int(0);
        }
        if when <= now_ms as i64 {
            self.keys.remove(a[0]);
        } else {
            entry.expires_at_ms = Some(when as u64);
        }
        Reply::Int(1)
    }

    /// `HSET key field value [field value ...]`: the number of fields that are new.
    pub(super) fn hset(&mut self, now_ms: u64, a: &[&[u8]]) -> Reply {
        if a.len().is_multiple_of(2) {
            return Reply::error(errors::arity("hset"));
        }
        let hash = match self.hash_mut(a[0], now_ms) {
            Ok(hash) => hash,
            Err(e) => return e,
        };
        let mut created = 0;
        for pair in a[1..].chunks(2) {
            match hash.iter_mut().find(|(f, _)| f == pair[0]) {
                // Rewritten in place: HGETALL's order does not change.
                Some((_, v)) => *v = pair[1].to_vec(),
                None => {
                    hash.push((pair[0].to_vec(), pair[1].to_vec()));
                    created += 1;
                }
            }
        }
        Reply::Int(created)
    }

    /// `HDEL key field [field ...]`: the last field out deletes the key.
    pub(super) fn hdel(&mut self, now_ms: u64, a: &[&[u8]]) -> Reply {
        let hash = match self.lookup_mut(a[0], now_ms) {
            None => return Reply::Int(0),
            Some(Entry {
                value: Value::Hash(h),
                ..
            }) => h,
            Some(_) => return Reply::error(errors::WRONGTYPE),
        };
        let mut deleted = 0;
        for field in &a[1..] {
            if let Some(at) = hash.iter().position(|(f, _)| f == field) {
                hash.remove(at);
                deleted += 1;
            }
        }
        if hash.is_empty() {
            self.keys.remove(a[0]);
        }
        Reply::Int(deleted)
    }

    /// `HINCRBY key field by`: the increment is checked before the key's type.
    pub(super) fn hincrby(&mut self, now_ms: u64, a: &[&[u8]]) -> Reply {
        let Some(by) = parse_i64(a[2]) else {
            return Reply::error(errors::NOT_INTEGER);
        };
        let hash = match self.hash_mut(a[0], now_ms) {
            Ok(hash) => hash,
            Err(e) => return e,
        };
        let at = hash.iter().position(|(f, _)| f == a[1]);
        let old = match at {
            None => 0,
            Some(at) => match parse_i64(&hash[at].1) {
                Some(old) => old,
                None => return Reply::error(errors::HASH_NOT_INTEGER),
            },
        };
        let Some(new) = old.checked_add(by) else {
            return Reply::error(errors::OVERFLOW);
        };
        let text = new.to_string().into_bytes();
        match at {
            Some(at) => hash[at].1 = text,
            None => hash.push((a[1].to_vec(), text)),
        }
        Reply::Int(new)
    }

    /// `SCAN cursor [MATCH pattern] [COUNT n]`: every live key that matches, in one page
    /// (cursor 0 back). Redis may page and orders by its hash table: compare as sets.
    pub(super) fn scan(&mut self, now_ms: u64, a: &[&[u8]]) -> Reply {
        if parse_u64(a[0]).is_none() {
            return Reply::error("ERR invalid cursor");
        }
        let mut pattern: Option<&[u8]> = None;
        let mut i = 1;
        while i < a.len() {
            let opt = a[i].to_ascii_uppercase();
            match (opt.as_slice(), a.get(i + 1)) {
                (b"MATCH", Some(p)) => pattern = Some(p),
                (b"COUNT", Some(n)) => match parse_i64(n) {
                    None => return Reply::error(errors::NOT_INTEGER),
                    Some(n) if n < 1 => return Reply::error(errors::SYNTAX),
                    Some(_) => {}
                },
                _ => return Reply::error(errors::SYNTAX),
            }
            i += 2;
        }
        self.keys
            .retain(|_, e| e.expires_at_ms.is_none_or(|at| now_ms <= at));
        let mut found: Vec<&Vec<u8>> = self
            .keys
            .keys()
            .filter(|k| pattern.is_none_or(|p| glob_match(p, k)))
            .collect();
        found.sort();
        Reply::Array(vec![
            Reply::bulk("0"),
            Reply::Array(found.into_iter().map(Reply::bulk).collect()),
        ])
    }
}

/// Redis' `string2ll`: an optional `-`, digits, no leading zeros, no `+`, no spaces, in range.
pub(super) fn parse_i64(s: &[u8]) -> Option<i64> {
    let digits = s.strip_prefix(b"-").unwrap_or(s);
    let canonical = !digits.is_empty()
        && digits.len() <= 20
        && digits.iter().all(u8::is_ascii_digit)
        && (digits[0] != b'0' || (digits.len() == 1 && digits.len() == s.len()));
    if !canonical {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// `SCAN`'s cursor: an unsigned integer.
fn parse_u64(s: &[u8]) -> Option<u64> {
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// Redis' `stringmatchlen` (case-sensitive): `*`, `?`, `[abc]`, `[^a-z]`, `\x`.
pub(super) fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    match pattern.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| glob_match(rest, &s[i..])),
        Some((b'?', rest)) => !s.is_empty() && glob_match(rest, &s[1..]),
        Some((b'[', rest)) => {
            let Some((&c, s_rest)) = s.split_first() else {
                return false;
            };
            let (negate, mut p) = match rest.split_first() {
                Some((b'^', p)) => (true, p),
                _ => (false, rest),
            };
            let mut matched = false;
            loop {
                match p {
                    [] => break,
                    [b']', tail @ ..] => {
                        p = tail;
                        break;
                    }
                    [b'\\', x, tail @ ..] => {
                        matched |= *x == c;
                        p = tail;
                    }
                    [lo, b'-', hi, tail @ ..] if *hi != b']' => {
                        let (lo, hi) = if lo <= hi { (*lo, *hi) } else { (*hi, *lo) };
                        matched |= (lo..=hi).contains(&c);
                        p = tail;
                    }
                    [x, tail @ ..] => {
                        matched |= *x == c;
                        p = tail;
                    }
                }
            }
            matched != negate && glob_match(p, s_rest)
        }
        Some((b'\\', rest)) if !rest.is_empty() => {
            s.first() == Some(&rest[0]) && glob_match(&rest[1..], &s[1..])
        }
        Some((&c, rest)) => s.first() == Some(&c) && glob_match(rest, &s[1..]),
    }
}
