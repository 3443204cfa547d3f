//! Progress of long commands on stderr: an indicatif bar with rate and ETA on a terminal;
//! a plain line every ten seconds (and at the end) when stderr is a log (CI, SLURM), where
//! a redrawn bar would only fill the file. Messages printed through [`Progress::println`]
//! appear above the bar, never inside it.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Progress {
    label: String,
    unit: String,
    /// The bar on a terminal; None in a log.
    bar: Option<ProgressBar>,
    start: Instant,
    last_line: Mutex<Option<Instant>>,
}

impl Progress {
    /// A bar counting `unit`s (e.g. "clips tracked") under `label`.
    pub fn new(label: &str, unit: &str) -> Self {
        Self::with_terminal(label, unit, std::io::stderr().is_terminal())
    }

    /// A bar whose work began at `start` (a stage first heard of when part of it is done),
    /// so that its rate is not that part over no time.
    pub fn since(label: &str, unit: &str, start: Instant) -> Self {
        let mut p = Self::new(label, unit);
        p.start = start;
        p.bar = p.bar.map(|b| b.with_elapsed(start.elapsed()));
        p
    }

    fn with_terminal(label: &str, unit: &str, terminal: bool) -> Self {
        let bar = terminal.then(|| {
            let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(5));
            let style = ProgressStyle::with_template(&format!(
                "{{prefix}} [{{bar:24}}] {{pos}}/{{len}} {unit}, {{per_sec}}, ETA {{eta}} {{msg}}"
            ))
            .expect("valid template")
            .progress_chars("=> ");
            b.set_style(style);
            b.set_prefix(label.to_string());
            b
        });
        Self {
            label: label.into(),
            unit: unit.into(),
            bar,
            start: Instant::now(),
            last_line: Mutex::new(None),
        }
    }

    /// `done` of `total` units finished (the total may be an estimate that grows), with a
    /// short note after the figures.
    pub fn set(&self, done: u64, total: u64, note: &str) {
        let total = total.max(done);
        match &self.bar {
            Some(b) => {
                b.set_length(total);
                b.set_position(done);
                b.set_message(note.to_string());
            }
            None => {
                let mut last = self.last_line.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                let due = last.is_none_or(|t| now - t >= Duration::from_secs(10));
                if due || (done >= total && total > 0) {
                    *last = Some(now);
                    let _ = writeln!(std::io::stderr().lock(), "{}", self.line(done, total, note));
                }
            }
        }
    }

    /// The log line: figures, rate and ETA from the start.
    fn line(&self, done: u64, total: u64, note: &str) -> String {
        let secs = self.start.elapsed().as_secs_f64();
        let rate = done as f64 / secs.max(1e-9);
        let eta = if done > 0 && done < total { (total - done) as f64 / rate } else { 0.0 };
        let note = if note.is_empty() { String::new() } else { format!(" ({note})") };
        format!("{}: {done}/{total} {}{note}, {rate:.2}/s, ETA {}", self.label, self.unit, hms(eta))
    }

    /// A message on its own line above the bar.
    pub fn println(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.println(msg),
            None => {
                let _ = writeln!(std::io::stderr().lock(), "{msg}");
            }
        }
    }

    /// Leaves the final figures on screen (or in the log).
    pub fn finish(&self, done: u64, note: &str) {
        match &self.bar {
            Some(b) => {
                b.set_length(done);
                b.set_position(done);
                b.finish_with_message(note.to_string());
            }
            None => {
                let _ = writeln!(std::io::stderr().lock(), "{}", self.line(done, done, note));
            }
        }
    }
}

pub fn hms(secs: f64) -> String {
    let s = secs.round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_say_the_finished_unit_the_rate_and_the_eta() {
        let p = Progress::with_terminal("tracks", "clips tracked", false);
        assert!(p.bar.is_none());
        let l = p.line(10, 40, "4/16 videos decoded");
        assert!(l.starts_with("tracks: 10/40 clips tracked (4/16 videos decoded), "), "{l}");
        assert!(l.contains("/s, ETA "), "{l}");
        assert!(p.line(40, 40, "").ends_with("ETA 0:00:00"));
        assert_eq!(hms(3725.0), "1:02:05");
    }
}
