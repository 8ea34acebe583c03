//! CLIP BPE tokenizer for SD 2.x (the `tokenizers` crate, wasm-compatible features).
//!
//! `assets/tokenizer/tokenizer.json` is built by `scripts/fixtures/make_tokenizer.py` from the
//! MIT-licensed CLIP vocabulary and reproduces transformers' `CLIPTokenizerFast`. dreamdist's
//! choices (tested against reference ids in `tests/suite/tokenizer.rs`):
//! - sequences are `[BOS] tokens… [EOS]` padded with `!` (id 0, SD 2's pad token) to 77 and
//!   truncated to 75 text tokens, as diffusers' SD 2 pipelines do;
//! - text is lower-cased and whitespace-normalised, without ftfy / HTML unescaping (the fast
//!   tokenizer's behaviour; the slow one with ftfy installed differs on `&amp;` and curly quotes);
//! - special tokens written literally in a prompt (`<|endoftext|>`) get their special ids, as
//!   with transformers (the prompt is the user's own, so this is their choice to make).
use tokenizers::Tokenizer;

use crate::{Error, Result};

/// Sequence length of the text encoder.
pub const MAX_LEN: usize = 77;
/// Start-of-text id.
pub const BOS: u32 = 49406;
/// End-of-text id.
pub const EOS: u32 = 49407;
/// SD 2 pad id (`!`).
pub const PAD: u32 = 0;

static TOKENIZER_JSON: &[u8] = include_bytes!("../assets/tokenizer/tokenizer.json");

/// The CLIP tokenizer.
pub struct ClipTokenizer {
    inner: Tokenizer,
}

impl ClipTokenizer {
    /// The tokenizer shipped with dreamdist.
    pub fn sd2() -> Result<Self> {
        Self::from_bytes(TOKENIZER_JSON)
    }

    /// A tokenizer from a `tokenizer.json`.
    pub fn from_bytes(json: &[u8]) -> Result<Self> {
        let inner = Tokenizer::from_bytes(json).map_err(|e| Error::Invalid(format!("tokenizer.json: {e}")))?;
        Ok(Self { inner })
    }

    /// Token ids of `text` without BOS/EOS or padding.
    pub fn encode_words(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| Error::Invalid(format!("cannot tokenize {text:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// `[BOS] words… [EOS] ! ! …` of length 77 (text truncated to 75 tokens).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut words = self.encode_words(text)?;
        words.truncate(MAX_LEN - 2);
        let mut ids = Vec::with_capacity(MAX_LEN);
        ids.push(BOS);
        ids.extend(words);
        ids.push(EOS);
        ids.resize(MAX_LEN, PAD);
        Ok(ids)
    }

    /// Decodes ids (special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| Error::Invalid(format!("cannot decode: {e}")))
    }
}
