//! Progress output: indicatif bars on a terminal, one plain line per step otherwise, nothing
//! but errors with `--quiet`, and JSON lines with `--json`.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Quiet,
    Plain,
    Terminal,
    Json,
}

#[derive(Clone, Copy)]
pub struct Progress {
    pub mode: Mode,
}

impl Progress {
    pub fn new(quiet: bool, json: bool) -> Progress {
        let mode = if json {
            Mode::Json
        } else if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Terminal
        } else {
            Mode::Plain
        };
        Progress { mode }
    }

    /// A message about the compose as a whole.
    pub fn info(&self, msg: &str) {
        match self.mode {
            Mode::Quiet => {}
            Mode::Json => println!("{}", serde_json::json!({"event": "info", "message": msg})),
            _ => eprintln!("{msg}"),
        }
    }

    /// Announces that a step finished.
    pub fn step_done(&self, name: &str, secs: f64, detail: &str) {
        match self.mode {
            Mode::Quiet => {}
            Mode::Json => println!(
                "{}",
                serde_json::json!({"event": "step", "step": name, "seconds": secs, "detail": detail})
            ),
            _ => eprintln!("{name:<12} {secs:>7.2}s  {detail}"),
        }
    }

    /// A counting bar for `len` items: drawn on a terminal; with `--json`, a `progress` event
    /// at every tenth of the way; otherwise (a CI log) a line at most every ten seconds, so a
    /// long step is never silent until its end.
    pub fn bar(&self, name: &str, len: u64) -> Bar {
        let pb = if self.mode == Mode::Terminal && len > 0 {
            let pb = ProgressBar::new(len);
            pb.set_style(
                ProgressStyle::with_template("{prefix:<12} [{bar:30}] {pos}/{len} {msg}")
                    .unwrap()
                    .progress_chars("=> "),
            );
            pb.set_prefix(name.to_string());
            Some(pb)
        } else {
            None
        };
        Bar {
            pb,
            mode: self.mode,
            name: name.to_string(),
            len,
            counted: std::sync::Mutex::new((0, Instant::now(), 0)),
        }
    }
}

pub struct Bar {
    pb: Option<ProgressBar>,
    mode: Mode,
    name: String,
    len: u64,
    /// Items done, when a line was last printed, the last tenth announced.
    counted: std::sync::Mutex<(u64, Instant, u64)>,
}

impl Bar {
    pub fn inc(&self, msg: &str) {
        if let Some(pb) = &self.pb {
            pb.set_message(msg.to_string());
            pb.inc(1);
            return;
        }
        if self.len == 0 || !matches!(self.mode, Mode::Json | Mode::Plain) {
            return;
        }
        let mut c = self.counted.lock().unwrap_or_else(|e| e.into_inner());
        c.0 += 1;
        let (done, len) = (c.0, self.len);
        match self.mode {
            Mode::Json => {
                let tenth = done * 10 / len;
                if tenth > c.2 {
                    c.2 = tenth;
                    println!(
                        "{}",
                        serde_json::json!({"event": "progress", "step": self.name, "done": done, "total": len})
                    );
                }
            }
            _ => {
                if c.1.elapsed().as_secs() >= 10 && done < len {
                    c.1 = Instant::now();
                    eprintln!("{:<12} {done}/{len} {msg}", self.name);
                }
            }
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(pb) = &self.pb {
            pb.finish_and_clear();
        }
    }
}

/// Times a step.
pub struct Timer(Instant);

impl Timer {
    pub fn start() -> Timer {
        Timer(Instant::now())
    }
    pub fn secs(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
}
