//! The weight manifest: what a converted model consists of and where each tensor's bytes are.
//!
//! A converted model is a directory (or a URL prefix) holding `manifest.json` and shards
//! (`<component>-<index>.bin`, at most [`MAX_SHARD_BYTES`] each). The manifest names the model
//! (its full [`ModelSpec`] and a canonical identity that survives conversion), each shard's size
//! and SHA-256, and for every tensor its name, shape, storage ([`Storage`]), layout and the
//! byte ranges ("parts") it occupies in the shards — a tensor may continue across shards.
//!
//! Manifests come from the network, so [`Manifest::from_json`] validates everything before any
//! allocation that depends on it: sizes and counts are capped, names are plain (no paths), every
//! part lies inside its shard, parts never overlap, and each tensor's parts add up to exactly
//! the bytes its shape and storage need.
use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::quant::Storage;
use crate::model::ModelSpec;
use crate::{Error, Result};

/// The value of `format`.
pub const FORMAT: &str = "dreamdist-weights";
/// The manifest version this build writes and the newest it reads.
pub const VERSION: u32 = 1;
/// Largest shard.
pub const MAX_SHARD_BYTES: u64 = 64 << 20;
/// Largest manifest file.
pub const MAX_MANIFEST_BYTES: usize = 16 << 20;
/// Most tensors in one manifest.
pub const MAX_TENSORS: usize = 20_000;
/// Most shards in one manifest.
pub const MAX_SHARDS: usize = 4_096;
/// Largest tensor (elements).
pub const MAX_TENSOR_ELEMENTS: usize = 1 << 30;
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

/// One byte range of a tensor inside a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    /// Shard index.
    pub shard: usize,
    /// Offset in the shard.
    pub offset: u64,
    /// Length.
    pub length: u64,
}

/// A tensor of the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorEntry {
    /// `component/name` with the module's parameter name (`unet/conv_in.weight`).
    pub name: String,
    /// Stored shape (after the layout's transformation).
    pub shape: Vec<usize>,
    /// Storage.
    pub storage: Storage,
    /// Layout.
    pub layout: Layout,
    /// Byte ranges, in order.
    pub parts: Vec<Part>,
}

impl TensorEntry {
    /// The component (`text_encoder`, `unet`, `vae`).
    pub fn component(&self) -> &str {
        self.name.split('/').next().unwrap_or("")
    }
    /// Bytes of the stored tensor.
    pub fn byte_len(&self) -> u64 {
        self.storage.byte_len(&self.shape) as u64
    }
}

/// A shard file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    /// File name (relative to the manifest; plain name, no directories).
    pub file: String,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Which component's tensors it holds.
    pub component: String,
}

/// Size summary of one component.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentTotals {
    /// Parameters.
    pub params: u64,
    /// Stored bytes.
    pub bytes: u64,
    /// Tensors.
    pub tensors: usize,
    /// Shards.
    pub shards: usize,
}

/// The canonical identity of a model, independent of how it is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// SHA-256 over the text encoder's config and its f16-rounded token embedding
    /// (see [`super::identity`]).
    pub text_encoder: String,
}

/// A converted model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// The model.
    pub model: ModelSpec,
    /// Conversion scheme (`q8`, `q4`, `f16`, `f32`): the storage of the large weights.
    pub quant: String,
    /// Identity.
    pub identity: Identity,
    /// Where the weights came from (informational).
    pub source: String,
    /// Writer.
    pub created_by: String,
    /// Per component.
    pub components: BTreeMap<String, ComponentTotals>,
    /// Total stored bytes.
    pub total_bytes: u64,
    /// Shards.
    pub shards: Vec<ShardEntry>,
    /// Tensors, in loading order.
    pub tensors: Vec<TensorEntry>,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::Weights(format!("invalid manifest: {}", msg.into()))
}

/// Whether `s` is a plain file name: letters, digits, `.`, `_`, `-`, not starting with `.`.
pub fn plain_file_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Whether `s` is lower-case hex SHA-256.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Manifest {
    /// Parses and validates a manifest.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(invalid(format!("{} bytes, over the {MAX_MANIFEST_BYTES}-byte limit", bytes.len())));
        }
        let probe: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
        match probe.get("format").and_then(|v| v.as_str()) {
            Some(FORMAT) => {}
            other => return Err(invalid(format!("format is {other:?}, expected {FORMAT:?}"))),
        }
        match probe.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v >= 1 && v <= VERSION as u64 => {}
            Some(v) if v > VERSION as u64 => {
                return Err(invalid(format!(
                    "version {v} was written by a newer dreamdist (this one reads {VERSION})"
                )));
            }
            other => return Err(invalid(format!("version {other:?} is not supported"))),
        }
        let m: Manifest = serde_json::from_value(probe).map_err(|e| invalid(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    /// Serializes (pretty JSON).
    pub fn to_json(&self) -> Result<Vec<u8>> {
        self.validate()?;
        serde_json::to_vec_pretty(self).map_err(|e| invalid(e.to_string()))
    }

    /// Checks every rule of the format.
    pub fn validate(&self) -> Result<()> {
        let known = ModelSpec::from_id(&self.model.id).map_err(|e| invalid(e.to_string()))?;
        if known != self.model {
            return Err(invalid(format!("the model spec differs from dreamdist's `{}`", self.model.id)));
        }
        if !["q8", "q4", "f16", "f32"].contains(&self.quant.as_str()) {
            return Err(invalid(format!("unknown quant {:?}", self.quant)));
        }
        if !is_sha256_hex(&self.identity.text_encoder) {
            return Err(invalid("identity.text_encoder is not a lower-case hex SHA-256"));
        }
        if self.shards.is_empty() || self.shards.len() > MAX_SHARDS {
            return Err(invalid(format!("{} shards (1..={MAX_SHARDS})", self.shards.len())));
        }
        if self.tensors.is_empty() || self.tensors.len() > MAX_TENSORS {
            return Err(invalid(format!("{} tensors (1..={MAX_TENSORS})", self.tensors.len())));
        }
        let mut files = HashSet::new();
        let mut total = 0u64;
        for (i, s) in self.shards.iter().enumerate() {
            if !plain_file_name(&s.file) {
                return Err(invalid(format!("shard {i}: file name {:?} is not a plain file name", s.file)));
            }
            if !files.insert(s.file.as_str()) {
                return Err(invalid(format!("shard file {:?} listed twice", s.file)));
            }
            if !is_sha256_hex(&s.sha256) {
                return Err(invalid(format!("shard {}: sha256 {:?} is not lower-case hex SHA-256", s.file, s.sha256)));
            }
            if s.bytes == 0 || s.bytes > MAX_SHARD_BYTES {
                return Err(invalid(format!("shard {}: {} bytes (1..={MAX_SHARD_BYTES})", s.file, s.bytes)));
            }
            if !COMPONENTS.contains(&s.component.as_str()) {
                return Err(invalid(format!("shard {}: unknown component {:?}", s.file, s.component)));
            }
            total += s.bytes;
        }
        if total != self.total_bytes {
            return Err(invalid(format!("shards add up to {total} bytes, total_bytes says {}", self.total_bytes)));
        }
        let mut names = HashSet::new();
        let mut ranges: Vec<Vec<(u64, u64)>> = vec![vec![]; self.shards.len()];
        for t in &self.tensors {
            let name_ok = t.name.len() <= 256
                && t.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b))
                && !t.name.contains("..")
                && COMPONENTS.contains(&t.component())
                && t.name.matches('/').count() == 1;
            if !name_ok {
                return Err(invalid(format!("tensor name {:?} is not component/name", t.name)));
            }
            if !names.insert(t.name.as_str()) {
                return Err(invalid(format!("tensor {:?} listed twice", t.name)));
            }
            let n = t
                .shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .filter(|&n| n > 0 && n <= MAX_TENSOR_ELEMENTS);
            if n.is_none() || t.shape.is_empty() || t.shape.len() > 4 {
                return Err(invalid(format!("tensor {}: shape {:?} is out of range", t.name, t.shape)));
            }
            if !t.storage.fits(&t.shape) {
                return Err(invalid(format!(
                    "tensor {}: shape {:?} cannot be stored as {:?}",
                    t.name, t.shape, t.storage
                )));
            }
            match t.layout {
                Layout::LinearT | Layout::HostTable if t.shape.len() != 2 => {
                    return Err(invalid(format!("tensor {}: layout {:?} needs a 2-D shape", t.name, t.layout)));
                }
                Layout::Conv2d { k } if t.shape.len() != 2 || k == 0 || k > 7 || t.shape[1] % (k * k) != 0 => {
                    return Err(invalid(format!("tensor {}: bad conv layout for shape {:?}", t.name, t.shape)));
                }
                _ => {}
            }
            let mut sum = 0u64;
            if t.parts.is_empty() || t.parts.len() > 64 {
                return Err(invalid(format!("tensor {}: {} parts", t.name, t.parts.len())));
            }
            for p in &t.parts {
                let shard = self
                    .shards
                    .get(p.shard)
                    .ok_or_else(|| invalid(format!("tensor {}: shard {} does not exist", t.name, p.shard)))?;
                let end = p.offset.checked_add(p.length).filter(|&e| e <= shard.bytes && p.length > 0);
                if end.is_none() {
                    return Err(invalid(format!(
                        "tensor {}: bytes {}+{} lie outside shard {} ({} bytes)",
                        t.name, p.offset, p.length, shard.file, shard.bytes
                    )));
                }
                if shard.component != t.component() {
                    return Err(invalid(format!(
                        "tensor {} lies in shard {} of another component",
                        t.name, shard.file
                    )));
                }
                ranges[p.shard].push((p.offset, p.offset + p.length));
                sum += p.length;
            }
            if sum != t.byte_len() {
                return Err(invalid(format!(
                    "tensor {}: parts hold {sum} bytes, a {:?} {:?} tensor needs {}",
                    t.name,
                    t.storage,
                    t.shape,
                    t.byte_len()
                )));
            }
        }
        for (i, r) in ranges.iter_mut().enumerate() {
            r.sort_unstable();
            if r.windows(2).any(|w| w[1].0 < w[0].1) {
                return Err(invalid(format!("tensors overlap in shard {}", self.shards[i].file)));
            }
        }
        Ok(())
    }

    /// Tensors whose parts lie in shard `i`, with their parts there.
    pub fn tensors_in_shard(&self, i: usize) -> impl Iterator<Item = &TensorEntry> {
        self.tensors.iter().filter(move |t| t.parts.iter().any(|p| p.shard == i))
    }

    /// Bytes to download for a component (all shards holding it).
    pub fn component_bytes(&self, component: &str) -> u64 {
        self.shards.iter().filter(|s| s.component == component).map(|s| s.bytes).sum()
    }
}
