//! Conditioning → image: classifier-free guided sampling with the frozen UNet, decoded by the VAE.
//!
//! [`generate_batch`] denoises several images at once (one UNet call per step for all of them
//! and their unconditional twins), yields to the caller between steps (progress, and a cancel
//! takes effect within one step), and keeps every tensor within the model's memory plan.
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::backend::{read, tensor};
use crate::distribution::PromptGaussian;
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
    /// Image side in pixels (a multiple of the model's [`size_multiple`](crate::model::ModelSpec::size_multiple)).
    pub size: usize,
    /// Seed.
    pub seed: u64,
}

impl Default for SampleConfig {
    fn default() -> Self {
        Self { steps: 50, guidance: 7.5, sampler: SamplerKind::Ddim, gamma: 1.0, size: 768, seed: 0 }
    }
}

impl SampleConfig {
    /// Checks the parameters against the model before any work.
    pub fn check(&self, sd: &StableDiffusion) -> Result<()> {
        sd.spec.check_size(self.size)?;
        if self.steps == 0 || self.steps > 1000 {
            return Err(Error::Invalid(format!("steps must be in 1..=1000, got {}", self.steps)));
        }
        if !self.guidance.is_finite() || !(0.0..=50.0).contains(&self.guidance) {
            return Err(Error::Invalid(format!("guidance must be in 0..=50, got {}", self.guidance)));
        }
        if !self.gamma.is_finite() || !(0.0..=10.0).contains(&self.gamma) {
            return Err(Error::Invalid(format!("γ must be in 0..=10, got {}", self.gamma)));
        }
        Ok(())
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
    sd.text.forward(&[ids], &sd.device())
}

/// Draws one conditioning `[1, 77, H]` from `g` with spread `gamma`.
pub fn sample_condition(g: &PromptGaussian, gamma: f32, rng: &mut Rng) -> Tensor<3> {
    let [l, h] = g.mu.dims();
    let omega = tensor(rng.normal_vec(l * h), [1, l, h], &g.mu.device());
    g.sample(omega, gamma)
}

/// What [`generate_batch`] reports between steps; returning `false` cancels.
pub type StepHook<'a> = dyn FnMut(usize, usize) -> bool + 'a;

/// Awaits a macrotask so the browser can deliver messages (cancel) and paint; nothing natively.
pub async fn yield_now() {
    #[cfg(target_arch = "wasm32")]
    {
        let p = js_sys::Promise::new(&mut |resolve, _| {
            let g = js_sys::global();
            let set_timeout = js_sys::Reflect::get(&g, &"setTimeout".into()).expect("setTimeout");
            let f: js_sys::Function = set_timeout.into();
            let _ = f.call2(&g, &resolve, &0.into());
        });
        let _ = wasm_bindgen_futures::JsFuture::from(p).await;
    }
}

/// Generates one image per conditioning in `conds` (`[1, 77, H]` each), all denoised together;
/// image `i` starts from its own generator `rngs[i]` (so a seed gives the same image alone or
/// in a batch). `uncond` is the empty prompt's encoding. `on_step(i, n)` runs after each step and
/// cancels by returning `false`.
pub async fn generate_batch(
    sd: &StableDiffusion,
    conds: &[Tensor<3>],
    uncond: Tensor<3>,
    cfg: &SampleConfig,
    rngs: &mut [Rng],
    on_step: &mut StepHook<'_>,
) -> Result<Vec<RgbImage>> {
    cfg.check(sd)?;
    if conds.is_empty() || conds.len() != rngs.len() {
        return Err(Error::Invalid("one generator per conditioning is needed".into()));
    }
    let b = conds.len();
    let device = sd.device();
    let lat = cfg.size / sd.spec.vae.downscale();
    let per = sd.spec.unet.in_channels * lat * lat;
    let mut sampler = Sampler::new(cfg.sampler, sd.spec.unet.prediction, NoiseSchedule::sd21(), cfg.steps);
    let noise0: Vec<f32> = rngs.iter_mut().flat_map(|r| r.normal_vec(per)).collect();
    let shape = [b, sd.spec.unet.in_channels, lat, lat];
    let mut x = tensor(noise0, shape, &device) * sampler.init_noise_sigma();
    let guided = cfg.guidance != 1.0;
    let cond = Tensor::cat(conds.to_vec(), 0);
    let [_, l, h] = uncond.dims();
    let context = if guided { Tensor::cat(vec![uncond.expand([b, l, h]), cond], 0) } else { cond };
    let timesteps = sampler.timesteps().to_vec();
    for (i, &t) in timesteps.iter().enumerate() {
        let input = sampler.scale_model_input(x.clone(), i);
        let out = if guided {
            let both = sd.unet.forward_planned(
                Tensor::cat(vec![input.clone(), input], 0),
                &vec![t; 2 * b],
                &context,
                &sd.plan,
                &mut (),
            );
            let u = both.clone().narrow(0, 0, b);
            let c = both.narrow(0, b, b);
            u.clone() + (c - u) * cfg.guidance
        } else {
            sd.unet.forward_planned(input, &vec![t; b], &context, &sd.plan, &mut ())
        };
        let noise = sampler
            .needs_noise()
            .then(|| tensor(rngs.iter_mut().flat_map(|r| r.normal_vec(per)).collect(), shape, &device));
        x = sampler.step(out, i, x, noise);
        if !on_step(i + 1, timesteps.len()) {
            return Err(Error::Cancelled);
        }
        yield_now().await;
    }
    let mut images = Vec::with_capacity(b);
    for j in 0..b {
        let img = sd.vae.decode_planned(x.clone().narrow(0, j, 1) / sd.spec.vae.scaling_factor, &sd.plan);
        let [_, _, hh, ww] = img.dims();
        images.push(to_rgb(&read(img).await?, ww, hh));
    }
    Ok(images)
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
    let mut rngs = [rng.clone()];
    let mut hook = |i, n| {
        on_step(i, n);
        true
    };
    let mut out = generate_batch(sd, &[cond], uncond, cfg, &mut rngs, &mut hook).await?;
    *rng = rngs[0].clone();
    Ok(out.remove(0))
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

/// A summary of a tensor for cross-backend comparison: shape, sum, sum of |x|, whether every
/// value is finite, and values at fixed positions.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Shape.
    pub shape: Vec<usize>,
    /// Σ x.
    pub sum: f64,
    /// Σ |x|.
    pub sum_abs: f64,
    /// Every value finite.
    pub finite: bool,
    /// Values at 64 evenly spread positions.
    pub samples: Vec<f32>,
}

impl Summary {
    /// Summarises host values.
    pub fn of(shape: &[usize], v: &[f32]) -> Self {
        let n = v.len().max(1);
        Self {
            shape: shape.to_vec(),
            sum: v.iter().map(|&x| x as f64).sum(),
            sum_abs: v.iter().map(|&x| x.abs() as f64).sum(),
            finite: v.iter().all(|x| x.is_finite()),
            samples: (0..64).map(|i| v[i * (n - 1) / 63]).collect(),
        }
    }
    /// Largest difference of the sampled values relative to the largest |sample| of `other`,
    /// and the relative difference of Σ|x|.
    pub fn compare(&self, other: &Summary) -> (f64, f64) {
        let scale = other.samples.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-30) as f64;
        let d = self.samples.iter().zip(&other.samples).map(|(a, b)| (a - b).abs() as f64).fold(0.0, f64::max);
        (d / scale, (self.sum_abs - other.sum_abs).abs() / other.sum_abs.max(1e-30))
    }
}

/// What the full-size proof computed (the browser and the native CPU backend run the same
/// function on the same shards; see scripts/proofs/).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProofReport {
    /// Image side.
    pub size: usize,
    /// Text encoding of the prompt and of the empty prompt, `[2, 77, H]`.
    pub text: Summary,
    /// The guided noise prediction of one UNet step on a batch of 2 (unconditional +
    /// conditional), `[1, 4, s/8, s/8]`.
    pub unet: Summary,
    /// The VAE decode of a fixed latent, `[1, 3, s, s]`.
    pub decode: Summary,
    /// Milliseconds per part.
    pub ms: Vec<(String, f64)>,
    /// Largest device memory in use seen after each part (bytes), where the backend reports it.
    pub peak_bytes: Option<u64>,
}

/// The full-size proof: encode a prompt, one guided UNet step at `size`², decode a latent at
/// `size`² (inputs from `seed`).
pub async fn proof(sd: &StableDiffusion, tokenizer: &ClipTokenizer, size: usize, seed: u64) -> Result<ProofReport> {
    sd.spec.check_size(size)?;
    let device = sd.device();
    let mut ms = vec![];
    // Sampled after each part (the memory in use before the first is never larger).
    let mut peak = crate::model::tape::PeakMemory::new(&device);
    let mut t = crate::backend::now_ms();
    let ids = vec![tokenizer.encode("a photograph of an astronaut riding a horse")?, tokenizer.encode("")?];
    let ctx = sd.text.forward(&ids, &device)?;
    let text_v = read(ctx.clone()).await?;
    peak.note();
    ms.push(("text encoder".to_string(), crate::backend::now_ms() - t));
    t = crate::backend::now_ms();
    let lat = size / sd.spec.vae.downscale();
    let mut rng = Rng::new(seed);
    let x = tensor(rng.normal_vec(4 * lat * lat), [1, 4, lat, lat], &device);
    let both = sd.unet.forward_planned(Tensor::cat(vec![x.clone(), x], 0), &[981.0, 981.0], &ctx, &sd.plan, &mut ());
    let c = both.clone().narrow(0, 0, 1);
    let u = both.narrow(0, 1, 1);
    let guided = u.clone() + (c - u) * 7.5;
    let unet_v = read(guided).await?;
    peak.note();
    ms.push((format!("guided UNet step (batch 2) at {size}²"), crate::backend::now_ms() - t));
    t = crate::backend::now_ms();
    let z = tensor(rng.normal_vec(4 * lat * lat), [1, 4, lat, lat], &device);
    let img = sd.vae.decode_planned(z, &sd.plan);
    let dec = read(img).await?;
    peak.note();
    ms.push((format!("VAE decode at {size}²"), crate::backend::now_ms() - t));
    let h = sd.spec.clip.hidden_size;
    Ok(ProofReport {
        size,
        text: Summary::of(&[2, crate::tokenizer::MAX_LEN, h], &text_v),
        unet: Summary::of(&[1, 4, lat, lat], &unet_v),
        decode: Summary::of(&[1, 3, size, size], &dec),
        ms,
        peak_bytes: peak.bytes,
    })
}
