//! Single operations at the VAE decoder's shapes, on the CPU and on the wgpu device, compared —
//! the probe that found burn's long-reduction fault on lavapipe (docs/UPSTREAM.md).
//!
//! ```sh
//! XDG_RUNTIME_DIR=/tmp cargo run --release --example op_crosscheck            # every op
//! XDG_RUNTIME_DIR=/tmp cargo run --release --example op_crosscheck -- conv    # ops whose name has "conv"
//! XDG_RUNTIME_DIR=/tmp cargo run --release --example op_crosscheck -- sum 4 65536 1 262144   # sum_dim of ones [R, L]
//! XDG_RUNTIME_DIR=/tmp cargo run --release --example op_crosscheck -- full 1048576           # sum()/mean() of N ones
//! XDG_RUNTIME_DIR=/tmp cargo run --release --example op_crosscheck -- softmax 2 262144       # softmax [R, L] vs the CPU
//! ```
//!
//! These call burn's own reductions on purpose (not `dreamdist::model::reduce`).
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor, TensorData};
use dreamdist::backend::{self, BackendKind, block_on};
use dreamdist::rng::Rng;

fn randn(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal()).collect()
}

fn up<const D: usize>(v: &[f32], shape: [usize; D], d: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), d)
}

fn report(name: &str, a: &[f32], b: &[f32]) {
    let max = a.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    let bad = a.iter().zip(b).filter(|(x, y)| (*x - *y).abs() > 1e-3 * max.max(1e-6)).count();
    println!("{name:50} max|cpu| {max:10.3e}  max diff {diff:10.3e}  rel {:9.2e}  bad {bad}/{}", diff / max, a.len());
}

fn main() {
    let (cpu, _) = backend::device(BackendKind::Cpu).unwrap();
    let (gpu, info) = backend::device(BackendKind::Wgpu).unwrap();
    println!("wgpu: {} ({})", info.name, info.graphics_api);
    let mut rng = Rng::new(7);
    let read = |t: Tensor<4>| block_on(backend::read(t)).unwrap();
    let read3 = |t: Tensor<3>| block_on(backend::read(t)).unwrap();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("sum") {
        // `sum R L [R L ...]`: sum_dim of ones [R, L] along L.
        for pair in args[1..].chunks(2) {
            let (r, l): (usize, usize) = (pair[0].parse().unwrap(), pair[1].parse().unwrap());
            let run = |d: &Device| read3(Tensor::<3>::ones([1, r, l], d).sum_dim(2));
            let g = run(&gpu);
            let bad: Vec<usize> = g.iter().enumerate().filter(|(_, v)| **v != l as f32).map(|(i, _)| i).collect();
            println!(
                "sum ones [{r}, {l}]: {} bad rows {:?} values {:?}",
                bad.len(),
                &bad[..bad.len().min(8)],
                bad.iter().take(4).map(|&i| g[i]).collect::<Vec<_>>()
            );
        }
        return;
    }
    if args.first().map(String::as_str) == Some("full") {
        // `full N ...`: sum() of N ones.
        for n in &args[1..] {
            let n: usize = n.parse().unwrap();
            let v = block_on(backend::read(Tensor::<1>::ones([n], &gpu).sum())).unwrap();
            let m = block_on(backend::read(Tensor::<2>::ones([n / 4, 4], &gpu).mean())).unwrap();
            println!("sum of {n} ones = {}  mean = {}", v[0], m[0]);
        }
        return;
    }
    if args.first().map(String::as_str) == Some("softmax") {
        // `softmax R L ...`: softmax of random [R, L] along L against the CPU.
        for pair in args[1..].chunks(2) {
            let (r, l): (usize, usize) = (pair[0].parse().unwrap(), pair[1].parse().unwrap());
            let x = randn(&mut rng, r * l);
            let run = |d: &Device| read3(burn::tensor::activation::softmax(up(&x, [1, r, l], d), 2));
            report(&format!("softmax [{r}, {l}]"), &run(&cpu), &run(&gpu));
        }
        return;
    }
    let want = |s: &str| args.is_empty() || args.iter().any(|a| s.contains(a.as_str()));

    // 3×3 convolutions, padding 1.
    for &(c_in, c_out, h) in &[(64, 64, 128), (64, 32, 256), (32, 32, 256), (32, 3, 256), (128, 128, 256), (4, 64, 128)]
    {
        let name = format!("conv3x3 {c_in}->{c_out} at {h}x{h}");
        if !want(&name) {
            continue;
        }
        let x = randn(&mut rng, c_in * h * h);
        let w = randn(&mut rng, c_out * c_in * 9).iter().map(|v| v / ((c_in * 9) as f32).sqrt()).collect::<Vec<_>>();
        let b = randn(&mut rng, c_out);
        let run = |d: &Device| {
            let opts = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
            read(conv2d(up(&x, [1, c_in, h, h], d), up(&w, [c_out, c_in, 3, 3], d), Some(up(&b, [c_out], d)), opts))
        };
        report(&name, &run(&cpu), &run(&gpu));
    }
    // Group-norm statistics.
    for &(c, h) in &[(32, 256), (64, 128), (64, 256), (128, 256), (32, 128)] {
        let name = format!("var_mean_bias groups 32 of {c}ch at {h}x{h}");
        if !want(&name) {
            continue;
        }
        let x: Vec<f32> = randn(&mut rng, c * h * h).iter().map(|v| v * 2.0 + 0.5).collect();
        let run = |d: &Device| {
            let t: Tensor<3> = up(&x, [1, c, h, h], d).reshape([1, 32, (c / 32) * h * h]);
            let (var, mean) = t.var_mean_bias(2);
            let mut v = read3(var);
            v.extend(read3(mean));
            v
        };
        report(&name, &run(&cpu), &run(&gpu));
    }
    // Plain reductions along the last axis of [1, 32, L].
    for &l in &[32768usize, 65536, 131072, 262144] {
        for op in ["sum_dim", "mean_dim", "var_mean_bias", "sum_dim ones"] {
            let name = format!("{op} [1, 32, {l}]");
            if !want(&name) {
                continue;
            }
            let x: Vec<f32> = if op.ends_with("ones") {
                vec![1.0; 32 * l]
            } else {
                randn(&mut rng, 32 * l).iter().map(|v| v + 0.5).collect()
            };
            let run = |d: &Device| {
                let t: Tensor<3> = up(&x, [1, 32, l], d);
                match op {
                    "var_mean_bias" => {
                        let (var, mean) = t.var_mean_bias(2);
                        let mut v = read3(var);
                        v.extend(read3(mean));
                        v
                    }
                    "mean_dim" => read3(t.mean_dim(2)),
                    _ => read3(t.sum_dim(2)),
                }
            };
            report(&name, &run(&cpu), &run(&gpu));
        }
    }
    // Nearest upsampling.
    for &(c, h) in &[(64, 128), (32, 128)] {
        let name = format!("upsample2x {c}ch {h}x{h}");
        if !want(&name) {
            continue;
        }
        let x = randn(&mut rng, c * h * h);
        let run = |d: &Device| read(dreamdist::model::nn::upsample_nearest2x(up(&x, [1, c, h, h], d)));
        report(&name, &run(&cpu), &run(&gpu));
    }
    // Attention at the demo VAE's mid block (16384 tokens of 64 channels at 256²).
    for &(l, c, rows) in &[(4096, 64, 4096), (16384, 64, 8192), (16384, 64, 2048)] {
        let name = format!("attention L={l} C={c} rows {rows}");
        if !want(&name) {
            continue;
        }
        let q = randn(&mut rng, l * c);
        let k = randn(&mut rng, l * c);
        let v = randn(&mut rng, l * c);
        let plan = dreamdist::model::MemPlan::blocks(rows * l * 4);
        let run = |d: &Device| {
            read3(dreamdist::model::nn::attention_chunked(
                up(&q, [1, l, c], d),
                up(&k, [1, l, c], d),
                up(&v, [1, l, c], d),
                1,
                false,
                &plan,
            ))
        };
        report(&name, &run(&cpu), &run(&gpu));
    }
}
