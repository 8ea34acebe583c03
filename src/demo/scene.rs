//! Procedural captioned scenes: one shape of a colour and size at a position on a plain
//! background, rendered deterministically from a seed, with captions from a small grammar.
//!
//! This is the only renderer of the demo data: the demo model's training script
//! (`scripts/demo/train_demo.py`) reads images made by `dreamdist demo-data`, the tests and the
//! evaluation (`dreamdist eval`) call it directly, and the browser tests upload its PNGs.
use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// Side of every demo image in pixels.
pub const SIDE: usize = 32;

/// Shape kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// A disc.
    Circle,
    /// An axis-aligned square.
    Square,
    /// An upright equilateral triangle.
    Triangle,
    /// An upright five-pointed star.
    Star,
}

/// Foreground hues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    /// Red.
    Red,
    /// Orange.
    Orange,
    /// Yellow.
    Yellow,
    /// Green.
    Green,
    /// Cyan.
    Cyan,
    /// Blue.
    Blue,
    /// Purple.
    Purple,
    /// Pink.
    Pink,
}

/// Shape sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    /// About a third of the image.
    Small,
    /// About half of the image.
    Medium,
    /// About two thirds of the image.
    Large,
}

/// Horizontal position of the shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Position {
    /// Left of centre.
    Left,
    /// Centred.
    Center,
    /// Right of centre.
    Right,
}

/// Background colours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Background {
    /// Near white.
    White,
    /// Near black.
    Black,
    /// Mid gray.
    Gray,
    /// Dark navy blue.
    Blue,
    /// Dark green.
    Green,
}

macro_rules! all_and_names {
    ($t:ty, [$($v:ident => $n:literal),+ $(,)?]) => {
        impl $t {
            /// Every value, in a fixed order (the index is the value's id).
            pub const ALL: &'static [$t] = &[$(<$t>::$v),+];
            /// The word used in captions.
            pub fn name(self) -> &'static str {
                match self { $(<$t>::$v => $n),+ }
            }
            /// Index in [`Self::ALL`].
            pub fn index(self) -> usize {
                Self::ALL.iter().position(|&x| x == self).expect("listed")
            }
            /// Parses a caption word.
            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|x| x.name() == s)
            }
        }
    };
}
all_and_names!(Shape, [Circle => "circle", Square => "square", Triangle => "triangle", Star => "star"]);
all_and_names!(Color, [Red => "red", Orange => "orange", Yellow => "yellow", Green => "green", Cyan => "cyan",
    Blue => "blue", Purple => "purple", Pink => "pink"]);
all_and_names!(Size, [Small => "small", Medium => "medium", Large => "large"]);
all_and_names!(Position, [Left => "left", Center => "center", Right => "right"]);
all_and_names!(Background, [White => "white", Black => "black", Gray => "gray", Blue => "blue", Green => "green"]);

impl Color {
    /// Nominal sRGB value.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Color::Red => [220, 30, 30],
            Color::Orange => [245, 135, 20],
            Color::Yellow => [240, 220, 30],
            Color::Green => [50, 190, 60],
            Color::Cyan => [30, 205, 225],
            Color::Blue => [45, 85, 235],
            Color::Purple => [145, 55, 205],
            Color::Pink => [245, 110, 185],
        }
    }
    /// Nominal hue in degrees (HSV), as read back by the attribute reader.
    pub fn hue(self) -> f32 {
        let [r, g, b] = self.rgb();
        super::reader::hsv([r as f32, g as f32, b as f32]).0
    }
    /// Whether the colour counts as warm (red, orange, yellow, pink).
    pub fn is_warm(self) -> bool {
        matches!(self, Color::Red | Color::Orange | Color::Yellow | Color::Pink)
    }
}

impl Background {
    /// Nominal sRGB value.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Background::White => [242, 242, 238],
            Background::Black => [18, 18, 20],
            Background::Gray => [128, 128, 128],
            Background::Blue => [22, 32, 92],
            Background::Green => [22, 84, 36],
        }
    }
    /// Whether the background is dark (black, blue, green).
    pub fn is_dark(self) -> bool {
        matches!(self, Background::Black | Background::Blue | Background::Green)
    }
    /// Whether a shape of colour `c` may be drawn on this background (not the same hue family).
    pub fn allows(self, c: Color) -> bool {
        !matches!((self, c), (Background::Blue, Color::Blue) | (Background::Green, Color::Green))
    }
}

impl Size {
    /// Extent of the shape's bounding box in pixels (its larger side).
    pub fn extent(self) -> f32 {
        match self {
            Size::Small => 10.0,
            Size::Medium => 15.0,
            Size::Large => 21.0,
        }
    }
}

/// The attributes of one scene.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub struct Attributes {
    /// Shape.
    pub shape: Shape,
    /// Foreground colour.
    pub color: Color,
    /// Size.
    pub size: Size,
    /// Horizontal position.
    pub position: Position,
    /// Background.
    pub background: Background,
}

impl Attributes {
    /// Attributes drawn uniformly (colour re-drawn until the background allows it).
    pub fn random(rng: &mut Rng) -> Self {
        let pick = |rng: &mut Rng, n: usize| rng.below(n as u64) as usize;
        let shape = Shape::ALL[pick(rng, Shape::ALL.len())];
        let size = Size::ALL[pick(rng, Size::ALL.len())];
        let position = Position::ALL[pick(rng, Position::ALL.len())];
        let background = Background::ALL[pick(rng, Background::ALL.len())];
        let mut color = Color::ALL[pick(rng, Color::ALL.len())];
        while !background.allows(color) {
            color = Color::ALL[pick(rng, Color::ALL.len())];
        }
        Self { shape, color, size, position, background }
    }

    /// Every valid combination (background allows the colour), in a fixed order.
    pub fn all() -> Vec<Self> {
        let mut out = vec![];
        for &shape in Shape::ALL {
            for &color in Color::ALL {
                for &size in Size::ALL {
                    for &position in Position::ALL {
                        for &background in Background::ALL {
                            if background.allows(color) {
                                out.push(Self { shape, color, size, position, background });
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

/// An RGB image of the demo size, row-major, 3 bytes per pixel.
pub type DemoImage = Vec<u8>;

/// Small per-image variations that do not change the attributes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Jitter {
    /// Horizontal offset of the centre in pixels.
    pub dx: f32,
    /// Vertical offset of the centre in pixels.
    pub dy: f32,
    /// Relative size change.
    pub scale: f32,
    /// Per-channel colour offsets of the shape.
    pub color: [f32; 3],
    /// Per-channel colour offsets of the background.
    pub background: [f32; 3],
}

impl Jitter {
    /// No variation.
    pub const NONE: Jitter = Jitter { dx: 0.0, dy: 0.0, scale: 1.0, color: [0.0; 3], background: [0.0; 3] };

    /// Random variation.
    pub fn random(rng: &mut Rng) -> Self {
        let mut u = |lo: f32, hi: f32| lo + (hi - lo) * rng.uniform() as f32;
        Self {
            dx: u(-1.0, 1.0),
            dy: u(-2.5, 2.5),
            scale: u(0.93, 1.07),
            color: [u(-12.0, 12.0), u(-12.0, 12.0), u(-12.0, 12.0)],
            background: [u(-8.0, 8.0), u(-8.0, 8.0), u(-8.0, 8.0)],
        }
    }
}

/// Polygon vertices (x, y) of an upright shape of bounding extent `e` centred at the origin
/// (y grows downwards). `None` for the circle.
fn polygon(shape: Shape, e: f32) -> Option<Vec<(f32, f32)>> {
    match shape {
        Shape::Circle => None,
        Shape::Square => {
            let h = 0.5 * e * 0.9; // a square looks larger than a disc of the same extent
            Some(vec![(-h, -h), (h, -h), (h, h), (-h, h)])
        }
        Shape::Triangle => {
            // Equilateral, side e; centred on its bounding box.
            let height = e * 3f32.sqrt() / 2.0;
            Some(vec![(0.0, -height / 2.0), (e / 2.0, height / 2.0), (-e / 2.0, height / 2.0)])
        }
        Shape::Star => {
            // Outer radius R with width 2R·sin 72° = e; inner radius 0.45 R; centred on the bbox.
            let r_out = e / (2.0 * (72f32.to_radians()).sin());
            let r_in = 0.45 * r_out;
            let bbox_mid = (r_out - r_out * (36f32.to_radians()).cos()) / 2.0;
            Some(
                (0..10)
                    .map(|i| {
                        let r = if i % 2 == 0 { r_out } else { r_in };
                        let a = (i as f32 * 36.0).to_radians();
                        (r * a.sin(), -r * a.cos() + bbox_mid)
                    })
                    .collect(),
            )
        }
    }
}

fn inside_polygon(poly: &[(f32, f32)], x: f32, y: f32) -> bool {
    let mut inside = false;
    let n = poly.len();
    for i in 0..n {
        let (xi, yi) = poly[i];
        let (xj, yj) = poly[(i + n - 1) % n];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
    }
    inside
}

/// Horizontal centre of the shape for a position and extent.
fn center_x(position: Position, extent: f32) -> f32 {
    let mid = SIDE as f32 / 2.0;
    let margin = 1.0;
    let reach = mid - extent / 2.0 - margin;
    match position {
        Position::Left => mid - reach,
        Position::Center => mid,
        Position::Right => mid + reach,
    }
}

/// Renders a scene (4×4 supersampling per pixel).
pub fn render(a: &Attributes, j: &Jitter) -> DemoImage {
    let e = a.size.extent() * j.scale;
    let (cx, cy) = (center_x(a.position, e) + j.dx, SIDE as f32 / 2.0 + j.dy);
    let poly = polygon(a.shape, e);
    let fg = a.color.rgb();
    let bg = a.background.rgb();
    let fg: [f32; 3] = std::array::from_fn(|c| (fg[c] as f32 + j.color[c]).clamp(0.0, 255.0));
    let bg: [f32; 3] = std::array::from_fn(|c| (bg[c] as f32 + j.background[c]).clamp(0.0, 255.0));
    const SS: usize = 4;
    let mut out = vec![0u8; SIDE * SIDE * 3];
    for py in 0..SIDE {
        for px in 0..SIDE {
            let mut hits = 0usize;
            for sy in 0..SS {
                for sx in 0..SS {
                    let x = px as f32 + (sx as f32 + 0.5) / SS as f32 - cx;
                    let y = py as f32 + (sy as f32 + 0.5) / SS as f32 - cy;
                    let inside = match &poly {
                        None => x * x + y * y <= (e / 2.0) * (e / 2.0),
                        Some(p) => inside_polygon(p, x, y),
                    };
                    hits += inside as usize;
                }
            }
            let cov = hits as f32 / (SS * SS) as f32;
            for c in 0..3 {
                out[(py * SIDE + px) * 3 + c] = (fg[c] * cov + bg[c] * (1.0 - cov)).round() as u8;
            }
        }
    }
    out
}

/// Caption phrasings. Some leave attributes out (those are then unconstrained).
const PHRASINGS: &[&str] = &[
    "a {size} {color} {shape} on a {bg} background",
    "{color} {shape}, {size}, {bg} backdrop",
    "a {color} {shape} on {bg}",
    "a {size} {color} {shape}",
    "a {shape} in {color} against a {bg} background",
    "a {size} {color} {shape} on the {pos}, {bg} background",
    "{bg} background with a {color} {shape}",
    "a {color} {shape}",
];

/// Phrasings that name shape, colour and background (used for evaluation prompts).
pub const FULL_PHRASINGS: &[usize] = &[0, 1, 2, 4, 5, 6];

/// The caption of `a` in phrasing `i` (modulo the number of phrasings).
pub fn caption(a: &Attributes, i: usize) -> String {
    let pos = match a.position {
        Position::Left => "left",
        Position::Center => "middle",
        Position::Right => "right",
    };
    let text = PHRASINGS[i % PHRASINGS.len()]
        .replace("{size}", a.size.name())
        .replace("{color}", a.color.name())
        .replace("{shape}", a.shape.name())
        .replace("{bg}", a.background.name())
        .replace("{pos}", pos);
    with_articles(&text)
}

/// "a orange" → "an orange".
fn with_articles(text: &str) -> String {
    let words: Vec<&str> = text.split(' ').collect();
    let mut out = Vec::with_capacity(words.len());
    for (i, w) in words.iter().enumerate() {
        let vowel_next = words.get(i + 1).and_then(|n| n.chars().next()).is_some_and(|c| "aeiou".contains(c));
        out.push(if *w == "a" && vowel_next { "an" } else { w });
    }
    out.join(" ")
}

/// Number of caption phrasings.
pub fn phrasings() -> usize {
    PHRASINGS.len()
}

/// One sample of the demo data set.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Its attributes.
    pub attrs: Attributes,
    /// A caption (random phrasing).
    pub caption: String,
    /// The image.
    pub image: DemoImage,
}

/// The `i`-th sample of the data set with seed `seed` (independent of how many are drawn).
pub fn sample(seed: u64, i: u64) -> Sample {
    let mut rng = Rng::new(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let attrs = Attributes::random(&mut rng);
    let phrasing = rng.below(PHRASINGS.len() as u64) as usize;
    let jitter = Jitter::random(&mut rng);
    Sample { attrs, caption: caption(&attrs, phrasing), image: render(&attrs, &jitter) }
}

/// A random rendering of given attributes (a reference image).
pub fn render_random(a: &Attributes, rng: &mut Rng) -> DemoImage {
    render(a, &Jitter::random(rng))
}
