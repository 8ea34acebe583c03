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

use crate::model::ClipConfig;

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
    /// The identity (lower-case hex).
    pub fn finish(self) -> String {
        super::hex(&self.h.finalize())
    }
}

/// The identity of a text encoder with this config and token embedding.
pub fn text_encoder_identity(cfg: &ClipConfig, token_embedding: &[f32]) -> String {
    let mut h = IdentityHasher::new(cfg);
    h.update(token_embedding);
    h.finish()
}
