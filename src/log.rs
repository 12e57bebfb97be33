//! Run log and progress: one place that prints to the user and appends to
//! the run directory's `run.log`.
//!
//! On a terminal, progress is drawn with indicatif bars. When stderr is not a
//! terminal (CI, pipes, files) bars become plain log lines, at most one per
//! 10 s per bar, so logs stay readable. `--quiet` keeps only the plain lines
//! that say what happened (stages, summaries, scores), no progress.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Log {
    bars: Option<MultiProgress>,
    /// No bars and no periodic progress lines.
    quiet: bool,
    file: Mutex<Option<File>>,
    start: Instant,
    /// Printed before every terminal line: which member of a sweep speaks
    /// when several train at once.
    prefix: String,
}

impl Log {
    pub fn new(quiet: bool) -> Log {
        let interactive = !quiet && std::io::stderr().is_terminal();
        Log {
            bars: interactive
                .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            quiet,
            file: Mutex::new(None),
            start: Instant::now(),
            prefix: String::new(),
        }
    }

    /// A log for one of several runs working at once: plain lines (no
    /// bars, which would fight over the terminal) prefixed with `[label]`,
    /// its own `run.log`, the same clock.
    pub fn member(&self, label: &str) -> Log {
        Log {
            bars: None,
            quiet: true,
            file: Mutex::new(None),
            start: self.start,
            prefix: format!("[{label}] "),
        }
    }

    /// Also append every line to `path` from now on (the run's `run.log`).
    pub fn attach_file(&self, path: &Path) -> std::io::Result<()> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        *self.file.lock().expect("log lock") = Some(f);
        Ok(())
    }

    pub fn detach_file(&self) {
        *self.file.lock().expect("log lock") = None;
    }

    fn to_file(&self, line: &str) {
        if let Some(f) = self.file.lock().expect("log lock").as_mut() {
            let _ = writeln!(f, "[{:>8.1}s] {line}", self.start.elapsed().as_secs_f64());
        }
    }

    /// A line for stderr and run.log.
    pub fn info(&self, line: impl AsRef<str>) {
        let line = line.as_ref();
        self.to_file(line);
        match &self.bars {
            Some(bars) => {
                let _ = bars.println(line);
            }
            None if self.prefix.is_empty() => eprintln!("{line}"),
            None => {
                // Every line of a table, so interleaved runs stay apart.
                let lines: Vec<String> = line
                    .lines()
                    .map(|l| format!("{}{l}", self.prefix))
                    .collect();
                eprintln!("{}", lines.join("\n"));
            }
        }
    }

    /// A progress bar over `total` units; `unit` names them ("images").
    pub fn progress(&self, label: &str, total: u64, unit: &'static str) -> Progress<'_> {
        let bar = self.bars.as_ref().map(|bars| {
            let bar = bars.add(ProgressBar::new(total));
            bar.set_style(
                ProgressStyle::with_template(&format!(
                    "{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{per_sec}} ETA {{eta}} {{msg}}"
                ))
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(label.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            log: self,
            bar,
            label: label.to_string(),
            unit,
            total,
            done: 0,
            started: Instant::now(),
            last_line: Instant::now(),
            message: String::new(),
        }
    }
}

pub struct Progress<'a> {
    log: &'a Log,
    bar: Option<ProgressBar>,
    label: String,
    unit: &'static str,
    total: u64,
    done: u64,
    started: Instant,
    last_line: Instant,
    message: String,
}

impl Progress<'_> {
    pub fn inc(&mut self, n: u64) {
        self.done += n;
        match &self.bar {
            Some(bar) => bar.inc(n),
            None => {
                if !self.log.quiet
                    && self.last_line.elapsed() >= Duration::from_secs(10)
                    && self.done < self.total
                {
                    self.last_line = Instant::now();
                    self.log.info(self.line());
                }
            }
        }
    }

    pub fn set_message(&mut self, msg: impl Into<String>) {
        self.message = msg.into();
        if let Some(bar) = &self.bar {
            bar.set_message(self.message.clone());
        }
    }

    fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64();
        let rate = self.done as f64 / secs.max(1e-9);
        format!(
            "{}: {}/{} {} ({:.1} {}/s) {}",
            self.label, self.done, self.total, self.unit, rate, self.unit, self.message
        )
        .trim_end()
        .to_string()
    }

    /// Ends the bar and logs a summary line.
    pub fn finish(self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        self.log
            .info(self.line() + &format!(" in {:.1}s", self.started.elapsed().as_secs_f64()));
    }
}
