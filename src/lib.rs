//! dreamdist: DreamDistribution (prompt-distribution learning for text-to-image diffusion,
//! Zhao et al.) on Stable Diffusion 2.1, running natively (CPU or wgpu) and in the browser
//! through WebGPU.
//!
//! Layout: [`model`] holds the frozen SD 2.1 networks, [`weights`] loads them,
//! [`backend`] picks devices and owns the crate's only tensor readback path,
//! [`selftest`] exercises the ops the models use, [`web`] is the thin wasm-bindgen API.
#![warn(missing_docs)]

pub mod backend;
pub mod demo;
pub mod distribution;
pub mod error;
pub mod image;
pub mod model;
pub mod parity;
pub mod pipeline;
pub mod rng;
pub mod schedule;
pub mod selftest;
pub mod tokenizer;
pub mod train;
pub mod weights;

#[cfg(target_arch = "wasm32")]
pub mod web;

pub use error::{Error, Result};
