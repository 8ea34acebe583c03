//! The DreamDistribution method: prompt set, Gaussian, sampling, mixing, file format.
pub mod export;
pub mod file;
pub mod gaussian;
pub mod prompt;

pub use gaussian::{MixRule, OrthoFeatures, OrthoForm, PromptGaussian, SigmaEstimate, ortho_loss, ortho_loss_with};
pub use prompt::fit_gaussian;
pub use prompt::{PromptLayout, Template};
