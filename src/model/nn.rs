//! Building blocks shared by the SD 2.1 networks (PyTorch semantics, checkpoint key names).
//!
//! Weights are in device layout (see [`crate::weights`]): linear `[in, out]`, convolution
//! `[O, I·k·k]`; either may be quantized (`QFloat`). A quantized linear weight stays packed (burn's
//! quantized matmul reads it directly); a quantized convolution weight is dequantized for the
//! call and the copy dropped with it.
use burn::module::{Module, Param};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::module::{conv2d, linear};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::weights::{Init, Vb};

/// Largest intermediate tensors (bytes) a computation may create: attention score blocks,
/// feed-forward activations and VAE bands are split to stay below it. Derived from the
/// device's binding limit (WebGPU's default is 128 MiB) with room for the few such tensors an
/// operation holds at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemPlan {
    /// Cap for one attention score block / feed-forward chunk / VAE band, in bytes.
    pub max_block_bytes: usize,
}

impl MemPlan {
    /// For a device whose largest storage binding is `max_binding` bytes.
    pub fn for_binding_limit(max_binding: u64) -> Self {
        let cap = (max_binding / 2).clamp(1 << 20, 512 << 20) as usize;
        Self { max_block_bytes: cap }
    }
    /// WebGPU's default limits (128 MiB per binding).
    pub fn webgpu_default() -> Self {
        Self::for_binding_limit(128 << 20)
    }
    /// The CPU backend: memory is plentiful, large blocks are faster.
    pub fn cpu() -> Self {
        Self { max_block_bytes: 512 << 20 }
    }
    /// How many rows of `row_bytes` fit one block (at least 1).
    pub fn rows(&self, row_bytes: usize) -> usize {
        (self.max_block_bytes / row_bytes.max(1)).max(1)
    }
}

impl Default for MemPlan {
    fn default() -> Self {
        Self::webgpu_default()
    }
}

fn is_quantized<const D: usize>(t: &Tensor<D>) -> bool {
    matches!(t.dtype(), DType::QFloat(_))
}

/// Fully connected layer; weight in device layout `[in, out]` (the checkpoint's `[out, in]`,
/// transposed by the converter, or by the loader for dense checkpoints).
#[derive(Module, Debug)]
pub struct Linear {
    /// `[in, out]`, f32 or quantized.
    pub weight: Param<Tensor<2>>,
    /// `[out]`.
    pub bias: Option<Param<Tensor<1>>>,
}

impl Linear {
    /// Loads `weight` (checkpoint `[out, in]`) and `bias` `[out]` when `bias`.
    pub fn new(vb: &Vb, d_in: usize, d_out: usize, bias: bool) -> Self {
        let std = 1.0 / (d_in as f32).sqrt();
        Self {
            weight: vb.linear_weight("weight", d_out, d_in, Init::Normal(std)),
            bias: bias.then(|| vb.vector("bias", d_out, Init::Zeros)),
        }
    }

    /// `x @ W + b` over the last dimension (a quantized weight stays packed: burn's `linear`
    /// calls its quantized matmul).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        linear(x, self.weight.val(), self.bias.as_ref().map(|b| b.val()))
    }
}

/// 2-D convolution; weight in device layout `[out, in·k·k]` (quantized ones are dequantized
/// per call).
#[derive(Module, Debug)]
pub struct Conv2d {
    /// `[out, in·k·k]`.
    pub weight: Param<Tensor<2>>,
    /// `[out]`.
    pub bias: Param<Tensor<1>>,
    /// Input channels.
    pub c_in: usize,
    /// Kernel side.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Symmetric padding.
    pub padding: usize,
}

impl Conv2d {
    /// Loads a `k`×`k` convolution with bias.
    pub fn new(vb: &Vb, c_in: usize, c_out: usize, k: usize, stride: usize, padding: usize) -> Self {
        let std = 1.0 / ((c_in * k * k) as f32).sqrt();
        Self {
            weight: vb.conv_weight("weight", [c_out, c_in, k, k], Init::Normal(std)),
            bias: vb.vector("bias", c_out, Init::Zeros),
            c_in,
            k,
            stride,
            padding,
        }
    }

    /// The weight as `[out, in, k, k]` f32 (dequantized when stored quantized).
    pub fn weight4(&self) -> Tensor<4> {
        let w = self.weight.val();
        let out = w.dims()[0];
        let w = if is_quantized(&w) { w.dequantize() } else { w };
        w.reshape([out, self.c_in, self.k, self.k])
    }

    /// Applies the convolution to `[N, C, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let opts = ConvOptions::new([self.stride; 2], [self.padding; 2], [1, 1], 1);
        conv2d(x, self.weight4(), Some(self.bias.val()), opts)
    }

    /// Applies the convolution with explicit (top/bottom, left/right) padding.
    pub fn forward_padded(&self, x: Tensor<4>, pad: [(usize, usize); 2]) -> Tensor<4> {
        let opts = ConvOptions::new_with_padding([self.stride; 2], pad, [1, 1], 1);
        conv2d(x, self.weight4(), Some(self.bias.val()), opts)
    }
}

/// Group normalisation over `[N, C, ...]` with per-channel affine.
#[derive(Module, Debug)]
pub struct GroupNorm {
    /// Scale `[C]`.
    pub weight: Param<Tensor<1>>,
    /// Shift `[C]`.
    pub bias: Param<Tensor<1>>,
    /// Number of groups.
    pub groups: usize,
    /// Epsilon.
    pub eps: f64,
}

impl GroupNorm {
    /// Loads `weight`/`bias` for `channels` channels.
    pub fn new(vb: &Vb, groups: usize, channels: usize, eps: f64) -> Self {
        assert!(channels.is_multiple_of(groups), "{channels} channels not divisible into {groups} groups");
        Self {
            weight: vb.vector("weight", channels, Init::Ones),
            bias: vb.vector("bias", channels, Init::Zeros),
            groups,
            eps,
        }
    }

    /// Per-(sample, group) mean and variance of `[N, C, H, W]`, each `[N, G, 1]`.
    pub fn stats(&self, x: Tensor<4>) -> (Tensor<3>, Tensor<3>) {
        let [n, c, h, w] = x.dims();
        let g = x.reshape([n, self.groups, (c / self.groups) * h * w]);
        let (var, mean) = g.var_mean_bias(2);
        (mean, var)
    }

    /// Normalises with given statistics (from [`stats`](Self::stats), or accumulated over bands).
    pub fn apply(&self, x: Tensor<4>, mean: Tensor<3>, var: Tensor<3>) -> Tensor<4> {
        let [n, c, h, w] = x.dims();
        let g = x.reshape([n, self.groups, (c / self.groups) * h * w]);
        let g = (g - mean) / (var + self.eps).sqrt();
        let x = g.reshape([n, c, h, w]);
        x * self.weight.val().reshape([1, c, 1, 1]) + self.bias.val().reshape([1, c, 1, 1])
    }

    /// Normalises `[N, C, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let (mean, var) = self.stats(x.clone());
        self.apply(x, mean, var)
    }
}

/// Layer normalisation over the last dimension.
#[derive(Module, Debug)]
pub struct LayerNorm {
    /// Scale.
    pub weight: Param<Tensor<1>>,
    /// Shift.
    pub bias: Param<Tensor<1>>,
    /// Epsilon.
    pub eps: f64,
}

impl LayerNorm {
    /// Loads `weight`/`bias` of size `dim`.
    pub fn new(vb: &Vb, dim: usize, eps: f64) -> Self {
        Self { weight: vb.vector("weight", dim, Init::Ones), bias: vb.vector("bias", dim, Init::Zeros), eps }
    }

    /// Normalises over the last dimension of `[B, L, D]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let (var, mean) = x.clone().var_mean_bias(2);
        let x = (x - mean) / (var + self.eps).sqrt();
        x * self.weight.val().unsqueeze::<3>() + self.bias.val().unsqueeze::<3>()
    }
}

/// The masked-out score of causal attention: finite (an f16-safe value), and far enough below
/// any real score that its softmax weight underflows to exactly zero.
pub const MASKED_SCORE: f64 = -1.0e4;

/// Scaled dot-product attention of a block of queries: `q` `[B, Lq, heads·d]` (queries
/// `q_offset..q_offset+Lq` of the sequence) against all of `k`, `v` `[B, Lk, heads·d]`.
///
/// Scores, softmax and the weighted sum are in f32 (which also satisfies SD 2.1's
/// `upcast_attention`); with `causal`, query `i` sees keys `0..=i`.
pub fn attention_block(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    heads: usize,
    causal: bool,
    q_offset: usize,
) -> Tensor<3> {
    let [b, lq, dim] = q.dims();
    let lk = k.dims()[1];
    let d = dim / heads;
    let split = |t: Tensor<3>, l: usize| t.reshape([b, l, heads, d]).swap_dims(1, 2);
    let (q, k, v) = (split(q, lq), split(k, lk), split(v, lk));
    let mut scores = q.matmul(k.swap_dims(2, 3)) * (1.0 / (d as f64).sqrt());
    if causal {
        // Key j is masked for query i when j > q_offset + i.
        let mask = Tensor::<2, burn::tensor::Bool>::tril_mask([lq, lk], q_offset as i64, &scores.device());
        scores = scores.mask_fill(mask.unsqueeze::<4>().expand([b, heads, lq, lk]), MASKED_SCORE);
    }
    let out = softmax(scores, 3).matmul(v);
    out.swap_dims(1, 2).reshape([b, lq, dim])
}

/// Attention over whole sequences in one block (small sequences; tests).
pub fn attention(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize, causal: bool) -> Tensor<3> {
    attention_block(q, k, v, heads, causal, 0)
}

/// Query rows per attention block so that one `[B, heads, rows, Lk]` f32 score block stays
/// within the plan.
pub fn attention_rows(plan: &MemPlan, b: usize, heads: usize, lk: usize) -> usize {
    plan.rows(b * heads * lk * 4)
}

/// Attention over query blocks (inference: no graph is kept, so memory is one block).
pub fn attention_chunked(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    heads: usize,
    causal: bool,
    plan: &MemPlan,
) -> Tensor<3> {
    let [b, lq, _] = q.dims();
    let lk = k.dims()[1];
    let rows = attention_rows(plan, b, heads, lk);
    if rows >= lq {
        return attention_block(q, k, v, heads, causal, 0);
    }
    let parts: Vec<Tensor<3>> = (0..lq)
        .step_by(rows)
        .map(|s| {
            let n = rows.min(lq - s);
            attention_block(q.clone().narrow(1, s, n), k.clone(), v.clone(), heads, causal, s)
        })
        .collect();
    Tensor::cat(parts, 1)
}

/// GELU (exact, erf-based), as PyTorch's default.
pub fn gelu_exact<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    gelu(x)
}

/// Nearest-neighbour 2× upsampling of `[N, C, H, W]`.
pub fn upsample_nearest2x(x: Tensor<4>) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h, 1, w, 1]).expand([n, c, h, 2, w, 2]).reshape([n, c, 2 * h, 2 * w])
}

/// Sinusoidal timestep embedding as diffusers' `get_timestep_embedding`
/// (`flip_sin_to_cos`, `downscale_freq_shift`, max period 10000), computed on the host.
pub fn timestep_embedding(timesteps: &[f32], dim: usize, flip_sin_to_cos: bool, shift: f32) -> Vec<f32> {
    let half = dim / 2;
    let mut out = Vec::with_capacity(timesteps.len() * dim);
    for &t in timesteps {
        let args: Vec<f32> = (0..half)
            .map(|i| {
                let exponent = -(10000f32).ln() * i as f32 / (half as f32 - shift);
                t * exponent.exp()
            })
            .collect();
        let (sin, cos): (Vec<f32>, Vec<f32>) = args.iter().map(|a| (a.sin(), a.cos())).unzip();
        if flip_sin_to_cos {
            out.extend(cos);
            out.extend(sin);
        } else {
            out.extend(sin);
            out.extend(cos);
        }
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    out
}
