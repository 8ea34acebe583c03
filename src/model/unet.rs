//! `UNet2DConditionModel` of SD 2.x (diffusers layout): linear `proj_in`/`proj_out`, GEGLU
//! feed-forward, a number of attention heads per block, sinusoidal timestep embedding, and
//! cross-attention on the text encoder's hidden states.
//!
//! The network is expressed as a [`Tape`] of pieces (see [`super::tape`]): every resnet, the
//! parts of every transformer block around its attentions, each block of attention queries and
//! each chunk of feed-forward tokens is one piece. Inference runs the tape freeing each value
//! after its last use; training keeps the piece boundaries and walks back piece by piece. Pieces
//! are sized by a [`MemPlan`] so that no intermediate tensor outgrows the device's binding limit.
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::nn::{
    Conv2d, GroupNorm, LayerNorm, Linear, MemPlan, attention_block, attention_block_has_vjp, attention_block_vjp,
    attention_rows, gelu_exact, silu, timestep_embedding, upsample_nearest2x,
};
use super::tape::{Observer, Slot, Tape, Val};
#[cfg(not(target_arch = "wasm32"))]
use crate::backend::host_f32;
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
    /// Compute attention in f32 (SD 2.1 768 needs it in f16; attention scores are always f32
    /// here).
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

    /// [`tiny`](Self::tiny) with three levels (attention on the outer and inner ones) and one
    /// layer per block, so skip tensors cross two resolutions: the tests of the block-wise walk.
    pub fn tiny_three_levels() -> Self {
        Self {
            block_out_channels: vec![32, 32, 64],
            cross_attention: vec![true, false, true],
            heads: vec![2, 2, 4],
            layers_per_block: 1,
            ..Self::tiny()
        }
    }

    /// The multiple of the latent side the architecture needs (each level halves it).
    pub fn latent_multiple(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

/// `ResnetBlock2D` with timestep conditioning (`temb` may be absent, as in the VAE).
#[derive(Module, Debug)]
pub struct ResnetBlock {
    /// First norm.
    pub norm1: GroupNorm,
    /// First convolution.
    pub conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    /// Second norm.
    pub norm2: GroupNorm,
    /// Second convolution.
    pub conv2: Conv2d,
    /// 1×1 shortcut when the channel count changes.
    pub conv_shortcut: Option<Conv2d>,
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

/// Fewest pixels (`N·H·W`) of a pass for which a resnet block runs on the host kernels
/// ([`super::host_resnet`]) on the CPU backend: below it (the 8² level of a 512² image, and
/// less) the weights' copy to the host per call costs about as much as the product gains.
#[cfg(not(target_arch = "wasm32"))]
pub const HOST_RESNET_MIN_PIXELS: usize = 1024;

#[cfg(not(target_arch = "wasm32"))]
impl ResnetBlock {
    /// Whether [`forward_host`](Self::forward_host) applies to an input like `x`: the host
    /// CPU backend, f32, at least [`HOST_RESNET_MIN_PIXELS`] pixels.
    pub fn host_applies(&self, x: &Tensor<4>) -> bool {
        let [n, _, h, w] = x.dims();
        x.dtype() == burn::tensor::DType::F32
            && n * h * w >= HOST_RESNET_MIN_PIXELS
            && crate::backend::is_host(&x.device())
            && [&self.conv1, &self.conv2].iter().all(|c| c.stride == 1 && c.padding == c.k / 2)
    }

    /// The block on the channel concatenation of `xs` (each `[N, Cⱼ, H, W]`) with the host
    /// kernels; `temb` is already through SiLU. Returns the output and what
    /// [`backward_host`](Self::backward_host) needs: x̂ and 1/σ of both group norms.
    pub fn forward_host(&self, xs: &[Tensor<4>], temb: Option<&Tensor<2>>) -> (Tensor<4>, Vec<Val>) {
        use super::host_resnet::{conv_forward, gn_silu_forward};
        let [n, _, h, w] = xs[0].dims();
        let p = h * w;
        let ci: usize = xs.iter().map(|x| x.dims()[1]).sum();
        let co = self.conv1.weight.val().dims()[0];
        let device = xs[0].device().without_autodiff();
        let x = cat_channels(xs, n, p);
        let norm = |g: &GroupNorm| (host_f32(g.weight.val()), host_f32(g.bias.val()));
        let (g1, b1) = norm(&self.norm1);
        let (a1, xh1, r1) = gn_silu_forward(&x, [n, ci, p], self.norm1.groups, &g1, &b1, self.norm1.eps as f32);
        let mut bias1 = host_f32(self.conv1.bias.val()).repeat(n);
        if let (Some(proj), Some(t)) = (&self.time_emb_proj, temb) {
            let tp = host_f32(proj.forward(t.clone().without_autodiff()));
            for (b, t) in bias1.iter_mut().zip(tp) {
                *b += t;
            }
        }
        let c1 = conv_forward(&a1, [n, ci, h, w], &host_f32(self.conv1.weight.val()), 3, &bias1);
        drop(a1);
        let (g2, b2) = norm(&self.norm2);
        let (a2, xh2, r2) = gn_silu_forward(&c1, [n, co, p], self.norm2.groups, &g2, &b2, self.norm2.eps as f32);
        drop(c1);
        let bias2 = host_f32(self.conv2.bias.val()).repeat(n);
        let mut y = conv_forward(&a2, [n, co, h, w], &host_f32(self.conv2.weight.val()), 3, &bias2);
        drop(a2);
        match &self.conv_shortcut {
            Some(sc) => {
                let bs = host_f32(sc.bias.val()).repeat(n);
                let ys = conv_forward(&x, [n, ci, h, w], &host_f32(sc.weight.val()), 1, &bs);
                add_parallel(&mut y, &ys);
            }
            None => add_parallel(&mut y, &x),
        }
        let t = |v: Vec<f32>, c: usize| Val::T4(crate::backend::tensor(v, [n, c, h, w], &device));
        let groups = |v: Vec<f32>, g: usize| Val::T2(crate::backend::tensor(v, [n, g], &device));
        let saved = vec![t(xh1, ci), groups(r1, self.norm1.groups), t(xh2, co), groups(r2, self.norm2.groups)];
        (crate::backend::tensor(y, [n, co, h, w], &device), saved)
    }

    /// The gradients of `⟨block(cat(xs), temb), dy⟩` with respect to each of `xs` (where
    /// `want_x`) and to `temb` (where `want_t`), from what
    /// [`forward_host`](Self::forward_host) saved.
    pub fn backward_host(
        &self,
        xs: &[Tensor<4>],
        saved: &[Val],
        dy: &Tensor<4>,
        want_x: &[bool],
        want_t: bool,
    ) -> (Vec<Option<Tensor<4>>>, Option<Tensor<2>>) {
        use super::host_resnet::{conv_backward_input, gn_silu_backward};
        let [n, _, h, w] = xs[0].dims();
        let p = h * w;
        let ci: usize = xs.iter().map(|x| x.dims()[1]).sum();
        let co = self.conv1.weight.val().dims()[0];
        let device = xs[0].device().without_autodiff();
        let dy = host_f32(dy.clone());
        let norm = |g: &GroupNorm| (host_f32(g.weight.val()), host_f32(g.bias.val()));
        let da2 = conv_backward_input(&dy, [n, co, h, w], &host_f32(self.conv2.weight.val()), 3);
        let (g2, b2) = norm(&self.norm2);
        let dc1 = gn_silu_backward(
            &da2,
            &host_f32(saved[2].t4()),
            &host_f32(saved[3].t2()),
            [n, co, p],
            self.norm2.groups,
            &g2,
            &b2,
        );
        drop(da2);
        let dtemb = match (&self.time_emb_proj, want_t) {
            (Some(proj), true) => {
                // temb → proj → added to every pixel: the gradient is Σ_pixels dc1 through proj.
                let sums: Vec<f32> = dc1.chunks(p).map(|r| r.iter().sum()).collect();
                let wt = proj.weight.val().without_autodiff();
                let wt = if matches!(wt.dtype(), burn::tensor::DType::QFloat(_)) { wt.dequantize() } else { wt };
                Some(crate::backend::tensor(sums, [n, co], &device).matmul(wt.transpose()))
            }
            _ => None,
        };
        if !want_x.iter().any(|&b| b) {
            return (vec![None; xs.len()], dtemb);
        }
        let da1 = conv_backward_input(&dc1, [n, ci, h, w], &host_f32(self.conv1.weight.val()), 3);
        drop(dc1);
        let (g1, b1) = norm(&self.norm1);
        let mut dx = gn_silu_backward(
            &da1,
            &host_f32(saved[0].t4()),
            &host_f32(saved[1].t2()),
            [n, ci, p],
            self.norm1.groups,
            &g1,
            &b1,
        );
        drop(da1);
        match &self.conv_shortcut {
            Some(sc) => add_parallel(&mut dx, &conv_backward_input(&dy, [n, ci, h, w], &host_f32(sc.weight.val()), 1)),
            None => add_parallel(&mut dx, &dy),
        }
        // Split the channels back into the inputs.
        let mut out = Vec::with_capacity(xs.len());
        let mut c0 = 0;
        for (x, &want) in xs.iter().zip(want_x) {
            let c = x.dims()[1];
            if want {
                let mut part = Vec::with_capacity(n * c * p);
                for s in 0..n {
                    part.extend_from_slice(&dx[(s * ci + c0) * p..(s * ci + c0 + c) * p]);
                }
                out.push(Some(crate::backend::tensor(part, [n, c, h, w], &device)));
            } else {
                out.push(None);
            }
            c0 += c;
        }
        (out, dtemb)
    }
}

/// `[N, ΣCⱼ, P]` from the parts `[N, Cⱼ, H, W]` (channel concatenation, as `Tensor::cat(·, 1)`).
#[cfg(not(target_arch = "wasm32"))]
fn cat_channels(xs: &[Tensor<4>], n: usize, p: usize) -> Vec<f32> {
    if xs.len() == 1 {
        return host_f32(xs[0].clone());
    }
    let parts: Vec<(Vec<f32>, usize)> = xs.iter().map(|x| (host_f32(x.clone()), x.dims()[1])).collect();
    let ci: usize = parts.iter().map(|p| p.1).sum();
    let mut x = Vec::with_capacity(n * ci * p);
    for s in 0..n {
        for (v, c) in &parts {
            x.extend_from_slice(&v[s * c * p..(s + 1) * c * p]);
        }
    }
    x
}

/// `y += x` in parallel.
#[cfg(not(target_arch = "wasm32"))]
fn add_parallel(y: &mut [f32], x: &[f32]) {
    use rayon::prelude::*;
    y.par_chunks_mut(1 << 16).zip(x.par_chunks(1 << 16)).for_each(|(y, x)| {
        for (a, b) in y.iter_mut().zip(x) {
            *a += b;
        }
    });
}

impl ResnetBlock {
    /// The block on the channel concatenation of `xs`, with the host kernels where they apply
    /// and nothing is tracked; `temb` already through SiLU.
    pub fn forward_parts(&self, xs: Vec<Tensor<4>>, temb: Option<&Tensor<2>>) -> Tensor<4> {
        #[cfg(not(target_arch = "wasm32"))]
        if !xs[0].device().is_autodiff() && self.host_applies(&xs[0]) {
            return self.forward_host(&xs, temb).0;
        }
        let x = if xs.len() == 1 { xs.into_iter().next().expect("one part") } else { Tensor::cat(xs, 1) };
        self.forward(x, temb)
    }

    /// A tape piece running this block on `parts` (channel-concatenated) and `temb` (the last
    /// input slot), with the host kernels' forward/backward pair on the CPU backend.
    fn piece<'a>(&'a self, tape: &mut Tape<'a>, name: String, parts: &[Slot], temb: Slot) -> Slot {
        let k = parts.len();
        let mut inputs = parts.to_vec();
        inputs.push(temb);
        let split = move |v: &[Val]| (v[..k].iter().map(Val::t4).collect::<Vec<_>>(), v[k].t2());
        tape.piece1_custom(
            name,
            &inputs,
            move |v| {
                let (xs, t) = split(v);
                self.forward_parts(xs, Some(&t)).into()
            },
            move |v| {
                #[cfg(not(target_arch = "wasm32"))]
                {
                    let (xs, t) = split(v);
                    self.host_applies(&xs[0]).then(|| {
                        let (y, saved) = self.forward_host(&xs, Some(&t));
                        (y.into(), saved)
                    })
                }
                #[cfg(target_arch = "wasm32")]
                {
                    let _ = v;
                    None
                }
            },
            move |v, saved, g, want| {
                #[cfg(not(target_arch = "wasm32"))]
                {
                    let (xs, _) = split(v);
                    let (gx, gt) = self.backward_host(&xs, saved, &g.t4(), &want[..k], want[k]);
                    gx.into_iter().map(|g| g.map(Val::T4)).chain([gt.map(Val::T2)]).collect()
                }
                #[cfg(target_arch = "wasm32")]
                {
                    let _ = (v, saved, g, want, split);
                    unreachable!("no custom forward in the browser")
                }
            },
        )
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

    fn ff(&self, x: Tensor<3>) -> Tensor<3> {
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
}

/// Adds attention pieces `q, k, v → o` to `tape`, one piece per block of queries sized so that
/// a score block `[B, heads, rows, Lk]` stays within the plan.
#[allow(clippy::too_many_arguments)]
pub fn attention_pieces<'a>(
    tape: &mut Tape<'a>,
    name: &str,
    [q, k, v]: [Slot; 3],
    [b, lq, lk]: [usize; 3],
    heads: usize,
    causal: bool,
    plan: &MemPlan,
) -> Slot {
    // Each core piece has its own backward where the backend has one (the host CPU).
    let core = move |tape: &mut Tape<'a>, name: String, ins: [Slot; 3], offset: usize| {
        let run = move |x: &[Val]| attention_block(x[0].t3(), x[1].t3(), x[2].t3(), heads, causal, offset);
        tape.piece1_custom(
            name,
            &ins,
            move |x| run(x).into(),
            move |x| attention_block_has_vjp(&x[0].t3()).then(|| (run(x).into(), vec![])),
            move |x, _, g, want| {
                let want = [want[0], want[1], want[2]];
                let gs = attention_block_vjp(&x[0].t3(), &x[1].t3(), &x[2].t3(), &g.t3(), want, heads, causal, offset)
                    .expect("checked by the custom forward");
                gs.into_iter().map(|t| t.map(Val::T3)).collect()
            },
        )
    };
    let rows = attention_rows(plan, b, heads, lk);
    if rows >= lq {
        return core(tape, format!("{name}.core"), [q, k, v], 0);
    }
    let starts: Vec<usize> = (0..lq).step_by(rows).collect();
    let n = starts.len();
    let splits = {
        let starts = starts.clone();
        tape.piece(format!("{name}.split"), &[q], n, move |x| {
            let q = x[0].t3();
            starts.iter().map(|&s| Val::T3(q.clone().narrow(1, s, rows.min(lq - s)))).collect()
        })
    };
    let outs: Vec<Slot> = splits
        .iter()
        .zip(&starts)
        .enumerate()
        .map(|(i, (&qs, &s))| core(tape, format!("{name}.core{i}"), [qs, k, v], s))
        .collect();
    tape.piece1(format!("{name}.cat"), &outs, |x| Tensor::cat(x.iter().map(Val::t3).collect(), 1).into())
}

/// Adds pieces applying `f` (a token-wise map `[B, L, C] → [B, L, C]`) in chunks of tokens.
fn tokenwise_pieces<'a>(
    tape: &mut Tape<'a>,
    name: &str,
    x: Slot,
    [b, l, c]: [usize; 3],
    widest: usize,
    plan: &MemPlan,
    f: impl Fn(Tensor<3>) -> Tensor<3> + Clone + 'a,
) -> Slot {
    let rows = plan.rows(b * widest * c * 4);
    if rows >= l {
        return tape.piece1(name.to_string(), &[x], move |v| f(v[0].t3()).into());
    }
    let starts: Vec<usize> = (0..l).step_by(rows).collect();
    let parts = {
        let starts = starts.clone();
        tape.piece(format!("{name}.split"), &[x], starts.len(), move |v| {
            let t = v[0].t3();
            starts.iter().map(|&s| Val::T3(t.clone().narrow(1, s, rows.min(l - s)))).collect()
        })
    };
    let outs: Vec<Slot> = parts
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let f = f.clone();
            tape.piece1(format!("{name}{i}"), &[p], move |v| f(v[0].t3()).into())
        })
        .collect();
    tape.piece1(format!("{name}.cat"), &outs, |v| Tensor::cat(v.iter().map(Val::t3).collect(), 1).into())
}

/// The slots of a UNet tape.
#[derive(Clone, Debug)]
pub struct UNetSlots {
    /// Noisy latents `[N, 4, h, w]` (input).
    pub x: Slot,
    /// Sinusoidal timestep projection `[N, C₀]` (input).
    pub t_proj: Slot,
    /// Text conditioning `[N, 77, D]` (input).
    pub context: Slot,
    /// The prediction `[N, 4, h, w]`.
    pub out: Slot,
    /// Timestep embedding (after `time_embedding`).
    pub temb: Slot,
    /// After `conv_in`.
    pub conv_in: Slot,
    /// After each down level.
    pub down: Vec<Slot>,
    /// After the mid block.
    pub mid: Slot,
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
    #[module(skip)]
    context_dim: usize,
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
            context_dim: cfg.cross_attention_dim,
        }
    }

    /// The sinusoidal projection of `timesteps` `[N, C₀]` (the input of the time embedding).
    pub fn time_proj(&self, timesteps: &[f32], device: &Device) -> Tensor<2> {
        let proj = timestep_embedding(timesteps, self.time_dim, true, 0.0);
        tensor(proj, [timesteps.len(), self.time_dim], device)
    }

    /// The timestep embedding `[N, 4·C₀]` of `timesteps` (one per batch element).
    pub fn time_embedding(&self, timesteps: &[f32], device: &Device) -> Tensor<2> {
        self.time_linear_2.forward(silu(self.time_linear_1.forward(self.time_proj(timesteps, device))))
    }

    /// Block-wise vector–Jacobian product: the prediction for `x` at `timesteps` under
    /// `context`, and ∂⟨prediction, `g_out`⟩/∂context, with one piece's graph alive at a time
    /// (on the host CPU backend, graphs are kept instead of recomputed while three quarters of the available
    /// memory allows: see [`GraphBudget`](super::tape::GraphBudget)).
    pub fn context_vjp(
        &self,
        x: Tensor<4>,
        timesteps: &[f32],
        context: Tensor<3>,
        g_out: impl FnOnce(&Tensor<4>) -> Tensor<4>,
        plan: &MemPlan,
        obs: &mut dyn Observer,
    ) -> crate::Result<(Tensor<4>, Tensor<3>)> {
        let [n, _, h, w] = x.dims();
        let device = x.device();
        let (tape, s) = self.tape(n, h, w, plan);
        let vals = tape.forward_retaining(
            vec![(s.x, x.into()), (s.t_proj, self.time_proj(timesteps, &device).into()), (s.context, context.into())],
            &[s.context],
            &mut super::tape::GraphBudget::for_device(&device),
            obs,
        );
        let out = vals.get(s.out).expect("kept").t4();
        let g = g_out(&out);
        let grads = tape.backward(vals, vec![(s.out, g.into())], &[s.context], obs)?;
        let g = grads
            .into_iter()
            .next()
            .flatten()
            .ok_or_else(|| crate::Error::Device("no gradient reached the context".into()))?;
        Ok((out, g.t3()))
    }

    #[allow(clippy::too_many_arguments)]
    fn transformer_pieces<'a>(
        &'a self,
        tape: &mut Tape<'a>,
        name: &str,
        st: &'a SpatialTransformer,
        h: Slot,
        ctx: Slot,
        [n, c, hh, ww]: [usize; 4],
        plan: &MemPlan,
    ) -> Slot {
        let l = hh * ww;
        let blk = &st.block;
        let t0 = tape.piece1(format!("{name}.in"), &[h], move |x| {
            let t = st.norm.forward(x[0].t4()).reshape([n, c, l]).swap_dims(1, 2);
            st.proj_in.forward(t).into()
        });
        let qkv = tape.piece(format!("{name}.attn1.qkv"), &[t0], 3, move |x| {
            let y = blk.norm1.forward(x[0].t3());
            vec![
                blk.attn1.to_q.forward(y.clone()).into(),
                blk.attn1.to_k.forward(y.clone()).into(),
                blk.attn1.to_v.forward(y).into(),
            ]
        });
        let heads = blk.attn1.heads;
        let o1 =
            attention_pieces(tape, &format!("{name}.attn1"), [qkv[0], qkv[1], qkv[2]], [n, l, l], heads, false, plan);
        let t1 = tape.piece1(format!("{name}.attn1.out"), &[t0, o1], move |x| {
            (x[0].t3() + blk.attn1.to_out.forward(x[1].t3())).into()
        });
        let q2 = tape.piece1(format!("{name}.attn2.q"), &[t1], move |x| {
            blk.attn2.to_q.forward(blk.norm2.forward(x[0].t3())).into()
        });
        let kv2 = tape.piece(format!("{name}.attn2.kv"), &[ctx], 2, move |x| {
            vec![blk.attn2.to_k.forward(x[0].t3()).into(), blk.attn2.to_v.forward(x[0].t3()).into()]
        });
        let o2 = attention_pieces(
            tape,
            &format!("{name}.attn2"),
            [q2, kv2[0], kv2[1]],
            [n, l, crate::tokenizer::MAX_LEN],
            heads,
            false,
            plan,
        );
        let t2 = tape.piece1(format!("{name}.attn2.out"), &[t1, o2], move |x| {
            (x[0].t3() + blk.attn2.to_out.forward(x[1].t3())).into()
        });
        // GEGLU: the widest activation is the projection, 8·C per token.
        let t3 = tokenwise_pieces(tape, &format!("{name}.ff"), t2, [n, l, c], 8, plan, move |x| blk.ff(x));
        tape.piece1(format!("{name}.out"), &[h, t3], move |x| {
            let t = st.proj_out.forward(x[1].t3());
            (x[0].t4() + t.swap_dims(1, 2).reshape([n, c, hh, ww])).into()
        })
    }

    /// The UNet for latents `[n, 4, h, w]` as a tape.
    pub fn tape<'a>(&'a self, n: usize, h: usize, w: usize, plan: &MemPlan) -> (Tape<'a>, UNetSlots) {
        let mut tape = Tape::new("unet");
        let x = tape.input();
        let t_proj = tape.input();
        let context = tape.input();
        let temb = tape.piece1("time_embedding", &[t_proj], move |v| {
            self.time_linear_2.forward(silu(self.time_linear_1.forward(v[0].t2()))).into()
        });
        let temb_act = tape.piece1("time_act", &[temb], |v| silu(v[0].t2()).into());
        let conv_in = tape.piece1("conv_in", &[x], move |v| self.conv_in.forward(v[0].t4()).into());
        let mut hs = conv_in;
        let (mut hh, mut ww) = (h, w);
        let mut skips = vec![(hs, hh, ww)];
        let mut down_slots = vec![];
        let boc = |l: &Level| -> usize {
            // Output channels of a level: its first resnet's conv1 output.
            l.resnets[0].conv1.weight.val().dims()[0]
        };
        for (i, level) in self.down.iter().enumerate() {
            let c = boc(level);
            for (j, resnet) in level.resnets.iter().enumerate() {
                hs = resnet.piece(&mut tape, format!("down{i}.resnet{j}"), &[hs], temb_act);
                if let Some(attn) = level.attentions.get(j) {
                    hs = self.transformer_pieces(
                        &mut tape,
                        &format!("down{i}.attn{j}"),
                        attn,
                        hs,
                        context,
                        [n, c, hh, ww],
                        plan,
                    );
                }
                skips.push((hs, hh, ww));
            }
            if let Some(conv) = &level.sampler {
                hs = tape.piece1(format!("down{i}.downsample"), &[hs], move |v| conv.forward(v[0].t4()).into());
                hh = hh.div_ceil(2);
                ww = ww.div_ceil(2);
                skips.push((hs, hh, ww));
            }
            down_slots.push(hs);
        }
        let top = boc(self.down.last().expect("levels"));
        hs = self.mid_resnet_1.piece(&mut tape, "mid.resnet0".into(), &[hs], temb_act);
        hs = self.transformer_pieces(&mut tape, "mid.attn", &self.mid_attention, hs, context, [n, top, hh, ww], plan);
        hs = self.mid_resnet_2.piece(&mut tape, "mid.resnet1".into(), &[hs], temb_act);
        let mid = hs;
        for (i, level) in self.up.iter().enumerate() {
            let c = level.resnets[0].conv1.weight.val().dims()[0];
            for (j, resnet) in level.resnets.iter().enumerate() {
                let (skip, sh, sw) = skips.pop().expect("skip connection");
                debug_assert_eq!((sh, sw), (hh, ww));
                hs = resnet.piece(&mut tape, format!("up{i}.resnet{j}"), &[hs, skip], temb_act);
                if let Some(attn) = level.attentions.get(j) {
                    hs = self.transformer_pieces(
                        &mut tape,
                        &format!("up{i}.attn{j}"),
                        attn,
                        hs,
                        context,
                        [n, c, hh, ww],
                        plan,
                    );
                }
            }
            if let Some(conv) = &level.sampler {
                hs = tape.piece1(format!("up{i}.upsample"), &[hs], move |v| {
                    conv.forward(upsample_nearest2x(v[0].t4())).into()
                });
                let (_, sh, sw) = *skips.last().expect("skip of the next level");
                hh = sh;
                ww = sw;
            }
        }
        let out = tape
            .piece1("out", &[hs], move |v| self.conv_out.forward(silu(self.conv_norm_out.forward(v[0].t4()))).into());
        (tape, UNetSlots { x, t_proj, context, out, temb, conv_in, down: down_slots, mid })
    }

    /// Predicts noise (or v) for latents `x` `[N, 4, h, w]` at `timesteps` (length N) under the
    /// text conditioning `context` `[N, 77, D]`, with the default memory plan.
    pub fn forward(&self, x: Tensor<4>, timesteps: &[f32], context: &Tensor<3>) -> Tensor<4> {
        self.forward_planned(x, timesteps, context, &MemPlan::default(), &mut ())
    }

    /// [`forward`](Self::forward) with a memory plan and an observer.
    pub fn forward_planned(
        &self,
        x: Tensor<4>,
        timesteps: &[f32],
        context: &Tensor<3>,
        plan: &MemPlan,
        obs: &mut dyn Observer,
    ) -> Tensor<4> {
        let [n, _, h, w] = x.dims();
        let (tape, s) = self.tape(n, h, w, plan);
        let t = self.time_proj(timesteps, &x.device());
        // Half precision only when the plan asks for it; otherwise the input's own dtype.
        let half = plan.precision == super::nn::Precision::F16;
        let dt = x.dtype();
        let cast = |v: Val| if half { v.cast(burn::tensor::FloatDType::F16) } else { v };
        let mut vals = tape.forward(
            vec![(s.x, cast(x.into())), (s.t_proj, cast(t.into())), (s.context, cast(context.clone().into()))],
            false,
            &[s.out],
            obs,
        );
        let out = vals.take(s.out).expect("output").t4();
        if half { out.cast(dt) } else { out }
    }

    /// [`forward`](Self::forward), also returning intermediate activations.
    pub fn forward_traced(&self, x: Tensor<4>, timesteps: &[f32], context: &Tensor<3>) -> (Tensor<4>, UNetTrace) {
        let [n, _, h, w] = x.dims();
        let (tape, s) = self.tape(n, h, w, &MemPlan::default());
        let t = self.time_proj(timesteps, &x.device());
        let mut keep = vec![s.out, s.temb, s.conv_in, s.mid];
        keep.extend(&s.down);
        let mut vals = tape.forward(
            vec![(s.x, x.into()), (s.t_proj, t.into()), (s.context, context.clone().into())],
            false,
            &keep,
            &mut (),
        );
        let out = vals.take(s.out).expect("output").t4();
        let trace = UNetTrace {
            temb: vals.get(s.temb).expect("kept").t2(),
            conv_in: vals.get(s.conv_in).expect("kept").t4(),
            down: s.down.iter().map(|&d| vals.get(d).expect("kept").t4()).collect(),
            mid: vals.get(s.mid).expect("kept").t4(),
        };
        (out, trace)
    }

    /// Width of the conditioning.
    pub fn context_dim(&self) -> usize {
        self.context_dim
    }
}
