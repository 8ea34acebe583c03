//! Direct mode: a diffusers-layout repository read over HTTP in ranges — each safetensors header
//! with one small request, then each tensor's bytes with its own `Range` request — never one
//! multi-gigabyte buffer. Feeds the converter ([`super::convert`]), so the browser quantizes as it
//! downloads and caches the converted shards like any other model.
use std::collections::HashMap;

use serde::Deserialize;

use super::convert::TensorSource;
use super::loader::Transport;
use super::quant::shape_text;
use super::{Init, KeyRewrite};
use crate::{Error, Result};

/// Largest safetensors header accepted.
pub const MAX_HEADER: u64 = 100 << 20;

#[derive(Deserialize)]
struct Info {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

/// The component files of a diffusers repository, relative to its base URL.
pub const FILES: [(&str, &str); 3] = [
    ("text_encoder", "text_encoder/model.safetensors"),
    ("unet", "unet/diffusion_pytorch_model.safetensors"),
    ("vae", "vae/diffusion_pytorch_model.safetensors"),
];

/// One remote safetensors file: its header, and tensors fetched by range.
pub struct RemoteSafetensors<T: Transport> {
    transport: T,
    url: String,
    data_start: u64,
    /// Rewritten name → (original name, info).
    tensors: HashMap<String, (String, Info)>,
    used: std::collections::HashSet<String>,
    /// Bytes fetched so far (for progress).
    pub fetched: u64,
}

async fn fetch_bytes<T: Transport>(t: &mut T, url: &str, start: u64, end: u64) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity((end - start) as usize);
    t.get(url, start, Some(end), end - start, &mut |c| out.extend_from_slice(c))
        .await
        .map_err(|e| Error::Weights(format!("{url} bytes {start}..{end}: {e}")))?;
    if out.len() as u64 != end - start {
        return Err(Error::Weights(format!("{url}: asked for {} bytes, got {}", end - start, out.len())));
    }
    Ok(out)
}

impl<T: Transport> RemoteSafetensors<T> {
    /// Reads the header of `url` (two range requests).
    pub async fn open(mut transport: T, url: &str, rewrites: &[KeyRewrite]) -> Result<Self> {
        let len = fetch_bytes(&mut transport, url, 0, 8).await?;
        let n = u64::from_le_bytes(len.try_into().expect("8 bytes"));
        if n == 0 || n > MAX_HEADER {
            return Err(Error::Weights(format!("{url}: not a safetensors file (header length {n})")));
        }
        let header = fetch_bytes(&mut transport, url, 8, 8 + n).await?;
        let raw: HashMap<String, serde_json::Value> = serde_json::from_slice(&header)
            .map_err(|e| Error::Weights(format!("{url}: not a safetensors header: {e}")))?;
        let mut tensors = HashMap::new();
        for (name, v) in raw {
            if name == "__metadata__" {
                continue;
            }
            let info: Info =
                serde_json::from_value(v).map_err(|e| Error::Weights(format!("{url}: tensor {name}: {e}")))?;
            let key = rewrites.iter().fold(name.clone(), |k, r| r.apply(&k));
            if rewrites.iter().any(|r| matches!(r, KeyRewrite::Ignore(i) if *i == key)) {
                continue;
            }
            tensors.insert(key, (name, info));
        }
        Ok(Self {
            transport,
            url: url.to_string(),
            data_start: 8 + n,
            tensors,
            used: Default::default(),
            fetched: 8 + n,
        })
    }
}

impl<T: Transport> TensorSource for RemoteSafetensors<T> {
    async fn tensor(&mut self, name: &str, shape: &[usize], _init: Init) -> Result<Vec<f32>> {
        let (orig, info) =
            self.tensors.get(name).ok_or_else(|| Error::Weights(format!("{}: no tensor {name}", self.url)))?;
        let squeeze = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
        if info.shape != shape && squeeze(&info.shape) != squeeze(shape) {
            return Err(Error::Weights(format!(
                "{}: {orig} has shape {}, expected {}",
                self.url,
                shape_text(&info.shape),
                shape_text(shape)
            )));
        }
        let n: usize = shape.iter().product();
        let width = match info.dtype.as_str() {
            "F32" => 4,
            "F16" | "BF16" => 2,
            d => return Err(Error::Weights(format!("{}: {orig} has unsupported dtype {d}", self.url))),
        };
        let (a, b) = info.data_offsets;
        if b < a || b - a != (n * width) as u64 {
            return Err(Error::Weights(format!("{}: {orig}: data size does not match its shape", self.url)));
        }
        let dtype = info.dtype.clone();
        let bytes = fetch_bytes(&mut self.transport, &self.url, self.data_start + a, self.data_start + b).await?;
        self.fetched += bytes.len() as u64;
        self.used.insert(name.to_string());
        let v: Vec<f32> = match dtype.as_str() {
            "F32" => bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
            "F16" => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            _ => bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        };
        Ok(v)
    }

    fn finish(&mut self) -> Result<()> {
        let mut unexpected: Vec<&String> = self.tensors.keys().filter(|k| !self.used.contains(*k)).collect();
        unexpected.sort();
        if unexpected.is_empty() {
            Ok(())
        } else {
            let shown: Vec<String> = unexpected.iter().take(10).map(|s| s.to_string()).collect();
            Err(Error::Weights(format!(
                "{}: {} tensors the model does not use: {}",
                self.url,
                unexpected.len(),
                shown.join(", ")
            )))
        }
    }
}
