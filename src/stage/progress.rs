//! Progress over a known number of items: an indicatif bar in a terminal, otherwise a line
//! every few seconds (so logs show rate and ETA too).

use std::time::{Duration, Instant};

/// Progress over a known number of items: an indicatif bar in a terminal, otherwise a line
/// every few seconds (so logs show rate and ETA too).
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    what: String,
    total: u64,
    done: u64,
    start: Instant,
    last_line: Instant,
}

impl Progress {
    pub fn new(what: &str, total: usize) -> Progress {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(total as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
                    .unwrap()
                    .progress_chars("=> "),
            );
            b.set_message(what.to_string());
            b
        });
        Progress {
            bar,
            what: what.into(),
            total: total as u64,
            done: 0,
            start: Instant::now(),
            last_line: Instant::now(),
        }
    }

    pub fn inc(&mut self, n: usize) {
        self.done += n as u64;
        if let Some(b) = &self.bar {
            b.inc(n as u64);
        } else if self.last_line.elapsed() > Duration::from_secs(5) || self.done == self.total {
            self.last_line = Instant::now();
            let secs = self.start.elapsed().as_secs_f64();
            let rate = self.done as f64 / secs.max(1e-9);
            let eta = (self.total.saturating_sub(self.done)) as f64 / rate.max(1e-9);
            eprintln!("{}: {}/{} ({rate:.2}/s, ETA {eta:.0} s)", self.what, self.done, self.total);
        }
    }

    pub fn finish(self) -> Duration {
        if let Some(b) = &self.bar {
            b.finish();
        }
        self.start.elapsed()
    }
}
