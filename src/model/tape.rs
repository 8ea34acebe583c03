//! Networks as tapes of pieces: one definition serves inference (each value freed after its
//! last use) and exact block-wise backpropagation with recompute.
//!
//! A [`Tape`] is a list of [`Piece`]s in execution order. Each piece reads some slots and writes
//! others through a closure that runs plain tensor code. Running the tape forward without
//! autodiff and keeping every slot that a piece reads gives the block-boundary tensors; walking
//! the pieces in reverse, [`Tape::backward`] recomputes one piece at a time under autodiff (its
//! inputs lifted to fresh leaves) and pulls the incoming gradient back to the piece's inputs, so
//! the autodiff graph never spans more than one piece. Peak memory is the kept boundaries plus
//! one piece's activations (and the dequantized weights of that piece only).
//!
//! The gradient is exact: the walk is the chain rule over the pieces, and each piece's
//! vector-Jacobian product is burn's own. Gradients accumulate into every slot consumed by
//! several pieces (skip connections, the text conditioning), and any input slot can ask for its
//! gradient — the conditioning for DreamDistribution, or the small trainable tensors of an
//! adapter (LoRA) passed in as extra input slots.
use burn::tensor::Tensor;

use crate::{Error, Result};

use super::reduce::sum_all;

/// A tensor of rank 2, 3 or 4 held in a slot.
#[derive(Clone, Debug)]
pub enum Val {
    /// Rank 2.
    T2(Tensor<2>),
    /// Rank 3.
    T3(Tensor<3>),
    /// Rank 4.
    T4(Tensor<4>),
}

impl From<Tensor<2>> for Val {
    fn from(t: Tensor<2>) -> Self {
        Val::T2(t)
    }
}
impl From<Tensor<3>> for Val {
    fn from(t: Tensor<3>) -> Self {
        Val::T3(t)
    }
}
impl From<Tensor<4>> for Val {
    fn from(t: Tensor<4>) -> Self {
        Val::T4(t)
    }
}

macro_rules! on_val {
    ($v:expr, $t:ident => $e:expr) => {
        match $v {
            Val::T2($t) => Val::T2($e),
            Val::T3($t) => Val::T3($e),
            Val::T4($t) => Val::T4($e),
        }
    };
}

impl Val {
    /// The rank-2 tensor (panics on another rank: a wiring bug).
    pub fn t2(&self) -> Tensor<2> {
        match self {
            Val::T2(t) => t.clone(),
            v => panic!("expected a rank-2 value, got {v:?}"),
        }
    }
    /// The rank-3 tensor.
    pub fn t3(&self) -> Tensor<3> {
        match self {
            Val::T3(t) => t.clone(),
            v => panic!("expected a rank-3 value, got {v:?}"),
        }
    }
    /// The rank-4 tensor.
    pub fn t4(&self) -> Tensor<4> {
        match self {
            Val::T4(t) => t.clone(),
            v => panic!("expected a rank-4 value, got {v:?}"),
        }
    }
    /// Shape.
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Val::T2(t) => t.dims().to_vec(),
            Val::T3(t) => t.dims().to_vec(),
            Val::T4(t) => t.dims().to_vec(),
        }
    }
    /// Bytes of an f32 tensor of this shape.
    pub fn f32_bytes(&self) -> usize {
        self.dims().iter().product::<usize>() * 4
    }
    /// Cast to a float type.
    pub fn cast(self, dt: burn::tensor::FloatDType) -> Val {
        on_val!(self, t => t.clone().cast(dt))
    }
    /// This value as a fresh autodiff leaf that requires its gradient.
    fn leaf(&self) -> Val {
        on_val!(self, t => t.clone().without_autodiff().autodiff().require_grad())
    }
    /// Without autodiff (a plain constant).
    pub fn plain(&self) -> Val {
        on_val!(self, t => t.clone().without_autodiff())
    }
    /// `sum(self ⊙ g)` as a one-element tensor (the surrogate whose gradient is the VJP).
    fn dot(&self, g: &Val) -> Tensor<1> {
        match (self, g) {
            (Val::T2(a), Val::T2(b)) => sum_all(a.clone() * b.clone()),
            (Val::T3(a), Val::T3(b)) => sum_all(a.clone() * b.clone()),
            (Val::T4(a), Val::T4(b)) => sum_all(a.clone() * b.clone()),
            (a, b) => panic!("gradient rank mismatch: {a:?} vs {b:?}"),
        }
    }
    fn add(self, other: Val) -> Val {
        match (self, other) {
            (Val::T2(a), Val::T2(b)) => Val::T2(a + b),
            (Val::T3(a), Val::T3(b)) => Val::T3(a + b),
            (Val::T4(a), Val::T4(b)) => Val::T4(a + b),
            (a, b) => panic!("gradient rank mismatch: {a:?} vs {b:?}"),
        }
    }
    fn grad(&self, grads: &burn::tensor::Gradients) -> Option<Val> {
        Some(match self {
            Val::T2(t) => Val::T2(t.grad(grads)?),
            Val::T3(t) => Val::T3(t.grad(grads)?),
            Val::T4(t) => Val::T4(t.grad(grads)?),
        })
    }
}

/// How much autodiff graph forwards may keep for their backward instead of recomputing it.
///
/// A piece's graph is estimated at [`GraphBudget::SAVED_PER_INPUT`] times its inputs' size (a
/// transformer layer saves ~18 activations of its input's size for its backward: the norms,
/// Q/K/V, the attention weights, the feed-forward's 4×-wide hidden layer before and after its
/// activation; a resnet block fewer). Only the host CPU backend keeps graphs (see
/// `train::Chunking::graph_bytes`); GPU memory is the hard limit there, so GPUs recompute.
#[derive(Clone, Debug, Default)]
pub struct GraphBudget {
    /// Bytes the kept graphs may take.
    pub limit: u64,
    /// Bytes admitted so far (estimates).
    pub used: u64,
}

impl GraphBudget {
    /// Estimated graph bytes per input byte of a piece.
    pub const SAVED_PER_INPUT: u64 = 20;

    /// Keeps nothing: every piece is recomputed (block-wise backprop).
    pub fn none() -> Self {
        Self::default()
    }
    /// The default for `device`: three quarters of the host memory available now on the host
    /// CPU backend (booked at the estimate, which overstates what graphs take: at 512² a step
    /// booked 14 GiB of graphs and peaked at 11–12 GiB of RSS including 5.4 GiB of weights),
    /// nothing on a GPU. In the browser (the CPU backend in WebAssembly, whose linear memory
    /// never shrinks and has at most 4 GiB) a fixed 256 MiB.
    pub fn for_device(device: &burn::tensor::Device) -> Self {
        if !crate::backend::is_host(device) {
            Self::none()
        } else if cfg!(target_arch = "wasm32") {
            Self::new(256 << 20)
        } else {
            Self::new(crate::backend::host_available_bytes().unwrap_or(0) / 4 * 3)
        }
    }
    /// At most `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self { limit, used: 0 }
    }
    /// Whether `bytes` more may be kept (and books them).
    pub fn admit_bytes(&mut self, bytes: u64) -> bool {
        let ok = self.used.saturating_add(bytes) <= self.limit;
        if ok {
            self.used += bytes;
        }
        ok
    }
    /// Whether a piece whose inputs take `input_bytes` may keep its graph (and books it).
    pub fn admit(&mut self, input_bytes: u64) -> bool {
        self.admit_bytes(input_bytes.saturating_mul(Self::SAVED_PER_INPUT))
    }
}

/// A slot index.
pub type Slot = usize;

type PieceFn<'a> = Box<dyn Fn(&[Val]) -> Vec<Val> + 'a>;

/// A piece's own forward for a backend that has a hand-written backward: the outputs and what
/// the backward needs (saved tensors), or `None` where it does not apply to these values
/// (another backend or dtype), and burn's autodiff is used instead.
pub type CustomForward<'a> = Box<dyn Fn(&[Val]) -> Option<(Vec<Val>, Vec<Val>)> + 'a>;

/// The hand-written vector–Jacobian product: given the piece's inputs (plain values), what its
/// [`CustomForward`] saved, the gradient reaching each output (`None` where none does) and
/// which inputs want a gradient, the gradient of each input (`None` where not wanted).
pub type CustomBackward<'a> = Box<dyn Fn(&[Val], &[Val], &[Option<Val>], &[bool]) -> Vec<Option<Val>> + 'a>;

/// A piece's own forward/backward pair (like a `torch.autograd.Function`).
pub struct Custom<'a> {
    forward: CustomForward<'a>,
    backward: CustomBackward<'a>,
}

/// One step of a tape: reads `inputs`, writes `outputs`.
pub struct Piece<'a> {
    /// Name (for reports and memory sampling).
    pub name: String,
    /// Slots read.
    pub inputs: Vec<Slot>,
    /// Slots written.
    pub outputs: Vec<Slot>,
    f: PieceFn<'a>,
    custom: Option<Custom<'a>>,
}

/// A network as a sequence of pieces over numbered slots.
#[derive(Default)]
pub struct Tape<'a> {
    pieces: Vec<Piece<'a>>,
    slots: usize,
    inputs: Vec<Slot>,
    prefix: String,
}

/// Slot values of one run.
pub struct Values {
    vals: Vec<Option<Val>>,
    /// Per piece, the autodiff graph kept by [`Tape::forward_retaining`] (its leaf inputs and
    /// tracked outputs), which [`Tape::backward`] uses instead of recomputing the piece.
    graphs: Vec<Option<Graph>>,
    /// Per piece, what a [`Custom`] forward saved for its backward (where the budget admitted).
    saved: Vec<Option<Vec<Val>>>,
    /// How many pieces ran their [`Custom`] forward.
    customs: usize,
}

/// A piece's forward under autodiff: its inputs (leaves where a gradient is wanted) and outputs.
struct Graph {
    args: Vec<Val>,
    outs: Vec<Val>,
}

impl Values {
    /// The value in `slot`, if kept.
    pub fn get(&self, slot: Slot) -> Option<&Val> {
        self.vals.get(slot).and_then(|v| v.as_ref())
    }
    /// Removes and returns the value in `slot`.
    pub fn take(&mut self, slot: Slot) -> Option<Val> {
        self.vals.get_mut(slot).and_then(|v| v.take())
    }
    /// How many pieces [`Tape::forward_retaining`] ran with their own forward/backward pair
    /// (see [`Tape::piece1_custom`]).
    pub fn custom_pieces(&self) -> usize {
        self.customs
    }
    /// Bytes held (as f32), for memory reports.
    pub fn f32_bytes(&self) -> usize {
        self.vals.iter().flatten().map(Val::f32_bytes).sum()
    }
}

/// Observes a run piece by piece (progress, memory sampling).
pub trait Observer {
    /// Called after each piece of a forward (`backward = false`) or backward walk.
    fn after_piece(&mut self, _name: &str, _backward: bool) {}
}

impl Observer for () {}

/// An [`Observer`] that keeps the largest device memory in use seen at any piece boundary.
pub struct PeakMemory {
    device: burn::tensor::Device,
    /// Largest `bytes_in_use` seen so far; `None` on devices without a pool report (the host
    /// CPU backend).
    pub bytes: Option<u64>,
}

impl PeakMemory {
    /// Starts at the memory in use now.
    pub fn new(device: &burn::tensor::Device) -> Self {
        let mut p = Self { device: device.clone(), bytes: None };
        p.note();
        p
    }
    /// Samples the pool now.
    pub fn note(&mut self) {
        if let Some(u) = self.device.memory_pool_usage() {
            self.bytes = Some(self.bytes.unwrap_or(0).max(u.bytes_in_use));
        }
    }
}

impl Observer for PeakMemory {
    fn after_piece(&mut self, _name: &str, _backward: bool) {
        self.note();
    }
}

impl<'a> Tape<'a> {
    /// An empty tape whose piece names start with `prefix.` (e.g. `unet.`).
    pub fn new(prefix: &str) -> Self {
        Self { prefix: format!("{prefix}."), ..Self::default() }
    }

    /// A new input slot.
    pub fn input(&mut self) -> Slot {
        let s = self.slots;
        self.slots += 1;
        self.inputs.push(s);
        s
    }

    /// Appends a piece reading `inputs` and writing `n_out` new slots, which it returns.
    pub fn piece(
        &mut self,
        name: impl Into<String>,
        inputs: &[Slot],
        n_out: usize,
        f: impl Fn(&[Val]) -> Vec<Val> + 'a,
    ) -> Vec<Slot> {
        let outputs: Vec<Slot> = (self.slots..self.slots + n_out).collect();
        self.slots += n_out;
        self.pieces.push(Piece {
            name: format!("{}{}", self.prefix, name.into()),
            inputs: inputs.to_vec(),
            outputs: outputs.clone(),
            f: Box::new(f),
            custom: None,
        });
        outputs
    }

    /// [`piece`](Self::piece) with one output.
    pub fn piece1(&mut self, name: impl Into<String>, inputs: &[Slot], f: impl Fn(&[Val]) -> Val + 'a) -> Slot {
        self.piece(name, inputs, 1, move |v| vec![f(v)])[0]
    }

    /// [`piece1`](Self::piece1) with its own forward/backward pair where `forward` applies
    /// (returns `Some`): [`forward_retaining`](Self::forward_retaining) runs it (keeping what
    /// it saves while the budget admits, never an autodiff graph) and the backward walk calls
    /// `backward` instead of recomputing the piece under autodiff. `f` stays the plain
    /// forward (inference, block-wise recompute) and the fallback where `forward` does not
    /// apply. `backward` gets the gradient of the one output.
    pub fn piece1_custom(
        &mut self,
        name: impl Into<String>,
        inputs: &[Slot],
        f: impl Fn(&[Val]) -> Val + 'a,
        forward: impl Fn(&[Val]) -> Option<(Val, Vec<Val>)> + 'a,
        backward: impl Fn(&[Val], &[Val], &Val, &[bool]) -> Vec<Option<Val>> + 'a,
    ) -> Slot {
        let out = self.piece1(name, inputs, f);
        self.pieces.last_mut().expect("just added").custom = Some(Custom {
            forward: Box::new(move |x| forward(x).map(|(y, saved)| (vec![y], saved))),
            backward: Box::new(move |x, saved, g, want| match &g[0] {
                Some(g) => backward(x, saved, g, want),
                None => vec![None; x.len()],
            }),
        });
        out
    }

    /// The pieces, in execution order.
    pub fn pieces(&self) -> &[Piece<'a>] {
        &self.pieces
    }

    /// Runs the tape on `inputs` (slot, value). With `keep_all`, every slot stays (the
    /// boundaries for [`backward`](Self::backward)); otherwise each slot is dropped after its
    /// last reader, except those in `keep`.
    pub fn forward(&self, inputs: Vec<(Slot, Val)>, keep_all: bool, keep: &[Slot], obs: &mut dyn Observer) -> Values {
        let mut vals: Vec<Option<Val>> = vec![None; self.slots];
        for (s, v) in inputs {
            vals[s] = Some(v);
        }
        let mut last_use = vec![None::<usize>; self.slots];
        for (i, p) in self.pieces.iter().enumerate() {
            for &s in &p.inputs {
                last_use[s] = Some(i);
            }
        }
        for (i, p) in self.pieces.iter().enumerate() {
            let args: Vec<Val> = p
                .inputs
                .iter()
                .map(|&s| vals[s].clone().unwrap_or_else(|| panic!("piece {} reads slot {s} before it is set", p.name)))
                .collect();
            let outs = (p.f)(&args);
            assert_eq!(outs.len(), p.outputs.len(), "piece {} returned the wrong number of outputs", p.name);
            drop(args);
            for (&s, v) in p.outputs.iter().zip(outs) {
                vals[s] = Some(v);
            }
            if !keep_all {
                for &s in &p.inputs {
                    if last_use[s] == Some(i) && !keep.contains(&s) {
                        vals[s] = None;
                    }
                }
            }
            obs.after_piece(&p.name, false);
        }
        Values { vals, graphs: vec![], saved: vec![], customs: 0 }
    }

    /// Which slots a gradient with respect to `wrt` passes through (`wrt` and everything
    /// computed from them).
    fn needs(&self, wrt: &[Slot]) -> Vec<bool> {
        let mut needs = vec![false; self.slots];
        for &s in wrt {
            needs[s] = true;
        }
        for p in &self.pieces {
            if p.inputs.iter().any(|&s| needs[s]) {
                for &s in &p.outputs {
                    needs[s] = true;
                }
            }
        }
        needs
    }

    /// [`forward`](Self::forward) with `keep_all`, for a [`backward`](Self::backward) with
    /// respect to `wrt` that recomputes less: each piece that a gradient passes through runs
    /// under autodiff and keeps its graph while `budget` admits it; kept pieces are not
    /// recomputed on the way back (one forward less for them, the same gradient). With
    /// [`GraphBudget::none`] this is exactly the block-wise forward.
    pub fn forward_retaining(
        &self,
        inputs: Vec<(Slot, Val)>,
        wrt: &[Slot],
        budget: &mut GraphBudget,
        obs: &mut dyn Observer,
    ) -> Values {
        let needs = self.needs(wrt);
        let mut vals: Vec<Option<Val>> = vec![None; self.slots];
        let mut graphs: Vec<Option<Graph>> = Vec::with_capacity(self.pieces.len());
        let mut saved: Vec<Option<Vec<Val>>> = vec![None; self.pieces.len()];
        let mut customs = 0;
        for (s, v) in inputs {
            vals[s] = Some(v);
        }
        for p in &self.pieces {
            let plain: Vec<Val> = p
                .inputs
                .iter()
                .map(|&s| vals[s].clone().unwrap_or_else(|| panic!("piece {} reads slot {s} before it is set", p.name)))
                .collect();
            let wanted = p.inputs.iter().any(|&s| needs[s]);
            let custom = match (&p.custom, wanted) {
                (Some(c), true) => (c.forward)(&plain),
                _ => None,
            };
            let tracked =
                custom.is_none() && wanted && budget.admit(plain.iter().map(Val::f32_bytes).sum::<usize>() as u64);
            let (outs, graph) = if let Some((outs, kept)) = custom {
                customs += 1;
                let bytes = kept.iter().map(Val::f32_bytes).sum::<usize>() as u64;
                saved[graphs.len()] = budget.admit_bytes(bytes).then_some(kept);
                (outs, None)
            } else if tracked {
                let args: Vec<Val> =
                    p.inputs.iter().zip(&plain).map(|(&s, v)| if needs[s] { v.leaf() } else { v.plain() }).collect();
                let outs = (p.f)(&args);
                (outs.iter().map(Val::plain).collect::<Vec<_>>(), Some(Graph { args, outs }))
            } else {
                ((p.f)(&plain), None)
            };
            assert_eq!(outs.len(), p.outputs.len(), "piece {} returned the wrong number of outputs", p.name);
            for (&s, v) in p.outputs.iter().zip(outs) {
                vals[s] = Some(v);
            }
            graphs.push(graph);
            obs.after_piece(&p.name, false);
        }
        Values { vals, graphs, saved, customs }
    }

    /// Exact backward walk. `saved` must come from [`forward`](Self::forward) with
    /// `keep_all`; `out_grads` are ∂L/∂(output slots); returns ∂L/∂(each slot in `wrt`), or
    /// `None` where no gradient reaches it. Pieces are recomputed one at a time under autodiff;
    /// the kept values are consumed as the walk passes them (pass `saved` by value).
    pub fn backward(
        &self,
        mut saved: Values,
        out_grads: Vec<(Slot, Val)>,
        wrt: &[Slot],
        obs: &mut dyn Observer,
    ) -> Result<Vec<Option<Val>>> {
        // Which slots need a gradient: those in `wrt` and everything computed from them.
        let needs = self.needs(wrt);
        let mut grads: Vec<Option<Val>> = vec![None; self.slots];
        for (s, g) in out_grads {
            grads[s] = Some(g.plain());
        }
        for (i, p) in self.pieces.iter().enumerate().rev() {
            let graph = saved.graphs.get_mut(i).and_then(Option::take);
            let kept = saved.saved.get_mut(i).and_then(Option::take);
            let out_g: Vec<(usize, Val)> =
                p.outputs.iter().enumerate().filter_map(|(i, &s)| grads[s].take().map(|g| (i, g))).collect();
            let wants: Vec<bool> = p.inputs.iter().map(|&s| needs[s]).collect();
            if out_g.is_empty() || !wants.iter().any(|&w| w) {
                obs.after_piece(&p.name, true);
                continue;
            }
            let slot =
                |s: Slot| saved.get(s).ok_or_else(|| Error::Device(format!("piece {}: slot {s} was not kept", p.name)));
            // The piece's own backward where it has one and it applies (from what its forward
            // saved, or that forward run again), else burn's autodiff (kept graph or recompute).
            let custom = match (&graph, &p.custom) {
                (None, Some(custom)) => {
                    let args: Vec<Val> = p.inputs.iter().map(|&s| slot(s).map(Val::plain)).collect::<Result<_>>()?;
                    kept.or_else(|| (custom.forward)(&args).map(|r| r.1)).map(|kept| {
                        let mut outs: Vec<Option<Val>> = vec![None; p.outputs.len()];
                        for (j, g) in &out_g {
                            outs[*j] = Some(g.clone());
                        }
                        (custom.backward)(&args, &kept, &outs, &wants)
                    })
                }
                _ => None,
            };
            let gs: Vec<Option<Val>> = match custom {
                Some(gs) => gs,
                None => {
                    let (args, outs) = match graph {
                        // Kept by `forward_retaining`: no recompute.
                        Some(Graph { args, outs }) => (args, outs),
                        None => {
                            let args: Vec<Val> = p
                                .inputs
                                .iter()
                                .zip(&wants)
                                .map(|(&s, &w)| slot(s).map(|v| if w { v.leaf() } else { v.plain() }))
                                .collect::<Result<_>>()?;
                            let outs = (p.f)(&args);
                            (args, outs)
                        }
                    };
                    let surrogate = out_g
                        .iter()
                        .map(|(i, g)| outs[*i].dot(g))
                        .reduce(|a, b| a + b)
                        .expect("at least one output gradient");
                    drop(outs);
                    let g = surrogate.backward();
                    args.iter().zip(&wants).map(|(a, &w)| if w { a.grad(&g) } else { None }).collect()
                }
            };
            assert_eq!(gs.len(), p.inputs.len(), "piece {}: wrong number of input gradients", p.name);
            for ((&s, gi), &w) in p.inputs.iter().zip(gs).zip(&wants) {
                if let (true, Some(gi)) = (w, gi) {
                    grads[s] = Some(match grads[s].take() {
                        Some(prev) => prev.add(gi),
                        None => gi,
                    });
                }
            }
            // Boundaries produced by this piece are no longer needed.
            for &s in &p.outputs {
                if !wrt.contains(&s) {
                    saved.take(s);
                }
            }
            obs.after_piece(&p.name, true);
        }
        Ok(wrt.iter().map(|&s| grads[s].take()).collect())
    }
}
