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
use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::inventory::{self, Quant};
pub use super::inventory::{COMPONENTS, Layout};
use super::quant::{Storage, shape_text};
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
        let m = Self::parse(bytes)?;
        m.validate()?;
        Ok(m)
    }

    fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(invalid(format!("{} bytes, over the {MAX_MANIFEST_BYTES}-byte limit", bytes.len())));
        }
        let probe: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
        match probe.get("format").and_then(|v| v.as_str()) {
            Some(FORMAT) => {}
            Some(other) => {
                return Err(invalid(format!("its format is \"{other}\"; a dreamdist model says \"{FORMAT}\"")));
            }
            None => return Err(invalid(format!("it has no \"format\" (a dreamdist model says \"{FORMAT}\")"))),
        }
        match probe.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v >= 1 && v <= VERSION as u64 => {}
            Some(v) if v > VERSION as u64 => {
                return Err(invalid(format!(
                    "version {v} was written by a newer dreamdist (this one reads {VERSION})"
                )));
            }
            Some(v) => {
                return Err(invalid(format!(
                    "version {v} is not a version of the format (this dreamdist reads 1 to {VERSION})"
                )));
            }
            None => return Err(invalid("it has no \"version\" number")),
        }
        let m: Manifest = serde_json::from_value(probe).map_err(|e| invalid(e.to_string()))?;
        Ok(m)
    }

    /// Serializes (pretty JSON).
    pub fn to_json(&self) -> Result<Vec<u8>> {
        self.validate()?;
        serde_json::to_vec_pretty(self).map_err(|e| invalid(e.to_string()))
    }

    /// Checks every rule of the format, and that the tensors are exactly the model's.
    pub fn validate(&self) -> Result<()> {
        self.validate_with(false)
    }

    /// Parses a manifest written by an older dreamdist for reconversion: like
    /// [`from_json`](Self::from_json), but a q8 token embedding is accepted (a model loaded
    /// from it could not have its identity checked, so loading refuses it).
    pub fn from_json_for_reconversion(bytes: &[u8]) -> Result<Self> {
        let m = Self::parse(bytes)?;
        m.validate_with(true)?;
        Ok(m)
    }

    fn validate_with(&self, legacy_table: bool) -> Result<()> {
        let known = ModelSpec::from_id(&self.model.id).map_err(|e| invalid(e.to_string()))?;
        if known != self.model {
            return Err(invalid(format!("the model spec differs from dreamdist's `{}`", self.model.id)));
        }
        let quant: Quant = self.quant.parse().map_err(|e: Error| invalid(e.to_string()))?;
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
                return Err(invalid(format!("tensor {}: shape {} is out of range", t.name, shape_text(&t.shape))));
            }
            if !t.storage.fits(&t.shape) {
                return Err(invalid(format!(
                    "tensor {}: shape {} cannot be stored as {}",
                    t.name,
                    shape_text(&t.shape),
                    t.storage
                )));
            }
            match t.layout {
                Layout::LinearT | Layout::HostTable if t.shape.len() != 2 => {
                    return Err(invalid(format!("tensor {}: {} needs a 2-D shape", t.name, t.layout)));
                }
                Layout::Conv2d { k } if t.shape.len() != 2 || k == 0 || k > 7 || t.shape[1] % (k * k) != 0 => {
                    return Err(invalid(format!(
                        "tensor {}: a convolution layout does not fit shape {}",
                        t.name,
                        shape_text(&t.shape)
                    )));
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
                    "tensor {}: parts hold {sum} bytes, a {} {} tensor needs {}",
                    t.name,
                    t.storage,
                    shape_text(&t.shape),
                    t.byte_len()
                )));
            }
        }
        // What the model needs, before how the shards hold it: "unet/x is missing" says more
        // than the byte count of a shard that lacks it.
        self.check_inventory(quant, legacy_table)?;
        let mut sizes: HashMap<&str, (&str, u64)> = HashMap::new();
        for (i, r) in ranges.iter_mut().enumerate() {
            let s = &self.shards[i];
            r.sort_unstable();
            if r.windows(2).any(|w| w[1].0 < w[0].1) {
                return Err(invalid(format!("tensors overlap in shard {}", s.file)));
            }
            // The shard holds its tensors and nothing else: no byte is downloaded for nothing.
            let held: u64 = r.iter().map(|(a, b)| b - a).sum();
            if held != s.bytes {
                return Err(invalid(format!(
                    "shard {} is declared as {} bytes, but its tensors take {held}",
                    s.file, s.bytes
                )));
            }
            // One hash, one file: shards with the same contents are fetched and stored once.
            match sizes.insert(&s.sha256, (&s.file, s.bytes)) {
                Some((other, bytes)) if bytes != s.bytes => {
                    return Err(invalid(format!(
                        "shards {other} and {} have the same SHA-256 but different sizes ({bytes} and {} bytes)",
                        s.file, s.bytes
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Checks the tensors against the model's own parameter inventory under the manifest's
    /// scheme ([`inventory::expected`]): every tensor the model asks for, in its stored shape,
    /// layout and storage, and no other. `legacy_table` accepts a q8 token embedding (what
    /// dreamdist wrote before the table became lossless), for reconversion only.
    fn check_inventory(&self, quant: Quant, legacy_table: bool) -> Result<()> {
        let expected = inventory::expected(&self.model, quant);
        let mut problems = vec![];
        let mut legacy = false;
        let mut seen = HashSet::new();
        for t in &self.tensors {
            let Some(e) = expected.get(&t.name) else {
                problems.push(format!("{} is not a parameter of the model", t.name));
                continue;
            };
            seen.insert(t.name.as_str());
            if e.shape != t.shape || e.layout != t.layout {
                problems.push(format!(
                    "{} is {} {}, the model needs {} {}",
                    t.name,
                    t.layout,
                    shape_text(&t.shape),
                    e.layout,
                    shape_text(&e.shape)
                ));
            } else if e.storage != t.storage {
                if t.layout == Layout::HostTable && t.storage == Storage::Q8 && quant != Quant::F32 {
                    legacy = true;
                    if legacy_table {
                        continue;
                    }
                }
                problems.push(format!(
                    "{} is stored as {}, a {} conversion stores it as {}",
                    t.name, t.storage, self.quant, e.storage
                ));
            }
        }
        let mut missing: Vec<&String> = expected.keys().filter(|k| !seen.contains(k.as_str())).collect();
        missing.sort();
        problems.extend(missing.iter().map(|k| format!("{k} is missing")));
        if problems.is_empty() {
            return Ok(());
        }
        let n = problems.len();
        problems.truncate(12);
        let more = if n > 12 { format!("; and {} more", n - 12) } else { String::new() };
        let hint = if legacy {
            " (this model was converted by an older dreamdist, which stored the token embedding as q8: \
             convert it again with `dreamdist convert --from <its folder>`, which keeps the weights)"
        } else {
            ""
        };
        Err(invalid(format!(
            "it does not hold the tensors of dreamdist's \"{}\" model{hint}: {}{more}",
            self.model.id,
            problems.join("; ")
        )))
    }

    /// Tensors whose parts lie in shard `i`, with their parts there.
    pub fn tensors_in_shard(&self, i: usize) -> impl Iterator<Item = &TensorEntry> {
        self.tensors.iter().filter(move |t| t.parts.iter().any(|p| p.shard == i))
    }

    /// Bytes a load downloads: each distinct shard (by SHA-256) once.
    pub fn download_bytes(&self) -> u64 {
        let mut seen = HashSet::new();
        self.shards.iter().filter(|s| seen.insert(s.sha256.as_str())).map(|s| s.bytes).sum()
    }
}
