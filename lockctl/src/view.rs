//! How lockctl shows what it found: tables for a person, `--json` rows for a program, and the
//! escaping that keeps a lock name from forging either.

use std::time::{Duration, SystemTime};

use lock_core::{LockInfo, WaiterInfo};

/// The kind of a hold, as every view names it.
pub(crate) fn kind(info: &LockInfo) -> &'static str {
    if info.shared {
        "shared"
    } else if info.permits > 1 {
        "permits"
    } else {
        "exclusive"
    }
}

/// The `--json` rows of `locks`.
pub(crate) fn rows(locks: &[LockInfo]) -> Vec<serde_json::Value> {
    locks
        .iter()
        .map(|info| {
            serde_json::json!({
                "name": info.name,
                "kind": kind(info),
                "holder": info.holder,
                "acquired_at_ms": info.acquired_at.and_then(unix_ms),
                "ttl_ms": info.ttl.map(millis),
                "auto_extend": info.auto_extend,
                "renewed_ago_ms": info.renewed_ago.map(millis),
                "remaining_ms": info.remaining.map(millis),
                "expires_at_ms": info.expires_at.and_then(unix_ms),
                "waited_for": info.waited_for,
                "waiting": info.waiting,
                "permits": info.permits,
                "shared": info.shared,
            })
        })
        .collect()
}

/// The `--json` rows of `waiters`, the fair line first.
pub(crate) fn waiter_rows(waiters: &[WaiterInfo]) -> Vec<serde_json::Value> {
    let now = SystemTime::now();
    waiters
        .iter()
        .map(|w| {
            serde_json::json!({
                "position": w.position,
                "holder": w.holder,
                "since_ms": w.since.and_then(unix_ms),
                "waiting_ms": w.since.and_then(|at| now.duration_since(at).ok()).map(millis),
            })
        })
        .collect()
}

/// Characters that change how a line reads without showing themselves: bidirectional
/// overrides and isolates, zero-width characters, line and paragraph separators.
pub(crate) fn hidden(c: char) -> bool {
    matches!(c,
        '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2028}' | '\u{2029}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// The longest name a table shows whole without `--wide`.
pub(crate) const NAME_WIDTH: usize = 48;

/// `text` as a terminal may show it: control characters escaped (a newline in a name cannot
/// print a row of its own), and, unless `whole`, cut to [`NAME_WIDTH`] characters with `…`.
pub(crate) fn shown(text: &str, whole: bool) -> String {
    cut_to(text, (!whole).then_some(NAME_WIDTH))
}

/// `text` escaped as [`shown`] escapes it, cut to `limit` characters (with `…`) when given.
pub(crate) fn cut_to(text: &str, limit: Option<usize>) -> String {
    let escaped: String = text
        .chars()
        .flat_map(|c| {
            if c.is_control() || hidden(c) {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    match limit {
        Some(limit) if escaped.chars().count() > limit => {
            let mut cut: String = escaped.chars().take(limit.saturating_sub(1)).collect();
            cut.push('…');
            cut
        }
        _ => escaped,
    }
}

/// A lock's name as a table shows it, cut to `limit` characters, with its kind when it is not
/// a plain lock (one row per permit of a lock of `permits(n)`, and per shared holder).
pub(crate) fn name_cell(info: &LockInfo, limit: Option<usize>) -> String {
    let kind = if info.shared {
        " (shared)".to_owned()
    } else if info.permits > 1 {
        format!(" (permits {})", info.permits)
    } else {
        String::new()
    };
    // The kind fits in the limit too: the name gives way to it.
    let limit = limit.map(|limit| limit.saturating_sub(kind.len()).max(8));
    format!("{}{kind}", cut_to(&info.name, limit))
}

/// How wide a [`table`] of `rows` under `header` is without its column `skip`: each other
/// column's widest cell and the two spaces after it.
pub(crate) fn width_but(header: &[&str], rows: &[Vec<String>], skip: usize) -> usize {
    (0..header.len())
        .filter(|&col| col != skip)
        .map(|col| {
            rows.iter()
                .map(|row| row[col].chars().count())
                .chain([header[col].chars().count()])
                .max()
                .unwrap_or(0)
                + 2
        })
        .sum()
}

/// The longest a name may be in a table on a terminal `width` columns wide whose other
/// columns take `others` (their widths and the gaps): the rest, at least 16; without a
/// terminal, [`NAME_WIDTH`]; `None` (whole) with `--wide`.
pub(crate) fn name_limit(wide: bool, width: Option<usize>, others: usize) -> Option<usize> {
    match (wide, width) {
        (true, _) => None,
        (false, Some(width)) => Some(width.saturating_sub(others).max(16)),
        (false, None) => Some(NAME_WIDTH),
    }
}

/// Writers waiting, counted; else whether some request (a shared one) waits.
pub(crate) fn waiters_cell(info: &LockInfo) -> String {
    if info.waiting > 0 {
        info.waiting.to_string()
    } else if info.waited_for {
        "yes".to_owned()
    } else {
        "no".to_owned()
    }
}

/// The table of `locks`, one row per holder: who, since when, the lease it asks for (and
/// whether its watchdog renews it), when it was last renewed, and when it ends. Names are cut
/// to fit a terminal `width` columns wide (else to [`NAME_WIDTH`]) unless `wide`.
pub(crate) fn locks_table(locks: &[LockInfo], wide: bool, width: Option<usize>) -> String {
    let header = [
        "NAME",
        "HOLDER",
        "HELD FOR",
        "TTL",
        "RENEWED AGO",
        "REMAINING",
        "EXPIRES AT",
        "WAITERS",
    ];
    let mut rows: Vec<Vec<String>> = locks
        .iter()
        .map(|info| {
            vec![
                String::new(), // the name, once the other columns' widths are known
                shown(&info.holder, wide),
                info.acquired_at.map_or("-".to_owned(), ago),
                info.ttl.map_or("-".to_owned(), |ttl| {
                    if info.auto_extend {
                        format!("{} auto", human(ttl))
                    } else {
                        human(ttl)
                    }
                }),
                info.renewed_ago.map_or("-".to_owned(), human),
                info.remaining.map_or("no expiry".to_owned(), human),
                info.expires_at.map_or("-".to_owned(), clock),
                waiters_cell(info),
            ]
        })
        .collect();
    let limit = name_limit(wide, width, width_but(&header, &rows, 0));
    for (row, info) in rows.iter_mut().zip(locks) {
        row[0] = name_cell(info, limit);
    }
    table(&header, &rows)
}

/// The table of `waiters`: the fair line in order (`#` its place), then the writers that race
/// for the lock when it is released (`-`).
pub(crate) fn waiters_table(waiters: &[WaiterInfo], wide: bool) -> String {
    let rows: Vec<Vec<String>> = waiters
        .iter()
        .map(|w| {
            vec![
                w.position.map_or("-".to_owned(), |p| p.to_string()),
                shown(&w.holder, wide),
                w.since.map_or("-".to_owned(), ago),
                if w.position.is_some() {
                    "fair".to_owned()
                } else {
                    "exclusive".to_owned()
                },
            ]
        })
        .collect();
    table(&["#", "WAITER", "WAITING FOR", "KIND"], &rows)
}

/// `rows` under `header`, in columns two spaces apart, one line each (no trailing spaces).
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (cell, w) in cells.zip(&widths) {
            text.push_str(&format!("{cell:<w$}  "));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

pub(crate) fn unix_ms(at: SystemTime) -> Option<u64> {
    at.duration_since(SystemTime::UNIX_EPOCH).ok().map(millis)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How long ago `at` was, by this machine's clock.
pub(crate) fn ago(at: SystemTime) -> String {
    SystemTime::now()
        .duration_since(at)
        .map_or_else(|_| "0s".to_owned(), human)
}

/// The time of day of `at` in UTC, `HH:MM:SSZ` (to the second: operators compare it with logs).
pub(crate) fn clock(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let day = secs % 86_400;
    format!(
        "{:02}:{:02}:{:02}Z",
        day / 3600,
        (day % 3600) / 60,
        day % 60
    )
}

/// `1h02m`, `3m04s`, `12.3s`, `450ms`.
pub(crate) fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 3600 {
        format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
    } else if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else if secs >= 1 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_clock_times_read_as_an_operator_writes_them() {
        assert_eq!(human(Duration::from_millis(450)), "450ms");
        assert_eq!(human(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(human(Duration::from_secs(184)), "3m04s");
        assert_eq!(human(Duration::from_secs(3720)), "1h02m");
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(20_000 * 86_400 + 3723);
        assert_eq!(clock(at), "01:02:03Z");
    }

    #[test]
    fn tables_align_columns_and_escape_names() {
        let out = table(&["A", "LONGER"], &[vec!["x\\n".to_owned(), "1".to_owned()]]);
        assert_eq!(out, "A    LONGER\nx\\n  1\n");
        assert_eq!(shown("a\nb", false), "a\\nb");
        let long = "n".repeat(60);
        assert_eq!(shown(&long, false).chars().count(), NAME_WIDTH);
        assert_eq!(shown(&long, true), long);
        // On a terminal 100 columns wide whose other columns take 70: 30 for the name.
        assert_eq!(name_limit(false, Some(100), 70), Some(30));
        assert_eq!(name_limit(false, Some(60), 70), Some(16));
        assert_eq!(name_limit(false, None, 70), Some(NAME_WIDTH));
        assert_eq!(name_limit(true, Some(60), 70), None);
        assert_eq!(cut_to(&long, Some(30)).chars().count(), 30);
    }
}
