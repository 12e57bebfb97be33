//! Per-op time of the backbones' forward passes, for finding where the time
//! goes (`RUNNER_PROFILE=1`; the benchmark and `runner` print the table).
//!
//! Off by default, when a call costs one relaxed atomic load. On, each op
//! records its wall time and FLOPs under a label such as `conv 3x3/2`, so the
//! table shows every op kind's share of the time and its GFLOP/s against the
//! machine's peak.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

static ENABLED: OnceLock<AtomicBool> = OnceLock::new();
static TABLE: Mutex<BTreeMap<String, OpStats>> = Mutex::new(BTreeMap::new());

#[derive(Debug, Default, Clone, Copy)]
pub struct OpStats {
    pub calls: u64,
    pub seconds: f64,
    pub flops: f64,
}

fn flag() -> &'static AtomicBool {
    ENABLED.get_or_init(|| {
        AtomicBool::new(
            std::env::var_os("RUNNER_PROFILE").is_some_and(|v| !v.is_empty() && v != "0"),
        )
    })
}

pub fn enabled() -> bool {
    flag().load(Ordering::Relaxed)
}

pub fn set_enabled(on: bool) {
    flag().store(on, Ordering::Relaxed);
}

/// Runs `f`, recording its time under the label and FLOPs that `what`
/// returns (only called when enabled, so the hot path pays nothing).
#[inline]
pub fn time<T>(what: impl FnOnce() -> (String, f64), f: impl FnOnce() -> T) -> T {
    if !enabled() {
        return f();
    }
    let start = Instant::now();
    let out = f();
    let secs = start.elapsed().as_secs_f64();
    let (label, flops) = what();
    let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let s = t.entry(label).or_default();
    s.calls += 1;
    s.seconds += secs;
    s.flops += flops;
    out
}

/// Everything recorded so far, and clears it.
pub fn take() -> Vec<(String, OpStats)> {
    let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let mut v: Vec<_> = std::mem::take(&mut *t).into_iter().collect();
    v.sort_by(|a, b| b.1.seconds.total_cmp(&a.1.seconds));
    v
}

/// The recorded ops as a table, slowest first.
pub fn table(ops: &[(String, OpStats)]) -> String {
    let total: f64 = ops.iter().map(|(_, s)| s.seconds).sum();
    let mut out = format!(
        "{:<24} {:>6} {:>9} {:>6} {:>8}\n",
        "op", "calls", "seconds", "share", "GFLOP/s"
    );
    for (name, s) in ops {
        let gflops = if s.flops > 0.0 {
            format!("{:.1}", s.flops / s.seconds / 1e9)
        } else {
            "-".into()
        };
        out += &format!(
            "{name:<24} {:>6} {:>9.3} {:>5.1}% {gflops:>8}\n",
            s.calls,
            s.seconds,
            100.0 * s.seconds / total.max(1e-12)
        );
    }
    out += &format!("{:<24} {:>6} {:>9.3}\n", "total", "", total);
    out
}
