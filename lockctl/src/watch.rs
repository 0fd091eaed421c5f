//! `lockctl watch`: the held locks as a live table, redrawn in place until `q` or Ctrl-C.
//!
//! Each frame is one `list`: sorted by name, with each hold's kind, holder, how long it has
//! been held, the time left of its lease as a bar of its ttl, and its waiters. A row whose
//! holder appeared in the last 5 s after the first frame (the lock changed hands, or was
//! taken) is marked `>`;
//! a lease with a quarter of its ttl or less left (or under 2 s when the ttl is unknown) is
//! marked `!`. On a terminal those rows are also drawn in reverse video and in red. While
//! Redis does not answer, the last frame stays, under the error, and the next refresh tries
//! again.
//!
//! The terminal is put in its alternate screen with the cursor hidden and keys read one at a
//! time without echo (terminal.rs); all of it is put back however the command ends: `q`,
//! Ctrl-C, SIGTERM, SIGHUP, a panic. Where stdout is not a terminal, frames are printed one
//! after another, without escapes. A frame is cut to the terminal's width and height.

use std::collections::HashMap;
use std::io::{IsTerminal, Read};
use std::time::{Duration, SystemTime};

use lock_core::{LockInfo, LockManager};

use crate::terminal;
use crate::view::{
    ago, clock, human, kind, name_cell, name_limit, shown, table, waiters_cell, width_but,
};

/// A lease this close to its end (a share of its ttl) is about to expire.
const EXPIRING_SHARE: f64 = 0.25;
/// ... or this close, when its ttl is unknown.
const EXPIRING: Duration = Duration::from_secs(2);
/// How long a new holder's row stays marked: a few refreshes, long enough to be seen.
const NEW_FOR: Duration = Duration::from_secs(5);
/// Cells in the time-left bar.
const BAR: usize = 10;

/// What a frame shows besides the locks.
pub(crate) struct Frame<'a> {
    /// The pattern and prefix watched.
    pub(crate) pattern: &'a str,
    pub(crate) prefix: &'a str,
    /// When the locks were read.
    pub(crate) at: SystemTime,
    /// Why this refresh failed, when it did (the locks are then the last ones read).
    pub(crate) error: Option<&'a str>,
    /// The terminal's size (columns, rows) to cut the frame to, if known.
    pub(crate) size: Option<(usize, usize)>,
    /// Whether to draw marked rows in colour (a terminal).
    pub(crate) color: bool,
    /// Names shown whole.
    pub(crate) wide: bool,
}

/// The holds the frames showed, each (name, holder, taken at) with when it first showed: a row
/// is new for [`NEW_FOR`] after it first showed, unless it was in the first frame.
pub(crate) type Seen = HashMap<(String, String, Option<SystemTime>), SystemTime>;

fn seen_key(info: &LockInfo) -> (String, String, Option<SystemTime>) {
    (info.name.clone(), info.holder.clone(), info.acquired_at)
}

/// Whether `info`'s lease is about to end.
fn expiring(info: &LockInfo) -> bool {
    match (info.remaining, info.ttl) {
        (Some(left), Some(ttl)) => left.as_secs_f64() <= ttl.as_secs_f64() * EXPIRING_SHARE,
        (Some(left), None) => left <= EXPIRING,
        (None, _) => false,
    }
}

/// `[######----] 21.0s`: the time left, as a share of the ttl when it is known.
fn time_left(info: &LockInfo) -> String {
    let Some(left) = info.remaining else {
        return "no expiry".to_owned();
    };
    match info.ttl.filter(|ttl| !ttl.is_zero()) {
        Some(ttl) => {
            let share = (left.as_secs_f64() / ttl.as_secs_f64()).clamp(0.0, 1.0);
            // Rounded up: a lease with any time left shows at least one cell.
            let full = ((share * BAR as f64).ceil() as usize).min(BAR);
            format!(
                "[{}{}] {}",
                "#".repeat(full),
                "-".repeat(BAR - full),
                human(left)
            )
        }
        None => human(left),
    }
}

/// One frame of `locks` (sorted by name), marking holds new since the frames `before` showed
/// (nothing on the first frame, `None`), and the holds shown so far.
pub(crate) fn render(
    locks: &[LockInfo],
    before: Option<&Seen>,
    frame: &Frame<'_>,
) -> (String, Seen) {
    let waiting: u32 = {
        // Each name's waiters once, however many holds it has.
        let mut names: Vec<(&str, u32)> =
            locks.iter().map(|l| (l.name.as_str(), l.waiting)).collect();
        names.dedup_by_key(|(name, _)| *name);
        names.iter().map(|(_, w)| w).sum()
    };
    let mut marks = Vec::with_capacity(locks.len());
    let mut rows: Vec<Vec<String>> = locks
        .iter()
        .map(|info| {
            let new = before.is_some_and(|seen| {
                seen.get(&seen_key(info)).is_none_or(|first| {
                    frame.at.duration_since(*first).unwrap_or_default() < NEW_FOR
                })
            });
            let soon = expiring(info);
            marks.push((new, soon));
            let mark = match (new, soon) {
                (_, true) => "!",
                (true, false) => ">",
                (false, false) => " ",
            };
            vec![
                mark.to_owned(),
                String::new(), // the name, once the other columns' widths are known
                kind(info).to_owned(),
                shown(&info.holder, frame.wide),
                info.acquired_at.map_or("-".to_owned(), ago),
                time_left(info),
                waiters_cell(info),
            ]
        })
        .collect();
    let header = [
        " ",
        "NAME",
        "KIND",
        "HOLDER",
        "HELD FOR",
        "TIME LEFT",
        "WAITERS",
    ];
    let width = frame.size.map(|(cols, _)| cols);
    // Names give way to the other columns on a narrow terminal, as in `list`.
    let limit = name_limit(frame.wide, width, width_but(&header, &rows, 1));
    for (row, info) in rows.iter_mut().zip(locks) {
        row[1] = name_cell(info, limit);
    }
    let body = table(&header, &rows);
    let mut lines = vec![format!(
        "lockctl watch {}{}  {}  {} held, {} waiting   (q or Ctrl-C quits)",
        shown(frame.prefix, frame.wide),
        shown(frame.pattern, frame.wide),
        clock(frame.at),
        locks.len(),
        waiting
    )];
    if let Some(error) = frame.error {
        lines.push(paint(
            &format!("Redis: {error}; showing the last frame, retrying"),
            "31",
            frame.color,
        ));
    }
    lines.push(String::new());
    for (i, line) in body.lines().enumerate() {
        let line = cut(line, width);
        // The header is line 0; row i - 1 below it.
        let styled = match i.checked_sub(1).and_then(|row| marks.get(row)) {
            Some((_, true)) => paint(&line, "31", frame.color),
            Some((true, false)) => paint(&line, "7", frame.color),
            _ => line,
        };
        lines.push(styled);
    }
    if locks.is_empty() {
        lines.push("(no lock held matches)".to_owned());
    }
    lines.push(String::new());
    lines.push(cut(
        &format!(
            "> changed hands in the last {} s   ! {}% of its ttl or less left",
            NEW_FOR.as_secs(),
            (EXPIRING_SHARE * 100.0) as u32
        ),
        width,
    ));
    // A frame taller than the terminal would scroll at every redraw: the rows that do not fit
    // are counted instead.
    if let Some((_, rows)) = frame.size {
        if lines.len() > rows && rows > 1 {
            let hidden = lines.len() - (rows - 1);
            lines.truncate(rows - 1);
            lines.push(cut(
                &format!(
                    "... {hidden} more lines: a taller terminal, a PATTERN or --once shows them"
                ),
                width,
            ));
        }
    }
    // The holds still shown, with when each first showed (the first frame's: never new).
    let seen = locks
        .iter()
        .map(|info| {
            let key = seen_key(info);
            let first = match before {
                Some(seen) => seen.get(&key).copied().unwrap_or(frame.at),
                None => SystemTime::UNIX_EPOCH,
            };
            (key, first)
        })
        .collect();
    (lines.join("\n") + "\n", seen)
}

/// `line` cut to `width` characters.
fn cut(line: &str, width: Option<usize>) -> String {
    match width {
        Some(width) if line.chars().count() > width => line.chars().take(width).collect(),
        _ => line.to_owned(),
    }
}

/// `text` in the SGR style `code` on a terminal.
fn paint(text: &str, code: &str, color: bool) -> String {
    if color {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

/// What `watch` was asked.
pub(crate) struct Watch<'a> {
    pub(crate) pattern: &'a str,
    pub(crate) prefix: &'a str,
    pub(crate) interval: Duration,
    pub(crate) wide: bool,
}

/// Prints one frame (`--once`): whether any lock matched.
pub(crate) async fn once(locks: &LockManager, watch: &Watch<'_>) -> lock_core::Result<bool> {
    let found = locks.list(watch.pattern).await?;
    let frame = Frame {
        pattern: watch.pattern,
        prefix: watch.prefix,
        at: SystemTime::now(),
        error: None,
        // The whole frame: it scrolls like any output.
        size: terminal::width().map(|cols| (cols, usize::MAX)),
        color: terminal::drawable(),
        wide: watch.wide,
    };
    print!("{}", render(&found, None, &frame).0);
    Ok(!found.is_empty())
}

/// Redraws the table every `interval` until `q`, Ctrl-C, SIGTERM or SIGHUP, then puts the
/// terminal back. Where stdout is not a terminal, prints one frame after another instead.
pub(crate) async fn live(locks: &LockManager, watch: &Watch<'_>) -> std::io::Result<()> {
    // Listening before the terminal changes: a signal from now on ends the loop, which puts
    // the terminal back.
    let mut stop = terminal::Stop::listen()?;
    let screen = terminal::Screen::enter();
    let (quit_tx, mut quit) = tokio::sync::mpsc::unbounded_channel::<()>();
    if screen.in_place() && std::io::stdin().is_terminal() {
        // Keys, on a thread of their own (a read of stdin blocks); it ends with the process.
        std::thread::spawn(move || {
            let mut stdin = std::io::stdin();
            let mut key = [0u8; 1];
            while let Ok(1) = stdin.read(&mut key) {
                if key[0] == b'q' || key[0] == b'Q' {
                    let _ = quit_tx.send(());
                    return;
                }
            }
        });
    } else {
        // No keys to read (stdin is not a terminal, or at its end): only signals end it.
        drop(quit_tx);
    }
    let mut last: Vec<LockInfo> = Vec::new();
    let mut seen: Option<Seen> = None;
    loop {
        let read = tokio::select! {
            biased;
            () = stop.stopped() => break,
            Some(()) = quit.recv() => break,
            read = locks.list(watch.pattern) => read,
        };
        let error = match read {
            Ok(found) => {
                last = found;
                None
            }
            Err(e) => Some(e.to_string()),
        };
        let frame = Frame {
            pattern: watch.pattern,
            prefix: watch.prefix,
            at: SystemTime::now(),
            error: error.as_deref(),
            size: if screen.in_place() {
                terminal::size()
            } else {
                None
            },
            color: screen.in_place(),
            wide: watch.wide,
        };
        let (text, now_seen) = render(&last, seen.as_ref(), &frame);
        screen.draw(&text);
        if error.is_none() {
            seen = Some(now_seen);
        }
        tokio::select! {
            biased;
            () = stop.stopped() => break,
            Some(()) = quit.recv() => break,
            () = tokio::time::sleep(watch.interval) => {}
        }
    }
    drop(screen);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Frame<'static> {
        Frame {
            pattern: "*",
            prefix: "lock:",
            at: SystemTime::UNIX_EPOCH,
            error: None,
            size: None,
            color: false,
            wide: false,
        }
    }

    #[test]
    fn an_empty_frame_says_so_and_lines_fit_the_terminal() {
        let (text, seen) = render(&[], None, &frame());
        assert!(text.contains("0 held, 0 waiting"), "{text}");
        assert!(text.contains("(no lock held matches)"), "{text}");
        assert!(seen.is_empty());
        assert_eq!(cut("abcdef", Some(3)), "abc");
        assert_eq!(cut("abc", None), "abc");
        assert_eq!(paint("x", "7", false), "x");
        assert_eq!(paint("x", "7", true), "\x1b[7mx\x1b[0m");
    }
}
