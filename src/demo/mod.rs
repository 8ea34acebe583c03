//! The demo world: procedural captioned scenes ([`scene`]), the attribute reader that judges
//! images of it ([`reader`]), and the data-set file the demo model's training script reads.
//!
//! The demo model (`ModelSpec::demo()`) is a small SD 2.x-architecture model trained from
//! scratch on these scenes by `scripts/demo/train_demo.py`; it ships with the page so that a
//! first visit, a classroom or a laptop without a big GPU can train and sample in seconds.
pub mod eval;
pub mod reader;
pub mod scene;

use safetensors::Dtype;
use safetensors::tensor::TensorView;

use crate::tokenizer::{ClipTokenizer, MAX_LEN};
use crate::{Error, Result};

pub use reader::{Reading, read};
pub use scene::{Attributes, Background, Color, Position, SIDE, Shape, Size};

/// Attribute ids of a scene: `[shape, color, size, position, background]` (indices into each
/// enum's `ALL`).
pub fn attribute_ids(a: &Attributes) -> [u8; 5] {
    [
        a.shape.index() as u8,
        a.color.index() as u8,
        a.size.index() as u8,
        a.position.index() as u8,
        a.background.index() as u8,
    ]
}

/// Samples `start..start + n` of the data set `seed` as a safetensors file: `images` U8
/// `[n, 32, 32, 3]`, `ids` I64 `[n, 77]` (captions through the CLIP tokenizer, padded as for
/// SD 2), `attrs` U8 `[n, 5]` ([`attribute_ids`]), and metadata `"dreamdist-demo"` (JSON: seed,
/// start, the captions, the empty caption's ids, attribute names).
pub fn dataset_file(seed: u64, start: u64, n: usize, tokenizer: &ClipTokenizer) -> Result<Vec<u8>> {
    let mut images = Vec::with_capacity(n * SIDE * SIDE * 3);
    let mut ids = Vec::with_capacity(n * MAX_LEN * 8);
    let mut attrs = Vec::with_capacity(n * 5);
    let mut captions = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let s = scene::sample(seed, start + i);
        images.extend_from_slice(&s.image);
        for id in tokenizer.encode(&s.caption)? {
            ids.extend_from_slice(&(id as i64).to_le_bytes());
        }
        attrs.extend_from_slice(&attribute_ids(&s.attrs));
        captions.push(s.caption);
    }
    let empty: Vec<u32> = tokenizer.encode("")?;
    let names = serde_json::json!({
        "shape": Shape::ALL.iter().map(|x| x.name()).collect::<Vec<_>>(),
        "color": Color::ALL.iter().map(|x| x.name()).collect::<Vec<_>>(),
        "size": Size::ALL.iter().map(|x| x.name()).collect::<Vec<_>>(),
        "position": Position::ALL.iter().map(|x| x.name()).collect::<Vec<_>>(),
        "background": Background::ALL.iter().map(|x| x.name()).collect::<Vec<_>>(),
    });
    let meta = serde_json::json!({
        "seed": seed, "start": start, "captions": captions, "empty_ids": empty, "attributes": names,
    });
    let err = |e: safetensors::SafeTensorError| Error::Invalid(format!("writing the demo data set: {e}"));
    let tensors = vec![
        ("images", TensorView::new(Dtype::U8, vec![n, SIDE, SIDE, 3], &images).map_err(err)?),
        ("ids", TensorView::new(Dtype::I64, vec![n, MAX_LEN], &ids).map_err(err)?),
        ("attrs", TensorView::new(Dtype::U8, vec![n, 5], &attrs).map_err(err)?),
    ];
    let metadata = std::collections::HashMap::from([("dreamdist-demo".to_string(), meta.to_string())]);
    safetensors::serialize(tensors, Some(metadata)).map_err(err)
}

/// Reads every image of a safetensors file with a U8 tensor `images` `[n, 32, 32, 3]`.
pub fn read_images_file(bytes: &[u8]) -> Result<Vec<Reading>> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| Error::Invalid(format!("not a safetensors file: {e}")))?;
    let t = st.tensor("images").map_err(|e| Error::Invalid(format!("no `images` tensor: {e}")))?;
    if t.dtype() != Dtype::U8 || t.shape().len() != 4 || t.shape()[1..] != [SIDE, SIDE, 3] {
        return Err(Error::Invalid(format!(
            "`images` must be U8 [n, {SIDE}, {SIDE}, 3], got {:?} {:?}",
            t.dtype(),
            t.shape()
        )));
    }
    Ok(t.data().chunks_exact(SIDE * SIDE * 3).map(read).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn reader_reads_rendered_scenes() {
        let mut rng = Rng::new(2024);
        let n = 2000;
        let mut right = [0usize; 5];
        let mut all = 0;
        for _ in 0..n {
            let a = Attributes::random(&mut rng);
            let img = scene::render_random(&a, &mut rng);
            let r = read(&img);
            let ok = [
                r.shape == Some(a.shape),
                r.color == Some(a.color),
                r.size == Some(a.size),
                r.position == Some(a.position),
                r.background == a.background,
            ];
            for (i, o) in ok.iter().enumerate() {
                right[i] += *o as usize;
            }
            all += ok.iter().all(|&o| o) as usize;
        }
        let pct = |k: usize| 100.0 * k as f64 / n as f64;
        eprintln!(
            "reader on {n} rendered scenes: shape {:.2}%, colour {:.2}%, size {:.2}%, position {:.2}%, background {:.2}%, all {:.2}%",
            pct(right[0]),
            pct(right[1]),
            pct(right[2]),
            pct(right[3]),
            pct(right[4]),
            pct(all)
        );
        for (name, k) in ["shape", "colour", "size", "position", "background"].iter().zip(right) {
            assert!(pct(k) >= 98.0, "{name} read correctly in only {:.2}% of rendered scenes", pct(k));
        }
    }

    #[test]
    fn rendering_is_deterministic_and_captions_name_the_attributes() {
        let a = scene::sample(7, 123);
        assert_eq!(a, scene::sample(7, 123));
        assert_ne!(a.image, scene::sample(8, 123).image);
        for p in 0..scene::phrasings() {
            let c = scene::caption(&a.attrs, p);
            assert!(c.contains(a.attrs.shape.name()) && c.contains(a.attrs.color.name()), "{c}");
        }
        for &p in scene::FULL_PHRASINGS {
            assert!(scene::caption(&a.attrs, p).contains(a.attrs.background.name()));
        }
    }

    #[test]
    fn dataset_file_round_trips_through_the_reader() {
        let tok = ClipTokenizer::sd2().unwrap();
        let bytes = dataset_file(1, 10, 16, &tok).unwrap();
        let readings = read_images_file(&bytes).unwrap();
        assert_eq!(readings.len(), 16);
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let attrs = st.tensor("attrs").unwrap();
        for (r, a) in readings.iter().zip(attrs.data().chunks_exact(5)) {
            assert_eq!(r.background.index() as u8, a[4]);
        }
        assert!(read_images_file(b"junk").is_err());
    }
}
