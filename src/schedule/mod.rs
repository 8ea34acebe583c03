//! Noise schedule (training) and samplers (inference), following diffusers' schedulers for the
//! SD 2.1 configuration: `scaled_linear` betas 0.00085…0.012 over 1000 steps, `steps_offset` 1.
mod samplers;

use burn::tensor::Tensor;

pub use samplers::{Sampler, SamplerKind};

use crate::model::Prediction;

/// The diffusion noise schedule: ᾱₜ for t = 0…999.
#[derive(Clone, Debug)]
pub struct NoiseSchedule {
    /// ᾱₜ (cumulative product of 1 − βₜ).
    pub alphas_cumprod: Vec<f64>,
}

impl Default for NoiseSchedule {
    fn default() -> Self {
        Self::sd21()
    }
}

impl NoiseSchedule {
    /// SD 2.x: β = linspace(√0.00085, √0.012, 1000)².
    pub fn sd21() -> Self {
        Self::scaled_linear(0.00085, 0.012, 1000)
    }

    /// `scaled_linear` betas.
    pub fn scaled_linear(beta_start: f64, beta_end: f64, steps: usize) -> Self {
        let (a, b) = (beta_start.sqrt(), beta_end.sqrt());
        let mut prod = 1.0f64;
        let alphas_cumprod = (0..steps)
            .map(|i| {
                let s = a + (b - a) * i as f64 / (steps - 1) as f64;
                // diffusers computes the schedule in f32: round each β like it does.
                let beta = ((s as f32) * (s as f32)) as f64;
                prod *= 1.0 - beta;
                prod as f32 as f64
            })
            .collect();
        Self { alphas_cumprod }
    }

    /// Number of training timesteps.
    pub fn len(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// Whether the schedule is empty.
    pub fn is_empty(&self) -> bool {
        self.alphas_cumprod.is_empty()
    }

    /// (√ᾱₜ, √(1−ᾱₜ)) for integer timestep `t`.
    pub fn coefficients(&self, t: usize) -> (f32, f32) {
        let a = self.alphas_cumprod[t];
        (a.sqrt() as f32, (1.0 - a).sqrt() as f32)
    }

    /// xₜ = √ᾱₜ·x₀ + √(1−ᾱₜ)·ε, per batch element (`timesteps.len()` = batch).
    pub fn add_noise(&self, x0: Tensor<4>, noise: Tensor<4>, timesteps: &[usize]) -> Tensor<4> {
        let (a, s) = self.per_batch(timesteps, &x0);
        x0 * a + noise * s
    }

    /// v = √ᾱₜ·ε − √(1−ᾱₜ)·x₀ (the v-prediction target).
    pub fn velocity(&self, x0: Tensor<4>, noise: Tensor<4>, timesteps: &[usize]) -> Tensor<4> {
        let (a, s) = self.per_batch(timesteps, &x0);
        noise * a - x0 * s
    }

    /// The training target for `prediction`: ε or v.
    pub fn target(&self, prediction: Prediction, x0: Tensor<4>, noise: Tensor<4>, timesteps: &[usize]) -> Tensor<4> {
        match prediction {
            Prediction::Epsilon => noise,
            Prediction::VPrediction => self.velocity(x0, noise, timesteps),
        }
    }

    fn per_batch(&self, timesteps: &[usize], like: &Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let n = like.dims()[0];
        assert_eq!(n, timesteps.len(), "one timestep per batch element");
        let (a, s): (Vec<f32>, Vec<f32>) = timesteps.iter().map(|&t| self.coefficients(t)).unzip();
        let dev = like.device();
        (crate::backend::tensor(a, [n, 1, 1, 1], &dev), crate::backend::tensor(s, [n, 1, 1, 1], &dev))
    }

    /// σ(t) = √((1−ᾱₜ)/ᾱₜ) for a real-valued t, linearly interpolated as diffusers does.
    pub fn sigma_at(&self, t: f64) -> f64 {
        let sig = |i: usize| ((1.0 - self.alphas_cumprod[i]) / self.alphas_cumprod[i]).sqrt();
        let t = t.clamp(0.0, (self.len() - 1) as f64);
        let lo = t.floor() as usize;
        let hi = (lo + 1).min(self.len() - 1);
        let w = t - lo as f64;
        sig(lo) * (1.0 - w) + sig(hi) * w
    }
}
