//! Algorithm 1 of DreamDistribution: learn K soft prompts whose encoder outputs form a Gaussian
//! that explains the reference images under the frozen UNet's denoising loss, plus
//! λ·orthogonality between prompts. Only the prompt embeddings V learn; the networks are
//! frozen (their parameters never require gradients, so no weight gradient is computed).
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::backend::{read, tensor};
use crate::dist::{OrthoFeatures, PromptGaussian, PromptLayout, Template, ortho_loss};
use crate::model::StableDiffusion;
use crate::rng::Rng;
use crate::schedule::NoiseSchedule;
use crate::tokenizer::ClipTokenizer;
use crate::{Error, Result};

/// Learning mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// K prompts, Gaussian over their encodings, reparameterised samples (the paper).
    #[default]
    DreamDistribution,
    /// Textual Inversion: one prompt (K = 1), no sampling (the paper's main baseline).
    TextualInversion,
}

/// Training hyper-parameters (paper defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Number of prompts K.
    pub k: usize,
    /// Learned tokens per prompt M.
    pub m: usize,
    /// Reparameterised samples per step S.
    pub samples: usize,
    /// Weight λ of the orthogonality loss.
    pub lambda: f32,
    /// Adam learning rate (constant).
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
}

impl Default for TrainConfig {
    fn default() -> Self {
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
        }
    }
}

/// Adam on one tensor (β₁ 0.9, β₂ 0.999, ε 1e-8), state kept on the device.
#[derive(Clone, Debug)]
pub struct Adam {
    /// Learning rate.
    pub lr: f32,
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
    pub fn new(lr: f32, like: &Tensor<3>) -> Self {
        Self { lr, m: like.zeros_like(), v: like.zeros_like(), t: 0 }
    }

    /// Returns `param` after one step along `grad`.
    pub fn step(&mut self, param: Tensor<3>, grad: Tensor<3>) -> Tensor<3> {
        self.t += 1;
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
    /// Denoising part (mean over the S samples).
    pub denoise: f32,
    /// Orthogonality part (before λ).
    pub ortho: f32,
}

/// A reference image's cached VAE posterior (unscaled latents).
#[derive(Clone, Debug)]
struct CachedLatent {
    mean: Tensor<4>,
    std: Tensor<4>,
}

/// The training state: everything needed to continue, and to resume bit-identically.
pub struct Trainer {
    /// Hyper-parameters.
    pub cfg: TrainConfig,
    layout: PromptLayout,
    /// Current prompt embeddings V `[K, M, H]` (detached).
    v: Tensor<3>,
    adam: Adam,
    rng: Rng,
    latents: Vec<CachedLatent>,
    schedule: NoiseSchedule,
    /// Steps done.
    pub step: u64,
    /// Total loss per step so far.
    pub losses: Vec<f32>,
    chunking: Chunking,
}

/// How a training step is split to bound peak memory; the gradient is the same (exact chain
/// rule), only float summation order differs. Defaults suit a 24 GB machine or a browser tab
/// with full-size SD 2.1 at 512²: one UNet sample at a time, prompts in chunks of 8 (re-encoded
/// for the backward pass, ~⅓ more text-encoder compute).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunking {
    /// Samples c̃ per UNet forward/backward.
    pub unet: usize,
    /// Prompts per text-encoder backward; ≥ K encodes once with autodiff (no recompute).
    pub text: usize,
}

impl Default for Chunking {
    fn default() -> Self {
        Self { unet: 1, text: 8 }
    }
}

impl Chunking {
    /// Everything in one pass (fastest, most memory).
    pub fn unchunked() -> Self {
        Self { unet: usize::MAX, text: usize::MAX }
    }
}

/// The denoising loss of conditionings `cond` `[S, 77, H]` on latent `x0` `[1, 4, h, w]` at
/// timestep `t` with noise `eps`: mean over samples and elements of (target − UNet(xₜ, t, c̃))².
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
    let pred = sd.unet.forward(xt.expand([s, c, h, w]), &vec![t as f32; s], &cond);
    (pred - target.expand([s, c, h, w])).powi_scalar(2).mean()
}

impl Trainer {
    /// Sets up training on `images` (each `[1, 3, R, R]` in [-1, 1]); the models must live on
    /// an autodiff device. The VAE posterior of each image is computed once and cached.
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
        if cfg.k == 0 || cfg.samples == 0 || cfg.m == 0 {
            return Err(Error::Invalid("K, M and S must be at least 1".into()));
        }
        if !(cfg.lr > 0.0 && cfg.lr.is_finite() && cfg.lambda >= 0.0 && cfg.lambda.is_finite()) {
            return Err(Error::Invalid(format!("invalid lr {} or lambda {}", cfg.lr, cfg.lambda)));
        }
        let device = images[0].device();
        let template = Template::parse(&cfg.template)?;
        let layout = PromptLayout::new(tokenizer, &template, cfg.m)?;
        let mut rng = Rng::new(cfg.seed);
        let init = match &cfg.init_word {
            Some(w) => Some(crate::dist::prompt::token_embedding_row(&sd.text, tokenizer, w, &device).await?),
            None => None,
        };
        let hidden = sd.spec.clip.hidden_size;
        let v0 = crate::dist::prompt::init_prompts(cfg.k, cfg.m, hidden, &mut rng, init.as_deref());
        let v = tensor(v0, [cfg.k, cfg.m, hidden], &device);
        let mut latents = vec![];
        for img in images {
            let p = sd.vae.encode(img.clone().detach());
            latents.push(CachedLatent { mean: p.mean.detach(), std: (p.logvar * 0.5).exp().detach() });
        }
        let adam = Adam::new(cfg.lr, &v);
        Ok(Self {
            cfg,
            layout,
            v,
            adam,
            rng,
            latents,
            schedule: NoiseSchedule::sd21(),
            step: 0,
            losses: vec![],
            chunking: Chunking::default(),
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

    /// One optimisation step (Algorithm 1); reads the losses back (async).
    ///
    /// The gradient is exact but computed in pieces to bound memory (see [`Chunking`]):
    /// 1. the K prompts are encoded (with autodiff only if all fit in one text chunk);
    /// 2. from a leaf copy of the encodings, μ, σ, the S samples c̃ and L_ortho are formed;
    /// 3. the UNet's denoising loss is back-propagated to c̃ in chunks of samples, each chunk's
    ///    UNet graph freed before the next; the chain rule then carries ∂L/∂c̃ back through
    ///    μ, σ to ∂L/∂c (a surrogate ⟨c̃, ∂L/∂c̃⟩ + λ·L_ortho);
    /// 4. ∂L/∂c goes through the text encoder to ∂L/∂V, re-encoding chunks of prompts when
    ///    they did not fit in one (a surrogate ⟨E(Pₖ), ∂L/∂cₖ⟩).
    pub async fn step(&mut self, sd: &StableDiffusion) -> Result<StepStats> {
        let device = self.v.device();
        let hidden = sd.spec.clip.hidden_size;
        let (k, s) = (self.cfg.k, self.cfg.samples);
        // Random draws, all on the host in a fixed order (reproducible on every backend).
        let img = self.rng.below(self.latents.len() as u64) as usize;
        let t = self.rng.below(self.schedule.len() as u64) as usize;
        let lat = &self.latents[img];
        let shape = lat.mean.dims();
        let n_lat: usize = shape.iter().product();
        let post_noise = tensor(self.rng.normal_vec(n_lat), shape, &device);
        let eps = tensor(self.rng.normal_vec(n_lat), shape, &device);
        let omega = tensor(self.rng.normal_vec(s * 77 * hidden), [s, 77, hidden], &device);
        let x0 = (lat.mean.clone() + lat.std.clone() * post_noise) * sd.spec.vae.scaling_factor;

        // 1. Encode the prompts.
        let one_text_pass = self.chunking.text >= k;
        let v = self.v.clone().require_grad();
        let c_graph = one_text_pass.then(|| self.layout.encode(&sd.text, v.clone()));
        let c_leaf = match &c_graph {
            Some(c) => c.clone().detach().require_grad(),
            None => self.layout.encode(&sd.text, self.v.clone()).detach().require_grad(),
        };
        // 2. Gaussian, samples, orthogonality.
        let cond = match self.cfg.mode {
            Mode::DreamDistribution => PromptGaussian::fit(c_leaf.clone()).sample(omega, 1.0),
            Mode::TextualInversion => c_leaf.clone().expand([s, 77, hidden]),
        };
        let ortho = ortho_loss(c_leaf.clone(), self.layout.eos, self.cfg.ortho);
        // 3. Denoising loss through the UNet, chunk by chunk of samples.
        let mut denoise_parts = vec![];
        let mut cond_grads = vec![];
        let ub = self.chunking.unet.clamp(1, s);
        for start in (0..s).step_by(ub) {
            let len = ub.min(s - start);
            let chunk = cond.clone().narrow(0, start, len).detach().require_grad();
            let l =
                denoise_loss(sd, &self.schedule, chunk.clone(), x0.clone(), eps.clone(), t) * (len as f32 / s as f32);
            let grads = l.backward();
            cond_grads
                .push(chunk.grad(&grads).ok_or_else(|| Error::Device("no gradient reached the conditioning".into()))?);
            denoise_parts.push(l.inner());
        }
        let g_cond = Tensor::from_inner(Tensor::cat(cond_grads, 0));
        let surrogate = (cond * g_cond).sum() + ortho.clone() * self.cfg.lambda;
        let grads = surrogate.backward();
        let g_c = c_leaf.grad(&grads).ok_or_else(|| Error::Device("no gradient reached the encodings".into()))?;
        // 4. Through the text encoder to V.
        let g_v = match c_graph {
            Some(c) => {
                let grads = (c * Tensor::from_inner(g_c)).sum().backward();
                v.grad(&grads).ok_or_else(|| Error::Device("no gradient reached the prompt embeddings".into()))?
            }
            None => {
                let tb = self.chunking.text.max(1);
                let mut parts = vec![];
                for start in (0..k).step_by(tb) {
                    let len = tb.min(k - start);
                    let vc = self.v.clone().narrow(0, start, len).require_grad();
                    let cc = self.layout.encode(&sd.text, vc.clone());
                    let gc = Tensor::from_inner(g_c.clone().narrow(0, start, len));
                    let grads = (cc * gc).sum().backward();
                    parts.push(
                        vc.grad(&grads)
                            .ok_or_else(|| Error::Device("no gradient reached the prompt embeddings".into()))?,
                    );
                }
                Tensor::cat(parts, 0)
            }
        };
        let new_v = self.adam.step(self.v.clone().inner(), g_v);
        self.v = Tensor::from_inner(new_v);
        let denoise = denoise_parts.into_iter().reduce(|a, b| a + b).expect("at least one sample");
        let ortho = ortho.inner();
        let loss = denoise.clone() + ortho.clone() * self.cfg.lambda;
        let values = read(Tensor::cat(vec![loss, denoise, ortho], 0)).await?;
        if values.iter().any(|x| !x.is_finite()) {
            return Err(Error::Device(format!("training diverged at step {}: losses {values:?}", self.step + 1)));
        }
        self.step += 1;
        self.losses.push(values[0]);
        Ok(StepStats { step: self.step, loss: values[0], denoise: values[1], ortho: values[2] })
    }

    /// Sets how the step is split to bound memory (the result is the same up to float rounding).
    pub fn set_chunking(&mut self, chunking: Chunking) {
        self.chunking = chunking;
    }

    /// Fits the Gaussian of the current prompts under `template` (text-guided editing when it
    /// differs from the training template).
    pub fn gaussian(
        &self,
        sd: &StableDiffusion,
        tokenizer: &ClipTokenizer,
        template: &Template,
    ) -> Result<PromptGaussian> {
        fit_gaussian(sd, tokenizer, template, self.v.clone().detach())
    }

    /// Host copies of V, the Adam moments and the generator state (for checkpoints).
    pub async fn state(&self) -> Result<TrainerState> {
        Ok(TrainerState {
            step: self.step,
            prompts: read(self.v.clone()).await?,
            adam_m: read(self.adam.m.clone()).await?,
            adam_v: read(self.adam.v.clone()).await?,
            adam_t: self.adam.t,
            rng: self.rng.clone(),
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
        let device = self.v.device();
        self.v = tensor(st.prompts, dims, &device);
        self.adam.m = tensor(st.adam_m, dims, &device);
        self.adam.v = tensor(st.adam_v, dims, &device);
        self.adam.t = st.adam_t;
        self.rng = st.rng;
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
    /// Loss curve.
    pub losses: Vec<f32>,
}

/// Encodes prompts `v` `[K, M, H]` under `template` and fits μ, σ.
pub fn fit_gaussian(
    sd: &StableDiffusion,
    tokenizer: &ClipTokenizer,
    template: &Template,
    v: Tensor<3>,
) -> Result<PromptGaussian> {
    let layout = PromptLayout::new(tokenizer, template, v.dims()[1])?;
    Ok(PromptGaussian::fit(layout.encode(&sd.text, v)))
}

/// The device the models live on (for callers that build tensors).
pub fn model_device(sd: &StableDiffusion) -> Device {
    use burn::module::Module;
    sd.unet.devices().into_iter().next().unwrap_or_default()
}

/// The identity of the loaded model, as recorded in `.ddist` files.
pub fn model_id(sd: &StableDiffusion) -> crate::dist::file::ModelId {
    crate::dist::file::ModelId {
        id: sd.spec.id.clone(),
        hidden_size: sd.spec.clip.hidden_size,
        text_encoder_sha256: sd.text_encoder_sha256.clone(),
    }
}

fn train_info(cfg: &TrainConfig, steps: u64) -> crate::dist::file::TrainInfo {
    crate::dist::file::TrainInfo {
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
    }
}

/// The trainer's distribution as a `.ddist` file: `F16` for sharing, `F32` with the optimizer
/// state for checkpoints (exact resume). The checkpoint also records the full config and the
/// planned step count, which [`restore_from_file`] checks.
pub async fn dist_file(
    trainer: &Trainer,
    sd: &StableDiffusion,
    name: &str,
    precision: crate::dist::file::Precision,
    with_optimizer: bool,
) -> Result<crate::dist::file::DistFile> {
    let st = trainer.state().await?;
    let [k, m, hidden] = trainer.v.dims();
    let optimizer = with_optimizer.then(|| crate::dist::file::OptimizerState {
        step: st.adam_t,
        m: st.adam_m.clone(),
        v: st.adam_v.clone(),
        rng: st.rng.to_words(),
        extra: serde_json::json!({ "config": trainer.cfg, "trainer_step": st.step }),
    });
    Ok(crate::dist::file::DistFile {
        name: name.chars().filter(|c| !c.is_control()).take(crate::dist::file::MAX_NAME_CHARS).collect(),
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
pub fn restore_from_file(trainer: &mut Trainer, file: &crate::dist::file::DistFile) -> Result<()> {
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
    trainer.restore(TrainerState {
        step,
        prompts: file.prompts.clone(),
        adam_m: opt.m.clone(),
        adam_v: opt.v.clone(),
        adam_t: opt.step,
        rng,
        losses: file.loss_curve.clone(),
    })
}
