//! `dreamdist proof`: the full-size proof's computation (prompt encoding, one guided UNet step,
//! a VAE decode) on this machine's backend, as JSON — the native reference the browser's run
//! of the same function is compared with (scripts/proofs/fullsize.mjs); with `--train`, one
//! training step's loss and gradient instead.
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
    /// Seed of the latents (with --train: of the reference image, the prompts and the draws).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Instead: one training step's loss and raw gradient ∂L/∂V (paper recipe) on a seeded
    /// random reference image at --size.
    #[arg(long)]
    train: bool,
    /// With --train: prompts K.
    #[arg(long, default_value_t = 2)]
    k: usize,
    /// With --train: tokens per prompt M.
    #[arg(long, default_value_t = 4)]
    m: usize,
    /// With --train: reparameterised samples S.
    #[arg(long, default_value_t = 1)]
    samples: usize,
}

pub fn run(a: ProofArgs) -> anyhow::Result<()> {
    let sd = a.model.load()?;
    let tok = ClipTokenizer::sd2()?;
    if a.train {
        let r = block_on(dreamdist::train::proof_step(&sd, &tok, a.size, a.seed, a.k, a.m, a.samples))?;
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        let r = block_on(dreamdist::pipeline::proof(&sd, &tok, a.size, a.seed))?;
        println!("{}", serde_json::to_string_pretty(&r)?);
    }
    Ok(())
}
