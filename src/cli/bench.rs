//! `dreamdist bench`: timings and peak memory of the full-size architecture (random weights, or
//! any model given with --manifest / --weights): UNet forward and block-wise backward, a
//! training step with its time split by part, sampling steps, and the memory resident per
//! component. Peak GPU memory comes from burn's memory pool (`memory_pool_usage`), sampled at
//! every piece boundary of the tapes; peak RSS from the kernel (VmHWM).
use std::io::Write;

use burn::tensor::{Device, Tensor};
use clap::Args;
use dreamdist::backend::{block_on, now_ms, pool_bytes_in_use, read, tensor};
use dreamdist::model::tape::Observer;
use dreamdist::model::{ModelSpec, StableDiffusion};
use dreamdist::rng::Rng;
use dreamdist::tokenizer::{ClipTokenizer, MAX_LEN};
use dreamdist::train::{Chunking, TrainConfig, Trainer};

use super::common::{ModelArgs, cpu_seconds, peak_rss, reset_peak_rss};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Image sides in pixels.
    #[arg(long, value_delimiter = ',', default_values_t = [256usize, 512])]
    sizes: Vec<usize>,
    /// What to time: unet (forward, and forward + block-wise backward w.r.t. the conditioning),
    /// train (one step, split by part), sample (guided denoising steps).
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
    /// Recipe of the training step (paper or authors).
    #[arg(long, default_value = "paper")]
    recipe: dreamdist::train::Recipe,
    /// Training step: UNet items per pass.
    #[arg(long, default_value_t = 1)]
    unet_batch: usize,
    /// Training step on the CPU backend: GiB of autodiff graphs the forwards may keep instead
    /// of recomputing them in the backward (default: three quarters of the available memory; 0 recomputes
    /// everything, as on a GPU).
    #[arg(long)]
    graph_gib: Option<f64>,
    /// Synchronise the device after every piece, so the split by part is exact on a GPU (adds
    /// a little time).
    #[arg(long)]
    sync_parts: bool,
    /// Also write the table (markdown) to this file.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Print the time spent per kind of piece (resnets, attention blocks, feed-forward, …) over
    /// all runs.
    #[arg(long)]
    profile: bool,
}

struct Row {
    what: String,
    size: usize,
    first_ms: f64,
    best_ms: f64,
    /// CPU seconds (all threads) of the best run.
    cpu_s: Option<f64>,
    peak_rss: Option<u64>,
    peak_gpu: Option<u64>,
    note: String,
}

/// Samples the device's memory pool and times parts at piece boundaries.
struct Meter {
    device: Device,
    peak: u64,
    sync: bool,
    last: f64,
    parts: std::collections::BTreeMap<String, f64>,
    by_kind: bool,
    kinds: std::collections::BTreeMap<String, f64>,
}

impl Meter {
    fn new(device: &Device, sync: bool) -> Self {
        Self {
            device: device.clone(),
            peak: 0,
            sync,
            last: now_ms(),
            parts: Default::default(),
            by_kind: false,
            kinds: Default::default(),
        }
    }
    fn sample(&mut self) {
        if let Some(u) = self.device.memory_pool_usage() {
            self.peak = self.peak.max(u.bytes_in_use);
        }
    }
    fn reset(&mut self) {
        self.peak = 0;
        self.parts.clear();
        self.last = now_ms();
        self.sample();
    }
}

impl Observer for Meter {
    fn after_piece(&mut self, name: &str, backward: bool) {
        self.sample();
        if self.sync {
            let _ = self.device.sync();
        }
        let now = now_ms();
        let net = name.split('.').next().unwrap_or("");
        let key = format!("{net} {}", if backward { "backward" } else { "forward" });
        *self.parts.entry(key).or_default() += now - self.last;
        if self.by_kind {
            *self.kinds.entry(format!("{} {}", kind_of(name), if backward { "bwd" } else { "fwd" })).or_default() +=
                now - self.last;
        }
        self.last = now;
    }
}

/// The kind of a piece, from its name (`unet.down0.attn1.attn1.core3` → `attn1.core`).
fn kind_of(name: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    let strip = |p: &str| p.trim_end_matches(|c: char| c.is_ascii_digit()).to_string();
    match parts.as_slice() {
        [net, rest @ ..] if *net == "unet" && rest.len() >= 2 => {
            let tail: Vec<String> = rest[1..].iter().map(|p| strip(p)).collect();
            format!("unet {}", tail.join("."))
        }
        [net, rest @ ..] => format!("{net} {}", rest.iter().map(|p| strip(p)).collect::<Vec<_>>().join(".")),
        [] => String::new(),
    }
}

fn gib(b: u64) -> String {
    format!("{:.2}", b as f64 / (1u64 << 30) as f64)
}

fn report(r: &Row) {
    eprintln!(
        "bench: {} @ {}²: first {:.2} s, best {:.2} s, CPU {} s, peak RSS {}, peak GPU {} {}",
        r.what,
        r.size,
        r.first_ms / 1000.0,
        r.best_ms / 1000.0,
        r.cpu_s.map_or("n/a".into(), |c| format!("{c:.2}")),
        r.peak_rss.map_or("n/a".into(), gib),
        r.peak_gpu.map_or("n/a".into(), gib),
        r.note
    );
}

/// Runs `f` once plus `iters` more times; records first/best time, peak RSS and peak GPU.
fn measure(
    rows: &mut Vec<Row>,
    meter: &mut Meter,
    what: String,
    size: usize,
    iters: usize,
    mut f: impl FnMut(&mut Meter) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let can_reset = reset_peak_rss();
    meter.reset();
    let t0 = now_ms();
    let c0 = cpu_seconds();
    f(meter)?;
    let first_ms = now_ms() - t0;
    let mut cpu_s = cpu_seconds().zip(c0).map(|(a, b)| a - b);
    let mut best_ms = first_ms;
    let mut parts = meter.parts.clone();
    for _ in 0..iters {
        meter.parts.clear();
        meter.last = now_ms();
        let t = now_ms();
        let c = cpu_seconds();
        f(meter)?;
        let ms = now_ms() - t;
        let cs = cpu_seconds().zip(c).map(|(a, b)| a - b);
        if ms < best_ms {
            best_ms = ms;
            parts = meter.parts.clone();
        }
        cpu_s = match (cpu_s, cs) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    let note = if parts.is_empty() {
        String::new()
    } else {
        parts.iter().map(|(k, v)| format!("{k} {:.2} s", v / 1000.0)).collect::<Vec<_>>().join(", ")
    };
    let gpu = meter.device.memory_pool_usage().map(|_| meter.peak);
    let row = Row {
        what,
        size,
        first_ms,
        best_ms,
        cpu_s,
        peak_rss: if can_reset { peak_rss() } else { None },
        peak_gpu: gpu,
        note,
    };
    report(&row);
    rows.push(row);
    Ok(())
}

pub fn run(mut a: BenchArgs) -> anyhow::Result<()> {
    if a.model.weights.is_none() && a.model.manifest.is_none() && a.model.random_weights.is_none() {
        a.model.random_weights = Some(0);
    }
    let spec = ModelSpec::from_id(&a.model.model)?;
    let t0 = now_ms();
    let (sd, info): (StableDiffusion, _) = a.model.load_with_info()?;
    let device = sd.device();
    let resident = pool_bytes_in_use(&device);
    let per_component = {
        let r = &sd.resident;
        let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64);
        let g = |b: Option<u64>| b.map_or("n/a".into(), mib);
        format!(
            "text encoder {}, UNet {}, VAE {} on the device; token table {} on the host",
            g(r.text_encoder),
            g(r.unet),
            g(r.vae),
            mib(r.host_token_table)
        )
    };
    eprintln!(
        "bench: built {} in {:.1} s, peak RSS {} GiB, resident on the device {} GiB ({per_component})",
        spec.id,
        (now_ms() - t0) / 1000.0,
        gib(peak_rss().unwrap_or(0)),
        resident.map_or("n/a".into(), gib)
    );
    let tokenizer = ClipTokenizer::sd2()?;
    let hidden = spec.clip.hidden_size;
    let mut rows = vec![];
    let mut meter = Meter::new(&device, a.sync_parts);
    meter.by_kind = a.profile;
    let mut rng = Rng::new(1);
    for &size in &a.sizes {
        sd.spec.check_size(size)?;
        let lat = size / spec.vae.downscale();
        if a.what.iter().any(|w| w == "unet") {
            let x = tensor(rng.normal_vec(4 * lat * lat), [1, 4, lat, lat], &device);
            let ctx = tensor(rng.normal_vec(MAX_LEN * hidden), [1, MAX_LEN, hidden], &device);
            measure(&mut rows, &mut meter, "UNet forward (batch 1)".into(), size, a.iters, |m| {
                let out = sd.unet.forward_planned(x.clone(), &[500.0], &ctx, &sd.plan, m);
                block_on(read(out.sum()))?;
                Ok(())
            })?;
            measure(
                &mut rows,
                &mut meter,
                "UNet fwd + block-wise bwd w.r.t. the conditioning".into(),
                size,
                a.iters,
                |m| {
                    let (_, g) = sd.unet.context_vjp(
                        x.clone(),
                        &[500.0],
                        ctx.clone(),
                        |o| o.clone() * (2.0 / o.shape().num_elements() as f32),
                        &sd.plan,
                        m,
                    )?;
                    block_on(read(g.sum()))?;
                    Ok(())
                },
            )?;
        }
        if a.what.iter().any(|w| w == "train") {
            let img: Tensor<4> = tensor(rng.uniform_vec(3 * size * size, -1.0, 1.0), [1, 3, size, size], &device);
            let mut cfg = TrainConfig::for_recipe(a.recipe);
            cfg.k = a.k;
            cfg.m = a.m;
            cfg.samples = a.samples;
            cfg.resolution = size;
            let images: Vec<Tensor<4>> = vec![img; cfg.images_per_step.max(1)];
            let mut trainer = block_on(Trainer::new(cfg, &sd, &tokenizer, &images))?;
            trainer.set_chunking(Chunking {
                unet: a.unet_batch,
                graph_bytes: a.graph_gib.map(|g| (g * (1u64 << 30) as f64) as u64),
            });
            let what = format!(
                "train step K={} M={} S={} {:?} recipe (UNet items per pass {})",
                a.k, a.m, a.samples, a.recipe, a.unet_batch
            );
            measure(&mut rows, &mut meter, what, size, a.iters, |m| {
                block_on(trainer.step_observed(&sd, m))?;
                Ok(())
            })?;
        }
        if a.what.iter().any(|w| w == "sample") {
            let ctx = tensor(rng.normal_vec(2 * MAX_LEN * hidden), [2, MAX_LEN, hidden], &device);
            let x = tensor(rng.normal_vec(2 * 4 * lat * lat), [2, 4, lat, lat], &device);
            measure(&mut rows, &mut meter, "guided denoising step (UNet batch 2)".into(), size, a.iters.max(2), |m| {
                let out = sd.unet.forward_planned(x.clone(), &[500.0, 500.0], &ctx, &sd.plan, m);
                block_on(read(out.sum()))?;
                Ok(())
            })?;
            let z = tensor(rng.normal_vec(4 * lat * lat), [1, 4, lat, lat], &device);
            measure(&mut rows, &mut meter, "VAE decode".into(), size, a.iters, |_| {
                let img = sd.vae.decode_planned(z.clone(), &sd.plan);
                block_on(read(img.sum()))?;
                Ok(())
            })?;
        }
    }
    let mut table = format!(
        "dreamdist bench: model {} ({}), backend {} ({}), {} CPU threads, plan: blocks ≤ {} MiB; resident after load {} GiB ({})\n\n\
         | what | image | first (s) | best of {} (s) | least CPU time (s) | peak RSS (GiB) | peak GPU in use (GiB) | time by part (best run) |\n|---|---|---|---|---|---|---|---|\n",
        spec.id,
        if a.model.random_weights.is_some() { "random weights".to_string() } else { "loaded weights".to_string() },
        match a.model.backend {
            dreamdist::backend::BackendKind::Cpu => "cpu",
            dreamdist::backend::BackendKind::Wgpu => "wgpu",
        },
        info.name,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        sd.plan.max_block_bytes >> 20,
        resident.map_or("n/a".into(), gib),
        per_component,
        a.iters
    );
    for r in &rows {
        table += &format!(
            "| {} | {}² | {:.2} | {:.2} | {} | {} | {} | {} |\n",
            r.what,
            r.size,
            r.first_ms / 1000.0,
            r.best_ms / 1000.0,
            r.cpu_s.map_or("n/a".into(), |c| format!("{c:.2}")),
            r.peak_rss.map_or("n/a".into(), gib),
            r.peak_gpu.map_or("n/a".into(), gib),
            r.note
        );
    }
    print!("{table}");
    if a.profile {
        let mut kinds: Vec<(String, f64)> = meter.kinds.clone().into_iter().collect();
        kinds.sort_by(|x, y| y.1.total_cmp(&x.1));
        let total: f64 = kinds.iter().map(|k| k.1).sum();
        println!("\ntime per kind of piece (all runs, {:.1} s):", total / 1000.0);
        for (k, ms) in kinds.iter().take(25) {
            println!("  {k:<40} {:>8.2} s  {:>5.1}%", ms / 1000.0, 100.0 * ms / total.max(1e-9));
        }
    }
    if let Some(p) = &a.out {
        std::fs::File::create(p)?.write_all(table.as_bytes())?;
    }
    Ok(())
}
