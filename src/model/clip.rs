//! The CLIP text encoder of SD 2.x: OpenCLIP ViT-H/14's text tower in transformers'
//! `CLIPTextModel` layout (23 layers kept: SD 2 uses the penultimate layer, then
//! `final_layer_norm`). Besides token ids it takes **token embeddings**, so learned soft prompts
//! can be spliced between the embeddings of a text prefix and suffix.
use burn::module::{Module, Param};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

use super::nn::{LayerNorm, Linear, attention, gelu_exact};
use crate::weights::{Init, KeyRewrite, Vb};

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

/// The text encoder.
#[derive(Module, Debug)]
pub struct ClipTextEncoder {
    token_embedding: Param<Tensor<2>>,
    position_embedding: Param<Tensor<2>>,
    layers: Vec<ClipLayer>,
    final_layer_norm: LayerNorm,
}

impl ClipTextEncoder {
    /// Builds the encoder from `vb` (names as transformers' `CLIPTextModel`, without `text_model.`).
    pub fn new(vb: &Vb, c: &ClipConfig) -> Self {
        let e = vb.pp("embeddings");
        Self {
            token_embedding: e.param("token_embedding.weight", [c.vocab_size, c.hidden_size], Init::Normal(0.02)),
            position_embedding: e.param(
                "position_embedding.weight",
                [c.max_position, c.hidden_size],
                Init::Normal(0.01),
            ),
            layers: (0..c.num_layers).map(|i| ClipLayer::new(&vb.pp(format!("encoder.layers.{i}")), c)).collect(),
            final_layer_norm: LayerNorm::new(&vb.pp("final_layer_norm"), c.hidden_size, c.layer_norm_eps),
        }
    }

    /// Token embeddings of `ids` `[B, L]` → `[B, L, hidden]` (no position embedding).
    pub fn embed_tokens(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [b, l] = ids.dims();
        let hidden = self.token_embedding.val().dims()[1];
        self.token_embedding.val().select(0, ids.reshape([b * l])).reshape([b, l, hidden])
    }

    /// Runs the transformer on token embeddings `[B, L, hidden]` (L ≤ 77): adds position
    /// embeddings, causal self-attention layers, final layer norm. Returns `[B, L, hidden]`
    /// (SD 2's conditioning, `last_hidden_state` of the 23-layer model).
    pub fn forward_embeds(&self, embeds: Tensor<3>) -> Tensor<3> {
        let [_, l, _] = embeds.dims();
        let pos = self.position_embedding.val().narrow(0, 0, l).unsqueeze::<3>();
        let mut x = embeds + pos;
        for layer in &self.layers {
            x = layer.forward(x);
        }
        self.final_layer_norm.forward(x)
    }

    /// Runs the encoder on token ids `[B, L]`.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.forward_embeds(self.embed_tokens(ids))
    }
}
