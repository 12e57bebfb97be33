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

pub use super::resize::{resize, resize_area, resize_box, Fit};

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

#[cfg(test)]
mod tests {
    use super::*;

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
