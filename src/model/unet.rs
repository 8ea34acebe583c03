//! `UNet2DConditionModel` of SD 2.x (diffusers layout): linear `proj_in`/`proj_out`, GEGLU
//! feed-forward, a number of attention heads per block, sinusoidal timestep embedding, and
//! cross-attention on the text encoder's hidden states.
use burn::module::Module;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::nn::{Conv2d, GroupNorm, LayerNorm, Linear, attention, gelu_exact, timestep_embedding, upsample_nearest2x};
use crate::backend::tensor;
use crate::weights::Vb;

/// What the UNet predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// The added noise ε (SD 2.1-base).
    Epsilon,
    /// The velocity v = α·ε − σ·x₀ (SD 2.1, 768 px).
    VPrediction,
}

/// UNet configuration (diffusers names where they exist).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UNetConfig {
    /// Latent channels in/out.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Channels of each resolution level.
    pub block_out_channels: Vec<usize>,
    /// Whether each down level has cross-attention (up levels mirror it).
    pub cross_attention: Vec<bool>,
    /// Attention heads per level (diffusers' `attention_head_dim` on SD 2.x).
    pub heads: Vec<usize>,
    /// Resnets per down level (up levels have one more).
    pub layers_per_block: usize,
    /// Width of the text conditioning.
    pub cross_attention_dim: usize,
    /// Group norm groups.
    pub norm_num_groups: usize,
    /// Group norm epsilon of the resnets.
    pub norm_eps: f64,
    /// Compute attention in f32 (SD 2.1 768 needs it in f16; f32 here anyway).
    pub upcast_attention: bool,
    /// Latent side of the native resolution (96 for 768 px, 64 for 512 px).
    pub sample_size: usize,
    /// What the model predicts.
    pub prediction: Prediction,
}

impl UNetConfig {
    /// SD 2.1 (768 px, v-prediction).
    pub fn sd21() -> Self {
        Self {
            in_channels: 4,
            out_channels: 4,
            block_out_channels: vec![320, 640, 1280, 1280],
            cross_attention: vec![true, true, true, false],
            heads: vec![5, 10, 20, 20],
            layers_per_block: 2,
            cross_attention_dim: 1024,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            upcast_attention: true,
            sample_size: 96,
            prediction: Prediction::VPrediction,
        }
    }

    /// SD 2.1-base (512 px, epsilon).
    pub fn sd21_base() -> Self {
        Self { upcast_attention: false, sample_size: 64, prediction: Prediction::Epsilon, ..Self::sd21() }
    }

    /// The tiny architecture of the parity fixtures.
    pub fn tiny() -> Self {
        Self {
            in_channels: 4,
            out_channels: 4,
            block_out_channels: vec![32, 64],
            cross_attention: vec![true, false],
            heads: vec![2, 4],
            layers_per_block: 2,
            cross_attention_dim: 32,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            upcast_attention: true,
            sample_size: 8,
            prediction: Prediction::VPrediction,
        }
    }
}

/// `ResnetBlock2D` with timestep conditioning (`temb` may be absent, as in the VAE).
#[derive(Module, Debug)]
pub struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    /// Loads a block `c_in → c_out`; `temb_dim` is the timestep embedding width, if any.
    pub fn new(vb: &Vb, c_in: usize, c_out: usize, temb_dim: Option<usize>, groups: usize, eps: f64) -> Self {
        Self {
            norm1: GroupNorm::new(&vb.pp("norm1"), groups, c_in, eps),
            conv1: Conv2d::new(&vb.pp("conv1"), c_in, c_out, 3, 1, 1),
            time_emb_proj: temb_dim.map(|t| Linear::new(&vb.pp("time_emb_proj"), t, c_out, true)),
            norm2: GroupNorm::new(&vb.pp("norm2"), groups, c_out, eps),
            conv2: Conv2d::new(&vb.pp("conv2"), c_out, c_out, 3, 1, 1),
            conv_shortcut: (c_in != c_out).then(|| Conv2d::new(&vb.pp("conv_shortcut"), c_in, c_out, 1, 1, 0)),
        }
    }

    /// `x` `[N, C, H, W]`, `temb` `[N, T]` (already through SiLU).
    pub fn forward(&self, x: Tensor<4>, temb: Option<&Tensor<2>>) -> Tensor<4> {
        let mut h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        if let (Some(proj), Some(t)) = (&self.time_emb_proj, temb) {
            h = h + proj.forward(t.clone()).unsqueeze_dims::<4>(&[2, 3]);
        }
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        let x = match &self.conv_shortcut {
            Some(c) => c.forward(x),
            None => x,
        };
        x + h
    }
}

/// diffusers `Attention` as used by the UNet's transformer blocks.
#[derive(Module, Debug)]
pub struct CrossAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
}

impl CrossAttention {
    fn new(vb: &Vb, dim: usize, context_dim: usize, heads: usize) -> Self {
        Self {
            to_q: Linear::new(&vb.pp("to_q"), dim, dim, false),
            to_k: Linear::new(&vb.pp("to_k"), context_dim, dim, false),
            to_v: Linear::new(&vb.pp("to_v"), context_dim, dim, false),
            to_out: Linear::new(&vb.pp("to_out.0"), dim, dim, true),
            heads,
        }
    }

    fn forward(&self, x: Tensor<3>, context: Option<&Tensor<3>>) -> Tensor<3> {
        let ctx = context.cloned().unwrap_or_else(|| x.clone());
        let q = self.to_q.forward(x);
        let k = self.to_k.forward(ctx.clone());
        let v = self.to_v.forward(ctx);
        self.to_out.forward(attention(q, k, v, self.heads, false))
    }
}

/// `BasicTransformerBlock`: self-attention, cross-attention, GEGLU feed-forward.
#[derive(Module, Debug)]
pub struct TransformerBlock {
    norm1: LayerNorm,
    attn1: CrossAttention,
    norm2: LayerNorm,
    attn2: CrossAttention,
    norm3: LayerNorm,
    ff_proj: Linear,
    ff_out: Linear,
}

impl TransformerBlock {
    fn new(vb: &Vb, dim: usize, context_dim: usize, heads: usize) -> Self {
        let inner = 4 * dim;
        Self {
            norm1: LayerNorm::new(&vb.pp("norm1"), dim, 1e-5),
            attn1: CrossAttention::new(&vb.pp("attn1"), dim, dim, heads),
            norm2: LayerNorm::new(&vb.pp("norm2"), dim, 1e-5),
            attn2: CrossAttention::new(&vb.pp("attn2"), dim, context_dim, heads),
            norm3: LayerNorm::new(&vb.pp("norm3"), dim, 1e-5),
            ff_proj: Linear::new(&vb.pp("ff.net.0.proj"), dim, 2 * inner, true),
            ff_out: Linear::new(&vb.pp("ff.net.2"), inner, dim, true),
        }
    }

    fn forward(&self, x: Tensor<3>, context: &Tensor<3>) -> Tensor<3> {
        let x = x.clone() + self.attn1.forward(self.norm1.forward(x), None);
        let x = x.clone() + self.attn2.forward(self.norm2.forward(x), Some(context));
        let h = self.ff_proj.forward(self.norm3.forward(x.clone()));
        let [hidden, gate] = <[Tensor<3>; 2]>::try_from(h.chunk(2, 2)).expect("two chunks");
        x + self.ff_out.forward(hidden * gelu_exact(gate))
    }
}

/// `Transformer2DModel` with linear projections (SD 2.x).
#[derive(Module, Debug)]
pub struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Linear,
    block: TransformerBlock,
    proj_out: Linear,
}

impl SpatialTransformer {
    fn new(vb: &Vb, c: usize, heads: usize, cfg: &UNetConfig) -> Self {
        Self {
            norm: GroupNorm::new(&vb.pp("norm"), cfg.norm_num_groups, c, 1e-6),
            proj_in: Linear::new(&vb.pp("proj_in"), c, c, true),
            block: TransformerBlock::new(&vb.pp("transformer_blocks.0"), c, cfg.cross_attention_dim, heads),
            proj_out: Linear::new(&vb.pp("proj_out"), c, c, true),
        }
    }

    fn forward(&self, x: Tensor<4>, context: &Tensor<3>) -> Tensor<4> {
        let [n, c, h, w] = x.dims();
        let t = self.norm.forward(x.clone()).reshape([n, c, h * w]).swap_dims(1, 2);
        let t = self.proj_out.forward(self.block.forward(self.proj_in.forward(t), context));
        x + t.swap_dims(1, 2).reshape([n, c, h, w])
    }
}

/// One level of the down or up path.
#[derive(Module, Debug)]
pub struct Level {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<SpatialTransformer>,
    /// Downsampling (stride-2 conv) or upsampling (nearest 2× then conv).
    sampler: Option<Conv2d>,
}

/// The UNet.
#[derive(Module, Debug)]
pub struct UNet {
    time_linear_1: Linear,
    time_linear_2: Linear,
    conv_in: Conv2d,
    down: Vec<Level>,
    mid_resnet_1: ResnetBlock,
    mid_attention: SpatialTransformer,
    mid_resnet_2: ResnetBlock,
    up: Vec<Level>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    #[module(skip)]
    time_dim: usize,
}

/// Intermediate activations of a forward pass (for parity tests).
pub struct UNetTrace {
    /// Timestep embedding after `time_embedding`.
    pub temb: Tensor<2>,
    /// After `conv_in`.
    pub conv_in: Tensor<4>,
    /// After each down block.
    pub down: Vec<Tensor<4>>,
    /// After the mid block.
    pub mid: Tensor<4>,
}

impl UNet {
    /// Builds the UNet from `vb` (diffusers names).
    pub fn new(vb: &Vb, cfg: &UNetConfig) -> Self {
        let boc = &cfg.block_out_channels;
        let n = boc.len();
        let (g, eps) = (cfg.norm_num_groups, cfg.norm_eps);
        let tdim = 4 * boc[0];
        let mut down = vec![];
        let mut out_c = boc[0];
        for (i, &c) in boc.iter().enumerate() {
            let in_c = out_c;
            out_c = c;
            let vbl = vb.pp(format!("down_blocks.{i}"));
            let resnets = (0..cfg.layers_per_block)
                .map(|j| {
                    ResnetBlock::new(
                        &vbl.pp(format!("resnets.{j}")),
                        if j == 0 { in_c } else { out_c },
                        out_c,
                        Some(tdim),
                        g,
                        eps,
                    )
                })
                .collect();
            let attentions = if cfg.cross_attention[i] {
                (0..cfg.layers_per_block)
                    .map(|j| SpatialTransformer::new(&vbl.pp(format!("attentions.{j}")), out_c, cfg.heads[i], cfg))
                    .collect()
            } else {
                vec![]
            };
            let sampler = (i + 1 < n).then(|| Conv2d::new(&vbl.pp("downsamplers.0.conv"), out_c, out_c, 3, 2, 1));
            down.push(Level { resnets, attentions, sampler });
        }
        let top = boc[n - 1];
        let mid = vb.pp("mid_block");
        let mid_resnet_1 = ResnetBlock::new(&mid.pp("resnets.0"), top, top, Some(tdim), g, eps);
        let mid_attention = SpatialTransformer::new(&mid.pp("attentions.0"), top, cfg.heads[n - 1], cfg);
        let mid_resnet_2 = ResnetBlock::new(&mid.pp("resnets.1"), top, top, Some(tdim), g, eps);

        let rev: Vec<usize> = boc.iter().rev().copied().collect();
        let mut up = vec![];
        let mut out_c = rev[0];
        for (i, &c) in rev.iter().enumerate() {
            let prev_c = out_c;
            out_c = c;
            let in_c = rev[(i + 1).min(n - 1)];
            let level = n - 1 - i;
            let vbl = vb.pp(format!("up_blocks.{i}"));
            let layers = cfg.layers_per_block + 1;
            let resnets = (0..layers)
                .map(|j| {
                    let skip = if j == layers - 1 { in_c } else { out_c };
                    let res_in = if j == 0 { prev_c } else { out_c };
                    ResnetBlock::new(&vbl.pp(format!("resnets.{j}")), res_in + skip, out_c, Some(tdim), g, eps)
                })
                .collect();
            let attentions = if cfg.cross_attention[level] {
                (0..layers)
                    .map(|j| SpatialTransformer::new(&vbl.pp(format!("attentions.{j}")), out_c, cfg.heads[level], cfg))
                    .collect()
            } else {
                vec![]
            };
            let sampler = (i + 1 < n).then(|| Conv2d::new(&vbl.pp("upsamplers.0.conv"), out_c, out_c, 3, 1, 1));
            up.push(Level { resnets, attentions, sampler });
        }
        Self {
            time_linear_1: Linear::new(&vb.pp("time_embedding.linear_1"), boc[0], tdim, true),
            time_linear_2: Linear::new(&vb.pp("time_embedding.linear_2"), tdim, tdim, true),
            conv_in: Conv2d::new(&vb.pp("conv_in"), cfg.in_channels, boc[0], 3, 1, 1),
            down,
            mid_resnet_1,
            mid_attention,
            mid_resnet_2,
            up,
            conv_norm_out: GroupNorm::new(&vb.pp("conv_norm_out"), g, boc[0], eps),
            conv_out: Conv2d::new(&vb.pp("conv_out"), boc[0], cfg.out_channels, 3, 1, 1),
            time_dim: boc[0],
        }
    }

    /// The timestep embedding `[N, 4·C₀]` of `timesteps` (one per batch element).
    pub fn time_embedding(&self, timesteps: &[f32], device: &Device) -> Tensor<2> {
        let proj = timestep_embedding(timesteps, self.time_dim, true, 0.0);
        let t = tensor(proj, [timesteps.len(), self.time_dim], device);
        self.time_linear_2.forward(silu(self.time_linear_1.forward(t)))
    }

    /// Predicts noise (or v) for latents `x` `[N, 4, h, w]` at `timesteps` (length N) under the
    /// text conditioning `context` `[N, 77, D]`.
    pub fn forward(&self, x: Tensor<4>, timesteps: &[f32], context: &Tensor<3>) -> Tensor<4> {
        self.forward_traced(x, timesteps, context).0
    }

    /// [`forward`](Self::forward), also returning intermediate activations.
    pub fn forward_traced(&self, x: Tensor<4>, timesteps: &[f32], context: &Tensor<3>) -> (Tensor<4>, UNetTrace) {
        let temb = self.time_embedding(timesteps, &x.device());
        let temb_act = silu(temb.clone());
        let mut h = self.conv_in.forward(x);
        let conv_in = h.clone();
        let mut skips = vec![h.clone()];
        let mut down_trace = vec![];
        for level in &self.down {
            for (j, resnet) in level.resnets.iter().enumerate() {
                h = resnet.forward(h, Some(&temb_act));
                if let Some(attn) = level.attentions.get(j) {
                    h = attn.forward(h, context);
                }
                skips.push(h.clone());
            }
            if let Some(conv) = &level.sampler {
                h = conv.forward(h);
                skips.push(h.clone());
            }
            down_trace.push(h.clone());
        }
        h = self.mid_resnet_1.forward(h, Some(&temb_act));
        h = self.mid_attention.forward(h, context);
        h = self.mid_resnet_2.forward(h, Some(&temb_act));
        let mid = h.clone();
        for level in &self.up {
            for (j, resnet) in level.resnets.iter().enumerate() {
                let skip = skips.pop().expect("skip connection");
                h = resnet.forward(Tensor::cat(vec![h, skip], 1), Some(&temb_act));
                if let Some(attn) = level.attentions.get(j) {
                    h = attn.forward(h, context);
                }
            }
            if let Some(conv) = &level.sampler {
                h = conv.forward(upsample_nearest2x(h));
            }
        }
        let out = self.conv_out.forward(silu(self.conv_norm_out.forward(h)));
        (out, UNetTrace { temb, conv_in, down: down_trace, mid })
    }
}
