//! The paper's claims, measured in miniature on the demo model (`dreamdist eval`).
//!
//! Reference sets are defined by attribute subsets that no single caption of the grammar
//! describes ("circles or stars in warm colours, any size, on dark backgrounds"). For each set,
//! DreamDistribution (K prompts), Textual-Inversion mode and the best single caption are
//! compared on samples judged by the attribute reader: precision (samples inside the set's
//! support), coverage of the support's attribute combinations, diversity (distinct
//! combinations, entropy), and density/coverage (Naeem et al. 2020) of reader features against
//! renderings of the support. Then γ against diversity, mixing two sets, and text-guided
//! editing. Every number is measured; nothing is tuned to pass.
use std::collections::{BTreeMap, BTreeSet};

use burn::tensor::Tensor;
use serde::Serialize;

use super::reader::{Reading, read};
use super::scene::{Attributes, Background, Color, Jitter, Position, SIDE, Shape, Size, caption, render};
use crate::distribution::{MixRule, PromptGaussian, Template, fit_gaussian};
use crate::model::StableDiffusion;
use crate::pipeline::{RgbImage, SampleConfig, encode_text, generate_batch, sample_condition};
use crate::rng::Rng;
use crate::schedule::SamplerKind;
use crate::tokenizer::ClipTokenizer;
use crate::train::{Mode, TrainConfig, Trainer};
use crate::{Error, Result};

/// A reference set: the allowed values of each attribute (position is free).
#[derive(Clone, Debug, Serialize)]
pub struct RefSet {
    /// Short name.
    pub name: &'static str,
    /// In words.
    pub description: &'static str,
    /// Allowed shapes.
    pub shapes: Vec<Shape>,
    /// Allowed colours.
    pub colors: Vec<Color>,
    /// Allowed sizes.
    pub sizes: Vec<Size>,
    /// Allowed backgrounds.
    pub backgrounds: Vec<Background>,
}

impl RefSet {
    /// Whether a reading lies in the support (every attribute read and allowed).
    pub fn contains(&self, r: &Reading) -> bool {
        matches!((r.shape, r.color, r.size), (Some(s), Some(c), Some(z))
            if self.shapes.contains(&s) && self.colors.contains(&c) && self.sizes.contains(&z) && self.backgrounds.contains(&r.background))
    }
    /// Every allowed (shape, colour, size, background) combination the renderer can draw.
    pub fn support(&self) -> Vec<(Shape, Color, Size, Background)> {
        let mut out = vec![];
        for &s in &self.shapes {
            for &c in &self.colors {
                for &z in &self.sizes {
                    for &b in &self.backgrounds {
                        if b.allows(c) {
                            out.push((s, c, z, b));
                        }
                    }
                }
            }
        }
        out
    }
    /// A random scene of the support.
    pub fn draw(&self, rng: &mut Rng) -> Attributes {
        let sup = self.support();
        let (shape, color, size, background) = sup[rng.below(sup.len() as u64) as usize];
        let position = Position::ALL[rng.below(3) as usize];
        Attributes { shape, color, size, position, background }
    }
    /// `n` reference images (RGB 32×32), deterministic per seed.
    pub fn references(&self, n: usize, seed: u64) -> Vec<Vec<u8>> {
        let mut rng = Rng::new(seed);
        (0..n).map(|_| render(&self.draw(&mut rng), &Jitter::random(&mut rng))).collect()
    }
}

/// The reference sets of the evaluation.
pub fn reference_sets() -> Vec<RefSet> {
    use Background as B;
    use Color as C;
    use Shape as S;
    use Size as Z;
    vec![
        RefSet {
            name: "warm-round-dark",
            description: "circles or stars in warm colours (red, orange, yellow, pink), any size, on dark backgrounds (black, blue, green)",
            shapes: vec![S::Circle, S::Star],
            colors: vec![C::Red, C::Orange, C::Yellow, C::Pink],
            sizes: Z::ALL.to_vec(),
            backgrounds: vec![B::Black, B::Blue, B::Green],
        },
        RefSet {
            name: "cool-angular-light",
            description: "squares or triangles in cool colours (green, cyan, blue, purple), medium or large, on white or gray",
            shapes: vec![S::Square, S::Triangle],
            colors: vec![C::Green, C::Cyan, C::Blue, C::Purple],
            sizes: vec![Z::Medium, Z::Large],
            backgrounds: vec![B::White, B::Gray],
        },
        RefSet {
            name: "small-red-blue",
            description: "any shape, red or blue, small, on white or gray",
            shapes: S::ALL.to_vec(),
            colors: vec![C::Red, C::Blue],
            sizes: vec![Z::Small],
            backgrounds: vec![B::White, B::Gray],
        },
        RefSet {
            name: "pointy-violet-night",
            description: "stars or triangles, purple or pink, any size, on black or dark blue",
            shapes: vec![S::Star, S::Triangle],
            colors: vec![C::Purple, C::Pink],
            sizes: Z::ALL.to_vec(),
            backgrounds: vec![B::Black, B::Blue],
        },
    ]
}

/// Metrics of a set of samples against a reference set.
#[derive(Clone, Debug, Serialize, Default)]
pub struct Metrics {
    /// Samples judged.
    pub n: usize,
    /// Share of samples inside the support.
    pub precision: f32,
    /// Share of the support's combinations hit by at least one sample.
    pub coverage: f32,
    /// Distinct (shape, colour, size, background) combinations among the samples.
    pub distinct: usize,
    /// Entropy of the sample combinations, bits.
    pub entropy: f32,
    /// Density (Naeem et al. 2020, k = 5) of reader features against renderings of the support.
    pub density: f32,
    /// Coverage (Naeem et al. 2020, k = 5).
    pub nn_coverage: f32,
    /// Share of samples with every attribute readable.
    pub readable: f32,
}

/// A reader feature vector: hue (cos, sin), saturation, extent, fill, offset, centroid x,
/// background RGB (as read).
fn feature(r: &Reading) -> Vec<f32> {
    let f = &r.features;
    let h = f.hue.to_radians();
    let bg = r.background.rgb();
    vec![
        h.cos() * f.saturation,
        h.sin() * f.saturation,
        f.width.max(f.height) / SIDE as f32,
        f.fill,
        f.offset * 3.0,
        f.cx / SIDE as f32,
        bg[0] as f32 / 255.0,
        bg[1] as f32 / 255.0,
        bg[2] as f32 / 255.0,
    ]
}

fn dist2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Density and coverage (Naeem et al. 2020) of `fake` against `real` with k neighbours.
pub fn density_coverage(real: &[Vec<f32>], fake: &[Vec<f32>], k: usize) -> (f32, f32) {
    if real.len() <= k || fake.is_empty() {
        return (0.0, 0.0);
    }
    let radii: Vec<f32> = real
        .iter()
        .map(|x| {
            let mut d: Vec<f32> = real.iter().map(|y| dist2(x, y)).collect();
            d.sort_by(f32::total_cmp);
            d[k] // d[0] is the point itself
        })
        .collect();
    let mut density = 0usize;
    for y in fake {
        density += real.iter().zip(&radii).filter(|(x, r)| dist2(x, y) <= **r).count();
    }
    let covered = real.iter().zip(&radii).filter(|(x, r)| fake.iter().any(|y| dist2(x, y) <= **r)).count();
    (density as f32 / (k * fake.len()) as f32, covered as f32 / real.len() as f32)
}

/// Judges sample images against a set.
pub fn metrics(set: &RefSet, samples: &[Vec<u8>], real_features: &[Vec<f32>]) -> Metrics {
    let readings: Vec<Reading> = samples.iter().map(|s| read(s)).collect();
    let n = samples.len();
    let inside = readings.iter().filter(|r| set.contains(r)).count();
    let combos: Vec<(Shape, Color, Size, Background)> =
        readings.iter().filter_map(|r| Some((r.shape?, r.color?, r.size?, r.background))).collect();
    let support: BTreeSet<_> = set.support().into_iter().collect();
    let hit: BTreeSet<_> = combos.iter().filter(|c| support.contains(c)).collect();
    let mut counts: BTreeMap<_, usize> = BTreeMap::new();
    for c in &combos {
        *counts.entry(c).or_default() += 1;
    }
    let total = combos.len().max(1) as f32;
    let entropy = -counts.values().map(|&c| c as f32 / total).map(|p| p * p.log2()).sum::<f32>();
    let fake: Vec<Vec<f32>> = readings.iter().map(feature).collect();
    let (density, nn_coverage) = density_coverage(real_features, &fake, 5);
    Metrics {
        n,
        precision: inside as f32 / n.max(1) as f32,
        coverage: hit.len() as f32 / support.len().max(1) as f32,
        distinct: counts.len(),
        entropy,
        density,
        nn_coverage,
        readable: combos.len() as f32 / n.max(1) as f32,
    }
}

/// Reader features of `n` renderings of the set's support (the "real" distribution).
pub fn real_features(set: &RefSet, n: usize, seed: u64) -> Vec<Vec<f32>> {
    set.references(n, seed).iter().map(|img| feature(&read(img))).collect()
}

/// Sampling settings of the evaluation.
#[derive(Clone, Debug, Serialize)]
pub struct EvalSampling {
    /// Denoising steps.
    pub steps: usize,
    /// Guidance scale.
    pub guidance: f32,
    /// Sampler.
    pub sampler: SamplerKind,
}

impl Default for EvalSampling {
    fn default() -> Self {
        Self { steps: 20, guidance: 4.0, sampler: SamplerKind::Ddim }
    }
}

/// Generates one image per conditioning (batched), each from seed `seed0 + i`.
pub async fn sample_conds(
    sd: &StableDiffusion,
    conds: Vec<Tensor<3>>,
    uncond: &Tensor<3>,
    s: &EvalSampling,
    seed0: u64,
) -> Result<Vec<Vec<u8>>> {
    let mut out = vec![];
    for (ci, chunk) in conds.chunks(64).enumerate() {
        let mut rngs: Vec<Rng> = (0..chunk.len()).map(|i| Rng::new(seed0 + (ci * 64 + i) as u64 + 1_000_000)).collect();
        let cfg = SampleConfig {
            steps: s.steps,
            guidance: s.guidance,
            sampler: s.sampler,
            gamma: 1.0,
            size: sd.spec.native_resolution(),
            seed: seed0,
        };
        let imgs: Vec<RgbImage> = generate_batch(sd, chunk, uncond.clone(), &cfg, &mut rngs, &mut |_, _| true).await?;
        out.extend(imgs.into_iter().map(|i| i.pixels));
    }
    Ok(out)
}

/// `n` samples of a Gaussian at spread `gamma` (conditions drawn from seeds `seed0 + i`).
pub async fn sample_gaussian(
    sd: &StableDiffusion,
    g: &PromptGaussian,
    gamma: f32,
    n: usize,
    uncond: &Tensor<3>,
    s: &EvalSampling,
    seed0: u64,
) -> Result<Vec<Vec<u8>>> {
    let conds = (0..n).map(|i| sample_condition(g, gamma, &mut Rng::new(seed0 + i as u64))).collect();
    sample_conds(sd, conds, uncond, s, seed0).await
}

/// Trains a distribution on the set's reference images.
pub async fn train_on(
    sd: &StableDiffusion,
    tok: &ClipTokenizer,
    refs: &[Vec<u8>],
    cfg: TrainConfig,
    mut on_step: impl FnMut(u64, f32),
) -> Result<Trainer> {
    let device = sd.device();
    let r = cfg.resolution;
    let images: Vec<Tensor<4>> = refs
        .iter()
        .map(|px| {
            let plane = SIDE * SIDE;
            let mut v = vec![0f32; 3 * plane];
            for i in 0..plane {
                for c in 0..3 {
                    v[c * plane + i] = px[i * 3 + c] as f32 / 127.5 - 1.0;
                }
            }
            crate::backend::tensor(v, [1, 3, SIDE, SIDE], &device)
        })
        .collect();
    if r != SIDE {
        return Err(Error::Invalid(format!("the demo world is {SIDE} px; train at that resolution, not {r}")));
    }
    let mut t = Trainer::new(cfg, sd, tok, &images).await?;
    while t.step < t.cfg.steps {
        let s = t.step(sd).await?;
        on_step(s.step, s.loss);
    }
    Ok(t)
}

/// Evaluation settings.
#[derive(Clone, Debug, Serialize)]
pub struct EvalConfig {
    /// Training steps of each learned distribution.
    pub steps: u64,
    /// Samples per measurement.
    pub samples: usize,
    /// Reference images per set.
    pub references: usize,
    /// K for DreamDistribution.
    pub k: usize,
    /// M.
    pub m: usize,
    /// Learning rate.
    pub lr: f32,
    /// Sampling.
    pub sampling: EvalSampling,
    /// γ values of the sweep.
    pub gammas: Vec<f32>,
    /// α values of the mixing strip.
    pub alphas: Vec<f32>,
    /// Template of the editing test.
    pub edit_template: String,
    /// Background the editing template asks for.
    pub edit_background: Background,
    /// Seed.
    pub seed: u64,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            steps: 400,
            samples: 64,
            references: 8,
            k: 32,
            m: 4,
            lr: 5e-3,
            sampling: EvalSampling::default(),
            gammas: vec![0.0, 0.5, 1.0, 1.5, 2.0],
            alphas: vec![0.0, 0.25, 0.5, 0.75, 1.0],
            edit_template: "{} on a green background".into(),
            edit_background: Background::Green,
            seed: 0,
        }
    }
}

/// Results for one reference set.
#[derive(Clone, Debug, Serialize)]
pub struct SetResult {
    /// The set.
    pub set: RefSet,
    /// DreamDistribution, Textual Inversion, best single caption, untrained distribution.
    pub methods: Vec<(String, Metrics)>,
    /// The chosen single caption.
    pub best_caption: String,
    /// (γ, metrics) of the DreamDistribution sweep.
    pub gamma_sweep: Vec<(f32, Metrics)>,
    /// Editing: share of samples with the asked background, and share keeping the set's shape
    /// and colour.
    pub edit: (f32, f32),
    /// Seconds spent.
    pub seconds: f64,
    /// Rows of example images for the contact sheet: (label, images).
    #[serde(skip)]
    pub sheet: Vec<(String, Vec<Vec<u8>>)>,
}

/// The whole evaluation.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    /// Settings.
    pub config: EvalConfig,
    /// Per set.
    pub sets: Vec<SetResult>,
    /// Mixing the first two sets: (α of the first, share in the first's support, share in the
    /// second's).
    pub mixing: Vec<(f32, f32, f32)>,
    /// Example images of the mixing strip, one row per α.
    #[serde(skip)]
    pub mixing_sheet: Vec<(String, Vec<Vec<u8>>)>,
}

/// Candidate single captions for a set: one per support combination (a full phrasing),
/// deterministic, at most `n`.
fn candidate_captions(set: &RefSet, n: usize, seed: u64) -> Vec<String> {
    let mut rng = Rng::new(seed);
    let mut sup = set.support();
    for i in (1..sup.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        sup.swap(i, j);
    }
    sup.into_iter()
        .take(n)
        .map(|(shape, color, size, background)| {
            caption(&Attributes { shape, color, size, position: Position::Center, background }, 0)
        })
        .collect()
}

/// Runs the evaluation (`log` receives progress lines).
pub async fn evaluate(
    sd: &StableDiffusion,
    tok: &ClipTokenizer,
    cfg: &EvalConfig,
    sets: &[RefSet],
    mut log: impl FnMut(&str),
) -> Result<EvalReport> {
    let uncond = encode_text(sd, tok, "")?;
    let s = &cfg.sampling;
    let mut results = vec![];
    let mut gaussians = vec![];
    for (si, set) in sets.iter().enumerate() {
        let t0 = crate::backend::now_ms();
        let refs = set.references(cfg.references, cfg.seed + 100 + si as u64);
        let real = real_features(set, 256, cfg.seed + 200 + si as u64);
        let base = TrainConfig {
            k: cfg.k,
            m: cfg.m,
            steps: cfg.steps,
            lr: cfg.lr,
            resolution: SIDE,
            seed: cfg.seed + si as u64,
            ..TrainConfig::paper()
        };
        let seed0 = cfg.seed * 1000;
        let mut methods = vec![];
        log(&format!("{}: training DreamDistribution (K={}, {} steps)", set.name, cfg.k, cfg.steps));
        let dd = train_on(sd, tok, &refs, base.clone(), |_, _| {}).await?;
        let g0 = {
            let t = train_on(sd, tok, &refs, TrainConfig { steps: 0, ..base.clone() }, |_, _| {}).await?;
            t.gaussian(sd, tok, &Template::bare())?
        };
        let g_dd = dd.gaussian(sd, tok, &Template::bare())?;
        let mut sheet = vec![("references".to_string(), refs.clone())];
        let dd_imgs = sample_gaussian(sd, &g_dd, 1.0, cfg.samples, &uncond, s, seed0).await?;
        let m_dd = metrics(set, &dd_imgs, &real);
        sheet.push(("DreamDistribution".into(), dd_imgs.into_iter().take(8).collect()));
        log(&format!("{}: DreamDistribution precision {:.2}", set.name, m_dd.precision));
        methods.push(("DreamDistribution".to_string(), m_dd));
        log(&format!("{}: training Textual Inversion ({} steps)", set.name, cfg.steps));
        let ti =
            train_on(sd, tok, &refs, TrainConfig { k: 1, mode: Mode::TextualInversion, ..base.clone() }, |_, _| {})
                .await?;
        let g_ti = ti.gaussian(sd, tok, &Template::bare())?;
        let ti_imgs = sample_gaussian(sd, &g_ti, 1.0, cfg.samples, &uncond, s, seed0).await?;
        methods.push(("Textual Inversion".to_string(), metrics(set, &ti_imgs, &real)));
        sheet.push(("Textual Inversion".into(), ti_imgs.into_iter().take(8).collect()));
        // Best single caption: 8 candidates from the support, 16 samples each, by precision × coverage.
        let mut best = (String::new(), -1.0f32);
        for c in candidate_captions(set, 8, cfg.seed + si as u64) {
            let e = encode_text(sd, tok, &c)?;
            let imgs = sample_conds(sd, vec![e; 16], &uncond, s, seed0 + 500).await?;
            let m = metrics(set, &imgs, &real);
            let score = m.precision * m.coverage.max(1e-3);
            if score > best.1 {
                best = (c, score);
            }
        }
        let e = encode_text(sd, tok, &best.0)?;
        let cap_imgs = sample_conds(sd, vec![e; cfg.samples], &uncond, s, seed0).await?;
        methods.push((format!("best single caption ({})", best.0), metrics(set, &cap_imgs, &real)));
        sheet.push(("caption".into(), cap_imgs.into_iter().take(8).collect()));
        methods.push((
            "untrained distribution".to_string(),
            metrics(set, &sample_gaussian(sd, &g0, 1.0, cfg.samples, &uncond, s, seed0).await?, &real),
        ));
        // γ sweep.
        let mut sweep = vec![];
        for &gamma in &cfg.gammas {
            let imgs = sample_gaussian(sd, &g_dd, gamma, cfg.samples, &uncond, s, seed0).await?;
            let m = metrics(set, &imgs, &real);
            sheet.push((format!("γ = {gamma}"), imgs.into_iter().take(8).collect()));
            log(&format!("{}: γ {gamma}: {} distinct, entropy {:.2}", set.name, m.distinct, m.entropy));
            sweep.push((gamma, m));
        }
        // Editing.
        let tpl = Template::parse(&cfg.edit_template)?;
        let g_edit = fit_gaussian(sd, tok, &tpl, dd.prompts(), dd.cfg.sigma)?;
        let imgs = sample_gaussian(sd, &g_edit, 1.0, cfg.samples, &uncond, s, seed0).await?;
        let readings: Vec<Reading> = imgs.iter().map(|i| read(i)).collect();
        let bg_ok = readings.iter().filter(|r| r.background == cfg.edit_background).count() as f32 / imgs.len() as f32;
        let kept = readings
            .iter()
            .filter(|r| {
                r.shape.is_some_and(|x| set.shapes.contains(&x)) && r.color.is_some_and(|x| set.colors.contains(&x))
            })
            .count() as f32
            / imgs.len() as f32;
        sheet.push((format!("edit: {}", cfg.edit_template), imgs.iter().take(8).cloned().collect()));
        gaussians.push(g_dd);
        results.push(SetResult {
            set: set.clone(),
            methods,
            best_caption: best.0,
            gamma_sweep: sweep,
            edit: (bg_ok, kept),
            seconds: (crate::backend::now_ms() - t0) / 1000.0,
            sheet,
        });
    }
    // Mixing the first two sets.
    let mut mixing = vec![];
    let mut mixing_sheet = vec![];
    if gaussians.len() >= 2 {
        for &a in &cfg.alphas {
            let g = PromptGaussian::mix(&[(&gaussians[0], a), (&gaussians[1], 1.0 - a)], MixRule::Paper)?;
            let imgs = sample_gaussian(sd, &g, 1.0, cfg.samples, &uncond, s, cfg.seed * 1000).await?;
            let rs: Vec<Reading> = imgs.iter().map(|i| read(i)).collect();
            let in_a = rs.iter().filter(|r| sets[0].contains(r)).count() as f32 / rs.len() as f32;
            let in_b = rs.iter().filter(|r| sets[1].contains(r)).count() as f32 / rs.len() as f32;
            log(&format!("mixing α={a}: {in_a:.2} in {}, {in_b:.2} in {}", sets[0].name, sets[1].name));
            mixing_sheet.push((format!("α = {a}"), imgs.into_iter().take(8).collect()));
            mixing.push((a, in_a, in_b));
        }
    }
    Ok(EvalReport { config: cfg.clone(), sets: results, mixing, mixing_sheet })
}

/// The quality gate: per held-out caption one sample; the share whose read attributes match
/// the caption's (colour, shape, background, size).
#[derive(Clone, Debug, Serialize)]
pub struct QualityReport {
    /// Captions.
    pub n: usize,
    /// Colour right.
    pub color: f32,
    /// Shape right.
    pub shape: f32,
    /// Background right.
    pub background: f32,
    /// Size right.
    pub size: f32,
    /// All four right.
    pub all: f32,
    /// Sampling used.
    pub sampling: EvalSampling,
}

/// Runs the quality gate on `n` held-out captions (data-set seed 7, never used in training).
pub async fn quality(sd: &StableDiffusion, tok: &ClipTokenizer, n: usize, s: &EvalSampling) -> Result<QualityReport> {
    let uncond = encode_text(sd, tok, "")?;
    let mut rng = Rng::new(7);
    let mut attrs = vec![];
    let mut conds = vec![];
    for _ in 0..n {
        let a = Attributes::random(&mut rng);
        let p = super::scene::FULL_PHRASINGS[rng.below(super::scene::FULL_PHRASINGS.len() as u64) as usize];
        // Phrasing 2 and 6 leave size out: use the full phrasing 0 for size judgements.
        conds.push(encode_text(sd, tok, &caption(&a, p))?);
        attrs.push((a, p));
    }
    let imgs = sample_conds(sd, conds, &uncond, s, 7_000).await?;
    let mut right = [0usize; 4];
    let mut sized = 0usize;
    let mut all = 0usize;
    for ((a, p), img) in attrs.iter().zip(&imgs) {
        let r = read(img);
        let c = r.color == Some(a.color);
        let sh = r.shape == Some(a.shape);
        let b = r.background == a.background;
        let names_size = caption(a, *p).contains(a.size.name());
        let z = r.size == Some(a.size);
        right[0] += c as usize;
        right[1] += sh as usize;
        right[2] += b as usize;
        if names_size {
            sized += 1;
            right[3] += z as usize;
        }
        all += (c && sh && b && (!names_size || z)) as usize;
    }
    let f = |k: usize, d: usize| k as f32 / d.max(1) as f32;
    Ok(QualityReport {
        n,
        color: f(right[0], n),
        shape: f(right[1], n),
        background: f(right[2], n),
        size: f(right[3], sized),
        all: f(all, n),
        sampling: s.clone(),
    })
}
