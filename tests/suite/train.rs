//! Algorithm 1 on the tiny fixture model (CPU backend): only V learns, training lowers a
//! held-out denoising loss, runs are reproducible, resume equals an uninterrupted run, and the
//! image loader rejects bad input clearly.
use std::path::Path;

use burn::tensor::Tensor;
use dreamdist::backend::{block_on, cpu_device, read, tensor};
use dreamdist::distribution::file::{DistFile, Precision};
use dreamdist::distribution::{PromptGaussian, SigmaEstimate, Template, fit_gaussian};
use dreamdist::model::{ModelSpec, StableDiffusion};
use dreamdist::pipeline::{SampleConfig, encode_text, generate, sample_condition};
use dreamdist::rng::Rng;
use dreamdist::schedule::{NoiseSchedule, SamplerKind};
use dreamdist::tokenizer::ClipTokenizer;
use dreamdist::train::{Mode, TrainConfig, Trainer, denoise_loss, dist_file, model_id, restore_from_file};

fn tiny() -> StableDiffusion {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny"));
    StableDiffusion::from_dir(ModelSpec::tiny(), dir, &cpu_device()).unwrap()
}

/// A small reference set sharing a look: warm diagonal stripes at different phases and
/// frequencies (`cool`: blue checkerboards instead), encoded as PNG so the real loader runs.
fn reference_set(n: usize, cool: bool) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let img = image::RgbImage::from_fn(64, 64, |x, y| {
                if cool {
                    let c = ((x / (4 + i as u32) + y / (4 + i as u32)) % 2) as u8;
                    return image::Rgb([20, 60 + 100 * c, 120 + 120 * c]);
                }
                let s = (((x + y) as f32 * (0.25 + 0.05 * i as f32) + i as f32).sin() * 0.5 + 0.5) * 255.0;
                image::Rgb([s as u8, (s * 0.6) as u8, 40])
            });
            let mut out = vec![];
            img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
            out
        })
        .collect()
}

fn reference_pngs(n: usize) -> Vec<Vec<u8>> {
    reference_set(n, false)
}

fn images(sd: &StableDiffusion, n: usize) -> Vec<Tensor<4>> {
    load_all(sd, reference_pngs(n))
}

fn load_all(sd: &StableDiffusion, pngs: Vec<Vec<u8>>) -> Vec<Tensor<4>> {
    let res = sd.spec.native_resolution();
    let device = sd.device();
    pngs.iter()
        .enumerate()
        .map(|(i, b)| dreamdist::image::load(b, res, &format!("ref{i}.png"), &device).unwrap())
        .collect()
}

fn cfg(steps: u64) -> TrainConfig {
    TrainConfig { k: 4, m: 2, samples: 2, steps, lr: 5e-3, resolution: 16, seed: 7, ..TrainConfig::default() }
}

/// Mean denoising loss of the fitted Gaussian on `imgs` over fixed (t, ε, ω) draws from a seed
/// training never uses.
fn held_out_loss(sd: &StableDiffusion, g: &PromptGaussian, imgs: &[Tensor<4>]) -> f32 {
    let schedule = NoiseSchedule::sd21();
    let mut rng = Rng::new(999);
    let mut total = 0.0;
    let mut n = 0;
    for img in imgs {
        let post = sd.vae.encode(img.clone());
        let x0 = post.mean.detach() * sd.spec.vae.scaling_factor;
        let shape = x0.dims();
        for t in [50usize, 200, 400, 600, 800, 950] {
            let device = x0.device();
            let eps = tensor(rng.normal_vec(shape.iter().product()), shape, &device);
            let omega = tensor(rng.normal_vec(4 * 77 * 32), [4, 77, 32], &device);
            let l = denoise_loss(sd, &schedule, g.sample(omega, 1.0), x0.clone(), eps, t);
            total += block_on(read(l)).unwrap()[0];
            n += 1;
        }
    }
    total / n as f32
}

#[test]
fn training_learns_prompts_and_leaves_every_weight_bit_identical() {
    let sd = tiny();
    let tok = ClipTokenizer::sd2().unwrap();
    let before = block_on(sd.weights_fingerprint()).unwrap();
    // Five images of one look: four to train on, the fifth held out for evaluation.
    let all = images(&sd, 5);
    let (imgs, held_out) = all.split_at(4);
    let train = |imgs: &[Tensor<4>]| {
        let mut t = block_on(Trainer::new(TrainConfig { lr: 2e-2, ..cfg(200) }, &sd, &tok, imgs)).unwrap();
        while t.step < t.cfg.steps {
            let s = block_on(t.step(&sd)).unwrap();
            assert!(s.loss.is_finite() && s.ortho >= 0.0 && s.ortho <= 0.5 + 1e-6);
        }
        t
    };
    let untrained_t = block_on(Trainer::new(cfg(1), &sd, &tok, imgs)).unwrap();
    let v0 = block_on(read(untrained_t.prompts())).unwrap();
    let untrained = held_out_loss(&sd, &untrained_t.gaussian(&sd, &tok, &Template::bare()).unwrap(), held_out);
    let trainer = train(imgs);
    let trained = held_out_loss(&sd, &trainer.gaussian(&sd, &tok, &Template::bare()).unwrap(), held_out);
    // The same training on a different look (blue checkerboards), evaluated on the held-out stripe.
    let other = train(&load_all(&sd, reference_set(4, true)));
    let other_loss = held_out_loss(&sd, &other.gaussian(&sd, &tok, &Template::bare()).unwrap(), held_out);
    eprintln!(
        "denoising loss on the held-out stripe image: untrained {untrained:.5}, trained on the other four stripes {trained:.5} ({:.1}% lower), trained on checkerboards {other_loss:.5}",
        100.0 * (1.0 - trained / untrained)
    );
    // The tiny random UNet lets the conditioning explain only a few percent of the loss (4.4%
    // measured here), so the bar is 2%. The tiny model cannot tell looks apart (a distribution
    // learned on checkerboards lowers the held-out stripe's loss as much: printed above, not
    // asserted); that the learned distribution is specific to its references is tested on the
    // demo model, which has learned something (tests/suite/demo.rs).
    assert!(trained < 0.98 * untrained, "training should lower the held-out loss by >2%: {untrained} → {trained}");
    let v1 = block_on(read(trainer.prompts())).unwrap();
    assert_ne!(v0, v1, "V must change");
    assert_eq!(before, block_on(sd.weights_fingerprint()).unwrap(), "network weights changed");
}

#[test]
fn same_seed_same_distribution_and_images_and_resume_is_exact() {
    let sd = tiny();
    let tok = ClipTokenizer::sd2().unwrap();
    let imgs = images(&sd, 3);
    let run = |steps: u64| {
        let mut t = block_on(Trainer::new(cfg(6), &sd, &tok, &imgs)).unwrap();
        for _ in 0..steps {
            block_on(t.step(&sd)).unwrap();
        }
        t
    };
    let full = run(6);
    let again = run(6);
    let v_full = block_on(read(full.prompts())).unwrap();
    assert_eq!(v_full, block_on(read(again.prompts())).unwrap(), "same seed, same V");
    assert_eq!(full.losses, again.losses);

    // Interrupt after 3 steps: checkpoint through the file format, restore into a fresh trainer.
    let half = run(3);
    let ckpt = block_on(dist_file(&half, &sd, "ckpt", Precision::F32, true)).unwrap().to_bytes().unwrap();
    let file = DistFile::from_bytes(&ckpt).unwrap();
    let mut resumed = block_on(Trainer::new(cfg(6), &sd, &tok, &imgs)).unwrap();
    restore_from_file(&mut resumed, &file).unwrap();
    while resumed.step < 6 {
        block_on(resumed.step(&sd)).unwrap();
    }
    assert_eq!(v_full, block_on(read(resumed.prompts())).unwrap(), "resume must equal the uninterrupted run");
    assert_eq!(full.losses, resumed.losses);

    // A checkpoint from other settings is refused.
    let mut other = block_on(Trainer::new(TrainConfig { lr: 1e-3, ..cfg(6) }, &sd, &tok, &imgs)).unwrap();
    assert!(restore_from_file(&mut other, &file).unwrap_err().to_string().contains("different settings"));

    // Same seed → identical images (γ-sampled condition, guided DDIM).
    let g = full.gaussian(&sd, &tok, &Template::parse("a painting of {}").unwrap()).unwrap();
    let uncond = encode_text(&sd, &tok, "").unwrap();
    let sc = SampleConfig { steps: 4, size: 16, sampler: SamplerKind::Ddim, ..SampleConfig::default() };
    let make = || {
        let mut rng = Rng::new(5);
        let cond = sample_condition(&g, 1.0, &mut rng);
        block_on(generate(&sd, cond, uncond.clone(), &sc, &mut rng, |_, _| {})).unwrap()
    };
    let (a, b) = (make(), make());
    assert_eq!(a, b);
    assert_eq!((a.width, a.height, a.pixels.len()), (16, 16, 16 * 16 * 3));
}

#[test]
fn shared_file_round_trip_and_model_check() {
    let sd = tiny();
    let tok = ClipTokenizer::sd2().unwrap();
    let imgs = images(&sd, 2);
    let mut t = block_on(Trainer::new(cfg(2), &sd, &tok, &imgs)).unwrap();
    block_on(t.step(&sd)).unwrap();
    let f = block_on(dist_file(&t, &sd, "stripes", Precision::F16, false)).unwrap();
    let back = DistFile::from_bytes(&f.to_bytes().unwrap()).unwrap();
    assert_eq!((back.k, back.m, back.hidden, back.optimizer.is_none()), (4, 2, 32, true));
    back.check_model(&model_id(&sd)).unwrap();
    // Loaded V (f16-rounded) gives the same Gaussian as the trainer's, within f16 precision.
    let v = tensor(back.prompts.clone(), [4, 2, 32], &sd.device());
    let g1 = fit_gaussian(&sd, &tok, &Template::bare(), v, SigmaEstimate::Population).unwrap();
    let g0 = t.gaussian(&sd, &tok, &Template::bare()).unwrap();
    let (a, b) = (block_on(read(g1.mu)).unwrap(), block_on(read(g0.mu)).unwrap());
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-2));
    // A file for another model is refused with a clear message.
    let mut other = model_id(&sd);
    other.id = "sd21".into();
    other.hidden_size = 1024;
    let err = back.check_model(&other).unwrap_err().to_string();
    assert!(err.contains("tiny") && err.contains("sd21"), "{err}");
}

#[test]
fn textual_inversion_mode_trains_one_prompt() {
    let sd = tiny();
    let tok = ClipTokenizer::sd2().unwrap();
    let imgs = images(&sd, 4);
    let c = TrainConfig { k: 1, mode: Mode::TextualInversion, lr: 2e-2, ..cfg(150) };
    let mut t = block_on(Trainer::new(c, &sd, &tok, &imgs)).unwrap();
    let v0 = block_on(read(t.prompts())).unwrap();
    let g0 = t.gaussian(&sd, &tok, &Template::bare()).unwrap();
    let before = held_out_loss(&sd, &g0, &imgs);
    while t.step < t.cfg.steps {
        let s = block_on(t.step(&sd)).unwrap();
        assert_eq!(s.ortho, 0.0);
    }
    let v1 = block_on(read(t.prompts())).unwrap();
    let moved = v0.iter().zip(&v1).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(moved > 1e-2, "V must move: max |ΔV| = {moved}");
    let g = t.gaussian(&sd, &tok, &Template::bare()).unwrap();
    let after = held_out_loss(&sd, &g, &imgs);
    eprintln!("textual inversion: denoising loss on the training images {before:.5} → {after:.5}");
    assert!(after < before, "the loss must fall: {before} → {after}");
    assert!(block_on(read(g.sigma)).unwrap().iter().all(|&s| s == 0.0));
    assert!(
        block_on(Trainer::new(TrainConfig { k: 4, mode: Mode::TextualInversion, ..cfg(1) }, &sd, &tok, &imgs)).is_err()
    );
}

#[test]
fn image_loader_rejects_bad_input_clearly() {
    let d = cpu_device();
    let err = dreamdist::image::load(b"this is not an image", 16, "notes.txt", &d).unwrap_err().to_string();
    assert!(err.contains("notes.txt") && err.contains("not an image"), "{err}");
    let png = |w: u32, h: u32| {
        let mut out = vec![];
        image::GrayImage::new(w, h).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
        out
    };
    let err = dreamdist::image::load(&png(32, 200), 16, "tiny.png", &d).unwrap_err().to_string();
    assert!(err.contains("too small"), "{err}");
    let err = dreamdist::image::load(&png(16385, 64), 16, "wide.png", &d).unwrap_err().to_string();
    assert!(err.contains("too large"), "{err}");
    let truncated = &png(128, 128)[..60];
    let err = dreamdist::image::load(truncated, 16, "cut.png", &d).unwrap_err().to_string();
    assert!(err.contains("cut.png"), "{err}");
    // A valid non-square image is resized and centre-cropped to R×R in [-1, 1].
    let ok = dreamdist::image::preprocess(&png(200, 100), 32, "ok.png").unwrap();
    assert_eq!(ok.len(), 3 * 32 * 32);
    assert!(ok.iter().all(|&v| v == -1.0));
}

/// The memory-bounding split of a step (UNet items one or two at a time) gives the same update
/// as one unchunked pass.
#[test]
fn chunked_step_equals_unchunked_step() {
    use dreamdist::train::Chunking;
    let sd = tiny();
    let tok = ClipTokenizer::sd2().unwrap();
    let imgs = images(&sd, 2);
    let c = TrainConfig { k: 5, samples: 3, images_per_step: 2, ..cfg(2) };
    let run = |chunking: Chunking| {
        let mut t = block_on(Trainer::new(c.clone(), &sd, &tok, &imgs)).unwrap();
        t.set_chunking(chunking);
        let stats: Vec<_> = (0..2).map(|_| block_on(t.step(&sd)).unwrap()).collect();
        (block_on(read(t.prompts())).unwrap(), stats)
    };
    let (v_ref, s_ref) = run(Chunking::unchunked());
    let v0 = block_on(read(block_on(Trainer::new(c.clone(), &sd, &tok, &imgs)).unwrap().prompts())).unwrap();
    for chunking in [Chunking::default(), Chunking::unet(2)] {
        let (v, s) = run(chunking);
        let moved = v_ref.iter().zip(&v0).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let diff = v_ref.iter().zip(&v).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff <= 1e-3 * moved, "{chunking:?}: max |ΔV| {diff} vs update size {moved}");
        for (a, b) in s_ref.iter().zip(&s) {
            assert!((a.loss - b.loss).abs() <= 1e-5 * a.loss.abs(), "{chunking:?}: {a:?} vs {b:?}");
        }
    }
}

/// The authors' recipe (several images per step from a shuffled epoch, random crops, AdamW,
/// Min-SNR, gradient clipping) is reproducible and resumes exactly, epoch order included.
#[test]
fn authors_recipe_resumes_exactly() {
    let sd = tiny();
    let tok = ClipTokenizer::sd2().unwrap();
    // Non-square images so random crops have room (16×24 → 8×12 latents, squares of 8).
    let imgs: Vec<Tensor<4>> = (0..3)
        .map(|i| {
            let mut rng = Rng::new(40 + i);
            tensor(rng.uniform_vec(3 * 16 * 24, -1.0, 1.0), [1, 3, 16, 24], &sd.device())
        })
        .collect();
    let c = TrainConfig {
        k: 4,
        m: 2,
        samples: 2,
        resolution: 16,
        seed: 5,
        images_per_step: 2,
        steps: 6,
        ..TrainConfig::authors()
    };
    let run = |steps: u64| {
        let mut t = block_on(Trainer::new(c.clone(), &sd, &tok, &imgs)).unwrap();
        for _ in 0..steps {
            block_on(t.step(&sd)).unwrap();
        }
        t
    };
    let full = run(6);
    let half = run(3);
    let file = DistFile::from_bytes(
        &block_on(dist_file(&half, &sd, "ckpt", Precision::F32, true)).unwrap().to_bytes().unwrap(),
    )
    .unwrap();
    assert_eq!(file.train.recipe.as_deref(), Some("authors"));
    let mut resumed = block_on(Trainer::new(c.clone(), &sd, &tok, &imgs)).unwrap();
    restore_from_file(&mut resumed, &file).unwrap();
    while resumed.step < 6 {
        block_on(resumed.step(&sd)).unwrap();
    }
    assert_eq!(block_on(read(full.prompts())).unwrap(), block_on(read(resumed.prompts())).unwrap());
    assert_eq!(full.losses, resumed.losses);
}

#[test]
fn recipes_carry_their_settings() {
    use dreamdist::distribution::{OrthoForm, SigmaEstimate};
    use dreamdist::train::{Crop, Optimizer, Recipe};
    let p = TrainConfig::paper();
    assert_eq!(
        (p.recipe, p.lambda, p.steps, p.images_per_step, p.optimizer, p.min_snr_gamma, p.crop, p.sigma, p.ortho_form),
        (
            Recipe::Paper,
            5e-3,
            1500,
            1,
            Optimizer::Adam,
            None,
            Crop::Center,
            SigmaEstimate::Population,
            OrthoForm::AbsPairs
        )
    );
    let a = TrainConfig::authors();
    assert_eq!(
        (a.recipe, a.lambda, a.steps, a.images_per_step, a.optimizer, a.min_snr_gamma, a.crop, a.sigma, a.ortho_form),
        (
            Recipe::Authors,
            1e-3,
            2000,
            4,
            Optimizer::AdamW { weight_decay: 1e-2 },
            Some(5.0),
            Crop::Random,
            SigmaEstimate::Unbiased,
            OrthoForm::SquaredOrdered
        )
    );
    assert_eq!(a.grad_clip, Some(1.0));
    // A configuration saved before recipes existed reads as the paper's.
    let old = serde_json::json!({"k": 32, "m": 4, "samples": 4, "lambda": 0.005, "lr": 0.001, "steps": 1500,
        "resolution": 512, "seed": 0, "template": "{}", "ortho": "eos", "mode": "dream-distribution", "init_word": null});
    let cfg: TrainConfig = serde_json::from_value(old).unwrap();
    assert_eq!(cfg, TrainConfig::paper());
}
