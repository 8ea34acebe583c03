//! Storage formats of weight tensors in dreamdist's shards, byte-compatible with burn's own
//! quantized layout so shard bytes load straight into `QFloat` tensors
//! (`TensorData::from_bytes(bytes, shape, DType::QFloat(scheme))`, then `Tensor::from_data`).
//!
//! Quantized layout (burn 0.22, `QuantizedBytes`): symmetric per-block quantization along the
//! last axis, values packed into little-endian `u32` words (8-bit: 4 per word, which is the
//! plain `i8` byte order; 4-bit: 8 per word, value `j` in bits `4j..4j+4`, two's complement),
//! then one `f32` scale per block. A value is `q · scale` with `scale = max|x| / qmax` over its
//! block (`qmax` = 127 for 8-bit, 7 for 4-bit).
use burn::tensor::quantization::{QuantScheme, QuantStore, QuantValue};
use burn::tensor::{DType, TensorData};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How a tensor's values are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// Little-endian f32.
    F32,
    /// Little-endian IEEE half.
    F16,
    /// Symmetric 8-bit, one f32 scale per block of `QUANT_BLOCK` values along the last axis.
    Q8,
    /// Symmetric 4-bit, one f32 scale per block of `QUANT_BLOCK` values along the last axis.
    Q4,
}

impl std::fmt::Display for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Storage::F32 => "f32",
            Storage::F16 => "f16",
            Storage::Q8 => "q8",
            Storage::Q4 => "q4",
        })
    }
}

/// A shape in words: `64×320` (a plain count for 1-D).
pub fn shape_text(shape: &[usize]) -> String {
    shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("×")
}

/// Values per scale block.
pub const QUANT_BLOCK: usize = 32;

impl Storage {
    /// Whether the values are quantized.
    pub fn is_quantized(self) -> bool {
        matches!(self, Storage::Q8 | Storage::Q4)
    }

    /// burn's scheme for a quantized storage.
    pub fn scheme(self) -> Option<QuantScheme> {
        let value = match self {
            Storage::Q8 => QuantValue::Q8S,
            Storage::Q4 => QuantValue::Q4S,
            _ => return None,
        };
        Some(
            QuantScheme::default()
                .with_value(value)
                .with_store(QuantStore::PackedU32(0))
                .per_block([QUANT_BLOCK as u8], burn::tensor::quantization::ScaleDtype::F32),
        )
    }

    fn qmax(self) -> f32 {
        match self {
            Storage::Q8 => 127.0,
            Storage::Q4 => 7.0,
            _ => unreachable!("not quantized"),
        }
    }

    /// Whether a tensor of `shape` can use this storage (quantized: the last axis must be a
    /// whole number of blocks).
    pub fn fits(self, shape: &[usize]) -> bool {
        !self.is_quantized() || shape.last().is_some_and(|&d| d > 0 && d % QUANT_BLOCK == 0)
    }

    /// Bytes a tensor of `shape` takes.
    pub fn byte_len(self, shape: &[usize]) -> usize {
        let n: usize = shape.iter().product();
        match self {
            Storage::F32 => 4 * n,
            Storage::F16 => 2 * n,
            Storage::Q8 => n + 4 * (n / QUANT_BLOCK),
            Storage::Q4 => n.div_ceil(8) * 4 + 4 * (n / QUANT_BLOCK),
        }
    }
}

/// Encodes f32 values (row-major, `shape`) in `storage`.
pub fn encode(values: &[f32], shape: &[usize], storage: Storage) -> Result<Vec<u8>> {
    let n: usize = shape.iter().product();
    if values.len() != n {
        return Err(Error::Weights(format!("{} values for shape {}", values.len(), shape_text(shape))));
    }
    if !storage.fits(shape) {
        return Err(Error::Weights(format!(
            "shape {} cannot be stored as {storage} (blocks of {QUANT_BLOCK})",
            shape_text(shape)
        )));
    }
    Ok(match storage {
        Storage::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Storage::F16 => values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
        Storage::Q8 | Storage::Q4 => {
            let qmax = storage.qmax();
            let mut q = Vec::with_capacity(n);
            let mut scales = Vec::with_capacity(n / QUANT_BLOCK);
            for block in values.chunks_exact(QUANT_BLOCK) {
                let peak = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                let scale = if peak > 0.0 && peak.is_finite() { peak / qmax } else { 1.0 };
                scales.push(scale);
                let inv = 1.0 / scale;
                q.extend(block.iter().map(|v| (v * inv).round().clamp(-qmax, qmax) as i8));
            }
            let mut out = match storage {
                Storage::Q8 => q.iter().map(|&v| v as u8).collect::<Vec<u8>>(),
                _ => q
                    .chunks(8)
                    .flat_map(|c| {
                        let mut word = 0u32;
                        for (j, &v) in c.iter().enumerate() {
                            word |= ((v as u8 & 0xF) as u32) << (4 * j);
                        }
                        word.to_le_bytes()
                    })
                    .collect(),
            };
            out.extend(scales.iter().flat_map(|s| s.to_le_bytes()));
            out
        }
    })
}

/// Decodes stored bytes back to f32 values on the host.
pub fn decode(bytes: &[u8], shape: &[usize], storage: Storage) -> Result<Vec<f32>> {
    let n: usize = shape.iter().product();
    if bytes.len() != storage.byte_len(shape) || !storage.fits(shape) {
        return Err(Error::Weights(format!(
            "{} bytes do not hold a {storage} tensor of shape {} ({} expected)",
            bytes.len(),
            shape_text(shape),
            storage.byte_len(shape)
        )));
    }
    Ok(match storage {
        Storage::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
        Storage::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Storage::Q8 | Storage::Q4 => {
            let vbytes = storage.byte_len(shape) - 4 * (n / QUANT_BLOCK);
            let scales: Vec<f32> =
                bytes[vbytes..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            let q = |i: usize| -> f32 {
                match storage {
                    Storage::Q8 => bytes[i] as i8 as f32,
                    _ => {
                        let word = u32::from_le_bytes(bytes[4 * (i / 8)..4 * (i / 8) + 4].try_into().unwrap());
                        let nib = ((word >> (4 * (i % 8))) & 0xF) as u8;
                        (((nib << 4) as i8) >> 4) as f32
                    }
                }
            };
            (0..n).map(|i| q(i) * scales[i / QUANT_BLOCK]).collect()
        }
    })
}

/// Decodes rows `rows` of a 2-D stored tensor `[r, c]` (host-side embedding lookups).
pub fn decode_rows(bytes: &[u8], shape: [usize; 2], storage: Storage, rows: &[usize]) -> Result<Vec<f32>> {
    let [r, c] = shape;
    if bytes.len() != storage.byte_len(&shape) || !storage.fits(&shape) {
        return Err(Error::Weights(format!("the bytes do not hold a {storage} table of shape {}", shape_text(&shape))));
    }
    let mut out = Vec::with_capacity(rows.len() * c);
    for &row in rows {
        if row >= r {
            return Err(Error::Invalid(format!("token id {row} is outside the vocabulary of {r}")));
        }
        match storage {
            Storage::F32 => out.extend(
                bytes[4 * row * c..4 * (row + 1) * c]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap())),
            ),
            Storage::F16 => out.extend(
                bytes[2 * row * c..2 * (row + 1) * c]
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
            ),
            Storage::Q8 | Storage::Q4 => {
                // Rows are whole blocks (c is a multiple of the block), so a row decodes alone.
                let n = r * c;
                let vbytes = storage.byte_len(&shape) - 4 * (n / QUANT_BLOCK);
                let per_row_v = match storage {
                    Storage::Q8 => c,
                    _ => c / 2,
                };
                let vals = &bytes[row * per_row_v..(row + 1) * per_row_v];
                let sc = &bytes[vbytes + 4 * (row * c / QUANT_BLOCK)..vbytes + 4 * ((row + 1) * c / QUANT_BLOCK)];
                let mut sub = vals.to_vec();
                sub.extend_from_slice(sc);
                out.extend(decode(&sub, &[1, c], storage)?);
            }
        }
    }
    Ok(out)
}

/// The bytes as burn tensor data of `shape` (quantized storages become `QFloat` data in burn's
/// layout; f16 becomes F16 data, f32 F32).
pub fn tensor_data(bytes: Vec<u8>, shape: &[usize], storage: Storage) -> Result<TensorData> {
    if bytes.len() != storage.byte_len(shape) || !storage.fits(shape) {
        return Err(Error::Weights(format!(
            "{} bytes do not hold a {storage} tensor of shape {} ({} expected)",
            bytes.len(),
            shape_text(shape),
            storage.byte_len(shape)
        )));
    }
    let dtype = match storage {
        Storage::F32 => DType::F32,
        Storage::F16 => DType::F16,
        Storage::Q8 | Storage::Q4 => DType::QFloat(storage.scheme().expect("quantized")),
    };
    Ok(TensorData::from_bytes_vec(bytes, shape.to_vec(), dtype))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_error_is_within_half_a_step() {
        let mut rng = crate::rng::Rng::new(3);
        let shape = [8, 64];
        let x: Vec<f32> = rng.normal_vec(512);
        for s in [Storage::F32, Storage::F16, Storage::Q8, Storage::Q4] {
            let b = encode(&x, &shape, s).unwrap();
            assert_eq!(b.len(), s.byte_len(&shape));
            let y = decode(&b, &shape, s).unwrap();
            for (blk_x, blk_y) in x.chunks(QUANT_BLOCK).zip(y.chunks(QUANT_BLOCK)) {
                let peak = blk_x.iter().fold(0f32, |m, v| m.max(v.abs()));
                let tol = match s {
                    Storage::F32 => 0.0,
                    Storage::F16 => peak * 1e-3,
                    Storage::Q8 => peak / 127.0 * 0.5 + 1e-7,
                    Storage::Q4 => peak / 7.0 * 0.5 + 1e-7,
                };
                for (a, b) in blk_x.iter().zip(blk_y) {
                    assert!((a - b).abs() <= tol, "{s:?}: {a} vs {b} (tol {tol})");
                }
            }
            let rows = decode_rows(&b, shape, s, &[5, 0]).unwrap();
            assert_eq!(&rows[..64], &y[5 * 64..6 * 64]);
            assert_eq!(&rows[64..], &y[..64]);
        }
        assert!(encode(&x[..480], &[8, 60], Storage::Q8).is_err(), "60 is not a whole number of blocks");
        assert!(decode(&[0; 10], &shape, Storage::Q8).is_err());
    }
}
