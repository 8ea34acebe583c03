//! `dreamdist crosscheck`: the raw gradient ∂L/∂V of one training step of the same model (a
//! converted manifest) on the CPU backend and on native wgpu, compared — the same gradient within
//! tolerance (the raw gradient, not an Adam update, whose first step is ±lr whatever the
//! gradient's scale) — and the wgpu step's peak pool memory sampled at every piece boundary.
use std::path::PathBuf;

use burn::tensor::Tensor;
use clap::Args;
use dreamdist::backend::{BackendKind, block_on, now_ms, read, tensor};
use dreamdist::model::tape::PeakMemory;
use dreamdist::rng::Rng;
use dreamdist::tokenizer::ClipTokenizer;
use dreamdist::train::{Recipe, TrainConfig, Trainer};

use super::common::{load_manifest, plan_for};

#[derive(Args)]
pub struct CrosscheckArgs {
    /// Converted model (directory with manifest.json), e.g. from
    /// `dreamdist convert --random-weights 0 --model sd21-base --quant q8 --out DIR`.
    #[arg(long)]
    manifest: PathBuf,
    /// Image side.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Prompts K, tokens M, samples S.
    #[arg(long, default_value_t = 32)]
    k: usize,
    #[arg(long, default_value_t = 4)]
    m: usize,
    #[arg(long, default_value_t = 4)]
    samples: usize,
    /// Plan the wgpu side as if a binding held at most this many bytes (134217728 = WebGPU's default).
    #[arg(long, default_value_t = 134_217_728)]
    max_binding: u64,
}

/// One backend's result: initial V, ∂L/∂V, loss, milliseconds, peak pool bytes.
struct StepResult {
    v0: Vec<f32>,
    grad: Vec<f32>,
    loss: f32,
    ms: f64,
    peak: u64,
}

fn step(kind: BackendKind, a: &CrosscheckArgs) -> anyhow::Result<StepResult> {
    let (device, info) = dreamdist::backend::device(kind)?;
    let (mut sd, _) = load_manifest(&a.manifest.display().to_string(), None, &device, true)?;
    sd.plan = plan_for(kind, &info, (kind == BackendKind::Wgpu).then_some(a.max_binding));
    let tok = ClipTokenizer::sd2()?;
    let mut rng = Rng::new(3);
    let img: Tensor<4> = tensor(rng.uniform_vec(3 * a.size * a.size, -1.0, 1.0), [1, 3, a.size, a.size], &device);
    let cfg = TrainConfig {
        k: a.k,
        m: a.m,
        samples: a.samples,
        resolution: a.size,
        ..TrainConfig::for_recipe(Recipe::Paper)
    };
    let mut t = block_on(Trainer::new(cfg, &sd, &tok, &[img]))?;
    let v0 = block_on(read(t.prompts()))?;
    let draws = t.next_draws(sd.spec.clip.hidden_size);
    let mut peak = PeakMemory::new(&device);
    let t0 = now_ms();
    let (g, [loss, ..]) = block_on(t.gradient(&sd, &draws, &mut peak))?;
    let g = block_on(read(g))?;
    let ms = now_ms() - t0;
    eprintln!(
        "crosscheck: {} gradient in {:.1} s, loss {loss:.6}, peak pool {:.2} GiB",
        info.describe(),
        ms / 1000.0,
        peak.bytes.unwrap_or(0) as f64 / (1u64 << 30) as f64
    );
    Ok(StepResult { v0, grad: g, loss, ms, peak: peak.bytes.unwrap_or(0) })
}

pub fn run(a: CrosscheckArgs) -> anyhow::Result<()> {
    let c = step(BackendKind::Cpu, &a)?;
    let g = step(BackendKind::Wgpu, &a)?;
    anyhow::ensure!(c.v0 == g.v0, "the initial prompts differ between backends");
    let (dc, dg) = (&c.grad, &g.grad);
    let (closs, cms, gloss, gms, gpeak) = (c.loss, c.ms, g.loss, g.ms, g.peak);
    let scale = dc.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = dc.iter().zip(dg).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let same_sign = dc.iter().zip(dg).filter(|(a, b)| a.signum() == b.signum()).count() as f64 / dc.len() as f64;
    println!(
        "{}",
        serde_json::json!({
            "size": a.size, "k": a.k, "m": a.m, "samples": a.samples,
            "cpu": {"loss": closs, "seconds": cms / 1000.0},
            "wgpu": {"loss": gloss, "seconds": gms / 1000.0, "peak_pool_bytes": gpeak, "max_binding": a.max_binding},
            "gradient": {"max_abs": scale, "max_abs_difference": diff, "relative": diff / scale.max(1e-30), "same_sign": same_sign},
            "loss_relative_difference": (closs - gloss).abs() / closs.abs().max(1e-30),
        })
    );
    Ok(())
}
