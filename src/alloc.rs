//! Allocator settings for the binary (which uses mimalloc as its global
//! allocator).

/// `mi_option_purge_delay` in mimalloc v2's `mi_option_e`.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed pages mapped for reuse instead of returning them to the OS.
///
/// Every backbone layer allocates its output (up to 40 MB at batch 8) and
/// frees its input; with mimalloc's default 10 ms purge delay most of those
/// pages went back to the OS between layers and every layer page-faulted
/// fresh zeroed pages: ~27% of Xception's time (BENCHMARKS.md, "End to
/// end"). The price is that the process keeps its peak memory
/// until it exits. Call once at start-up; harmless when mimalloc is not the
/// global allocator.
pub fn keep_freed_memory() {
    // SAFETY: sets a process-wide integer option; no memory is touched.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}
