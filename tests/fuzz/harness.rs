//! One fuzz target = one proptest run: fixed seed and bounded case count by
//! default, both overridable from the environment.

use std::cell::{Cell, RefCell};
use std::fmt::Debug;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::Instant;

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, RngSeed, TestCaseError, TestRunner};

/// The seed CI uses; each target mixes in its name so targets differ.
const DEFAULT_SEED: u64 = 0x5eed_2017;

/// `RUNNER_FUZZ_CASES`: cases per target, replacing every default.
fn cases(default: u32) -> u32 {
    match std::env::var("RUNNER_FUZZ_CASES") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("RUNNER_FUZZ_CASES={v:?} is not a case count")),
        Err(_) => default,
    }
}

/// `RUNNER_FUZZ_SEED`: a number, or `random` for a fresh seed per run.
fn base_seed() -> u64 {
    match std::env::var("RUNNER_FUZZ_SEED") {
        Ok(v) if v.trim() == "random" => {
            use std::hash::{BuildHasher, RandomState};
            RandomState::new().hash_one(Instant::now())
        }
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("RUNNER_FUZZ_SEED={v:?} is not a number or `random`")),
        Err(_) => DEFAULT_SEED,
    }
}

/// The target's own seed: the base seed mixed with its name.
fn target_seed(base: u64, target: &str) -> u64 {
    // FNV-1a of the name: stable across Rust versions, unlike `Hash`.
    let name = target.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    base ^ name
}

thread_local! {
    /// Set while this thread runs a fuzz case: its panics are recorded,
    /// not printed (proptest reruns a failing case many times to shrink it).
    static IN_CASE: Cell<bool> = const { Cell::new(false) };
    /// Where the last panic of a case happened, for the failure message.
    static LAST_PANIC: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Installs (once) a panic hook that keeps fuzz cases' panics quiet and
/// records where they happened; other panics print as usual.
fn quiet_case_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_CASE.with(Cell::get) {
                let at = info
                    .location()
                    .map_or(String::new(), |l| format!("{}:{}", l.file(), l.line()));
                LAST_PANIC.with(|p| *p.borrow_mut() = at);
            } else {
                default(info);
            }
        }));
    });
}

/// Runs `test` on `default_cases` inputs drawn from `strategy` (or
/// `RUNNER_FUZZ_CASES`). A case fails when `test` panics, returns an error,
/// or when the allocator refused an allocation during it; the failure is
/// shrunk and reported with the seed that reproduces it. `test` returns
/// whether the reader accepted the input (`Ok`): the share of accepted
/// inputs is printed, to show how deep the mutations reach.
pub fn fuzz<S>(target: &str, default_cases: u32, strategy: S, test: impl Fn(S::Value) -> bool)
where
    S: Strategy,
    S::Value: Debug,
{
    let cases = cases(default_cases);
    let base = base_seed();
    let seed = target_seed(base, target);
    let config = Config {
        cases,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(seed),
        // Failures are reproduced from the seed, not from files in the tree.
        failure_persistence: None,
        // Inputs are mutation lists: a few hundred steps shrink them.
        max_shrink_iters: 512,
        ..Config::default()
    };
    quiet_case_panics();
    let mut runner = TestRunner::new(config);
    let start = Instant::now();
    let (ran, accepted) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let result = runner.run(&strategy, |input| {
        crate::set_current_case(format!("{target} (RUNNER_FUZZ_SEED={base}): {input:?}"));
        let refused = crate::refused_on_this_thread();
        IN_CASE.with(|c| c.set(true));
        let ok = test(input);
        IN_CASE.with(|c| c.set(false));
        ran.fetch_add(1, Ordering::Relaxed);
        accepted.fetch_add(usize::from(ok), Ordering::Relaxed);
        if crate::refused_on_this_thread() != refused {
            return Err(TestCaseError::fail(format!(
                "an allocation above {} bytes was asked for (refused)",
                crate::CAP
            )));
        }
        Ok(())
    });
    IN_CASE.with(|c| c.set(false));
    crate::set_current_case(String::new());
    println!(
        "fuzz target `{target}`: {cases} cases ({} runs with shrinking, {} accepted), \
         RUNNER_FUZZ_SEED={base}, {:.1} s",
        ran.load(Ordering::Relaxed),
        accepted.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64()
    );
    if let Err(e) = result {
        let at = LAST_PANIC.with(|p| p.borrow().clone());
        panic!(
            "fuzz target `{target}` (reproduce with RUNNER_FUZZ_SEED={base} \
             RUNNER_FUZZ_CASES={cases}): {e}\nlast panic at: {at}"
        );
    }
}
