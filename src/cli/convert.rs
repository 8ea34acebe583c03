//! `dreamdist convert`: a diffusers-layout model (or random weights) → manifest + shards.
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use dreamdist::backend::block_on;
use dreamdist::model::{ClipConfig, ModelSpec, VaeConfig};
use dreamdist::weights::RandomSource;
use dreamdist::weights::convert::{CheckpointSource, Quant, TensorSource, convert};
use dreamdist::weights::manifest::Manifest;
use dreamdist::weights::native::{ConvertedDirSource, DirSink};

#[derive(Args)]
pub struct ConvertArgs {
    /// Diffusers-layout model directory (text_encoder/, unet/, vae/ with safetensors in f32,
    /// f16 or bf16), or a converted model (a directory with manifest.json: reconverted, e.g.
    /// to another --quant, or a model converted by an older dreamdist brought up to date).
    #[arg(long, conflicts_with = "random_weights")]
    from: Option<PathBuf>,
    /// Write the architecture with seeded random weights instead (full-size shards for tests
    /// and benchmarks without real weights).
    #[arg(long)]
    random_weights: Option<u64>,
    /// Output directory (manifest.json + shards).
    #[arg(long, required_unless_present = "check")]
    out: Option<PathBuf>,
    /// Only check that this directory holds a converted model this dreamdist reads: its
    /// manifest parses and names exactly the model's tensors (the shards are not read).
    #[arg(long, conflicts_with_all = ["from", "random_weights", "out"])]
    check: Option<PathBuf>,
    /// Storage of the large weights: q8, q4, f16 or f32 (the token embedding is f16 under
    /// all but f32).
    #[arg(long, default_value = "q8")]
    quant: Quant,
    /// Model: sd21, sd21-base, demo or tiny.
    #[arg(long, default_value = "sd21-base")]
    model: String,
}

enum Src {
    Random(RandomSource),
    Ckpt(CheckpointSource),
    Converted(ConvertedDirSource),
}

impl TensorSource for Src {
    async fn tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        init: dreamdist::weights::Init,
    ) -> dreamdist::Result<Vec<f32>> {
        match self {
            Src::Random(s) => s.tensor(name, shape, init).await,
            Src::Ckpt(s) => s.tensor(name, shape, init).await,
            Src::Converted(s) => s.tensor(name, shape, init).await,
        }
    }
    fn finish(&mut self) -> dreamdist::Result<()> {
        match self {
            Src::Random(s) => s.finish(),
            Src::Ckpt(s) => s.finish(),
            Src::Converted(s) => s.finish(),
        }
    }
}

fn read_component(dir: &std::path::Path, nested: &str, flat: &str) -> anyhow::Result<Vec<u8>> {
    let candidates = [dir.join(nested), dir.join(flat)];
    let path = candidates
        .iter()
        .find(|p| p.exists())
        .with_context(|| format!("neither {} nor {} exists", candidates[0].display(), candidates[1].display()))?;
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

pub fn run(a: ConvertArgs) -> anyhow::Result<()> {
    if let Some(dir) = &a.check {
        let path = dir.join("manifest.json");
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let m = Manifest::from_json(&bytes).map_err(|e| e.context(path.display()))?;
        println!(
            "{}: {} ({}), {} tensors in {} shards, {:.1} MB; identity {}",
            dir.display(),
            m.model.id,
            m.quant,
            m.tensors.len(),
            m.shards.len(),
            m.download_bytes() as f64 / 1e6,
            m.identity.text_encoder
        );
        return Ok(());
    }
    let out = a.out.clone().context("--out is needed")?;
    let spec = ModelSpec::from_id(&a.model)?;
    let t0 = std::time::Instant::now();
    let (mut srcs, desc): ([Src; 3], String) = match (&a.from, a.random_weights) {
        (Some(dir), _) if dir.join("manifest.json").exists() => {
            let ([t, u, v], m) = ConvertedDirSource::open(dir)?;
            anyhow::ensure!(
                m.model.id == spec.id,
                "{} holds the \"{}\" model, not \"{}\" (--model)",
                dir.display(),
                m.model.id,
                spec.id
            );
            let from = if m.source.starts_with("converted from ") || m.source.starts_with("reconverted from ") {
                m.source.clone()
            } else {
                format!("\"{}\"", m.source)
            };
            (
                [Src::Converted(t), Src::Converted(u), Src::Converted(v)],
                format!("reconverted from a {} copy ({from})", m.quant),
            )
        }
        (Some(dir), _) => {
            let text = read_component(dir, "text_encoder/model.safetensors", "text_encoder.safetensors")?;
            let unet = read_component(dir, "unet/diffusion_pytorch_model.safetensors", "unet.safetensors")?;
            let vae = read_component(dir, "vae/diffusion_pytorch_model.safetensors", "vae.safetensors")?;
            (
                [
                    Src::Ckpt(CheckpointSource::new(text, ClipConfig::key_rewrites())?),
                    Src::Ckpt(CheckpointSource::new(unet, &[])?),
                    Src::Ckpt(CheckpointSource::new(vae, VaeConfig::key_rewrites())?),
                ],
                format!(
                    "converted from {}",
                    dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()
                ),
            )
        }
        (None, Some(seed)) => (
            // The same draws as StableDiffusion::random(spec, device, seed).
            [
                Src::Random(RandomSource::new(seed)),
                Src::Random(RandomSource::new(seed + 1)),
                Src::Random(RandomSource::new(seed + 2)),
            ],
            format!("random weights, seed {seed}"),
        ),
        (None, None) => anyhow::bail!("give --from DIR (diffusers layout) or --random-weights SEED"),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut sink = DirSink { dir: out.clone() };
    let [s0, s1, s2] = &mut srcs;
    let mut last = String::new();
    let manifest = block_on(convert(
        &dreamdist::backend::cpu_device(),
        &spec,
        a.quant,
        [s0, s1, s2],
        &mut sink,
        &desc,
        |c, i, n| {
            if c != last {
                eprintln!("convert: {c} ({n} tensors)");
                last = c.to_string();
            }
            let _ = i;
        },
    ))?;
    let json = manifest.to_json()?;
    std::fs::write(out.join("manifest.json"), json).context("writing manifest.json")?;
    eprintln!("convert: {} in {:.1} s", out.display(), t0.elapsed().as_secs_f64());
    for (c, t) in &manifest.components {
        eprintln!(
            "convert:   {c}: {} parameters, {:.1} MB in {} shards ({} tensors)",
            t.params,
            t.bytes as f64 / 1e6,
            t.shards,
            t.tensors
        );
    }
    eprintln!(
        "convert:   total {:.1} MB, identity {}",
        manifest.total_bytes as f64 / 1e6,
        manifest.identity.text_encoder
    );
    Ok(())
}
