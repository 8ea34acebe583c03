//! `dreamdist train`: learn a prompt distribution from a folder of reference images.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use dreamdist::backend::block_on;
use dreamdist::dist::OrthoFeatures;
use dreamdist::dist::file::{DistFile, Precision};
use dreamdist::model::StableDiffusion;
use dreamdist::tokenizer::ClipTokenizer;
use dreamdist::train::{Chunking, Mode, TrainConfig, Trainer, dist_file, restore_from_file};
use indicatif::{ProgressBar, ProgressStyle};

use super::common::ModelArgs;

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
    /// Number of prompts K.
    #[arg(long, default_value_t = 32)]
    k: usize,
    /// Learned tokens per prompt M.
    #[arg(long, default_value_t = 4)]
    m: usize,
    /// Optimisation steps.
    #[arg(long, default_value_t = 1500)]
    steps: u64,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    /// Reparameterised samples per step S.
    #[arg(long, default_value_t = 4)]
    samples: usize,
    /// Weight λ of the orthogonality loss.
    #[arg(long, default_value_t = 5e-3)]
    lambda: f32,
    /// Features of the orthogonality loss: eos (authors' code) or flat.
    #[arg(long, default_value = "eos")]
    ortho: String,
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
    /// UNet samples per forward/backward (memory vs speed; the result is the same).
    #[arg(long, default_value_t = 1)]
    unet_batch: usize,
    /// Prompts per text-encoder backward chunk (≥ K: no re-encoding; more memory).
    #[arg(long, default_value_t = 8)]
    text_batch: usize,
    /// Stop after this many steps in this run, keeping the checkpoint (continue with --resume).
    #[arg(long)]
    max_steps_this_run: Option<u64>,
}

/// Reads and validates a `.ddist` file for the loaded model.
pub fn read_dist(path: &Path, sd: &StableDiffusion) -> anyhow::Result<DistFile> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.len() > dreamdist::dist::file::MAX_FILE_BYTES as u64 {
        anyhow::bail!(
            "{}: {} bytes is larger than any distribution file ({} MiB max)",
            path.display(),
            meta.len(),
            dreamdist::dist::file::MAX_FILE_BYTES >> 20
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file =
        DistFile::from_bytes(&bytes).with_context(|| format!("{} is not a valid distribution file", path.display()))?;
    file.check_model(&dreamdist::train::model_id(sd)).with_context(|| format!("{}", path.display()))?;
    Ok(file)
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
    let ortho = match a.ortho.as_str() {
        "eos" => OrthoFeatures::Eos,
        "flat" => OrthoFeatures::Flat,
        o => anyhow::bail!("unknown --ortho {o:?} (eos or flat)"),
    };
    let sd = a.model.load()?;
    let resolution = a.resolution.unwrap_or(sd.spec.native_resolution());
    let device = dreamdist::train::model_device(&sd);
    let files = list_images(&a.images)?;
    if !(4..=20).contains(&files.len()) {
        eprintln!("dreamdist: note: {} reference images; 4–20 sharing a look work best", files.len());
    }
    let mut images = vec![];
    for f in &files {
        let bytes = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
        images.push(dreamdist::image::load(&bytes, resolution, &f.display().to_string(), &device)?);
    }
    let mode = if a.textual_inversion { Mode::TextualInversion } else { Mode::DreamDistribution };
    let k = if a.textual_inversion { 1 } else { a.k };
    let cfg = TrainConfig {
        k,
        m: a.m,
        samples: a.samples,
        lambda: a.lambda,
        lr: a.lr,
        steps: a.steps,
        resolution,
        seed: a.seed,
        template: a.template.clone(),
        ortho,
        mode,
        init_word: a.init_word.clone(),
    };
    let tokenizer = ClipTokenizer::sd2()?;
    let mut trainer = block_on(Trainer::new(cfg, &sd, &tokenizer, &images))?;
    trainer.set_chunking(Chunking { unet: a.unet_batch.max(1), text: a.text_batch.max(1) });
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
