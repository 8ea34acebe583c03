//! `dreamdist demo-data` and `dreamdist demo-read`: the demo world's data set and attribute
//! reader, as files for the demo model's training script (`scripts/demo/train_demo.py`).
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use dreamdist::demo;
use dreamdist::tokenizer::ClipTokenizer;

#[derive(Args)]
pub struct DataArgs {
    /// Data-set seed (sample i of seed s is always the same image and caption).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Index of the first sample.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Number of samples.
    #[arg(long)]
    n: usize,
    /// Output safetensors file (`images` U8 [n,32,32,3], `ids` I64 [n,77], `attrs` U8 [n,5]).
    #[arg(long)]
    out: PathBuf,
}

pub fn data(a: DataArgs) -> anyhow::Result<()> {
    let tok = ClipTokenizer::sd2()?;
    let bytes = demo::dataset_file(a.seed, a.start, a.n, &tok)?;
    std::fs::write(&a.out, bytes).with_context(|| format!("writing {}", a.out.display()))?;
    Ok(())
}

#[derive(Args)]
pub struct ReadArgs {
    /// A safetensors file with a U8 tensor `images` [n, 32, 32, 3].
    #[arg(long)]
    images: PathBuf,
}

/// Prints one JSON object per image: the reading (attributes and features).
pub fn read(a: ReadArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&a.images).with_context(|| format!("reading {}", a.images.display()))?;
    let readings = demo::read_images_file(&bytes)?;
    println!("{}", serde_json::to_string(&readings)?);
    Ok(())
}
