//! The `.ddist` learned-distribution file format.
//!
//! A `.ddist` file is a [safetensors](https://github.com/huggingface/safetensors) container
//! with exactly one metadata key, `"dreamdist"`, whose value is a JSON header (format,
//! version, dimensions, model, training settings, counts), plus these tensors:
//!
//! | name                | dtype      | shape            | present                        |
//! |---------------------|------------|------------------|--------------------------------|
//! | `prompts`           | F16 or F32 | `[K, M, hidden]` | always (dtype = `precision`)   |
//! | `loss_curve`        | F32        | `[n]`            | when the loss curve is non-empty |
//! | `optimizer.m`       | F32        | `[K, M, hidden]` | in training checkpoints        |
//! | `optimizer.v`       | F32        | `[K, M, hidden]` | in training checkpoints        |
//! | `thumbnail.{i}`     | U8         | `[len]`          | `i < thumbnails` (PNG bytes)   |
//!
//! Files are shared by URL and loaded in the browser from untrusted sources, so
//! [`DistFile::from_bytes`] never panics, checks the size before parsing, and only allocates
//! in proportion to bytes actually present in the input. Every rule is enforced both when
//! loading and when saving ([`DistFile::validate`]), so any file dreamdist writes loads again.
//!
//! This file is self-contained (std, safetensors, serde, serde_json, half, thiserror only):
//! the fuzz crate includes it by `#[path]` (`fuzz/fuzz_targets/ddist.rs`).

use std::collections::HashMap;
use std::fmt;

use half::f16;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

/// The value of the header's `format` field (and the safetensors metadata key).
pub const FORMAT: &str = "dreamdist";
/// The newest format version this build reads and the version it writes.
pub const FORMAT_VERSION: u32 = 2;
/// Recipes accepted in [`TrainInfo::recipe`].
pub const RECIPES: [&str; 2] = ["paper", "authors"];
/// Largest accepted file, checked before any parsing.
pub const MAX_FILE_BYTES: usize = 64 << 20;
/// Largest number of prompts K in a distribution.
pub const MAX_K: usize = 256;
/// Largest number of learned tokens M per prompt (CLIP's 77 positions minus BOS/EOS).
pub const MAX_M: usize = 75;
/// Largest text-encoder hidden size.
pub const MAX_HIDDEN: usize = 4096;
/// Largest absolute value accepted in the prompt embeddings and optimizer moments.
pub const MAX_ABS_VALUE: f32 = 1e4;
/// Longest distribution name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest `created_by` string, in characters.
pub const MAX_CREATED_BY_CHARS: usize = 200;
/// Longest training template, in characters.
pub const MAX_TEMPLATE_CHARS: usize = 1000;
/// Longest model id, in characters.
pub const MAX_MODEL_ID_CHARS: usize = 64;
/// Most reference thumbnails in one file.
pub const MAX_THUMBNAILS: usize = 16;
/// Largest single reference thumbnail, in bytes.
pub const MAX_THUMBNAIL_BYTES: usize = 1 << 20;
/// Longest loss curve, in points.
pub const MAX_LOSS_POINTS: usize = 1 << 20;
/// Most generator-state words in [`OptimizerState::rng`].
pub const MAX_RNG_WORDS: usize = 1024;
/// Largest `"dreamdist"` JSON header, in bytes.
pub const MAX_HEADER_BYTES: usize = 1 << 20;
/// Largest safetensors JSON header (it embeds the escaped `"dreamdist"` header).
pub const MAX_CONTAINER_HEADER_BYTES: usize = 8 << 20;
/// The 8-byte signature every PNG file starts with.
pub const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
/// Training modes accepted in [`TrainInfo::mode`].
pub const MODES: [&str; 2] = ["dreamdistribution", "textual-inversion"];
/// Orthogonality-loss variants accepted in [`TrainInfo::ortho`].
pub const ORTHO_KINDS: [&str; 2] = ["eos", "flat"];

/// Most tensors a valid file can hold: prompts, loss curve, two moments, thumbnails.
const MAX_TENSORS: usize = 4 + MAX_THUMBNAILS;
const T_PROMPTS: &str = "prompts";
const T_LOSS: &str = "loss_curve";
const T_OPT_M: &str = "optimizer.m";
const T_OPT_V: &str = "optimizer.v";

/// A tensor to write: name, dtype, shape, little-endian bytes.
type RawTensor = (String, Dtype, Vec<usize>, Vec<u8>);

/// Why a `.ddist` file could not be read or written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// The file is over [`MAX_FILE_BYTES`] (checked before parsing).
    #[error("the file is {size} bytes, over the {max}-byte limit for .ddist files")]
    TooLarge {
        /// Size of the input (or of the file that would be written).
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Not a safetensors container, or a truncated / corrupted one.
    #[error("not a .ddist file (invalid or truncated safetensors container): {0}")]
    Container(String),
    /// The container has no `"dreamdist"` metadata header.
    #[error("not a .ddist file: the safetensors metadata has no \"dreamdist\" header")]
    MissingHeader,
    /// The container metadata has a key other than `"dreamdist"`.
    #[error("unexpected safetensors metadata key `{0}` (a .ddist file has only \"dreamdist\")")]
    UnexpectedMetadata(String),
    /// A JSON header is over its size limit.
    #[error("the {what} header is {size} bytes, over the {max}-byte limit")]
    HeaderTooLarge {
        /// Which header.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The `"dreamdist"` header is not valid JSON or lacks / mistypes / adds fields.
    #[error("malformed .ddist header: {0}")]
    BadHeader(String),
    /// The header's `format` is not `"dreamdist"`.
    #[error("not a .ddist file: header format is `{found}`, expected \"dreamdist\"")]
    WrongFormat {
        /// The format found.
        found: String,
    },
    /// The file was made by a newer dreamdist.
    #[error(
        "this .ddist file is format version {found}, made by a newer dreamdist \
         (this build reads versions up to {supported}); update dreamdist to load it"
    )]
    NewerVersion {
        /// The version in the file.
        found: u64,
        /// [`FORMAT_VERSION`].
        supported: u32,
    },
    /// Version 0 or otherwise unsupported.
    #[error("unsupported .ddist format version {found}")]
    BadVersion {
        /// The version in the file.
        found: u64,
    },
    /// K, M or hidden is zero or above its cap.
    #[error("{what} = {value} is out of range (must be 1..={max})")]
    BadDimension {
        /// `"k"`, `"m"` or `"hidden"`.
        what: &'static str,
        /// The value.
        value: usize,
        /// The cap.
        max: usize,
    },
    /// A tensor's shape (or an in-memory vector's length) disagrees with the header.
    #[error("tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// Tensor name.
        tensor: String,
        /// Shape implied by the header.
        expected: Vec<usize>,
        /// Shape found.
        found: Vec<usize>,
    },
    /// A tensor has the wrong element type.
    #[error("tensor `{tensor}` has dtype {found}, expected {expected}")]
    WrongDtype {
        /// Tensor name.
        tensor: String,
        /// Expected dtype.
        expected: String,
        /// Dtype found.
        found: String,
    },
    /// A tensor the header calls for is absent.
    #[error("tensor `{0}` is missing")]
    MissingTensor(String),
    /// A tensor not in the format (or not announced by the header) is present.
    #[error("unexpected tensor `{0}` (not part of the .ddist format or not announced by its header)")]
    ExtraTensor(String),
    /// NaN or infinity in a tensor.
    #[error("non-finite value {value} in `{tensor}` at index {index}")]
    NonFinite {
        /// Tensor name.
        tensor: String,
        /// Flat index.
        index: usize,
        /// The value.
        value: f32,
    },
    /// A value outside the accepted range (|x| > [`MAX_ABS_VALUE`], or a negative second moment).
    #[error("value {value} in `{tensor}` at index {index} is out of range ({rule})")]
    ValueOutOfRange {
        /// Tensor name.
        tensor: String,
        /// Flat index.
        index: usize,
        /// The value.
        value: f32,
        /// The rule broken.
        rule: &'static str,
    },
    /// A header field breaks a rule (name length, template, mode, ortho, model id, ...).
    #[error("invalid {field}: {reason}")]
    InvalidField {
        /// Dotted field path, e.g. `"train.template"`.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A reference thumbnail breaks a rule.
    #[error("reference thumbnail {index}: {reason}")]
    BadThumbnail {
        /// Thumbnail index.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// The file was trained for a different model than the one loaded.
    #[error("wrong model: this distribution was trained for {file}, but the loaded model is {loaded}")]
    ModelMismatch {
        /// The file's model, described.
        file: String,
        /// The loaded model, described.
        loaded: String,
    },
    /// Serialization failed (should not happen for a validated file).
    #[error("could not write .ddist file: {0}")]
    Write(String),
}

/// Which base model (and text encoder) a distribution was learned on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelId {
    /// Model identifier: `"sd21"`, `"sd21-base"`, `"tiny"` (lowercase ASCII letters, digits, `.`, `_`, `-`).
    pub id: String,
    /// Text-encoder hidden size; must equal [`DistFile::hidden`].
    pub hidden_size: usize,
    /// Lowercase hex SHA-256 of the text-encoder weights file; `""` = unknown. Format 1 named
    /// models this way; format 2 writes `""` and uses [`identity`](Self::identity).
    pub text_encoder_sha256: String,
    /// The model's canonical text-encoder identity (lowercase hex SHA-256 over its config and
    /// f16-rounded token embedding; the same for f32, f16 and quantized copies). Format 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` (hidden size {}", self.id, self.hidden_size)?;
        if let Some(i) = &self.identity {
            let short: String = i.chars().take(12).collect();
            write!(f, ", identity {short}…")?;
        }
        if !self.text_encoder_sha256.is_empty() {
            let short: String = self.text_encoder_sha256.chars().take(12).collect();
            write!(f, ", text encoder sha256 {short}…")?;
        }
        write!(f, ")")
    }
}

/// The training settings a distribution was learned with (informational, and for resume).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainInfo {
    /// Optimizer steps taken.
    pub steps: u64,
    /// Learning rate (finite, >= 0).
    pub lr: f64,
    /// Prompt samples drawn per step.
    pub samples: usize,
    /// Orthogonality-loss weight λ (finite, >= 0).
    pub lambda: f64,
    /// Training resolution in pixels.
    pub resolution: usize,
    /// Random seed.
    pub seed: u64,
    /// Orthogonality-loss variant: one of [`ORTHO_KINDS`] (`"eos"` | `"flat"`).
    pub ortho: String,
    /// Training template containing exactly one `"{}"` (where the learned tokens go).
    pub template: String,
    /// One of [`MODES`] (`"dreamdistribution"` | `"textual-inversion"`).
    pub mode: String,
    /// One of [`RECIPES`]; absent in format 1 (= `"paper"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<String>,
}

/// Storage precision of the prompt embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Half precision: shared files (values are rounded to f16 when written).
    F16,
    /// Single precision: training checkpoints (bit-exact resume).
    F32,
}

impl Precision {
    fn dtype(self) -> Dtype {
        match self {
            Precision::F16 => Dtype::F16,
            Precision::F32 => Dtype::F32,
        }
    }
}

/// Optimizer state stored in training checkpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerState {
    /// Optimizer step count.
    pub step: u64,
    /// First moment, `K*M*hidden` values (finite, |x| <= [`MAX_ABS_VALUE`]).
    pub m: Vec<f32>,
    /// Second moment, `K*M*hidden` values (finite, 0 <= x <= [`MAX_ABS_VALUE`]).
    pub v: Vec<f32>,
    /// Opaque generator state words (at most [`MAX_RNG_WORDS`]).
    pub rng: Vec<u64>,
    /// Anything else the trainer wants to keep (JSON; `Null` if nothing).
    pub extra: serde_json::Value,
}

/// A learned prompt distribution, as stored in a `.ddist` file.
#[derive(Debug, Clone, PartialEq)]
pub struct DistFile {
    /// Display name (at most [`MAX_NAME_CHARS`] characters, no control characters).
    pub name: String,
    /// Number of prompts K.
    pub k: usize,
    /// Learned tokens per prompt M.
    pub m: usize,
    /// Text-encoder hidden size.
    pub hidden: usize,
    /// The learned token embeddings V: `K*M*hidden` values, row-major `[K, M, hidden]`.
    pub prompts: Vec<f32>,
    /// The model the distribution was learned on.
    pub model: ModelId,
    /// Training settings.
    pub train: TrainInfo,
    /// Training loss per logged step (may be empty).
    pub loss_curve: Vec<f32>,
    /// Writer, e.g. `"dreamdist 0.1.0"`.
    pub created_by: String,
    /// Storage precision of `prompts`.
    pub precision: Precision,
    /// Optimizer state; only in training checkpoints.
    pub optimizer: Option<OptimizerState>,
    /// Reference-image thumbnails as PNG bytes; empty unless the user opted in.
    pub reference_thumbnails: Vec<Vec<u8>>,
}

/// The `"dreamdist"` JSON header.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    version: u32,
    name: String,
    k: usize,
    m: usize,
    hidden: usize,
    precision: Precision,
    model: ModelId,
    train: TrainInfo,
    created_by: String,
    loss_curve_len: usize,
    thumbnails: usize,
    optimizer: Option<OptimizerHeader>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OptimizerHeader {
    step: u64,
    rng: Vec<u64>,
    extra: serde_json::Value,
}

/// Lenient first look at the header, so format/version errors win over field errors.
#[derive(Deserialize)]
struct Probe {
    format: Option<serde_json::Value>,
    version: Option<serde_json::Value>,
}

impl DistFile {
    /// Number of values in `prompts` (and in each optimizer moment): `K*M*hidden`.
    ///
    /// Saturates on overflow; [`validate`](Self::validate) rejects such dimensions.
    pub fn numel(&self) -> usize {
        self.k.saturating_mul(self.m).saturating_mul(self.hidden)
    }

    /// Serialize to `.ddist` bytes. Validates first (same rules as loading), and fails
    /// rather than writing a file over [`MAX_FILE_BYTES`].
    pub fn to_bytes(&self) -> Result<Vec<u8>, FileError> {
        self.validate()?;
        let numel = self.numel();

        // Size estimate before allocating anything large.
        let elem = match self.precision {
            Precision::F16 => 2,
            Precision::F32 => 4,
        };
        let mut data_bytes = numel * elem + self.loss_curve.len() * 4;
        if self.optimizer.is_some() {
            data_bytes += 2 * numel * 4;
        }
        data_bytes += self.reference_thumbnails.iter().map(Vec::len).sum::<usize>();
        if data_bytes > MAX_FILE_BYTES {
            return Err(FileError::TooLarge { size: data_bytes, max: MAX_FILE_BYTES });
        }

        let header = Header {
            format: FORMAT.to_string(),
            version: FORMAT_VERSION,
            name: self.name.clone(),
            k: self.k,
            m: self.m,
            hidden: self.hidden,
            precision: self.precision,
            model: self.model.clone(),
            train: self.train.clone(),
            created_by: self.created_by.clone(),
            loss_curve_len: self.loss_curve.len(),
            thumbnails: self.reference_thumbnails.len(),
            optimizer: self.optimizer.as_ref().map(|o| OptimizerHeader {
                step: o.step,
                rng: o.rng.clone(),
                extra: o.extra.clone(),
            }),
        };
        let json = serde_json::to_string(&header).map_err(|e| FileError::Write(e.to_string()))?;
        if json.len() > MAX_HEADER_BYTES {
            return Err(FileError::HeaderTooLarge { what: "\"dreamdist\"", size: json.len(), max: MAX_HEADER_BYTES });
        }

        let shape = vec![self.k, self.m, self.hidden];
        let prompt_bytes = match self.precision {
            Precision::F16 => self.prompts.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect::<Vec<u8>>(),
            Precision::F32 => f32_bytes(&self.prompts),
        };
        let mut owned: Vec<RawTensor> = vec![(T_PROMPTS.into(), self.precision.dtype(), shape.clone(), prompt_bytes)];
        if !self.loss_curve.is_empty() {
            owned.push((T_LOSS.into(), Dtype::F32, vec![self.loss_curve.len()], f32_bytes(&self.loss_curve)));
        }
        if let Some(o) = &self.optimizer {
            owned.push((T_OPT_M.into(), Dtype::F32, shape.clone(), f32_bytes(&o.m)));
            owned.push((T_OPT_V.into(), Dtype::F32, shape, f32_bytes(&o.v)));
        }
        let mut views = Vec::with_capacity(owned.len() + self.reference_thumbnails.len());
        for (name, dtype, shape, bytes) in &owned {
            let view = TensorView::new(*dtype, shape.clone(), bytes).map_err(|e| FileError::Write(e.to_string()))?;
            views.push((name.clone(), view));
        }
        for (i, png) in self.reference_thumbnails.iter().enumerate() {
            let view = TensorView::new(Dtype::U8, vec![png.len()], png).map_err(|e| FileError::Write(e.to_string()))?;
            views.push((format!("thumbnail.{i}"), view));
        }

        let meta = HashMap::from([(FORMAT.to_string(), json)]);
        let out = safetensors::serialize(views, Some(meta)).map_err(|e| FileError::Write(e.to_string()))?;
        if out.len() > MAX_FILE_BYTES {
            return Err(FileError::TooLarge { size: out.len(), max: MAX_FILE_BYTES });
        }
        let container_header =
            out.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()).map_or(u64::MAX, u64::from_le_bytes);
        if container_header > MAX_CONTAINER_HEADER_BYTES as u64 {
            return Err(FileError::HeaderTooLarge {
                what: "safetensors",
                size: usize::try_from(container_header).unwrap_or(usize::MAX),
                max: MAX_CONTAINER_HEADER_BYTES,
            });
        }
        Ok(out)
    }

    /// Parse and validate `.ddist` bytes. Never panics; rejects anything not written by
    /// (a compatible version of) [`to_bytes`](Self::to_bytes) with a specific [`FileError`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FileError> {
        if bytes.len() > MAX_FILE_BYTES {
            return Err(FileError::TooLarge { size: bytes.len(), max: MAX_FILE_BYTES });
        }
        let data_start = precheck_container(bytes)?;
        let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| FileError::Container(e.to_string()))?;
        let data = bytes.get(data_start..).ok_or_else(|| FileError::Container("truncated".into()))?;

        // The "dreamdist" header.
        let meta = metadata.metadata().as_ref().ok_or(FileError::MissingHeader)?;
        if let Some(key) = meta.keys().find(|k| k.as_str() != FORMAT) {
            return Err(FileError::UnexpectedMetadata(key.clone()));
        }
        let json = meta.get(FORMAT).ok_or(FileError::MissingHeader)?;
        if json.len() > MAX_HEADER_BYTES {
            return Err(FileError::HeaderTooLarge { what: "\"dreamdist\"", size: json.len(), max: MAX_HEADER_BYTES });
        }
        let probe: Probe = serde_json::from_str(json).map_err(|e| FileError::BadHeader(e.to_string()))?;
        match probe.format {
            Some(serde_json::Value::String(s)) if s == FORMAT => {}
            Some(serde_json::Value::String(s)) => return Err(FileError::WrongFormat { found: s }),
            Some(other) => return Err(FileError::WrongFormat { found: truncate(&other.to_string(), 64) }),
            None => return Err(FileError::BadHeader("missing field `format`".into())),
        }
        match probe.version.as_ref().map(|v| v.as_u64()) {
            Some(Some(v)) if (1..=u64::from(FORMAT_VERSION)).contains(&v) => {}
            Some(Some(v)) if v > u64::from(FORMAT_VERSION) => {
                return Err(FileError::NewerVersion { found: v, supported: FORMAT_VERSION });
            }
            Some(Some(v)) => return Err(FileError::BadVersion { found: v }),
            Some(None) => {
                return Err(FileError::BadHeader("`version` is not a non-negative integer".into()));
            }
            None => return Err(FileError::BadHeader("missing field `version`".into())),
        }
        let header: Header = serde_json::from_str(json).map_err(|e| FileError::BadHeader(e.to_string()))?;
        check_dims(header.k, header.m, header.hidden)?;
        if header.thumbnails > MAX_THUMBNAILS {
            return Err(FileError::BadThumbnail {
                index: header.thumbnails,
                reason: format!("{} thumbnails, at most {MAX_THUMBNAILS} allowed", header.thumbnails),
            });
        }
        if header.loss_curve_len > MAX_LOSS_POINTS {
            return Err(FileError::InvalidField {
                field: "loss_curve_len",
                reason: format!("{} points, at most {MAX_LOSS_POINTS}", header.loss_curve_len),
            });
        }

        // The tensor set must be exactly what the header announces.
        let mut expected: Vec<String> = vec![T_PROMPTS.into()];
        if header.loss_curve_len > 0 {
            expected.push(T_LOSS.into());
        }
        if header.optimizer.is_some() {
            expected.push(T_OPT_M.into());
            expected.push(T_OPT_V.into());
        }
        expected.extend((0..header.thumbnails).map(|i| format!("thumbnail.{i}")));
        let infos = metadata.tensors();
        let mut present: Vec<&String> = infos.keys().collect();
        present.sort();
        if let Some(extra) = present.iter().find(|n| !expected.contains(n)) {
            return Err(FileError::ExtraTensor((*extra).clone()));
        }
        if let Some(missing) = expected.iter().find(|n| !infos.contains_key(*n)) {
            return Err(FileError::MissingTensor(missing.clone()));
        }
        let tensor = |name: &str, dtype: Dtype, shape: Option<&[usize]>| -> Result<&[u8], FileError> {
            let info = infos.get(name).ok_or_else(|| FileError::MissingTensor(name.into()))?;
            if info.dtype != dtype {
                return Err(FileError::WrongDtype {
                    tensor: name.into(),
                    expected: dtype.to_string(),
                    found: info.dtype.to_string(),
                });
            }
            match shape {
                Some(s) if info.shape.as_slice() != s => {
                    return Err(FileError::ShapeMismatch {
                        tensor: name.into(),
                        expected: s.to_vec(),
                        found: info.shape.clone(),
                    });
                }
                None if info.shape.len() != 1 => {
                    return Err(FileError::ShapeMismatch {
                        tensor: name.into(),
                        expected: vec![info.shape.iter().product()],
                        found: info.shape.clone(),
                    });
                }
                _ => {}
            }
            let (s, e) = info.data_offsets;
            data.get(s..e).ok_or_else(|| FileError::Container(format!("tensor `{name}` is out of bounds")))
        };

        let shape = [header.k, header.m, header.hidden];
        let raw = tensor(T_PROMPTS, header.precision.dtype(), Some(&shape))?;
        let prompts = match header.precision {
            Precision::F16 => raw.as_chunks::<2>().0.iter().map(|c| f16::from_le_bytes(*c).to_f32()).collect(),
            Precision::F32 => f32_from_bytes(raw),
        };
        let loss_curve = if header.loss_curve_len > 0 {
            f32_from_bytes(tensor(T_LOSS, Dtype::F32, Some(&[header.loss_curve_len]))?)
        } else {
            Vec::new()
        };
        let optimizer = match header.optimizer {
            Some(o) => Some(OptimizerState {
                step: o.step,
                m: f32_from_bytes(tensor(T_OPT_M, Dtype::F32, Some(&shape))?),
                v: f32_from_bytes(tensor(T_OPT_V, Dtype::F32, Some(&shape))?),
                rng: o.rng,
                extra: o.extra,
            }),
            None => None,
        };
        let mut reference_thumbnails = Vec::with_capacity(header.thumbnails);
        for i in 0..header.thumbnails {
            let name = format!("thumbnail.{i}");
            let png = tensor(&name, Dtype::U8, None)?;
            check_thumbnail(i, png)?;
            reference_thumbnails.push(png.to_vec());
        }

        let file = DistFile {
            name: header.name,
            k: header.k,
            m: header.m,
            hidden: header.hidden,
            prompts,
            model: header.model,
            train: header.train,
            loss_curve,
            created_by: header.created_by,
            precision: header.precision,
            optimizer,
            reference_thumbnails,
        };
        file.validate()?;
        Ok(file)
    }

    /// Check every rule of the format against this in-memory file (the same rules
    /// [`from_bytes`](Self::from_bytes) applies; [`to_bytes`](Self::to_bytes) calls this first).
    pub fn validate(&self) -> Result<(), FileError> {
        check_dims(self.k, self.m, self.hidden)?;
        let numel = self.numel();
        let shape = vec![self.k, self.m, self.hidden];
        check_len(T_PROMPTS, &shape, numel, self.prompts.len())?;

        // Strings.
        check_text("name", &self.name, MAX_NAME_CHARS)?;
        check_text("created_by", &self.created_by, MAX_CREATED_BY_CHARS)?;
        let id = &self.model.id;
        if id.is_empty()
            || id.chars().count() > MAX_MODEL_ID_CHARS
            || !id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
        {
            return Err(FileError::InvalidField {
                field: "model.id",
                reason: format!(
                    "`{}` must be 1..={MAX_MODEL_ID_CHARS} characters of a-z, 0-9, '.', '_', '-'",
                    truncate(id, 80)
                ),
            });
        }
        if self.model.hidden_size != self.hidden {
            return Err(FileError::InvalidField {
                field: "model.hidden_size",
                reason: format!("{} differs from the prompt hidden size {}", self.model.hidden_size, self.hidden),
            });
        }
        let hex64 = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let sha = &self.model.text_encoder_sha256;
        if !sha.is_empty() && !hex64(sha) {
            return Err(FileError::InvalidField {
                field: "model.text_encoder_sha256",
                reason: "must be empty (unknown) or 64 lowercase hex digits".into(),
            });
        }
        if let Some(i) = &self.model.identity
            && !hex64(i)
        {
            return Err(FileError::InvalidField {
                field: "model.identity",
                reason: "must be 64 lowercase hex digits".into(),
            });
        }
        if let Some(r) = &self.train.recipe
            && !RECIPES.contains(&r.as_str())
        {
            return Err(FileError::InvalidField {
                field: "train.recipe",
                reason: format!("{:?} is not one of {RECIPES:?}", truncate(r, 40)),
            });
        }

        // Training settings.
        let t = &self.train;
        let template_chars = t.template.chars().count();
        if template_chars > MAX_TEMPLATE_CHARS {
            return Err(FileError::InvalidField {
                field: "train.template",
                reason: format!("{template_chars} characters, at most {MAX_TEMPLATE_CHARS}"),
            });
        }
        let holes = t.template.matches("{}").count();
        if holes != 1 {
            return Err(FileError::InvalidField {
                field: "train.template",
                reason: format!("must contain exactly one \"{{}}\" placeholder, found {holes}"),
            });
        }
        if !MODES.contains(&t.mode.as_str()) {
            return Err(FileError::InvalidField {
                field: "train.mode",
                reason: format!("unknown mode `{}` (expected one of {MODES:?})", truncate(&t.mode, 40)),
            });
        }
        if !ORTHO_KINDS.contains(&t.ortho.as_str()) {
            return Err(FileError::InvalidField {
                field: "train.ortho",
                reason: format!("unknown ortho `{}` (expected one of {ORTHO_KINDS:?})", truncate(&t.ortho, 40)),
            });
        }
        for (field, x) in [("train.lr", t.lr), ("train.lambda", t.lambda)] {
            if !x.is_finite() || x < 0.0 {
                return Err(FileError::InvalidField { field, reason: format!("{x} must be finite and >= 0") });
            }
        }

        // Loss curve.
        if self.loss_curve.len() > MAX_LOSS_POINTS {
            return Err(FileError::InvalidField {
                field: "loss_curve",
                reason: format!("{} points, at most {MAX_LOSS_POINTS}", self.loss_curve.len()),
            });
        }
        check_values(T_LOSS, &self.loss_curve, None, false)?;

        // Thumbnails.
        if self.reference_thumbnails.len() > MAX_THUMBNAILS {
            return Err(FileError::BadThumbnail {
                index: self.reference_thumbnails.len(),
                reason: format!("{} thumbnails, at most {MAX_THUMBNAILS} allowed", self.reference_thumbnails.len()),
            });
        }
        for (i, png) in self.reference_thumbnails.iter().enumerate() {
            check_thumbnail(i, png)?;
        }

        // Optimizer state.
        if let Some(o) = &self.optimizer {
            check_len(T_OPT_M, &shape, numel, o.m.len())?;
            check_len(T_OPT_V, &shape, numel, o.v.len())?;
            if o.rng.len() > MAX_RNG_WORDS {
                return Err(FileError::InvalidField {
                    field: "optimizer.rng",
                    reason: format!("{} words, at most {MAX_RNG_WORDS}", o.rng.len()),
                });
            }
            check_values(T_OPT_M, &o.m, Some(MAX_ABS_VALUE), false)?;
            check_values(T_OPT_V, &o.v, Some(MAX_ABS_VALUE), true)?;
        }

        check_values(T_PROMPTS, &self.prompts, Some(MAX_ABS_VALUE), false)
    }

    /// Check that this distribution was learned on `loaded` (the loaded model): ids and hidden
    /// sizes must match, and so must the canonical identities when both are known. A format-1
    /// file names its model by the SHA-256 of the text-encoder file; that is compared when the
    /// loaded model knows its file's hash, and otherwise accepted with the note returned here.
    pub fn check_model(&self, loaded: &ModelId) -> Result<Option<String>, FileError> {
        let mine = &self.model;
        let mismatch = || FileError::ModelMismatch { file: mine.to_string(), loaded: loaded.to_string() };
        if mine.id != loaded.id || mine.hidden_size != loaded.hidden_size {
            return Err(mismatch());
        }
        if let (Some(a), Some(b)) = (&mine.identity, &loaded.identity) {
            if a.eq_ignore_ascii_case(b) {
                return Ok(None);
            }
            let renamed = IDENTITY_RENAMES
                .iter()
                .find(|r| r.model == mine.id && a.eq_ignore_ascii_case(r.before) && b.eq_ignore_ascii_case(r.after));
            return match renamed {
                Some(r) => Ok(Some(format!("this distribution names `{}` by its identity before {}", mine.id, r.why))),
                None => Err(mismatch()),
            };
        }
        let legacy = &mine.text_encoder_sha256;
        if legacy.is_empty() {
            return Ok(Some(format!(
                "this distribution does not say which copy of `{}` it was learned on; it was loaded on the strength \
                 of the model id and hidden size",
                mine.id
            )));
        }
        if !loaded.text_encoder_sha256.is_empty() {
            return if legacy.eq_ignore_ascii_case(&loaded.text_encoder_sha256) { Ok(None) } else { Err(mismatch()) };
        }
        let short: String = legacy.chars().take(12).collect();
        Ok(Some(format!(
            "this distribution comes from an older dreamdist, which named its model by the SHA-256 of the \
             text-encoder file ({short}…); that cannot be checked against this copy of `{}`, so it was loaded on the \
             strength of the model id and hidden size",
            mine.id
        )))
    }
}

/// A model whose identity changed while its weights did not (in effect): files naming the old
/// identity are accepted on the new one, with a note. Part of the program, not of any manifest:
/// a manifest cannot add one.
struct IdentityRename {
    model: &'static str,
    before: &'static str,
    after: &'static str,
    why: &'static str,
}

const IDENTITY_RENAMES: &[IdentityRename] = &[IdentityRename {
    model: "demo",
    before: "9f8878bf808bfd6f10d36bc7fdf53c3d01e07e4c467663bcd201f3499cf60a47",
    after: "7e846116c51954e5196c9c9f93e7230744e711a22cfc59b6c5edd178bb5fb30f",
    why: "2026-12-08, when the bundled demo model's token table went from q8 to f16 (the same values, to \
          f16 precision) so that its identity could be checked; it was learned on the same weights",
}];

fn check_dims(k: usize, m: usize, hidden: usize) -> Result<(), FileError> {
    for (what, value, max) in [("k", k, MAX_K), ("m", m, MAX_M), ("hidden", hidden, MAX_HIDDEN)] {
        if value == 0 || value > max {
            return Err(FileError::BadDimension { what, value, max });
        }
    }
    Ok(())
}

fn check_len(tensor: &str, shape: &[usize], expected: usize, found: usize) -> Result<(), FileError> {
    if expected != found {
        return Err(FileError::ShapeMismatch { tensor: tensor.into(), expected: shape.to_vec(), found: vec![found] });
    }
    Ok(())
}

fn check_text(field: &'static str, s: &str, max_chars: usize) -> Result<(), FileError> {
    let n = s.chars().count();
    if n > max_chars {
        return Err(FileError::InvalidField { field, reason: format!("{n} characters, at most {max_chars}") });
    }
    if s.chars().any(char::is_control) {
        return Err(FileError::InvalidField { field, reason: "contains control characters".into() });
    }
    Ok(())
}

fn check_values(tensor: &str, xs: &[f32], max_abs: Option<f32>, non_negative: bool) -> Result<(), FileError> {
    for (index, &value) in xs.iter().enumerate() {
        if !value.is_finite() {
            return Err(FileError::NonFinite { tensor: tensor.into(), index, value });
        }
        if let Some(max) = max_abs
            && value.abs() > max
        {
            return Err(FileError::ValueOutOfRange { tensor: tensor.into(), index, value, rule: "|x| <= 1e4" });
        }
        if non_negative && value < 0.0 {
            return Err(FileError::ValueOutOfRange { tensor: tensor.into(), index, value, rule: "x >= 0" });
        }
    }
    Ok(())
}

fn check_thumbnail(index: usize, png: &[u8]) -> Result<(), FileError> {
    if png.len() > MAX_THUMBNAIL_BYTES {
        return Err(FileError::BadThumbnail {
            index,
            reason: format!("{} bytes, at most {MAX_THUMBNAIL_BYTES}", png.len()),
        });
    }
    if !png.starts_with(&PNG_SIGNATURE) {
        return Err(FileError::BadThumbnail { index, reason: "not a PNG image (bad signature)".into() });
    }
    Ok(())
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

fn f32_bytes(xs: &[f32]) -> Vec<u8> {
    xs.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f32_from_bytes(bytes: &[u8]) -> Vec<f32> {
    bytes.as_chunks::<4>().0.iter().map(|c| f32::from_le_bytes(*c)).collect()
}

/// Check the safetensors container framing before handing it to `safetensors`: header
/// length within limits and the file, at most [`MAX_TENSORS`] entries, no duplicate names,
/// and every `data_offsets` end inside the data section. The last rule keeps
/// `safetensors::SafeTensors::read_metadata` from overflowing (and panicking, in builds with
/// overflow checks) on offsets near `usize::MAX`. Returns where the data section starts.
fn precheck_container(bytes: &[u8]) -> Result<usize, FileError> {
    let len_bytes = bytes
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .ok_or_else(|| FileError::Container("shorter than the 8-byte header length".into()))?;
    let n = u64::from_le_bytes(len_bytes);
    if n > MAX_CONTAINER_HEADER_BYTES as u64 {
        return Err(FileError::HeaderTooLarge {
            what: "safetensors",
            size: usize::try_from(n).unwrap_or(usize::MAX),
            max: MAX_CONTAINER_HEADER_BYTES,
        });
    }
    // n <= 8 MiB, so this cannot overflow.
    let data_start = 8 + n as usize;
    let header = bytes.get(8..data_start).ok_or_else(|| FileError::Container("truncated header".into()))?;
    let header = std::str::from_utf8(header).map_err(|e| FileError::Container(format!("header is not UTF-8: {e}")))?;
    let data_len = (bytes.len() - data_start) as u64;
    let mut de = serde_json::Deserializer::from_str(header);
    Precheck { data_len }
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| FileError::Container(e.to_string()))?;
    Ok(data_start)
}

struct Precheck {
    data_len: u64,
}

/// Only the offsets of a tensor entry; everything else is checked by safetensors.
#[derive(Deserialize)]
struct OffsetsOnly {
    data_offsets: (u64, u64),
}

impl<'de> DeserializeSeed<'de> for Precheck {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Precheck {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a safetensors header object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen: Vec<String> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if seen.contains(&key) {
                return Err(de::Error::custom(format!("duplicate entry `{}`", truncate(&key, 80))));
            }
            if seen.len() > MAX_TENSORS {
                return Err(de::Error::custom(format!("more than {MAX_TENSORS} tensors")));
            }
            if key == "__metadata__" {
                map.next_value::<IgnoredAny>()?;
            } else {
                let OffsetsOnly { data_offsets: (start, end) } = map.next_value()?;
                if start > end || end > self.data_len {
                    return Err(de::Error::custom(format!(
                        "tensor `{}` offsets [{start}, {end}] lie outside the {}-byte data section",
                        truncate(&key, 80),
                        self.data_len
                    )));
                }
            }
            seen.push(key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// splitmix64: deterministic, dependency-free randomness for tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: usize) -> usize {
            if n == 0 { 0 } else { (self.next() % n as u64) as usize }
        }
        fn normal(&mut self) -> f32 {
            // Sum of uniforms: good enough for test data.
            (0..4).map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32).sum::<f32>() - 2.0
        }
    }

    fn png(len: usize, seed: u8) -> Vec<u8> {
        let mut v = PNG_SIGNATURE.to_vec();
        v.extend((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
        v
    }

    fn sample(
        k: usize,
        m: usize,
        hidden: usize,
        precision: Precision,
        opt: bool,
        thumbs: usize,
        loss: usize,
    ) -> DistFile {
        let mut rng = Rng(k as u64 * 1000 + m as u64 * 10 + hidden as u64);
        let n = k * m * hidden;
        DistFile {
            name: "pixel-art cats ✨".into(),
            k,
            m,
            hidden,
            prompts: (0..n).map(|_| rng.normal() * 0.3).collect(),
            model: ModelId {
                id: "tiny".into(),
                hidden_size: hidden,
                text_encoder_sha256: "ab".repeat(32),
                identity: None,
            },
            train: TrainInfo {
                steps: 1500,
                lr: 0.001,
                samples: 4,
                lambda: 0.001,
                resolution: 512,
                seed: u64::MAX - 7,
                ortho: "eos".into(),
                template: "a photo of {}".into(),
                mode: "dreamdistribution".into(),
                recipe: None,
            },
            loss_curve: (0..loss).map(|i| 1.0 / (1.0 + i as f32)).collect(),
            created_by: "dreamdist 0.1.0".into(),
            precision,
            optimizer: opt.then(|| OptimizerState {
                step: 1500,
                m: (0..n).map(|_| rng.normal() * 1e-3).collect(),
                v: (0..n).map(|_| rng.normal().abs() * 1e-6).collect(),
                rng: vec![1, 2, u64::MAX],
                extra: serde_json::json!({"beta1": 0.9, "beta2": 0.999, "note": "adam"}),
            }),
            reference_thumbnails: (0..thumbs).map(|i| png(20 + i, i as u8)).collect(),
        }
    }

    /// The seed files for the fuzzer (also used by the tests).
    fn seed_files() -> Vec<(&'static str, DistFile)> {
        vec![
            ("minimal-f16.ddist", sample(1, 1, 8, Precision::F16, false, 0, 0)),
            ("checkpoint-f32.ddist", sample(2, 2, 4, Precision::F32, true, 0, 5)),
            ("thumbs-f16.ddist", sample(2, 1, 4, Precision::F16, false, 2, 3)),
        ]
    }

    fn f16_round(xs: &[f32]) -> Vec<f32> {
        xs.iter().map(|&x| f16::from_f32(x).to_f32()).collect()
    }

    /// Build a container bypassing validation: a header JSON value and raw tensors.
    fn raw_file(header: &serde_json::Value, tensors: &[RawTensor]) -> Vec<u8> {
        let views: Vec<_> =
            tensors.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
        let meta = HashMap::from([(FORMAT.to_string(), header.to_string())]);
        safetensors::serialize(views, Some(meta)).unwrap()
    }

    /// Split a valid file into (header JSON, tensors) for editing.
    fn explode(bytes: &[u8]) -> (serde_json::Value, Vec<RawTensor>) {
        let st = SafeTensors::deserialize(bytes).unwrap();
        let (_, md) = SafeTensors::read_metadata(bytes).unwrap();
        let header = serde_json::from_str(&md.metadata().as_ref().unwrap()[FORMAT]).unwrap();
        let mut tensors: Vec<_> =
            st.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        (header, tensors)
    }

    fn set_tensor(t: &mut [RawTensor], name: &str, d: Dtype, s: Vec<usize>, b: Vec<u8>) {
        let e = t.iter_mut().find(|e| e.0 == name).unwrap();
        *e = (name.to_string(), d, s, b);
    }

    #[test]
    fn round_trip_f16() {
        for (opt, thumbs, loss) in [(false, 0, 0), (true, 3, 10), (false, 1, 0), (true, 0, 1)] {
            let f = sample(3, 4, 16, Precision::F16, opt, thumbs, loss);
            let bytes = f.to_bytes().unwrap();
            let g = DistFile::from_bytes(&bytes).unwrap();
            let mut expect = f.clone();
            expect.prompts = f16_round(&f.prompts);
            assert_eq!(g, expect);
            assert_ne!(f.prompts, g.prompts, "f16 should round something");
            // Re-saving is canonical.
            assert_eq!(g.to_bytes().unwrap(), bytes);
        }
    }

    #[test]
    fn round_trip_f32_bit_exact() {
        for (opt, thumbs, loss) in [(false, 0, 0), (true, 2, 7), (true, 0, 0), (false, 16, 3)] {
            let f = sample(2, 3, 8, Precision::F32, opt, thumbs, loss);
            let g = DistFile::from_bytes(&f.to_bytes().unwrap()).unwrap();
            assert_eq!(g, f);
            let bits = |xs: &[f32]| xs.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&g.prompts), bits(&f.prompts));
            if let (Some(a), Some(b)) = (&f.optimizer, &g.optimizer) {
                assert_eq!(bits(&a.m), bits(&b.m));
                assert_eq!(bits(&a.v), bits(&b.v));
                assert_eq!(a.rng, b.rng);
                assert_eq!(a.extra, b.extra);
            }
        }
    }

    #[test]
    fn every_truncation_and_trailing_garbage_rejected() {
        for (_, f) in seed_files() {
            let bytes = f.to_bytes().unwrap();
            for len in 0..bytes.len() {
                assert!(DistFile::from_bytes(&bytes[..len]).is_err(), "truncation to {len} accepted");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(matches!(DistFile::from_bytes(&longer), Err(FileError::Container(_))));
        }
    }

    #[test]
    fn oversized_rejected_before_parsing() {
        let big = vec![0u8; MAX_FILE_BYTES + 1];
        let e = DistFile::from_bytes(&big).unwrap_err();
        assert!(matches!(e, FileError::TooLarge { .. }), "{e}");
        // Header length claims beyond limits.
        let mut b = u64::MAX.to_le_bytes().to_vec();
        b.extend_from_slice(b"{}");
        assert!(matches!(DistFile::from_bytes(&b), Err(FileError::HeaderTooLarge { .. })));
        let mut b = 100u64.to_le_bytes().to_vec();
        b.extend_from_slice(b"{}");
        assert!(matches!(DistFile::from_bytes(&b), Err(FileError::Container(_))));
    }

    #[test]
    fn not_safetensors_rejected() {
        for b in [&b""[..], b"hello", b"PK\x03\x04 zip file, not ddist", &[0u8; 64]] {
            assert!(DistFile::from_bytes(b).is_err());
        }
        // Valid safetensors, no metadata.
        let view = TensorView::new(Dtype::F32, vec![1], &[0, 0, 0, 0]).unwrap();
        let plain = safetensors::serialize([("prompts", view.clone())], None).unwrap();
        assert_eq!(DistFile::from_bytes(&plain), Err(FileError::MissingHeader));
        // Metadata with a different key.
        let other = HashMap::from([("format".to_string(), "pt".to_string())]);
        let b = safetensors::serialize([("prompts", view.clone())], Some(other)).unwrap();
        assert!(matches!(DistFile::from_bytes(&b), Err(FileError::UnexpectedMetadata(k)) if k == "format"));
        // Non-JSON header.
        let bad = HashMap::from([(FORMAT.to_string(), "not json {".to_string())]);
        let b = safetensors::serialize([("prompts", view)], Some(bad)).unwrap();
        assert!(matches!(DistFile::from_bytes(&b), Err(FileError::BadHeader(_))));
    }

    #[test]
    fn offsets_near_usize_max_rejected_without_panic() {
        // Eight U8 tensors of 2^61-1 bytes each chain to offsets near u64::MAX; without the
        // precheck, safetensors' `buffer_end + 8 + n` overflows (a panic with overflow checks).
        let size: u64 = (1 << 61) - 1;
        let mut entries = Vec::new();
        for i in 0..8u64 {
            entries.push(format!(
                "\"a{i}\":{{\"dtype\":\"U8\",\"shape\":[{size}],\"data_offsets\":[{},{}]}}",
                i * size,
                (i + 1) * size
            ));
        }
        let header = format!("{{{}}}", entries.join(","));
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        assert!(matches!(DistFile::from_bytes(&b), Err(FileError::Container(_))));
    }

    #[test]
    fn non_finite_and_out_of_range_rejected() {
        let f = sample(2, 2, 4, Precision::F32, true, 0, 3);
        for (tensor, bad) in [
            (T_PROMPTS, f32::NAN),
            (T_PROMPTS, f32::INFINITY),
            (T_PROMPTS, -2e4),
            (T_OPT_M, f32::NEG_INFINITY),
            (T_OPT_V, 2e4),
            (T_OPT_V, -1e-3),
            (T_LOSS, f32::NAN),
            (T_LOSS, f32::INFINITY),
        ] {
            // In memory: to_bytes refuses.
            let mut g = f.clone();
            let target = match tensor {
                T_PROMPTS => &mut g.prompts,
                T_LOSS => &mut g.loss_curve,
                T_OPT_M => &mut g.optimizer.as_mut().unwrap().m,
                _ => &mut g.optimizer.as_mut().unwrap().v,
            };
            target[1] = bad;
            let e = g.to_bytes().unwrap_err();
            assert!(
                matches!(&e, FileError::NonFinite { tensor: t, index: 1, .. } | FileError::ValueOutOfRange { tensor: t, index: 1, .. } if t == tensor),
                "{tensor} {bad}: {e}"
            );
            // On disk: from_bytes refuses.
            let (h, mut t) = explode(&f.to_bytes().unwrap());
            let e = t.iter_mut().find(|e| e.0 == tensor).unwrap();
            e.3[4..8].copy_from_slice(&bad.to_le_bytes());
            let err = DistFile::from_bytes(&raw_file(&h, &t)).unwrap_err();
            assert_eq!(err.to_string(), g.validate().unwrap_err().to_string()); // NaN != NaN
        }
        // f16 NaN / inf on disk.
        let f = sample(1, 1, 8, Precision::F16, false, 0, 0);
        for bits in [0x7e00u16, 0x7c00, 0xfc00] {
            let (h, mut t) = explode(&f.to_bytes().unwrap());
            t[0].3[2..4].copy_from_slice(&bits.to_le_bytes());
            let e = DistFile::from_bytes(&raw_file(&h, &t)).unwrap_err();
            assert!(matches!(e, FileError::NonFinite { index: 1, .. }), "{e}");
        }
    }

    #[test]
    fn mis_shaped_rejected() {
        let f = sample(2, 1, 8, Precision::F16, true, 0, 0);
        let (mut h, t) = explode(&f.to_bytes().unwrap());
        // Same element count, K and M swapped in the header.
        h["k"] = 1.into();
        h["m"] = 2.into();
        let e = DistFile::from_bytes(&raw_file(&h, &t)).unwrap_err();
        assert!(matches!(&e, FileError::ShapeMismatch { tensor, .. } if tensor == "prompts"), "{e}");
        // Wrong element count.
        let (h, mut t) = explode(&f.to_bytes().unwrap());
        set_tensor(&mut t, T_PROMPTS, Dtype::F16, vec![2, 1, 4], vec![0; 16]);
        assert!(matches!(DistFile::from_bytes(&raw_file(&h, &t)), Err(FileError::ShapeMismatch { .. })));
        // Optimizer moment with the wrong shape.
        let (h, mut t) = explode(&f.to_bytes().unwrap());
        set_tensor(&mut t, T_OPT_V, Dtype::F32, vec![16], vec![0; 64]);
        let e = DistFile::from_bytes(&raw_file(&h, &t)).unwrap_err();
        assert!(matches!(&e, FileError::ShapeMismatch { tensor, .. } if tensor == T_OPT_V), "{e}");
        // Loss curve length disagreeing with the header count.
        let f = sample(1, 1, 8, Precision::F32, false, 0, 4);
        let (mut h, t) = explode(&f.to_bytes().unwrap());
        h["loss_curve_len"] = 3.into();
        assert!(matches!(DistFile::from_bytes(&raw_file(&h, &t)), Err(FileError::ShapeMismatch { .. })));
        // Thumbnail that is not 1-D.
        let f = sample(1, 1, 8, Precision::F16, false, 1, 0);
        let (h, mut t) = explode(&f.to_bytes().unwrap());
        let bytes = t.iter().find(|e| e.0 == "thumbnail.0").unwrap().3.clone();
        set_tensor(&mut t, "thumbnail.0", Dtype::U8, vec![1, bytes.len()], bytes);
        assert!(matches!(DistFile::from_bytes(&raw_file(&h, &t)), Err(FileError::ShapeMismatch { .. })));
        // Dimensions zero or over the caps.
        for (key, v) in [("k", 0), ("k", MAX_K + 1), ("m", MAX_M + 1), ("hidden", 0), ("hidden", MAX_HIDDEN + 1)] {
            let (mut h, t) = explode(&f.to_bytes().unwrap());
            h[key] = v.into();
            let e = DistFile::from_bytes(&raw_file(&h, &t)).unwrap_err();
            assert!(matches!(e, FileError::BadDimension { .. }), "{key}={v}: {e}");
        }
        // In memory.
        let mut g = sample(1, 1, 8, Precision::F16, false, 0, 0);
        g.prompts.pop();
        assert!(matches!(g.to_bytes(), Err(FileError::ShapeMismatch { .. })));
        let mut g = sample(1, 1, 8, Precision::F16, false, 0, 0);
        g.model.hidden_size = 16;
        assert!(matches!(g.validate(), Err(FileError::InvalidField { field: "model.hidden_size", .. })));
    }

    #[test]
    fn wrong_dtype_rejected() {
        let f = sample(1, 2, 4, Precision::F16, false, 1, 2);
        let cases: [(&str, Dtype, usize); 4] = [
            (T_PROMPTS, Dtype::F32, 4),
            (T_PROMPTS, Dtype::BF16, 2),
            (T_LOSS, Dtype::I32, 4),
            ("thumbnail.0", Dtype::I8, 1),
        ];
        for (name, dtype, width) in cases {
            let (h, mut t) = explode(&f.to_bytes().unwrap());
            let e = t.iter().find(|e| e.0 == name).unwrap();
            let shape = e.2.clone();
            let n: usize = shape.iter().product();
            set_tensor(&mut t, name, dtype, shape, vec![0; n * width]);
            let e = DistFile::from_bytes(&raw_file(&h, &t)).unwrap_err();
            assert!(matches!(&e, FileError::WrongDtype { tensor, .. } if tensor == name), "{name}: {e}");
        }
        // An F32 file whose prompts are F16.
        let f = sample(1, 2, 4, Precision::F32, false, 0, 0);
        let (h, mut t) = explode(&f.to_bytes().unwrap());
        set_tensor(&mut t, T_PROMPTS, Dtype::F16, vec![1, 2, 4], vec![0; 16]);
        assert!(matches!(DistFile::from_bytes(&raw_file(&h, &t)), Err(FileError::WrongDtype { .. })));
    }

    #[test]
    fn wrong_format_and_version_rejected() {
        let f = sample(1, 1, 8, Precision::F16, false, 0, 0);
        let (h0, t) = explode(&f.to_bytes().unwrap());
        let with = |key: &str, v: serde_json::Value| {
            let mut h = h0.clone();
            h[key] = v;
            DistFile::from_bytes(&raw_file(&h, &t)).unwrap_err()
        };
        assert!(matches!(with("format", "dreamdust".into()), FileError::WrongFormat { found } if found == "dreamdust"));
        assert!(matches!(with("format", 3.into()), FileError::WrongFormat { .. }));
        let e = with("version", 3.into());
        assert_eq!(e, FileError::NewerVersion { found: 3, supported: 2 });
        assert!(e.to_string().contains("made by a newer dreamdist"), "{e}");
        assert_eq!(with("version", 0.into()), FileError::BadVersion { found: 0 });
        assert!(matches!(with("version", "1".into()), FileError::BadHeader(_)));
        assert!(matches!(with("version", (-1).into()), FileError::BadHeader(_)));
        // A newer version is reported even when its fields are unknown to us.
        let mut h = h0.clone();
        h["version"] = 7.into();
        h["brand_new_field"] = true.into();
        assert!(matches!(DistFile::from_bytes(&raw_file(&h, &t)), Err(FileError::NewerVersion { found: 7, .. })));
        // Unknown and missing fields in a current header.
        assert!(matches!(with("brand_new_field", true.into()), FileError::BadHeader(_)));
        let mut h = h0.clone();
        h.as_object_mut().unwrap().remove("train");
        assert!(matches!(DistFile::from_bytes(&raw_file(&h, &t)), Err(FileError::BadHeader(_))));
        let mut h = h0.clone();
        h.as_object_mut().unwrap().remove("format");
        assert!(matches!(DistFile::from_bytes(&raw_file(&h, &t)), Err(FileError::BadHeader(_))));
    }

    #[test]
    fn extra_and_missing_tensors_rejected() {
        let f = sample(1, 1, 8, Precision::F32, true, 2, 3);
        let (h, t) = explode(&f.to_bytes().unwrap());
        let mut extra = t.clone();
        extra.push(("foo".into(), Dtype::U8, vec![1], vec![0]));
        assert_eq!(DistFile::from_bytes(&raw_file(&h, &extra)), Err(FileError::ExtraTensor("foo".into())));
        let mut extra = t.clone();
        extra.push(("thumbnail.2".into(), Dtype::U8, vec![8], PNG_SIGNATURE.to_vec()));
        assert_eq!(DistFile::from_bytes(&raw_file(&h, &extra)), Err(FileError::ExtraTensor("thumbnail.2".into())));
        for name in [T_PROMPTS, T_LOSS, T_OPT_M, T_OPT_V, "thumbnail.1"] {
            let fewer: Vec<_> = t.iter().filter(|e| e.0 != name).cloned().collect();
            assert_eq!(DistFile::from_bytes(&raw_file(&h, &fewer)), Err(FileError::MissingTensor(name.into())));
        }
        // Header says no optimizer but the moments are there.
        let mut h2 = h.clone();
        h2["optimizer"] = serde_json::Value::Null;
        assert!(matches!(DistFile::from_bytes(&raw_file(&h2, &t)), Err(FileError::ExtraTensor(_))));
    }

    #[test]
    fn bad_fields_rejected() {
        let base = sample(1, 1, 8, Precision::F16, false, 0, 0);
        let field_of = |g: &DistFile| match g.validate() {
            Err(FileError::InvalidField { field, .. }) => field,
            other => panic!("expected InvalidField, got {other:?}"),
        };
        type Edit = fn(&mut DistFile);
        let cases: [(&str, Edit); 15] = [
            ("train.template", |g| g.train.template = "a photo".into()),
            ("train.template", |g| g.train.template = "{} and {}".into()),
            ("train.template", |g| g.train.template = format!("{{}}{}", "x".repeat(1000))),
            ("train.mode", |g| g.train.mode = "lora".into()),
            ("train.ortho", |g| g.train.ortho = "EOS".into()),
            ("train.lr", |g| g.train.lr = f64::NAN),
            ("train.lambda", |g| g.train.lambda = -1.0),
            ("name", |g| g.name = "x".repeat(201)),
            ("name", |g| g.name = "line\nbreak".into()),
            ("created_by", |g| g.created_by = "y".repeat(201)),
            ("model.id", |g| g.model.id = "SD21".into()),
            ("model.id", |g| g.model.id = String::new()),
            ("model.text_encoder_sha256", |g| g.model.text_encoder_sha256 = "xyz".into()),
            ("model.identity", |g| g.model.identity = Some("AB".repeat(32))),
            ("train.recipe", |g| g.train.recipe = Some("mine".into())),
        ];
        for (field, edit) in cases {
            let mut g = base.clone();
            edit(&mut g);
            assert_eq!(field_of(&g), field);
            assert!(g.to_bytes().is_err());
            // And on disk, bypassing to_bytes' validation.
            let (mut h, t) = explode(&base.to_bytes().unwrap());
            h["name"] = g.name.clone().into();
            h["created_by"] = g.created_by.clone().into();
            h["model"] = serde_json::to_value(&g.model).unwrap();
            h["train"] = serde_json::to_value(&g.train).unwrap();
            let e = DistFile::from_bytes(&raw_file(&h, &t)).unwrap_err();
            if g.train.lr.is_nan() {
                // JSON has no NaN: serde_json writes `null`, which the header's schema refuses.
                assert_eq!(h["train"]["lr"], serde_json::Value::Null);
                assert!(matches!(&e, FileError::BadHeader(m) if m.contains("null")), "{field}: {e}");
            } else {
                assert!(matches!(e, FileError::InvalidField { field: f, .. } if f == field), "{field}: {e}");
            }
        }
        let mut g = base.clone();
        g.name = "é".repeat(200); // 200 chars, 400 bytes: fine
        g.train.template = format!("{{}}{}", "x".repeat(998));
        g.validate().unwrap();
    }

    #[test]
    fn bad_thumbnails_rejected() {
        let base = sample(1, 1, 8, Precision::F16, false, 0, 0);
        let mut g = base.clone();
        g.reference_thumbnails = vec![png(4, 0); 17];
        assert!(matches!(g.to_bytes(), Err(FileError::BadThumbnail { .. })));
        let mut g = base.clone();
        g.reference_thumbnails = vec![png(MAX_THUMBNAIL_BYTES, 0)];
        assert!(matches!(g.to_bytes(), Err(FileError::BadThumbnail { index: 0, .. })));
        let mut g = base.clone();
        g.reference_thumbnails = vec![png(4, 0), b"GIF89a......".to_vec()];
        assert!(matches!(g.to_bytes(), Err(FileError::BadThumbnail { index: 1, .. })));
        let mut g = base.clone();
        g.reference_thumbnails = vec![Vec::new()];
        assert!(matches!(g.to_bytes(), Err(FileError::BadThumbnail { index: 0, .. })));
        // On disk.
        let f = sample(1, 1, 8, Precision::F16, false, 1, 0);
        let (h, mut t) = explode(&f.to_bytes().unwrap());
        set_tensor(&mut t, "thumbnail.0", Dtype::U8, vec![3], b"JPG".to_vec());
        assert!(matches!(DistFile::from_bytes(&raw_file(&h, &t)), Err(FileError::BadThumbnail { .. })));
        let (mut h, t) = explode(&f.to_bytes().unwrap());
        h["thumbnails"] = 17.into();
        assert!(matches!(DistFile::from_bytes(&raw_file(&h, &t)), Err(FileError::BadThumbnail { .. })));
    }

    /// A file written by format 1 (before identities and recipes) still loads, and its model is
    /// checked by the old file hash where the loaded model knows it, or accepted with a note.
    #[test]
    fn format_1_files_still_load() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ddist/format1-checkpoint.ddist");
        let f = DistFile::from_bytes(&std::fs::read(path).unwrap()).unwrap();
        assert_eq!((f.model.identity.as_ref(), f.train.recipe.as_ref()), (None, None));
        let mut loaded = f.model.clone();
        loaded.identity = Some("12".repeat(32));
        loaded.text_encoder_sha256 = String::new();
        let note = f.check_model(&loaded).unwrap().expect("a note about the old identity");
        assert!(note.contains("older dreamdist") && note.contains("ababababab"), "{note}");
        loaded.text_encoder_sha256 = f.model.text_encoder_sha256.clone();
        assert_eq!(f.check_model(&loaded).unwrap(), None);
        loaded.text_encoder_sha256 = "cd".repeat(32);
        assert!(matches!(f.check_model(&loaded), Err(FileError::ModelMismatch { .. })));
        // Identities decide when both files know them.
        let mut g = f.clone();
        g.model.identity = Some("12".repeat(32));
        loaded.text_encoder_sha256 = String::new();
        assert_eq!(g.check_model(&loaded).unwrap(), None);
        loaded.identity = Some("34".repeat(32));
        assert!(matches!(g.check_model(&loaded), Err(FileError::ModelMismatch { .. })));
        let back = DistFile::from_bytes(&g.to_bytes().unwrap()).unwrap();
        assert_eq!(back.model.identity, g.model.identity);
    }

    #[test]
    fn check_model_rules() {
        let f = sample(1, 1, 8, Precision::F16, false, 0, 0);
        let same = f.model.clone();
        f.check_model(&same).unwrap();
        let mut unknown = same.clone();
        unknown.text_encoder_sha256 = String::new();
        f.check_model(&unknown).unwrap();
        let mut upper = same.clone();
        upper.text_encoder_sha256 = upper.text_encoder_sha256.to_uppercase();
        f.check_model(&upper).unwrap();

        let mut other = same.clone();
        other.id = "sd21".into();
        other.hidden_size = 1024;
        let e = f.check_model(&other).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("trained for `tiny` (hidden size 8"), "{msg}");
        assert!(msg.contains("loaded model is `sd21` (hidden size 1024"), "{msg}");
        let mut other = same.clone();
        other.hidden_size = 16;
        assert!(matches!(f.check_model(&other), Err(FileError::ModelMismatch { .. })));
        let mut other = same.clone();
        other.text_encoder_sha256 = "cd".repeat(32);
        let msg = f.check_model(&other).unwrap_err().to_string();
        assert!(msg.contains("ababab") && msg.contains("cdcdcd"), "{msg}");
    }

    /// A rename the program knows (the demo model's identity before its token table became f16)
    /// is accepted with a note, one way only and for that model only; any other differing
    /// identity is still another model.
    #[test]
    fn known_identity_renames_load_with_a_note() {
        let r = &IDENTITY_RENAMES[0];
        let mut f = sample(1, 1, 8, Precision::F16, false, 0, 0);
        f.model.id = r.model.into();
        f.model.identity = Some(r.before.into());
        let mut loaded = f.model.clone();
        loaded.identity = Some(r.after.into());
        let note = f.check_model(&loaded).unwrap().expect("a note");
        assert!(note.contains("identity before 2026-12-08"), "{note}");
        f.model.identity = Some(r.after.into());
        loaded.identity = Some(r.before.into());
        assert!(matches!(f.check_model(&loaded), Err(FileError::ModelMismatch { .. })), "not backwards");
        f.model.identity = Some(r.before.into());
        loaded.identity = Some("12".repeat(32));
        assert!(matches!(f.check_model(&loaded), Err(FileError::ModelMismatch { .. })));
        f.model.id = "tiny".into();
        loaded.id = "tiny".into();
        loaded.identity = Some(r.after.into());
        assert!(matches!(f.check_model(&loaded), Err(FileError::ModelMismatch { .. })), "for the demo only");
    }

    /// One seeded structural mutation of a valid file.
    fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
        match rng.below(9) {
            0 => {
                for _ in 0..1 + rng.below(8) {
                    let i = rng.below(bytes.len());
                    if let Some(b) = bytes.get_mut(i) {
                        *b ^= 1 << rng.below(8);
                    }
                }
            }
            1 => bytes.truncate(rng.below(bytes.len() + 1)),
            2 => {
                let at = rng.below(bytes.len() + 1);
                let n = 1 + rng.below(16);
                let ins: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                bytes.splice(at..at, ins);
            }
            3 => {
                let at = rng.below(bytes.len() + 1);
                let end = (at + 1 + rng.below(32)).min(bytes.len());
                bytes.drain(at..end);
            }
            4 => {
                // Length-field edits.
                if bytes.len() >= 8 {
                    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
                    let new = match rng.below(5) {
                        0 => n.wrapping_add(1 + rng.below(16) as u64),
                        1 => n.wrapping_sub(1 + rng.below(16) as u64),
                        2 => rng.next(),
                        3 => u64::MAX - rng.below(64) as u64,
                        _ => rng.below(bytes.len() + 16) as u64,
                    };
                    bytes[..8].copy_from_slice(&new.to_le_bytes());
                }
            }
            5 | 6 => {
                // Digit edits in the container header: shapes, offsets, counts, dims...
                let n = u64::from_le_bytes(bytes.get(..8).and_then(|b| b.try_into().ok()).unwrap_or([0; 8]));
                let end = usize::try_from(n).unwrap_or(usize::MAX).saturating_add(8).min(bytes.len());
                let digits: Vec<usize> = (8..end).filter(|&i| bytes[i].is_ascii_digit()).collect();
                for _ in 0..1 + rng.below(3) {
                    if digits.is_empty() {
                        break;
                    }
                    let i = digits[rng.below(digits.len())];
                    bytes[i] = match rng.below(3) {
                        0 => b'0' + rng.below(10) as u8,
                        1 => b'9',
                        _ => b'0',
                    };
                }
            }
            _ => {
                // Structured header JSON edits, keeping the container well-formed.
                let Ok(st) = SafeTensors::read_metadata(bytes) else { return };
                let Some(json) = st.1.metadata().as_ref().and_then(|m| m.get(FORMAT)) else { return };
                let Ok(mut h) = serde_json::from_str::<serde_json::Value>(json) else { return };
                let data = bytes[8 + st.0..].to_vec();
                const KEYS: [&str; 14] = [
                    "format",
                    "version",
                    "name",
                    "k",
                    "m",
                    "hidden",
                    "precision",
                    "model",
                    "train",
                    "created_by",
                    "loss_curve_len",
                    "thumbnails",
                    "optimizer",
                    "zzz",
                ];
                let key = KEYS[rng.below(KEYS.len())];
                let v: serde_json::Value = match rng.below(10) {
                    0 => serde_json::Value::Null,
                    1 => (rng.next() % 300).into(),
                    2 => rng.next().into(),
                    3 => (-(rng.below(1000) as i64)).into(),
                    4 => "f32".into(),
                    5 => "{}".into(),
                    6 => serde_json::json!([1, 2, 3]),
                    7 => serde_json::json!({"step": 1, "rng": [], "extra": null}),
                    8 => 1.5.into(),
                    _ => {
                        h.as_object_mut().map(|o| o.remove(key));
                        serde_json::Value::Null
                    }
                };
                if rng.below(10) != 9 {
                    h[key] = v;
                }
                let meta = HashMap::from([(FORMAT.to_string(), h.to_string())]);
                let mut hdr = serde_json::to_value(st.1.tensors()).unwrap_or_default();
                if let Some(map) = hdr.as_object_mut() {
                    map.insert("__metadata__".into(), serde_json::to_value(meta).unwrap());
                }
                let mut text = hdr.to_string().into_bytes();
                while text.len() % 8 != 0 {
                    text.push(b' ');
                }
                let mut out = (text.len() as u64).to_le_bytes().to_vec();
                out.extend(text);
                out.extend(data);
                *bytes = out;
            }
        }
    }

    #[test]
    fn mutation_fuzz_never_panics() {
        let start = Instant::now();
        let seeds: Vec<Vec<u8>> = seed_files().iter().map(|(_, f)| f.to_bytes().unwrap()).collect();
        let mut rng = Rng(0xD1CE_5EED);
        let (mut ok, mut err) = (0usize, 0usize);
        for iter in 0..20_000 {
            let mut bytes = seeds[iter % seeds.len()].clone();
            for _ in 0..1 + rng.below(3) {
                mutate(&mut rng, &mut bytes);
            }
            let result = std::panic::catch_unwind(|| DistFile::from_bytes(&bytes));
            match result {
                Ok(Ok(f)) => {
                    ok += 1;
                    let again = f.to_bytes().expect("a loaded file must save");
                    assert_eq!(DistFile::from_bytes(&again).as_ref(), Ok(&f), "iteration {iter}");
                }
                Ok(Err(_)) => err += 1,
                Err(_) => panic!("from_bytes panicked at iteration {iter} on {} bytes: {bytes:?}", bytes.len()),
            }
        }
        eprintln!("mutation fuzz: {ok} accepted, {err} rejected, {:?}", start.elapsed());
        assert!(ok > 0 && err > 10_000, "ok={ok} err={err}");
    }

    #[test]
    fn typical_file_size() {
        let f = sample(32, 4, 1024, Precision::F16, false, 0, 1500);
        let bytes = f.to_bytes().unwrap();
        let mut plain = f.clone();
        plain.loss_curve.clear();
        let plain_bytes = plain.to_bytes().unwrap();
        eprintln!(
            "K=32 M=4 hidden=1024 F16: {} bytes ({} with a 1500-point loss curve)",
            plain_bytes.len(),
            bytes.len()
        );
        assert!(plain_bytes.len() < 32 * 4 * 1024 * 2 + 4096);
        assert_eq!(DistFile::from_bytes(&plain_bytes).unwrap().prompts, f16_round(&f.prompts));
    }

    #[test]
    fn too_large_to_write() {
        // 16 thumbnails of 1 MiB stay under the cap; pile on a big F32 checkpoint to exceed it.
        let mut f = sample(1, 1, 8, Precision::F32, false, 0, 0);
        f.k = 256;
        f.m = 75;
        f.hidden = 300;
        f.model.hidden_size = 300;
        f.prompts = vec![0.0; 256 * 75 * 300];
        f.optimizer = Some(OptimizerState {
            step: 0,
            m: f.prompts.clone(),
            v: f.prompts.clone(),
            rng: vec![],
            extra: serde_json::Value::Null,
        });
        assert!(matches!(f.to_bytes(), Err(FileError::TooLarge { .. })));
    }

    /// The committed fuzz seeds (`fuzz/seeds/ddist/`) are exactly what `seed_files` writes.
    /// Regenerate them with `DDIST_WRITE_SEEDS=1 cargo test --release --lib fuzz_seeds_are_current`.
    #[test]
    fn fuzz_seeds_are_current() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/ddist");
        let write = std::env::var("DDIST_WRITE_SEEDS").as_deref() == Ok("1");
        for (name, f) in seed_files() {
            let bytes = f.to_bytes().unwrap();
            let path = format!("{dir}/{name}");
            if write {
                std::fs::create_dir_all(dir).unwrap();
                std::fs::write(&path, &bytes).unwrap();
            }
            let committed = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(committed, bytes, "{path} is stale: regenerate with DDIST_WRITE_SEEDS=1");
            assert_eq!(DistFile::from_bytes(&committed).unwrap(), DistFile::from_bytes(&bytes).unwrap());
        }
    }
}
