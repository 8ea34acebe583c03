//! Building blocks shared by the SD 2.1 networks (PyTorch semantics, checkpoint key names).
//!
//! Weights are in device layout (see [`crate::weights`]): linear `[in, out]`, convolution
//! `[O, I·k·k]`; either may be quantized (`QFloat`). A quantized linear weight stays packed (burn's
//! quantized matmul reads it directly); a quantized convolution weight is dequantized for the
//! call and the copy dropped with it.
use burn::module::{Module, Param};
use burn::tensor::module::{conv2d, linear};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

use super::reduce::spread_groups;
use crate::weights::{Init, Vb};

/// Largest intermediate tensors (bytes) a computation may create: attention score blocks,
/// feed-forward activations and VAE bands are split to stay below it. Derived from the
/// device's binding limit (WebGPU's default is 128 MiB) with room for the few such tensors an
/// operation holds at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemPlan {
    /// Cap for one attention score block / feed-forward chunk / VAE band, in bytes.
    pub max_block_bytes: usize,
    /// Float type of the UNet's inference (training always computes in f32).
    #[serde(default)]
    pub precision: Precision,
}

impl MemPlan {
    /// For a device whose largest storage binding is `max_binding` bytes.
    pub fn for_binding_limit(max_binding: u64) -> Self {
        let cap = (max_binding / 2).clamp(1 << 20, 512 << 20) as usize;
        Self::blocks(cap)
    }
    /// WebGPU's default limits (128 MiB per binding).
    pub fn webgpu_default() -> Self {
        Self::for_binding_limit(128 << 20)
    }
    /// The CPU backend: memory is plentiful, large blocks are faster.
    pub fn cpu() -> Self {
        Self::blocks(512 << 20)
    }
    /// A plan with blocks of at most `bytes`, f32.
    pub fn blocks(bytes: usize) -> Self {
        Self { max_block_bytes: bytes, precision: Precision::F32 }
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

/// The float type a computation runs in: the networks follow their input's dtype, so the same
/// (quantized) weights serve f32 training and f16 sampling on adapters with `shader-f16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats everywhere (always available; training uses it).
    #[default]
    F32,
    /// 16-bit activations and dense weights; norms' statistics, attention logits and softmax stay
    /// f32. Only where the device supports f16 (WebGPU `shader-f16`).
    F16,
}

impl Precision {
    /// burn's float type.
    pub fn dtype(self) -> FloatDType {
        match self {
            Precision::F32 => FloatDType::F32,
            Precision::F16 => FloatDType::F16,
        }
    }
    /// Casts `x` to this precision (no-op when it already is).
    pub fn apply<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        to_dtype(x, self.dtype())
    }
}

fn float_dtype(d: DType) -> FloatDType {
    match d {
        DType::F16 => FloatDType::F16,
        DType::BF16 => FloatDType::BF16,
        DType::F64 => FloatDType::F64,
        _ => FloatDType::F32,
    }
}

/// `x` in float type `dt` (no-op when it already is).
pub fn to_dtype<const D: usize>(x: Tensor<D>, dt: FloatDType) -> Tensor<D> {
    if float_dtype(x.dtype()) == dt && !is_quantized(&x) { x } else { x.cast(dt) }
}

/// A parameter in the dtype of the activation `like` (dense weights are cast per use, which is
/// free when they already match).
fn like<const D: usize, const E: usize>(p: Tensor<D>, like: &Tensor<E>) -> Tensor<D> {
    to_dtype(p, float_dtype(like.dtype()))
}

/// Whether `x` is a reduced-precision float (its statistics are then taken in f32).
fn is_half<const D: usize>(x: &Tensor<D>) -> bool {
    matches!(x.dtype(), DType::F16 | DType::BF16)
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
        let w = self.weight.val();
        let w = if is_quantized(&w) { w } else { like(w, &x) };
        let b = self.bias.as_ref().map(|b| like(b.val(), &x));
        linear(x, w, b)
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

    /// The weight as `[out, in, k, k]` in `dt` (dequantized when stored quantized).
    pub fn weight4(&self, dt: FloatDType) -> Tensor<4> {
        let w = self.weight.val();
        let out = w.dims()[0];
        let w = if is_quantized(&w) { w.dequantize() } else { w };
        to_dtype(w, dt).reshape([out, self.c_in, self.k, self.k])
    }

    /// Applies the convolution to `[N, C, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_padded(x, [(self.padding, self.padding); 2])
    }

    /// Applies the convolution with explicit (top/bottom, left/right) padding.
    pub fn forward_padded(&self, x: Tensor<4>, pad: [(usize, usize); 2]) -> Tensor<4> {
        let [n, _, h, w] = x.dims();
        let out = self.weight.val().dims()[0];
        let (ho, wo) = self.out_size_stride1(h, w, pad);
        // On the CPU backend a stride-1 convolution whose output has fewer pixels than channels
        // (the UNet's deep levels; every 1×1) is faster as one matrix product over explicit
        // patches: burn-flex's convolution re-lays out the whole weight on one thread per call
        // (1280·1280·9 values at the deepest levels, ~5× the product itself), forward and
        // backward. Elsewhere (and on GPUs) burn's own kernels are used.
        if self.stride == 1 && (self.k == 1 || n * ho * wo <= out) && crate::backend::is_host(&x.device()) {
            return self.forward_patches(x, pad);
        }
        let opts = ConvOptions::new_with_padding([self.stride; 2], pad, [1, 1], 1);
        let dt = float_dtype(x.dtype());
        conv2d(x.clone(), self.weight4(dt), Some(like(self.bias.val(), &x)), opts)
    }

    /// Output height and width of a stride-1 pass over `h`×`w` with padding `pad`.
    fn out_size_stride1(&self, h: usize, w: usize, pad: [(usize, usize); 2]) -> (usize, usize) {
        (h + pad[0].0 + pad[0].1 + 1 - self.k, w + pad[1].0 + pad[1].1 + 1 - self.k)
    }

    /// Stride-1 convolution as `W [O, C·k·k] @ patches [N, C·k·k, H'·W']` (im2col from `k·k`
    /// shifted views; the weight's device layout is already the matrix). Same result as
    /// [`conv2d`] up to summation order; its backward is a matrix product and slice copies.
    pub fn forward_patches(&self, x: Tensor<4>, pad: [(usize, usize); 2]) -> Tensor<4> {
        let w = self.weight.val();
        let w = if is_quantized(&w) { w.dequantize() } else { w };
        let w = like(w, &x);
        let out = w.dims()[0];
        let (k, c) = (self.k, self.c_in);
        let [n, _, h, wd] = x.dims();
        let bias = like(self.bias.val(), &x);
        let (ho, wo) = self.out_size_stride1(h, wd, pad);
        let cols = if k == 1 && pad == [(0, 0); 2] {
            x.reshape([n, c, h * wd])
        } else {
            let xp = x.pad(pad, burn::tensor::ops::PadMode::Constant(0.0));
            let shifted: Vec<Tensor<5>> = (0..k * k)
                .map(|i| {
                    let (dy, dx) = (i / k, i % k);
                    xp.clone().slice([0..n, 0..c, dy..dy + ho, dx..dx + wo]).unsqueeze_dim(2)
                })
                .collect();
            // [N, C, k·k, H', W'] → rows in the weight's (channel, ky, kx) order.
            Tensor::cat(shifted, 2).reshape([n, c * k * k, ho * wo])
        };
        let y = w.unsqueeze::<3>().matmul(cols) + bias.reshape([1, out, 1]);
        y.reshape([n, out, ho, wo])
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

    /// Per-(sample, group) mean and variance of `[N, C, H, W]`, each `[N, G, 1]` (f32 for
    /// half-precision input).
    pub fn stats(&self, x: Tensor<4>) -> (Tensor<3>, Tensor<3>) {
        let x = if is_half(&x) { x.cast(FloatDType::F32) } else { x };
        // Two short reductions per statistic, not one over C/G·H·W elements (see `reduce`).
        super::reduce::group_mean_var(x, self.groups)
    }

    /// Normalises with given statistics (from [`stats`](Self::stats), or accumulated over bands);
    /// half-precision input is normalised in f32 and returned in its own dtype.
    pub fn apply(&self, x: Tensor<4>, mean: Tensor<3>, var: Tensor<3>) -> Tensor<4> {
        let [n, c, h, w] = x.dims();
        let (g, r) = (self.groups, (c / self.groups) * h);
        let dt = float_dtype(x.dtype());
        let xf = if is_half(&x) { x.cast(FloatDType::F32) } else { x };
        // The statistics reach the elements in two short broadcasts (`spread_groups`), so the
        // backward never sums over a whole group in one kernel (see `reduce`).
        let inv_std = (like(var, &xf) + self.eps).sqrt().recip();
        let mean = like(mean, &xf);
        let x4 = xf.reshape([n, g, r, w]);
        let y = ((x4 - spread_groups(mean, r)) * spread_groups(inv_std, r)).reshape([n, c, h, w]);
        let y = y.clone() * like(self.weight.val(), &y).reshape([1, c, 1, 1])
            + like(self.bias.val(), &y).reshape([1, c, 1, 1]);
        to_dtype(y, dt)
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

    /// Normalises over the last dimension of `[B, L, D]` (statistics in f32 for half input).
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let dt = float_dtype(x.dtype());
        let x = if is_half(&x) { x.cast(FloatDType::F32) } else { x };
        let (var, mean) = x.clone().var_mean_bias(2);
        let x = (x - mean) / (var + self.eps).sqrt();
        let y = x.clone() * like(self.weight.val(), &x).unsqueeze::<3>() + like(self.bias.val(), &x).unsqueeze::<3>();
        to_dtype(y, dt)
    }
}

/// The masked-out score of causal attention: finite (an f16-safe value), and far enough below
/// any real score that its softmax weight underflows to exactly zero.
pub const MASKED_SCORE: f64 = -1.0e4;

/// Scaled dot-product attention of a block of queries: `q` `[B, Lq, heads·d]` (queries
/// `q_offset..q_offset+Lq` of the sequence) against all of `k`, `v` `[B, Lk, heads·d]`.
///
/// Scores, softmax and the weighted sum are in f32 (which also satisfies SD 2.1's
/// `upcast_attention`); with `causal`, query `i` sees keys `0..=i`. On the host CPU backend
/// without autodiff this is the fused kernel of [`super::host_attention`] (no score block in
/// memory); elsewhere, and under autodiff, burn's operations.
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
    #[cfg(not(target_arch = "wasm32"))]
    if [&q, &k, &v].iter().all(|t| t.dtype() == DType::F32)
        && !q.device().is_autodiff()
        && crate::backend::is_host(&q.device())
    {
        let s = super::host_attention::AttnShape { b, lq, lk, heads, d, causal, q_offset };
        use crate::backend::host_f32;
        let device = q.device();
        let out = super::host_attention::forward(&s, &host_f32(q), &host_f32(k), &host_f32(v));
        return crate::backend::tensor(out, [b, lq, dim], &device);
    }
    // Logits, softmax and the weighted sum in f32 whatever the activations' dtype.
    let dt = float_dtype(q.dtype());
    let f32 = |t: Tensor<3>| if is_half(&t) { t.cast(FloatDType::F32) } else { t };
    let (q, k, v) = (f32(q), f32(k), f32(v));
    let split = |t: Tensor<3>, l: usize| t.reshape([b, l, heads, d]).swap_dims(1, 2);
    let (q, k, v) = (split(q, lq), split(k, lk), split(v, lk));
    let mut scores = q.matmul(k.swap_dims(2, 3)) * (1.0 / (d as f64).sqrt());
    if causal {
        // Key j is masked for query i when j > q_offset + i.
        let mask = Tensor::<2, burn::tensor::Bool>::tril_mask([lq, lk], q_offset as i64, &scores.device());
        scores = scores.mask_fill(mask.unsqueeze::<4>().expand([b, heads, lq, lk]), MASKED_SCORE);
    }
    let out = super::reduce::softmax_last(scores).matmul(v);
    to_dtype(out.swap_dims(1, 2).reshape([b, lq, dim]), dt)
}

/// Whether [`attention_block_vjp`] applies to a query like `q` (the host CPU backend, f32,
/// natively: in the browser the CPU backend uses burn's autodiff).
pub fn attention_block_has_vjp(q: &Tensor<3>) -> bool {
    cfg!(not(target_arch = "wasm32")) && q.dtype() == DType::F32 && crate::backend::is_host(&q.device())
}

/// The backward of [`attention_block`] on the host CPU backend (f32): the gradients of
/// `⟨attention_block(q, k, v, …), g⟩` with respect to `q`, `k`, `v` where `want` asks, from the
/// fused kernel of `host_attention` (recomputing the scores block by block, never holding them
/// whole). `None` on any other backend or dtype, where burn's autodiff is the backward.
#[allow(clippy::too_many_arguments)]
pub fn attention_block_vjp(
    q: &Tensor<3>,
    k: &Tensor<3>,
    v: &Tensor<3>,
    g: &Tensor<3>,
    want: [bool; 3],
    heads: usize,
    causal: bool,
    q_offset: usize,
) -> Option<[Option<Tensor<3>>; 3]> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let device = q.device();
        if ![q, k, v, g].iter().all(|t| t.dtype() == DType::F32) || !crate::backend::is_host(&device) {
            return None;
        }
        let [b, lq, dim] = q.dims();
        let lk = k.dims()[1];
        let s = super::host_attention::AttnShape { b, lq, lk, heads, d: dim / heads, causal, q_offset };
        let vals = |t: &Tensor<3>| crate::backend::host_f32(t.clone());
        let grads = super::host_attention::backward(&s, &vals(q), &vals(k), &vals(v), &vals(g), want);
        let shapes = [[b, lq, dim], [b, lk, dim], [b, lk, dim]];
        let mut out = [None, None, None];
        for (i, (gi, shape)) in grads.into_iter().zip(shapes).enumerate() {
            if want[i] {
                out[i] = Some(crate::backend::tensor(gi, shape, &device.clone().without_autodiff()));
            }
        }
        Some(out)
    }
    #[cfg(target_arch = "wasm32")]
    {
        let _ = (q, k, v, g, want, heads, causal, q_offset);
        None
    }
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
///
/// Written out as `x/2·(1 + erf(x/√2))` instead of calling burn's `gelu`: the forward is the
/// same ops, but burn 0.22's generic `gelu_backward` (used by the wgpu backend; the CPU backend
/// overrides it) is the derivative of the *tanh approximation*, 6e-4 relative off the exact
/// gradient (tests/suite/parity.rs caught it on lavapipe). Autodiff of `erf` is exact on every backend.
///
/// On the CPU backend (f32) the values come from one parallel pass on the host instead
/// ([`gelu_host`]): burn-flex's `erf` is a scalar libm call on one thread, ~23 ns per element
/// (0.23 s per text-encoder layer at K = 32), more than the layer's matrix products.
pub fn gelu_exact<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    #[cfg(not(target_arch = "wasm32"))]
    if x.dtype() == DType::F32 && crate::backend::is_host(&x.device()) {
        return gelu_host(x);
    }
    x.clone().mul((x / std::f32::consts::SQRT_2).erf() + 1.0) / 2.0
}

/// `erf` in f32 as a rational function (the odd/even minimax fit used by Eigen and XLA): within
/// 5e-7 of libm's `erff` (4.2e-7 measured, tests/suite/ops.rs), and vectorisable (plain multiply-adds:
/// `mul_add` is a libm call without the `fma` target feature). Exactly ±1 from |x| = 3.92 on
/// (where erf rounds to ±1 in f32), so GELU's far negative tail is exactly 0.
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    // Evaluated everywhere and selected (no early return), so that loops over it vectorise.
    let big = x.abs() >= 3.92;
    let sign = x.signum();
    let x = if big { 0.0 } else { x };
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906e-4;
    p = x2 * p + -2.954_6e-3;
    p = x2 * p + -1.609_603_3e-2;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329e-3;
    q = x2 * q + -1.426_474e-2;
    if big { sign } else { x * p / q }
}

/// `e^x` for `x ≤ 0` in plain multiply-adds that vectorise: Cephes' `expf` polynomial after
/// `x = n·ln2 + r`, `2ⁿ` from the exponent bits; within 3e-7 (relative) of libm's `expf` down to
/// `x = −87` (below it, the smallest normal value instead of a denormal or 0).
#[inline(always)]
pub fn exp_neg(x: f32) -> f32 {
    let x = if x < -87.0 { -87.0 } else { x };
    // Round x·log2(e) to the nearest integer with the 1.5·2²³ trick (no libm `floor` call).
    const MAGIC: f32 = 12_582_912.0;
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((ni + 127) as u32) << 23)
}

/// `y = f(x).0` (and `g = f(x).1` where `g` is not empty) over a chunk.
#[cfg(not(target_arch = "wasm32"))]
#[inline(always)]
fn map_chunk<F: Fn(f32) -> (f32, f32)>(x: &[f32], y: &mut [f32], g: &mut [f32], f: &F) {
    if g.is_empty() {
        for (&x, y) in x.iter().zip(y) {
            *y = f(x).0;
        }
    } else {
        for ((&x, y), g) in x.iter().zip(y).zip(g) {
            (*y, *g) = f(x);
        }
    }
}

#[cfg(all(target_arch = "x86_64", not(target_arch = "wasm32")))]
#[target_feature(enable = "avx512f")]
unsafe fn map_chunk_512<F: Fn(f32) -> (f32, f32)>(x: &[f32], y: &mut [f32], g: &mut [f32], f: &F) {
    map_chunk(x, y, g, f)
}

#[cfg(all(target_arch = "x86_64", not(target_arch = "wasm32")))]
#[target_feature(enable = "avx2")]
unsafe fn map_chunk_256<F: Fn(f32) -> (f32, f32)>(x: &[f32], y: &mut [f32], g: &mut [f32], f: &F) {
    map_chunk(x, y, g, f)
}

/// An element-wise function on the host CPU backend, in one parallel pass over the values,
/// compiled for AVX-512 or AVX2 where the CPU has them (picked at run time; the binary targets
/// baseline x86-64). `f(x) = (value, derivative)`. Under autodiff the result is
/// `y + (x − detach(x))·g` with `g` the derivative from the same pass: the same value, and
/// exactly `f`'s derivative for the backward.
#[cfg(not(target_arch = "wasm32"))]
pub fn host_pointwise<const D: usize, F: Fn(f32) -> (f32, f32) + Sync>(x: Tensor<D>, f: F) -> Tensor<D> {
    use burn::tensor::TensorData;
    use rayon::prelude::*;
    let device = x.device();
    let shape = x.shape();
    let tracked = device.is_autodiff();
    let vals = crate::backend::host_f32(x.clone());
    let mut y = vec![0f32; vals.len()];
    let mut g = if tracked { vec![0f32; vals.len()] } else { vec![] };
    const CHUNK: usize = 1 << 14;
    let run = |x: &[f32], y: &mut [f32], g: &mut [f32]| {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: each variant runs only where the CPU reports its instruction set.
            if std::arch::is_x86_feature_detected!("avx512f") {
                return unsafe { map_chunk_512(x, y, g, &f) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return unsafe { map_chunk_256(x, y, g, &f) };
            }
        }
        map_chunk(x, y, g, &f)
    };
    if tracked {
        (vals.par_chunks(CHUNK), y.par_chunks_mut(CHUNK), g.par_chunks_mut(CHUNK))
            .into_par_iter()
            .for_each(|(x, y, g)| run(x, y, g));
    } else {
        vals.par_chunks(CHUNK).zip(y.par_chunks_mut(CHUNK)).for_each(|(x, y)| run(x, y, &mut []));
    }
    let y = Tensor::<D>::from_data(TensorData::new(y, shape.clone()), &device);
    if !tracked {
        return y;
    }
    let g = Tensor::<D>::from_data(TensorData::new(g, shape), &device);
    y + (x.clone() - x.detach()) * g
}

/// GELU on the host CPU backend ([`host_pointwise`]): `x·Φ(x)`, derivative `Φ(x) + x·φ(x)`.
#[cfg(not(target_arch = "wasm32"))]
pub fn gelu_host<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    host_pointwise(x, |x| {
        let cdf = 0.5 * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2));
        (x * cdf, cdf + x * 0.398_942_3 * exp_neg(-0.5 * x * x))
    })
}

/// SiLU `x·σ(x)` (PyTorch's, = burn's `silu`). On the host CPU backend (f32) one parallel pass
/// ([`host_pointwise`]; burn-flex's sigmoid is a scalar `expf` per element on one thread).
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    #[cfg(not(target_arch = "wasm32"))]
    if x.dtype() == DType::F32 && crate::backend::is_host(&x.device()) {
        return host_pointwise(x, |x| {
            // σ(x) from e^{−|x|} ≤ 1 (no overflow): 1/(1+e) for x ≥ 0, e/(1+e) below.
            let e = exp_neg(-x.abs());
            let inv = 1.0 / (1.0 + e);
            let s = if x >= 0.0 { inv } else { e * inv };
            (x * s, s * (1.0 + x * (1.0 - s)))
        });
    }
    burn::tensor::activation::silu(x)
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
