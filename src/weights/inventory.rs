//! What a converted model must contain: the parameter inventory of each component (the
//! constructors' own requests, see [`super::inventory_on`]) and, for a conversion scheme, the
//! stored shape, layout and storage of every tensor.
//!
//! The converter writes exactly this ([`super::convert`]), and [`super::manifest::Manifest`]
//! checks a manifest against it before any shard is fetched: a manifest names no tensor the
//! model does not ask for, in no other shape, layout or storage, so a load never allocates
//! more than the model itself needs.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use super::quant::Storage;
use super::{Init, Role};
use crate::model::{ClipTextEncoder, ModelSpec, UNet, Vae};
use crate::{Error, Result};

/// The three components of a Stable Diffusion model, in loading order.
pub const COMPONENTS: [&str; 3] = ["text_encoder", "unet", "vae"];

/// How a stored tensor relates to the checkpoint's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// As in the checkpoint.
    Plain,
    /// A linear weight stored transposed, `[in, out]` (checkpoint `[out, in]`), so a forward is
    /// a plain (quantized) matmul.
    LinearT,
    /// A convolution weight `[O, I, k, k]` stored as `[O, I·k·k]` (same bytes), quantized along
    /// the flattened kernel.
    Conv2d {
        /// Kernel side.
        k: usize,
    },
    /// A table the host keeps (the token embedding): rows are gathered on the CPU, never sent to
    /// the GPU whole.
    HostTable,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Layout::Plain => write!(f, "plain"),
            Layout::LinearT => write!(f, "a transposed linear weight"),
            Layout::Conv2d { k } => write!(f, "a {k}×{k} convolution weight"),
            Layout::HostTable => write!(f, "a host table"),
        }
    }
}

/// Conversion schemes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Quant {
    /// 8-bit weights.
    Q8,
    /// 4-bit weights.
    Q4,
    /// f16 weights.
    F16,
    /// f32 weights.
    F32,
}

impl std::str::FromStr for Quant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "q8" => Ok(Quant::Q8),
            "q4" => Ok(Quant::Q4),
            "f16" => Ok(Quant::F16),
            "f32" => Ok(Quant::F32),
            _ => Err(Error::Invalid(format!("unknown quantization \"{s}\" (q8, q4, f16 or f32)"))),
        }
    }
}

impl Quant {
    /// Manifest name.
    pub fn name(self) -> &'static str {
        match self {
            Quant::Q8 => "q8",
            Quant::Q4 => "q4",
            Quant::F16 => "f16",
            Quant::F32 => "f32",
        }
    }
}

/// Smallest tensor (elements) that is quantized; smaller ones (first/last layers, small
/// projections) stay in f32 where quantization would cost accuracy for no memory.
pub const MIN_QUANT_ELEMENTS: usize = 1 << 14;

/// The storage of a tensor under a scheme: linear and convolution weights are quantized when
/// their last stored axis is a whole number of blocks (else f16); norms, biases and the
/// position embedding stay f32. The token embedding (a host table) is f16 under every scheme
/// but f32: it is what the model's identity is computed from ([`super::identity`]), so a
/// lossless copy lets every load recompute the identity instead of trusting the manifest.
pub fn storage_for(quant: Quant, role: Role, stored_shape: &[usize]) -> Storage {
    let q = match quant {
        Quant::F32 => return Storage::F32,
        Quant::F16 => Storage::F16,
        Quant::Q8 => Storage::Q8,
        Quant::Q4 => Storage::Q4,
    };
    if role == Role::HostTable {
        return Storage::F16;
    }
    let n: usize = stored_shape.iter().product();
    let big = matches!(role, Role::Linear | Role::Conv) && n >= MIN_QUANT_ELEMENTS;
    if !big {
        Storage::F32
    } else if q.fits(stored_shape) {
        q
    } else {
        Storage::F16
    }
}

/// One parameter: (name, checkpoint shape, role, init).
pub type Param = (String, Vec<usize>, Role, Init);

/// The parameter inventory of a component of `spec` (placeholders on `device`).
pub fn component_inventory(spec: &ModelSpec, component: &str, device: &burn::tensor::Device) -> Vec<Param> {
    match component {
        "text_encoder" => super::inventory_on(device, |vb| ClipTextEncoder::new(vb, &spec.clip)),
        "unet" => super::inventory_on(device, |vb| UNet::new(vb, &spec.unet)),
        "vae" => super::inventory_on(device, |vb| Vae::new(vb, &spec.vae)),
        _ => vec![],
    }
}

/// A tensor a converted model must hold.
#[derive(Clone, Debug, PartialEq)]
pub struct Expected {
    /// Stored shape.
    pub shape: Vec<usize>,
    /// Layout.
    pub layout: Layout,
    /// Storage under the manifest's scheme.
    pub storage: Storage,
}

/// Every tensor of `spec` converted with `quant`, by manifest name (`component/name`).
pub type Tensors = HashMap<String, Expected>;

/// The tensors a converted `spec` holds under `quant` (computed once per model and scheme:
/// building the inventory constructs each network with one-element placeholders on the CPU).
pub fn expected(spec: &ModelSpec, quant: Quant) -> Arc<Tensors> {
    type Cache = Mutex<HashMap<(String, Quant), Arc<Tensors>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let key = (serde_json::to_string(spec).unwrap_or_default(), quant);
    let cache = CACHE.get_or_init(Default::default);
    if let Some(t) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return t.clone();
    }
    let device = crate::backend::cpu_device();
    let mut out = HashMap::new();
    for c in COMPONENTS {
        for (name, shape, role, _) in component_inventory(spec, c, &device) {
            let stored = role.stored_shape(&shape);
            let storage = storage_for(quant, role, &stored);
            out.insert(format!("{c}/{name}"), Expected { layout: role.layout(&shape), shape: stored, storage });
        }
    }
    let out = Arc::new(out);
    cache.lock().unwrap_or_else(|e| e.into_inner()).insert(key, out.clone());
    out
}
