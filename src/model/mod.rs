//! The frozen Stable Diffusion 2.1 networks as burn modules, in diffusers/transformers layout.
//! Each has a config with `sd21()`, `sd21_base()` and `tiny()` constructors.
pub mod clip;
pub mod nn;
pub mod unet;
pub mod vae;

pub use clip::{ClipConfig, ClipTextEncoder};
pub use unet::{Prediction, UNet, UNetConfig};
pub use vae::{Vae, VaeConfig};

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::weights::{RandomSource, Vb};

/// Which Stable Diffusion model: its id (stored in `.ddist` files) and its component configs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Identifier: `sd21`, `sd21-base` or `tiny`.
    pub id: String,
    /// Text encoder.
    pub clip: ClipConfig,
    /// UNet.
    pub unet: UNetConfig,
    /// VAE.
    pub vae: VaeConfig,
}

impl ModelSpec {
    /// SD 2.1 (768 px, v-prediction).
    pub fn sd21() -> Self {
        Self { id: "sd21".into(), clip: ClipConfig::sd21(), unet: UNetConfig::sd21(), vae: VaeConfig::sd21() }
    }
    /// SD 2.1-base (512 px, epsilon).
    pub fn sd21_base() -> Self {
        Self {
            id: "sd21-base".into(),
            clip: ClipConfig::sd21_base(),
            unet: UNetConfig::sd21_base(),
            vae: VaeConfig::sd21_base(),
        }
    }
    /// The tiny fixture model.
    pub fn tiny() -> Self {
        Self { id: "tiny".into(), clip: ClipConfig::tiny(), unet: UNetConfig::tiny(), vae: VaeConfig::tiny() }
    }
    /// The spec for an id.
    pub fn from_id(id: &str) -> Result<Self> {
        match id {
            "sd21" => Ok(Self::sd21()),
            "sd21-base" => Ok(Self::sd21_base()),
            "tiny" => Ok(Self::tiny()),
            _ => Err(crate::Error::Invalid(format!("unknown model {id:?} (expected sd21, sd21-base or tiny)"))),
        }
    }
    /// Native image side (latent side × VAE downscale).
    pub fn native_resolution(&self) -> usize {
        self.unet.sample_size * self.vae.downscale()
    }
}

/// The three frozen networks of a Stable Diffusion model.
#[derive(Debug)]
pub struct StableDiffusion {
    /// The model spec.
    pub spec: ModelSpec,
    /// Text encoder.
    pub text: ClipTextEncoder,
    /// UNet.
    pub unet: UNet,
    /// VAE.
    pub vae: Vae,
    /// SHA-256 (hex) of the text encoder weights, "" when unknown (random weights).
    pub text_encoder_sha256: String,
}

impl StableDiffusion {
    /// The architecture with random weights (shapes and memory are real).
    pub fn random(spec: ModelSpec, device: &Device, seed: u64) -> Self {
        let text = ClipTextEncoder::new(&Vb::new(RandomSource::new(seed), device), &spec.clip);
        let unet = UNet::new(&Vb::new(RandomSource::new(seed + 1), device), &spec.unet);
        let vae = Vae::new(&Vb::new(RandomSource::new(seed + 2), device), &spec.vae);
        Self { spec, text, unet, vae, text_encoder_sha256: String::new() }
    }

    /// Loads the three components from safetensors bytes (diffusers / transformers layout).
    pub fn from_bytes(spec: ModelSpec, text: Vec<u8>, unet: Vec<u8>, vae: Vec<u8>, device: &Device) -> Result<Self> {
        use crate::weights::load_from_bytes;
        let text_encoder_sha256 = crate::weights::sha256_hex(&text);
        let ctx = |what: &'static str| move |e: crate::Error| crate::Error::Weights(format!("{what}: {e}"));
        let t = load_from_bytes(text, ClipConfig::key_rewrites(), device, |vb| ClipTextEncoder::new(vb, &spec.clip))
            .map_err(ctx("text encoder"))?;
        let u = load_from_bytes(unet, &[], device, |vb| UNet::new(vb, &spec.unet)).map_err(ctx("unet"))?;
        let v = load_from_bytes(vae, VaeConfig::key_rewrites(), device, |vb| Vae::new(vb, &spec.vae))
            .map_err(ctx("vae"))?;
        Ok(Self { spec, text: t, unet: u, vae: v, text_encoder_sha256 })
    }

    /// Native: loads a diffusers-layout directory (`text_encoder/model.safetensors`,
    /// `unet/diffusion_pytorch_model.safetensors`, `vae/diffusion_pytorch_model.safetensors`),
    /// or flat `text_encoder.safetensors`, `unet.safetensors`, `vae.safetensors`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_dir(spec: ModelSpec, dir: &std::path::Path, device: &Device) -> Result<Self> {
        let find = |nested: &str, flat: &str| -> Result<Vec<u8>> {
            let candidates = [dir.join(nested), dir.join(flat)];
            let path = candidates.iter().find(|p| p.exists()).ok_or_else(|| {
                crate::Error::Weights(format!(
                    "neither {} nor {} exists",
                    candidates[0].display(),
                    candidates[1].display()
                ))
            })?;
            std::fs::read(path).map_err(|e| crate::Error::io(format!("reading {}", path.display()), e))
        };
        let text = find("text_encoder/model.safetensors", "text_encoder.safetensors")?;
        let unet = find("unet/diffusion_pytorch_model.safetensors", "unet.safetensors")?;
        let vae = find("vae/diffusion_pytorch_model.safetensors", "vae.safetensors")?;
        Self::from_bytes(spec, text, unet, vae, device)
    }
}

impl StableDiffusion {
    /// SHA-256 over every parameter's values of the three networks, in module order (used to
    /// prove that training leaves the networks bit-identical).
    pub async fn weights_fingerprint(&self) -> Result<String> {
        use burn::module::{Module, ModuleVisitor, Param};
        use burn::tensor::Tensor;
        #[derive(Default)]
        struct Collect(Vec<Tensor<1>>);
        impl ModuleVisitor for Collect {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let t = param.val();
                let n = t.shape().num_elements();
                self.0.push(t.reshape([n]));
            }
        }
        let mut c = Collect::default();
        self.text.visit(&mut c);
        self.unet.visit(&mut c);
        self.vae.visit(&mut c);
        let mut bytes = Vec::new();
        for t in c.0 {
            for v in crate::backend::read(t).await? {
                bytes.extend(v.to_le_bytes());
            }
        }
        Ok(crate::weights::sha256_hex(&bytes))
    }
}
