//! `AutoencoderKL` of SD 2.x: the encoder maps images to a diagonal Gaussian posterior over
//! latents; the decoder maps latents back to images. Accepts both current (`to_q`…) and legacy
//! (`query`…) mid-block attention key names.
//!
//! At full resolution the autoencoder's activations outgrow a GPU binding (the decoder's
//! upsampled 256-channel map at 512² is 268 MB; WebGPU gives 128 MiB by default). Those levels
//! run on horizontal **bands** of rows ([`Bands`]): convolutions read one halo row from each
//! neighbouring band, group norms gather their statistics over all bands first, and every other
//! operation is per pixel. The result is the same computation as on the whole image (no tiles,
//! no seams), with no tensor above the memory plan's block size.
use burn::module::Module;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::nn::{Conv2d, GroupNorm, Linear, MemPlan, attention_chunked, silu, upsample_nearest2x};
use super::reduce::{group_sq_dev_sums, group_sums};
use super::unet::ResnetBlock;
use crate::weights::{KeyRewrite, Vb};

/// VAE configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VaeConfig {
    /// Channels of each level.
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder level (decoder levels have one more).
    pub layers_per_block: usize,
    /// Latent channels.
    pub latent_channels: usize,
    /// Group norm groups.
    pub norm_num_groups: usize,
    /// Latent scaling factor.
    pub scaling_factor: f32,
}

impl VaeConfig {
    /// SD 2.1 (same VAE for the 768 and 512 models).
    pub fn sd21() -> Self {
        Self {
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            latent_channels: 4,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
        }
    }

    /// SD 2.1-base.
    pub fn sd21_base() -> Self {
        Self::sd21()
    }

    /// The tiny architecture of the parity fixtures.
    pub fn tiny() -> Self {
        Self {
            block_out_channels: vec![32, 64],
            layers_per_block: 1,
            latent_channels: 4,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
        }
    }

    /// Downsampling factor image → latent.
    pub fn downscale(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }

    /// Key rewrites: legacy attention names → current ones.
    pub fn key_rewrites() -> &'static [KeyRewrite] {
        &[
            KeyRewrite::Segment(".attentions.0.query.", ".attentions.0.to_q."),
            KeyRewrite::Segment(".attentions.0.key.", ".attentions.0.to_k."),
            KeyRewrite::Segment(".attentions.0.value.", ".attentions.0.to_v."),
            KeyRewrite::Segment(".attentions.0.proj_attn.", ".attentions.0.to_out.0."),
        ]
    }
}

/// An activation `[N, C, H, W]` held as horizontal bands of rows, top to bottom.
#[derive(Clone, Debug)]
pub struct Bands {
    parts: Vec<Tensor<4>>,
}

fn bytes_per_row(t: &Tensor<4>) -> usize {
    let [n, c, _, w] = t.dims();
    n * c * w * 4
}

impl Bands {
    /// Splits `x` into bands whose rows, at `channels` channels, stay within `cap` bytes;
    /// band heights are multiples of `multiple` (except possibly the last).
    pub fn split(x: Tensor<4>, channels: usize, cap: usize, multiple: usize) -> Self {
        Bands { parts: vec![x] }.rebalance(channels, cap, multiple)
    }

    /// Re-splits bands so that each, at `channels` channels, is within `cap` bytes.
    pub fn rebalance(self, channels: usize, cap: usize, multiple: usize) -> Self {
        let mut parts = vec![];
        for p in self.parts {
            let [n, _, h, w] = p.dims();
            let row = n * channels.max(p.dims()[1]) * w * 4;
            let mut rows = (cap / row.max(1)).max(1);
            rows = (rows / multiple).max(1) * multiple;
            if rows >= h {
                parts.push(p);
                continue;
            }
            let mut s = 0;
            while s < h {
                let len = rows.min(h - s);
                parts.push(p.clone().narrow(2, s, len));
                s += len;
            }
        }
        Bands { parts }
    }

    /// The whole activation.
    pub fn join(self) -> Tensor<4> {
        if self.parts.len() == 1 {
            return self.parts.into_iter().next().expect("one band");
        }
        Tensor::cat(self.parts, 2)
    }

    /// Number of bands.
    pub fn len(&self) -> usize {
        self.parts.len()
    }

    /// Whether there are no bands.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Largest band in bytes.
    pub fn largest_bytes(&self) -> usize {
        self.parts.iter().map(|p| bytes_per_row(p) * p.dims()[2]).max().unwrap_or(0)
    }

    fn map(self, f: impl Fn(Tensor<4>) -> Tensor<4>) -> Self {
        Bands { parts: self.parts.into_iter().map(f).collect() }
    }

    fn add(self, other: Bands) -> Self {
        assert_eq!(self.parts.len(), other.parts.len(), "band layouts differ");
        Bands { parts: self.parts.into_iter().zip(other.parts).map(|(a, b)| a + b).collect() }
    }

    /// A 3×3, stride-1, padding-1 convolution: each band reads one halo row from its neighbours.
    pub fn conv3(&self, conv: &Conv2d) -> Self {
        let n = self.parts.len();
        let parts = (0..n)
            .map(|i| {
                let mut rows = vec![];
                if i > 0 {
                    let p = &self.parts[i - 1];
                    let h = p.dims()[2];
                    rows.push(p.clone().narrow(2, h - 1, 1));
                }
                rows.push(self.parts[i].clone());
                if i + 1 < n {
                    rows.push(self.parts[i + 1].clone().narrow(2, 0, 1));
                }
                let x = if rows.len() == 1 { rows.pop().expect("one") } else { Tensor::cat(rows, 2) };
                let top = usize::from(i == 0);
                let bottom = usize::from(i + 1 == n);
                conv.forward_padded(x, [(top, bottom), (1, 1)])
            })
            .collect();
        Bands { parts }
    }

    /// The encoder's downsampling: pad (0, 1) bottom/right, 3×3 stride 2; band heights must be
    /// even (each band reads the first row of the next).
    pub fn conv_down(&self, conv: &Conv2d) -> Self {
        let n = self.parts.len();
        let parts = (0..n)
            .map(|i| {
                let x = if i + 1 < n {
                    Tensor::cat(vec![self.parts[i].clone(), self.parts[i + 1].clone().narrow(2, 0, 1)], 2)
                } else {
                    self.parts[i].clone()
                };
                conv.forward_padded(x, [(0, usize::from(i + 1 == n)), (0, 1)])
            })
            .collect();
        Bands { parts }
    }

    /// Group norm with statistics over all bands (two passes: mean, then variance).
    pub fn group_norm(&self, gn: &GroupNorm) -> Self {
        if self.parts.len() == 1 {
            return Bands { parts: vec![gn.forward(self.parts[0].clone())] };
        }
        let g = gn.groups;
        let count: usize = self.parts.iter().map(|p| p.dims()[1] / g * p.dims()[2] * p.dims()[3]).sum();
        let sum = self.parts.iter().map(|p| group_sums(p.clone(), g)).reduce(|a, b| a + b).expect("bands");
        let mean = sum / count as f32;
        let sq = self
            .parts
            .iter()
            .map(|p| group_sq_dev_sums(p.clone(), mean.clone(), g))
            .reduce(|a, b| a + b)
            .expect("bands");
        let var = sq / count as f32;
        Bands { parts: self.parts.iter().map(|p| gn.apply(p.clone(), mean.clone(), var.clone())).collect() }
    }
}

/// A resnet (no timestep) on bands.
fn resnet_bands(r: &ResnetBlock, x: Bands, cap: usize) -> Bands {
    let c_out = r.conv1.weight.val().dims()[0];
    let x = x.rebalance(c_out, cap, 2);
    let h = x.group_norm(&r.norm1).map(silu).conv3(&r.conv1);
    let h = h.group_norm(&r.norm2).map(silu).conv3(&r.conv2);
    let x = match &r.conv_shortcut {
        Some(c) => x.map(|p| c.forward(p)),
        None => x,
    };
    x.add(h)
}

/// Single-head self-attention over pixels, with residual.
#[derive(Module, Debug)]
pub struct VaeAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
}

impl VaeAttention {
    fn new(vb: &Vb, c: usize, groups: usize) -> Self {
        Self {
            group_norm: GroupNorm::new(&vb.pp("group_norm"), groups, c, 1e-6),
            to_q: Linear::new(&vb.pp("to_q"), c, c, true),
            to_k: Linear::new(&vb.pp("to_k"), c, c, true),
            to_v: Linear::new(&vb.pp("to_v"), c, c, true),
            to_out: Linear::new(&vb.pp("to_out.0"), c, c, true),
        }
    }

    fn forward(&self, x: Tensor<4>, plan: &MemPlan) -> Tensor<4> {
        let [n, c, h, w] = x.dims();
        let t = self.group_norm.forward(x.clone()).reshape([n, c, h * w]).swap_dims(1, 2);
        let a = attention_chunked(
            self.to_q.forward(t.clone()),
            self.to_k.forward(t.clone()),
            self.to_v.forward(t),
            1,
            false,
            plan,
        );
        x + self.to_out.forward(a).swap_dims(1, 2).reshape([n, c, h, w])
    }
}

/// Resnet – attention – resnet.
#[derive(Module, Debug)]
pub struct VaeMid {
    resnet_1: ResnetBlock,
    attention: VaeAttention,
    resnet_2: ResnetBlock,
}

impl VaeMid {
    fn new(vb: &Vb, c: usize, g: usize) -> Self {
        Self {
            resnet_1: ResnetBlock::new(&vb.pp("resnets.0"), c, c, None, g, 1e-6),
            attention: VaeAttention::new(&vb.pp("attentions.0"), c, g),
            resnet_2: ResnetBlock::new(&vb.pp("resnets.1"), c, c, None, g, 1e-6),
        }
    }

    fn forward(&self, x: Tensor<4>, plan: &MemPlan) -> Tensor<4> {
        self.resnet_2.forward(self.attention.forward(self.resnet_1.forward(x, None), plan), None)
    }
}

/// A level of the encoder or decoder.
#[derive(Module, Debug)]
pub struct VaeLevel {
    resnets: Vec<ResnetBlock>,
    sampler: Option<Conv2d>,
}

/// `n` resnets `resnets.0…` of a VAE level: the first maps `c_in → c_out`, the rest keep `c_out`.
fn resnet_chain(vb: &Vb, n: usize, c_in: usize, c_out: usize, groups: usize) -> Vec<ResnetBlock> {
    (0..n)
        .map(|j| {
            ResnetBlock::new(
                &vb.pp(format!("resnets.{j}")),
                if j == 0 { c_in } else { c_out },
                c_out,
                None,
                groups,
                1e-6,
            )
        })
        .collect()
}

/// The image → posterior encoder (with `quant_conv`).
#[derive(Module, Debug)]
pub struct VaeEncoder {
    conv_in: Conv2d,
    down: Vec<VaeLevel>,
    mid: VaeMid,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    quant_conv: Conv2d,
}

/// The latent → image decoder (with `post_quant_conv`).
#[derive(Module, Debug)]
pub struct VaeDecoder {
    post_quant_conv: Conv2d,
    conv_in: Conv2d,
    mid: VaeMid,
    up: Vec<VaeLevel>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

/// The autoencoder.
#[derive(Module, Debug)]
pub struct Vae {
    /// Encoder.
    pub encoder: VaeEncoder,
    /// Decoder.
    pub decoder: VaeDecoder,
    /// Latent scaling factor.
    pub scaling_factor: f32,
}

/// The posterior of a batch of images: a diagonal Gaussian over (unscaled) latents.
#[derive(Clone, Debug)]
pub struct Posterior {
    /// Mean `[N, 4, h, w]`.
    pub mean: Tensor<4>,
    /// Log-variance, clamped to [-30, 20] as diffusers does.
    pub logvar: Tensor<4>,
}

impl Vae {
    /// Builds the VAE from `vb` (diffusers names, after [`VaeConfig::key_rewrites`]).
    pub fn new(vb: &Vb, cfg: &VaeConfig) -> Self {
        let boc = &cfg.block_out_channels;
        let (n, g, lat) = (boc.len(), cfg.norm_num_groups, cfg.latent_channels);
        let e = vb.pp("encoder");
        let mut down = vec![];
        let mut out_c = boc[0];
        for (i, &c) in boc.iter().enumerate() {
            let in_c = out_c;
            out_c = c;
            let vbl = e.pp(format!("down_blocks.{i}"));
            let resnets = resnet_chain(&vbl, cfg.layers_per_block, in_c, out_c, g);
            // Stride-2 conv without padding after an asymmetric (0, 1) pad: see `encode`.
            let sampler = (i + 1 < n).then(|| Conv2d::new(&vbl.pp("downsamplers.0.conv"), out_c, out_c, 3, 2, 0));
            down.push(VaeLevel { resnets, sampler });
        }
        let top = boc[n - 1];
        let encoder = VaeEncoder {
            conv_in: Conv2d::new(&e.pp("conv_in"), 3, boc[0], 3, 1, 1),
            down,
            mid: VaeMid::new(&e.pp("mid_block"), top, g),
            conv_norm_out: GroupNorm::new(&e.pp("conv_norm_out"), g, top, 1e-6),
            conv_out: Conv2d::new(&e.pp("conv_out"), top, 2 * lat, 3, 1, 1),
            quant_conv: Conv2d::new(&vb.pp("quant_conv"), 2 * lat, 2 * lat, 1, 1, 0),
        };
        let d = vb.pp("decoder");
        let rev: Vec<usize> = boc.iter().rev().copied().collect();
        let mut up = vec![];
        let mut out_c = rev[0];
        for (i, &c) in rev.iter().enumerate() {
            let prev_c = out_c;
            out_c = c;
            let vbl = d.pp(format!("up_blocks.{i}"));
            let resnets = resnet_chain(&vbl, cfg.layers_per_block + 1, prev_c, out_c, g);
            let sampler = (i + 1 < n).then(|| Conv2d::new(&vbl.pp("upsamplers.0.conv"), out_c, out_c, 3, 1, 1));
            up.push(VaeLevel { resnets, sampler });
        }
        let decoder = VaeDecoder {
            post_quant_conv: Conv2d::new(&vb.pp("post_quant_conv"), lat, lat, 1, 1, 0),
            conv_in: Conv2d::new(&d.pp("conv_in"), lat, top, 3, 1, 1),
            mid: VaeMid::new(&d.pp("mid_block"), top, g),
            up,
            conv_norm_out: GroupNorm::new(&d.pp("conv_norm_out"), g, boc[0], 1e-6),
            conv_out: Conv2d::new(&d.pp("conv_out"), boc[0], 3, 3, 1, 1),
        };
        Self { encoder, decoder, scaling_factor: cfg.scaling_factor }
    }

    /// Encodes images `[N, 3, H, W]` in [-1, 1] to the latent posterior (default plan).
    pub fn encode(&self, x: Tensor<4>) -> Posterior {
        self.encode_planned(x, &MemPlan::default())
    }

    /// [`encode`](Self::encode) within a memory plan.
    pub fn encode_planned(&self, x: Tensor<4>, plan: &MemPlan) -> Posterior {
        let e = &self.encoder;
        let cap = plan.max_block_bytes;
        let c0 = e.conv_in.weight.val().dims()[0];
        // Bands of even height (the downsampling convolutions read pairs of rows).
        let mut h = Bands::split(x, c0, cap, 2).conv3(&e.conv_in);
        for level in &e.down {
            for r in &level.resnets {
                h = resnet_bands(r, h, cap);
            }
            if let Some(conv) = &level.sampler {
                h = h.rebalance(0, cap, 2).conv_down(conv);
            }
        }
        let h = e.mid.forward(h.join(), plan);
        let h = e.conv_out.forward(silu(e.conv_norm_out.forward(h)));
        let moments = e.quant_conv.forward(h);
        let [mean, logvar] = <[Tensor<4>; 2]>::try_from(moments.chunk(2, 1)).expect("two chunks");
        Posterior { mean, logvar: logvar.clamp(-30.0, 20.0) }
    }

    /// Decodes unscaled latents `[N, 4, h, w]` to images in about [-1, 1] (default plan).
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        self.decode_planned(z, &MemPlan::default())
    }

    /// [`decode`](Self::decode) within a memory plan.
    pub fn decode_planned(&self, z: Tensor<4>, plan: &MemPlan) -> Tensor<4> {
        let d = &self.decoder;
        let cap = plan.max_block_bytes;
        let h = d.conv_in.forward(d.post_quant_conv.forward(z));
        let h = d.mid.forward(h, plan);
        let c = h.dims()[1];
        let mut b = Bands::split(h, c, cap, 1);
        for level in &d.up {
            for r in &level.resnets {
                b = resnet_bands(r, b, cap);
            }
            if let Some(conv) = &level.sampler {
                // Upsampling quadruples a band: split first so the result fits.
                let c = conv.weight.val().dims()[0];
                b = b.rebalance(4 * c, cap, 1).map(upsample_nearest2x).conv3(conv);
            }
        }
        let b = b.group_norm(&d.conv_norm_out).map(silu).conv3(&d.conv_out);
        b.join()
    }
}

impl Posterior {
    /// A sample `mean + exp(logvar/2)·noise` with host-drawn `noise` of the same shape.
    pub fn sample(&self, noise: Tensor<4>) -> Tensor<4> {
        self.mean.clone() + (self.logvar.clone() * 0.5).exp() * noise
    }
}
