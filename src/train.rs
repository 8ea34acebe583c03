//! Algorithm 1 of DreamDistribution: learn K soft prompts whose encoder outputs form a Gaussian
//! that explains the reference images under the frozen UNet's denoising loss, plus
//! λ·orthogonality between prompts. Only the prompt embeddings V learn; the networks are
//! frozen and never receive gradients.
//!
//! A step computes the exact gradient ∂L/∂V with block-wise backpropagation (see
//! [`crate::model::tape`]): the text encoder and the UNet run forward without autodiff keeping
//! only their piece boundaries, then walk back piece by piece, recomputing one piece at a time
//! under autodiff. Peak memory is the boundaries plus one piece (one resnet, one block of
//! attention queries, one chunk of feed-forward tokens), not the whole graph.
//!
//! Two recipes: [`Recipe::Paper`] (the default: the paper's Algorithm 1 and settings) and
//! [`Recipe::Authors`] (the authors' released training script); docs/METHOD.md lists every
//! difference with its source.
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::backend::{read, tensor};
use crate::distribution::{
    OrthoFeatures, OrthoForm, PromptGaussian, PromptLayout, SigmaEstimate, Template, fit_gaussian, ortho_loss_with,
};
use crate::model::StableDiffusion;
use crate::model::reduce::{mean_all, sum_all};
use crate::model::tape::{GraphBudget, Observer, Val};
use crate::rng::Rng;
use crate::schedule::NoiseSchedule;
use crate::tokenizer::{ClipTokenizer, MAX_LEN};
use crate::{Error, Result};

/// Learning mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// K prompts, Gaussian over their encodings, reparameterised samples (the paper).
    #[default]
    DreamDistribution,
    /// Textual Inversion: one prompt (K = 1), no sampling (the paper's main baseline): one
    /// UNet pass per image.
    TextualInversion,
}

/// Which settings a run follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Recipe {
    /// The paper (Algorithm 1 and its stated settings). Default.
    #[default]
    Paper,
    /// The authors' released training script (briannlongzhao/DreamDistribution `train.py`).
    Authors,
}

impl std::str::FromStr for Recipe {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "paper" => Ok(Recipe::Paper),
            "authors" => Ok(Recipe::Authors),
            _ => Err(Error::Invalid(format!("unknown recipe {s:?} (paper or authors)"))),
        }
    }
}

/// The optimizer of V.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Optimizer {
    /// Adam (β₁ 0.9, β₂ 0.999, ε 1e-8).
    Adam,
    /// AdamW with decoupled weight decay.
    AdamW {
        /// Weight decay.
        weight_decay: f32,
    },
}

/// How a reference image is cropped to the training square.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Crop {
    /// The centre square (fixed).
    #[default]
    Center,
    /// A random square each step (in latent space: the image is encoded once with its aspect
    /// kept, and a square of latents is cut at a random offset).
    Random,
}

/// Training hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// Number of prompts K.
    pub k: usize,
    /// Learned tokens per prompt M.
    pub m: usize,
    /// Reparameterised samples per image per step S.
    pub samples: usize,
    /// Weight λ of the orthogonality loss.
    pub lambda: f32,
    /// Learning rate (constant).
    pub lr: f32,
    /// Optimisation steps.
    pub steps: u64,
    /// Training image side in pixels.
    pub resolution: usize,
    /// Seed of every random draw.
    pub seed: u64,
    /// Template around the learned tokens.
    pub template: String,
    /// Features compared by the orthogonality loss.
    pub ortho: OrthoFeatures,
    /// Mode.
    pub mode: Mode,
    /// Initialise V from this word's token embedding (plus N(0, 0.02) noise).
    pub init_word: Option<String>,
    /// Which recipe the settings below came from.
    pub recipe: Recipe,
    /// Reference images per step (each with its own timestep, noise and S samples).
    pub images_per_step: usize,
    /// Optimizer.
    pub optimizer: Optimizer,
    /// Min-SNR loss weighting γ (`min(SNR, γ)/SNR` per item, as the authors' code); `None` = off.
    pub min_snr_gamma: Option<f32>,
    /// Crop.
    pub crop: Crop,
    /// σ estimate.
    pub sigma: SigmaEstimate,
    /// Orthogonality-loss form.
    pub ortho_form: OrthoForm,
    /// Clip the gradient's global L2 norm to this value.
    pub grad_clip: Option<f32>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self::paper()
    }
}

impl TrainConfig {
    /// The paper's settings (Algorithm 1).
    pub fn paper() -> Self {
        Self {
            k: 32,
            m: 4,
            samples: 4,
            lambda: 5e-3,
            lr: 1e-3,
            steps: 1500,
            resolution: 512,
            seed: 0,
            template: "{}".into(),
            ortho: OrthoFeatures::Eos,
            mode: Mode::DreamDistribution,
            init_word: None,
            recipe: Recipe::Paper,
            images_per_step: 1,
            optimizer: Optimizer::Adam,
            min_snr_gamma: None,
            crop: Crop::Center,
            sigma: SigmaEstimate::Population,
            ortho_form: OrthoForm::AbsPairs,
            grad_clip: None,
        }
    }

    /// The authors' released script: squared cosine over ordered pairs, λ = 1e-3, 2000 steps,
    /// 4 images per step, AdamW (weight decay 1e-2), Min-SNR γ = 5, random crop, unbiased σ,
    /// gradient clipping at 1.0.
    pub fn authors() -> Self {
        Self {
            lambda: 1e-3,
            steps: 2000,
            recipe: Recipe::Authors,
            images_per_step: 4,
            optimizer: Optimizer::AdamW { weight_decay: 1e-2 },
            min_snr_gamma: Some(5.0),
            crop: Crop::Random,
            sigma: SigmaEstimate::Unbiased,
            ortho_form: OrthoForm::SquaredOrdered,
            grad_clip: Some(1.0),
            ..Self::paper()
        }
    }

    /// The settings of a recipe.
    pub fn for_recipe(r: Recipe) -> Self {
        match r {
            Recipe::Paper => Self::paper(),
            Recipe::Authors => Self::authors(),
        }
    }

    /// UNet items per step: S per image (DreamDistribution) or one per image (Textual Inversion).
    pub fn unet_items(&self) -> usize {
        match self.mode {
            Mode::DreamDistribution => self.images_per_step * self.samples,
            Mode::TextualInversion => self.images_per_step,
        }
    }
}

/// The denoising loss of conditionings `cond` `[S, 77, H]` on latent `x0` `[1, 4, h, w]` at
/// timestep `t` with noise `eps`: mean over samples and elements of (target − UNet(xₜ, t, c̃))²
/// (evaluation; training computes the same loss block-wise in [`Trainer::gradient`]).
pub fn denoise_loss(
    sd: &StableDiffusion,
    schedule: &NoiseSchedule,
    cond: Tensor<3>,
    x0: Tensor<4>,
    eps: Tensor<4>,
    t: usize,
) -> Tensor<1> {
    let s = cond.dims()[0];
    let [_, c, h, w] = x0.dims();
    let xt = schedule.add_noise(x0.clone(), eps.clone(), &[t]);
    let target = schedule.target(sd.spec.unet.prediction, x0, eps, &[t]);
    let pred = sd.unet.forward_planned(xt.expand([s, c, h, w]), &vec![t as f32; s], &cond, &sd.plan, &mut ());
    mean_all((pred - target.expand([s, c, h, w])).powi_scalar(2))
}

/// Adam / AdamW on one tensor, state kept on the device.
#[derive(Clone, Debug)]
pub struct Adam {
    /// Learning rate.
    pub lr: f32,
    /// Decoupled weight decay (0 for Adam).
    pub weight_decay: f32,
    /// First moment.
    pub m: Tensor<3>,
    /// Second moment.
    pub v: Tensor<3>,
    /// Steps taken.
    pub t: u64,
}

impl Adam {
    const B1: f32 = 0.9;
    const B2: f32 = 0.999;
    const EPS: f32 = 1e-8;

    /// Zero state shaped like `like`.
    pub fn new(lr: f32, weight_decay: f32, like: &Tensor<3>) -> Self {
        Self { lr, weight_decay, m: like.zeros_like(), v: like.zeros_like(), t: 0 }
    }

    /// Returns `param` after one step along `grad` (torch's Adam / AdamW update).
    pub fn step(&mut self, param: Tensor<3>, grad: Tensor<3>) -> Tensor<3> {
        self.t += 1;
        let param = if self.weight_decay > 0.0 { param.clone() - param * (self.lr * self.weight_decay) } else { param };
        self.m = self.m.clone() * Self::B1 + grad.clone() * (1.0 - Self::B1);
        self.v = self.v.clone() * Self::B2 + grad.powi_scalar(2) * (1.0 - Self::B2);
        let bc1 = 1.0 - Self::B1.powi(self.t as i32);
        let bc2 = 1.0 - Self::B2.powi(self.t as i32);
        let update = (self.m.clone() / bc1) / ((self.v.clone() / bc2).sqrt() + Self::EPS);
        param - update * self.lr
    }
}

/// Losses of one step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// Step number (1-based).
    pub step: u64,
    /// Total loss.
    pub loss: f32,
    /// Denoising part (weighted mean over the UNet items).
    pub denoise: f32,
    /// Orthogonality part (before λ).
    pub ortho: f32,
}

/// A reference image's cached VAE posterior (unscaled latents), at the image's own aspect.
#[derive(Clone, Debug)]
pub struct CachedLatent {
    /// Posterior mean `[1, 4, h, w]`.
    pub mean: Tensor<4>,
    /// Posterior standard deviation.
    pub std: Tensor<4>,
}

/// The random draws of one step (all made on the host, so every backend sees the same).
#[derive(Clone, Debug)]
pub struct StepDraws {
    /// Per image of the step: cached-latent index, timestep, crop offset (latent rows, columns).
    pub images: Vec<(usize, usize, (usize, usize))>,
    /// Per image: posterior noise and diffusion noise, `[1, 4, s, s]` each (host values).
    pub noise: Vec<(Vec<f32>, Vec<f32>)>,
    /// ω for the reparameterised samples, `[items, 77, H]` (empty in Textual Inversion mode).
    pub omega: Vec<f32>,
}

/// How a step's UNet work is split to bound memory (the gradient is the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunking {
    /// UNet items (image × sample pairs) per forward/backward.
    pub unet: usize,
    /// Bytes of autodiff graph the step's forwards may keep so that the backward need not
    /// recompute those pieces (see [`GraphBudget`]). Only the host CPU backend keeps any; on
    /// a GPU every piece is recomputed (memory is the hard limit there). `None`: half of the
    /// host memory available when the chunking is set (see [`Chunking::graph_limit`]).
    #[serde(default)]
    pub graph_bytes: Option<u64>,
}

impl Default for Chunking {
    fn default() -> Self {
        Self { unet: 1, graph_bytes: None }
    }
}

impl Chunking {
    /// The default for a model: small models (the demo and tiny ones, ≤ 64 px) run a step's
    /// UNet work in one pass (3× faster on the CPU than item by item); full-size ones item by
    /// item, which bounds activation memory.
    pub fn for_model(spec: &crate::model::ModelSpec) -> Self {
        if spec.native_resolution() <= 64 { Self::unchunked() } else { Self::default() }
    }

    /// Everything in one pass.
    pub fn unchunked() -> Self {
        Self { unet: usize::MAX, graph_bytes: None }
    }

    /// `unet` items per pass, graphs kept as by default.
    pub fn unet(unet: usize) -> Self {
        Self { unet, ..Self::default() }
    }

    /// The bytes of graph a step on `device` may keep: 0 off the host CPU backend.
    pub fn graph_limit(&self, device: &burn::tensor::Device) -> u64 {
        match self.graph_bytes {
            Some(b) if crate::backend::is_host(device) => b,
            Some(_) => 0,
            None => GraphBudget::for_device(device).limit,
        }
    }
}

/// The training state: everything needed to continue, and to resume bit-identically.
pub struct Trainer {
    /// Hyper-parameters.
    pub cfg: TrainConfig,
    layout: PromptLayout,
    /// Current prompt embeddings V `[K, M, H]`.
    v: Tensor<3>,
    adam: Adam,
    rng: Rng,
    latents: Vec<CachedLatent>,
    schedule: NoiseSchedule,
    /// Order of images for multi-image steps (an epoch, reshuffled when used up).
    order: Vec<usize>,
    /// Steps done.
    pub step: u64,
    /// Total loss per step so far.
    pub losses: Vec<f32>,
    chunking: Chunking,
    /// The graph budget's limit, fixed when the chunking is set (later steps would otherwise
    /// see the memory the allocator keeps from earlier ones as taken).
    graph_limit: u64,
}

/// How many lanes (threads) a step's independent work may use on `device`: 2 on the host CPU
/// backend with at least two cores, else 1 (GPUs queue their work themselves; the browser has
/// no threads here). Measured on 2 cores at 256²: 4 lanes (38.4 s) and 2 lanes of two UNet
/// items per pass (39.6 s) were slower than 2 lanes of one item (35.1–36.3 s).
fn lanes(device: &burn::tensor::Device) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if crate::backend::is_host(device) && cores >= 2 { 2 } else { 1 }
}

/// `n` items in `parts` contiguous ranges `(start, len)` (fewer when `n` is smaller).
fn split(n: usize, parts: usize) -> Vec<(usize, usize)> {
    let parts = parts.clamp(1, n.max(1));
    let base = n / parts;
    let extra = n % parts;
    let mut start = 0;
    (0..parts)
        .map(|i| {
            let len = base + usize::from(i < extra);
            let r = (start, len);
            start += len;
            r
        })
        .filter(|&(_, len)| len > 0)
        .collect()
}

/// Runs `f` on each job, the first on this thread (with `obs`), the others on their own
/// threads at the same time (unobserved); results in job order. One job: no thread.
fn in_lanes<J: Send, R: Send>(
    jobs: Vec<J>,
    obs: &mut dyn Observer,
    f: impl Fn(J, &mut dyn Observer) -> R + Sync,
) -> Vec<R> {
    let mut jobs = jobs.into_iter();
    let Some(first) = jobs.next() else { return vec![] };
    let rest: Vec<J> = jobs.collect();
    if rest.is_empty() {
        return vec![f(first, obs)];
    }
    std::thread::scope(|scope| {
        let f = &f;
        let handles: Vec<_> = rest.into_iter().map(|j| scope.spawn(move || f(j, &mut ()))).collect();
        let mut out = vec![f(first, obs)];
        out.extend(handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))));
        out
    })
}

fn bad_grad(what: &str) -> Error {
    Error::Device(format!("no gradient reached {what}"))
}

impl Trainer {
    /// Sets up training on `images` (each `[1, 3, H, W]` in [-1, 1], the shorter side at the
    /// training resolution; centre-cropped squares for [`Crop::Center`]). The VAE posterior of
    /// each image is computed once and cached.
    pub async fn new(
        cfg: TrainConfig,
        sd: &StableDiffusion,
        tokenizer: &ClipTokenizer,
        images: &[Tensor<4>],
    ) -> Result<Self> {
        if images.is_empty() {
            return Err(Error::Invalid("training needs at least one reference image".into()));
        }
        if cfg.mode == Mode::TextualInversion && cfg.k != 1 {
            return Err(Error::Invalid(format!("Textual Inversion mode uses K = 1, got K = {}", cfg.k)));
        }
        if cfg.k == 0 || cfg.samples == 0 || cfg.m == 0 || cfg.images_per_step == 0 {
            return Err(Error::Invalid("K, M, S and images per step must be at least 1".into()));
        }
        if !(cfg.lr > 0.0 && cfg.lr.is_finite() && cfg.lambda >= 0.0 && cfg.lambda.is_finite()) {
            return Err(Error::Invalid(format!("invalid lr {} or lambda {}", cfg.lr, cfg.lambda)));
        }
        sd.spec.check_size(cfg.resolution)?;
        let device = sd.device();
        let template = Template::parse(&cfg.template)?;
        let layout = PromptLayout::new(tokenizer, &template, cfg.m)?;
        let mut rng = Rng::new(cfg.seed);
        let init = match &cfg.init_word {
            Some(w) => Some(crate::distribution::prompt::token_embedding_row(&sd.text, tokenizer, w)?),
            None => None,
        };
        let hidden = sd.spec.clip.hidden_size;
        let v0 = crate::distribution::prompt::init_prompts(cfg.k, cfg.m, hidden, &mut rng, init.as_deref());
        let v = tensor(v0, [cfg.k, cfg.m, hidden], &device);
        let lat_side = cfg.resolution / sd.spec.vae.downscale();
        let mut latents = vec![];
        for img in images {
            let [_, _, h, w] = img.dims();
            if h.min(w) != cfg.resolution {
                return Err(Error::Invalid(format!(
                    "reference images must have their shorter side at the training resolution {}, got {h}×{w}",
                    cfg.resolution
                )));
            }
            let p = sd.vae.encode_planned(img.clone().without_autodiff(), &sd.plan);
            let lat = CachedLatent { mean: p.mean, std: (p.logvar * 0.5).exp() };
            let [_, _, lh, lw] = lat.mean.dims();
            if lh.min(lw) != lat_side {
                return Err(Error::Invalid(format!("unexpected latent size {lh}×{lw}")));
            }
            latents.push(lat);
        }
        let wd = match cfg.optimizer {
            Optimizer::Adam => 0.0,
            Optimizer::AdamW { weight_decay } => weight_decay,
        };
        let adam = Adam::new(cfg.lr, wd, &v);
        let chunking = Chunking::for_model(&sd.spec);
        Ok(Self {
            cfg,
            layout,
            v,
            adam,
            rng,
            latents,
            schedule: NoiseSchedule::sd21(),
            order: vec![],
            step: 0,
            losses: vec![],
            graph_limit: chunking.graph_limit(&sd.device()),
            chunking,
        })
    }

    /// The prompt layout (template around the learned tokens).
    pub fn layout(&self) -> &PromptLayout {
        &self.layout
    }

    /// The current prompt embeddings V `[K, M, H]`.
    pub fn prompts(&self) -> Tensor<3> {
        self.v.clone()
    }

    /// The cached latent of reference image `i`.
    pub fn latent(&self, i: usize) -> &CachedLatent {
        &self.latents[i]
    }

    /// The noise schedule.
    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    /// Sets how the step's UNet work is split (the result is the same up to float rounding).
    pub fn set_chunking(&mut self, chunking: Chunking) {
        self.graph_limit = chunking.graph_limit(&self.v.device());
        self.chunking = chunking;
    }

    /// Draws the randomness of the next step (advances the generator).
    pub fn next_draws(&mut self, hidden: usize) -> StepDraws {
        let n = self.latents.len();
        let mut images = vec![];
        let mut noise = vec![];
        for _ in 0..self.cfg.images_per_step {
            let img = if self.cfg.images_per_step == 1 {
                self.rng.below(n as u64) as usize
            } else {
                if self.order.is_empty() {
                    let mut o: Vec<usize> = (0..n).collect();
                    for i in (1..n).rev() {
                        let j = self.rng.below(i as u64 + 1) as usize;
                        o.swap(i, j);
                    }
                    self.order = o;
                }
                self.order.pop().expect("refilled")
            };
            let t = self.rng.below(self.schedule.len() as u64) as usize;
            let [_, c, h, w] = self.latents[img].mean.dims();
            let side = h.min(w);
            let crop = match self.cfg.crop {
                Crop::Center => ((h - side) / 2, (w - side) / 2),
                Crop::Random => {
                    (self.rng.below((h - side + 1) as u64) as usize, self.rng.below((w - side + 1) as u64) as usize)
                }
            };
            let nl = c * side * side;
            noise.push((self.rng.normal_vec(nl), self.rng.normal_vec(nl)));
            images.push((img, t, crop));
        }
        let omega = match self.cfg.mode {
            Mode::DreamDistribution => self.rng.normal_vec(self.cfg.unet_items() * MAX_LEN * hidden),
            Mode::TextualInversion => vec![],
        };
        StepDraws { images, noise, omega }
    }

    /// x₀ (scaled latents) of image `b` of a step's draws, `[1, 4, s, s]`.
    pub fn x0(&self, sd: &StableDiffusion, draws: &StepDraws, b: usize) -> Tensor<4> {
        let (img, _, (oy, ox)) = draws.images[b];
        let lat = &self.latents[img];
        let [_, c, h, w] = lat.mean.dims();
        let s = h.min(w);
        let crop = |t: &Tensor<4>| t.clone().narrow(2, oy, s).narrow(3, ox, s);
        let device = lat.mean.device();
        let post = tensor(draws.noise[b].0.clone(), [1, c, s, s], &device);
        (crop(&lat.mean) + crop(&lat.std) * post) * sd.spec.vae.scaling_factor
    }

    /// The Min-SNR weight of timestep `t` (1 without Min-SNR).
    pub fn loss_weight(&self, t: usize) -> f32 {
        match self.cfg.min_snr_gamma {
            None => 1.0,
            Some(g) => {
                let a = self.schedule.alphas_cumprod[t];
                let snr = (a / (1.0 - a)) as f32;
                snr.min(g) / snr
            }
        }
    }

    /// The exact gradient ∂L/∂V for `draws` at the current V, and the step's losses
    /// (computed block-wise; see the module docs).
    ///
    /// On the host CPU backend the step's independent work runs in two lanes (threads): the two
    /// halves of the K prompts through the text encoder, and UNet passes two at a time. Each
    /// lane's serial operations (element-wise kernels, copies) then overlap the other's matrix
    /// products (13% faster on 2 cores). The result does not depend on the lanes: every lane
    /// computes exactly what the sequential loop would.
    pub async fn gradient(
        &self,
        sd: &StableDiffusion,
        draws: &StepDraws,
        obs: &mut dyn Observer,
    ) -> Result<(Tensor<3>, [f32; 3])> {
        let device = self.v.device();
        let hidden = sd.spec.clip.hidden_size;
        let items = self.cfg.unet_items();
        let lanes = lanes(&device);
        // 1. The text encoder, keeping its layer boundaries (graphs where the budget allows).
        let emb = self.layout.embed(&sd.text, self.v.clone())?;
        let k = emb.dims()[0];
        let halves = split(k, lanes);
        let budgets: Vec<GraphBudget> =
            halves.iter().map(|&(_, n)| GraphBudget::new(self.graph_limit / k as u64 * n as u64)).collect();
        let text_parts = in_lanes(
            halves.iter().zip(budgets).map(|(&(start, n), budget)| (emb.clone().narrow(0, start, n), budget)).collect(),
            obs,
            |(e, mut budget), obs| {
                let (tape, ts) = sd.text.tape(MAX_LEN);
                let vals = tape.forward_retaining(vec![(ts.embeds, e.into())], &[ts.embeds], &mut budget, obs);
                let c = vals.get(ts.out).expect("kept").t3();
                (vals, c, budget.used)
            },
        );
        // The text graphs live until the end of the step; each UNet pass's only until its backward.
        let text_budget: u64 = text_parts.iter().map(|(_, _, used)| used).sum();
        let c = Tensor::cat(text_parts.iter().map(|(_, c, _)| c.clone()).collect(), 0);
        // 2. Gaussian, samples and the orthogonality loss, under autodiff from the encodings.
        let c_leaf = c.autodiff().require_grad();
        let cond = match self.cfg.mode {
            Mode::DreamDistribution => {
                let g = PromptGaussian::fit_with(c_leaf.clone(), self.cfg.sigma);
                g.sample(tensor(draws.omega.clone(), [items, MAX_LEN, hidden], &device), 1.0)
            }
            Mode::TextualInversion => c_leaf.clone().expand([items, MAX_LEN, hidden]),
        };
        let ortho = ortho_loss_with(c_leaf.clone(), self.layout.eos, self.cfg.ortho, self.cfg.ortho_form);
        // 3. The denoising loss through the UNet, in chunks of items, block-wise, `lanes` chunks
        // at a time.
        let cond_plain = cond.clone().without_autodiff();
        let ub = self.chunking.unet.clamp(1, items);
        let chunks: Vec<(usize, usize)> = (0..items).step_by(ub).map(|s| (s, ub.min(items - s))).collect();
        let unet_limit = self.graph_limit.saturating_sub(text_budget) / lanes as u64;
        let mut g_parts = vec![];
        let mut denoise = 0f32;
        for group in chunks.chunks(lanes) {
            let results = in_lanes(group.to_vec(), obs, |(start, len), obs| {
                self.unet_chunk(sd, draws, &cond_plain, start, len, GraphBudget::new(unet_limit), obs)
            });
            for r in results {
                let (g, sq) = r?;
                denoise += read(sq).await?[0];
                g_parts.push(g);
            }
        }
        let g_cond = Tensor::cat(g_parts, 0);
        // 4. Back through μ, σ and the samples to the encodings (surrogate ⟨c̃, ∂L/∂c̃⟩ + λ·L_ortho).
        let surrogate = sum_all(cond * g_cond) + ortho.clone() * self.cfg.lambda;
        let grads = surrogate.backward();
        let g_c = c_leaf.grad(&grads).ok_or_else(|| bad_grad("the encodings"))?;
        // 5. Back through the text encoder, layer by layer, to the token embeddings; V's rows.
        let back = in_lanes(
            text_parts
                .into_iter()
                .zip(&halves)
                .map(|((vals, _, _), &(start, n))| (vals, g_c.clone().narrow(0, start, n)))
                .collect(),
            obs,
            |(vals, g), obs| {
                let (tape, ts) = sd.text.tape(MAX_LEN);
                let g = tape.backward(vals, vec![(ts.out, Val::T3(g))], &[ts.embeds], obs)?;
                g.into_iter().next().flatten().ok_or_else(|| bad_grad("the prompt embeddings")).map(|g| g.t3())
            },
        );
        let g_emb = Tensor::cat(back.into_iter().collect::<Result<Vec<_>>>()?, 0);
        let g_v = g_emb.narrow(1, self.layout.slot_start, self.cfg.m);
        let ortho = read(ortho.without_autodiff()).await?[0];
        Ok((g_v, [denoise + self.cfg.lambda * ortho, denoise, ortho]))
    }

    /// UNet items `start..start + len` of a step: their noisy latents under the samples'
    /// conditioning, forward and back to the conditioning. Returns ∂L/∂c̃ for those items and
    /// their share of the denoising loss (a one-element tensor, not read back yet).
    #[allow(clippy::too_many_arguments)]
    fn unet_chunk(
        &self,
        sd: &StableDiffusion,
        draws: &StepDraws,
        cond: &Tensor<3>,
        start: usize,
        len: usize,
        mut budget: GraphBudget,
        obs: &mut dyn Observer,
    ) -> Result<(Tensor<3>, Tensor<1>)> {
        let device = cond.device();
        let items = self.cfg.unet_items();
        let per_image = match self.cfg.mode {
            Mode::DreamDistribution => self.cfg.samples,
            Mode::TextualInversion => 1,
        };
        let prediction = sd.spec.unet.prediction;
        let mut xts = vec![];
        let mut targets = vec![];
        let mut tsteps = vec![];
        let mut weights = vec![];
        for b in (start..start + len).map(|i| i / per_image) {
            let (_, t, _) = draws.images[b];
            let x0 = self.x0(sd, draws, b);
            let dims = x0.dims();
            let eps = tensor(draws.noise[b].1.clone(), dims, &device);
            xts.push(self.schedule.add_noise(x0.clone(), eps.clone(), &[t]));
            targets.push(self.schedule.target(prediction, x0, eps, &[t]));
            tsteps.push(t as f32);
            weights.push(self.loss_weight(t));
        }
        let xt = Tensor::cat(xts, 0);
        let target = Tensor::cat(targets, 0);
        let [n, ch, h, w] = xt.dims();
        let ctx = cond.clone().narrow(0, start, len);
        let (tape, us) = sd.unet.tape(n, h, w, &sd.plan);
        let vals = tape.forward_retaining(
            vec![(us.x, xt.into()), (us.t_proj, sd.unet.time_proj(&tsteps, &device).into()), (us.context, ctx.into())],
            &[us.context],
            &mut budget,
            obs,
        );
        let out = vals.get(us.out).expect("kept").t4();
        let scale = 1.0 / ((ch * h * w) as f32 * items as f32);
        let wt = tensor(weights, [n, 1, 1, 1], &device);
        let diff = out - target;
        // L = Σᵢ wᵢ·mean(diffᵢ²) / items  ⇒  ∂L/∂out = 2·wᵢ·diffᵢ / (C·H·W·items).
        let sq = sum_all(diff.clone().powi_scalar(2) * wt.clone()) * scale;
        let g_out = diff * wt * (2.0 * scale);
        let grads = tape.backward(vals, vec![(us.out, g_out.into())], &[us.context], obs)?;
        let g = grads.into_iter().next().flatten().ok_or_else(|| bad_grad("the conditioning"))?;
        Ok((g.t3(), sq))
    }

    /// One optimisation step (Algorithm 1); reads the losses back (async).
    pub async fn step(&mut self, sd: &StableDiffusion) -> Result<StepStats> {
        self.step_observed(sd, &mut ()).await
    }

    /// [`step`](Self::step) with an observer (memory sampling at piece boundaries).
    pub async fn step_observed(&mut self, sd: &StableDiffusion, obs: &mut dyn Observer) -> Result<StepStats> {
        let draws = self.next_draws(sd.spec.clip.hidden_size);
        let (mut g_v, [loss, denoise, ortho]) = self.gradient(sd, &draws, obs).await?;
        if !(loss.is_finite() && denoise.is_finite() && ortho.is_finite()) {
            return Err(Error::Device(format!(
                "training diverged at step {}: loss {loss}, denoise {denoise}, ortho {ortho}",
                self.step + 1
            )));
        }
        if let Some(max) = self.cfg.grad_clip {
            let norm = read(sum_all(g_v.clone().powi_scalar(2))).await?[0].sqrt();
            if norm > max {
                g_v = g_v * (max / (norm + 1e-6));
            }
        }
        self.v = self.adam.step(self.v.clone(), g_v);
        self.step += 1;
        self.losses.push(loss);
        Ok(StepStats { step: self.step, loss, denoise, ortho })
    }

    /// Fits the Gaussian of the current prompts under `template` (text-guided editing when it
    /// differs from the training template), with the run's σ estimate.
    pub fn gaussian(
        &self,
        sd: &StableDiffusion,
        tokenizer: &ClipTokenizer,
        template: &Template,
    ) -> Result<PromptGaussian> {
        fit_gaussian(sd, tokenizer, template, self.v.clone(), self.cfg.sigma)
    }

    /// Host copies of V, the optimizer moments and the generator state (for checkpoints).
    pub async fn state(&self) -> Result<TrainerState> {
        Ok(TrainerState {
            step: self.step,
            prompts: read(self.v.clone()).await?,
            adam_m: read(self.adam.m.clone()).await?,
            adam_v: read(self.adam.v.clone()).await?,
            adam_t: self.adam.t,
            rng: self.rng.clone(),
            order: self.order.clone(),
            losses: self.losses.clone(),
        })
    }

    /// Restores a checkpoint taken with [`state`](Self::state) (same config and images).
    pub fn restore(&mut self, st: TrainerState) -> Result<()> {
        let dims = self.v.dims();
        let n: usize = dims.iter().product();
        if st.prompts.len() != n || st.adam_m.len() != n || st.adam_v.len() != n {
            return Err(Error::Invalid(format!(
                "checkpoint shapes do not match K={} M={} H={}",
                dims[0], dims[1], dims[2]
            )));
        }
        if st.order.iter().any(|&i| i >= self.latents.len()) {
            return Err(Error::Invalid("checkpoint refers to more reference images than were given".into()));
        }
        let device = self.v.device();
        self.v = tensor(st.prompts, dims, &device);
        self.adam.m = tensor(st.adam_m, dims, &device);
        self.adam.v = tensor(st.adam_v, dims, &device);
        self.adam.t = st.adam_t;
        self.rng = st.rng;
        self.order = st.order;
        self.step = st.step;
        self.losses = st.losses;
        Ok(())
    }
}

/// Everything that changes during training, on the host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Steps done.
    pub step: u64,
    /// V `[K, M, H]`.
    pub prompts: Vec<f32>,
    /// Adam first moment.
    pub adam_m: Vec<f32>,
    /// Adam second moment.
    pub adam_v: Vec<f32>,
    /// Adam step count.
    pub adam_t: u64,
    /// Generator state.
    pub rng: Rng,
    /// Remaining image order of the current epoch (multi-image steps).
    pub order: Vec<usize>,
    /// Loss curve.
    pub losses: Vec<f32>,
}

/// The identity of the loaded model, as recorded in `.ddist` files.
pub fn model_id(sd: &StableDiffusion) -> crate::distribution::file::ModelId {
    crate::distribution::file::ModelId {
        id: sd.spec.id.clone(),
        hidden_size: sd.spec.clip.hidden_size,
        text_encoder_sha256: String::new(),
        identity: Some(sd.identity.clone()),
    }
}

fn train_info(cfg: &TrainConfig, steps: u64) -> crate::distribution::file::TrainInfo {
    crate::distribution::file::TrainInfo {
        steps,
        lr: cfg.lr as f64,
        samples: cfg.samples,
        lambda: cfg.lambda as f64,
        resolution: cfg.resolution,
        seed: cfg.seed,
        ortho: match cfg.ortho {
            OrthoFeatures::Eos => "eos".into(),
            OrthoFeatures::Flat => "flat".into(),
        },
        template: cfg.template.clone(),
        mode: match cfg.mode {
            Mode::DreamDistribution => "dreamdistribution".into(),
            Mode::TextualInversion => "textual-inversion".into(),
        },
        recipe: Some(
            match cfg.recipe {
                Recipe::Paper => "paper",
                Recipe::Authors => "authors",
            }
            .into(),
        ),
    }
}

/// The trainer's distribution as a `.ddist` file: `F16` for sharing, `F32` with the optimizer
/// state for checkpoints (exact resume). The checkpoint also records the full config and the
/// planned step count, which [`restore_from_file`] checks.
pub async fn dist_file(
    trainer: &Trainer,
    sd: &StableDiffusion,
    name: &str,
    precision: crate::distribution::file::Precision,
    with_optimizer: bool,
) -> Result<crate::distribution::file::DistFile> {
    let st = trainer.state().await?;
    let [k, m, hidden] = trainer.v.dims();
    let optimizer = with_optimizer.then(|| crate::distribution::file::OptimizerState {
        step: st.adam_t,
        m: st.adam_m.clone(),
        v: st.adam_v.clone(),
        rng: st.rng.to_words(),
        extra: serde_json::json!({ "config": trainer.cfg, "trainer_step": st.step, "order": st.order }),
    });
    Ok(crate::distribution::file::DistFile {
        name: name.chars().filter(|c| !c.is_control()).take(crate::distribution::file::MAX_NAME_CHARS).collect(),
        k,
        m,
        hidden,
        prompts: st.prompts,
        model: model_id(sd),
        train: train_info(&trainer.cfg, st.step),
        loss_curve: st.losses,
        created_by: format!("dreamdist {}", env!("CARGO_PKG_VERSION")),
        precision,
        optimizer,
        reference_thumbnails: vec![],
    })
}

/// Restores a checkpoint written by [`dist_file`] with the optimizer state; the checkpoint must
/// come from the same configuration.
pub fn restore_from_file(trainer: &mut Trainer, file: &crate::distribution::file::DistFile) -> Result<()> {
    let opt = file
        .optimizer
        .as_ref()
        .ok_or_else(|| Error::Invalid("not a checkpoint: the file has no optimizer state".into()))?;
    let saved: TrainConfig = serde_json::from_value(opt.extra["config"].clone())
        .map_err(|e| Error::Invalid(format!("checkpoint config unreadable: {e}")))?;
    if saved != trainer.cfg {
        return Err(Error::Invalid(format!(
            "the checkpoint was made with different settings:\n  checkpoint: {saved:?}\n  now:        {:?}",
            trainer.cfg
        )));
    }
    let rng =
        Rng::from_words(&opt.rng).ok_or_else(|| Error::Invalid("checkpoint generator state is malformed".into()))?;
    let step = opt.extra["trainer_step"].as_u64().ok_or_else(|| Error::Invalid("checkpoint has no step".into()))?;
    let order: Vec<usize> = serde_json::from_value(opt.extra.get("order").cloned().unwrap_or(serde_json::json!([])))
        .map_err(|e| Error::Invalid(format!("checkpoint image order unreadable: {e}")))?;
    trainer.restore(TrainerState {
        step,
        prompts: file.prompts.clone(),
        adam_m: opt.m.clone(),
        adam_v: opt.v.clone(),
        adam_t: opt.step,
        rng,
        order,
        losses: file.loss_curve.clone(),
    })
}

/// The sigma estimate a distribution file was trained with (its recipe).
pub fn sigma_of(file: &crate::distribution::file::DistFile) -> SigmaEstimate {
    match file.train.recipe.as_deref() {
        Some("authors") => SigmaEstimate::Unbiased,
        _ => SigmaEstimate::Population,
    }
}

/// What the training proof computed: one DreamDistribution step's loss and raw gradient ∂L/∂V
/// (the browser and the native CPU backend run the same function on the same shards; see
/// scripts/proofs/).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainProofReport {
    /// Image side.
    pub size: usize,
    /// Prompts K, tokens M, samples S.
    pub k: usize,
    /// Tokens per prompt.
    pub m: usize,
    /// Reparameterised samples.
    pub samples: usize,
    /// Loss, its denoising part and its orthogonality part.
    pub loss: [f32; 3],
    /// The initial prompts V (seeded), `[K, M, H]`.
    pub v0: crate::pipeline::Summary,
    /// ∂L/∂V, `[K, M, H]`.
    pub gradient: crate::pipeline::Summary,
    /// Milliseconds: setup (reference latent, prompts) and the gradient.
    pub ms: Vec<(String, f64)>,
    /// Largest device memory in use seen at any piece boundary of the gradient (bytes), where
    /// the backend reports it.
    pub peak_bytes: Option<u64>,
}

/// The training proof: one step of the paper's recipe with `k` prompts of `m` tokens and
/// `samples` samples on a seeded random reference image at `size`² — the exact gradient ∂L/∂V
/// (block-wise, within the model's memory plan) and its loss. The same seed gives the same
/// image, prompts and draws on every backend.
pub async fn proof_step(
    sd: &StableDiffusion,
    tokenizer: &ClipTokenizer,
    size: usize,
    seed: u64,
    k: usize,
    m: usize,
    samples: usize,
) -> Result<TrainProofReport> {
    sd.spec.check_size(size)?;
    let device = sd.device();
    let t0 = crate::backend::now_ms();
    let mut rng = Rng::new(seed);
    let img: Tensor<4> = tensor(rng.uniform_vec(3 * size * size, -1.0, 1.0), [1, 3, size, size], &device);
    let cfg = TrainConfig { k, m, samples, resolution: size, seed, ..TrainConfig::for_recipe(Recipe::Paper) };
    let mut t = Trainer::new(cfg, sd, tokenizer, &[img]).await?;
    let v0 = read(t.prompts()).await?;
    let draws = t.next_draws(sd.spec.clip.hidden_size);
    let t1 = crate::backend::now_ms();
    let mut peak = crate::model::tape::PeakMemory::new(&device);
    let (g, loss) = t.gradient(sd, &draws, &mut peak).await?;
    let g = read(g).await?;
    peak.note();
    let t2 = crate::backend::now_ms();
    let shape = [k, m, sd.spec.clip.hidden_size];
    Ok(TrainProofReport {
        size,
        k,
        m,
        samples,
        loss,
        v0: crate::pipeline::Summary::of(&shape, &v0),
        gradient: crate::pipeline::Summary::of(&shape, &g),
        ms: vec![("setup".to_string(), t1 - t0), ("gradient".to_string(), t2 - t1)],
        peak_bytes: peak.bytes,
    })
}
