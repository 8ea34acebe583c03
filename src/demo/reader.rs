//! The attribute reader: reads shape, colour, size, position and background back from a demo
//! image (rendered or generated). Deterministic, hand-written image analysis (no learned
//! parts), so it can judge the demo model's samples without sharing its mistakes.
//!
//! Method: the background colour is the per-channel median of the border pixels; each pixel's
//! foreground weight grows with its colour distance from that background; the shape's colour is
//! the hue of the mean of its solid pixels; its extent comes from the row and column profiles of
//! the weights; its kind from the fill ratio of the bounding box and how far the centroid sits
//! below the box's centre (triangles point up and carry their mass low; stars fill little).
use serde::{Deserialize, Serialize};

use super::scene::{Attributes, Background, Color, Position, SIDE, Shape, Size};

/// What the reader saw. `None` fields could not be read (e.g. no shape in the image).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Shape kind.
    pub shape: Option<Shape>,
    /// Foreground colour.
    pub color: Option<Color>,
    /// Size.
    pub size: Option<Size>,
    /// Horizontal position.
    pub position: Option<Position>,
    /// Background.
    pub background: Background,
    /// Features behind the decisions (for debugging and reports).
    pub features: Features,
}

/// Measured quantities of an image.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct Features {
    /// Foreground area in pixels (soft).
    pub area: f32,
    /// Bounding-box width in pixels (soft column profile).
    pub width: f32,
    /// Bounding-box height in pixels.
    pub height: f32,
    /// Area / (width · height).
    pub fill: f32,
    /// (centroid y − box centre y) / height: positive when the mass sits low.
    pub offset: f32,
    /// Centroid x in pixels.
    pub cx: f32,
    /// Hue of the foreground in degrees.
    pub hue: f32,
    /// Saturation of the foreground (0..1).
    pub saturation: f32,
}

impl Reading {
    /// All attributes, when every one was read.
    pub fn attributes(&self) -> Option<Attributes> {
        Some(Attributes {
            shape: self.shape?,
            color: self.color?,
            size: self.size?,
            position: self.position?,
            background: self.background,
        })
    }
}

/// RGB (0..255) → (hue in degrees, saturation 0..1, value 0..1).
pub fn hsv([r, g, b]: [f32; 3]) -> (f32, f32, f32) {
    let (r, g, b) = (r / 255.0, g / 255.0, b / 255.0);
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let d = max - min;
    let h = if d <= 1e-6 {
        0.0
    } else if max == r {
        60.0 * ((g - b) / d).rem_euclid(6.0)
    } else if max == g {
        60.0 * ((b - r) / d + 2.0)
    } else {
        60.0 * ((r - g) / d + 4.0)
    };
    let s = if max <= 1e-6 { 0.0 } else { d / max };
    (h, s, max)
}

fn dist(a: [f32; 3], b: [f32; 3]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

fn median(mut v: Vec<f32>) -> f32 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) }
}

fn nearest_background(c: [f32; 3]) -> Background {
    *Background::ALL
        .iter()
        .min_by(|a, b| {
            let ca = a.rgb().map(f32::from);
            let cb = b.rgb().map(f32::from);
            dist(c, ca).total_cmp(&dist(c, cb))
        })
        .expect("non-empty")
}

fn nearest_hue(h: f32) -> Color {
    let circ = |a: f32, b: f32| {
        let d = (a - b).rem_euclid(360.0);
        d.min(360.0 - d)
    };
    *Color::ALL.iter().min_by(|a, b| circ(h, a.hue()).total_cmp(&circ(h, b.hue()))).expect("non-empty")
}

/// Reads the attributes of a `SIDE`×`SIDE` RGB image (row-major, 3 bytes per pixel).
pub fn read(img: &[u8]) -> Reading {
    assert_eq!(img.len(), SIDE * SIDE * 3, "demo images are {SIDE}×{SIDE} RGB");
    let px = |x: usize, y: usize| -> [f32; 3] {
        let i = (y * SIDE + x) * 3;
        [img[i] as f32, img[i + 1] as f32, img[i + 2] as f32]
    };
    // Background: per-channel median of the border.
    let mut border = [vec![], vec![], vec![]];
    for i in 0..SIDE {
        for (x, y) in [(i, 0), (i, SIDE - 1), (0, i), (SIDE - 1, i)] {
            let p = px(x, y);
            for c in 0..3 {
                border[c].push(p[c]);
            }
        }
    }
    let bg: [f32; 3] = [median(border[0].clone()), median(border[1].clone()), median(border[2].clone())];
    let background = nearest_background(bg);

    // Foreground weights.
    let mut w = vec![0f32; SIDE * SIDE];
    for y in 0..SIDE {
        for x in 0..SIDE {
            w[y * SIDE + x] = ((dist(px(x, y), bg) - 30.0) / 60.0).clamp(0.0, 1.0);
        }
    }
    let area: f32 = w.iter().sum();
    let mut features = Features { area, ..Default::default() };
    let none = |features| Reading { shape: None, color: None, size: None, position: None, background, features };
    if area < 6.0 {
        return none(features);
    }
    // Colour of the solid part.
    let mut acc = [0f32; 3];
    let mut n = 0f32;
    for thr in [0.95, 0.5] {
        for y in 0..SIDE {
            for x in 0..SIDE {
                if w[y * SIDE + x] >= thr {
                    let p = px(x, y);
                    for c in 0..3 {
                        acc[c] += p[c];
                    }
                    n += 1.0;
                }
            }
        }
        if n >= 4.0 {
            break;
        }
        acc = [0.0; 3];
        n = 0.0;
    }
    if n < 1.0 {
        return none(features);
    }
    let (hue, sat, _) = hsv(acc.map(|v| v / n));
    features.hue = hue;
    features.saturation = sat;
    let color = (sat >= 0.25).then(|| nearest_hue(hue));

    // Geometry from profiles.
    let col: Vec<f32> = (0..SIDE).map(|x| (0..SIDE).map(|y| w[y * SIDE + x]).fold(0.0, f32::max)).collect();
    let row: Vec<f32> = (0..SIDE).map(|y| (0..SIDE).map(|x| w[y * SIDE + x]).fold(0.0, f32::max)).collect();
    let width: f32 = col.iter().sum();
    let height: f32 = row.iter().sum();
    let box_cy = row.iter().enumerate().map(|(y, p)| y as f32 * p).sum::<f32>() / height;
    let (mut cx, mut cy) = (0f32, 0f32);
    for y in 0..SIDE {
        for x in 0..SIDE {
            cx += x as f32 * w[y * SIDE + x];
            cy += y as f32 * w[y * SIDE + x];
        }
    }
    cx /= area;
    cy /= area;
    let fill = area / (width * height).max(1.0);
    let offset = (cy - box_cy) / height.max(1.0);
    features = Features { width, height, fill, offset, cx: cx + 0.5, ..features };

    let shape = if fill >= 0.9 {
        Shape::Square
    } else if fill >= 0.645 {
        Shape::Circle
    } else if offset > 0.11 {
        Shape::Triangle
    } else {
        Shape::Star
    };
    // Squares are drawn at 0.9 of the nominal extent (see the renderer).
    let extent = width.max(height) / if shape == Shape::Square { 0.9 } else { 1.0 };
    let size = if extent < 12.3 {
        Size::Small
    } else if extent < 17.7 {
        Size::Medium
    } else {
        Size::Large
    };
    let mid = SIDE as f32 / 2.0;
    let position = if features.cx < mid - 1.9 {
        Position::Left
    } else if features.cx > mid + 1.9 {
        Position::Right
    } else {
        Position::Center
    };
    Reading { shape: Some(shape), color, size: Some(size), position: Some(position), background, features }
}
