//! `runner`: parse the command line, run, print the error chain and choose
//! the exit code (0 success, 1 failure, 2 usage).

use clap::Parser;

// mimalloc keeps freed buffers for reuse, so the head-training loop does not
// return and re-fault memory on every step.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    runner::alloc::keep_freed_memory();
    let cli = runner::cli::Cli::parse();
    if let Err(e) = runner::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
