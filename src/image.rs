//! Reference images → training tensors, with the resize/crop policy and clear errors.
//!
//! Policy: decode (PNG, JPEG, WebP), refuse anything over [`MAX_SIDE`] px per side or
//! [`MAX_PIXELS`] in total (checked from the header, before decoding) and anything under
//! [`MIN_SIDE`] px on its shorter side; convert to RGB (alpha composited on white); resize so the
//! shorter side equals the training resolution (Catmull-Rom), centre-crop a square; scale to [-1, 1].
use burn::tensor::{Device, Tensor};

use crate::backend::tensor;
use crate::{Error, Result};

/// Largest accepted side, in pixels.
pub const MAX_SIDE: u32 = 16384;
/// Largest accepted pixel count.
pub const MAX_PIXELS: u64 = 64 * 1024 * 1024;
/// Smallest accepted shorter side, in pixels.
pub const MIN_SIDE: u32 = 64;

/// Decodes and preprocesses one image to `[3, R, R]` values in [-1, 1] (row-major, CHW).
pub fn preprocess(bytes: &[u8], resolution: usize, name: &str) -> Result<Vec<f32>> {
    let (v, _, _) = preprocess_with(bytes, resolution, 1, name)?;
    Ok(v)
}

/// Decodes one image, resizes its shorter side to `resolution` and centre-crops the longer side
/// to at most `long_factor × resolution`, rounded down to a multiple of 8 px. Returns
/// (`[3, H, W]` values in [-1, 1], H, W).
pub fn preprocess_with(
    bytes: &[u8],
    resolution: usize,
    long_factor: usize,
    name: &str,
) -> Result<(Vec<f32>, usize, usize)> {
    use image::ImageReader;
    use std::io::Cursor;
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::Invalid(format!("{name}: unreadable: {e}")))?;
    if reader.format().is_none() {
        return Err(Error::Invalid(format!("{name}: not an image (PNG, JPEG or WebP expected)")));
    }
    let (w, h) = reader.into_dimensions().map_err(|e| Error::Invalid(format!("{name}: not a readable image: {e}")))?;
    if w > MAX_SIDE || h > MAX_SIDE || (w as u64) * (h as u64) > MAX_PIXELS {
        return Err(Error::Invalid(format!(
            "{name}: {w}×{h} is too large (at most {MAX_SIDE} px per side and {} megapixels)",
            MAX_PIXELS / (1024 * 1024)
        )));
    }
    if w.min(h) < MIN_SIDE {
        return Err(Error::Invalid(format!("{name}: {w}×{h} is too small (shorter side at least {MIN_SIDE} px)")));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::Invalid(format!("{name}: {e}")))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_PIXELS * 4 * 2);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| Error::Invalid(format!("{name}: cannot decode: {e}")))?;
    let orientation = {
        use image::ImageDecoder;
        decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms)
    };
    let mut img = image::DynamicImage::from_decoder(decoder)
        .map_err(|e| Error::Invalid(format!("{name}: cannot decode: {e}")))?;
    // Photos carry their rotation in EXIF: apply it, as viewers do.
    img.apply_orientation(orientation);
    let (w, h) = (img.width(), img.height());
    let rgba = img.to_rgba8();
    // Composite alpha on white.
    let mut rgb = image::RgbImage::new(w, h);
    for (dst, src) in rgb.pixels_mut().zip(rgba.pixels()) {
        let a = src[3] as f32 / 255.0;
        for c in 0..3 {
            dst[c] = (src[c] as f32 * a + 255.0 * (1.0 - a)).round() as u8;
        }
    }
    let r = resolution as u32;
    let scale = r as f64 / w.min(h) as f64;
    let (nw, nh) = (((w as f64 * scale).round() as u32).max(r), ((h as f64 * scale).round() as u32).max(r));
    let resized = image::imageops::resize(&rgb, nw, nh, image::imageops::FilterType::CatmullRom);
    let long = (r * long_factor.max(1) as u32) / 8 * 8;
    let (cw, ch) = (nw.min(long.max(r)), nh.min(long.max(r)));
    let (cw, ch) = (if cw > r { cw / 8 * 8 } else { cw }, if ch > r { ch / 8 * 8 } else { ch });
    let (x0, y0) = ((nw - cw) / 2, (nh - ch) / 2);
    let crop = image::imageops::crop_imm(&resized, x0, y0, cw, ch).to_image();
    let plane = (cw * ch) as usize;
    let mut out = vec![0f32; 3 * plane];
    for (i, p) in crop.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = p[c] as f32 / 127.5 - 1.0;
        }
    }
    Ok((out, ch as usize, cw as usize))
}

/// [`preprocess`] and upload as `[1, 3, R, R]`.
pub fn load(bytes: &[u8], resolution: usize, name: &str, device: &Device) -> Result<Tensor<4>> {
    Ok(tensor(preprocess(bytes, resolution, name)?, [1, 3, resolution, resolution], device))
}

/// A reference image for training, `[1, 3, H, W]`: a centre square for [`Crop::Center`]; for
/// [`Crop::Random`] the image keeps its aspect (long side at most twice the short one), and the
/// trainer cuts a random square from its latents each step.
///
/// [`Crop::Center`]: crate::train::Crop::Center
/// [`Crop::Random`]: crate::train::Crop::Random
pub fn load_for_training(
    bytes: &[u8],
    resolution: usize,
    crop: crate::train::Crop,
    name: &str,
    device: &Device,
) -> Result<Tensor<4>> {
    let factor = match crop {
        crate::train::Crop::Center => 1,
        crate::train::Crop::Random => 2,
    };
    let (v, h, w) = preprocess_with(bytes, resolution, factor, name)?;
    Ok(tensor(v, [1, 3, h, w], device))
}

/// The PNG text chunks describing how an image was made: `Software` and `dreamdist` (the
/// parameters as JSON). The CLI and the page write the same keys.
pub fn png_text(params: &serde_json::Value) -> Vec<(String, String)> {
    vec![
        ("Software".into(), format!("dreamdist {}", env!("CARGO_PKG_VERSION"))),
        ("dreamdist".into(), params.to_string()),
    ]
}

/// Encodes RGB bytes as PNG with `tEXt` chunks (key, value) describing how it was made.
pub fn encode_png(img: &crate::pipeline::RgbImage, text: &[(String, String)]) -> Result<Vec<u8>> {
    use image::ImageEncoder;
    let mut plain = vec![];
    image::codecs::png::PngEncoder::new(&mut plain)
        .write_image(&img.pixels, img.width as u32, img.height as u32, image::ExtendedColorType::Rgb8)
        .map_err(|e| Error::Invalid(format!("PNG encoding failed: {e}")))?;
    // Insert tEXt chunks right after IHDR (8-byte signature + 25-byte IHDR chunk).
    let split = 8 + 25;
    let mut out = plain[..split].to_vec();
    for (k, v) in text {
        let mut data = k.as_bytes().to_vec();
        data.push(0);
        data.extend(v.as_bytes());
        out.extend((data.len() as u32).to_be_bytes());
        let mut chunk = b"tEXt".to_vec();
        chunk.extend(&data);
        out.extend(&chunk);
        out.extend(crc32(&chunk).to_be_bytes());
    }
    out.extend(&plain[split..]);
    Ok(out)
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}
