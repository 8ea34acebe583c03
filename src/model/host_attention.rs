//! Fused scaled dot-product attention on the host CPU, forward and backward.
//!
//! burn-flex computes attention as separate operations: the `[B, heads, Lq, Lk]` score block is
//! written to memory, and softmax (and, under autodiff, its backward) runs over it in element-wise
//! passes on one thread. At 512² the UNet's self-attention has 4 096 tokens: every layer moves a
//! 335 MB score block through memory several times, and the softmax passes ran longer than the
//! matrix products (docs/bench-cpu.md). Here each task takes one head of one sample and a block
//! of query rows small enough that its scores stay in the core's cache (≤ 1 MiB), computes
//! `S = QKᵀ/√d`, the softmax and `PV` there, and never writes a score block to memory. The
//! backward (flash-attention style) recomputes `P` per block instead of keeping it:
//! `dV += Pᵀ dO`, `dP = dO Vᵀ`, `dS = P ⊙ (dP − rowsum(P ⊙ dP))`, `dQ = dS K/√d`,
//! `dK += dSᵀ Q/√d` — five products of the block's size, each one single-threaded `gemm` call,
//! with the tasks spread over rayon's threads.
//!
//! Layout: `q` `[B, Lq, heads·d]`, `k`/`v` `[B, Lk, heads·d]` (tokens major, heads side by side
//! in a row, as the projections produce them), row-major `f32`. Causal masking (query `i` of the
//! whole sequence sees keys `0..=i`, the query block starting at `q_offset`) gives masked keys a
//! weight of exactly zero, as `nn::MASKED_SCORE` does on the other path.
use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use super::nn::exp_neg;

/// The dimensions of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    /// Batch.
    pub b: usize,
    /// Query tokens.
    pub lq: usize,
    /// Key/value tokens.
    pub lk: usize,
    /// Heads.
    pub heads: usize,
    /// Channels per head.
    pub d: usize,
    /// Query `i` (of the whole sequence) sees keys `0..=i` only.
    pub causal: bool,
    /// Index of the first query in the whole sequence (causal masking of a block of queries).
    pub q_offset: usize,
}

impl AttnShape {
    fn row(&self) -> usize {
        self.heads * self.d
    }
    fn scale(&self) -> f32 {
        1.0 / (self.d as f32).sqrt()
    }
    /// Query rows per block: the block's scores (and, backward, their gradient) stay within
    /// ~1 MiB each, between 32 and 512 rows.
    fn block_rows(&self) -> usize {
        ((1usize << 18) / self.lk.max(1)).clamp(32, 512).min(self.lq.max(1))
    }
    /// Keys query `i` of this call sees.
    fn visible(&self, i: usize) -> usize {
        if self.causal { (self.q_offset + i + 1).min(self.lk) } else { self.lk }
    }
    fn check(&self, q: &[f32], k: &[f32], v: &[f32]) {
        assert_eq!(q.len(), self.b * self.lq * self.row(), "query size");
        assert_eq!(k.len(), self.b * self.lk * self.row(), "key size");
        assert_eq!(v.len(), self.b * self.lk * self.row(), "value size");
    }
}

/// A raw pointer that rayon tasks may share; every task writes a disjoint part.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper).
    fn get(&self) -> *mut f32 {
        self.0
    }
}

/// `dst = (acc ? dst : 0) + beta · lhs·rhs` for an `m×k` by `k×n` product; strides in elements
/// (`dst` has unit column stride).
#[allow(clippy::too_many_arguments)]
unsafe fn mm(
    [m, n, k]: [usize; 3],
    dst: *mut f32,
    dst_rs: usize,
    acc: bool,
    lhs: *const f32,
    [lhs_rs, lhs_cs]: [usize; 2],
    rhs: *const f32,
    [rhs_rs, rhs_cs]: [usize; 2],
    beta: f32,
) {
    // SAFETY (callers): every pointer covers the strided extent it is read or written over.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            acc,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            beta,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// Lanes of the row loops: independent accumulators, so that the compiler vectorises the
/// reductions (f32 sums are not reassociated otherwise, and one accumulator is a serial chain).
const W: usize = 16;

#[inline(always)]
fn lanes_sum(a: [f32; W]) -> f32 {
    a.iter().sum()
}

/// Row softmax in place over `row[..visible]`; masked keys `row[visible..]` get weight 0.
#[inline(always)]
fn softmax_row(row: &mut [f32], visible: usize) {
    let (live, masked) = row.split_at_mut(visible);
    let mut m = [f32::NEG_INFINITY; W];
    let mut chunks = live.chunks_exact(W);
    for c in &mut chunks {
        for l in 0..W {
            m[l] = if c[l] > m[l] { c[l] } else { m[l] };
        }
    }
    let max = chunks.remainder().iter().chain(&m).fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    let mut s = [0f32; W];
    let mut chunks = live.chunks_exact_mut(W);
    for c in &mut chunks {
        for l in 0..W {
            c[l] = exp_neg(c[l] - max);
            s[l] += c[l];
        }
    }
    let mut sum = lanes_sum(s);
    for x in chunks.into_remainder() {
        *x = exp_neg(*x - max);
        sum += *x;
    }
    let inv = 1.0 / sum;
    for x in live.iter_mut() {
        *x *= inv;
    }
    masked.fill(0.0);
}

/// `ds ← P ⊙ (dP − rowsum(P ⊙ dP)) · scale` per row, `ds` holding `dP` on entry.
#[inline(always)]
fn softmax_grad_row(p: &[f32], ds: &mut [f32], scale: f32) {
    let mut s = [0f32; W];
    let (pc, dc) = (p.chunks_exact(W), ds.chunks_exact(W));
    let mut dot: f32 = pc.remainder().iter().zip(dc.remainder()).map(|(a, b)| a * b).sum();
    for (a, b) in pc.zip(dc) {
        for l in 0..W {
            s[l] += a[l] * b[l];
        }
    }
    dot += lanes_sum(s);
    for (x, &pv) in ds.iter_mut().zip(p) {
        *x = pv * (*x - dot) * scale;
    }
}

#[inline(always)]
fn softmax_rows_impl(p: &mut [f32], lk: usize, s: &AttnShape, i0: usize) {
    for (i, pr) in p.chunks_mut(lk).enumerate() {
        softmax_row(pr, s.visible(i0 + i));
    }
}

#[inline(always)]
fn softmax_grad_rows_impl(p: &[f32], ds: &mut [f32], lk: usize, scale: f32) {
    for (pr, dr) in p.chunks(lk).zip(ds.chunks_mut(lk)) {
        softmax_grad_row(pr, dr, scale);
    }
}

wide_fn! {
    /// Softmax of each `lk`-row of `p` (query rows `i0..` of the call, for the causal mask).
    fn softmax_rows = softmax_rows_impl(p: &mut [f32], lk: usize, s: &AttnShape, i0: usize)
}

wide_fn! {
    /// [`softmax_grad_row`] over each `lk`-row.
    fn softmax_grad_rows = softmax_grad_rows_impl(p: &[f32], ds: &mut [f32], lk: usize, scale: f32)
}

/// `P` of query rows `i0..i0+r` of head `h` of sample `bi` into `p` (`r×lk`, row stride `lk`).
///
/// # Safety
/// `q`, `k` hold the whole inputs of `s`; `p` has `r·lk` elements.
unsafe fn probs(s: &AttnShape, q: &[f32], k: &[f32], [bi, h, i0, r]: [usize; 4], p: &mut [f32]) {
    let row = s.row();
    let qb = q[(bi * s.lq + i0) * row + h * s.d..].as_ptr();
    let kb = k[bi * s.lk * row + h * s.d..].as_ptr();
    // S = Q Kᵀ / √d: Kᵀ[e, j] = K[j, e] (row stride 1, column stride `row`).
    unsafe { mm([r, s.lk, s.d], p.as_mut_ptr(), s.lk, false, qb, [row, 1], kb, [1, row], s.scale()) };
    softmax_rows(p, s.lk, s, i0);
}

/// Attention output `[B, Lq, heads·d]`.
pub fn forward(s: &AttnShape, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
    s.check(q, k, v);
    let row = s.row();
    let mut out = vec![0f32; s.b * s.lq * row];
    let rows = s.block_rows();
    let blocks = s.lq.div_ceil(rows);
    let dst = SharedMut(out.as_mut_ptr());
    (0..s.b * s.heads * blocks).into_par_iter().for_each_init(
        || vec![0f32; rows * s.lk],
        |p, t| {
            let (bh, blk) = (t / blocks, t % blocks);
            let (bi, h) = (bh / s.heads, bh % s.heads);
            let i0 = blk * rows;
            let r = rows.min(s.lq - i0);
            let p = &mut p[..r * s.lk];
            // SAFETY: sizes checked above; each task writes rows i0..i0+r of head h of sample
            // bi only, which no other task touches.
            unsafe {
                probs(s, q, k, [bi, h, i0, r], p);
                let vb = v[bi * s.lk * row + h * s.d..].as_ptr();
                let ob = dst.get().add((bi * s.lq + i0) * row + h * s.d);
                mm([r, s.d, s.lk], ob, row, false, p.as_ptr(), [s.lk, 1], vb, [row, 1], 1.0);
            }
        },
    );
    out
}

/// Gradients of `⟨forward(q, k, v), dout⟩` with respect to `q`, `k` and `v` (each only where
/// `want` asks; an empty vector otherwise).
pub fn backward(s: &AttnShape, q: &[f32], k: &[f32], v: &[f32], dout: &[f32], want: [bool; 3]) -> [Vec<f32>; 3] {
    s.check(q, k, v);
    assert_eq!(dout.len(), q.len(), "output gradient size");
    let [wq, wk, wv] = want;
    let row = s.row();
    let (lk, d) = (s.lk, s.d);
    let rows = s.block_rows();
    let blocks = s.lq.div_ceil(rows);
    // Query blocks of one head are split into `parts` ranges, each with its own dK/dV partial
    // sums, so that there are enough tasks to keep every thread busy.
    let bh_count = s.b * s.heads;
    let parts = (4 * rayon::current_num_threads()).div_ceil(bh_count.max(1)).clamp(1, blocks.max(1));
    let per_part = blocks.div_ceil(parts);
    let mut dq = if wq { vec![0f32; q.len()] } else { vec![] };
    let dq_ptr = SharedMut(dq.as_mut_ptr());
    let partials: Vec<(Vec<f32>, Vec<f32>)> = (0..bh_count * parts)
        .into_par_iter()
        .map(|t| {
            let (bh, part) = (t / parts, t % parts);
            let (bi, h) = (bh / s.heads, bh % s.heads);
            let mut dk = if wk { vec![0f32; lk * d] } else { vec![] };
            let mut dv = if wv { vec![0f32; lk * d] } else { vec![] };
            let mut p = vec![0f32; rows * lk];
            let mut ds = if wq || wk { vec![0f32; rows * lk] } else { vec![] };
            let kb = k[bi * lk * row + h * d..].as_ptr();
            let vb = v[bi * lk * row + h * d..].as_ptr();
            for blk in part * per_part..((part + 1) * per_part).min(blocks) {
                let i0 = blk * rows;
                let r = rows.min(s.lq - i0);
                let off = (bi * s.lq + i0) * row + h * d;
                let (qb, gb) = (q[off..].as_ptr(), dout[off..].as_ptr());
                let p = &mut p[..r * lk];
                // SAFETY: sizes checked above; dQ rows i0..i0+r of (bi, h) belong to this task
                // alone; dk/dv/p/ds are this task's buffers.
                unsafe {
                    probs(s, q, k, [bi, h, i0, r], p);
                    if wv {
                        // dV += Pᵀ dO.
                        mm([lk, d, r], dv.as_mut_ptr(), d, true, p.as_ptr(), [1, lk], gb, [row, 1], 1.0);
                    }
                    if wq || wk {
                        let ds = &mut ds[..r * lk];
                        // dP = dO Vᵀ, then dS = P ⊙ (dP − rowsum(P ⊙ dP)) / √d in place.
                        mm([r, lk, d], ds.as_mut_ptr(), lk, false, gb, [row, 1], vb, [1, row], 1.0);
                        softmax_grad_rows(p, ds, lk, s.scale());
                        if wq {
                            // dQ = dS K.
                            let dqb = dq_ptr.get().add(off);
                            mm([r, d, lk], dqb, row, false, ds.as_ptr(), [lk, 1], kb, [row, 1], 1.0);
                        }
                        if wk {
                            // dK += dSᵀ Q.
                            mm([lk, d, r], dk.as_mut_ptr(), d, true, ds.as_ptr(), [1, lk], qb, [row, 1], 1.0);
                        }
                    }
                }
            }
            (dk, dv)
        })
        .collect();
    // Sum the parts of each head into `[B, Lk, heads·d]`.
    let gather = |second: bool| -> Vec<f32> {
        let mut out = vec![0f32; s.b * lk * row];
        out.par_chunks_mut(lk * row).enumerate().for_each(|(bi, o)| {
            for h in 0..s.heads {
                for part in &partials[(bi * s.heads + h) * parts..(bi * s.heads + h + 1) * parts] {
                    let src = if second { &part.1 } else { &part.0 };
                    for j in 0..lk {
                        let (dst, src) = (&mut o[j * row + h * d..j * row + (h + 1) * d], &src[j * d..(j + 1) * d]);
                        for (a, b) in dst.iter_mut().zip(src) {
                            *a += b;
                        }
                    }
                }
            }
        });
        out
    };
    let dk = if wk { gather(false) } else { vec![] };
    let dv = if wv { gather(true) } else { vec![] };
    [dq, dk, dv]
}

#[cfg(test)]
mod tests {
    #[test]
    fn no_queries_give_zero_gradients() {
        use super::{AttnShape, backward, forward};
        let s = AttnShape { b: 1, lq: 0, lk: 5, heads: 2, d: 3, causal: false, q_offset: 0 };
        let kv = vec![1f32; 5 * 6];
        assert!(forward(&s, &[], &kv, &kv).is_empty());
        let [dq, dk, dv] = backward(&s, &[], &kv, &kv, &[], [true; 3]);
        assert!(dq.is_empty() && dk == vec![0f32; 30] && dv == vec![0f32; 30]);
    }

    #[test]
    fn exp_matches_libm_over_the_softmax_range() {
        use super::exp_neg;
        let mut worst = 0f32;
        let mut x = 0.0f32;
        while x > -87.0 {
            let (a, b) = (exp_neg(x), x.exp());
            worst = worst.max((a - b).abs() / b);
            x -= 0.001_37;
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert_eq!(exp_neg(0.0), 1.0);
    }
}
