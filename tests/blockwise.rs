//! The production gradient is the true gradient.
//!
//! Everything here runs on the CPU backend in **f64** (the device's default float type is set
//! before any tensor exists), so both sides are exact to ~1e-12 and a per-element relative
//! tolerance of 1e-4 judges the mathematics, not float summation order. (In f32 the two
//! orders of summation differ by ~1e-8 absolute, i.e. up to ~2e-4 relative on entries a
//! thousand times smaller than the largest one; see docs/METHOD.md.)
//!
//! 1. A training step's raw ∂L/∂V (block-wise walk through the UNet and the text encoder, UNet
//!    items in chunks) equals ∂L/∂V from ONE autodiff graph of the whole loss — all S samples,
//!    μ/σ, the orthogonality term — built independently here from the public pieces, for the
//!    paper recipe, the authors' recipe (several images, Min-SNR, unbiased σ, squared cosine) and
//!    Textual-Inversion mode. The one-graph gradient is itself checked against central finite
//!    differences.
//! 2. The block-wise UNet walk equals one graph on a 3-level UNet whose skips cross levels, with
//!    attention and feed-forward split into chunks (the memory-bounded path), and extra input
//!    slots receive their gradients through the same walk (how adapters would train).
//!
//! A test crate of its own (the other integration tests are one crate, `tests/suite/`): the f64
//! default holds for the whole process, so no f32 test may share it.
use std::path::Path;

use burn::tensor::Device;
use burn::tensor::Tensor;
use dreamdist::backend::{block_on, read, tensor};
use dreamdist::distribution::{PromptGaussian, ortho_loss_with};
use dreamdist::model::tape::{GraphBudget, Tape, Val};
use dreamdist::model::{MemPlan, ModelSpec, StableDiffusion, UNet, UNetConfig};
use dreamdist::tokenizer::{ClipTokenizer, MAX_LEN};
use dreamdist::train::{Chunking, Mode, StepDraws, TrainConfig, Trainer};
use dreamdist::weights::{RandomSource, Vb};

/// The CPU device with f64 as its float type (configured once, before any tensor).
fn cpu_device() -> Device {
    static DEVICE: std::sync::OnceLock<Device> = std::sync::OnceLock::new();
    DEVICE
        .get_or_init(|| {
            let mut d = dreamdist::backend::cpu_device();
            d.configure(burn::tensor::FloatDType::F64).expect("f64 on the CPU backend");
            d
        })
        .clone()
}

fn tiny() -> StableDiffusion {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny"));
    StableDiffusion::from_dir(ModelSpec::tiny(), dir, &cpu_device()).unwrap()
}

fn images(sd: &StableDiffusion, n: usize) -> Vec<Tensor<4>> {
    let mut rng = dreamdist::rng::Rng::new(11);
    (0..n).map(|_| tensor(rng.uniform_vec(3 * 16 * 16, -1.0, 1.0), [1, 3, 16, 16], &sd.device())).collect()
}

/// ∂L/∂V from one autodiff graph of the whole loss (independent of `Trainer::gradient`).
fn one_graph_gradient(sd: &StableDiffusion, t: &Trainer, draws: &StepDraws, v: Tensor<3>) -> (Tensor<3>, f32) {
    let cfg = &t.cfg;
    let hidden = sd.spec.clip.hidden_size;
    let device = sd.device();
    let v = v.autodiff().require_grad();
    let c = sd.text.forward_embeds(t.layout().embed(&sd.text, v.clone()).unwrap());
    let items = cfg.unet_items();
    let cond = match cfg.mode {
        Mode::DreamDistribution => {
            let g = PromptGaussian::fit_with(c.clone(), cfg.sigma);
            g.sample(tensor(draws.omega.clone(), [items, MAX_LEN, hidden], &device), 1.0)
        }
        Mode::TextualInversion => c.clone().expand([items, MAX_LEN, hidden]),
    };
    let per_image = if cfg.mode == Mode::DreamDistribution { cfg.samples } else { 1 };
    let mut xts = vec![];
    let mut targets = vec![];
    let mut ts = vec![];
    let mut ws = vec![];
    for i in 0..items {
        let b = i / per_image;
        let (_, step, _) = draws.images[b];
        let x0 = t.x0(sd, draws, b);
        let eps = tensor(draws.noise[b].1.clone(), x0.dims(), &device);
        xts.push(t.schedule().add_noise(x0.clone(), eps.clone(), &[step]));
        targets.push(t.schedule().target(sd.spec.unet.prediction, x0, eps, &[step]));
        ts.push(step as f32);
        ws.push(t.loss_weight(step));
    }
    let xt = Tensor::cat(xts, 0).autodiff();
    let target = Tensor::cat(targets, 0);
    let pred = sd.unet.forward(xt, &ts, &cond);
    let [n, ch, h, w] = pred.dims();
    let wt = tensor(ws, [n, 1, 1, 1], &device);
    let denoise = ((pred - target).powi_scalar(2) * wt).sum() / ((ch * h * w * items) as f32);
    let ortho = ortho_loss_with(c, t.layout().eos, cfg.ortho, cfg.ortho_form);
    let loss = denoise + ortho * cfg.lambda;
    let value = block_on(read(loss.clone().without_autodiff())).unwrap()[0];
    let grads = loss.backward();
    (v.grad(&grads).unwrap(), value)
}

fn compare(label: &str, prod: &[f32], reference: &[f32]) {
    let scale = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(scale > 0.0, "{label}: zero gradient");
    let mut worst = 0f32;
    let mut at = 0;
    for (i, (a, b)) in prod.iter().zip(reference).enumerate() {
        // Relative per element (a floor at 1e-9 of the largest entry only guards exact zeros).
        let rel = (a - b).abs() / (b.abs().max(1e-9 * scale));
        if rel > worst {
            worst = rel;
            at = i;
        }
    }
    let mut sorted: Vec<f32> = reference.iter().map(|x| x.abs()).collect();
    sorted.sort_by(f32::total_cmp);
    eprintln!(
        "{label}: max per-element relative error {worst:.2e} at {at} ({} vs {}), gradient scale {scale:.3e}, median |g| {:.3e}",
        prod[at],
        reference[at],
        sorted[sorted.len() / 2]
    );
    assert!(worst <= 1e-4, "{label}: {worst:.3e} > 1e-4");
    // The same check fails on a gradient off by a constant factor.
    let doubled: Vec<f32> = prod.iter().map(|x| 2.0 * x).collect();
    let bad = doubled.iter().zip(reference).any(|(a, b)| (a - b).abs() / b.abs().max(1e-9 * scale) > 1e-4);
    assert!(bad, "{label}: the tolerance would not catch a factor of 2");
}

fn check_recipe(label: &str, cfg: TrainConfig, n_images: usize, chunks: &[usize]) {
    let sd = tiny();
    let tok = ClipTokenizer::sd2().unwrap();
    let imgs = images(&sd, n_images);
    let mut t = block_on(Trainer::new(cfg, &sd, &tok, &imgs)).unwrap();
    // A few steps first so V is not at its initial point.
    for _ in 0..2 {
        block_on(t.step(&sd)).unwrap();
    }
    let draws = t.next_draws(sd.spec.clip.hidden_size);
    let (g_ref, loss_ref) = one_graph_gradient(&sd, &t, &draws, t.prompts());
    let g_ref = block_on(read(g_ref)).unwrap();
    // Every piece recomputed (the GPU path), every graph kept (the CPU default here), and a
    // budget that keeps some graphs and recomputes the rest.
    for &ub in chunks {
        for graph_bytes in [Some(0), None, Some(256 << 10)] {
            t.set_chunking(Chunking { unet: ub, graph_bytes });
            let (g, [loss, ..]) = block_on(t.gradient(&sd, &draws, &mut ())).unwrap();
            assert!((loss - loss_ref).abs() <= 1e-5 * loss_ref.abs(), "{label}: loss {loss} vs {loss_ref}");
            compare(
                &format!("{label}, UNet items per pass {ub}, graph budget {graph_bytes:?}"),
                &block_on(read(g)).unwrap(),
                &g_ref,
            );
        }
    }
    // The one-graph gradient against central finite differences on a few coordinates (f64-free:
    // a step large enough for f32, and a tolerance that still tells a factor of 2 apart).
    let v = block_on(read(t.prompts())).unwrap();
    let dims = t.prompts().dims();
    let device = sd.device();
    for &idx in &[0usize, 7, v.len() / 2 + 3] {
        let h = 1e-2f32;
        let at = |delta: f32| {
            let mut w = v.clone();
            w[idx] += delta;
            one_graph_gradient(&sd, &t, &draws, tensor(w, dims, &device)).1
        };
        let fd = (at(h) - at(-h)) / (2.0 * h);
        let an = g_ref[idx];
        eprintln!("{label}: ∂L/∂V[{idx}] autodiff {an:.6e}, finite difference {fd:.6e}");
        let scale = g_ref.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!((fd - an).abs() <= 0.05 * an.abs() + 0.02 * scale, "{label}: index {idx}: {an} vs {fd}");
    }
}

fn small(cfg: TrainConfig) -> TrainConfig {
    TrainConfig { k: 4, m: 2, samples: 3, resolution: 16, seed: 3, lambda: 0.5, ..cfg }
}

#[test]
fn production_gradient_equals_one_graph_paper_recipe() {
    check_recipe("paper", small(TrainConfig::paper()), 3, &[1, 2, usize::MAX]);
}

#[test]
fn production_gradient_equals_one_graph_authors_recipe() {
    let cfg = TrainConfig { images_per_step: 2, ..small(TrainConfig::authors()) };
    check_recipe("authors", cfg, 3, &[1, 4]);
}

#[test]
fn production_gradient_equals_one_graph_textual_inversion() {
    let cfg = TrainConfig { k: 1, mode: Mode::TextualInversion, images_per_step: 2, ..small(TrainConfig::paper()) };
    check_recipe("textual inversion", cfg, 2, &[1, 2]);
}

fn rel(a: &[f32], b: &[f32]) -> f32 {
    let s = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-30);
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max) / s
}

/// Three levels (skips cross two resolutions), attention on the outer and inner levels, and a
/// memory plan small enough that attention runs in query blocks and the feed-forward in token
/// chunks: the block-wise walk equals one graph.
#[test]
fn blockwise_unet_equals_one_graph_across_levels_and_chunks() {
    let cfg = UNetConfig::tiny_three_levels();
    let device = cpu_device();
    let unet = UNet::new(&Vb::new(RandomSource::new(9), &device), &cfg);
    let mut rng = dreamdist::rng::Rng::new(2);
    let x = tensor(rng.normal_vec(2 * 4 * 12 * 12), [2, 4, 12, 12], &device);
    let ctx = tensor(rng.normal_vec(2 * MAX_LEN * 32), [2, MAX_LEN, 32], &device);
    let r = tensor(rng.normal_vec(2 * 4 * 12 * 12), [2, 4, 12, 12], &device);
    let ts = [123.0, 777.0];
    // One graph.
    let leaf = ctx.clone().autodiff().require_grad();
    let out = unet.forward_planned(x.clone().autodiff(), &ts, &leaf, &MemPlan::cpu(), &mut ());
    let g_ref = block_on(read(leaf.grad(&(out * r.clone()).sum().backward()).unwrap())).unwrap();
    for plan in [MemPlan::cpu(), MemPlan::blocks(12 << 10)] {
        let (tape, _) = unet.tape(2, 12, 12, &plan);
        let chunked = tape.pieces().iter().filter(|p| p.name.contains(".core")).count();
        let (_, g) = unet.context_vjp(x.clone(), &ts, ctx.clone(), |_| r.clone(), &plan, &mut ()).unwrap();
        let e = rel(&block_on(read(g)).unwrap(), &g_ref);
        eprintln!(
            "plan {} KiB ({chunked} attention pieces): block-wise vs one graph {e:.2e}",
            plan.max_block_bytes >> 10
        );
        assert!(e < 1e-5, "{e}");
    }
    // Pieces whose autodiff graph the forward kept (all, some, none) are not recomputed on the
    // way back; the gradient is the same.
    let (tape, us) = unet.tape(2, 12, 12, &MemPlan::cpu());
    let mut booked = vec![];
    for limit in [u64::MAX, 400 << 10, 0] {
        let mut budget = GraphBudget::new(limit);
        let inputs = vec![
            (us.x, x.clone().into()),
            (us.t_proj, unet.time_proj(&ts, &device).into()),
            (us.context, ctx.clone().into()),
        ];
        let vals = tape.forward_retaining(inputs, &[us.context], &mut budget, &mut ());
        let g = tape.backward(vals, vec![(us.out, Val::T4(r.clone()))], &[us.context], &mut ()).unwrap();
        let e = rel(&block_on(read(g[0].clone().unwrap().t3())).unwrap(), &g_ref);
        eprintln!("graph budget {limit}: {} bytes of graphs kept, vs one graph {e:.2e}", budget.used);
        assert!(e < 1e-5, "{e}");
        booked.push(budget.used);
    }
    assert!(booked[0] > booked[1] && booked[1] > 0 && booked[2] == 0, "budgets did not split the pieces: {booked:?}");
    let (small_tape, _) = unet.tape(2, 12, 12, &MemPlan::blocks(12 << 10));
    assert!(small_tape.pieces().iter().any(|p| p.name.contains(".core1")), "attention was not split");
    assert!(small_tape.pieces().iter().any(|p| p.name.contains(".ff1")), "the feed-forward was not split");
}

/// A tape with an extra input (a stand-in for an adapter's weights) used inside a piece: the
/// walk returns its gradient too, equal to one graph.
#[test]
fn extra_input_slots_receive_gradients() {
    let device = cpu_device();
    let mut rng = dreamdist::rng::Rng::new(5);
    let x = tensor(rng.normal_vec(3 * 4), [3, 4], &device);
    let a = tensor(rng.normal_vec(4 * 4), [4, 4], &device);
    let mut tape = Tape::new("toy");
    let (xs, as_) = (tape.input(), tape.input());
    let h = tape.piece1("adapted", &[xs, as_], |v| (v[0].t2().matmul(v[1].t2())).tanh().into());
    let o = tape.piece1("square", &[h, as_], |v| (v[0].t2().matmul(v[1].t2())).powi_scalar(2).into());
    let vals = tape.forward(vec![(xs, x.clone().into()), (as_, a.clone().into())], true, &[], &mut ());
    let g = tape.backward(vals, vec![(o, Val::T2(x.ones_like()))], &[xs, as_], &mut ()).unwrap();
    let (gx, ga) = (g[0].clone().unwrap().t2(), g[1].clone().unwrap().t2());
    let (xl, al) = (x.autodiff().require_grad(), a.autodiff().require_grad());
    let out = xl.clone().matmul(al.clone()).tanh().matmul(al.clone()).powi_scalar(2).sum();
    let grads = out.backward();
    let e1 = rel(&block_on(read(gx)).unwrap(), &block_on(read(xl.grad(&grads).unwrap())).unwrap());
    let e2 = rel(&block_on(read(ga)).unwrap(), &block_on(read(al.grad(&grads).unwrap())).unwrap());
    assert!(e1 < 1e-6 && e2 < 1e-6, "{e1} {e2}");
}
