//! The frozen Stable Diffusion 2.1 networks as burn modules, in diffusers/transformers layout.
//! Each has a config with `sd21()`, `sd21_base()`, `tiny()` and `demo()` constructors.
#[cfg(not(target_arch = "wasm32"))]
/// Defines `$name` calling the `#[inline(always)]` kernel `$imp` from a copy compiled for
/// AVX-512 or AVX2 where the CPU has them (picked at run time; the binary targets baseline
/// x86-64, whose 4-wide SSE2 halves the speed of these loops). The kernel must be a plain
/// function: a closure is not inlined into the copies, so it would stay SSE2.
macro_rules! wide_fn {
    ($(#[$doc:meta])* fn $name:ident = $imp:ident($($arg:ident: $ty:ty),* $(,)?)) => {
        $(#[$doc])*
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn v512($($arg: $ty),*) {
                    $imp($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn v256($($arg: $ty),*) {
                    $imp($($arg),*)
                }
                // SAFETY: each copy runs only where the CPU reports its instruction set.
                if std::arch::is_x86_feature_detected!("avx512f") {
                    return unsafe { v512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    return unsafe { v256($($arg),*) };
                }
            }
            $imp($($arg),*)
        }
    };
}

pub mod clip;
#[cfg(not(target_arch = "wasm32"))]
pub mod host_attention;
#[cfg(not(target_arch = "wasm32"))]
pub mod host_resnet;
pub mod nn;
pub mod reduce;
pub mod tape;
pub mod unet;
pub mod vae;

pub use clip::{ClipConfig, ClipTextEncoder};
pub use unet::{Prediction, UNet, UNetConfig};
pub use vae::{Vae, VaeConfig};

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

pub use nn::MemPlan;

use crate::weights::{RandomSource, Vb};
use crate::{Error, Result};

/// Which Stable Diffusion model: its id (stored in `.ddist` files) and its component configs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Identifier: `sd21`, `sd21-base`, `tiny` or `demo`.
    pub id: String,
    /// Text encoder.
    pub clip: ClipConfig,
    /// UNet.
    pub unet: UNetConfig,
    /// VAE.
    pub vae: VaeConfig,
}

/// The demo model's latent scaling factor (1 / std of its training latents, measured by the
/// training script and recorded in its VAE config).
pub const DEMO_SCALING_FACTOR: f32 = 0.488_115_3;

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
    /// The demo model: the same architecture family, small, trained from scratch on the
    /// procedural scenes of [`crate::demo`] (32×32 images, 16×16 latents) by
    /// `scripts/demo/train_demo.py`. Ships with the page.
    pub fn demo() -> Self {
        Self {
            id: "demo".into(),
            clip: ClipConfig {
                vocab_size: 49408,
                hidden_size: 64,
                intermediate_size: 256,
                num_heads: 4,
                num_layers: 3,
                max_position: 77,
                activation: clip::Activation::Gelu,
                layer_norm_eps: 1e-5,
            },
            unet: UNetConfig {
                in_channels: 4,
                out_channels: 4,
                block_out_channels: vec![32, 64, 128],
                cross_attention: vec![false, true, true],
                heads: vec![1, 2, 4],
                layers_per_block: 1,
                cross_attention_dim: 64,
                norm_num_groups: 32,
                norm_eps: 1e-5,
                upcast_attention: false,
                sample_size: 16,
                prediction: Prediction::VPrediction,
            },
            vae: VaeConfig {
                block_out_channels: vec![32, 64],
                layers_per_block: 1,
                latent_channels: 4,
                norm_num_groups: 32,
                scaling_factor: DEMO_SCALING_FACTOR,
            },
        }
    }
    /// The spec for an id.
    pub fn from_id(id: &str) -> Result<Self> {
        match id {
            "sd21" => Ok(Self::sd21()),
            "sd21-base" => Ok(Self::sd21_base()),
            "tiny" => Ok(Self::tiny()),
            "demo" => Ok(Self::demo()),
            _ => Err(Error::Invalid(format!("unknown model {id:?} (expected sd21, sd21-base, tiny or demo)"))),
        }
    }
    /// Native image side (latent side × VAE downscale).
    pub fn native_resolution(&self) -> usize {
        self.unet.sample_size * self.vae.downscale()
    }
    /// Image sides must be multiples of this (the VAE's downscale times the UNet's levels).
    pub fn size_multiple(&self) -> usize {
        self.vae.downscale() * self.unet.latent_multiple()
    }
    /// Checks an image side before any work starts.
    pub fn check_size(&self, size: usize) -> Result<()> {
        let m = self.size_multiple();
        let max = 4 * self.native_resolution().max(512);
        if size == 0 || !size.is_multiple_of(m) || size > max {
            return Err(Error::Invalid(format!(
                "image size {size} px does not work with {}: it must be a multiple of {m} px between {m} and {max} \
                 (the autoencoder downsamples by {} and the UNet halves the latent {} times); try {}",
                self.id,
                self.vae.downscale(),
                self.unet.block_out_channels.len() - 1,
                (size.max(m) / m * m).min(max)
            )));
        }
        Ok(())
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
    /// Canonical identity of the text encoder (see [`crate::weights::identity`]).
    pub identity: String,
    /// SHA-256 of the text encoder's safetensors file, when loaded from one (the identity
    /// `.ddist` files of format 1 recorded).
    pub legacy_text_sha256: Option<String>,
    /// How large intermediate tensors may grow on this device.
    pub plan: MemPlan,
    /// What each component keeps, measured while the model was built.
    pub resident: Resident,
}

/// The memory a built model keeps, per component: bytes on the device (the growth of burn's
/// memory pool while the component was built: its weights as stored there, q8 packed or f32,
/// with the pool's rounding; `None` on backends without a pool, such as the CPU), and the
/// host-side token-embedding table, which never goes to the device.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Resident {
    /// Text encoder on the device (without the token-embedding table).
    pub text_encoder: Option<u64>,
    /// UNet on the device.
    pub unet: Option<u64>,
    /// VAE on the device.
    pub vae: Option<u64>,
    /// The token-embedding table, in host memory.
    pub host_token_table: u64,
}

impl Resident {
    /// Device bytes of the three components, when the backend reports them.
    pub fn device_total(&self) -> Option<u64> {
        Some(self.text_encoder? + self.unet? + self.vae?)
    }
}

/// Runs `build` and returns what it added to `device`'s memory pool.
fn measured<T>(device: &Device, build: impl FnOnce() -> T) -> (T, Option<u64>) {
    let in_use = crate::backend::pool_bytes_in_use;
    let before = in_use(device);
    let out = build();
    (out, in_use(device).zip(before).map(|(after, before)| after.saturating_sub(before)))
}

impl StableDiffusion {
    /// The architecture with random weights (shapes and memory are real).
    pub fn random(spec: ModelSpec, device: &Device, seed: u64) -> Self {
        let (text, t) =
            measured(device, || ClipTextEncoder::new(&Vb::new(RandomSource::new(seed), device), &spec.clip));
        let (unet, u) = measured(device, || UNet::new(&Vb::new(RandomSource::new(seed + 1), device), &spec.unet));
        let (vae, v) = measured(device, || Vae::new(&Vb::new(RandomSource::new(seed + 2), device), &spec.vae));
        let identity = Self::identity_of(&spec, &text);
        let resident = Self::resident_of(&text, t, u, v);
        Self { spec, text, unet, vae, identity, legacy_text_sha256: None, plan: MemPlan::default(), resident }
    }

    fn resident_of(text: &ClipTextEncoder, t: Option<u64>, u: Option<u64>, v: Option<u64>) -> Resident {
        Resident { text_encoder: t, unet: u, vae: v, host_token_table: text.token_table().bytes.len() as u64 }
    }

    fn identity_of(spec: &ModelSpec, text: &ClipTextEncoder) -> String {
        crate::weights::identity::of_table(&spec.clip, text.token_table()).unwrap_or_default()
    }

    /// Loads the three components from safetensors bytes (diffusers / transformers layout).
    pub fn from_bytes(spec: ModelSpec, text: Vec<u8>, unet: Vec<u8>, vae: Vec<u8>, device: &Device) -> Result<Self> {
        use crate::weights::load_from_bytes;
        let legacy = crate::weights::sha256_hex(&text);
        let ctx = |what: &'static str| move |e: Error| e.context(what);
        let (t, tb) = measured(device, || {
            load_from_bytes(text, ClipConfig::key_rewrites(), device, |vb| ClipTextEncoder::new(vb, &spec.clip))
        });
        let t = t.map_err(ctx("text encoder"))?;
        let (u, ub) = measured(device, || load_from_bytes(unet, &[], device, |vb| UNet::new(vb, &spec.unet)));
        let u = u.map_err(ctx("unet"))?;
        let (v, vb) =
            measured(device, || load_from_bytes(vae, VaeConfig::key_rewrites(), device, |vb| Vae::new(vb, &spec.vae)));
        let v = v.map_err(ctx("vae"))?;
        let identity = Self::identity_of(&spec, &t);
        let resident = Self::resident_of(&t, tb, ub, vb);
        Ok(Self {
            spec,
            text: t,
            unet: u,
            vae: v,
            identity,
            legacy_text_sha256: Some(legacy),
            plan: MemPlan::default(),
            resident,
        })
    }

    /// Builds the model from a converted model's tensors (all shards ingested).
    pub fn from_manifest_source(src: &mut crate::weights::ManifestSource, device: &Device) -> Result<Self> {
        let m = src.manifest().clone();
        let spec = m.model.clone();
        let (text, t) = measured(device, || {
            let vb = Vb::new(src.component("text_encoder"), device);
            let text = ClipTextEncoder::new(&vb, &spec.clip);
            vb.finish().map(|_| text)
        });
        let text = text?;
        let (unet, u) = measured(device, || {
            let vb = Vb::new(src.component("unet"), device);
            let unet = UNet::new(&vb, &spec.unet);
            vb.finish().map(|_| unet)
        });
        let unet = unet?;
        let (vae, v) = measured(device, || {
            let vb = Vb::new(src.component("vae"), device);
            let vae = Vae::new(&vb, &spec.vae);
            vb.finish().map(|_| vae)
        });
        let vae = vae?;
        // The tensors went to the device as their shards were ingested; building the modules
        // adds what they derive there.
        let on_device = |c: &str, built: Option<u64>| Some(src.device_bytes(c)? + built?);
        let resident =
            Self::resident_of(&text, on_device("text_encoder", t), on_device("unet", u), on_device("vae", v));
        Ok(Self {
            spec,
            text,
            unet,
            vae,
            identity: m.identity.text_encoder,
            legacy_text_sha256: None,
            plan: MemPlan::default(),
            resident,
        })
    }

    /// Native: loads a diffusers-layout directory (`text_encoder/model.safetensors`,
    /// `unet/diffusion_pytorch_model.safetensors`, `vae/diffusion_pytorch_model.safetensors`),
    /// or flat `text_encoder.safetensors`, `unet.safetensors`, `vae.safetensors`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_dir(spec: ModelSpec, dir: &std::path::Path, device: &Device) -> Result<Self> {
        let find = |nested: &str, flat: &str| -> Result<Vec<u8>> {
            let candidates = [dir.join(nested), dir.join(flat)];
            let path = candidates.iter().find(|p| p.exists()).ok_or_else(|| {
                Error::Weights(format!("neither {} nor {} exists", candidates[0].display(), candidates[1].display()))
            })?;
            std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))
        };
        let text = find("text_encoder/model.safetensors", "text_encoder.safetensors")?;
        let unet = find("unet/diffusion_pytorch_model.safetensors", "unet.safetensors")?;
        let vae = find("vae/diffusion_pytorch_model.safetensors", "vae.safetensors")?;
        Self::from_bytes(spec, text, unet, vae, device)
    }

    /// The device the models live on.
    pub fn device(&self) -> Device {
        use burn::module::Module;
        self.unet.devices().into_iter().next().unwrap_or_default()
    }

    /// SHA-256 over every parameter's values of the three networks, in module order, and the
    /// host-side token table (used to prove that training leaves the networks bit-identical).
    pub async fn weights_fingerprint(&self) -> Result<String> {
        use burn::module::{Module, ModuleVisitor, Param};
        use burn::tensor::Tensor;
        #[derive(Default)]
        struct Collect(Vec<Tensor<1>>);
        impl ModuleVisitor for Collect {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let t = param.val();
                let t = if matches!(t.dtype(), burn::tensor::DType::QFloat(_)) { t.dequantize() } else { t };
                let n = t.shape().num_elements();
                self.0.push(t.reshape([n]));
            }
        }
        let mut c = Collect::default();
        self.text.visit(&mut c);
        self.unet.visit(&mut c);
        self.vae.visit(&mut c);
        let mut bytes = self.text.token_table().bytes.to_vec();
        for t in c.0 {
            for v in crate::backend::read(t).await? {
                bytes.extend(v.to_le_bytes());
            }
        }
        Ok(crate::weights::sha256_hex(&bytes))
    }
}
