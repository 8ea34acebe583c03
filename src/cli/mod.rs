//! Subcommands of the native CLI.
mod bench;
mod common;
mod convert;
mod crosscheck;
mod demo;
mod eval;
mod parity;
mod proof;
mod sample;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dreamdist::backend::{self, BackendKind};

#[derive(Parser)]
#[command(
    name = "dreamdist",
    version,
    about = "DreamDistribution on Stable Diffusion 2.1: learn, sample, edit and mix prompt distributions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the tensor self-test (matmul, conv2d, group norm, attention, backward) and report it.
    Selftest {
        /// Backend: cpu or wgpu.
        #[arg(long, default_value = "cpu")]
        backend: BackendKind,
        /// Number of rounds.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Print the report as JSON (the format the browser page produces).
        #[arg(long)]
        json: bool,
    },
    /// Learn a prompt distribution from reference images.
    Train(train::TrainArgs),
    /// Generate images from one or more (mixed) distributions.
    Sample(sample::SampleArgs),
    /// Time UNet forward/backward and training steps of the full-size architecture.
    Bench(bench::BenchArgs),
    /// Convert a model to dreamdist's manifest + shards (quantized, for streaming and the browser).
    Convert(convert::ConvertArgs),
    /// One training step on the CPU backend and on native wgpu, compared (opt-in proof).
    Crosscheck(crosscheck::CrosscheckArgs),
    /// Evaluate the demo model: quality gate on held-out captions and the paper's claims in
    /// miniature (markdown + PNG sheets).
    Eval(eval::EvalArgs),
    /// The full-size proof's computation on this backend, as JSON (reference for the browser).
    Proof(proof::ProofArgs),
    /// Write samples of the demo data set (images, tokenized captions, attributes) to a file.
    DemoData(demo::DataArgs),
    /// Read the attributes of demo images in a file (JSON to stdout).
    DemoRead(demo::ReadArgs),
    /// Run components on saved inputs and report the error against saved outputs
    /// (used by scripts/fixtures/full_size_parity.py).
    Parity(parity::ParityArgs),
}

/// Entry point.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dreamdist: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Selftest { backend: kind, rounds, json } => {
            let (device, info) = backend::device(kind)?;
            let name = serde_json::to_value(kind)?.as_str().unwrap_or_default().to_string();
            let report = backend::block_on(dreamdist::selftest::run(&device, &name, rounds))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("adapter: {}", info.describe());
                for (i, round) in report.rounds.iter().enumerate() {
                    println!("round {} ({:.1} ms)", i + 1, round.ms);
                    for op in &round.ops {
                        println!("  {:<11} {:?} sum {:+.6e} |sum| {:.6e}", op.name, op.shape, op.sum, op.sum_abs);
                    }
                }
            }
            Ok(())
        }
        Command::Train(a) => train::run(a),
        Command::Sample(a) => sample::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Parity(a) => parity::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Crosscheck(a) => crosscheck::run(a),
        Command::Proof(a) => proof::run(a),
        Command::DemoData(a) => demo::data(a),
        Command::DemoRead(a) => demo::read(a),
    }
}
