//! Reductions that never ask a device kernel to reduce more than [`MAX_REDUCE`] elements at once.
//!
//! burn 0.22.1 / cubek-reduce 0.3.1 on Mesa's lavapipe (llvmpipe 15, Vulkan) return wrong sums
//! for long reductions: `sum_dim` over an axis of ~65 536 or more elements loses every element
//! past ~65 532 of a row (or of some rows), and a full `sum()` of more than ~262 144 elements
//! returns about 262 132 whatever the length — silently, with no error (measured with
//! `examples/op_crosscheck.rs`; docs/proof-train-wgpu-256.md). Chromium's SwiftShader, natively
//! and in the browser, sums correctly. Whether a real GPU's driver hits the same fault is not
//! known here, so every reduction that can grow with the image size or the batch goes through
//! this module: long axes are summed in chunks of at most [`MAX_REDUCE`] elements and the
//! partial results added, which every adapter tested reduces exactly (in f32 rounding).
//! Short reductions (a layer norm over ≤ 1280 channels, the mean over K prompts) stay burn's.
use burn::tensor::Tensor;
use burn::tensor::activation::softmax;

/// Longest axis one reduction kernel is given (4× below the shortest failing length seen).
pub const MAX_REDUCE: usize = 16_384;

/// The last axis of `x` cut into consecutive pieces of at most [`MAX_REDUCE`] elements.
fn chunks_last<const D: usize>(x: &Tensor<D>) -> impl Iterator<Item = Tensor<D>> + '_ {
    let l = x.dims()[D - 1];
    (0..l).step_by(MAX_REDUCE).map(move |s| x.clone().narrow(D - 1, s, MAX_REDUCE.min(l - s)))
}

/// Sum over the last axis, kept with size 1 (as `sum_dim`).
pub fn sum_last<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if x.dims()[D - 1] <= MAX_REDUCE {
        return x.sum_dim(D - 1);
    }
    chunks_last(&x).map(|p| p.sum_dim(D - 1)).reduce(|a, b| a + b).expect("a non-empty axis")
}

/// Maximum over the last axis, kept with size 1 (as `max_dim`).
pub fn max_last<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if x.dims()[D - 1] <= MAX_REDUCE {
        return x.max_dim(D - 1);
    }
    chunks_last(&x).map(|p| p.max_dim(D - 1)).reduce(|a, b| a.max_pair(b)).expect("a non-empty axis")
}

/// Sum of all elements as a one-element tensor (as `sum()`): rows of [`MAX_REDUCE`] elements
/// summed, then the row sums, recursively.
pub fn sum_all<const D: usize>(x: Tensor<D>) -> Tensor<1> {
    let n = x.shape().num_elements();
    let flat: Tensor<1> = x.reshape([n]);
    if n <= MAX_REDUCE {
        return flat.sum();
    }
    let rows = n / MAX_REDUCE;
    let body: Tensor<2> = flat.clone().narrow(0, 0, rows * MAX_REDUCE).reshape([rows, MAX_REDUCE]);
    let mut total = sum_all(body.sum_dim(1));
    if n > rows * MAX_REDUCE {
        total = total + flat.narrow(0, rows * MAX_REDUCE, n - rows * MAX_REDUCE).sum();
    }
    total
}

/// Mean of all elements as a one-element tensor (as `mean()`).
pub fn mean_all<const D: usize>(x: Tensor<D>) -> Tensor<1> {
    let n = x.shape().num_elements();
    sum_all(x) / n as f32
}

/// Softmax over the last axis (as burn's `softmax(x, D - 1)`), chunked when the axis is long.
///
/// Autodiff-safe as well: the maximum is detached (softmax does not depend on it), and the
/// normaliser divides one chunk at a time, so the backward's sums over the broadcast axis are
/// per chunk.
pub fn softmax_last<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if x.dims()[D - 1] <= MAX_REDUCE {
        return softmax(x, D - 1);
    }
    let e = (x.clone() - max_last(x).detach()).exp();
    let z = sum_last(e.clone());
    let parts = chunks_last(&e).map(|p| p / z.clone()).collect();
    Tensor::cat(parts, D - 1)
}

/// Per-(sample, group) sum of `[N, C, H, W]` with `C` in `groups` groups, `[N, groups, 1]`:
/// first over each row (`W`), then over the group's rows — two short reductions instead of one
/// over `C/groups·H·W` elements.
pub fn group_sums(x: Tensor<4>, groups: usize) -> Tensor<3> {
    let [n, c, h, w] = x.dims();
    let rows = sum_last(x.reshape([n, c * h, w]));
    sum_last(rows.reshape([n, groups, (c / groups) * h]))
}

/// Per-(sample, group) statistics `[N, G, 1]` spread to `[N, G, rows, 1]` by a product with
/// ones, ready to broadcast over a row of `[N, G, rows, W]`. Under autodiff, the backward of the
/// two broadcasts sums over `W`, then over `rows` — never over a whole group at once, which a
/// plain `[N, G, 1]` broadcast over `[N, G, rows·W]` would ask of one reduction kernel.
pub fn spread_groups(s: Tensor<3>, rows: usize) -> Tensor<4> {
    let [n, g, _] = s.dims();
    let ones = Tensor::<4>::ones([1, 1, rows, 1], &s.device());
    s.reshape([n, g, 1, 1]) * ones
}

/// Per-(sample, group) sum of squared deviations of `[N, C, H, W]` from `mean` `[N, groups, 1]`,
/// `[N, groups, 1]` (the mean may come from more than `x`, e.g. from all bands of an image).
pub fn group_sq_dev_sums(x: Tensor<4>, mean: Tensor<3>, groups: usize) -> Tensor<3> {
    let [n, c, h, w] = x.dims();
    let rows = (c / groups) * h;
    let centred = x.reshape([n, groups, rows, w]) - spread_groups(mean, rows);
    group_sums(centred.powi_scalar(2).reshape([n, c, h, w]), groups)
}

/// Per-(sample, group) mean and biased variance of `[N, C, H, W]`, each `[N, groups, 1]`
/// (two passes: the mean, then the mean squared deviation).
pub fn group_mean_var(x: Tensor<4>, groups: usize) -> (Tensor<3>, Tensor<3>) {
    let [_, c, h, w] = x.dims();
    let count = ((c / groups) * h * w) as f32;
    let mean = group_sums(x.clone(), groups) / count;
    let var = group_sq_dev_sums(x, mean.clone(), groups) / count;
    (mean, var)
}
