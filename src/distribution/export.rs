//! Exports for the tools people already use, and the 2-D view of a distribution.
//!
//! - **Textual-inversion embeddings** as AUTOMATIC1111 and ComfyUI load them: a safetensors file
//!   with one tensor `emb_params` `[M, hidden]` (the learned token embeddings of one prompt; a
//!   Textual-Inversion run has exactly one). For SD 2.x models (hidden 1024).
//! - **diffusers-ready Gaussian**: a safetensors file with `mu` and `sigma`, each
//!   `[1, 77, hidden]` (the shape of `prompt_embeds`), to sample `mu + γ·randn·sigma` and pass it
//!   as `prompt_embeds` (see docs/EXPORTS.md for the Python).
//! - **PCA** of the K prompts' EOS features with sampled points, for the classroom view.
use std::collections::HashMap;

use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde::Serialize;

use super::file::DistFile;
use crate::{Error, Result};

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn st_err(e: safetensors::SafeTensorError) -> Error {
    Error::Invalid(format!("writing safetensors: {e}"))
}

/// Prompt `index`'s learned embeddings as an A1111 / ComfyUI textual-inversion file.
pub fn textual_inversion_file(file: &DistFile, index: usize) -> Result<Vec<u8>> {
    if index >= file.k {
        return Err(Error::Invalid(format!("prompt {index} does not exist (K = {})", file.k)));
    }
    let n = file.m * file.hidden;
    let data = f32_bytes(&file.prompts[index * n..(index + 1) * n]);
    let meta = HashMap::from([
        ("name".to_string(), format!("{} #{index}", file.name)),
        ("model".to_string(), file.model.id.clone()),
        ("source".to_string(), format!("dreamdist {}", env!("CARGO_PKG_VERSION"))),
    ]);
    let t = TensorView::new(Dtype::F32, vec![file.m, file.hidden], &data).map_err(st_err)?;
    safetensors::serialize(vec![("emb_params", t)], Some(meta)).map_err(st_err)
}

/// μ and σ `[77, hidden]` (host values) as a diffusers-ready file (`[1, 77, hidden]` each).
pub fn diffusers_file(mu: &[f32], sigma: &[f32], hidden: usize, template: &str, model: &str) -> Result<Vec<u8>> {
    let len = mu.len() / hidden.max(1);
    if mu.len() != sigma.len() || mu.len() != len * hidden {
        return Err(Error::Invalid("μ and σ must have the same [77, hidden] shape".into()));
    }
    let (m, s) = (f32_bytes(mu), f32_bytes(sigma));
    let meta = HashMap::from([
        ("template".to_string(), template.to_string()),
        ("model".to_string(), model.to_string()),
        ("usage".to_string(), "prompt_embeds = mu + gamma * randn_like(sigma) * sigma".to_string()),
    ]);
    let tm = TensorView::new(Dtype::F32, vec![1, len, hidden], &m).map_err(st_err)?;
    let ts = TensorView::new(Dtype::F32, vec![1, len, hidden], &s).map_err(st_err)?;
    safetensors::serialize(vec![("mu", tm), ("sigma", ts)], Some(meta)).map_err(st_err)
}

/// A 2-D projection of prompt features and sampled points.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Projection {
    /// One (x, y) per prompt.
    pub prompts: Vec<[f32; 2]>,
    /// One (x, y) per sampled point.
    pub samples: Vec<[f32; 2]>,
    /// Share of the prompts' variance along each axis.
    pub explained: [f32; 2],
}

/// Projects `prompts` (K rows of `dim`) and `samples` (rows of `dim`) on the two principal axes
/// of the prompts (power iteration on the K×K Gram matrix of the centred prompts).
pub fn pca(prompts: &[f32], samples: &[f32], dim: usize) -> Result<Projection> {
    let k = prompts.len() / dim.max(1);
    if k < 2 || prompts.len() != k * dim || !samples.len().is_multiple_of(dim) {
        return Err(Error::Invalid("PCA needs at least two prompts of the same width".into()));
    }
    let mean: Vec<f64> =
        (0..dim).map(|j| (0..k).map(|i| prompts[i * dim + j] as f64).sum::<f64>() / k as f64).collect();
    let centred: Vec<Vec<f64>> =
        (0..k).map(|i| (0..dim).map(|j| prompts[i * dim + j] as f64 - mean[j]).collect()).collect();
    let mut gram = vec![vec![0f64; k]; k];
    for a in 0..k {
        for b in 0..k {
            gram[a][b] = centred[a].iter().zip(&centred[b]).map(|(x, y)| x * y).sum();
        }
    }
    let total: f64 = (0..k).map(|i| gram[i][i]).sum::<f64>().max(1e-30);
    let mut axes: Vec<Vec<f64>> = vec![];
    let mut lambdas = [0f64; 2];
    for (n, lambda) in lambdas.iter_mut().enumerate() {
        // Power iteration on the deflated Gram matrix.
        let mut v: Vec<f64> = (0..k).map(|i| 1.0 + (i * (n + 3)) as f64 * 0.01).collect();
        for _ in 0..500 {
            let mut w: Vec<f64> = (0..k).map(|a| (0..k).map(|b| gram[a][b] * v[b]).sum()).collect();
            for prev in &axes {
                let d: f64 = w.iter().zip(prev).map(|(x, y)| x * y).sum();
                for (x, y) in w.iter_mut().zip(prev) {
                    *x -= d * y;
                }
            }
            let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm < 1e-30 {
                break;
            }
            v = w.iter().map(|x| x / norm).collect();
        }
        *lambda = (0..k).map(|a| v[a] * (0..k).map(|b| gram[a][b] * v[b]).sum::<f64>()).sum::<f64>().max(0.0);
        axes.push(v);
    }
    // Principal directions in feature space: uᵢ = Xᵀvᵢ / √λᵢ.
    let dirs: Vec<Vec<f64>> = axes
        .iter()
        .zip(lambdas)
        .map(|(v, l)| {
            let s = l.sqrt().max(1e-30);
            (0..dim).map(|j| (0..k).map(|i| centred[i][j] * v[i]).sum::<f64>() / s).collect()
        })
        .collect();
    let project = |row: &[f32]| -> [f32; 2] {
        let p = |d: &Vec<f64>| row.iter().zip(&mean).zip(d).map(|((x, m), u)| (*x as f64 - m) * u).sum::<f64>() as f32;
        [p(&dirs[0]), p(&dirs[1])]
    };
    Ok(Projection {
        prompts: prompts.chunks(dim).map(project).collect(),
        samples: samples.chunks(dim).map(project).collect(),
        explained: [(lambdas[0] / total) as f32, (lambdas[1] / total) as f32],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pca_finds_the_main_axes() {
        // Points along (1, 1, 0) with a little (0, 0, 1).
        let pts: Vec<f32> = (0..8).flat_map(|i| [i as f32, i as f32, (i % 2) as f32 * 0.1]).collect();
        let p = pca(&pts, &[0.0, 0.0, 0.0], 3).unwrap();
        assert!(p.explained[0] > 0.99, "{:?}", p.explained);
        let xs: Vec<f32> = p.prompts.iter().map(|q| q[0]).collect();
        assert!(xs.windows(2).all(|w| (w[1] - w[0]).abs() > 1.0), "{xs:?}");
        assert_eq!(p.samples.len(), 1);
    }

    #[test]
    fn textual_inversion_file_has_emb_params() {
        let f = DistFile {
            name: "x".into(),
            k: 2,
            m: 3,
            hidden: 4,
            prompts: (0..24).map(|i| i as f32).collect(),
            model: super::super::file::ModelId {
                id: "tiny".into(),
                hidden_size: 4,
                text_encoder_sha256: String::new(),
                identity: None,
            },
            train: super::super::file::TrainInfo {
                steps: 1,
                lr: 0.1,
                samples: 1,
                lambda: 0.0,
                resolution: 64,
                seed: 0,
                ortho: "eos".into(),
                template: "{}".into(),
                mode: "dreamdistribution".into(),
                recipe: None,
            },
            loss_curve: vec![],
            created_by: String::new(),
            precision: super::super::file::Precision::F32,
            optimizer: None,
            reference_thumbnails: vec![],
        };
        let b = textual_inversion_file(&f, 1).unwrap();
        let st = safetensors::SafeTensors::deserialize(&b).unwrap();
        let t = st.tensor("emb_params").unwrap();
        assert_eq!(t.shape(), [3, 4]);
        assert_eq!(f32::from_le_bytes(t.data()[..4].try_into().unwrap()), 12.0);
        assert!(textual_inversion_file(&f, 2).is_err());
    }
}
