//! The self-test operations against naive, independently written references (f64 loops),
//! on the CPU backend and on native wgpu (lavapipe here), each checked on repeated calls.
use dreamdist::backend::{self, BackendKind, block_on, read};
use dreamdist::selftest::{self, Inputs, shapes};

fn matmul(a: &[f32], b: &[f32], n: usize, k: usize, m: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * m];
    for i in 0..n {
        for j in 0..m {
            out[i * m + j] = (0..k).map(|p| a[i * k + p] as f64 * b[p * m + j] as f64).sum();
        }
    }
    out
}

/// 3×3 convolution, stride 1, padding 1, `[1, ci, s, s]` → `[1, co, s, s]`.
fn conv3x3(x: &[f64], w: &[f32], b: &[f32], ci: usize, co: usize, s: usize) -> Vec<f64> {
    let mut out = vec![0.0; co * s * s];
    for o in 0..co {
        for y in 0..s {
            for xx in 0..s {
                let mut acc = b[o] as f64;
                for c in 0..ci {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (iy, ix) = (y as isize + ky as isize - 1, xx as isize + kx as isize - 1);
                            if iy >= 0 && ix >= 0 && (iy as usize) < s && (ix as usize) < s {
                                acc += x[(c * s + iy as usize) * s + ix as usize]
                                    * w[((o * ci + c) * 3 + ky) * 3 + kx] as f64;
                            }
                        }
                    }
                }
                out[(o * s + y) * s + xx] = acc;
            }
        }
    }
    out
}

/// Group norm of `[n, c, hw]` with `g` groups, eps 1e-5, per-channel affine.
fn group_norm(x: &[f64], n: usize, c: usize, hw: usize, g: usize, w: &[f32], b: &[f32]) -> Vec<f64> {
    let mut out = vec![0.0; x.len()];
    let cg = c / g;
    for i in 0..n {
        for gi in 0..g {
            let idx: Vec<usize> =
                (gi * cg..(gi + 1) * cg).flat_map(|ch| (0..hw).map(move |p| (i * c + ch) * hw + p)).collect();
            let mean = idx.iter().map(|&j| x[j]).sum::<f64>() / idx.len() as f64;
            let var = idx.iter().map(|&j| (x[j] - mean).powi(2)).sum::<f64>() / idx.len() as f64;
            for &j in &idx {
                let ch = (j / hw) % c;
                out[j] = (x[j] - mean) / (var + 1e-5).sqrt() * w[ch] as f64 + b[ch] as f64;
            }
        }
    }
    out
}

/// `(b, lq, lk, dim)`: batch, query and key lengths, model width.
fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (b, lq, lk, dim): (usize, usize, usize, usize),
    heads: usize,
) -> Vec<f64> {
    let d = dim / heads;
    let mut out = vec![0.0; b * lq * dim];
    for bi in 0..b {
        for h in 0..heads {
            for i in 0..lq {
                let scores: Vec<f64> = (0..lk)
                    .map(|j| {
                        (0..d)
                            .map(|p| {
                                q[(bi * lq + i) * dim + h * d + p] as f64 * k[(bi * lk + j) * dim + h * d + p] as f64
                            })
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let z: f64 = e.iter().sum();
                for p in 0..d {
                    out[(bi * lq + i) * dim + h * d + p] =
                        (0..lk).map(|j| e[j] / z * v[(bi * lk + j) * dim + h * d + p] as f64).sum();
                }
            }
        }
    }
    out
}

/// The backward op's loss: sum(silu(groupnorm₄(conv(x))) · r).
fn backward_loss(inp: &Inputs, x: &[f64]) -> f64 {
    let y = conv3x3(x, &inp.conv_w, &inp.conv_b, 8, 16, 16);
    let y = group_norm(&y, 1, 16, 256, 4, &inp.gn_w[..16], &inp.gn_b[..16]);
    y.iter().zip(&inp.r).map(|(v, r)| v / (1.0 + (-v).exp()) * *r as f64).sum()
}

fn assert_close(name: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let mut worst = 0.0f64;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (*g as f64 - w).abs();
        assert!(err <= atol + rtol * w.abs(), "{name}[{i}]: got {g}, want {w} (|diff| {err})");
        worst = worst.max(err);
    }
    eprintln!("{name}: max |diff| {worst:.3e}");
}

/// The device of `kind`, named on stderr; a missing one fails the test.
fn open(kind: BackendKind) -> burn::tensor::Device {
    let (device, info) = backend::device(kind).unwrap_or_else(|e| panic!("{kind:?} device unavailable: {e}"));
    eprintln!("backend {kind:?}: {} ({})", info.name, info.graphics_api);
    device
}

fn check_backend(kind: BackendKind) {
    let device = open(kind);
    let inp = Inputs::new(selftest::SEED);
    let x64: Vec<f64> = inp.conv_x.iter().map(|&v| v as f64).collect();
    let want_mm = matmul(&inp.a, &inp.b, 64, 96, 48);
    let want_conv = conv3x3(&x64, &inp.conv_w, &inp.conv_b, 8, 16, 16);
    let gn_x: Vec<f64> = inp.gn_x.iter().map(|&v| v as f64).collect();
    let want_gn = group_norm(&gn_x, 2, 32, 64, shapes::GN_GROUPS, &inp.gn_w, &inp.gn_b);
    let want_att = attention(&inp.q, &inp.k, &inp.v, (2, 16, 24, 64), shapes::HEADS);
    // Central finite differences of the loss at a spread of input coordinates.
    let probe: Vec<usize> = (0..inp.conv_x.len()).step_by(97).collect();
    let h = 1e-4;
    let want_grad: Vec<f64> = probe
        .iter()
        .map(|&i| {
            let (mut a, mut b) = (x64.clone(), x64.clone());
            a[i] += h;
            b[i] -= h;
            (backward_loss(&inp, &a) - backward_loss(&inp, &b)) / (2.0 * h)
        })
        .collect();
    for round in 0..2 {
        let o = selftest::run_ops(&inp, &device).expect("ops");
        let tag = |s: &str| format!("{kind:?} round {round} {s}");
        assert_close(&tag("matmul"), &block_on(read(o.matmul)).unwrap(), &want_mm, 1e-4, 1e-4);
        assert_close(&tag("conv2d"), &block_on(read(o.conv2d)).unwrap(), &want_conv, 1e-4, 1e-4);
        assert_close(&tag("group_norm"), &block_on(read(o.group_norm)).unwrap(), &want_gn, 1e-4, 1e-4);
        assert_close(&tag("attention"), &block_on(read(o.attention)).unwrap(), &want_att, 1e-5, 1e-4);
        let grad = block_on(read(o.backward)).unwrap();
        let got: Vec<f32> = probe.iter().map(|&i| grad[i]).collect();
        assert_close(&tag("backward"), &got, &want_grad, 2e-3, 2e-3);
    }
}

#[test]
fn ops_match_naive_references_on_cpu() {
    check_backend(BackendKind::Cpu);
}

/// Native wgpu (lavapipe on machines without a GPU; `scripts/setup.sh` installs it). There is
/// no way to skip it: a machine without a Vulkan driver fails here.
#[test]
fn ops_match_naive_references_on_wgpu() {
    let _gpu = crate::gpu_shared();
    check_backend(BackendKind::Wgpu);
}

#[test]
fn selftest_report_is_identical_across_rounds_on_cpu() {
    let device = backend::cpu_device();
    let report = block_on(selftest::run(&device, "cpu", 2)).unwrap();
    assert_eq!(report.rounds.len(), 2);
    for (a, b) in report.rounds[0].ops.iter().zip(&report.rounds[1].ops) {
        assert_eq!((&a.name, &a.shape, a.sum, &a.samples), (&b.name, &b.shape, b.sum, &b.samples));
    }
    let names: Vec<_> = report.rounds[0].ops.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["matmul", "conv2d", "group_norm", "attention", "backward"]);
}

/// The long reductions of `dreamdist::model::reduce` against f64 sums, at lengths where burn's
/// own kernels return wrong sums on lavapipe (axes of ≥ 65 536 elements, full sums of more than
/// 262 144): a 70 001-long axis, a full sum of 2²⁰ + 3 elements, a 40 000-long softmax and
/// group-norm statistics of `[1, 64, 256, 256]` (131 072 elements per group).
fn check_long_reductions(kind: BackendKind) {
    use dreamdist::model::reduce;
    let device = open(kind);
    let mut rng = dreamdist::rng::Rng::new(11);
    let (rows, len) = (3, 70_001);
    let x = rng.normal_vec(rows * len).iter().map(|v| v + 0.25).collect::<Vec<f32>>();
    let t = backend::tensor(x.clone(), [rows, len], &device);
    let want: Vec<f64> = x.chunks(len).map(|r| r.iter().map(|&v| v as f64).sum()).collect();
    assert_close("sum_last [3, 70001]", &block_on(read(reduce::sum_last(t.clone()))).unwrap(), &want, 1e-2, 1e-5);
    let want_max: Vec<f64> = x.chunks(len).map(|r| r.iter().fold(f64::MIN, |m, &v| m.max(v as f64))).collect();
    assert_close("max_last [3, 70001]", &block_on(read(reduce::max_last(t.clone()))).unwrap(), &want_max, 0.0, 0.0);
    let n = (1 << 20) + 3;
    let y = rng.uniform_vec(n, 0.0, 1.0);
    let want_all = y.iter().map(|&v| v as f64).sum::<f64>();
    let got = block_on(read(reduce::sum_all(backend::tensor(y.clone(), [n], &device)))).unwrap();
    assert_close("sum_all of 2^20 + 3", &got, &[want_all], 0.0, 1e-5);
    let got = block_on(read(reduce::mean_all(backend::tensor(y, [1, n], &device)))).unwrap();
    assert_close("mean_all of 2^20 + 3", &got, &[want_all / n as f64], 0.0, 1e-5);
    let (r, l) = (2, 40_000);
    let s = rng.normal_vec(r * l).iter().map(|v| v * 3.0).collect::<Vec<f32>>();
    let want_sm: Vec<f64> = s
        .chunks(l)
        .flat_map(|row| {
            let m = row.iter().fold(f64::MIN, |m, &v| m.max(v as f64));
            let z: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
            row.iter().map(move |&v| (v as f64 - m).exp() / z).collect::<Vec<_>>()
        })
        .collect();
    let got = block_on(read(reduce::softmax_last(backend::tensor(s, [r, l], &device)))).unwrap();
    assert_close("softmax_last [2, 40000]", &got, &want_sm, 1e-9, 1e-4);
    let (c, hw, g) = (64, 256, 32);
    let z = rng.normal_vec(c * hw * hw).iter().map(|v| v * 2.0 + 0.5).collect::<Vec<f32>>();
    let per = c / g * hw * hw;
    let (mut want_mean, mut want_var) = (vec![], vec![]);
    for grp in z.chunks(per) {
        let m = grp.iter().map(|&v| v as f64).sum::<f64>() / per as f64;
        want_mean.push(m);
        want_var.push(grp.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / per as f64);
    }
    let (mean, var) = reduce::group_mean_var(backend::tensor(z, [1, c, hw, hw], &device), g);
    assert_close("group mean [1, 64, 256, 256]", &block_on(read(mean)).unwrap(), &want_mean, 1e-5, 1e-4);
    assert_close("group var [1, 64, 256, 256]", &block_on(read(var)).unwrap(), &want_var, 1e-5, 1e-4);
}

#[test]
fn long_reductions_match_f64_on_cpu() {
    check_long_reductions(BackendKind::Cpu);
}

#[test]
fn long_reductions_match_f64_on_wgpu() {
    let _gpu = crate::gpu_shared();
    check_long_reductions(BackendKind::Wgpu);
}

/// Gradients through a group norm whose groups hold 131 072 elements and through a softmax over
/// 70 001 entries: under autodiff the backward sums over every axis its forward broadcast over,
/// so these would hand lavapipe the long reductions it gets wrong unless the forward keeps each
/// broadcast short (`reduce::spread_groups`, the chunked `reduce::softmax_last`).
fn long_gradients(kind: BackendKind) -> (Vec<f32>, Vec<f32>) {
    use dreamdist::model::nn::GroupNorm;
    use dreamdist::model::reduce;
    use dreamdist::weights::{MapSource, Vb};
    let device = open(kind);
    let ad = device.autodiff();
    let mut rng = dreamdist::rng::Rng::new(5);
    let (c, hw) = (64, 256);
    let vb = Vb::new(
        MapSource::default().with("weight", rng.uniform_vec(c, 0.5, 1.5)).with("bias", rng.uniform_vec(c, -0.5, 0.5)),
        &ad,
    );
    let gn = GroupNorm::new(&vb, 32, c, 1e-5);
    vb.finish().unwrap();
    let x = backend::tensor(rng.normal_vec(c * hw * hw).iter().map(|v| v * 2.0 + 0.3).collect(), [1, c, hw, hw], &ad)
        .require_grad();
    let r = backend::tensor(rng.normal_vec(c * hw * hw), [1, c, hw, hw], &ad);
    let grads = reduce::sum_all(gn.forward(x.clone()) * r).backward();
    let g_norm = block_on(read(x.grad(&grads).unwrap())).unwrap();
    let (rows, len) = (2, 70_001);
    let s =
        backend::tensor(rng.normal_vec(rows * len).iter().map(|v| v * 3.0).collect(), [rows, len], &ad).require_grad();
    let r = backend::tensor(rng.normal_vec(rows * len), [rows, len], &ad);
    let grads = reduce::sum_all(reduce::softmax_last(s.clone()) * r).backward();
    let g_soft = block_on(read(s.grad(&grads).unwrap())).unwrap();
    (g_norm, g_soft)
}

#[test]
fn long_reduction_gradients_on_wgpu_equal_the_cpu() {
    let _gpu = crate::gpu_shared();
    let (cpu_norm, cpu_soft) = long_gradients(BackendKind::Cpu);
    let (gpu_norm, gpu_soft) = long_gradients(BackendKind::Wgpu);
    for (name, a, b) in [("group norm", &cpu_norm, &gpu_norm), ("softmax", &cpu_soft, &gpu_soft)] {
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let want: Vec<f64> = a.iter().map(|&v| v as f64).collect();
        assert_close(&format!("{name} gradient, wgpu vs cpu"), b, &want, 1e-4 * scale as f64, 0.0);
    }
}

/// The CPU backend's host GELU (one parallel pass, a rational `erf`) against the erf formula
/// through burn's own ops: values, and the gradient it feeds autodiff.
#[test]
fn host_gelu_matches_the_erf_formula_and_its_gradient() {
    use burn::tensor::Tensor;
    use dreamdist::model::nn::{erf_f32, gelu_exact};
    let device = open(BackendKind::Cpu);
    let n = 160_001;
    let xs: Vec<f32> = (0..n).map(|i| -8.0 + 16.0 * i as f32 / (n - 1) as f32).collect();
    // erf: burn-flex's is libm's erff (correctly rounded to ~1 ulp).
    let want = block_on(read(backend::tensor(xs.clone(), [n], &device).erf())).unwrap();
    let worst = xs.iter().zip(&want).map(|(&x, &w)| (erf_f32(x) - w).abs()).fold(0f32, f32::max);
    eprintln!("erf_f32: max |difference| to libm {worst:.2e}");
    assert!(worst <= 5e-7, "{worst}");
    let formula = |x: Tensor<1>| x.clone().mul((x / std::f32::consts::SQRT_2).erf() + 1.0) / 2.0;
    let x = backend::tensor(xs.clone(), [n], &device);
    let got = block_on(read(gelu_exact(x.clone()))).unwrap();
    let want = block_on(read(formula(x))).unwrap();
    // GELU = x·(1 + erf(x/√2))/2 inherits erf's ≤ 5e-7 as ≤ 2.5e-7·|x|, plus the
    // formulas' rounding (2 ulp of a value ≈ x: 2.4e-7·|x|).
    let worst = got.iter().zip(&want).zip(&xs).map(|((a, b), x)| (a - b).abs() / x.abs().max(1.0)).fold(0f32, f32::max);
    eprintln!("host GELU: max difference {worst:.2e} per unit of |x|");
    assert!(worst <= 5e-7, "{worst}");
    assert_same_gradient("host GELU", &xs, &device, &gelu_exact, &formula);
}

/// The gradients of `Σ f(x)·r` and `Σ reference(x)·r` (r a fixed pattern) at `xs` agree to 1e-5
/// (relative, floor 1), and the check has teeth: `f` off by 1% would fail it.
fn assert_same_gradient(
    what: &str,
    xs: &[f32],
    device: &burn::tensor::Device,
    f: &dyn Fn(burn::tensor::Tensor<1>) -> burn::tensor::Tensor<1>,
    reference: &dyn Fn(burn::tensor::Tensor<1>) -> burn::tensor::Tensor<1>,
) {
    let n = xs.len();
    let ad = device.clone().autodiff();
    let r = backend::tensor((0..n).map(|i| ((i % 7) as f32 - 3.0) * 0.3).collect(), [n], &ad);
    let grad = |f: &dyn Fn(burn::tensor::Tensor<1>) -> burn::tensor::Tensor<1>| {
        let leaf = backend::tensor(xs.to_vec(), [n], &ad).require_grad();
        let g = (f(leaf.clone()) * r.clone()).sum().backward();
        block_on(read(leaf.grad(&g).unwrap())).unwrap()
    };
    let (got, want) = (grad(f), grad(reference));
    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs() / b.abs().max(1.0)).fold(0f32, f32::max);
    eprintln!("{what} gradient: max difference {worst:.2e}");
    assert!(worst <= 1e-5, "{what}: {worst}");
    assert!(got.iter().zip(&want).any(|(a, b)| (1.01 * a - b).abs() / b.abs().max(1.0) > 1e-5));
}

/// The CPU backend's host SiLU (one parallel pass, a polynomial `exp`) against burn's `silu`:
/// values over both tails, and the gradient it feeds autodiff.
#[test]
fn host_silu_matches_burns_silu_and_its_gradient() {
    use burn::tensor::Tensor;
    use dreamdist::model::nn::silu;
    let device = open(BackendKind::Cpu);
    let n = 200_001;
    let xs: Vec<f32> = (0..n).map(|i| -100.0 + 200.0 * i as f32 / (n - 1) as f32).collect();
    let reference = |x: Tensor<1>| burn::tensor::activation::silu(x);
    let x = backend::tensor(xs.clone(), [n], &device);
    let got = block_on(read(silu(x.clone()))).unwrap();
    let want = block_on(read(reference(x))).unwrap();
    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs() / b.abs().max(1e-3)).fold(0f32, f32::max);
    eprintln!("host SiLU: max relative difference {worst:.2e}");
    assert!(worst <= 1e-6, "{worst}");
    assert_same_gradient("host SiLU", &xs, &device, &silu, &reference);
}

/// The CPU backend's convolution as one product over patches (deep levels, 1×1) equals burn's
/// convolution, forward and backward, with symmetric, asymmetric and no padding.
#[test]
fn patch_convolution_equals_burns_convolution() {
    use burn::tensor::Tensor;
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    use dreamdist::model::nn::Conv2d;
    use dreamdist::weights::{RandomSource, Vb};
    let device = open(BackendKind::Cpu).autodiff();
    let mut rng = dreamdist::rng::Rng::new(4);
    for (c, o, k, hw, pad) in [
        (8usize, 64usize, 3usize, 5usize, [(1usize, 1usize), (1, 1)]),
        (8, 64, 3, 6, [(0, 1), (1, 0)]),
        (16, 24, 1, 4, [(0, 0), (0, 0)]),
    ] {
        let conv = Conv2d::new(&Vb::new(RandomSource::new(7), &device), c, o, k, 1, pad[0].0);
        let x = backend::tensor(rng.normal_vec(2 * c * hw * hw), [2, c, hw, hw], &device);
        let opts = ConvOptions::new_with_padding([1, 1], pad, [1, 1], 1);
        let (ho, wo) = (hw + pad[0].0 + pad[0].1 + 1 - k, hw + pad[1].0 + pad[1].1 + 1 - k);
        let r = backend::tensor(rng.normal_vec(2 * o * ho * wo), [2, o, ho, wo], &device);
        let reference =
            |x: Tensor<4>| conv2d(x, conv.weight4(burn::tensor::FloatDType::F32), Some(conv.bias.val()), opts.clone());
        let run = |f: &dyn Fn(Tensor<4>) -> Tensor<4>| {
            let leaf = x.clone().require_grad();
            let y = f(leaf.clone());
            let g = (y.clone() * r.clone()).sum().backward();
            (block_on(read(y)).unwrap(), block_on(read(leaf.grad(&g).unwrap())).unwrap())
        };
        let (y1, g1) = run(&|x| conv.forward_patches(x, pad));
        let (y2, g2) = run(&reference);
        let d = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        eprintln!(
            "conv c{c} o{o} k{k} {hw}² pad {pad:?}: output {:.2e}, input gradient {:.2e}",
            d(&y1, &y2),
            d(&g1, &g2)
        );
        assert_eq!(y1.len(), y2.len());
        assert!(d(&y1, &y2) <= 1e-4 && d(&g1, &g2) <= 1e-4);
        // The product path is what `forward` picks here (more channels than output pixels).
        if k == 3 {
            let (y3, _) = run(&|x| conv.forward_padded(x, pad));
            assert_eq!(y3, y1);
        }
    }
}

/// The fused host attention (forward, and its hand-written backward) against burn's operations
/// under autodiff: several query blocks and work splits (long key axis), causal masking with
/// and without a query offset, cross-attention shapes.
#[test]
fn fused_host_attention_equals_burns_attention() {
    use dreamdist::model::host_attention::{self, AttnShape};
    use dreamdist::model::nn::{attention_block, attention_block_vjp};
    let plain = open(BackendKind::Cpu);
    let tracked = plain.clone().autodiff();
    let mut rng = dreamdist::rng::Rng::new(11);
    for (b, lq, lk, heads, d, causal, q_offset) in [
        (1usize, 100usize, 8200usize, 2usize, 4usize, false, 0usize),
        (2, 64, 77, 3, 8, false, 0),
        (2, 77, 77, 4, 16, true, 0),
        (1, 20, 77, 2, 8, true, 50),
    ] {
        let dim = heads * d;
        let mk = |n: usize, rng: &mut dreamdist::rng::Rng| rng.normal_vec(n).into_iter().map(|x| 2.0 * x).collect();
        let (qv, kv, vv): (Vec<f32>, Vec<f32>, Vec<f32>) =
            (mk(b * lq * dim, &mut rng), mk(b * lk * dim, &mut rng), mk(b * lk * dim, &mut rng));
        let gv = rng.normal_vec(b * lq * dim);
        let t = |v: &Vec<f32>, l: usize, dev| backend::tensor(v.clone(), [b, l, dim], dev);
        // Reference: burn's operations, one autodiff graph.
        let (q, k, v) = (
            t(&qv, lq, &tracked).require_grad(),
            t(&kv, lk, &tracked).require_grad(),
            t(&vv, lk, &tracked).require_grad(),
        );
        let y = attention_block(q.clone(), k.clone(), v.clone(), heads, causal, q_offset);
        let grads = (y.clone() * t(&gv, lq, &tracked)).sum().backward();
        let want_y = block_on(read(y)).unwrap();
        let want: Vec<Vec<f32>> =
            [&q, &k, &v].iter().map(|x| block_on(read(x.grad(&grads).unwrap())).unwrap()).collect();
        // The fused kernel: what `attention_block` runs without autodiff on the host.
        let s = AttnShape { b, lq, lk, heads, d, causal, q_offset };
        let got_y = host_attention::forward(&s, &qv, &kv, &vv);
        let via_block = block_on(read(attention_block(
            t(&qv, lq, &plain),
            t(&kv, lk, &plain),
            t(&vv, lk, &plain),
            heads,
            causal,
            q_offset,
        )))
        .unwrap();
        assert_eq!(via_block, got_y, "attention_block picks the fused kernel on the host");
        let got = attention_block_vjp(
            &t(&qv, lq, &plain),
            &t(&kv, lk, &plain),
            &t(&vv, lk, &plain),
            &t(&gv, lq, &plain),
            [true; 3],
            heads,
            causal,
            q_offset,
        )
        .expect("the host has a fused backward");
        let rel = |a: &[f32], b: &[f32]| {
            let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(scale > 1e-3, "a reference that is all but zero checks nothing");
            a.iter().zip(b).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max) / scale
        };
        let ey = rel(&got_y, &want_y);
        let eg: Vec<f32> =
            got.iter().zip(&want).map(|(g, w)| rel(&block_on(read(g.clone().unwrap())).unwrap(), w)).collect();
        eprintln!(
            "attention b{b} lq{lq} lk{lk} h{heads} d{d} causal {causal} offset {q_offset}: output {ey:.1e}, dq/dk/dv {eg:?}"
        );
        assert!(ey <= 1e-5, "output error {ey}");
        assert!(eg.iter().all(|&e| e <= 1e-4), "gradient errors {eg:?}");
        // Only what is asked for is computed.
        let only_v = attention_block_vjp(
            &t(&qv, lq, &plain),
            &t(&kv, lk, &plain),
            &t(&vv, lk, &plain),
            &t(&gv, lq, &plain),
            [false, false, true],
            heads,
            causal,
            q_offset,
        )
        .unwrap();
        assert!(only_v[0].is_none() && only_v[1].is_none());
        assert_eq!(
            block_on(read(only_v[2].clone().unwrap())).unwrap(),
            block_on(read(got[2].clone().unwrap())).unwrap()
        );
    }
}

/// The host resnet block (group norm + SiLU and convolutions on the host, its hand-written
/// backward) against burn's operations under autodiff: with and without a shortcut, a batch of
/// two, a non-square image, inputs given as a channel concatenation (the up path), random norm
/// affines and biases, and only some gradients asked for.
#[test]
fn host_resnet_equals_burns_resnet() {
    use burn::module::Param;
    use dreamdist::model::unet::ResnetBlock;
    use dreamdist::weights::{RandomSource, Vb};
    let plain = open(BackendKind::Cpu);
    let ad = plain.clone().autodiff();
    let mut rng = dreamdist::rng::Rng::new(5);
    for (parts, co, n, h, w, temb_dim, groups) in [
        (vec![8usize], 16usize, 1usize, 32usize, 32usize, 12usize, 4usize),
        (vec![16], 16, 2, 32, 33, 12, 8),
        (vec![6, 10], 8, 1, 40, 28, 5, 4),
    ] {
        let ci: usize = parts.iter().sum();
        let mut block = ResnetBlock::new(&Vb::new(RandomSource::new(9), &plain), ci, co, Some(temb_dim), groups, 1e-5);
        // Random norm affines and biases (the loader's defaults are ones and zeros).
        let vec_param = |len: usize, base: f32, rng: &mut dreamdist::rng::Rng| {
            let v: Vec<f32> = rng.normal_vec(len).into_iter().map(|x| base + 0.3 * x).collect();
            Param::from_tensor(backend::tensor(v, [len], &plain)).set_require_grad(false)
        };
        block.norm1.weight = vec_param(ci, 1.0, &mut rng);
        block.norm1.bias = vec_param(ci, 0.0, &mut rng);
        block.norm2.weight = vec_param(co, 1.0, &mut rng);
        block.norm2.bias = vec_param(co, 0.0, &mut rng);
        block.conv1.bias = vec_param(co, 0.0, &mut rng);
        block.conv2.bias = vec_param(co, 0.0, &mut rng);
        let xs: Vec<Vec<f32>> =
            parts.iter().map(|&c| rng.normal_vec(n * c * h * w).into_iter().map(|x| 1.5 * x + 0.2).collect()).collect();
        let tv = rng.normal_vec(n * temb_dim);
        let rv = rng.normal_vec(n * co * h * w);
        // Reference: one autodiff graph through burn's operations.
        let leaves: Vec<_> =
            xs.iter().zip(&parts).map(|(v, &c)| backend::tensor(v.clone(), [n, c, h, w], &ad).require_grad()).collect();
        let tl = backend::tensor(tv.clone(), [n, temb_dim], &ad).require_grad();
        let y = block.forward(burn::tensor::Tensor::cat(leaves.clone(), 1), Some(&tl));
        let g = (y.clone() * backend::tensor(rv.clone(), [n, co, h, w], &ad)).sum().backward();
        let want_y = block_on(read(y)).unwrap();
        let want_gx: Vec<Vec<f32>> = leaves.iter().map(|l| block_on(read(l.grad(&g).unwrap())).unwrap()).collect();
        let want_gt = block_on(read(tl.grad(&g).unwrap())).unwrap();
        // Host kernels.
        let px: Vec<_> =
            xs.iter().zip(&parts).map(|(v, &c)| backend::tensor(v.clone(), [n, c, h, w], &plain)).collect();
        assert!(block.host_applies(&px[0]), "the host path must be what runs here");
        let pt = backend::tensor(tv.clone(), [n, temb_dim], &plain);
        let (y, saved) = block.forward_host(&px, Some(&pt));
        let via_parts = block_on(read(block.forward_parts(px.clone(), Some(&pt)))).unwrap();
        let got_y = block_on(read(y)).unwrap();
        assert_eq!(via_parts, got_y, "forward_parts picks the host kernels");
        let dy = backend::tensor(rv.clone(), [n, co, h, w], &plain);
        let (gx, gt) = block.backward_host(&px, &saved, &dy, &vec![true; parts.len()], true);
        let rel = |a: &[f32], b: &[f32]| {
            let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(scale > 1e-3 && a.len() == b.len());
            a.iter().zip(b).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max) / scale
        };
        let ey = rel(&got_y, &want_y);
        let egx: Vec<f32> =
            gx.iter().zip(&want_gx).map(|(g, w)| rel(&block_on(read(g.clone().unwrap())).unwrap(), w)).collect();
        let egt = rel(&block_on(read(gt.unwrap())).unwrap(), &want_gt);
        eprintln!(
            "resnet {parts:?}→{co} n{n} {h}×{w}: output {ey:.1e}, input gradients {egx:?}, temb gradient {egt:.1e}"
        );
        assert!(ey <= 1e-5, "output {ey}");
        assert!(egx.iter().all(|&e| e <= 1e-4) && egt <= 1e-4, "gradients {egx:?} {egt}");
        // Only the first input asked for: the same gradient, nothing else computed.
        let mut want = vec![false; parts.len()];
        want[0] = true;
        let (gx1, gt1) = block.backward_host(&px, &saved, &dy, &want, false);
        assert!(gt1.is_none() && gx1[1..].iter().all(Option::is_none));
        assert_eq!(block_on(read(gx1[0].clone().unwrap())).unwrap(), block_on(read(gx[0].clone().unwrap())).unwrap());
    }
}

/// In f32 on the CPU backend the UNet tape's resnets (at ≥ 1024 pixels) and attention cores
/// run their own host forward/backward pairs: the block-wise gradient with respect to the
/// context equals one autodiff graph through burn's operations, with the pairs' saved tensors
/// kept and with them recomputed. (tests/blockwise.rs checks the same walk in f64, where the
/// host kernels do not apply.)
#[test]
fn host_backwards_through_the_unet_tape_equal_one_graph() {
    use dreamdist::model::tape::{GraphBudget, Val};
    use dreamdist::model::{MemPlan, UNet, UNetConfig};
    use dreamdist::tokenizer::MAX_LEN;
    use dreamdist::weights::{RandomSource, Vb};
    let cfg = UNetConfig::tiny_three_levels();
    let device = open(BackendKind::Cpu);
    let unet = UNet::new(&Vb::new(RandomSource::new(9), &device), &cfg);
    let s = 24;
    assert!(2 * s * s >= dreamdist::model::unet::HOST_RESNET_MIN_PIXELS);
    let mut rng = dreamdist::rng::Rng::new(2);
    let x = backend::tensor(rng.normal_vec(2 * 4 * s * s), [2, 4, s, s], &device);
    let ctx = backend::tensor(rng.normal_vec(2 * MAX_LEN * 32), [2, MAX_LEN, 32], &device);
    let r = backend::tensor(rng.normal_vec(2 * 4 * s * s), [2, 4, s, s], &device);
    let ts = [123.0, 777.0];
    let leaf = ctx.clone().autodiff().require_grad();
    let out = unet.forward_planned(x.clone().autodiff(), &ts, &leaf, &MemPlan::cpu(), &mut ());
    let want = block_on(read(leaf.grad(&(out * r.clone()).sum().backward()).unwrap())).unwrap();
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let (tape, us) = unet.tape(2, s, s, &MemPlan::cpu());
    for limit in [u64::MAX, 0] {
        let inputs = vec![
            (us.x, x.clone().into()),
            (us.t_proj, unet.time_proj(&ts, &device).into()),
            (us.context, ctx.clone().into()),
        ];
        let vals = tape.forward_retaining(inputs, &[us.context], &mut GraphBudget::new(limit), &mut ());
        let customs = vals.custom_pieces();
        let g = tape.backward(vals, vec![(us.out, Val::T4(r.clone()))], &[us.context], &mut ()).unwrap();
        let got = block_on(read(g[0].clone().unwrap().t3())).unwrap();
        let e = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / scale;
        eprintln!("budget {limit}: {customs} pieces with their own backward, vs one graph {e:.2e} (scale {scale:.3e})");
        // Attention cores of the six transformer blocks after the first cross-attention, and
        // the top level's up-path resnets.
        assert!(customs >= 8, "{customs}");
        assert!(e <= 2e-5, "{e}");
    }
}
