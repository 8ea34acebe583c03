//! Parity with the reference implementations: runs each component on inputs saved by
//! `scripts/fixtures/make_fixtures.py` (or `full_size_parity.py`) and compares with the saved
//! outputs, activations and gradients. Used by `tests/suite/parity.rs` and `dreamdist parity`.
use std::collections::HashMap;

use burn::tensor::Tensor;
use safetensors::{Dtype, SafeTensors};
use serde::Serialize;

use crate::backend::{read, tensor};
use crate::model::StableDiffusion;
use crate::model::nn::timestep_embedding;
use crate::tokenizer::MAX_LEN;
use crate::{Error, Result};

/// One compared tensor.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// Name of the reference tensor.
    pub name: String,
    /// max |ours − reference|.
    pub max_abs: f32,
    /// max |ours − reference| / max |reference|.
    pub max_rel: f32,
}

/// Reference tensors by name (F32 as f32 values, I64 as integers).
pub struct Io {
    floats: HashMap<String, (Vec<usize>, Vec<f32>)>,
    ints: HashMap<String, Vec<i64>>,
}

impl Io {
    /// Parses an io safetensors file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| Error::Invalid(format!("io file: {e}")))?;
        let (mut floats, mut ints) = (HashMap::new(), HashMap::new());
        for (name, v) in st.tensors() {
            let d = v.data();
            match v.dtype() {
                Dtype::F32 => {
                    let vals = d.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
                    floats.insert(name, (v.shape().to_vec(), vals));
                }
                Dtype::I64 => {
                    ints.insert(name, d.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect());
                }
                other => return Err(Error::Invalid(format!("io file: {name} has unsupported dtype {other:?}"))),
            }
        }
        Ok(Self { floats, ints })
    }

    /// Whether a float tensor exists.
    pub fn has(&self, name: &str) -> bool {
        self.floats.contains_key(name)
    }

    fn float(&self, name: &str) -> Result<&(Vec<usize>, Vec<f32>)> {
        self.floats.get(name).ok_or_else(|| Error::Invalid(format!("io file has no float tensor {name}")))
    }

    fn tensor<const D: usize>(&self, name: &str, device: &burn::tensor::Device) -> Result<Tensor<D>> {
        let (shape, v) = self.float(name)?;
        let shape: [usize; D] =
            shape.clone().try_into().map_err(|_| Error::Invalid(format!("{name}: expected rank {D}")))?;
        Ok(tensor(v.clone(), shape, device))
    }

    fn int(&self, name: &str) -> Result<&Vec<i64>> {
        self.ints.get(name).ok_or_else(|| Error::Invalid(format!("io file has no int tensor {name}")))
    }
}

/// Compares `ours` with the reference `name`.
pub fn compare(io: &Io, name: &str, ours: &[f32]) -> Result<Check> {
    let (_, reference) = io.float(name)?;
    if reference.len() != ours.len() {
        return Err(Error::Invalid(format!("{name}: {} values, reference has {}", ours.len(), reference.len())));
    }
    let max_ref = reference.iter().fold(0f32, |m, x| m.max(x.abs())).max(f32::MIN_POSITIVE);
    let max_abs = ours.iter().zip(reference).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    Ok(Check { name: name.into(), max_abs, max_rel: max_abs / max_ref })
}

/// Compares `t` with the reference `name` when the io file has it (intermediate activations
/// are optional: the full-size script saves only inputs and outputs).
async fn check<const D: usize>(io: &Io, name: &str, t: Tensor<D>, out: &mut Vec<Check>) -> Result<()> {
    if !io.has(name) {
        return Ok(());
    }
    let values = read(t).await?;
    out.push(compare(io, name, &values)?);
    Ok(())
}

/// Compares `t` with the reference `name`, reported as `label`.
async fn check_as<const D: usize>(io: &Io, name: &str, label: &str, t: Tensor<D>, out: &mut Vec<Check>) -> Result<()> {
    let values = read(t).await?;
    let mut c = compare(io, name, &values)?;
    c.name = label.to_string();
    out.push(c);
    Ok(())
}

/// Text encoder: token embeddings, last hidden state, and d(Σ out·R)/d(token embeddings),
/// the gradient both from one autodiff graph and from the block-wise walk.
pub async fn text_encoder(sd: &StableDiffusion, io: &Io) -> Result<Vec<Check>> {
    let device = sd.device();
    let ids = io.int("text.input_ids")?;
    let ids: Vec<Vec<u32>> = ids.chunks(MAX_LEN).map(|s| s.iter().map(|&i| i as u32).collect()).collect();
    let mut out = vec![];
    check(io, "text.token_embeds", sd.text.embed_tokens(&ids, &device)?, &mut out).await?;
    check(io, "text.last_hidden_state", sd.text.forward(&ids, &device)?, &mut out).await?;
    if io.has("text.grad_R") {
        let emb = io.tensor::<3>("text.token_embeds", &device)?;
        let r = io.tensor::<3>("text.grad_R", &device)?;
        let leaf = emb.clone().autodiff().require_grad();
        let grads = (sd.text.forward_embeds(leaf.clone()) * r.clone()).sum().backward();
        let g = leaf.grad(&grads).ok_or_else(|| Error::Device("no gradient".into()))?;
        check(io, "text.grad_token_embeds", g, &mut out).await?;
        let (_, g) = sd.text.embeds_vjp(emb, |_| r, &mut ())?;
        check_as(io, "text.grad_token_embeds", "text.grad_token_embeds (block-wise)", g, &mut out).await?;
    }
    Ok(out)
}

/// UNet: timestep embeddings, activations, output, and d(Σ out·R)/d(encoder_hidden_states).
pub async fn unet(sd: &StableDiffusion, io: &Io) -> Result<Vec<Check>> {
    let device = sd.device();
    let ts: Vec<f32> = io.int("unet.timesteps")?.iter().map(|&t| t as f32).collect();
    let x = io.tensor::<4>("unet.sample", &device)?;
    let ctx = io.tensor::<3>("unet.encoder_hidden_states", &device)?;
    let c0 = sd.spec.unet.block_out_channels[0];
    let mut out = vec![];
    if io.has("unet.t_emb") {
        out.push(compare(io, "unet.t_emb", &timestep_embedding(&ts, c0, true, 0.0))?);
    }
    if io.has("unet.float_timesteps") {
        let fts = io.float("unet.float_timesteps")?.1.clone();
        if io.has("unet.float_t_emb") {
            out.push(compare(io, "unet.float_t_emb", &timestep_embedding(&fts, c0, true, 0.0))?);
        }
        check(io, "unet.float_emb", sd.unet.time_embedding(&fts, &device), &mut out).await?;
    }
    let (y, trace) = sd.unet.forward_traced(x.clone(), &ts, &ctx);
    check(io, "unet.emb", trace.temb, &mut out).await?;
    check(io, "unet.conv_in", trace.conv_in, &mut out).await?;
    for (i, d) in trace.down.into_iter().enumerate() {
        check(io, &format!("unet.down_blocks.{i}"), d, &mut out).await?;
    }
    check(io, "unet.mid_block", trace.mid, &mut out).await?;
    check(io, "unet.out", y, &mut out).await?;
    if io.has("unet.grad_R") {
        let c = ctx.clone().autodiff().require_grad();
        let r = io.tensor::<4>("unet.grad_R", &device)?;
        let grads = (sd.unet.forward(x.clone().autodiff(), &ts, &c) * r.clone()).sum().backward();
        let g = c.grad(&grads).ok_or_else(|| Error::Device("no gradient".into()))?;
        check(io, "unet.grad_encoder_hidden_states", g, &mut out).await?;
        let (_, g) = sd.unet.context_vjp(x, &ts, ctx, |_| r, &sd.plan, &mut ())?;
        check_as(io, "unet.grad_encoder_hidden_states", "unet.grad_encoder_hidden_states (block-wise)", g, &mut out)
            .await?;
    }
    Ok(out)
}

/// VAE: posterior mean / log-variance of an image, scaled latent, and a decode.
pub async fn vae(sd: &StableDiffusion, io: &Io) -> Result<Vec<Check>> {
    let device = sd.device();
    let mut out = vec![];
    let post = sd.vae.encode(io.tensor::<4>("vae.image", &device)?);
    check(io, "vae.posterior_mean", post.mean.clone(), &mut out).await?;
    check(io, "vae.posterior_logvar", post.logvar.clone(), &mut out).await?;
    check(io, "vae.scaled_latent", post.mean * sd.vae.scaling_factor, &mut out).await?;
    check(io, "vae.decoded", sd.vae.decode(io.tensor::<4>("vae.decode_input", &device)?), &mut out).await?;
    Ok(out)
}

/// All three components.
pub async fn all(sd: &StableDiffusion, io: &Io) -> Result<Vec<Check>> {
    let mut out = text_encoder(sd, io).await?;
    out.extend(unet(sd, io).await?);
    out.extend(vae(sd, io).await?);
    Ok(out)
}
