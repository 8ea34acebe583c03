//! `dreamdist bench`: timings and peak memory of the full-size architecture (random weights).
use std::io::Write;

use burn::tensor::Tensor;
use clap::Args;
use dreamdist::backend::{block_on, now_ms, read, tensor};
use dreamdist::model::{ModelSpec, StableDiffusion};
use dreamdist::rng::Rng;
use dreamdist::tokenizer::ClipTokenizer;
use dreamdist::train::{TrainConfig, Trainer};

use super::common::{peak_rss, reset_peak_rss};

#[derive(Args)]
pub struct BenchArgs {
    /// Model architecture (random weights): sd21, sd21-base or tiny.
    #[arg(long, default_value = "sd21")]
    model: String,
    /// Backend: cpu or wgpu.
    #[arg(long, default_value = "cpu")]
    backend: dreamdist::backend::BackendKind,
    /// Image sides in pixels.
    #[arg(long, value_delimiter = ',', default_values_t = [256usize, 512])]
    sizes: Vec<usize>,
    /// What to time: unet (forward + backward w.r.t. encoder_hidden_states), train (one step).
    #[arg(long, value_delimiter = ',', default_values_t = ["unet".to_string(), "train".to_string()])]
    what: Vec<String>,
    /// Timed repetitions after one warm-up.
    #[arg(long, default_value_t = 1)]
    iters: usize,
    /// Prompts K for the training step.
    #[arg(long, default_value_t = 32)]
    k: usize,
    /// Tokens per prompt M.
    #[arg(long, default_value_t = 4)]
    m: usize,
    /// Samples S.
    #[arg(long, default_value_t = 4)]
    samples: usize,
    /// Training step: UNet samples per pass (default 1; S = no chunking).
    #[arg(long, default_value_t = 1)]
    unet_batch: usize,
    /// Training step: prompts per text-encoder backward chunk (default 8; K = no re-encoding).
    #[arg(long, default_value_t = 8)]
    text_batch: usize,
    /// Also write the table (markdown) to this file.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

/// Prints a row to stderr as soon as it is measured (a later out-of-memory abort keeps it).
fn report(r: &Row) {
    let peak = r.peak.map_or("n/a".to_string(), |p| format!("{:.2} GiB", p as f64 / (1u64 << 30) as f64));
    eprintln!(
        "bench: {} @ {}²: first {:.2} s, best {:.2} s, peak RSS {peak}",
        r.what,
        r.size,
        r.first_ms / 1000.0,
        r.best_ms / 1000.0
    );
}

struct Row {
    what: String,
    size: usize,
    first_ms: f64,
    best_ms: f64,
    peak: Option<u64>,
}

/// Runs `f` once plus `iters` more times and records (and prints) a row with the first and the
/// best time and the peak RSS over all runs.
fn measure(
    rows: &mut Vec<Row>,
    what: String,
    size: usize,
    iters: usize,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let can_reset = reset_peak_rss();
    let t0 = now_ms();
    f()?;
    let first_ms = now_ms() - t0;
    let mut best_ms = first_ms;
    for _ in 0..iters {
        let t = now_ms();
        f()?;
        best_ms = best_ms.min(now_ms() - t);
    }
    let row = Row { what, size, first_ms, best_ms, peak: if can_reset { peak_rss() } else { None } };
    report(&row);
    rows.push(row);
    Ok(())
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    let spec = ModelSpec::from_id(&a.model)?;
    let (device, info) = dreamdist::backend::device(a.backend)?;
    let device = device.autodiff();
    eprintln!("bench: building {} with random weights on {} ...", spec.id, info.name);
    let t0 = now_ms();
    let sd = StableDiffusion::random(spec.clone(), &device, 0);
    eprintln!(
        "bench: built in {:.1} s, peak RSS {:.2} GiB",
        (now_ms() - t0) / 1000.0,
        peak_rss().unwrap_or(0) as f64 / (1u64 << 30) as f64
    );
    let tokenizer = ClipTokenizer::sd2()?;
    let hidden = spec.clip.hidden_size;
    let mut rows = vec![];
    let mut rng = Rng::new(1);
    for &size in &a.sizes {
        let lat = size / spec.vae.downscale();
        if a.what.iter().any(|w| w == "unet") {
            let x = tensor(rng.normal_vec(4 * lat * lat), [1, 4, lat, lat], &device);
            let ctx = tensor(rng.normal_vec(77 * hidden), [1, 77, hidden], &device);
            measure(&mut rows, "UNet forward (batch 1)".to_string(), size, a.iters, || {
                let out = sd.unet.forward(x.clone(), &[500.0], &ctx);
                block_on(read(out.sum()))?;
                Ok(())
            })?;
            measure(&mut rows, "UNet fwd+bwd w.r.t. encoder_hidden_states".to_string(), size, a.iters, || {
                let c = ctx.clone().require_grad();
                let out = sd.unet.forward(x.clone(), &[500.0], &c);
                let grads = out.powi_scalar(2).mean().backward();
                let g = c.grad(&grads).ok_or_else(|| anyhow::anyhow!("no gradient"))?;
                block_on(read(g.sum()))?;
                Ok(())
            })?;
        }
        if a.what.iter().any(|w| w == "train") {
            let img: Tensor<4> = tensor(rng.uniform_vec(3 * size * size, -1.0, 1.0), [1, 3, size, size], &device);
            let cfg = TrainConfig { k: a.k, m: a.m, samples: a.samples, resolution: size, ..TrainConfig::default() };
            let mut trainer = block_on(Trainer::new(cfg, &sd, &tokenizer, &[img]))?;
            trainer.set_chunking(dreamdist::train::Chunking { unet: a.unet_batch, text: a.text_batch });
            let what = format!(
                "train step K={} M={} S={} (UNet batch {}, text chunk {})",
                a.k, a.m, a.samples, a.unet_batch, a.text_batch
            );
            measure(&mut rows, what, size, a.iters, || {
                block_on(trainer.step(&sd))?;
                Ok(())
            })?;
            // Parts, as the step runs them: one text-encoder forward + backward for a chunk of
            // prompts (the step does ⌈K/chunk⌉ of them plus one forward of all K when chunked),
            // and one UNet forward + backward for a chunk of samples (⌈S/chunk⌉ per step).
            let tb = a.text_batch.clamp(1, a.k);
            let ub = a.unet_batch.clamp(1, a.samples);
            measure(
                &mut rows,
                format!("  part: text encoder fwd+bwd, {tb} prompts (×{} per step)", a.k.div_ceil(tb)),
                size,
                a.iters,
                || {
                    let v = trainer.prompts().narrow(0, 0, tb).require_grad();
                    let c = trainer.layout().encode(&sd.text, v.clone());
                    let grads = c.powi_scalar(2).mean().backward();
                    let g = v.grad(&grads).ok_or_else(|| anyhow::anyhow!("no gradient"))?;
                    block_on(read(g.sum()))?;
                    Ok(())
                },
            )?;
            let xs = tensor(rng.normal_vec(ub * 4 * lat * lat), [ub, 4, lat, lat], &device);
            let ctx = tensor(rng.normal_vec(ub * 77 * hidden), [ub, 77, hidden], &device);
            measure(
                &mut rows,
                format!("  part: UNet fwd+bwd, batch {ub} (×{} per step)", a.samples.div_ceil(ub)),
                size,
                a.iters,
                || {
                    let c = ctx.clone().require_grad();
                    let out = sd.unet.forward(xs.clone(), &vec![500.0; ub], &c);
                    let grads = out.powi_scalar(2).mean().backward();
                    let g = c.grad(&grads).ok_or_else(|| anyhow::anyhow!("no gradient"))?;
                    block_on(read(g.sum()))?;
                    Ok(())
                },
            )?;
        }
    }
    let mut table = format!(
        "dreamdist bench: model {} (random weights), backend {} ({}), {} CPU threads\n\n| what | image | first (s) | best of {} (s) | peak RSS (GiB) |\n|---|---|---|---|---|\n",
        spec.id,
        a.backend_name(),
        info.name,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        a.iters
    );
    for r in &rows {
        let peak = r.peak.map_or("n/a".to_string(), |p| format!("{:.2}", p as f64 / (1u64 << 30) as f64));
        table += &format!(
            "| {} | {}² | {:.2} | {:.2} | {} |\n",
            r.what,
            r.size,
            r.first_ms / 1000.0,
            r.best_ms / 1000.0,
            peak
        );
    }
    print!("{table}");
    if let Some(p) = &a.out {
        std::fs::File::create(p)?.write_all(table.as_bytes())?;
    }
    Ok(())
}

impl BenchArgs {
    fn backend_name(&self) -> &'static str {
        match self.backend {
            dreamdist::backend::BackendKind::Cpu => "cpu",
            dreamdist::backend::BackendKind::Wgpu => "wgpu",
        }
    }
}
