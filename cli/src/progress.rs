//! A progress line on stderr: a redrawn bar on a terminal, a line every few seconds in logs.
//! Messages printed through [`Progress::println`] appear above the bar, never inside it.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Progress {
    label: String,
    start: Instant,
    tty: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    last: Option<Instant>,
    /// The bar as last drawn (terminal only), redrawn under each message.
    bar: Option<String>,
}

impl Progress {
    pub fn new(label: &str) -> Self {
        Self {
            label: label.into(),
            start: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            state: Mutex::new(State::default()),
        }
    }

    /// `done` of `total` units, `clips` written so far.
    pub fn update(&self, done: usize, total: usize, clips: u64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let every = if self.tty { Duration::from_millis(200) } else { Duration::from_secs(10) };
        if done < total && st.last.is_some_and(|l| now - l < every) {
            return;
        }
        st.last = Some(now);
        let secs = self.start.elapsed().as_secs_f64();
        let rate = clips as f64 / secs.max(1e-9);
        let eta =
            if done > 0 && done < total { secs / done as f64 * (total - done) as f64 } else { 0.0 };
        let width = 24;
        let filled = if total > 0 { done * width / total } else { width };
        let bar: String = (0..width)
            .map(|i| {
                if i < filled {
                    '='
                } else if i == filled {
                    '>'
                } else {
                    ' '
                }
            })
            .collect();
        let line = format!(
            "{} [{bar}] {done}/{total} videos, {clips} clips, {rate:.1} clips/s, ETA {}",
            self.label,
            hms(eta)
        );
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r{line}\x1b[K");
            if done >= total {
                let _ = writeln!(err);
                st.bar = None;
            } else {
                st.bar = Some(line);
            }
        } else {
            let _ = writeln!(err, "{line}");
        }
    }

    /// A message on its own line above the bar.
    pub fn println(&self, msg: &str) {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut err = std::io::stderr().lock();
        match (&st.bar, self.tty) {
            (Some(bar), true) => {
                let _ = write!(err, "\r\x1b[K{msg}\n{bar}\x1b[K");
            }
            _ => {
                let _ = writeln!(err, "{msg}");
            }
        }
    }
}

pub fn hms(secs: f64) -> String {
    let s = secs.round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}
