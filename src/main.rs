//! The dreamdist command-line interface (native).
#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
mod cli;

#[cfg(not(target_arch = "wasm32"))]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (`mimalloc.h`, v2 and v3: the option before
/// `mi_option_use_numa_nodes`).
#[cfg(not(target_arch = "wasm32"))]
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = libmimalloc_sys::mi_option_use_numa_nodes - 1;

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    // Keep freed pages for reuse instead of returning them to the OS 10 ms later: a training
    // step frees and re-allocates gigabytes of activations, and every returned page comes back
    // with a fault and a zeroing (text encoder forward+backward at K = 32 on 2 cores, graphs
    // kept: 25.3 → 19.0 s). The process's peak memory is unchanged.
    // SAFETY: sets a global allocator option; no allocation is in flight on another thread yet.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    cli::main()
}
