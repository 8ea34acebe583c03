//! `dreamdist eval`: the demo model's quality gate and the paper's claims in miniature, as a
//! markdown report and PNG contact sheets (see `dreamdist::demo::eval`).
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use dreamdist::backend::{block_on, now_ms};
use dreamdist::demo::SIDE;
use dreamdist::demo::eval::{
    EvalConfig, EvalReport, EvalSampling, Metrics, QualityReport, evaluate, quality, reference_sets,
};
use dreamdist::pipeline::RgbImage;
use dreamdist::tokenizer::ClipTokenizer;

use super::common::ModelArgs;

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// What to run: quality (held-out captions), claims (reference sets, methods, γ, mixing,
    /// editing).
    #[arg(long, value_delimiter = ',', default_values_t = ["quality".to_string(), "claims".to_string()])]
    what: Vec<String>,
    /// Held-out captions of the quality gate.
    #[arg(long, default_value_t = 200)]
    captions: usize,
    /// Training steps per learned distribution.
    #[arg(long, default_value_t = 400)]
    steps: u64,
    /// Samples per measurement.
    #[arg(long, default_value_t = 64)]
    samples: usize,
    /// Number of reference sets (1–4).
    #[arg(long, default_value_t = 4)]
    sets: usize,
    /// Denoising steps.
    #[arg(long, default_value_t = 20)]
    denoise_steps: usize,
    /// Guidance scale.
    #[arg(long, default_value_t = 4.0)]
    guidance: f32,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Markdown report.
    #[arg(long, default_value = "demo-eval.md")]
    out: PathBuf,
    /// Directory for PNG contact sheets.
    #[arg(long, default_value = "demo-eval")]
    sheets: PathBuf,
}

fn sheet(rows: &[(String, Vec<Vec<u8>>)]) -> RgbImage {
    let scale = 2;
    let s = SIDE * scale;
    let gap = 2;
    let cols = rows.iter().map(|r| r.1.len()).max().unwrap_or(1).max(1);
    let (w, h) = (cols * (s + gap) + gap, rows.len() * (s + gap) + gap);
    let mut px = vec![255u8; w * h * 3];
    for (r, (_, imgs)) in rows.iter().enumerate() {
        for (c, img) in imgs.iter().enumerate() {
            let (x0, y0) = (gap + c * (s + gap), gap + r * (s + gap));
            for y in 0..s {
                for x in 0..s {
                    let src = ((y / scale) * SIDE + x / scale) * 3;
                    let dst = ((y0 + y) * w + x0 + x) * 3;
                    px[dst..dst + 3].copy_from_slice(&img[src..src + 3]);
                }
            }
        }
    }
    RgbImage { width: w, height: h, pixels: px }
}

fn row(m: &Metrics) -> String {
    format!(
        "{:.2} | {:.2} | {} | {:.2} | {:.2} | {:.2} | {:.2}",
        m.precision, m.coverage, m.distinct, m.entropy, m.density, m.nn_coverage, m.readable
    )
}

fn report_md(q: Option<&QualityReport>, e: Option<&EvalReport>, header: &str) -> String {
    let mut md = String::new();
    writeln!(md, "{header}\n").unwrap();
    if let Some(q) = q {
        writeln!(md, "## Quality gate: {} held-out captions, one sample each\n", q.n).unwrap();
        writeln!(md, "| attribute | right | target |\n|---|---|---|").unwrap();
        for (name, v, target) in [
            ("colour", q.color, Some(0.90)),
            ("shape", q.shape, Some(0.80)),
            ("background", q.background, Some(0.90)),
            ("size (captions naming it)", q.size, None),
            ("all named attributes", q.all, None),
        ] {
            let t = target.map_or("—".to_string(), |t: f32| {
                format!("≥ {:.0}% {}", t * 100.0, if v >= t { "met" } else { "MISSED" })
            });
            writeln!(md, "| {name} | {:.1}% | {t} |", v * 100.0).unwrap();
        }
        writeln!(md).unwrap();
    }
    if let Some(e) = e {
        let c = &e.config;
        writeln!(
            md,
            "## The paper's claims in miniature\n\nDistributions trained {} steps (K={}, M={}, lr {}, paper recipe) on {} reference images per set; every measurement on {} samples ({} DDIM steps, guidance {}), the same seeds for every method.\n\nColumns: precision = samples inside the set's support; coverage = support combinations hit; distinct / entropy (bits) of the sampled combinations; density / coverage (Naeem et al. 2020, k=5) of reader features against 256 renderings of the support; readable = samples with every attribute readable.\n",
            c.steps, c.k, c.m, c.lr, c.references, c.samples, c.sampling.steps, c.sampling.guidance
        )
        .unwrap();
        for s in &e.sets {
            writeln!(md, "### {} — {}\n", s.set.name, s.set.description).unwrap();
            writeln!(md, "| method | precision | coverage | distinct | entropy | density | NN coverage | readable |\n|---|---|---|---|---|---|---|---|").unwrap();
            for (name, m) in &s.methods {
                writeln!(md, "| {name} | {} |", row(m)).unwrap();
            }
            writeln!(md, "\nγ sweep (DreamDistribution):\n\n| γ | precision | coverage | distinct | entropy | density | NN coverage | readable |\n|---|---|---|---|---|---|---|---|").unwrap();
            for (g, m) in &s.gamma_sweep {
                writeln!(md, "| {g} | {} |", row(m)).unwrap();
            }
            writeln!(
                md,
                "\nEditing with \"{}\": {:.0}% of samples have that background; {:.0}% keep the set's shapes and colours. ({:.0} s; sheet: `{}.png`)\n",
                c.edit_template,
                s.edit.0 * 100.0,
                s.edit.1 * 100.0,
                s.seconds,
                s.set.name
            )
            .unwrap();
        }
        if !e.mixing.is_empty() {
            writeln!(
                md,
                "### Mixing {} (α) with {} (1 − α), eq. 7\n\n| α | in the first set's support | in the second's |\n|---|---|---|",
                e.sets[0].set.name, e.sets[1].set.name
            )
            .unwrap();
            for (a, x, y) in &e.mixing {
                writeln!(md, "| {a} | {:.0}% | {:.0}% |", x * 100.0, y * 100.0).unwrap();
            }
            writeln!(md, "\nSheet: `mixing.png`.\n").unwrap();
        }
    }
    md
}

pub fn run(a: EvalArgs) -> anyhow::Result<()> {
    let sd = a.model.load()?;
    let tok = ClipTokenizer::sd2()?;
    let sampling = EvalSampling { steps: a.denoise_steps, guidance: a.guidance, ..Default::default() };
    let t0 = now_ms();
    let q = if a.what.iter().any(|w| w == "quality") {
        eprintln!("eval: quality gate on {} held-out captions", a.captions);
        let q = block_on(quality(&sd, &tok, a.captions, &sampling))?;
        eprintln!(
            "eval: colour {:.1}%, shape {:.1}%, background {:.1}%, size {:.1}%",
            q.color * 100.0,
            q.shape * 100.0,
            q.background * 100.0,
            q.size * 100.0
        );
        Some(q)
    } else {
        None
    };
    let e = if a.what.iter().any(|w| w == "claims") {
        let cfg = EvalConfig {
            steps: a.steps,
            samples: a.samples,
            sampling: sampling.clone(),
            seed: a.seed,
            ..Default::default()
        };
        let sets: Vec<_> = reference_sets().into_iter().take(a.sets.clamp(1, 4)).collect();
        let report = block_on(evaluate(&sd, &tok, &cfg, &sets, |l| eprintln!("eval: {l}")))?;
        std::fs::create_dir_all(&a.sheets).with_context(|| format!("creating {}", a.sheets.display()))?;
        for s in &report.sets {
            let img = sheet(&s.sheet);
            let label = s.sheet.iter().map(|r| r.0.as_str()).collect::<Vec<_>>().join(" / ");
            let png = dreamdist::image::encode_png(&img, &[("Description".into(), format!("rows: {label}"))])?;
            std::fs::write(a.sheets.join(format!("{}.png", s.set.name)), png)?;
        }
        if !report.mixing_sheet.is_empty() {
            let img = sheet(&report.mixing_sheet);
            let png = dreamdist::image::encode_png(&img, &[("Description".into(), "rows: α = 0 … 1".into())])?;
            std::fs::write(a.sheets.join("mixing.png"), png)?;
        }
        Some(report)
    } else {
        None
    };
    let header = format!(
        "# dreamdist eval — model `{}`\n\nMeasured with `dreamdist eval` (backend {:?}, {} CPU threads) in {:.0} s. Samples are judged by the attribute reader (src/demo/reader.rs).",
        sd.spec.id,
        a.model.backend,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        (now_ms() - t0) / 1000.0
    );
    let md = report_md(q.as_ref(), e.as_ref(), &header);
    std::fs::write(&a.out, &md).with_context(|| format!("writing {}", a.out.display()))?;
    print!("{md}");
    Ok(())
}
