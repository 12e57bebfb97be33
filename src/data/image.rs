//! Image decoding and resizing.
//!
//! Two box-style filters, both ignoring the aspect ratio:
//!
//! - [`resize_box`]: Pillow's `Image.resize(size, Image.BOX)`, bit for bit
//!   (8-bit fixed-point coefficients, horizontal pass rounded to 8 bits,
//!   then vertical). Each output pixel averages the source pixels whose
//!   centres fall inside it. This is how the shared fixtures'
//!   `images_u8_nhwc` were made (measured: mean |diff| 0.0), so it is the
//!   default.
//! - [`resize_area`]: OpenCV's `cv2.resize(..., interpolation=INTER_AREA)`,
//!   as the 2017 notebook ran it: partially covered source pixels count by
//!   their covered fraction. On woof-dev photos it differs from Pillow's box
//!   by 1.5-2.8 grey levels on average (measured with opencv-python 4.x).

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
    #[error("image {path} {damage}; [data] on_bad_image = \"error\" refuses it: replace the file, or set on_bad_image = \"warn\" (use what decodes) or \"skip\" (leave it out of training)")]
    Damaged { path: String, damage: Damage },
    #[error("image {path} is {width} x {height} pixels; runner decodes images of up to {} megapixels: resize it first (a header claiming this much is often a damaged file)", MAX_PIXELS / 1_000_000)]
    TooLarge {
        path: String,
        width: u32,
        height: u32,
    },
}

/// Most pixels one image may have (750 MB as RGB). The decoders allocate
/// the whole picture up front, and with one image per decoding thread an
/// absurd header (65,500 x 65,500 in 600 bytes) would abort the process
/// instead of failing the run with the file's name. Phone cameras' largest
/// photos are ~200 megapixels.
pub const MAX_PIXELS: u64 = 250_000_000;

/// Why an image did not decode.
enum Failure {
    TooLarge(u32, u32),
    Image(image::ImageError),
}

impl From<image::ImageError> for Failure {
    fn from(e: image::ImageError) -> Failure {
        Failure::Image(e)
    }
}

/// Decodes a JPEG or PNG of any colour type into RGB, applying the EXIF
/// orientation (as `cv2.imread` does).
pub fn decode_rgb(path: &Path) -> Result<RgbImage, ImageError> {
    decode_file(path).map(|d| d.image)
}

/// What is wrong with an image that decoded anyway: the decoder fills in
/// what it cannot read (grey for missing data, whatever garbled data
/// decodes to), so the pixels are partly made up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// A JPEG without its end-of-image marker ([`jpeg_looks_truncated`]).
    Truncated,
    /// A JPEG whose data a strict decoder refuses (garbled entropy-coded
    /// data, a frame header claiming more pixels than the data holds); the
    /// decoder's words.
    Corrupt(String),
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::Truncated => write!(f, "has no JPEG end marker (truncated?)"),
            Damage::Corrupt(why) => write!(f, "has damaged JPEG data ({why})"),
        }
    }
}

/// A decoded image and what its bytes say about the file.
pub struct Decoded {
    pub image: RgbImage,
    /// Why the pixels cannot be trusted, if they cannot.
    pub damage: Option<Damage>,
}

/// [`decode_rgb`], also telling whether the file is damaged (from the bytes
/// already read: no second read of the file).
pub fn decode_file(path: &Path) -> Result<Decoded, ImageError> {
    let bytes = std::fs::read(path).map_err(|source| ImageError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let path = path.display().to_string();
    let (image, corrupt) = decode_rgb_bytes(&bytes).map_err(|failure| match failure {
        Failure::TooLarge(width, height) => ImageError::TooLarge {
            path,
            width,
            height,
        },
        Failure::Image(source) => ImageError::Decode { path, source },
    })?;
    // A truncated file is also refused by the strict decoder; its missing
    // end marker is the more useful thing to say.
    let damage = if jpeg_looks_truncated(&bytes) {
        Some(Damage::Truncated)
    } else {
        corrupt.map(Damage::Corrupt)
    };
    Ok(Decoded { image, damage })
}

/// Decodes an in-memory JPEG or PNG into RGB, refusing more than
/// [`MAX_PIXELS`] before anything is allocated; for a JPEG whose data a
/// strict decoder refuses, also the reason (the pixels are then the lenient
/// decoder's, as `image` gives them).
fn decode_rgb_bytes(bytes: &[u8]) -> Result<(RgbImage, Option<String>), Failure> {
    let reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(image::ImageError::IoError)?;
    let is_jpeg = reader.format() == Some(image::ImageFormat::Jpeg);
    let mut decoder = reader.into_decoder()?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(Failure::TooLarge(width, height));
    }
    let orientation = decoder.orientation()?;
    let strict = is_jpeg.then(|| decode_jpeg_strict(bytes, decoder.color_type()));
    let (mut img, corrupt) = match strict {
        Some(Ok(img)) => (img, super::jpeg_check::check(bytes).err()),
        Some(Err(why)) => (image::DynamicImage::from_decoder(decoder)?, Some(why)),
        None => (image::DynamicImage::from_decoder(decoder)?, None),
    };
    img.apply_orientation(orientation);
    let rgb = img.into_rgb8();
    Ok((
        RgbImage {
            width: rgb.width() as usize,
            height: rgb.height() as usize,
            pixels: rgb.into_raw(),
        },
        corrupt,
    ))
}

/// Decodes a JPEG with the decoder `image` uses (zune-jpeg), with the
/// options `image` gives it except strict mode: the same pixels when the
/// data is sound, and an error where `image` would silently fill in
/// missing or garbled data. One decode per image either way: the lenient
/// one runs only after a refusal.
fn decode_jpeg_strict(
    bytes: &[u8],
    color: image::ColorType,
) -> Result<image::DynamicImage, String> {
    use image::ColorType;
    use zune_jpeg::zune_core::{
        bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions,
    };
    let out = match color {
        ColorType::L8 => ColorSpace::Luma,
        ColorType::La8 => ColorSpace::LumaA,
        ColorType::Rgba8 => ColorSpace::RGBA,
        _ => ColorSpace::RGB,
    };
    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(out)
        .set_strict_mode(true)
        .set_max_width(usize::MAX)
        .set_max_height(usize::MAX);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    let pixels = decoder.decode().map_err(|e| e.to_string())?;
    let (w, h) = decoder
        .dimensions()
        .ok_or_else(|| "no frame header".to_string())?;
    let (w, h) = (w as u32, h as u32);
    let img = match color {
        ColorType::L8 => image::GrayImage::from_raw(w, h, pixels).map(image::DynamicImage::from),
        ColorType::La8 => {
            image::GrayAlphaImage::from_raw(w, h, pixels).map(image::DynamicImage::from)
        }
        ColorType::Rgba8 => image::RgbaImage::from_raw(w, h, pixels).map(image::DynamicImage::from),
        _ => image::RgbImage::from_raw(w, h, pixels).map(image::DynamicImage::from),
    };
    img.ok_or_else(|| "decoded data does not fill the frame".to_string())
}

/// Whether a JPEG file's bytes look cut short: its last bytes (trailing
/// padding aside) are not the end-of-image marker. The decoder fills what a
/// truncated file lacks with grey instead of failing. `false` for anything
/// that is not a JPEG. A few cameras append data after the marker.
fn jpeg_looks_truncated(bytes: &[u8]) -> bool {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return false;
    }
    let end = bytes
        .iter()
        .rposition(|&b| !matches!(b, 0x00 | b'\r' | b'\n' | b' '))
        .map_or(0, |i| i + 1);
    !bytes[..end].ends_with(&[0xFF, 0xD9])
}

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

    fn woof_train(n: usize) -> Vec<std::path::PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/woof-dev/train");
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        paths.truncate(n);
        paths
    }

    /// Where the entropy-coded data of a JPEG starts (after its scan header).
    fn scan_data_start(bytes: &[u8]) -> usize {
        let sos = (0..bytes.len() - 1)
            .find(|&i| bytes[i] == 0xFF && bytes[i + 1] == 0xDA)
            .unwrap();
        sos + 2 + u16::from_be_bytes([bytes[sos + 2], bytes[sos + 3]]) as usize
    }

    fn decode_bytes(bytes: &[u8]) -> Decoded {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jpg");
        std::fs::write(&path, bytes).unwrap();
        decode_file(&path).unwrap()
    }

    #[test]
    fn clean_photos_are_not_flagged_as_damaged() {
        for path in woof_train(20) {
            let d = decode_file(&path).unwrap();
            assert_eq!(d.damage, None, "{}", path.display());
        }
    }

    #[test]
    fn garbage_in_the_middle_of_jpeg_data_is_flagged() {
        let bytes = std::fs::read(&woof_train(1)[0]).unwrap();
        let start = scan_data_start(&bytes);
        let mid = start + (bytes.len() - start) / 2;
        let mut bad = bytes.clone();
        let mut seed = 12345u64;
        for b in &mut bad[mid..mid + 200] {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Never 0xFF: a marker in the data is easy to see; the check
            // must also follow codes read out of step.
            *b = ((seed >> 33) as u8).min(0xFE);
        }
        let d = decode_bytes(&bad);
        assert!(
            matches!(d.damage, Some(Damage::Corrupt(_))),
            "{:?}",
            d.damage
        );
    }

    #[test]
    fn a_frame_header_claiming_more_pixels_than_the_data_holds_is_flagged() {
        let mut bytes = std::fs::read(&woof_train(1)[0]).unwrap();
        let sof = (0..bytes.len() - 9)
            .find(|&i| bytes[i] == 0xFF && matches!(bytes[i + 1], 0xC0..=0xC2))
            .unwrap();
        // 15000 x 15000.
        bytes[sof + 5..sof + 9].copy_from_slice(&[0x3A, 0x98, 0x3A, 0x98]);
        let d = decode_bytes(&bytes);
        let Some(Damage::Corrupt(why)) = d.damage else {
            panic!("not flagged: {:?}", d.damage);
        };
        assert!(why.contains("premature end"), "{why}");
    }
}
