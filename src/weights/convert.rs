//! Conversion of a model into dreamdist's manifest + shards (used by `dreamdist convert`, and by
//! the browser's direct mode, which converts a diffusers repository tensor by tensor).
//!
//! The converter walks each component's parameter inventory (the constructors' own requests,
//! see [`super::inventory`]), asks a [`TensorSource`] for each tensor's checkpoint values (f32),
//! puts it in its device layout, picks its storage ([`storage_for`]) and appends the bytes to
//! the component's shards (≤ [`MAX_SHARD_BYTES`](super::manifest::MAX_SHARD_BYTES); a tensor
//! may continue in the next shard).
use std::collections::BTreeMap;

use sha2::Digest;

use super::identity::IdentityHasher;
use super::manifest::{self, ComponentTotals, Identity, Manifest, Part, ShardEntry, TensorEntry};
use super::quant::{self, shape_text};
use super::{Init, RandomSource, Role};
use crate::model::ModelSpec;
use crate::{Error, Result};

pub use super::inventory::{MIN_QUANT_ELEMENTS, Quant, component_inventory, storage_for};

/// Checkpoint values of a component's tensors.
#[allow(async_fn_in_trait)]
pub trait TensorSource {
    /// Values (f32, checkpoint layout) of `name` with checkpoint `shape`.
    async fn tensor(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Vec<f32>>;
    /// Called after the last tensor: reports unexpected or missing tensors.
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

impl TensorSource for RandomSource {
    async fn tensor(&mut self, _name: &str, shape: &[usize], init: Init) -> Result<Vec<f32>> {
        Ok(self.values(shape, init))
    }
}

/// Where shard bytes go.
#[allow(async_fn_in_trait)]
pub trait ShardSink {
    /// Writes a finished shard.
    async fn write(&mut self, file: &str, bytes: &[u8]) -> Result<()>;
}

struct ShardWriter<'a, S: ShardSink> {
    sink: &'a mut S,
    component: String,
    buf: Vec<u8>,
    shards: &'a mut Vec<ShardEntry>,
    max: usize,
}

impl<S: ShardSink> ShardWriter<'_, S> {
    async fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let n = self.shards.iter().filter(|s| s.component == self.component).count();
        let file = format!("{}-{n:03}.bin", self.component);
        let sha256 = super::hex(&sha2::Sha256::digest(&self.buf));
        self.sink.write(&file, &self.buf).await?;
        self.shards.push(ShardEntry { file, sha256, bytes: self.buf.len() as u64, component: self.component.clone() });
        self.buf.clear();
        Ok(())
    }

    /// Appends a tensor's bytes, returning its parts.
    async fn append(&mut self, mut bytes: &[u8]) -> Result<Vec<Part>> {
        let mut parts = vec![];
        while !bytes.is_empty() {
            let room = self.max - self.buf.len();
            if room == 0 {
                self.flush().await?;
                continue;
            }
            let take = room.min(bytes.len());
            parts.push(Part { shard: self.shards.len(), offset: self.buf.len() as u64, length: take as u64 });
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        Ok(parts)
    }
}

/// Converts a model: `sources` gives each component's tensors (in `manifest::COMPONENTS`
/// order); the shards go to `sink`; returns the manifest (not yet written).
pub async fn convert<S: ShardSink, T: TensorSource>(
    device: &burn::tensor::Device,
    spec: &ModelSpec,
    quant: Quant,
    sources: [&mut T; 3],
    sink: &mut S,
    source_desc: &str,
    mut progress: impl FnMut(&str, usize, usize),
) -> Result<Manifest> {
    let mut shards = vec![];
    let mut tensors = vec![];
    let mut components = BTreeMap::new();
    let mut identity = None;
    for (component, src) in manifest::COMPONENTS.iter().zip(sources) {
        let inv = component_inventory(spec, component, device);
        let mut totals = ComponentTotals::default();
        let mut w = ShardWriter {
            sink: &mut *sink,
            component: component.to_string(),
            buf: vec![],
            shards: &mut shards,
            max: manifest::MAX_SHARD_BYTES as usize,
        };
        let shards_before = w.shards.len();
        for (i, (name, shape, role, init)) in inv.iter().enumerate() {
            progress(component, i, inv.len());
            let values = src.tensor(name, shape, *init).await?;
            if values.len() != shape.iter().product::<usize>() {
                return Err(Error::Weights(format!(
                    "{component}/{name}: {} values for shape {}",
                    values.len(),
                    shape_text(shape)
                )));
            }
            if *role == Role::HostTable && *component == "text_encoder" {
                let mut h = IdentityHasher::new(&spec.clip);
                h.update(&values);
                identity = Some(h.finish());
            }
            let stored_shape = role.stored_shape(shape);
            let values = if *role == Role::Linear { super::transpose(&values, shape[0], shape[1]) } else { values };
            let storage = storage_for(quant, *role, &stored_shape);
            let bytes = quant::encode(&values, &stored_shape, storage)?;
            drop(values);
            let parts = w.append(&bytes).await?;
            totals.params += shape.iter().product::<usize>() as u64;
            totals.bytes += bytes.len() as u64;
            totals.tensors += 1;
            tensors.push(TensorEntry {
                name: format!("{component}/{name}"),
                shape: stored_shape,
                storage,
                layout: role.layout(shape),
                parts,
            });
        }
        w.flush().await?;
        totals.shards = shards.len() - shards_before;
        src.finish()?;
        components.insert(component.to_string(), totals);
    }
    let total_bytes = shards.iter().map(|s| s.bytes).sum();
    let m = Manifest {
        format: manifest::FORMAT.into(),
        version: manifest::VERSION,
        model: spec.clone(),
        quant: quant.name().into(),
        identity: Identity {
            text_encoder: identity.ok_or_else(|| Error::Weights("the text encoder has no token embedding".into()))?,
        },
        source: source_desc.chars().take(500).collect(),
        created_by: format!("dreamdist {}", env!("CARGO_PKG_VERSION")),
        components,
        total_bytes,
        shards,
        tensors,
    };
    m.validate()?;
    Ok(m)
}

/// A [`TensorSource`] over one safetensors checkpoint held in memory (native conversion).
pub struct CheckpointSource {
    inner: super::SafetensorsSource,
}

impl CheckpointSource {
    /// Parses a checkpoint with key rewrites.
    pub fn new(bytes: Vec<u8>, rewrites: &[super::KeyRewrite]) -> Result<Self> {
        Ok(Self { inner: super::SafetensorsSource::from_bytes(bytes, rewrites)? })
    }
}

impl TensorSource for CheckpointSource {
    async fn tensor(&mut self, name: &str, shape: &[usize], _init: Init) -> Result<Vec<f32>> {
        Ok(self.inner.values(name, shape))
    }
    fn finish(&mut self) -> Result<()> {
        use super::ParamSource;
        self.inner.finish()
    }
}
