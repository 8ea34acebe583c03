//! Arguments and helpers shared by subcommands.
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use dreamdist::backend::{self, BackendKind};
use dreamdist::model::{ModelSpec, StableDiffusion};

/// Which model, from where, on which backend.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model: sd21 (768 px, v-prediction), sd21-base (512 px, epsilon) or tiny (test fixture).
    #[arg(long, default_value = "sd21")]
    pub model: String,
    /// Directory with the weights in diffusers layout (text_encoder/, unet/, vae/) or flat
    /// text_encoder.safetensors, unet.safetensors, vae.safetensors.
    #[arg(long, conflicts_with = "random_weights")]
    pub weights: Option<PathBuf>,
    /// Use random weights from this seed instead (architecture tests, benchmarks).
    #[arg(long)]
    pub random_weights: Option<u64>,
    /// Backend: cpu or wgpu.
    #[arg(long, default_value = "cpu")]
    pub backend: BackendKind,
}

impl ModelArgs {
    /// Loads the models on an autodiff-capable device (training needs it; sampling does not care).
    pub fn load(&self) -> anyhow::Result<StableDiffusion> {
        let spec = ModelSpec::from_id(&self.model)?;
        let (device, info) = backend::device(self.backend)?;
        eprintln!("dreamdist: {} on {} ({})", spec.id, info.name, info.graphics_api);
        let device = device.autodiff();
        match (&self.weights, self.random_weights) {
            (Some(dir), _) => StableDiffusion::from_dir(spec, dir, &device)
                .with_context(|| format!("loading weights from {}", dir.display())),
            (None, Some(seed)) => Ok(StableDiffusion::random(spec, &device, seed)),
            (None, None) => anyhow::bail!("give --weights DIR (diffusers layout) or --random-weights SEED"),
        }
    }
}

/// Peak resident memory of this process (VmHWM), in bytes.
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resets the peak-RSS counter (Linux `clear_refs` 5); returns whether it worked.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
