//! Image decoding and resizing.
//!
//! The reference recipe read images with OpenCV and resized them with
//! `cv2.resize(img, (299, 299), interpolation=cv2.INTER_AREA)`: aspect ratio
//! not kept, each output pixel the area-weighted mean of the source pixels it
//! covers. [`resize_area`] reproduces that filter (including OpenCV's
//! coefficients when an axis is enlarged) so features match the reference.

use std::path::Path;

use image::{ImageDecoder, ImageReader};

/// An RGB image, 8 bits per channel, rows of `width * 3` bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read image {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot decode image {path} (JPEG and PNG are supported)")]
    Decode {
        path: String,
        #[source]
        source: image::ImageError,
    },
}

/// Decodes a JPEG or PNG of any colour type into RGB, applying the EXIF
/// orientation (as `cv2.imread` does).
pub fn decode_rgb(path: &Path) -> Result<RgbImage, ImageError> {
    let bytes = std::fs::read(path).map_err(|source| ImageError::Io {
        path: path.display().to_string(),
        source,
    })?;
    decode_rgb_bytes(&bytes).map_err(|source| ImageError::Decode {
        path: path.display().to_string(),
        source,
    })
}

/// Decodes an in-memory JPEG or PNG into RGB.
pub fn decode_rgb_bytes(bytes: &[u8]) -> Result<RgbImage, image::ImageError> {
    let mut decoder = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()?
        .into_decoder()?;
    let orientation = decoder.orientation()?;
    let mut img = image::DynamicImage::from_decoder(decoder)?;
    img.apply_orientation(orientation);
    let rgb = img.into_rgb8();
    Ok(RgbImage {
        width: rgb.width() as usize,
        height: rgb.height() as usize,
        pixels: rgb.into_raw(),
    })
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
    fn a_constant_image_stays_constant_at_any_size() {
        let img = RgbImage {
            width: 33,
            height: 17,
            pixels: vec![200; 33 * 17 * 3],
        };
        for (w, h) in [(10, 10), (299, 299), (33, 5)] {
            let out = resize_area(&img, w, h);
            assert!(out.pixels.iter().all(|&p| p == 200));
        }
    }
}
