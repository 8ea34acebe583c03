//! The CLIP text encoder of SD 2.x: OpenCLIP ViT-H/14's text tower in transformers'
//! `CLIPTextModel` layout (23 layers kept: SD 2 uses the penultimate layer, then
//! `final_layer_norm`). Besides token ids it takes **token embeddings**, so learned soft prompts
//! can be spliced between the embeddings of a text prefix and suffix.
//!
//! The token-embedding table (49408 × 1024, 202 MB in f32: more than WebGPU's default binding
//! limit) stays on the host as a [`HostTable`]; the rows of a prompt are gathered there and only
//! `[B, L, hidden]` goes to the device. The transformer is a [`Tape`] with one piece per layer,
//! so training walks back layer by layer.
use burn::module::{Module, Param};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::nn::{LayerNorm, Linear, attention, gelu_exact};
use super::tape::{Observer, Slot, Tape};
use crate::weights::{HostTable, Init, KeyRewrite, Vb};
use crate::{Error, Result};

/// Activation of the MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact GELU (OpenCLIP / SD 2.x).
    Gelu,
    /// `x * sigmoid(1.702 x)` (OpenAI CLIP / SD 1.x).
    QuickGelu,
}

/// Text encoder configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// MLP size.
    pub intermediate_size: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Transformer layers.
    pub num_layers: usize,
    /// Sequence length.
    pub max_position: usize,
    /// MLP activation.
    pub activation: Activation,
    /// Layer norm epsilon.
    pub layer_norm_eps: f64,
}

impl ClipConfig {
    /// SD 2.1 (768 px, v-prediction): OpenCLIP ViT-H/14, 23 layers kept.
    pub fn sd21() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 1024,
            intermediate_size: 4096,
            num_heads: 16,
            num_layers: 23,
            max_position: 77,
            activation: Activation::Gelu,
            layer_norm_eps: 1e-5,
        }
    }

    /// SD 2.1-base (512 px, epsilon): the same text encoder.
    pub fn sd21_base() -> Self {
        Self::sd21()
    }

    /// The tiny architecture of the parity fixtures (`tests/fixtures/tiny`).
    pub fn tiny() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 32,
            intermediate_size: 64,
            num_heads: 4,
            num_layers: 2,
            max_position: 77,
            activation: Activation::Gelu,
            layer_norm_eps: 1e-5,
        }
    }

    /// Key rewrites for checkpoints: real SD files prefix `text_model.`, transformers 5 does not.
    pub fn key_rewrites() -> &'static [KeyRewrite] {
        &[KeyRewrite::StripPrefix("text_model."), KeyRewrite::Ignore("embeddings.position_ids")]
    }
}

/// Self-attention of one layer.
#[derive(Module, Debug)]
pub struct ClipAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
}

impl ClipAttention {
    fn new(vb: &Vb, c: &ClipConfig) -> Self {
        let h = c.hidden_size;
        Self {
            q_proj: Linear::new(&vb.pp("q_proj"), h, h, true),
            k_proj: Linear::new(&vb.pp("k_proj"), h, h, true),
            v_proj: Linear::new(&vb.pp("v_proj"), h, h, true),
            out_proj: Linear::new(&vb.pp("out_proj"), h, h, true),
            heads: c.num_heads,
        }
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let q = self.q_proj.forward(x.clone());
        let k = self.k_proj.forward(x.clone());
        let v = self.v_proj.forward(x);
        self.out_proj.forward(attention(q, k, v, self.heads, true))
    }
}

/// One pre-norm transformer layer.
#[derive(Module, Debug)]
pub struct ClipLayer {
    self_attn: ClipAttention,
    layer_norm1: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    layer_norm2: LayerNorm,
    #[module(skip)]
    activation: Activation,
}

impl ClipLayer {
    fn new(vb: &Vb, c: &ClipConfig) -> Self {
        Self {
            self_attn: ClipAttention::new(&vb.pp("self_attn"), c),
            layer_norm1: LayerNorm::new(&vb.pp("layer_norm1"), c.hidden_size, c.layer_norm_eps),
            fc1: Linear::new(&vb.pp("mlp.fc1"), c.hidden_size, c.intermediate_size, true),
            fc2: Linear::new(&vb.pp("mlp.fc2"), c.intermediate_size, c.hidden_size, true),
            layer_norm2: LayerNorm::new(&vb.pp("layer_norm2"), c.hidden_size, c.layer_norm_eps),
            activation: c.activation,
        }
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x));
        let h = self.fc1.forward(self.layer_norm2.forward(x.clone()));
        let h = match self.activation {
            Activation::Gelu => gelu_exact(h),
            Activation::QuickGelu => h.clone() * sigmoid(h * 1.702),
        };
        x + self.fc2.forward(h)
    }
}

/// The slots of a text-encoder tape.
#[derive(Clone, Copy, Debug)]
pub struct ClipSlots {
    /// Token embeddings `[B, L, hidden]` (input).
    pub embeds: Slot,
    /// The output `[B, L, hidden]`.
    pub out: Slot,
}

/// The text encoder.
#[derive(Module, Debug)]
pub struct ClipTextEncoder {
    #[module(skip)]
    token_embedding: HostTable,
    position_embedding: Param<Tensor<2>>,
    layers: Vec<ClipLayer>,
    final_layer_norm: LayerNorm,
}

impl ClipTextEncoder {
    /// Builds the encoder from `vb` (names as transformers' `CLIPTextModel`, without `text_model.`).
    pub fn new(vb: &Vb, c: &ClipConfig) -> Self {
        let e = vb.pp("embeddings");
        Self {
            token_embedding: e.host_table("token_embedding.weight", [c.vocab_size, c.hidden_size], Init::Normal(0.02)),
            position_embedding: e.matrix(
                "position_embedding.weight",
                [c.max_position, c.hidden_size],
                Init::Normal(0.01),
            ),
            layers: (0..c.num_layers).map(|i| ClipLayer::new(&vb.pp(format!("encoder.layers.{i}")), c)).collect(),
            final_layer_norm: LayerNorm::new(&vb.pp("final_layer_norm"), c.hidden_size, c.layer_norm_eps),
        }
    }

    /// The host-side token-embedding table.
    pub fn token_table(&self) -> &HostTable {
        &self.token_embedding
    }

    /// Token embeddings of `ids` (B sequences of equal length L) → `[B, L, hidden]`, gathered on
    /// the host and uploaded to `device`.
    pub fn embed_tokens(&self, ids: &[Vec<u32>], device: &Device) -> Result<Tensor<3>> {
        let l = ids.first().map_or(0, |s| s.len());
        if ids.iter().any(|s| s.len() != l) {
            return Err(Error::Invalid("token sequences of different lengths".into()));
        }
        let flat: Vec<usize> = ids.iter().flatten().map(|&i| i as usize).collect();
        let hidden = self.token_embedding.shape[1];
        let rows = self.token_embedding.rows(&flat)?;
        Ok(crate::backend::tensor(rows, [ids.len(), l, hidden], device))
    }

    /// The transformer as a tape: position embeddings, one piece per layer, final layer norm.
    pub fn tape(&self, len: usize) -> (Tape<'_>, ClipSlots) {
        let mut tape = Tape::new("text");
        let embeds = tape.input();
        let mut x = tape.piece1("embeddings", &[embeds], move |v| {
            let e = v[0].t3();
            (e + self.position_embedding.val().narrow(0, 0, len).unsqueeze::<3>()).into()
        });
        for (i, layer) in self.layers.iter().enumerate() {
            x = tape.piece1(format!("layer{i}"), &[x], move |v| layer.forward(v[0].t3()).into());
        }
        let out = tape.piece1("final_layer_norm", &[x], move |v| self.final_layer_norm.forward(v[0].t3()).into());
        (tape, ClipSlots { embeds, out })
    }

    /// Runs the transformer on token embeddings `[B, L, hidden]` (L ≤ 77): adds position
    /// embeddings, causal self-attention layers, final layer norm. Returns `[B, L, hidden]`
    /// (SD 2's conditioning, `last_hidden_state` of the 23-layer model).
    pub fn forward_embeds(&self, embeds: Tensor<3>) -> Tensor<3> {
        self.forward_observed(embeds, &mut ())
    }

    /// [`forward_embeds`](Self::forward_embeds) with an observer.
    pub fn forward_observed(&self, embeds: Tensor<3>, obs: &mut dyn Observer) -> Tensor<3> {
        let (tape, s) = self.tape(embeds.dims()[1]);
        let mut vals = tape.forward(vec![(s.embeds, embeds.into())], false, &[s.out], obs);
        vals.take(s.out).expect("output").t3()
    }

    /// Block-wise vector–Jacobian product: the output for `embeds` and
    /// ∂⟨output, `g_out`⟩/∂embeds, walking back layer by layer.
    pub fn embeds_vjp(
        &self,
        embeds: Tensor<3>,
        g_out: impl FnOnce(&Tensor<3>) -> Tensor<3>,
        obs: &mut dyn Observer,
    ) -> Result<(Tensor<3>, Tensor<3>)> {
        let (tape, s) = self.tape(embeds.dims()[1]);
        let vals = tape.forward(vec![(s.embeds, embeds.into())], true, &[], obs);
        let out = vals.get(s.out).expect("kept").t3();
        let g = g_out(&out);
        let grads = tape.backward(vals, vec![(s.out, g.into())], &[s.embeds], obs)?;
        let g = grads
            .into_iter()
            .next()
            .flatten()
            .ok_or_else(|| Error::Device("no gradient reached the embeddings".into()))?;
        Ok((out, g.t3()))
    }

    /// Runs the encoder on token ids (B sequences of equal length).
    pub fn forward(&self, ids: &[Vec<u32>], device: &Device) -> Result<Tensor<3>> {
        Ok(self.forward_embeds(self.embed_tokens(ids, device)?))
    }
}
