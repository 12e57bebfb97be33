//! Fuzzing in CI: every reader of outside input (spec files, the dataset
//! CSVs and images, `.npy`, ONNX, Keras `.h5`, PyTorch `.pth`, safetensors)
//! fed random and mutated inputs must return `Ok` or `Err`: never panic,
//! never ask for an absurd allocation.
//!
//! Each target is a proptest run with a fixed seed (reproducible in CI) and
//! a bounded case count (the whole binary takes well under a minute in the
//! test profile on two cores). `RUNNER_FUZZ_CASES=N` runs N cases per target
//! instead, `RUNNER_FUZZ_SEED=N` (or `random`) changes the seed; see README,
//! "Fuzzing".
//!
//! "No unbounded allocation" is checked by this binary's global allocator,
//! [`CappedAlloc`]: it refuses any single allocation above [`CAP`].

mod harness;
mod mutate;

mod data;
mod npy;
mod onnx;
mod spec;
mod weights;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::io::Write as _;

/// The largest single allocation a reader may make here. Every fuzz input
/// is under a megabyte, so a request above this came from a length or shape
/// field that was never checked against the input's size.
pub const CAP: usize = 1 << 30;

/// Wraps the system allocator and refuses (returns null for) any request
/// above [`CAP`], after printing what was being fuzzed.
///
/// Why null rather than a panic: an allocator must not unwind. A caller
/// that handles failure (`try_reserve`) gets an error, and the refusal is
/// counted on its thread ([`refused_on_this_thread`]), so the harness fails
/// the case and proptest shrinks it like a panic. A caller that cannot handle it hits
/// `handle_alloc_error`, which aborts the binary: the message printed here
/// just before names the target and its input, and the seed reproduces it.
pub struct CappedAlloc;

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc;

thread_local! {
    /// Refusals on this thread: attributes a refusal to the case that asked.
    static REFUSED_HERE: Cell<usize> = const { Cell::new(0) };
    /// The case this thread is running (`target: input`), for the message.
    static CURRENT_CASE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// How many allocations above [`CAP`] were refused on the calling thread.
pub fn refused_on_this_thread() -> usize {
    REFUSED_HERE.with(Cell::get)
}

/// Names the case the calling thread runs, for the refusal message.
pub fn set_current_case(description: String) {
    CURRENT_CASE.with(|c| *c.borrow_mut() = description);
}

/// Prints the refusal without allocating: a fixed stack buffer for the
/// numbers, the case's description written as it is.
fn report_refusal(size: usize) {
    REFUSED_HERE.with(|c| c.set(c.get() + 1));
    let mut line = StackLine::default();
    let _ = std::fmt::Write::write_fmt(
        &mut line,
        format_args!(
            "\nfuzz: refused an allocation of {size} bytes (the cap is {CAP}): a reader sized \
             a buffer from an unchecked length; case: "
        ),
    );
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(line.as_bytes());
    let _ = CURRENT_CASE.try_with(|c| match c.try_borrow() {
        Ok(case) => {
            let shown = &case.as_bytes()[..case.len().min(4000)];
            let _ = err.write_all(shown);
        }
        Err(_) => {
            let _ = err.write_all(b"(unknown)");
        }
    });
    let _ = err.write_all(b"\n");
}

/// A line formatted on the stack (the allocator cannot allocate to report).
struct StackLine {
    buf: [u8; 256],
    len: usize,
}

impl Default for StackLine {
    fn default() -> Self {
        Self {
            buf: [0; 256],
            len: 0,
        }
    }
}

impl StackLine {
    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::fmt::Write for StackLine {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

// SAFETY: every call is forwarded to `System` unchanged, except requests
// above `CAP`, which return null as an allocator may.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > CAP {
            report_refusal(layout.size());
            return std::ptr::null_mut();
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > CAP {
            report_refusal(layout.size());
            return std::ptr::null_mut();
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > CAP {
            report_refusal(new_size);
            return std::ptr::null_mut();
        }
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[test]
fn the_allocator_refuses_an_allocation_above_the_cap() {
    set_current_case("the allocator's own test: this refusal is expected".into());
    let before = refused_on_this_thread();
    let mut v: Vec<u8> = Vec::new();
    assert!(v.try_reserve_exact(CAP + 1).is_err());
    assert_eq!(refused_on_this_thread(), before + 1);
    // Below the cap, allocation is untouched.
    assert!(v.try_reserve_exact(1 << 20).is_ok());
}
