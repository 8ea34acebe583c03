//! The method's pieces against hand-computed values: μ/σ, reparameterised sampling, γ = 0,
//! mixing (eq. 7, both σ rules, one-hot weights, invalid weights), the orthogonality loss,
//! templates and prompt layouts.
use dreamdist::backend::{block_on, cpu_device, read, tensor};
use dreamdist::distribution::{MixRule, OrthoFeatures, PromptGaussian, PromptLayout, Template, ortho_loss};
use dreamdist::tokenizer::{BOS, ClipTokenizer, EOS, PAD};

fn close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "[{i}] got {g}, want {w}");
    }
}

/// K = 3 prompts, L = 2 positions, H = 2 channels.
fn c3() -> Vec<f32> {
    vec![
        1.0, 2.0, 0.0, 5.0, // k = 0: (pos 0), (pos 1)
        3.0, 2.0, 0.0, -1.0, // k = 1
        5.0, 2.0, 0.0, 2.0, // k = 2
    ]
}

#[test]
fn fit_gives_mean_and_population_std() {
    let d = cpu_device();
    let g = PromptGaussian::fit(tensor(c3(), [3, 2, 2], &d));
    close(&block_on(read(g.mu.clone())).unwrap(), &[3.0, 2.0, 0.0, 2.0], 1e-6);
    // pos0 ch0: values 1,3,5 → var = (4+0+4)/3; pos1 ch1: 5,-1,2 → var = (9+9+0)/3 = 6.
    // Positions every prompt shares (σ = 0) are floored at √1e-20 = 1e-10.
    close(&block_on(read(g.sigma.clone())).unwrap(), &[(8.0f32 / 3.0).sqrt(), 1e-10, 1e-10, 6.0f32.sqrt()], 1e-6);
}

#[test]
fn reparameterised_samples_and_gamma() {
    let d = cpu_device();
    let g = PromptGaussian::fit(tensor(c3(), [3, 2, 2], &d));
    let omega = tensor(vec![1.0, -1.0, 2.0, 0.5, -2.0, 0.0, 1.0, -1.0], [2, 2, 2], &d);
    let s = (8.0f32 / 3.0).sqrt();
    let r = 6.0f32.sqrt();
    let got = block_on(read(g.sample(omega.clone(), 1.0))).unwrap();
    close(&got, &[3.0 + s, 2.0, 0.0, 2.0 + 0.5 * r, 3.0 - 2.0 * s, 2.0, 0.0, 2.0 - r], 1e-5);
    let half = block_on(read(g.sample(omega.clone(), 0.5))).unwrap();
    close(&half, &[3.0 + 0.5 * s, 2.0, 0.0, 2.0 + 0.25 * r, 3.0 - s, 2.0, 0.0, 2.0 - 0.5 * r], 1e-5);
    let zero = block_on(read(g.sample(omega, 0.0))).unwrap();
    close(&zero, &[3.0, 2.0, 0.0, 2.0, 3.0, 2.0, 0.0, 2.0], 0.0);
}

fn gaussian(mu: Vec<f32>, sigma: Vec<f32>) -> PromptGaussian {
    let d = cpu_device();
    PromptGaussian { mu: tensor(mu, [1, 2], &d), sigma: tensor(sigma, [1, 2], &d) }
}

#[test]
fn mixing_follows_eq7_and_the_authors_rule() {
    let a = gaussian(vec![1.0, 2.0], vec![1.0, 4.0]);
    let b = gaussian(vec![3.0, -2.0], vec![2.0, 0.0]);
    // α = (1, 3) normalised to (0.25, 0.75).
    let m = PromptGaussian::mix(&[(&a, 1.0), (&b, 3.0)], MixRule::Paper).unwrap();
    close(&block_on(read(m.mu.clone())).unwrap(), &[0.25 + 2.25, 0.5 - 1.5], 1e-6);
    close(&block_on(read(m.sigma)).unwrap(), &[0.5 * 1.0 + 0.75f32.sqrt() * 2.0, 0.5 * 4.0], 1e-6);
    let m = PromptGaussian::mix(&[(&a, 0.25), (&b, 0.75)], MixRule::Authors).unwrap();
    close(&block_on(read(m.sigma)).unwrap(), &[(0.0625f32 + 2.25).sqrt(), 1.0], 1e-6);
    // One-hot weights give the original distribution back.
    let m = PromptGaussian::mix(&[(&a, 0.0), (&b, 1.0)], MixRule::Paper).unwrap();
    close(&block_on(read(m.mu)).unwrap(), &[3.0, -2.0], 0.0);
    close(&block_on(read(m.sigma)).unwrap(), &[2.0, 0.0], 0.0);
    for bad in [vec![-1.0, 2.0], vec![0.0, 0.0], vec![f32::NAN, 1.0]] {
        assert!(PromptGaussian::mix(&[(&a, bad[0]), (&b, bad[1])], MixRule::Paper).is_err(), "{bad:?}");
    }
    assert!(PromptGaussian::mix(&[], MixRule::Paper).is_err());
}

#[test]
fn ortho_loss_on_eos_and_flat_features() {
    let d = cpu_device();
    // K = 3, L = 2, H = 2; EOS at position 1: features (1,0), (0,2), (1,1).
    let c = vec![9.0, 9.0, 1.0, 0.0, 9.0, 9.0, 0.0, 2.0, 9.0, 9.0, 1.0, 1.0];
    let got = block_on(read(ortho_loss(tensor(c.clone(), [3, 2, 2], &d), 1, OrthoFeatures::Eos))).unwrap()[0];
    let inv = 1.0 / 2f32.sqrt();
    // pairs: cos(a,b) = 0, cos(a,c) = 1/√2, cos(b,c) = 1/√2 → Σ_{i<j} = √2, / (K(K−1) = 6).
    assert!((got - (2.0 * inv) / 6.0).abs() < 1e-6, "{got}");
    // Flat: a = (9,9,1,0), b = (9,9,0,2), c = (9,9,1,1).
    let flat = |v: [f32; 4]| v;
    let (a, b, cc) = (flat([9., 9., 1., 0.]), flat([9., 9., 0., 2.]), flat([9., 9., 1., 1.]));
    let cos = |x: [f32; 4], y: [f32; 4]| {
        let dot: f32 = x.iter().zip(&y).map(|(p, q)| p * q).sum();
        let n = |v: [f32; 4]| v.iter().map(|p| p * p).sum::<f32>().sqrt();
        dot / (n(x) * n(y))
    };
    let want = (cos(a, b) + cos(a, cc) + cos(b, cc)) / 6.0;
    let got = block_on(read(ortho_loss(tensor(c, [3, 2, 2], &d), 1, OrthoFeatures::Flat))).unwrap()[0];
    assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    // K = 1: no pairs.
    let one =
        block_on(read(ortho_loss(tensor(vec![1.0, 2.0, 3.0, 4.0], [1, 2, 2], &d), 1, OrthoFeatures::Eos))).unwrap()[0];
    assert_eq!(one, 0.0);
}

#[test]
fn templates_and_layouts() {
    assert_eq!(
        Template::parse("a watercolor of {} at night").unwrap(),
        Template { prefix: "a watercolor of".into(), suffix: "at night".into() }
    );
    assert_eq!(Template::parse("{}").unwrap(), Template::bare());
    assert!(Template::parse("no slot").is_err());
    assert!(Template::parse("{} and {}").is_err());
    assert_eq!(Template::parse(" a photo of {} ").unwrap().to_string(), "a photo of {}");

    let tok = ClipTokenizer::sd2().unwrap();
    let l = PromptLayout::new(&tok, &Template::parse("a photo of {}").unwrap(), 4).unwrap();
    assert_eq!(&l.ids[..9], &[BOS, 320, 1125, 539, PAD, PAD, PAD, PAD, EOS]);
    assert_eq!((l.slot_start, l.eos), (4, 8));
    assert!(l.ids[9..].iter().all(|&i| i == PAD));
    let bare = PromptLayout::new(&tok, &Template::bare(), 8).unwrap();
    assert_eq!((bare.slot_start, bare.eos), (1, 9));
    let long = format!("{} {{}}", "word ".repeat(70));
    assert!(PromptLayout::new(&tok, &Template::parse(&long).unwrap(), 8).is_err());
}
