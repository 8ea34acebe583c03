//! `dreamdist parity`: run the components on saved inputs and report errors against saved outputs.
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use dreamdist::backend::block_on;
use dreamdist::model::{ModelSpec, StableDiffusion};
use dreamdist::parity::{Io, all};

#[derive(Args)]
pub struct ParityArgs {
    /// Model architecture: sd21, sd21-base or tiny.
    #[arg(long, default_value = "sd21")]
    model: String,
    /// Weights directory (diffusers layout or flat *.safetensors).
    #[arg(long)]
    weights_dir: PathBuf,
    /// Inputs/outputs saved by the reference script.
    #[arg(long)]
    io: PathBuf,
    /// Backend: cpu or wgpu.
    #[arg(long, default_value = "cpu")]
    backend: dreamdist::backend::BackendKind,
    /// Print one JSON line {tensor: max relative error} instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(a: ParityArgs) -> anyhow::Result<()> {
    let spec = ModelSpec::from_id(&a.model)?;
    let (device, _) = dreamdist::backend::device(a.backend)?;
    let sd = StableDiffusion::from_dir(spec, &a.weights_dir, &device.autodiff())?;
    let io = Io::from_bytes(&std::fs::read(&a.io).with_context(|| format!("reading {}", a.io.display()))?)?;
    let checks = block_on(all(&sd, &io))?;
    if a.json {
        let map: serde_json::Map<String, serde_json::Value> =
            checks.iter().map(|c| (c.name.clone(), serde_json::json!(c.max_rel))).collect();
        println!("{}", serde_json::Value::Object(map));
    } else {
        println!("| tensor | max abs err | max rel err |\n|---|---|---|");
        for c in &checks {
            println!("| {} | {:.3e} | {:.3e} |", c.name, c.max_abs, c.max_rel);
        }
    }
    Ok(())
}
