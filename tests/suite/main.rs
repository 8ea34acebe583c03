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

use std::path::Path;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use dreamdist::backend::{self, block_on};
use dreamdist::model::{ClipConfig, ModelSpec, VaeConfig};
use dreamdist::weights::convert::{CheckpointSource, Quant, convert};
use dreamdist::weights::manifest::Manifest;
use dreamdist::weights::native::DirSink;

/// The tiny random model of the parity fixtures (`tests/fixtures/tiny`).
pub fn tiny_fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny"))
}

/// Converts the tiny fixtures into `dir` with `quant` (shards and `manifest.json`).
pub fn convert_tiny(dir: &Path, quant: Quant) -> Manifest {
    let r = |f: &str| std::fs::read(tiny_fixtures().join(f)).unwrap();
    let mut t = CheckpointSource::new(r("text_encoder.safetensors"), ClipConfig::key_rewrites()).unwrap();
    let mut u = CheckpointSource::new(r("unet.safetensors"), &[]).unwrap();
    let mut v = CheckpointSource::new(r("vae.safetensors"), VaeConfig::key_rewrites()).unwrap();
    let mut sink = DirSink { dir: dir.to_path_buf() };
    let m = block_on(convert(
        &backend::cpu_device(),
        &ModelSpec::tiny(),
        quant,
        [&mut t, &mut u, &mut v],
        &mut sink,
        "tiny fixtures",
        |_, _, _| {},
    ))
    .unwrap();
    std::fs::write(dir.join("manifest.json"), m.to_json().unwrap()).unwrap();
    m
}

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

/// `m` (as JSON) with the allocation attack added: a 2 GiB f32 tensor `unet/huge` the
/// model never asked for, its 32 parts in 32 declared 64 MiB shards `unet-huge-NN.bin` that all
/// name `sha256` (one file's worth of download through a hash-keyed cache).
pub fn with_huge_tensor(m: &Manifest, sha256: &str) -> serde_json::Value {
    use dreamdist::weights::manifest::MAX_SHARD_BYTES;
    use serde_json::json;
    let mut w = serde_json::to_value(m).unwrap();
    let first = m.shards.len();
    for i in 0..32 {
        w["shards"].as_array_mut().unwrap().push(json!({
            "file": format!("unet-huge-{i:02}.bin"), "sha256": sha256, "bytes": MAX_SHARD_BYTES, "component": "unet",
        }));
    }
    let parts: Vec<serde_json::Value> =
        (0..32).map(|i| json!({"shard": first + i, "offset": 0, "length": MAX_SHARD_BYTES})).collect();
    w["tensors"].as_array_mut().unwrap().push(json!({
        "name": "unet/huge", "shape": [1 << 14, 1 << 15], "storage": "f32", "layout": "plain", "parts": parts,
    }));
    w["total_bytes"] = (m.total_bytes + 32 * MAX_SHARD_BYTES).into();
    w
}
