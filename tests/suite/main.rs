//! The integration tests, one module per area, built as one test crate: each crate under
//! `tests/` links the library with burn, wgpu and the CPU backend in release mode, so ten of
//! them cost ten builds and links where one does (see `scripts/test.sh`).
//!
//! `tests/blockwise.rs` stays a crate of its own: it sets the process's CPU device to f64, and
//! burn fixes a device's default dtypes for the whole process at its first tensor.
//!
//! The modules share one process. What a test measures on the shared wgpu device is kept to
//! itself through [`gpu_shared`] / [`gpu_exclusive`].
mod cli;
mod demo;
mod distribution;
mod loader;
mod ops;
mod parity;
mod schedulers;
mod tokenizer;
mod train;
mod weights;

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Orders the tests that use the process's one wgpu device: any number may compute on it at
/// once, but a test that measures the device's memory pool must be alone on it.
static GPU: RwLock<()> = RwLock::new(());

/// Held while a test computes on the wgpu device (others may too).
pub fn gpu_shared() -> RwLockReadGuard<'static, ()> {
    GPU.read().unwrap_or_else(|e| e.into_inner())
}

/// Held while a test measures the wgpu device's memory pool (no other test uses the device).
pub fn gpu_exclusive() -> RwLockWriteGuard<'static, ()> {
    GPU.write().unwrap_or_else(|e| e.into_inner())
}
