//! Weight loading: where module parameters come from.
//!
//! Every network is built by one constructor that asks a [`Vb`] ("var builder") for each
//! parameter by its checkpoint name and expected shape. The same constructor therefore builds
//! a model with random weights ([`RandomSource`], used for full-size shape/memory tests and
//! benchmarks) or from a safetensors checkpoint ([`SafetensorsSource`], diffusers/transformers
//! key layout). Loading never stops at the first problem: every missing, mis-shaped or
//! unexpected tensor is collected and reported in one error.
mod safetensors_source;

use std::cell::RefCell;
use std::rc::Rc;

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};

pub use safetensors_source::{KeyRewrite, SafetensorsSource};

use crate::rng::Rng;
use crate::{Error, Result};

/// How a parameter is initialised when no checkpoint provides it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Normal(0, std).
    Normal(f32),
    /// All ones (norm scales).
    Ones,
    /// All zeros (biases).
    Zeros,
}

/// A provider of parameter values by name.
pub trait ParamSource {
    /// The values for `name` with exactly `shape` (row-major `f32`). On a problem the source
    /// records it and returns placeholder values, so one pass reports every problem.
    fn take(&mut self, name: &str, shape: &[usize], init: Init) -> Vec<f32>;
    /// Ends loading: an error listing every problem seen (missing, mis-shaped, unexpected).
    fn finish(&mut self) -> Result<()>;
}

/// Random weights from a seed: the architecture with its real shapes.
pub struct RandomSource {
    rng: Rng,
    /// Number of scalar parameters handed out.
    pub count: usize,
}

impl RandomSource {
    /// A source seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self { rng: Rng::new(seed), count: 0 }
    }
}

impl ParamSource for RandomSource {
    fn take(&mut self, _name: &str, shape: &[usize], init: Init) -> Vec<f32> {
        let n: usize = shape.iter().product();
        self.count += n;
        match init {
            Init::Normal(std) => self.rng.normal_vec(n).into_iter().map(|x| x * std).collect(),
            Init::Ones => vec![1.0; n],
            Init::Zeros => vec![0.0; n],
        }
    }
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A var builder: a parameter source, a device and a name prefix (`down_blocks.0.resnets.1`).
#[derive(Clone)]
pub struct Vb {
    src: Rc<RefCell<dyn ParamSource>>,
    prefix: String,
    device: Device,
}

impl Vb {
    /// A builder over `src` putting tensors on `device`.
    pub fn new(src: impl ParamSource + 'static, device: &Device) -> Self {
        Self { src: Rc::new(RefCell::new(src)), prefix: String::new(), device: device.clone() }
    }

    /// The device tensors are created on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A builder for the sub-module `name` ("push prefix").
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        Self { src: self.src.clone(), prefix, device: self.device.clone() }
    }

    fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) }
    }

    /// The tensor `name` of shape `shape`.
    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D], init: Init) -> Tensor<D> {
        let values = self.src.borrow_mut().take(&self.full_name(name), &shape, init);
        Tensor::from_data(TensorData::new(values, shape), &self.device)
    }

    /// The 2-D tensor `name` of shape `[rows, cols]`, returned transposed (`[cols, rows]`).
    pub fn tensor_transposed(&self, name: &str, [rows, cols]: [usize; 2], init: Init) -> Tensor<2> {
        let v = self.src.borrow_mut().take(&self.full_name(name), &[rows, cols], init);
        let mut t = vec![0.0f32; v.len()];
        for r in 0..rows {
            for c in 0..cols {
                t[c * rows + r] = v[r * cols + c];
            }
        }
        Tensor::from_data(TensorData::new(t, [cols, rows]), &self.device)
    }

    /// A frozen (no-grad) parameter `name` of shape `shape`.
    pub fn param<const D: usize>(&self, name: &str, shape: [usize; D], init: Init) -> Param<Tensor<D>> {
        Param::from_tensor(self.tensor(name, shape, init)).set_require_grad(false)
    }

    /// Ends loading; see [`ParamSource::finish`].
    pub fn finish(&self) -> Result<()> {
        self.src.borrow_mut().finish()
    }
}

/// Builds a model with `build` from a checkpoint's bytes, reporting every problem at once.
pub fn load_from_bytes<M>(
    bytes: Vec<u8>,
    rewrites: &[KeyRewrite],
    device: &Device,
    build: impl FnOnce(&Vb) -> M,
) -> Result<M> {
    let src = SafetensorsSource::from_bytes(bytes, rewrites)?;
    let vb = Vb::new(src, device);
    let model = build(&vb);
    vb.finish()?;
    Ok(model)
}

/// Native: like [`load_from_bytes`], from a file.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_from_file<M>(
    path: &std::path::Path,
    rewrites: &[KeyRewrite],
    device: &Device,
    build: impl FnOnce(&Vb) -> M,
) -> Result<M> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    load_from_bytes(bytes, rewrites, device, build).map_err(|e| Error::Weights(format!("{}: {e}", path.display())))
}

/// Parameters given explicitly by name (tests, self-test inputs); every other name is missing.
#[derive(Default)]
pub struct MapSource {
    values: std::collections::HashMap<String, Vec<f32>>,
    missing: Vec<String>,
}

impl MapSource {
    /// Adds the values of `name`.
    pub fn with(mut self, name: &str, values: Vec<f32>) -> Self {
        self.values.insert(name.to_string(), values);
        self
    }
}

impl ParamSource for MapSource {
    fn take(&mut self, name: &str, shape: &[usize], _init: Init) -> Vec<f32> {
        let n: usize = shape.iter().product();
        match self.values.remove(name) {
            Some(v) if v.len() == n => v,
            _ => {
                self.missing.push(format!("{name} {shape:?}"));
                vec![0.0; n]
            }
        }
    }
    fn finish(&mut self) -> Result<()> {
        let mut problems: Vec<String> = self.missing.drain(..).map(|m| format!("missing {m}")).collect();
        problems.extend(self.values.keys().map(|k| format!("unexpected {k}")));
        if problems.is_empty() { Ok(()) } else { Err(Error::Weights(problems.join(", "))) }
    }
}

/// SHA-256 of `bytes` as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
