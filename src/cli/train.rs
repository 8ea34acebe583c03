//! `dreamdist train`: learn a prompt distribution from a folder of reference images.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use dreamdist::backend::block_on;
use dreamdist::distribution::file::Precision;
use dreamdist::distribution::{OrthoFeatures, OrthoForm, SigmaEstimate};
use dreamdist::tokenizer::ClipTokenizer;
use dreamdist::train::{Chunking, Crop, Mode, Optimizer, Recipe, TrainConfig, Trainer, dist_file, restore_from_file};
use indicatif::{ProgressBar, ProgressStyle};

use super::common::{ModelArgs, read_dist};

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Folder of reference images (PNG, JPEG, WebP; 4–20 sharing a look work best).
    #[arg(long)]
    images: PathBuf,
    /// Output file (NAME.ddist). A checkpoint NAME.ddist.ckpt is kept while training.
    #[arg(long)]
    out: PathBuf,
    /// Settings to start from: paper (Algorithm 1, default) or authors (their released script);
    /// the options below override single settings. See docs/METHOD.md.
    #[arg(long, default_value = "paper")]
    recipe: Recipe,
    /// Number of prompts K.
    #[arg(long, default_value_t = 32)]
    k: usize,
    /// Learned tokens per prompt M.
    #[arg(long, default_value_t = 4)]
    m: usize,
    /// Optimisation steps (paper 1500, authors 2000).
    #[arg(long)]
    steps: Option<u64>,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    /// Reparameterised samples per image per step S.
    #[arg(long, default_value_t = 4)]
    samples: usize,
    /// Weight λ of the orthogonality loss (paper 5e-3, authors 1e-3).
    #[arg(long)]
    lambda: Option<f32>,
    /// Features of the orthogonality loss: eos (authors' code) or flat.
    #[arg(long, default_value = "eos")]
    ortho: String,
    /// Form of the orthogonality loss: abs-pairs (paper) or squared-ordered (authors).
    #[arg(long)]
    ortho_form: Option<String>,
    /// Reference images per step (paper 1, authors 4).
    #[arg(long)]
    images_per_step: Option<usize>,
    /// AdamW weight decay (0 = Adam; paper 0, authors 1e-2).
    #[arg(long)]
    weight_decay: Option<f32>,
    /// Min-SNR loss weighting γ (0 = off; paper off, authors 5).
    #[arg(long)]
    min_snr_gamma: Option<f32>,
    /// Crop: center (paper) or random (authors).
    #[arg(long)]
    crop: Option<String>,
    /// σ estimate: population (paper) or unbiased (authors).
    #[arg(long)]
    sigma: Option<String>,
    /// Clip the gradient norm (0 = off; paper off, authors 1.0).
    #[arg(long)]
    grad_clip: Option<f32>,
    /// Training resolution in pixels (default: the model's native one).
    #[arg(long)]
    resolution: Option<usize>,
    /// Template around the learned tokens, e.g. "a photo of {}".
    #[arg(long, default_value = "{}")]
    template: String,
    /// Seed of every random draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Textual-Inversion mode (K = 1, no sampling; the paper's baseline).
    #[arg(long)]
    textual_inversion: bool,
    /// Initialise the prompts from this word's embedding.
    #[arg(long)]
    init_word: Option<String>,
    /// Continue from NAME.ddist.ckpt (identical to an uninterrupted run with the same seed).
    #[arg(long)]
    resume: bool,
    /// Write the checkpoint every N steps.
    #[arg(long, default_value_t = 50)]
    checkpoint_every: u64,
    /// UNet items (image × sample pairs) per forward/backward (memory vs speed; the result is
    /// the same). Default: all in one pass for models of ≤ 64 px, else 1.
    #[arg(long)]
    unet_batch: Option<usize>,
    /// Stop after this many steps in this run, keeping the checkpoint (continue with --resume).
    #[arg(long)]
    max_steps_this_run: Option<u64>,
}

fn pick<T>(what: &str, v: &str, options: &[(&str, T)]) -> anyhow::Result<T>
where
    T: Copy,
{
    options.iter().find(|(n, _)| *n == v).map(|(_, t)| *t).ok_or_else(|| {
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        anyhow::anyhow!("unknown --{what} {v:?} (one of {})", names.join(", "))
    })
}

impl TrainArgs {
    /// The training configuration: the recipe's settings with the given overrides.
    pub fn config(&self, resolution: usize) -> anyhow::Result<TrainConfig> {
        let mut c = TrainConfig::for_recipe(self.recipe);
        c.k = if self.textual_inversion { 1 } else { self.k };
        c.m = self.m;
        c.samples = self.samples;
        c.lr = self.lr;
        c.resolution = resolution;
        c.seed = self.seed;
        c.template = self.template.clone();
        c.init_word = self.init_word.clone();
        c.mode = if self.textual_inversion { Mode::TextualInversion } else { Mode::DreamDistribution };
        c.ortho = pick("ortho", &self.ortho, &[("eos", OrthoFeatures::Eos), ("flat", OrthoFeatures::Flat)])?;
        if let Some(v) = self.steps {
            c.steps = v;
        }
        if let Some(v) = self.lambda {
            c.lambda = v;
        }
        if let Some(v) = self.images_per_step {
            c.images_per_step = v;
        }
        if let Some(v) = self.weight_decay {
            c.optimizer = if v > 0.0 { Optimizer::AdamW { weight_decay: v } } else { Optimizer::Adam };
        }
        if let Some(v) = self.min_snr_gamma {
            c.min_snr_gamma = (v > 0.0).then_some(v);
        }
        if let Some(v) = self.grad_clip {
            c.grad_clip = (v > 0.0).then_some(v);
        }
        if let Some(v) = &self.crop {
            c.crop = pick("crop", v, &[("center", Crop::Center), ("random", Crop::Random)])?;
        }
        if let Some(v) = &self.sigma {
            c.sigma =
                pick("sigma", v, &[("population", SigmaEstimate::Population), ("unbiased", SigmaEstimate::Unbiased)])?;
        }
        if let Some(v) = &self.ortho_form {
            let forms = [("abs-pairs", OrthoForm::AbsPairs), ("squared-ordered", OrthoForm::SquaredOrdered)];
            c.ortho_form = pick("ortho-form", v, &forms)?;
        }
        Ok(c)
    }
}

/// Writes `bytes` to `path` atomically (temporary file + rename): an interruption never leaves
/// a half-written file behind.
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

fn list_images(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = vec![];
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read image folder {}", dir.display()))? {
        let path = entry?.path();
        let hidden = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
        if path.is_file() && !hidden {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        anyhow::bail!("no images in {}", dir.display());
    }
    Ok(files)
}

pub fn run(a: TrainArgs) -> anyhow::Result<()> {
    let sd = a.model.load()?;
    let resolution = a.resolution.unwrap_or(sd.spec.native_resolution());
    sd.spec.check_size(resolution)?;
    let cfg = a.config(resolution)?;
    let device = sd.device();
    let files = list_images(&a.images)?;
    if !(4..=20).contains(&files.len()) {
        eprintln!("dreamdist: note: {} reference images; 4–20 sharing a look work best", files.len());
    }
    let mut images = vec![];
    for f in &files {
        let bytes = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
        let name = f.display().to_string();
        images.push(dreamdist::image::load_for_training(&bytes, resolution, cfg.crop, &name, &device)?);
    }
    let tokenizer = ClipTokenizer::sd2()?;
    let mut trainer = block_on(Trainer::new(cfg, &sd, &tokenizer, &images))?;
    if let Some(n) = a.unet_batch {
        trainer.set_chunking(Chunking::unet(n.max(1)));
    }
    let name = a.out.file_stem().and_then(|s| s.to_str()).unwrap_or("distribution").to_string();
    let ckpt = PathBuf::from(format!("{}.ckpt", a.out.display()));
    if a.resume {
        let file = read_dist(&ckpt, &sd).context("--resume")?;
        restore_from_file(&mut trainer, &file).with_context(|| format!("resuming from {}", ckpt.display()))?;
        eprintln!("dreamdist: resumed at step {} from {}", trainer.step, ckpt.display());
    }
    let bar = ProgressBar::new(trainer.cfg.steps);
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}")?);
    bar.set_position(trainer.step);
    bar.enable_steady_tick(Duration::from_millis(500));
    let stop_at = a.max_steps_this_run.map_or(trainer.cfg.steps, |n| (trainer.step + n).min(trainer.cfg.steps));
    while trainer.step < stop_at {
        let s = block_on(trainer.step(&sd))?;
        bar.set_position(s.step);
        bar.set_message(format!("loss {:.4} (denoise {:.4}, ortho {:.4})", s.loss, s.denoise, s.ortho));
        if s.step % a.checkpoint_every.max(1) == 0 && s.step < trainer.cfg.steps {
            let file = block_on(dist_file(&trainer, &sd, &name, Precision::F32, true))?;
            write_atomic(&ckpt, &file.to_bytes()?)?;
        }
    }
    bar.finish();
    if trainer.step < trainer.cfg.steps {
        let file = block_on(dist_file(&trainer, &sd, &name, Precision::F32, true))?;
        write_atomic(&ckpt, &file.to_bytes()?)?;
        eprintln!("dreamdist: stopped at step {}; continue with --resume ({})", trainer.step, ckpt.display());
        return Ok(());
    }
    let file = block_on(dist_file(&trainer, &sd, &name, Precision::F16, false))?;
    write_atomic(&a.out, &file.to_bytes()?)?;
    if ckpt.exists() {
        std::fs::remove_file(&ckpt).ok();
    }
    eprintln!(
        "dreamdist: wrote {} (K={} M={}, {} steps, final loss {:.4})",
        a.out.display(),
        file.k,
        file.m,
        trainer.step,
        trainer.losses.last().copied().unwrap_or(f32::NAN)
    );
    Ok(())
}
