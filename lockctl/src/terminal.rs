//! The terminal as `watch` uses it, and the signals that end it.
//!
//! On a Unix terminal: the alternate screen, the cursor hidden, keys read one at a time without
//! echo (signals still work: Ctrl-C interrupts). What was there is put back when the screen is
//! dropped, and also before a panic's message is printed (a panic hook), so that a failure never
//! leaves the operator's shell without echo. Elsewhere (stdout not a terminal, or not Unix),
//! frames are printed one after the other, without escapes.

use std::io::{IsTerminal, Write};

/// The terminal's size (columns, rows), when stdout is one.
pub(crate) fn size() -> Option<(usize, usize)> {
    #[cfg(unix)]
    {
        let out = std::io::stdout();
        if !out.is_terminal() {
            return None;
        }
        rustix::termios::tcgetwinsize(&out)
            .ok()
            .map(|size| (usize::from(size.ws_col), usize::from(size.ws_row)))
            .filter(|&(cols, rows)| cols > 0 && rows > 0)
    }
    #[cfg(not(unix))]
    None
}

/// The terminal's width in columns, when stdout is one.
pub(crate) fn width() -> Option<usize> {
    size().map(|(cols, _)| cols)
}

/// Whether frames can be drawn in place: stdout is a terminal this build can drive.
pub(crate) fn drawable() -> bool {
    cfg!(unix) && std::io::stdout().is_terminal()
}

/// The terminal settings `Screen::enter` found, while the screen is on: put back by whoever
/// comes first, the screen's drop or the panic hook.
#[cfg(unix)]
static SAVED: std::sync::Mutex<Option<Option<rustix::termios::Termios>>> =
    std::sync::Mutex::new(None);

/// Leaves the alternate screen, shows the cursor and puts the terminal settings back, once.
fn restore() {
    #[cfg(unix)]
    {
        let saved = SAVED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(saved) = saved else {
            return; // not on, or put back already
        };
        let mut out = std::io::stdout();
        let _ = out.write_all(b"\x1b[?25h\x1b[?1049l");
        let _ = out.flush();
        if let Some(saved) = saved {
            let _ = rustix::termios::tcsetattr(
                std::io::stdin(),
                rustix::termios::OptionalActions::Now,
                &saved,
            );
        }
    }
}

/// The screen `watch` draws on; dropped, it puts the terminal back.
pub(crate) struct Screen {
    /// Drawn in place (a Unix terminal), else printed frame after frame.
    in_place: bool,
}

impl Screen {
    /// Takes over the terminal when stdout is one ([`drawable`]).
    pub(crate) fn enter() -> Self {
        if !drawable() {
            return Screen { in_place: false };
        }
        #[cfg(unix)]
        {
            let stdin = std::io::stdin();
            let saved = stdin
                .is_terminal()
                .then(|| rustix::termios::tcgetattr(&stdin).ok())
                .flatten();
            if let Some(saved) = &saved {
                let mut keys = saved.clone();
                keys.local_modes.remove(
                    rustix::termios::LocalModes::ICANON | rustix::termios::LocalModes::ECHO,
                );
                keys.special_codes[rustix::termios::SpecialCodeIndex::VMIN] = 1;
                keys.special_codes[rustix::termios::SpecialCodeIndex::VTIME] = 0;
                let _ = rustix::termios::tcsetattr(
                    &stdin,
                    rustix::termios::OptionalActions::Now,
                    &keys,
                );
            }
            *SAVED
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(saved);
            static HOOK: std::sync::Once = std::sync::Once::new();
            HOOK.call_once(|| {
                let default = std::panic::take_hook();
                std::panic::set_hook(Box::new(move |info| {
                    restore();
                    default(info);
                }));
            });
            let mut out = std::io::stdout();
            let _ = out.write_all(b"\x1b[?1049h\x1b[?25l");
            let _ = out.flush();
        }
        Screen { in_place: true }
    }

    /// Whether frames are drawn in place (and may use colour).
    pub(crate) fn in_place(&self) -> bool {
        self.in_place
    }

    /// Draws `frame` over the last one, or prints it after the last one.
    pub(crate) fn draw(&self, frame: &str) {
        let mut text = String::new();
        if self.in_place {
            text.push_str("\x1b[H");
            for line in frame.lines() {
                text.push_str(line);
                text.push_str("\x1b[K\n");
            }
            text.push_str("\x1b[J");
        } else {
            text.push_str(frame);
            text.push('\n');
        }
        let mut out = std::io::stdout();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

/// The signals that end `watch`: Ctrl-C (SIGINT), and on Unix SIGTERM and SIGHUP (`timeout`,
/// `kill`, a closed ssh session), each ending it as `q` does, the terminal put back. Listened
/// to from creation, before the screen is taken over.
pub(crate) struct Stop {
    #[cfg(unix)]
    signals: [tokio::signal::unix::Signal; 3],
}

impl Stop {
    pub(crate) fn listen() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Stop {
                signals: [
                    signal(SignalKind::interrupt())?,
                    signal(SignalKind::terminate())?,
                    signal(SignalKind::hangup())?,
                ],
            })
        }
        #[cfg(not(unix))]
        Ok(Stop {})
    }

    /// Resolves when one of the signals arrives.
    pub(crate) async fn stopped(&mut self) {
        #[cfg(unix)]
        {
            let [interrupt, terminate, hangup] = &mut self.signals;
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
                _ = hangup.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
