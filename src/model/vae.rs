//! `AutoencoderKL` of SD 2.x: the encoder maps images to a diagonal Gaussian posterior over
//! latents; the decoder maps latents back to images. Accepts both current (`to_q`…) and legacy
//! (`query`…) mid-block attention key names.
use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use serde::{Deserialize, Serialize};

use super::nn::{Conv2d, GroupNorm, Linear, attention, upsample_nearest2x};
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

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [n, c, h, w] = x.dims();
        let t = self.group_norm.forward(x.clone()).reshape([n, c, h * w]).swap_dims(1, 2);
        let a = attention(self.to_q.forward(t.clone()), self.to_k.forward(t.clone()), self.to_v.forward(t), 1, false);
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

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.resnet_2.forward(self.attention.forward(self.resnet_1.forward(x, None)), None)
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
            // Stride-2 conv without padding after an asymmetric (0, 1) pad: see `forward`.
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

    /// Encodes images `[N, 3, H, W]` in [-1, 1] to the latent posterior.
    pub fn encode(&self, x: Tensor<4>) -> Posterior {
        let e = &self.encoder;
        let mut h = e.conv_in.forward(x);
        for level in &e.down {
            for r in &level.resnets {
                h = r.forward(h, None);
            }
            if let Some(conv) = &level.sampler {
                let opts = ConvOptions::new_with_padding([2, 2], [(0, 1), (0, 1)], [1, 1], 1);
                h = conv2d(h, conv.weight.val(), Some(conv.bias.val()), opts);
            }
        }
        h = e.mid.forward(h);
        h = e.conv_out.forward(silu(e.conv_norm_out.forward(h)));
        let moments = e.quant_conv.forward(h);
        let [mean, logvar] = <[Tensor<4>; 2]>::try_from(moments.chunk(2, 1)).expect("two chunks");
        Posterior { mean, logvar: logvar.clamp(-30.0, 20.0) }
    }

    /// Decodes unscaled latents `[N, 4, h, w]` to images in about [-1, 1].
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        let d = &self.decoder;
        let mut h = d.conv_in.forward(d.post_quant_conv.forward(z));
        h = d.mid.forward(h);
        for level in &d.up {
            for r in &level.resnets {
                h = r.forward(h, None);
            }
            if let Some(conv) = &level.sampler {
                h = conv.forward(upsample_nearest2x(h));
            }
        }
        d.conv_out.forward(silu(d.conv_norm_out.forward(h)))
    }
}

impl Posterior {
    /// A sample `mean + exp(logvar/2)·noise` with host-drawn `noise` of the same shape.
    pub fn sample(&self, noise: Tensor<4>) -> Tensor<4> {
        self.mean.clone() + (self.logvar.clone() * 0.5).exp() * noise
    }
}
