//! Samplers: DDIM (η = 0), Euler, Euler ancestral, DPM-Solver++ (2M), for ε and v prediction,
//! with diffusers' default timestep spacings for SD 2.1 (DDIM "leading"; Euler and DPM-Solver++
//! "linspace").
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::NoiseSchedule;
use crate::model::Prediction;

/// Which sampler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SamplerKind {
    /// DDIM, deterministic (η = 0).
    Ddim,
    /// Euler (Karras et al. formulation, no churn).
    Euler,
    /// Euler ancestral (stochastic).
    EulerAncestral,
    /// DPM-Solver++ second-order multistep.
    DpmSolverPp2m,
}

impl std::str::FromStr for SamplerKind {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "ddim" => Ok(Self::Ddim),
            "euler" => Ok(Self::Euler),
            "euler-a" | "euler-ancestral" => Ok(Self::EulerAncestral),
            "dpm" | "dpm++" | "dpm-solver++" | "dpmpp-2m" | "dpm-solver-pp2m" | "dpmsolver++" => {
                Ok(Self::DpmSolverPp2m)
            }
            _ => {
                Err(crate::Error::Invalid(format!("unknown scheduler {s:?} (expected ddim, euler, euler-a or dpm++)")))
            }
        }
    }
}

/// A sampler set up for a number of inference steps.
pub struct Sampler {
    kind: SamplerKind,
    prediction: Prediction,
    schedule: NoiseSchedule,
    /// Timesteps given to the model, step by step.
    timesteps: Vec<f32>,
    /// σ per step plus a final one (Euler, DPM-Solver++).
    sigmas: Vec<f64>,
    /// DDIM: distance between consecutive timesteps.
    step_ratio: usize,
    /// DPM-Solver++: previous x₀ predictions.
    x0_history: Vec<Tensor<4>>,
}

impl Sampler {
    /// A sampler of `kind` for `steps` inference steps.
    pub fn new(kind: SamplerKind, prediction: Prediction, schedule: NoiseSchedule, steps: usize) -> Self {
        assert!(steps >= 1, "at least one inference step");
        let n = schedule.len();
        let mut step_ratio = 0;
        let (timesteps, sigmas): (Vec<f32>, Vec<f64>) = match kind {
            SamplerKind::Ddim => {
                // "leading" spacing with steps_offset = 1.
                step_ratio = n / steps;
                let ts = (0..steps).rev().map(|i| (i * step_ratio + 1) as f32).collect();
                (ts, vec![])
            }
            SamplerKind::Euler | SamplerKind::EulerAncestral => {
                let ts: Vec<f64> =
                    (0..steps).map(|i| (n - 1) as f64 * i as f64 / (steps - 1).max(1) as f64).rev().collect();
                let mut sig: Vec<f64> = ts.iter().map(|&t| schedule.sigma_at(t)).collect();
                sig.push(0.0);
                (ts.iter().map(|&t| t as f32).collect(), sig)
            }
            SamplerKind::DpmSolverPp2m => {
                let ts: Vec<f64> = (0..=steps)
                    .map(|i| ((n - 1) as f64 * i as f64 / steps as f64).round_ties_even())
                    .rev()
                    .take(steps)
                    .collect();
                let mut sig: Vec<f64> = ts.iter().map(|&t| schedule.sigma_at(t)).collect();
                sig.push(0.0);
                (ts.iter().map(|&t| t as f32).collect(), sig)
            }
        };
        Self { kind, prediction, schedule, timesteps, sigmas, step_ratio, x0_history: vec![] }
    }

    /// Timesteps to give the model, in order.
    pub fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    /// Which sampler.
    pub fn kind(&self) -> SamplerKind {
        self.kind
    }

    /// Standard deviation of the initial latent noise.
    pub fn init_noise_sigma(&self) -> f32 {
        match self.kind {
            SamplerKind::Ddim | SamplerKind::DpmSolverPp2m => 1.0,
            // "linspace" spacing: the largest σ itself (diffusers adds 1 in quadrature only for
            // "leading" spacing).
            SamplerKind::Euler | SamplerKind::EulerAncestral => self.sigmas.iter().cloned().fold(0.0, f64::max) as f32,
        }
    }

    /// Whether [`step`](Self::step) needs fresh noise.
    pub fn needs_noise(&self) -> bool {
        self.kind == SamplerKind::EulerAncestral
    }

    /// Scales the latent before the model call at step `i`.
    pub fn scale_model_input(&self, x: Tensor<4>, i: usize) -> Tensor<4> {
        match self.kind {
            SamplerKind::Euler | SamplerKind::EulerAncestral => {
                let s = self.sigmas[i];
                x / ((s * s + 1.0).sqrt() as f32)
            }
            _ => x,
        }
    }

    /// One step from `sample` at step `i` given the model output; `noise` (standard normal, same
    /// shape) is required by ancestral samplers.
    pub fn step(&mut self, model_out: Tensor<4>, i: usize, sample: Tensor<4>, noise: Option<Tensor<4>>) -> Tensor<4> {
        match self.kind {
            SamplerKind::Ddim => self.ddim_step(model_out, i, sample),
            SamplerKind::Euler | SamplerKind::EulerAncestral => self.euler_step(model_out, i, sample, noise),
            SamplerKind::DpmSolverPp2m => self.dpm_step(model_out, i, sample),
        }
    }

    fn ddim_step(&self, out: Tensor<4>, i: usize, sample: Tensor<4>) -> Tensor<4> {
        let ac = &self.schedule.alphas_cumprod;
        let t = self.timesteps[i] as usize;
        let a_t = ac[t];
        let a_prev = if t >= self.step_ratio { ac[t - self.step_ratio] } else { ac[0] };
        let (sa, sb) = (a_t.sqrt() as f32, (1.0 - a_t).sqrt() as f32);
        let (x0, eps) = match self.prediction {
            Prediction::Epsilon => ((sample - out.clone() * sb) / sa, out),
            Prediction::VPrediction => (sample.clone() * sa - out.clone() * sb, out * sa + sample * sb),
        };
        x0 * (a_prev.sqrt() as f32) + eps * ((1.0 - a_prev).sqrt() as f32)
    }

    fn euler_step(&self, out: Tensor<4>, i: usize, sample: Tensor<4>, noise: Option<Tensor<4>>) -> Tensor<4> {
        let sigma = self.sigmas[i];
        let x0 = match self.prediction {
            Prediction::Epsilon => sample.clone() - out * (sigma as f32),
            Prediction::VPrediction => {
                let c = sigma * sigma + 1.0;
                out * ((-sigma / c.sqrt()) as f32) + sample.clone() / (c as f32)
            }
        };
        let derivative = (sample.clone() - x0) / (sigma as f32);
        let next = self.sigmas[i + 1];
        if self.kind == SamplerKind::EulerAncestral {
            let up = (next * next * (sigma * sigma - next * next) / (sigma * sigma)).sqrt();
            let down = (next * next - up * up).max(0.0).sqrt();
            let x = sample + derivative * ((down - sigma) as f32);
            let noise = noise.expect("Euler ancestral needs noise at every step");
            x + noise * (up as f32)
        } else {
            sample + derivative * ((next - sigma) as f32)
        }
    }

    fn dpm_step(&mut self, out: Tensor<4>, i: usize, sample: Tensor<4>) -> Tensor<4> {
        let at = |s: f64| {
            let alpha = 1.0 / (s * s + 1.0).sqrt();
            (alpha, s * alpha)
        };
        let lambda = |(a, s): (f64, f64)| a.ln() - s.ln();
        let (alpha_s0, sigma_s0) = at(self.sigmas[i]);
        let x0 = match self.prediction {
            Prediction::Epsilon => (sample.clone() - out * (sigma_s0 as f32)) / (alpha_s0 as f32),
            Prediction::VPrediction => sample.clone() * (alpha_s0 as f32) - out * (sigma_s0 as f32),
        };
        self.x0_history.push(x0.clone());
        let n = self.timesteps.len();
        let (alpha_t, sigma_t) = at(self.sigmas[i + 1]);
        let lambda_t = if sigma_t == 0.0 { f64::INFINITY } else { lambda((alpha_t, sigma_t)) };
        let lambda_s0 = lambda((alpha_s0, sigma_s0));
        let h = lambda_t - lambda_s0;
        let em1 = (-h).exp() - 1.0; // exp(-h) - 1
        // The first step has no history; the last one goes to σ = 0 ("zero" final sigma), where
        // diffusers always falls back to first order.
        let first_order = i == 0 || i == n - 1;
        let base = sample * ((sigma_t / sigma_s0) as f32);
        if first_order {
            base - x0 * ((alpha_t * em1) as f32)
        } else {
            let m1 = self.x0_history[self.x0_history.len() - 2].clone();
            let (alpha_s1, sigma_s1) = at(self.sigmas[i - 1]);
            let h0 = lambda_s0 - lambda((alpha_s1, sigma_s1));
            let r0 = h0 / h;
            let d1 = (x0.clone() - m1) * ((1.0 / r0) as f32);
            base - x0 * ((alpha_t * em1) as f32) - d1 * ((0.5 * alpha_t * em1) as f32)
        }
    }
}
