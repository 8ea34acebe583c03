//! Conditioning → image: classifier-free guided sampling with the frozen UNet, decoded by the VAE.
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::backend::{read, tensor};
use crate::dist::PromptGaussian;
use crate::model::StableDiffusion;
use crate::rng::Rng;
use crate::schedule::{NoiseSchedule, Sampler, SamplerKind};
use crate::tokenizer::ClipTokenizer;
use crate::{Error, Result};

/// Sampling parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleConfig {
    /// Inference steps.
    pub steps: usize,
    /// Classifier-free guidance scale (1 = none).
    pub guidance: f32,
    /// Sampler.
    pub sampler: SamplerKind,
    /// Spread γ: c̃ = μ + γ·ω⊙σ (0 gives μ).
    pub gamma: f32,
    /// Image side in pixels (multiple of the VAE downscale).
    pub size: usize,
    /// Seed.
    pub seed: u64,
}

impl Default for SampleConfig {
    fn default() -> Self {
        Self { steps: 50, guidance: 7.5, sampler: SamplerKind::Ddim, gamma: 1.0, size: 768, seed: 0 }
    }
}

/// An RGB image, 8 bits per channel, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    /// Width.
    pub width: usize,
    /// Height.
    pub height: usize,
    /// `width × height × 3` bytes.
    pub pixels: Vec<u8>,
}

/// The text encoder's output for a plain prompt `[1, 77, H]` (the empty prompt gives the
/// unconditional embedding of classifier-free guidance).
pub fn encode_text(sd: &StableDiffusion, tokenizer: &ClipTokenizer, text: &str) -> Result<Tensor<3>> {
    let ids = tokenizer.encode(text)?;
    let device = crate::train::model_device(sd);
    let ids = Tensor::<2, Int>::from_data(
        TensorData::new(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [1, 77]),
        &device,
    );
    Ok(sd.text.forward(ids))
}

/// Draws one conditioning `[1, 77, H]` from `g` with spread `gamma`.
pub fn sample_condition(g: &PromptGaussian, gamma: f32, rng: &mut Rng) -> Tensor<3> {
    let [l, h] = g.mu.dims();
    let omega = tensor(rng.normal_vec(l * h), [1, l, h], &g.mu.device());
    g.sample(omega, gamma)
}

/// Generates one image for conditioning `cond` `[1, 77, H]`; `uncond` is the empty prompt's.
/// `on_step(i, n)` is called after each denoising step (progress).
pub async fn generate(
    sd: &StableDiffusion,
    cond: Tensor<3>,
    uncond: Tensor<3>,
    cfg: &SampleConfig,
    rng: &mut Rng,
    mut on_step: impl FnMut(usize, usize),
) -> Result<RgbImage> {
    let down = sd.spec.vae.downscale();
    if cfg.size == 0 || !cfg.size.is_multiple_of(down) || cfg.size > 2048 {
        return Err(Error::Invalid(format!(
            "image size {} must be a positive multiple of {down} up to 2048",
            cfg.size
        )));
    }
    if cfg.steps == 0 || cfg.steps > 1000 {
        return Err(Error::Invalid(format!("steps must be in 1..=1000, got {}", cfg.steps)));
    }
    let device = cond.device();
    let lat = cfg.size / down;
    let shape = [1, sd.spec.unet.in_channels, lat, lat];
    let n: usize = shape.iter().product();
    let mut sampler = Sampler::new(cfg.sampler, sd.spec.unet.prediction, NoiseSchedule::sd21(), cfg.steps);
    let mut x = tensor(rng.normal_vec(n), shape, &device) * sampler.init_noise_sigma();
    let guided = cfg.guidance != 1.0;
    let context = if guided { Tensor::cat(vec![uncond, cond], 0) } else { cond };
    let timesteps = sampler.timesteps().to_vec();
    for (i, &t) in timesteps.iter().enumerate() {
        let input = sampler.scale_model_input(x.clone(), i);
        let out = if guided {
            let both = sd.unet.forward(Tensor::cat(vec![input.clone(), input], 0), &[t, t], &context);
            let [u, c] = <[Tensor<4>; 2]>::try_from(both.chunk(2, 0)).expect("two halves");
            u.clone() + (c - u) * cfg.guidance
        } else {
            sd.unet.forward(input, &[t], &context)
        };
        let noise = sampler.needs_noise().then(|| tensor(rng.normal_vec(n), shape, &device));
        x = sampler.step(out, i, x, noise);
        on_step(i + 1, timesteps.len());
    }
    let img = sd.vae.decode(x / sd.spec.vae.scaling_factor);
    let [_, _, h, w] = img.dims();
    let values = read(img).await?;
    Ok(to_rgb(&values, w, h))
}

/// `[3, H, W]` values in [-1, 1] → interleaved RGB bytes.
pub fn to_rgb(chw: &[f32], width: usize, height: usize) -> RgbImage {
    let plane = width * height;
    let mut pixels = vec![0u8; plane * 3];
    for i in 0..plane {
        for ch in 0..3 {
            let v = (chw[ch * plane + i] + 1.0) * 127.5;
            pixels[i * 3 + ch] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
    RgbImage { width, height, pixels }
}
