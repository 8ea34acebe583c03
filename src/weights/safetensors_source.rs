//! [`ParamSource`] over a safetensors checkpoint (F32, F16 or BF16 tensors).
use std::collections::{BTreeSet, HashMap};

use safetensors::{Dtype, SafeTensors};

use super::{ParamSource, Provided, Request};
use crate::{Error, Result};

/// A rewrite of checkpoint key names into the names the modules ask for.
#[derive(Clone, Copy, Debug)]
pub enum KeyRewrite {
    /// Remove this prefix where present (e.g. `text_model.`: real SD checkpoints have it,
    /// transformers 5 saves without it).
    StripPrefix(&'static str),
    /// Replace a dotted path segment sequence (e.g. `.query.` → `.to_q.` for legacy VAE files).
    Segment(&'static str, &'static str),
    /// Ignore this tensor (after the other rewrites), e.g. buffers saved by older libraries
    /// such as `embeddings.position_ids`.
    Ignore(&'static str),
}

impl KeyRewrite {
    /// The rewritten key.
    pub fn apply(&self, key: &str) -> String {
        match self {
            KeyRewrite::StripPrefix(p) => key.strip_prefix(p).unwrap_or(key).to_string(),
            KeyRewrite::Segment(from, to) => key.replace(from, to),
            KeyRewrite::Ignore(_) => key.to_string(),
        }
    }
}

struct Entry {
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range of the tensor's data in the file.
    range: std::ops::Range<usize>,
    original: String,
}

/// Tensors of one safetensors file, by (rewritten) name.
pub struct SafetensorsSource {
    bytes: Vec<u8>,
    tensors: HashMap<String, Entry>,
    used: BTreeSet<String>,
    missing: Vec<String>,
    misshaped: Vec<String>,
    bad: Vec<String>,
}

impl SafetensorsSource {
    /// Parses a safetensors file held in memory; header errors and truncation are reported.
    pub fn from_bytes(bytes: Vec<u8>, rewrites: &[KeyRewrite]) -> Result<Self> {
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::Weights(format!("not a valid safetensors file: {e}")))?;
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            let key = rewrites.iter().fold(name.clone(), |k, r| r.apply(&k));
            if rewrites.iter().any(|r| matches!(r, KeyRewrite::Ignore(i) if *i == key)) {
                continue;
            }
            let entry = Entry {
                dtype: view.dtype(),
                shape: view.shape().to_vec(),
                range: {
                    let start = view.data().as_ptr() as usize - bytes.as_ptr() as usize;
                    start..start + view.data().len()
                },
                original: name.clone(),
            };
            if let Some(prev) = tensors.insert(key.clone(), entry) {
                return Err(Error::Weights(format!("tensors {:?} and {name:?} both map to {key:?}", prev.original)));
            }
        }
        drop(st);
        Ok(Self { bytes, tensors, used: BTreeSet::new(), missing: vec![], misshaped: vec![], bad: vec![] })
    }

    /// Names of all tensors in the file (after rewriting).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|s| s.as_str())
    }
}

fn to_f32(dtype: Dtype, data: &[u8]) -> Option<Vec<f32>> {
    let v = match dtype {
        Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
        Dtype::F16 => data.chunks_exact(2).map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32()).collect(),
        Dtype::BF16 => {
            data.chunks_exact(2).map(|c| half::bf16::from_le_bytes(c.try_into().unwrap()).to_f32()).collect()
        }
        _ => return None,
    };
    Some(v)
}

impl ParamSource for SafetensorsSource {
    fn take(&mut self, req: &Request) -> Provided {
        Provided::Values(self.values(req.name, req.shape))
    }

    fn finish(&mut self) -> Result<()> {
        self.report()
    }
}

impl SafetensorsSource {
    /// Checkpoint-layout f32 values of `name` with `shape` (placeholders and a recorded problem
    /// when absent or mis-shaped).
    pub fn values(&mut self, name: &str, shape: &[usize]) -> Vec<f32> {
        let n: usize = shape.iter().product();
        let Some(entry) = self.tensors.get(name) else {
            self.missing.push(format!("{name} {shape:?}"));
            return vec![0.0; n];
        };
        self.used.insert(name.to_string());
        // A 1x1 convolution stored where a linear layer is expected (old attention layouts)
        // has the same values: accept it when only trailing unit dims differ.
        let squeeze = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
        if entry.shape != shape && squeeze(&entry.shape) != squeeze(shape) {
            self.misshaped.push(format!("{} has shape {:?}, expected {shape:?}", entry.original, entry.shape));
            return vec![0.0; n];
        }
        match to_f32(entry.dtype, &self.bytes[entry.range.clone()]) {
            Some(v) if v.len() == n => v,
            Some(_) => {
                self.bad.push(format!("{}: data size does not match its shape", entry.original));
                vec![0.0; n]
            }
            None => {
                self.bad.push(format!("{}: unsupported dtype {:?}", entry.original, entry.dtype));
                vec![0.0; n]
            }
        }
    }

    fn report(&mut self) -> Result<()> {
        let unexpected: Vec<_> =
            self.tensors.iter().filter(|(k, _)| !self.used.contains(*k)).map(|(_, e)| e.original.clone()).collect();
        let mut problems = vec![];
        let mut list = |what: &str, items: &[String]| {
            if !items.is_empty() {
                let mut items = items.to_vec();
                items.sort();
                let shown: Vec<_> = items.iter().take(20).cloned().collect();
                let more = if items.len() > 20 { format!(" (and {} more)", items.len() - 20) } else { String::new() };
                problems.push(format!("{} {what}: {}{more}", items.len(), shown.join(", ")));
            }
        };
        list("missing", &self.missing);
        list("mis-shaped", &self.misshaped);
        list("invalid", &self.bad);
        list("unexpected", &unexpected);
        if problems.is_empty() { Ok(()) } else { Err(Error::Weights(problems.join("; "))) }
    }
}
