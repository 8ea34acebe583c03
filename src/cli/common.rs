//! Arguments and helpers shared by subcommands.
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use dreamdist::backend::{self, BackendKind, block_on};
use dreamdist::distribution::file::DistFile;
use dreamdist::model::nn::Precision;
use dreamdist::model::{MemPlan, ModelSpec, StableDiffusion};
use dreamdist::weights::ManifestSource;
use dreamdist::weights::loader::{LoadReport, Progress, Retry, load_shards};
use dreamdist::weights::native::{AnyTransport, DirCache, fetch_manifest};

/// Which model, from where, on which backend.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model: sd21 (768 px, v-prediction), sd21-base (512 px, epsilon), demo (the bundled demo
    /// model) or tiny (test fixture).
    #[arg(long, default_value = "demo")]
    pub model: String,
    /// Directory with the weights in diffusers layout (text_encoder/, unet/, vae/) or flat
    /// text_encoder.safetensors, unet.safetensors, vae.safetensors.
    #[arg(long, conflicts_with_all = ["random_weights", "manifest"])]
    pub weights: Option<PathBuf>,
    /// A converted model (`dreamdist convert`): a directory or http(s) URL holding manifest.json
    /// and its shards. Default for `--model demo`: the bundled assets/demo.
    #[arg(long, conflicts_with = "random_weights")]
    pub manifest: Option<String>,
    /// Use random weights from this seed instead (architecture tests, benchmarks).
    #[arg(long)]
    pub random_weights: Option<u64>,
    /// Backend: cpu or wgpu.
    #[arg(long, default_value = "cpu")]
    pub backend: BackendKind,
    /// Shard cache directory for --manifest URLs (default ~/.cache/dreamdist/weights).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Plan memory as if the GPU allowed at most this many bytes per binding (e.g. 134217728,
    /// WebGPU's default); default: the device's own limit.
    #[arg(long)]
    pub max_binding: Option<u64>,
    /// Float type of sampling: f32, or f16 (wgpu devices with f16 support; training is f32).
    #[arg(long, default_value = "f32")]
    pub precision: String,
}

/// The bundled demo model (a converted model in the repository).
pub fn demo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo")
}

/// Loads a converted model from a directory or URL, through the shard cache.
pub fn load_manifest(
    base: &str,
    cache: Option<&Path>,
    device: &burn::tensor::Device,
    quiet: bool,
) -> anyhow::Result<(StableDiffusion, LoadReport)> {
    let mut transport = AnyTransport::for_base(base);
    let manifest = block_on(fetch_manifest(&mut transport, base))?;
    let mut src = ManifestSource::new(manifest, device);
    let mut cache = DirCache::new(cache.map(Path::to_path_buf).unwrap_or_else(DirCache::default_dir));
    let mut last = 0.0;
    let mut progress = |p: &Progress| {
        let now = backend::now_ms();
        if !quiet && (now - last > 1000.0 || p.phase == "done") {
            last = now;
            eprintln!(
                "dreamdist: loading {} {} {:.1}/{:.1} MB ({:.1} MB/s)",
                p.component,
                p.phase,
                p.done_bytes as f64 / 1e6,
                p.total_bytes as f64 / 1e6,
                p.rate / 1e6
            );
        }
    };
    let local = !(base.starts_with("http://") || base.starts_with("https://"));
    let report = if local {
        // A local directory needs no cache.
        block_on(load_shards(
            &mut src,
            base,
            &dreamdist::weights::manifest::COMPONENTS,
            &mut transport,
            &mut dreamdist::weights::loader::NoCache::default(),
            Retry::default(),
            &mut progress,
            &|| false,
        ))?
    } else {
        block_on(load_shards(
            &mut src,
            base,
            &dreamdist::weights::manifest::COMPONENTS,
            &mut transport,
            &mut cache,
            Retry::default(),
            &mut progress,
            &|| false,
        ))?
    };
    let sd = StableDiffusion::from_manifest_source(&mut src, device)?;
    Ok((sd, report))
}

impl ModelArgs {
    /// Loads the models (inference device; training walks back block-wise with its own
    /// autodiff leaves).
    pub fn load(&self) -> anyhow::Result<StableDiffusion> {
        Ok(self.load_with_info()?.0)
    }

    /// [`load`](Self::load), also describing the adapter.
    pub fn load_with_info(&self) -> anyhow::Result<(StableDiffusion, backend::AdapterInfo)> {
        let spec = ModelSpec::from_id(&self.model)?;
        let (device, info) = backend::device(self.backend)?;
        eprintln!("dreamdist: {} on {}", spec.id, info.describe());
        let mut sd = match (&self.weights, &self.manifest, self.random_weights) {
            (Some(dir), _, _) => StableDiffusion::from_dir(spec, dir, &device)
                .with_context(|| format!("loading weights from {}", dir.display()))?,
            (None, Some(base), _) => {
                let (sd, _) = load_manifest(base, self.cache.as_deref(), &device, false)?;
                if sd.spec.id != spec.id {
                    anyhow::bail!(
                        "{base} holds model `{}`, not `{}` (give --model {})",
                        sd.spec.id,
                        spec.id,
                        sd.spec.id
                    );
                }
                sd
            }
            (None, None, Some(seed)) => StableDiffusion::random(spec, &device, seed),
            (None, None, None) if spec.id == "demo" => {
                let dir = demo_dir();
                load_manifest(&dir.display().to_string(), None, &device, true)?.0
            }
            (None, None, None) => {
                anyhow::bail!("give --weights DIR (diffusers layout), --manifest DIR|URL or --random-weights SEED")
            }
        };
        sd.plan = plan_for(self.backend, &info, self.max_binding);
        sd.plan.precision = match self.precision.as_str() {
            "f32" => Precision::F32,
            "f16" if sd.device().supports_dtype(burn::tensor::DType::F16) => Precision::F16,
            "f16" => anyhow::bail!("--precision f16: {} has no 16-bit float support", info.name),
            p => anyhow::bail!("unknown --precision {p:?} (f32 or f16)"),
        };
        Ok((sd, info))
    }
}

/// The memory plan for a device.
pub fn plan_for(kind: BackendKind, info: &backend::AdapterInfo, max_binding: Option<u64>) -> MemPlan {
    match (kind, max_binding) {
        (_, Some(b)) => MemPlan::for_binding_limit(b),
        (BackendKind::Cpu, None) => MemPlan::cpu(),
        (BackendKind::Wgpu, None) => {
            MemPlan::for_binding_limit(info.max_storage_buffer_binding_size.min(info.max_buffer_size))
        }
    }
}

/// Reads and validates a `.ddist` file for the loaded model (notes about older files go to
/// stderr).
pub fn read_dist(path: &Path, sd: &StableDiffusion) -> anyhow::Result<DistFile> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.len() > dreamdist::distribution::file::MAX_FILE_BYTES as u64 {
        anyhow::bail!(
            "{}: {} bytes is larger than any distribution file ({} MiB max)",
            path.display(),
            meta.len(),
            dreamdist::distribution::file::MAX_FILE_BYTES >> 20
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file =
        DistFile::from_bytes(&bytes).with_context(|| format!("{} is not a valid distribution file", path.display()))?;
    let note = file.check_model(&dreamdist::train::model_id(sd)).with_context(|| format!("{}", path.display()))?;
    if let Some(n) = note {
        eprintln!("dreamdist: note: {}: {n}", path.display());
    }
    Ok(file)
}

/// Peak resident memory of this process (VmHWM), in bytes.
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time (user + system) of this process so far, in seconds (Linux; 10 ms resolution).
/// Unlike wall time it does not grow when other processes compete for the cores.
pub fn cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    Some((utime + stime) / 100.0)
}

/// Resets the peak-RSS counter (Linux `clear_refs` 5); returns whether it worked.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
