//! Weight loading: where module parameters come from.
//!
//! Every network is built by one constructor that asks a [`Vb`] ("var builder") for each
//! parameter by its checkpoint name, checkpoint shape and [`Role`] (linear weight, convolution
//! weight, vector, matrix, host-side table). The same constructor therefore builds a model with
//! random weights ([`RandomSource`], full-size shape/memory tests and benchmarks), from a
//! safetensors checkpoint ([`SafetensorsSource`], diffusers/transformers key layout), or from a
//! converted model's shards ([`ManifestSource`]: quantized or f16/f32 tensors already in their
//! device layout, uploaded as the shards arrive). Loading never stops at the first problem:
//! every missing, mis-shaped or unexpected tensor is collected and reported in one error.
//!
//! Device layouts (see [`manifest::Layout`]): linear weights are `[in, out]` (a forward is one
//! matmul, quantized weights stay packed); convolution weights are `[O, I·k·k]` (dequantized per
//! call when quantized); the token embedding is a [`HostTable`] that never goes to the GPU.
#[cfg(target_arch = "wasm32")]
pub mod browser;
pub mod convert;
pub mod identity;
pub mod inventory;
pub mod loader;
pub mod manifest;
#[cfg(not(target_arch = "wasm32"))]
pub mod native;
pub mod quant;
pub mod remote;
mod safetensors_source;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};

pub use loader::ManifestSource;
pub use quant::Storage;
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

/// What a parameter is, which decides its device layout and how it may be stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A linear layer's weight, checkpoint `[out, in]`, device `[in, out]`.
    Linear,
    /// A convolution weight, checkpoint `[O, I, k, k]`, device `[O, I·k·k]`.
    Conv,
    /// A 1-D parameter (bias, norm scale) kept in f32.
    Vector,
    /// A small 2-D parameter kept as is (position embedding).
    Matrix,
    /// A large 2-D table the host keeps (token embedding): rows are gathered on the CPU.
    HostTable,
}

impl Role {
    /// Device (stored) shape for a checkpoint shape.
    pub fn stored_shape(self, ckpt: &[usize]) -> Vec<usize> {
        match self {
            Role::Linear => vec![ckpt[1], ckpt[0]],
            Role::Conv => vec![ckpt[0], ckpt[1..].iter().product()],
            _ => ckpt.to_vec(),
        }
    }
    /// The manifest layout of this role.
    pub fn layout(self, ckpt: &[usize]) -> manifest::Layout {
        match self {
            Role::Linear => manifest::Layout::LinearT,
            Role::Conv => manifest::Layout::Conv2d { k: ckpt[2] },
            Role::HostTable => manifest::Layout::HostTable,
            Role::Vector | Role::Matrix => manifest::Layout::Plain,
        }
    }
}

/// A request for one parameter.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// Full name (`down_blocks.0.resnets.1.conv1.weight`).
    pub name: &'a str,
    /// Checkpoint shape.
    pub shape: &'a [usize],
    /// Role.
    pub role: Role,
    /// Initialisation for random sources.
    pub init: Init,
}

/// A host-side table (the token embedding): rows decoded on demand, never uploaded whole.
#[derive(Clone, Debug)]
pub struct HostTable {
    /// `[rows, cols]`.
    pub shape: [usize; 2],
    /// Storage of `bytes`.
    pub storage: Storage,
    /// The stored bytes.
    pub bytes: std::sync::Arc<Vec<u8>>,
}

impl HostTable {
    /// A table from f32 values.
    pub fn from_f32(values: &[f32], shape: [usize; 2]) -> Self {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self { shape, storage: Storage::F32, bytes: std::sync::Arc::new(bytes) }
    }
    /// Rows `ids` as f32 values (`ids.len() × cols`).
    pub fn rows(&self, ids: &[usize]) -> Result<Vec<f32>> {
        quant::decode_rows(&self.bytes, self.shape, self.storage, ids)
    }
    /// Every value (tests, fingerprints).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        quant::decode(&self.bytes, &self.shape, self.storage)
    }
}

/// A tensor already on the device, in its device layout.
#[derive(Clone, Debug)]
pub enum DeviceTensor {
    /// Rank 1.
    R1(Tensor<1>),
    /// Rank 2.
    R2(Tensor<2>),
}

/// What a source provides for a request.
pub enum Provided {
    /// Checkpoint-layout f32 values (dense sources; [`Vb`] converts the layout).
    Values(Vec<f32>),
    /// A device tensor in device layout (converted models).
    Device(Box<DeviceTensor>),
    /// A host table.
    Host(HostTable),
}

/// A provider of parameters by name.
pub trait ParamSource {
    /// The parameter for `req`. On a problem the source records it and returns placeholder
    /// values, so one pass reports every problem.
    fn take(&mut self, req: &Request) -> Provided;
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
    /// The next parameter's values in checkpoint layout (also used by the converter).
    pub fn values(&mut self, shape: &[usize], init: Init) -> Vec<f32> {
        let n: usize = shape.iter().product();
        self.count += n;
        match init {
            Init::Normal(std) => self.rng.normal_vec(n).into_iter().map(|x| x * std).collect(),
            Init::Ones => vec![1.0; n],
            Init::Zeros => vec![0.0; n],
        }
    }
}

impl ParamSource for RandomSource {
    fn take(&mut self, req: &Request) -> Provided {
        Provided::Values(self.values(req.shape, req.init))
    }
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Records every request without producing data (parameter inventories, the converter).
#[derive(Default)]
pub struct Inventory {
    /// (name, checkpoint shape, role, init), in constructor order.
    pub entries: Vec<(String, Vec<usize>, Role, Init)>,
}

impl ParamSource for Inventory {
    fn take(&mut self, req: &Request) -> Provided {
        self.entries.push((req.name.to_string(), req.shape.to_vec(), req.role, req.init));
        Provided::Values(vec![])
    }
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// The parameter inventory of a constructor (one-element placeholders on `device`).
pub fn inventory_on<M>(device: &Device, build: impl FnOnce(&Vb) -> M) -> Vec<(String, Vec<usize>, Role, Init)> {
    let src = Rc::new(RefCell::new(Inventory::default()));
    let vb = Vb { src: src.clone(), prefix: String::new(), device: device.clone(), dry: true };
    drop(build(&vb));
    drop(vb);
    std::mem::take(&mut src.borrow_mut().entries)
}

/// [`inventory_on`] with placeholders on the CPU backend (native).
#[cfg(not(target_arch = "wasm32"))]
pub fn inventory<M>(build: impl FnOnce(&Vb) -> M) -> Vec<(String, Vec<usize>, Role, Init)> {
    inventory_on(&crate::backend::cpu_device(), build)
}

/// Transposes a row-major `[rows, cols]` matrix.
pub fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = v[r * cols + c];
        }
    }
    t
}

/// A var builder: a parameter source, a device and a name prefix (`down_blocks.0.resnets.1`).
#[derive(Clone)]
pub struct Vb {
    src: Rc<RefCell<dyn ParamSource>>,
    prefix: String,
    device: Device,
    /// Inventory mode: placeholders instead of tensors.
    dry: bool,
}

impl Vb {
    /// A builder over `src` putting tensors on `device`.
    pub fn new(src: impl ParamSource + 'static, device: &Device) -> Self {
        Self { src: Rc::new(RefCell::new(src)), prefix: String::new(), device: device.clone(), dry: false }
    }

    /// The device tensors are created on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A builder for the sub-module `name` ("push prefix").
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        Self { src: self.src.clone(), prefix, device: self.device.clone(), dry: self.dry }
    }

    fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) }
    }

    fn request(&self, name: &str, shape: &[usize], role: Role, init: Init) -> Provided {
        let full = self.full_name(name);
        self.src.borrow_mut().take(&Request { name: &full, shape, role, init })
    }

    fn dense<const D: usize>(&self, values: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
        if self.dry {
            return Tensor::zeros([1; D], &self.device);
        }
        Tensor::from_data(TensorData::new(values, shape), &self.device)
    }

    fn frozen<const D: usize>(t: Tensor<D>) -> Param<Tensor<D>> {
        Param::from_tensor(t).set_require_grad(false)
    }

    fn stored2(&self, name: &str, ckpt: &[usize], role: Role, init: Init) -> Tensor<2> {
        let stored: [usize; 2] = role.stored_shape(ckpt).try_into().expect("a 2-D stored shape");
        match self.request(name, ckpt, role, init) {
            // Inventory mode: a one-element placeholder, without the parameter's size in zeros
            // first (the page builds the full-size inventory to check a manifest: a 118 MB
            // transient grew its memory by that much for good).
            Provided::Values(_) if self.dry => Tensor::zeros([1, 1], &self.device),
            Provided::Values(v) if v.is_empty() => self.dense(vec![0.0; stored.iter().product()], stored),
            Provided::Values(v) => {
                let v = if role == Role::Linear { transpose(&v, ckpt[0], ckpt[1]) } else { v };
                self.dense(v, stored)
            }
            Provided::Device(t) if matches!(*t, DeviceTensor::R2(_)) => match *t {
                DeviceTensor::R2(t) => t,
                DeviceTensor::R1(_) => unreachable!("checked"),
            },
            _ => panic!("the source gave no 2-D device tensor for {}", self.full_name(name)),
        }
    }

    /// A linear weight (checkpoint `[d_out, d_in]`) in device layout `[d_in, d_out]`.
    pub fn linear_weight(&self, name: &str, d_out: usize, d_in: usize, init: Init) -> Param<Tensor<2>> {
        Self::frozen(self.stored2(name, &[d_out, d_in], Role::Linear, init))
    }

    /// A convolution weight (checkpoint `[o, i, k, k]`) in device layout `[o, i·k·k]`.
    pub fn conv_weight(&self, name: &str, shape: [usize; 4], init: Init) -> Param<Tensor<2>> {
        Self::frozen(self.stored2(name, &shape, Role::Conv, init))
    }

    /// A 1-D parameter.
    pub fn vector(&self, name: &str, n: usize, init: Init) -> Param<Tensor<1>> {
        Self::frozen(match self.request(name, &[n], Role::Vector, init) {
            Provided::Values(_) if self.dry => Tensor::zeros([1], &self.device),
            Provided::Values(v) if v.is_empty() => self.dense(vec![0.0; n], [n]),
            Provided::Values(v) => self.dense(v, [n]),
            Provided::Device(t) if matches!(*t, DeviceTensor::R1(_)) => match *t {
                DeviceTensor::R1(t) => t,
                DeviceTensor::R2(_) => unreachable!("checked"),
            },
            _ => panic!("the source gave no 1-D tensor for {}", self.full_name(name)),
        })
    }

    /// A small 2-D parameter.
    pub fn matrix(&self, name: &str, shape: [usize; 2], init: Init) -> Param<Tensor<2>> {
        Self::frozen(self.stored2(name, &shape, Role::Matrix, init))
    }

    /// A host-side table.
    pub fn host_table(&self, name: &str, shape: [usize; 2], init: Init) -> HostTable {
        match self.request(name, &shape, Role::HostTable, init) {
            Provided::Host(t) => t,
            Provided::Values(v) if self.dry || v.is_empty() => HostTable::from_f32(&[], [0, shape[1]]),
            Provided::Values(v) => HostTable::from_f32(&v, shape),
            Provided::Device(_) => panic!("{} must be a host table", self.full_name(name)),
        }
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
    load_from_bytes(bytes, rewrites, device, build).map_err(|e| e.context(path.display()))
}

/// Parameters given explicitly by name in checkpoint layout (tests, self-test inputs); every
/// other name is missing.
#[derive(Default)]
pub struct MapSource {
    values: HashMap<String, Vec<f32>>,
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
    fn take(&mut self, req: &Request) -> Provided {
        let n: usize = req.shape.iter().product();
        Provided::Values(match self.values.remove(req.name) {
            Some(v) if v.len() == n => v,
            _ => {
                self.missing.push(format!("{} {:?}", req.name, req.shape));
                vec![0.0; n]
            }
        })
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
    hex(&sha2::Sha256::digest(bytes))
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
