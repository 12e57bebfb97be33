//! Resizing a decoded photo to a backbone's input: Pillow's box, bilinear
//! and bicubic filters byte for byte (8-bit fixed point, two passes),
//! OpenCV's `INTER_AREA`, and [`Fit`], the whole-photo resize or timm's
//! shorter-side resize and centre crop.

use super::image::RgbImage;

/// Pillow's fixed-point precision for 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// One of Pillow's resampling filters: its support (in source pixels at
/// scale 1) and its kernel (`box_filter`, `bilinear_filter`,
/// `bicubic_filter` in Pillow's Resample.c).
#[derive(Clone, Copy)]
enum PillowFilter {
    Box,
    Bilinear,
    Bicubic,
}

impl PillowFilter {
    fn support(self) -> f64 {
        match self {
            PillowFilter::Box => 0.5,
            PillowFilter::Bilinear => 1.0,
            PillowFilter::Bicubic => 2.0,
        }
    }

    fn weight(self, t: f64) -> f64 {
        match self {
            PillowFilter::Box if t > -0.5 && t <= 0.5 => 1.0,
            PillowFilter::Box => 0.0,
            PillowFilter::Bilinear => (1.0 - t.abs()).max(0.0),
            PillowFilter::Bicubic => {
                // Keys' cubic with a = -0.5, as Pillow writes it.
                const A: f64 = -0.5;
                let t = t.abs();
                if t < 1.0 {
                    ((A + 2.0) * t - (A + 3.0)) * t * t + 1.0
                } else if t < 2.0 {
                    (((t - 5.0) * t + 8.0) * t - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// Per-axis taps of a Pillow filter, as fixed-point integers
/// (`precompute_coeffs` + `normalize_coeffs_8bpc` in Pillow's Resample.c):
/// when shrinking, the kernel is stretched over `src / dst` pixels.
fn pillow_taps(src: usize, dst: usize, filter: PillowFilter) -> Vec<(usize, Vec<i32>)> {
    let scale = src as f64 / dst as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ss = 1.0 / filterscale;
    (0..dst)
        .map(|d| {
            let center = (d as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as isize).max(0) as usize;
            let xmax = ((center + support + 0.5) as isize).min(src as isize) as usize;
            let weights: Vec<f64> = (xmin..xmax)
                // Times the reciprocal, as Pillow does: dividing can round
                // the other way and move a fixed-point tap by one.
                .map(|x| filter.weight((x as f64 - center + 0.5) * ss))
                .collect();
            let total: f64 = weights.iter().sum();
            let fixed = weights
                .iter()
                .map(|w| {
                    let w = if total != 0.0 { w / total } else { *w };
                    let v = w * (1u32 << PRECISION_BITS) as f64;
                    (if v < 0.0 { v - 0.5 } else { v + 0.5 }) as i32
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes to `width x height` exactly as Pillow's `Image.resize(size,
/// Image.BOX)` does for RGB images: horizontal pass to 8 bits, then vertical.
pub fn resize_box(img: &RgbImage, width: usize, height: usize) -> RgbImage {
    resize_pillow(img, width, height, PillowFilter::Box)
}

/// Pillow's `Image.resize` of an RGB image with `filter`.
fn resize_pillow(img: &RgbImage, width: usize, height: usize, filter: PillowFilter) -> RgbImage {
    // Each pass rounds to 8 bits, so the order matters: Pillow widens
    // after shrinking the height, and otherwise goes horizontal first
    // (observed on Pillow 13 against both orders, every case of
    // tests/data/pil_*).
    if width > img.width && height < img.height {
        let tall = vertical_pass(img, height, filter);
        return horizontal_pass(&tall, width, filter);
    }
    let wide = horizontal_pass(img, width, filter);
    vertical_pass(&wide, height, filter)
}

/// The horizontal pass of Pillow's 8-bit resampling (none when the width
/// is unchanged).
fn horizontal_pass(img: &RgbImage, width: usize, filter: PillowFilter) -> RgbImage {
    if img.width == width {
        return img.clone();
    }
    let taps = pillow_taps(img.width, width, filter);
    let mut pixels = vec![0u8; img.height * width * 3];
    for y in 0..img.height {
        let src = &img.pixels[y * img.width * 3..(y + 1) * img.width * 3];
        for (x, (start, k)) in taps.iter().enumerate() {
            for c in 0..3 {
                let mut acc = 1i64 << (PRECISION_BITS - 1);
                for (i, &w) in k.iter().enumerate() {
                    acc += src[(start + i) * 3 + c] as i64 * w as i64;
                }
                pixels[(y * width + x) * 3 + c] = clip8(acc);
            }
        }
    }
    RgbImage {
        width,
        height: img.height,
        pixels,
    }
}

/// The vertical pass (none when the height is unchanged).
fn vertical_pass(img: &RgbImage, height: usize, filter: PillowFilter) -> RgbImage {
    if img.height == height {
        return img.clone();
    }
    let taps = pillow_taps(img.height, height, filter);
    let row = img.width * 3;
    let mut pixels = vec![0u8; height * row];
    for (y, (start, k)) in taps.iter().enumerate() {
        for j in 0..row {
            let mut acc = 1i64 << (PRECISION_BITS - 1);
            for (i, &w) in k.iter().enumerate() {
                acc += img.pixels[(start + i) * row + j] as i64 * w as i64;
            }
            pixels[y * row + j] = clip8(acc);
        }
    }
    RgbImage {
        width: img.width,
        height,
        pixels,
    }
}

/// How a photo becomes a backbone's square input: resized whole to
/// `size x size` (the photo squashed), or, with `shorter_side` (timm's
/// `crop_pct`), resized to that shorter side in proportion and its centre
/// `size x size` cropped, as timm's and torchvision's eval transforms do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fit {
    pub size: usize,
    pub filter: crate::spec::Resize,
    pub shorter_side: Option<usize>,
}

impl Fit {
    pub fn of(b: &crate::spec::BackboneSpec) -> Fit {
        Fit {
            size: b.input_size,
            filter: b.resize,
            shorter_side: b.shorter_side(),
        }
    }

    pub fn apply(&self, img: &RgbImage) -> RgbImage {
        match self.shorter_side {
            None => resize(img, self.size, self.size, self.filter),
            Some(short) => {
                let (w, h) = proportional(img.width, img.height, short);
                centre_crop(&resize(img, w, h, self.filter), self.size)
            }
        }
    }
}

/// torchvision's `Resize(short)` size for a `width x height` image: the
/// shorter side becomes `short`, the longer `int(short * long / short_in)`.
fn proportional(width: usize, height: usize, short: usize) -> (usize, usize) {
    let scaled =
        |long: usize, short_in: usize| (short as f64 * long as f64 / short_in as f64) as usize;
    if width <= height {
        (short, scaled(height, width).max(1))
    } else {
        (scaled(width, height).max(1), short)
    }
}

/// torchvision's `CenterCrop(size)` of an image at least `size` on both
/// sides: offsets `round((len - size) / 2)`, halves rounded to even as
/// Python's `round` does.
fn centre_crop(img: &RgbImage, size: usize) -> RgbImage {
    let offset = |len: usize| {
        let d = len.saturating_sub(size);
        let half = d / 2;
        if d % 2 == 1 && half % 2 == 1 {
            half + 1
        } else {
            half
        }
    };
    let (top, left) = (offset(img.height), offset(img.width));
    let (w, h) = (size.min(img.width), size.min(img.height));
    let mut pixels = Vec::with_capacity(w * h * 3);
    for y in top..top + h {
        let row = (y * img.width + left) * 3;
        pixels.extend_from_slice(&img.pixels[row..row + w * 3]);
    }
    RgbImage {
        width: w,
        height: h,
        pixels,
    }
}

/// Resizes with the filter a spec names.
pub fn resize(
    img: &RgbImage,
    width: usize,
    height: usize,
    filter: crate::spec::Resize,
) -> RgbImage {
    match filter {
        crate::spec::Resize::Box => resize_box(img, width, height),
        crate::spec::Resize::Area => resize_area(img, width, height),
        crate::spec::Resize::Bilinear => resize_pillow(img, width, height, PillowFilter::Bilinear),
        crate::spec::Resize::Bicubic => resize_pillow(img, width, height, PillowFilter::Bicubic),
    }
}

/// One output sample's taps: `(source index, weight)`.
type Taps = Vec<(usize, f32)>;

/// Per-axis resampling taps with OpenCV `INTER_AREA` semantics.
///
/// Shrinking: each output cell covers `[d * scale, (d + 1) * scale)` of the
/// source, partially covered pixels weighted by their overlap. Enlarging:
/// OpenCV's INTER_AREA switches to a linear filter whose weight is the
/// fractional overlap, reproduced here.
fn area_taps(src: usize, dst: usize) -> Vec<Taps> {
    let scale = src as f64 / dst as f64;
    if scale >= 1.0 {
        (0..dst)
            .map(|d| {
                let start = d as f64 * scale;
                let end = ((d + 1) as f64 * scale).min(src as f64);
                let mut taps = Vec::with_capacity(scale.ceil() as usize + 1);
                let mut s = start.floor() as usize;
                while (s as f64) < end && s < src {
                    let lo = start.max(s as f64);
                    let hi = end.min((s + 1) as f64);
                    let w = hi - lo;
                    if w > 1e-9 {
                        taps.push((s, (w / scale) as f32));
                    }
                    s += 1;
                }
                taps
            })
            .collect()
    } else {
        let inv_scale = dst as f64 / src as f64;
        (0..dst)
            .map(|d| {
                let s = (d as f64 * scale).floor() as isize;
                let mut f = (d + 1) as f64 - (s + 1) as f64 * inv_scale;
                f = if f <= 0.0 { 0.0 } else { f - f.floor() };
                let s0 = s.clamp(0, src as isize - 1) as usize;
                let s1 = (s + 1).clamp(0, src as isize - 1) as usize;
                vec![(s0, (1.0 - f) as f32), (s1, f as f32)]
            })
            .collect()
    }
}

/// Resizes to `width x height` by area averaging (`cv2.INTER_AREA`), aspect
/// ratio not kept. Separable: a horizontal pass into f32, then a vertical
/// pass rounded half to even (as OpenCV's `saturate_cast`).
pub fn resize_area(img: &RgbImage, width: usize, height: usize) -> RgbImage {
    if img.width == width && img.height == height {
        return img.clone();
    }
    let x_taps = area_taps(img.width, width);
    let y_taps = area_taps(img.height, height);
    let mut rows = vec![0f32; img.height * width * 3];
    for y in 0..img.height {
        let src = &img.pixels[y * img.width * 3..(y + 1) * img.width * 3];
        let dst = &mut rows[y * width * 3..(y + 1) * width * 3];
        for (x, taps) in x_taps.iter().enumerate() {
            let mut acc = [0f32; 3];
            for &(s, w) in taps {
                for c in 0..3 {
                    acc[c] += src[s * 3 + c] as f32 * w;
                }
            }
            dst[x * 3..x * 3 + 3].copy_from_slice(&acc);
        }
    }
    let mut pixels = vec![0u8; height * width * 3];
    let mut acc = vec![0f32; width * 3];
    for (y, taps) in y_taps.iter().enumerate() {
        acc.iter_mut().for_each(|a| *a = 0.0);
        for &(s, w) in taps {
            let row = &rows[s * width * 3..(s + 1) * width * 3];
            for (a, &r) in acc.iter_mut().zip(row) {
                *a += r * w;
            }
        }
        for (p, &a) in pixels[y * width * 3..(y + 1) * width * 3]
            .iter_mut()
            .zip(&acc)
        {
            *p = a.round_ties_even().clamp(0.0, 255.0) as u8;
        }
    }
    RgbImage {
        width,
        height,
        pixels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinking_by_an_integer_factor_averages_blocks() {
        let img = RgbImage {
            width: 4,
            height: 2,
            pixels: [10u8, 20, 30, 50]
                .iter()
                .flat_map(|&v| [v, v, v])
                .chain([0u8, 0, 0, 0].iter().flat_map(|&v| [v, v, v]))
                .collect(),
        };
        let out = resize_area(&img, 2, 1);
        // (10 + 20 + 0 + 0) / 4 = 7.5 -> 8 (ties to even), (30 + 50) / 4 = 20
        assert_eq!(out.pixels, vec![8, 8, 8, 20, 20, 20]);
    }

    #[test]
    fn fractional_area_weights_sum_to_one() {
        for (src, dst) in [(320, 299), (481, 299), (300, 224), (7, 3), (3, 7)] {
            for taps in area_taps(src, dst) {
                let sum: f32 = taps.iter().map(|t| t.1).sum();
                assert!((sum - 1.0).abs() < 1e-5, "{src}->{dst}: {sum}");
            }
        }
    }

    #[test]
    fn pillow_box_averages_pixels_whose_centres_fall_inside() {
        // 3 -> 2: output 0 covers [0, 1.5): pixel centres 0.5 and 1.5? Only
        // 0.5 < 1.5 strictly inside; Pillow's box is (-0.5, 0.5], so pixel 1
        // (centre 1.5) belongs to output 0 as well.
        let img = RgbImage {
            width: 3,
            height: 1,
            pixels: [0u8, 100, 200].iter().flat_map(|&v| [v, v, v]).collect(),
        };
        let out = resize_box(&img, 2, 1);
        assert_eq!(out.pixels, vec![50, 50, 50, 200, 200, 200]);
    }

    #[test]
    fn a_constant_image_stays_constant_at_any_size() {
        let img = RgbImage {
            width: 33,
            height: 17,
            pixels: vec![200; 33 * 17 * 3],
        };
        for (w, h) in [(10, 10), (299, 299), (33, 5)] {
            assert!(resize_area(&img, w, h).pixels.iter().all(|&p| p == 200));
            assert!(resize_box(&img, w, h).pixels.iter().all(|&p| p == 200));
        }
    }
}
