//! The Gaussian over text-encoder outputs (Algorithm 1), sampling with γ, mixing (eq. 7) and
//! the orthogonality loss between prompts.
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::model::reduce::sum_last;
use crate::{Error, Result};

/// A diagonal Gaussian over encoder outputs: per position and channel, `[77, H]` each.
#[derive(Clone, Debug)]
pub struct PromptGaussian {
    /// μ = mean over k of cₖ.
    pub mu: Tensor<2>,
    /// σ = √(mean over k of (cₖ − μ)²) (population standard deviation, Algorithm 1).
    pub sigma: Tensor<2>,
}

/// How σ is estimated from the K prompts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SigmaEstimate {
    /// √(Σ(cₖ − μ)² / K), Algorithm 1 of the paper. Default.
    #[default]
    Population,
    /// √(Σ(cₖ − μ)² / (K − 1)), `torch.std` as in the authors' code.
    Unbiased,
}

impl PromptGaussian {
    /// Fits μ, σ (population) to K encoded prompts `c` `[K, 77, H]`. With K = 1 (Textual
    /// Inversion) σ = 0.
    pub fn fit(c: Tensor<3>) -> Self {
        Self::fit_with(c, SigmaEstimate::Population)
    }

    /// Fits μ, σ with the given σ estimate.
    pub fn fit_with(c: Tensor<3>, estimate: SigmaEstimate) -> Self {
        let [k, l, h] = c.dims();
        let mu = c.clone().mean_dim(0);
        let denom = match estimate {
            SigmaEstimate::Population => k as f32,
            SigmaEstimate::Unbiased => (k.max(2) - 1) as f32,
        };
        // The variance is floored at 1e-20 before the square root: positions every prompt
        // shares (BOS) have σ = 0 exactly, where √ has an infinite derivative.
        let sigma = if k == 1 {
            mu.zeros_like()
        } else {
            ((c - mu.clone()).powi_scalar(2).sum_dim(0) / denom).clamp_min(1e-20).sqrt()
        };
        Self { mu: mu.reshape([l, h]), sigma: sigma.reshape([l, h]) }
    }

    /// Samples c̃ = μ + γ·ω⊙σ for standard-normal `omega` `[N, 77, H]` (γ = 0 gives μ).
    pub fn sample(&self, omega: Tensor<3>, gamma: f32) -> Tensor<3> {
        let [n, l, h] = omega.dims();
        let mu = self.mu.clone().unsqueeze::<3>().expand([n, l, h]);
        mu + omega * self.sigma.clone().unsqueeze::<3>() * gamma
    }

    /// Mixes distributions (paper eq. 7): μ* = Σ αᵢμᵢ and σ* by `rule`. The weights must be
    /// non-negative with a positive sum; they are normalised to sum to 1.
    pub fn mix(parts: &[(&PromptGaussian, f32)], rule: MixRule) -> Result<Self> {
        let alphas = normalise_weights(&parts.iter().map(|p| p.1).collect::<Vec<_>>())?;
        let mut mu = None::<Tensor<2>>;
        let mut sigma = None::<Tensor<2>>;
        for ((g, _), a) in parts.iter().zip(&alphas) {
            let m = g.mu.clone() * *a;
            let s = match rule {
                MixRule::Paper => g.sigma.clone() * a.sqrt(),
                MixRule::Authors => (g.sigma.clone() * *a).powi_scalar(2),
            };
            mu = Some(match mu {
                Some(x) => x + m,
                None => m,
            });
            sigma = Some(match sigma {
                Some(x) => x + s,
                None => s,
            });
        }
        let (mu, mut sigma) = (mu.expect("non-empty"), sigma.expect("non-empty"));
        if rule == MixRule::Authors {
            sigma = sigma.sqrt();
        }
        Ok(Self { mu, sigma })
    }
}

/// How σ of a mixture is formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum MixRule {
    /// σ* = Σ √αᵢ·σᵢ (paper, eq. 7). Default.
    #[default]
    Paper,
    /// σ* = √(Σ (αᵢσᵢ)²) (the authors' code).
    Authors,
}

/// Checks mixing weights and normalises them to sum to 1.
pub fn normalise_weights(w: &[f32]) -> Result<Vec<f32>> {
    if w.is_empty() {
        return Err(Error::Invalid("mixing needs at least one distribution".into()));
    }
    if w.iter().any(|a| !a.is_finite() || *a < 0.0) {
        return Err(Error::Invalid(format!("mixing weights must be finite and non-negative, got {w:?}")));
    }
    let sum: f32 = w.iter().sum();
    if sum <= 0.0 {
        return Err(Error::Invalid(format!("mixing weights must not all be zero, got {w:?}")));
    }
    Ok(w.iter().map(|a| a / sum).collect())
}

/// Which features of each prompt the orthogonality loss compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OrthoFeatures {
    /// The EOS token's output features `[H]` (as the authors' code). Default.
    #[default]
    Eos,
    /// The whole flattened output `[77·H]`.
    Flat,
}

/// The form of the orthogonality loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OrthoForm {
    /// 1/(K(K−1)) Σ_{i<j} |cos(fᵢ, fⱼ)| (the paper's text). Default.
    #[default]
    AbsPairs,
    /// 1/(K(K−1)) Σ_{i≠j} cos²(fᵢ, fⱼ) (the authors' code).
    SquaredOrdered,
}

/// L_ortho = 1/(K(K−1)) Σ_{i<j} |cos(fᵢ, fⱼ)| over the prompts' features (zero when K = 1).
pub fn ortho_loss(c: Tensor<3>, eos: usize, features: OrthoFeatures) -> Tensor<1> {
    ortho_loss_with(c, eos, features, OrthoForm::AbsPairs)
}

/// The orthogonality loss in the given form.
pub fn ortho_loss_with(c: Tensor<3>, eos: usize, features: OrthoFeatures, form: OrthoForm) -> Tensor<1> {
    let [k, l, h] = c.dims();
    let f: Tensor<2> = match features {
        OrthoFeatures::Eos => c.slice([0..k, eos..eos + 1]).reshape([k, h]),
        OrthoFeatures::Flat => c.reshape([k, l * h]),
    };
    let norm = sum_last(f.clone().powi_scalar(2)).sqrt().clamp_min(1e-12);
    let f = f / norm;
    let cos = f.clone().matmul(f.transpose());
    if k < 2 {
        return cos.sum() * 0.0;
    }
    let off_diag: Vec<f32> = (0..k * k).map(|i| if i / k == i % k { 0.0 } else { 1.0 }).collect();
    let mask = crate::backend::tensor(off_diag, [k, k], &cos.device());
    match form {
        // Σ over i≠j of |cos| is twice Σ_{i<j}.
        OrthoForm::AbsPairs => (cos.abs() * mask).sum() / (2 * k * (k - 1)) as f32,
        OrthoForm::SquaredOrdered => (cos.powi_scalar(2) * mask).sum() / (k * (k - 1)) as f32,
    }
}
