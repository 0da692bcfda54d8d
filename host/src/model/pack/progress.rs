//! What a pack is doing, shown while it does it.
//!
//! Packing ResNet-50 takes the better part of a minute, most of it inside
//! one guest call; a command that prints nothing for that long looks hung.
//! So `wasm-host pack` names each step as it starts and its time when it
//! ends, on standard error, but only when standard error is a terminal:
//! scripts, logs and the tests that expect a refusal's single `error:` line
//! see nothing but the result (or that line). Serving an `.onnx` file packs
//! through the same code quietly and logs the total instead.

use std::io::{IsTerminal, Write};
use std::time::Instant;

/// Whether a pack shows its steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Progress {
    /// Nothing is shown (serving, a pipe, a log file).
    #[default]
    Quiet,
    /// Each step on its own line of standard error.
    Shown,
}

impl Progress {
    /// [`Progress::Shown`] when standard error is a terminal.
    pub fn on_terminal() -> Self {
        if std::io::stderr().is_terminal() {
            Self::Shown
        } else {
            Self::Quiet
        }
    }

    /// Starts a step: `what` is shown now, its time when [`Step::done`] is
    /// called. A step dropped unfinished (an error) ends its line, so the
    /// error that follows starts a line of its own.
    pub fn step(self, what: impl Into<String>) -> Step {
        let what = what.into();
        if self == Self::Shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "  {what} …");
            let _ = err.flush();
        }
        Step {
            progress: self,
            what,
            started: Instant::now(),
            finished: false,
        }
    }
}

/// A size as a person reads it: "27 KB", "102.3 MB".
pub fn size(bytes: usize) -> String {
    if bytes < 1_000_000 {
        format!("{} KB", bytes.div_ceil(1000))
    } else {
        format!("{:.1} MB", bytes as f64 / 1e6)
    }
}

/// One step of a pack, under way.
#[must_use = "a step shows its time only when it is done"]
pub struct Step {
    progress: Progress,
    what: String,
    started: Instant,
    finished: bool,
}

impl Step {
    /// Ends the step: its line is rewritten with `detail` (may be empty) and
    /// the time it took.
    pub fn done(mut self, detail: &str) {
        self.finished = true;
        if self.progress == Progress::Shown {
            let took = self.started.elapsed().as_secs_f64();
            let detail = if detail.is_empty() {
                String::new()
            } else {
                format!(" {detail},")
            };
            // `\r` and erase-to-end: the finished line replaces the started one.
            eprintln!("\r  {}:{detail} {took:.1} s\x1b[K", self.what);
        }
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        if !self.finished && self.progress == Progress::Shown {
            eprintln!();
        }
    }
}
