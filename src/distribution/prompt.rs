//! The learnable prompt set: K soft prompts of M token embeddings, spliced into a text
//! template and passed through the frozen text encoder (paper §3, Algorithm 1).
use burn::tensor::Tensor;

use super::{PromptGaussian, SigmaEstimate};
use crate::model::{ClipTextEncoder, StableDiffusion};
use crate::tokenizer::{BOS, ClipTokenizer, EOS, MAX_LEN, PAD};
use crate::{Error, Result};

/// A text template with one `{}` where the learned tokens go, e.g. `"a watercolor of {} at night"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    /// Text before `{}` (trimmed).
    pub prefix: String,
    /// Text after `{}` (trimmed).
    pub suffix: String,
}

impl Template {
    /// Parses a template; it must contain exactly one `{}`.
    pub fn parse(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split("{}").collect();
        if parts.len() != 2 {
            return Err(Error::Invalid(format!(
                "template {s:?} must contain exactly one {{}} (where the learned tokens go)"
            )));
        }
        Ok(Self { prefix: parts[0].trim().to_string(), suffix: parts[1].trim().to_string() })
    }

    /// The bare template `{}`.
    pub fn bare() -> Self {
        Self { prefix: String::new(), suffix: String::new() }
    }
}

impl std::fmt::Display for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = [self.prefix.as_str(), "{}", self.suffix.as_str()]
            .iter()
            .filter(|p| !p.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        f.write_str(&s)
    }
}

/// Token layout of one prompt: `[BOS] prefix… [V₁…V_M] suffix… [EOS] ! ! …` (77 positions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptLayout {
    /// Token ids; the M slot positions hold `PAD` placeholders (replaced by V).
    pub ids: Vec<u32>,
    /// First slot position.
    pub slot_start: usize,
    /// Number of learned tokens M.
    pub m: usize,
    /// Position of the EOS token (its features feed the orthogonality loss).
    pub eos: usize,
}

impl PromptLayout {
    /// Lays out `template` around `m` learned tokens.
    pub fn new(tokenizer: &ClipTokenizer, template: &Template, m: usize) -> Result<Self> {
        let pre = tokenizer.encode_words(&template.prefix)?;
        let suf = tokenizer.encode_words(&template.suffix)?;
        let used = 1 + pre.len() + m + suf.len() + 1;
        if m == 0 || used > MAX_LEN {
            return Err(Error::Invalid(format!(
                "template \"{template}\" with {m} learned tokens needs {used} tokens; the text encoder takes {MAX_LEN}"
            )));
        }
        let mut ids = Vec::with_capacity(MAX_LEN);
        ids.push(BOS);
        ids.extend(&pre);
        let slot_start = ids.len();
        ids.extend(std::iter::repeat_n(PAD, m));
        ids.extend(&suf);
        let eos = ids.len();
        ids.push(EOS);
        ids.resize(MAX_LEN, PAD);
        Ok(Self { ids, slot_start, m, eos })
    }

    /// Token embeddings of K prompts `[K, 77, H]`: the template's embeddings (gathered on the
    /// host) with the learned tokens `v` `[K, M, H]` in the slot positions. Gradients flow into
    /// `v` only.
    pub fn embed(&self, encoder: &ClipTextEncoder, v: Tensor<3>) -> Result<Tensor<3>> {
        let [k, m, h] = v.dims();
        if m != self.m {
            return Err(Error::Invalid(format!("prompt set has M = {m}, the layout expects {}", self.m)));
        }
        let base = encoder.embed_tokens(std::slice::from_ref(&self.ids), &v.device())?;
        let mut parts = vec![];
        if self.slot_start > 0 {
            parts.push(base.clone().narrow(1, 0, self.slot_start).expand([k, self.slot_start, h]));
        }
        parts.push(v);
        let post_len = MAX_LEN - self.slot_start - m;
        parts.push(base.narrow(1, self.slot_start + m, post_len).expand([k, post_len, h]));
        Ok(Tensor::cat(parts, 1))
    }

    /// Encodes K prompts: `[K, 77, H]` text-encoder outputs cₖ = E(Pₖ).
    pub fn encode(&self, encoder: &ClipTextEncoder, v: Tensor<3>) -> Result<Tensor<3>> {
        Ok(encoder.forward_embeds(self.embed(encoder, v)?))
    }
}

/// Encodes prompts `v` `[K, M, H]` under `template` and fits μ, σ (the distribution a `.ddist`
/// file describes; another template gives text-guided editing).
pub fn fit_gaussian(
    sd: &StableDiffusion,
    tokenizer: &ClipTokenizer,
    template: &Template,
    v: Tensor<3>,
    estimate: SigmaEstimate,
) -> Result<PromptGaussian> {
    let layout = PromptLayout::new(tokenizer, template, v.dims()[1])?;
    Ok(PromptGaussian::fit_with(layout.encode(&sd.text, v)?, estimate))
}

/// Initial prompt embeddings V `[K, M, H]`: N(0, 0.02) from `rng`, or, with `init`, the token
/// embedding of a word repeated over the M tokens plus that noise.
pub fn init_prompts(k: usize, m: usize, hidden: usize, rng: &mut crate::rng::Rng, init: Option<&[f32]>) -> Vec<f32> {
    let mut v: Vec<f32> = rng.normal_vec(k * m * hidden).into_iter().map(|x| x * 0.02).collect();
    if let Some(word) = init {
        for (i, x) in v.iter_mut().enumerate() {
            *x += word[i % hidden];
        }
    }
    v
}

/// Host copy of a word's (first token's) embedding row (for `init_prompts` from a word).
pub fn token_embedding_row(encoder: &ClipTextEncoder, tokenizer: &ClipTokenizer, word: &str) -> Result<Vec<f32>> {
    let ids = tokenizer.encode_words(word)?;
    let Some(&id) = ids.first() else {
        return Err(Error::Invalid(format!("init word {word:?} has no tokens")));
    };
    encoder.token_table().rows(&[id as usize])
}
