//! Building blocks shared by the SD 2.1 networks (PyTorch semantics, checkpoint key names).
use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::module::{conv2d, linear};
use burn::tensor::ops::ConvOptions;

use crate::weights::{Init, Vb};

/// Fully connected layer; weight stored as `[in, out]` (the checkpoint's `[out, in]`, transposed).
#[derive(Module, Debug)]
pub struct Linear {
    /// `[in, out]`.
    pub weight: Param<Tensor<2>>,
    /// `[out]`.
    pub bias: Option<Param<Tensor<1>>>,
}

impl Linear {
    /// Loads `weight` `[out, in]` (and `bias` `[out]` when `bias`).
    pub fn new(vb: &Vb, d_in: usize, d_out: usize, bias: bool) -> Self {
        let std = 1.0 / (d_in as f32).sqrt();
        // Transposed on the host once, so every forward runs a plain matmul.
        let w = vb.tensor_transposed("weight", [d_out, d_in], Init::Normal(std));
        Self {
            weight: Param::from_tensor(w).set_require_grad(false),
            bias: bias.then(|| vb.param("bias", [d_out], Init::Zeros)),
        }
    }

    /// `x @ W + b` over the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        linear(x, self.weight.val(), self.bias.as_ref().map(|b| b.val()))
    }
}

/// 2-D convolution, PyTorch layout `[out, in, k, k]`.
#[derive(Module, Debug)]
pub struct Conv2d {
    /// `[out, in, k, k]`.
    pub weight: Param<Tensor<4>>,
    /// `[out]`.
    pub bias: Param<Tensor<1>>,
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
            weight: vb.param("weight", [c_out, c_in, k, k], Init::Normal(std)),
            bias: vb.param("bias", [c_out], Init::Zeros),
            stride,
            padding,
        }
    }

    /// Applies the convolution to `[N, C, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let opts = ConvOptions::new([self.stride; 2], [self.padding; 2], [1, 1], 1);
        conv2d(x, self.weight.val(), Some(self.bias.val()), opts)
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
            weight: vb.param("weight", [channels], Init::Ones),
            bias: vb.param("bias", [channels], Init::Zeros),
            groups,
            eps,
        }
    }

    /// Normalises `[N, C, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [n, c, h, w] = x.dims();
        let g = x.reshape([n, self.groups, (c / self.groups) * h * w]);
        let (var, mean) = g.clone().var_mean_bias(2);
        let g = (g - mean) / (var + self.eps).sqrt();
        let x = g.reshape([n, c, h, w]);
        x * self.weight.val().reshape([1, c, 1, 1]) + self.bias.val().reshape([1, c, 1, 1])
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
        Self { weight: vb.param("weight", [dim], Init::Ones), bias: vb.param("bias", [dim], Init::Zeros), eps }
    }

    /// Normalises over the last dimension of `[B, L, D]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let (var, mean) = x.clone().var_mean_bias(2);
        let x = (x - mean) / (var + self.eps).sqrt();
        x * self.weight.val().unsqueeze::<3>() + self.bias.val().unsqueeze::<3>()
    }
}

/// Multi-head scaled dot-product attention on `[B, L, heads*d]` inputs.
///
/// Computed explicitly as softmax(QKᵀ/√d)·V in f32 (which also satisfies SD 2.1's
/// `upcast_attention`); with `causal`, positions attend only to themselves and earlier ones.
pub fn attention(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize, causal: bool) -> Tensor<3> {
    let [b, lq, dim] = q.dims();
    let lk = k.dims()[1];
    let d = dim / heads;
    let split = |t: Tensor<3>, l: usize| t.reshape([b, l, heads, d]).swap_dims(1, 2);
    let (q, k, v) = (split(q, lq), split(k, lk), split(v, lk));
    let mut scores = q.matmul(k.swap_dims(2, 3)) * (1.0 / (d as f64).sqrt());
    if causal {
        let mask = Tensor::<2, burn::tensor::Bool>::tril_mask([lq, lk], 0, &scores.device());
        scores = scores.mask_fill(mask.unsqueeze::<4>().expand([b, heads, lq, lk]), -1.0e30);
    }
    let out = softmax(scores, 3).matmul(v);
    out.swap_dims(1, 2).reshape([b, lq, dim])
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
