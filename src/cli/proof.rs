//! `dreamdist proof`: the full-size proof's computation (prompt encoding, one guided UNet step,
//! a VAE decode) on this machine's backend, as JSON — the native reference the browser's run
//! of the same function is compared with (scripts/proofs/fullsize.mjs).
use clap::Args;
use dreamdist::backend::block_on;
use dreamdist::tokenizer::ClipTokenizer;

use super::common::ModelArgs;

#[derive(Args)]
pub struct ProofArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Image side.
    #[arg(long, default_value_t = 512)]
    size: usize,
    /// Seed of the latents.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(a: ProofArgs) -> anyhow::Result<()> {
    let sd = a.model.load()?;
    let tok = ClipTokenizer::sd2()?;
    let r = block_on(dreamdist::pipeline::proof(&sd, &tok, a.size, a.seed))?;
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(())
}
