//! The self-test: the tensor operations Stable Diffusion needs (matmul, conv2d, group norm,
//! softmax attention, and one backward pass), run on a device with inputs drawn from a fixed
//! seed on the host, so every backend (CPU, native wgpu, WebGPU in a browser) must return the
//! same numbers. The browser page runs it on load; the e2e test compares it with the CPU.
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::backend::{now_ms, read, tensor};
use crate::model::nn::{Conv2d, GroupNorm, attention};
use crate::rng::Rng;
use crate::weights::{MapSource, Vb};

/// Host inputs of the self-test, drawn from a fixed seed.
#[derive(Clone, Debug)]
pub struct Inputs {
    /// matmul: `a` `[64, 96]`, `b` `[96, 48]`.
    pub a: Vec<f32>,
    /// See `a`.
    pub b: Vec<f32>,
    /// conv2d input `[1, 8, 16, 16]`.
    pub conv_x: Vec<f32>,
    /// conv2d weight `[16, 8, 3, 3]`.
    pub conv_w: Vec<f32>,
    /// conv2d bias `[16]`.
    pub conv_b: Vec<f32>,
    /// group norm input `[2, 32, 8, 8]` (8 groups).
    pub gn_x: Vec<f32>,
    /// group norm scale `[32]`.
    pub gn_w: Vec<f32>,
    /// group norm shift `[32]`.
    pub gn_b: Vec<f32>,
    /// attention queries `[2, 16, 64]` (4 heads).
    pub q: Vec<f32>,
    /// attention keys `[2, 24, 64]`.
    pub k: Vec<f32>,
    /// attention values `[2, 24, 64]`.
    pub v: Vec<f32>,
    /// backward: weighting of the loss `[1, 16, 16, 16]`.
    pub r: Vec<f32>,
}

/// Shapes used by the self-test.
pub mod shapes {
    /// matmul lhs.
    pub const A: [usize; 2] = [64, 96];
    /// matmul rhs.
    pub const B: [usize; 2] = [96, 48];
    /// conv2d input.
    pub const CONV_X: [usize; 4] = [1, 8, 16, 16];
    /// conv2d weight.
    pub const CONV_W: [usize; 4] = [16, 8, 3, 3];
    /// group norm input.
    pub const GN_X: [usize; 4] = [2, 32, 8, 8];
    /// group norm groups.
    pub const GN_GROUPS: usize = 8;
    /// attention queries.
    pub const Q: [usize; 3] = [2, 16, 64];
    /// attention keys/values.
    pub const KV: [usize; 3] = [2, 24, 64];
    /// attention heads.
    pub const HEADS: usize = 4;
}

impl Inputs {
    /// The inputs for `seed`.
    pub fn new(seed: u64) -> Self {
        use shapes::*;
        let mut rng = Rng::new(seed);
        let n = |s: &[usize]| s.iter().product::<usize>();
        let mut normal = |len: usize, std: f32| rng.normal_vec(len).into_iter().map(|x| x * std).collect::<Vec<_>>();
        Self {
            a: normal(n(&A), 1.0),
            b: normal(n(&B), 0.1),
            conv_x: normal(n(&CONV_X), 1.0),
            conv_w: normal(n(&CONV_W), 0.1),
            conv_b: normal(16, 0.1),
            gn_x: normal(n(&GN_X), 2.0).into_iter().map(|x| x + 0.5).collect(),
            gn_w: normal(32, 0.5).into_iter().map(|x| x + 1.0).collect(),
            gn_b: normal(32, 0.5),
            q: normal(n(&Q), 1.0),
            k: normal(n(&KV), 1.0),
            v: normal(n(&KV), 1.0),
            r: normal(16 * 16 * 16, 1.0),
        }
    }
}

/// One operation's result, summarised.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OpResult {
    /// Operation name.
    pub name: String,
    /// Output shape.
    pub shape: Vec<usize>,
    /// Sum of the output.
    pub sum: f64,
    /// Sum of absolute values.
    pub sum_abs: f64,
    /// 16 values spread evenly across the output.
    pub samples: Vec<f32>,
    /// Wall time including readback, in ms.
    pub ms: f64,
}

impl OpResult {
    /// Summarises `values` of shape `shape`.
    pub fn summarise(name: &str, shape: Vec<usize>, values: &[f32], ms: f64) -> Self {
        let step = (values.len() / 16).max(1);
        Self {
            name: name.into(),
            shape,
            sum: values.iter().map(|&x| x as f64).sum(),
            sum_abs: values.iter().map(|&x| x.abs() as f64).sum(),
            samples: values.iter().step_by(step).take(16).copied().collect(),
            ms,
        }
    }
}

/// One round of all operations.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Round {
    /// Results in order.
    pub ops: Vec<OpResult>,
    /// Wall time of the round, in ms.
    pub ms: f64,
}

/// The self-test report.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// Backend name.
    pub backend: String,
    /// Repeated rounds (a GPU bug once showed only after the first call).
    pub rounds: Vec<Round>,
}

/// The seed of the self-test inputs.
pub const SEED: u64 = 2024;

/// Outputs of the operations as full tensors (for tests against naive references).
pub struct Outputs {
    /// `a @ b`.
    pub matmul: Tensor<2>,
    /// conv2d 3×3, padding 1.
    pub conv2d: Tensor<4>,
    /// group norm.
    pub group_norm: Tensor<4>,
    /// attention.
    pub attention: Tensor<3>,
    /// d/dx of `sum(silu(groupnorm(conv(x))) * r)` at `x = conv_x`.
    pub backward: Tensor<4>,
}

/// Runs every operation once on `device` (which must support autodiff for the backward op).
pub fn run_ops(inp: &Inputs, device: &Device) -> Result<Outputs> {
    Ok(Outputs {
        matmul: op_matmul(inp, device),
        conv2d: op_conv2d(inp, device)?,
        group_norm: op_group_norm(inp, device)?,
        attention: op_attention(inp, device),
        backward: op_backward(inp, device)?,
    })
}

fn op_matmul(inp: &Inputs, device: &Device) -> Tensor<2> {
    use shapes::*;
    tensor(inp.a.clone(), A, device).matmul(tensor(inp.b.clone(), B, device))
}

fn op_conv2d(inp: &Inputs, device: &Device) -> Result<Tensor<4>> {
    use shapes::*;
    let conv_vb =
        Vb::new(MapSource::default().with("weight", inp.conv_w.clone()).with("bias", inp.conv_b.clone()), device);
    let conv = Conv2d::new(&conv_vb, 8, 16, 3, 1, 1);
    conv_vb.finish()?;
    Ok(conv.forward(tensor(inp.conv_x.clone(), CONV_X, device)))
}

fn op_group_norm(inp: &Inputs, device: &Device) -> Result<Tensor<4>> {
    use shapes::*;
    let gn_vb = Vb::new(MapSource::default().with("weight", inp.gn_w.clone()).with("bias", inp.gn_b.clone()), device);
    let gn = GroupNorm::new(&gn_vb, GN_GROUPS, 32, 1e-5);
    gn_vb.finish()?;
    Ok(gn.forward(tensor(inp.gn_x.clone(), GN_X, device)))
}

fn op_attention(inp: &Inputs, device: &Device) -> Tensor<3> {
    use shapes::*;
    attention(
        tensor(inp.q.clone(), Q, device),
        tensor(inp.k.clone(), KV, device),
        tensor(inp.v.clone(), KV, device),
        HEADS,
        false,
    )
}

/// Backward: conv (8→16) → group norm (4 groups of 16 channels) → SiLU, weighted sum.
fn op_backward(inp: &Inputs, device: &Device) -> Result<Tensor<4>> {
    use shapes::*;
    let ad = device.clone().autodiff();
    let x = tensor(inp.conv_x.clone(), CONV_X, &ad).require_grad();
    let vb = Vb::new(
        MapSource::default()
            .with("conv.weight", inp.conv_w.clone())
            .with("conv.bias", inp.conv_b.clone())
            .with("norm.weight", inp.gn_w[..16].to_vec())
            .with("norm.bias", inp.gn_b[..16].to_vec()),
        &ad,
    );
    let conv_ad = Conv2d::new(&vb.pp("conv"), 8, 16, 3, 1, 1);
    let gn_ad = GroupNorm::new(&vb.pp("norm"), 4, 16, 1e-5);
    vb.finish()?;
    let y = silu(gn_ad.forward(conv_ad.forward(x.clone())));
    let loss = (y * tensor(inp.r.clone(), [1, 16, 16, 16], &ad)).sum();
    let grads = loss.backward();
    let backward = x.grad(&grads).ok_or_else(|| crate::Error::Device("no gradient for the self-test input".into()))?;
    Ok(backward.without_autodiff())
}

async fn summarise<const D: usize>(name: &str, t: Tensor<D>, start: f64) -> Result<OpResult> {
    let shape = t.dims().to_vec();
    let values = read(t).await?;
    Ok(OpResult::summarise(name, shape, &values, now_ms() - start))
}

/// Runs the self-test `rounds` times on `device` and reports the results. Each operation is
/// launched and read back before the next starts, so its time is its own (compute and
/// readback), on a GPU and on the CPU alike.
pub async fn run(device: &Device, backend: &str, rounds: usize) -> Result<Report> {
    let inp = Inputs::new(SEED);
    let mut out = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = now_ms();
        let mut ops = Vec::with_capacity(5);
        let t = now_ms();
        ops.push(summarise("matmul", op_matmul(&inp, device), t).await?);
        let t = now_ms();
        ops.push(summarise("conv2d", op_conv2d(&inp, device)?, t).await?);
        let t = now_ms();
        ops.push(summarise("group_norm", op_group_norm(&inp, device)?, t).await?);
        let t = now_ms();
        ops.push(summarise("attention", op_attention(&inp, device), t).await?);
        let t = now_ms();
        ops.push(summarise("backward", op_backward(&inp, device)?, t).await?);
        out.push(Round { ops, ms: now_ms() - start });
    }
    Ok(Report { backend: backend.into(), rounds: out })
}
