//! The canonical identity of a text encoder, the same for every stored copy of one model.
//!
//! A `.ddist` file must name the model its prompts were learned on, but "the sha256 of the
//! text-encoder file" changes with every conversion (f16, q8, another container) and would make
//! the browser hash ~1 GB. The identity is instead
//!
//! `sha256("dreamdist/text-encoder-identity/v1\n" ‖ canonical JSON of the ClipConfig ‖ "\n" ‖
//!  the token embedding rounded to f16, little-endian, row-major [vocab, hidden])`
//!
//! computed by the converter from the source weights and written into the manifest: an f32,
//! f16, q8 or q4 copy of the same model shares it. Learned prompts live in the token-embedding
//! space, so a model with other token embeddings (another text encoder) gets another identity.
use sha2::Digest;

use super::HostTable;
use super::quant::Storage;
use crate::model::ClipConfig;
use crate::{Error, Result};

/// Incremental identity hasher (feed the embedding in row-major chunks).
pub struct IdentityHasher {
    h: sha2::Sha256,
}

impl IdentityHasher {
    /// Starts with the config.
    pub fn new(cfg: &ClipConfig) -> Self {
        let mut h = sha2::Sha256::new();
        h.update(b"dreamdist/text-encoder-identity/v1\n");
        h.update(serde_json::to_vec(cfg).expect("config serializes"));
        h.update(b"\n");
        Self { h }
    }
    /// Feeds token-embedding values (f32, continuing row-major order).
    pub fn update(&mut self, values: &[f32]) {
        let mut buf = Vec::with_capacity(values.len() * 2);
        for v in values {
            buf.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes());
        }
        self.h.update(&buf);
    }
    /// Feeds token-embedding values already in f16 (little-endian bytes, continuing row-major
    /// order): the same as [`update`](Self::update) with their f32 values.
    pub fn update_f16_le(&mut self, bytes: &[u8]) {
        self.h.update(bytes);
    }
    /// The identity (lower-case hex).
    pub fn finish(self) -> String {
        super::hex(&self.h.finalize())
    }
}

/// The identity of a text encoder with this config and a stored token embedding. The table
/// must be lossless with respect to the identity (f16 or f32): a quantized table no longer
/// holds the values the identity was computed from.
pub fn of_table(cfg: &ClipConfig, table: &HostTable) -> Result<String> {
    let mut h = IdentityHasher::new(cfg);
    match table.storage {
        Storage::F16 => h.update_f16_le(&table.bytes),
        Storage::F32 => {
            // In pieces of 64k values: the table is tens of MiB.
            for piece in table.bytes.chunks(4 << 16) {
                let values: Vec<f32> =
                    piece.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                h.update(&values);
            }
        }
        s => {
            return Err(Error::Weights(format!(
                "the token embedding is stored as {s}, from which the model's identity cannot be computed"
            )));
        }
    }
    Ok(h.finish())
}
