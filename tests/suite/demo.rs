//! The demo model (assets/demo, trained by scripts/demo/train_demo.py) on the CPU backend: it
//! loads through `ModelSpec::demo()`, its samples of fixed captions have the captions'
//! attributes (judged by the attribute reader), and a short DreamDistribution run on a reference
//! set raises the share of samples inside the set's support over the untrained distribution by
//! the margin stated in `MARGIN` (derived from `dreamdist eval`, see docs/DEMO.md).
use dreamdist::backend::{block_on, cpu_device};
use dreamdist::demo::eval::{
    EvalConfig, EvalSampling, metrics, real_features, reference_sets, sample_conds, sample_gaussian, train_on,
};
use dreamdist::demo::scene::{Attributes, Background, Color, Position, Shape, Size, caption};
use dreamdist::demo::{SIDE, read};
use dreamdist::distribution::Template;
use dreamdist::model::{ModelSpec, StableDiffusion};
use dreamdist::pipeline::encode_text;
use dreamdist::tokenizer::ClipTokenizer;
use dreamdist::train::TrainConfig;
use dreamdist::weights::loader::Retry;
use dreamdist::weights::native::load_uncached;

/// Precision gain (share of samples inside the set's support, trained minus untrained) the run
/// must reach, from `dreamdist eval` by a rule fixed before this test ran on these weights:
/// half the eval's gain on this set, rounded down to 0.05 (the first weights' 0.40 was half of
/// their 0.81). On warm-round-dark the eval measured 0.56 − 0.00 = 0.56 (docs/DEMO.md) with the
/// same settings and other seeds. A 64-sample precision has a standard error of ≈ 0.06 there
/// (√(0.56·0.44/64)), but training seeds move it more (this test's seeds gave 0.78), so the
/// margin is half the gain rather than the gain minus a few standard errors.
const MARGIN: f32 = 0.25;

fn demo() -> StableDiffusion {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo");
    load_uncached(dir, &cpu_device(), Retry::default()).expect("assets/demo")
}

#[test]
fn demo_model_loads_through_its_spec() {
    let sd = demo();
    assert_eq!(sd.spec, ModelSpec::demo());
    assert_eq!(sd.spec.native_resolution(), SIDE);
    let bytes: u64 = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo"))
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum();
    eprintln!("assets/demo: {bytes} bytes");
    assert!(bytes <= 16 << 20, "the demo model must stay within 16 MiB, is {bytes} bytes");
}

#[test]
fn fixed_captions_give_their_attributes() {
    let sd = demo();
    let tok = ClipTokenizer::sd2().unwrap();
    let uncond = encode_text(&sd, &tok, "").unwrap();
    let cases = [
        (Shape::Circle, Color::Red, Size::Large, Background::White),
        (Shape::Square, Color::Blue, Size::Medium, Background::Gray),
        (Shape::Triangle, Color::Yellow, Size::Large, Background::Black),
        (Shape::Star, Color::Pink, Size::Large, Background::Blue),
        (Shape::Circle, Color::Green, Size::Medium, Background::Black),
        (Shape::Square, Color::Orange, Size::Large, Background::Green),
        (Shape::Triangle, Color::Cyan, Size::Medium, Background::White),
        (Shape::Square, Color::Purple, Size::Large, Background::White),
    ];
    let attrs: Vec<Attributes> = cases
        .iter()
        .map(|&(shape, color, size, background)| Attributes {
            shape,
            color,
            size,
            position: Position::Center,
            background,
        })
        .collect();
    let conds = attrs.iter().map(|a| encode_text(&sd, &tok, &caption(a, 0)).unwrap()).collect();
    let imgs = block_on(sample_conds(&sd, conds, &uncond, &EvalSampling::default(), 42)).unwrap();
    let mut right = [0usize; 3];
    for (a, img) in attrs.iter().zip(&imgs) {
        let r = read(img);
        eprintln!("{:<55} → {:?} {:?} {:?} {:?}", caption(a, 0), r.shape, r.color, r.size, r.background);
        right[0] += (r.color == Some(a.color)) as usize;
        right[1] += (r.shape == Some(a.shape)) as usize;
        right[2] += (r.background == a.background) as usize;
    }
    // The quality gate on 200 held-out captions measures the rates (docs/DEMO.md); here eight
    // fixed ones must mostly come out right.
    assert!(right[0] >= 7 && right[2] >= 7 && right[1] >= 6, "colour/shape/background right: {right:?} of 8");
}

#[test]
fn a_short_run_learns_the_reference_set() {
    let sd = demo();
    let tok = ClipTokenizer::sd2().unwrap();
    let uncond = encode_text(&sd, &tok, "").unwrap();
    let set = &reference_sets()[0];
    let refs = set.references(8, 100);
    let real = real_features(set, 128, 200);
    // The eval's settings (EvalConfig::default(): K=32, M=4, 400 steps, lr 5e-3, 64 samples),
    // other seeds.
    let e = EvalConfig::default();
    let cfg =
        TrainConfig { k: e.k, m: e.m, steps: e.steps, lr: e.lr, resolution: SIDE, seed: 1, ..TrainConfig::paper() };
    let s = e.sampling.clone();
    let n = e.samples;
    let untrained = block_on(train_on(&sd, &tok, &refs, TrainConfig { steps: 0, ..cfg.clone() }, |_, _| {})).unwrap();
    let g0 = untrained.gaussian(&sd, &tok, &Template::bare()).unwrap();
    let m0 = metrics(set, &block_on(sample_gaussian(&sd, &g0, 1.0, n, &uncond, &s, 0)).unwrap(), &real);
    let trained = block_on(train_on(&sd, &tok, &refs, cfg, |_, _| {})).unwrap();
    let g1 = trained.gaussian(&sd, &tok, &Template::bare()).unwrap();
    let m1 = metrics(set, &block_on(sample_gaussian(&sd, &g1, 1.0, n, &uncond, &s, 0)).unwrap(), &real);
    eprintln!("{}: precision untrained {:.3} → trained {:.3} (margin {MARGIN})", set.name, m0.precision, m1.precision);
    assert!(m1.precision >= m0.precision + MARGIN, "{} → {}", m0.precision, m1.precision);
}
