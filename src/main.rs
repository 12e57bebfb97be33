//! `runner`: parse the command line, run, print the error chain and choose
//! the exit code (0 success, 1 failure, 2 usage, 128 + N stopped by signal
//! N).

use clap::Parser;

// mimalloc keeps freed buffers for reuse, so the head-training loop does not
// return and re-fault memory on every step.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    runner::alloc::keep_freed_memory();
    let cli = runner::cli::Cli::parse();
    if let Err(e) = runner::interrupt::install() {
        eprintln!("warning: cannot install the signal handlers ({e}); Ctrl-C stops at once");
    }
    if let Err(e) = runner::cli::run(cli) {
        eprintln!("error: {e:#}");
        // A signal's stop exits as the shell expects (130 for Ctrl-C).
        let code = runner::interrupt::cause(&e).map_or(1, |i| i.exit_code());
        std::process::exit(code);
    }
}
