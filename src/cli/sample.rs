//! `dreamdist sample`: images from one or more (mixed) learned distributions.
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use dreamdist::backend::{block_on, tensor};
use dreamdist::distribution::{MixRule, PromptGaussian, Template, fit_gaussian};
use dreamdist::pipeline::{RgbImage, SampleConfig, encode_text, generate, sample_condition};
use dreamdist::rng::Rng;
use dreamdist::schedule::SamplerKind;
use dreamdist::tokenizer::ClipTokenizer;
use dreamdist::train::sigma_of;

use super::common::{ModelArgs, read_dist};

#[derive(Args)]
pub struct SampleArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A learned distribution, optionally with a mixing weight: `A.ddist` or `A.ddist:0.3`.
    /// Repeat to mix (weights are normalised to sum to 1).
    #[arg(long = "dist", required = true)]
    dists: Vec<String>,
    /// How σ of a mixture is formed: paper (Σ√αᵢσᵢ) or authors (√Σ(αᵢσᵢ)²).
    #[arg(long, default_value = "paper")]
    mix_rule: String,
    /// Spread γ: c̃ = μ + γ·ω⊙σ (0 gives the mean).
    #[arg(long, default_value_t = 1.0)]
    gamma: f32,
    /// Text template with {} where the learned tokens go, e.g. "a watercolor of {} at night"
    /// (default: the training template of the first distribution).
    #[arg(long)]
    prompt: Option<String>,
    /// Number of images.
    #[arg(long, default_value_t = 4)]
    n: usize,
    /// Seed (image i uses seed + i).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Denoising steps.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Classifier-free guidance scale.
    #[arg(long, default_value_t = 7.5)]
    guidance: f32,
    /// Scheduler: ddim, euler, euler-a, dpm++.
    #[arg(long, default_value = "ddim")]
    scheduler: SamplerKind,
    /// Image side in pixels (default: the model's native resolution).
    #[arg(long)]
    size: Option<usize>,
    /// Output directory.
    #[arg(long, default_value = "samples")]
    out: PathBuf,
    /// Also write a contact sheet: a γ sweep (rows γ = 0, 0.5, 1, 1.5) for one distribution, or
    /// a mixing strip (α from 0 to 1 between the first two) for several.
    #[arg(long)]
    sheet: bool,
}

fn parse_dist(s: &str) -> anyhow::Result<(PathBuf, f32)> {
    match s.rsplit_once(':') {
        Some((p, a)) if a.parse::<f32>().is_ok() => Ok((PathBuf::from(p), a.parse()?)),
        _ => Ok((PathBuf::from(s), 1.0)),
    }
}

pub fn run(a: SampleArgs) -> anyhow::Result<()> {
    let rule = match a.mix_rule.as_str() {
        "paper" => MixRule::Paper,
        "authors" => MixRule::Authors,
        r => anyhow::bail!("unknown --mix-rule {r:?} (paper or authors)"),
    };
    let sd = a.model.load()?;
    let tokenizer = ClipTokenizer::sd2()?;
    let device = sd.device();
    let mut parts = vec![];
    let mut first_template = None;
    for d in &a.dists {
        let (path, alpha) = parse_dist(d)?;
        let file = read_dist(&path, &sd)?;
        first_template.get_or_insert(file.train.template.clone());
        parts.push((path, alpha, file));
    }
    let template = Template::parse(a.prompt.as_deref().unwrap_or(first_template.as_deref().unwrap_or("{}")))?;
    let mut gaussians = vec![];
    for (path, _, f) in &parts {
        let v = tensor(f.prompts.clone(), [f.k, f.m, f.hidden], &device);
        gaussians.push(
            fit_gaussian(&sd, &tokenizer, &template, v, sigma_of(f)).with_context(|| format!("{}", path.display()))?,
        );
    }
    let weights: Vec<(&PromptGaussian, f32)> = gaussians.iter().zip(&parts).map(|(g, p)| (g, p.1)).collect();
    let mixed = PromptGaussian::mix(&weights, rule)?;
    let uncond = encode_text(&sd, &tokenizer, "")?;
    let size = a.size.unwrap_or(sd.spec.native_resolution());
    let cfg =
        SampleConfig { steps: a.steps, guidance: a.guidance, sampler: a.scheduler, gamma: a.gamma, size, seed: a.seed };
    cfg.check(&sd)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let describe = |gamma: f32, seed: u64, mix: &str| -> Vec<(String, String)> {
        let params = serde_json::json!({
            "model": sd.spec.id, "dists": a.dists, "mix": mix, "mix_rule": a.mix_rule, "template": template.to_string(),
            "gamma": gamma, "seed": seed, "steps": a.steps, "guidance": a.guidance,
            "scheduler": a.scheduler, "size": size,
        });
        vec![
            ("Software".into(), format!("dreamdist {}", env!("CARGO_PKG_VERSION"))),
            ("dreamdist".into(), params.to_string()),
        ]
    };
    let render = |g: &PromptGaussian, gamma: f32, seed: u64| -> anyhow::Result<RgbImage> {
        let mut rng = Rng::new(seed);
        let cond = sample_condition(g, gamma, &mut rng);
        let cfg = SampleConfig { gamma, seed, ..cfg.clone() };
        Ok(block_on(generate(&sd, cond, uncond.clone(), &cfg, &mut rng, |_, _| {}))?)
    };
    let mix_desc = if parts.len() > 1 {
        parts.iter().map(|p| format!("{}:{}", p.0.display(), p.1)).collect::<Vec<_>>().join(",")
    } else {
        String::new()
    };
    for i in 0..a.n {
        let seed = a.seed + i as u64;
        let img = render(&mixed, a.gamma, seed)?;
        let path = a.out.join(format!("{i:04}.png"));
        std::fs::write(&path, dreamdist::image::encode_png(&img, &describe(a.gamma, seed, &mix_desc))?)?;
        eprintln!("wrote {}", path.display());
    }
    if a.sheet {
        let cols = a.n.clamp(1, 8);
        let mut rows: Vec<Vec<RgbImage>> = vec![];
        let label;
        if gaussians.len() == 1 {
            label = "gamma sweep: rows γ = 0, 0.5, 1, 1.5";
            for gamma in [0.0, 0.5, 1.0, 1.5] {
                rows.push((0..cols).map(|i| render(&mixed, gamma, a.seed + i as u64)).collect::<anyhow::Result<_>>()?);
            }
        } else {
            label = "mixing strip: columns α(first) = 1, 0.75, 0.5, 0.25, 0; rows seeds";
            for i in 0..cols.min(4) {
                let mut row = vec![];
                for alpha in [1.0f32, 0.75, 0.5, 0.25, 0.0] {
                    let m = PromptGaussian::mix(&[(&gaussians[0], alpha), (&gaussians[1], 1.0 - alpha)], rule)?;
                    row.push(render(&m, a.gamma, a.seed + i as u64)?);
                }
                rows.push(row);
            }
        }
        let sheet = contact_sheet(&rows);
        let path = a.out.join("sheet.png");
        std::fs::write(&path, dreamdist::image::encode_png(&sheet, &[("Description".into(), label.into())])?)?;
        eprintln!("wrote {} ({label})", path.display());
    }
    Ok(())
}

/// Tiles rows of equally sized images with a 4 px white gap.
fn contact_sheet(rows: &[Vec<RgbImage>]) -> RgbImage {
    let (w, h) = (rows[0][0].width, rows[0][0].height);
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(1);
    let gap = 4;
    let (sw, sh) = (cols * w + (cols + 1) * gap, rows.len() * h + (rows.len() + 1) * gap);
    let mut pixels = vec![255u8; sw * sh * 3];
    for (r, row) in rows.iter().enumerate() {
        for (c, img) in row.iter().enumerate() {
            let (x0, y0) = (gap + c * (w + gap), gap + r * (h + gap));
            for y in 0..h {
                let dst = ((y0 + y) * sw + x0) * 3;
                pixels[dst..dst + w * 3].copy_from_slice(&img.pixels[y * w * 3..(y + 1) * w * 3]);
            }
        }
    }
    RgbImage { width: sw, height: sh, pixels }
}
