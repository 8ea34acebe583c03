//! What the long-reduction-safe group norm (`model::reduce`) costs against burn's one-kernel
//! statistics, on the CPU backend, forward and forward+backward, at the UNet's shapes.
//!
//! ```sh
//! cargo run --release --example groupnorm_cost
//! ```
use std::time::Instant;

use burn::tensor::{Device, Tensor};
use dreamdist::backend::{self, BackendKind, block_on};
use dreamdist::model::reduce;

fn plain(x: Tensor<4>, g: usize) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    let t = x.reshape([n, g, (c / g) * h * w]);
    let (var, mean) = t.clone().var_mean_bias(2);
    ((t - mean) / (var + 1e-5).sqrt()).reshape([n, c, h, w])
}

fn safe(x: Tensor<4>, g: usize) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    let r = (c / g) * h;
    let (mean, var) = reduce::group_mean_var(x.clone(), g);
    let inv = (var + 1e-5).sqrt().recip();
    ((x.reshape([n, g, r, w]) - reduce::spread_groups(mean, r)) * reduce::spread_groups(inv, r)).reshape([n, c, h, w])
}

fn time(f: impl Fn() -> f32) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        std::hint::black_box(f());
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
    }
    best
}

fn main() {
    let kind: BackendKind = std::env::args().nth(1).unwrap_or_else(|| "cpu".into()).parse().unwrap();
    let (device, info) = backend::device(kind).unwrap();
    println!("{} — best of 5, ms", info.name);
    let mut rng = dreamdist::rng::Rng::new(1);
    for shape in [[8, 320, 32, 32], [8, 640, 16, 16], [8, 1280, 8, 8], [2, 320, 64, 64], [1, 128, 256, 256]] {
        let n: usize = shape.iter().product();
        let x = backend::tensor(rng.normal_vec(n), shape, &device);
        let ad: Device = device.clone().autodiff();
        let xa = backend::tensor(block_on(backend::read(x.clone())).unwrap(), shape, &ad);
        let r = xa.clone() * 0.5;
        let fwd = |f: fn(Tensor<4>, usize) -> Tensor<4>| {
            time(|| block_on(backend::read(reduce::sum_all(f(x.clone(), 32)))).unwrap()[0])
        };
        let bwd = |f: fn(Tensor<4>, usize) -> Tensor<4>| {
            time(|| {
                let leaf = xa.clone().require_grad();
                let g = reduce::sum_all(f(leaf.clone(), 32) * r.clone()).backward();
                block_on(backend::read(reduce::sum_all(leaf.grad(&g).unwrap()))).unwrap()[0]
            })
        };
        println!(
            "{shape:?}: forward plain {:.1} safe {:.1}; forward+backward plain {:.1} safe {:.1}",
            fwd(plain),
            fwd(safe),
            bwd(plain),
            bwd(safe)
        );
    }
}
