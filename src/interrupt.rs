//! SIGINT, SIGTERM and SIGHUP as a request to stop at the next safe point.
//!
//! The handler only records the signal; the run checks [`check`] between
//! extraction batches and between its phases, stops there, records
//! `interrupted` with the stage it was in, and the process exits with
//! 128 + the signal's number (130 for Ctrl-C, 143 for a scheduler's
//! SIGTERM). A second Ctrl-C stops the process at once; what was cached by
//! then stays, and the next run resumes from it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// The signal that asked the run to stop (0: none).
fn received() -> &'static Arc<AtomicUsize> {
    static SIGNAL: OnceLock<Arc<AtomicUsize>> = OnceLock::new();
    SIGNAL.get_or_init(|| Arc::new(AtomicUsize::new(0)))
}

/// The run stopped because a signal asked it to.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("interrupted by {} (the run stopped at a safe point; run the spec again or `runner resume RUN_DIR` to continue from what is cached)", signal_name(*.signal))]
pub struct Interrupted {
    pub signal: i32,
}

impl Interrupted {
    /// The shell's convention: 128 + the signal's number.
    pub fn exit_code(&self) -> i32 {
        128 + self.signal
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        signal_hook::consts::SIGINT => "SIGINT (Ctrl-C)",
        signal_hook::consts::SIGTERM => "SIGTERM",
        signal_hook::consts::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// Installs the handlers (once, at start-up).
pub fn install() -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let flag = received();
    // A second signal of any kind while one is pending: the default action
    // (terminate) at once. The handlers run in the order registered.
    let pending = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM, SIGHUP] {
        signal_hook::flag::register_conditional_default(signal, pending.clone())?;
        signal_hook::flag::register(signal, pending.clone())?;
        signal_hook::flag::register_usize(signal, flag.clone(), signal as usize)?;
    }
    Ok(())
}

/// `Err` once a stop was requested; says so on stderr the first time.
pub fn check() -> Result<(), Interrupted> {
    let signal = received().load(Ordering::Relaxed);
    if signal == 0 {
        return Ok(());
    }
    static SAID: AtomicBool = AtomicBool::new(false);
    if !SAID.swap(true, Ordering::Relaxed) {
        eprintln!(
            "{} received: stopping at the next safe point (send it again to stop at once)",
            signal_name(signal as i32)
        );
    }
    Err(Interrupted {
        signal: signal as i32,
    })
}

/// The interruption somewhere in an error's chain, if that is why it failed.
pub fn cause(e: &anyhow::Error) -> Option<Interrupted> {
    e.chain()
        .find_map(|c| c.downcast_ref::<Interrupted>().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interruption_is_found_through_the_error_chain() {
        let e: anyhow::Error =
            crate::features::FeatureError::from(Interrupted { signal: 15 }).into();
        let e = e.context("while running");
        assert_eq!(cause(&e).map(|i| i.exit_code()), Some(143));
        assert!(cause(&anyhow::anyhow!("other")).is_none());
    }
}
