//! The DreamDistribution method: prompt set, Gaussian, sampling, mixing, file format.
pub mod file;
pub mod gaussian;
pub mod prompt;

pub use gaussian::{MixRule, OrthoFeatures, PromptGaussian, ortho_loss};
pub use prompt::{PromptLayout, Template};
