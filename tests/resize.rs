//! Decoding + resizing against reference pixels: the shared fixtures
//! (Pillow's box filter) and an OpenCV `INTER_AREA` golden file.

use candle_core::{Device, Tensor};
use runner::data::image::{decode_rgb, resize_box};

use crate::common::{model, woof};

fn fixture_files(path: &std::path::Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let files = meta.metadata().as_ref().unwrap()["files"].clone();
    // Stored as a JSON list or a comma-separated string.
    serde_json::from_str::<Vec<String>>(&files)
        .unwrap_or_else(|_| files.split(',').map(|s| s.trim().to_string()).collect())
}

#[test]
fn box_resize_matches_the_fixtures_within_one_grey_level() {
    for fixture in [
        "xception_imagenet_notop.fixture.safetensors",
        "efficientnet_lite0_imagenet.fixture.safetensors",
    ] {
        let path = model(fixture);
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        let reference: &Tensor = &tensors["images_u8_nhwc"];
        let (n, h, w, _) = reference.dims4().unwrap();
        let reference = reference.to_dtype(candle_core::DType::F32).unwrap();
        for (i, file) in fixture_files(&path).iter().enumerate().take(n) {
            let name = std::path::Path::new(file).file_name().unwrap();
            let img = decode_rgb(&woof().join("train").join(name)).unwrap();
            let ours = resize_box(&img, w, h);
            let theirs: Vec<f32> = reference
                .get(i)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let mad: f64 = ours
                .pixels
                .iter()
                .zip(&theirs)
                .map(|(&a, &b)| (a as f64 - b as f64).abs())
                .sum::<f64>()
                / theirs.len() as f64;
            eprintln!("{fixture} {file}: mean |diff| = {mad:.4} grey levels");
            assert!(mad <= 1.0, "{fixture} {file}: mean |diff| {mad}");
        }
    }
}

#[test]
fn area_resize_matches_opencv_inter_area() {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let src = decode_rgb(&data.join("area_src_64x50.png")).unwrap();
    for (w, h) in [(60, 47), (31, 23), (17, 50), (29, 29), (64, 25)] {
        let golden = decode_rgb(&data.join(format!("area_cv2_{w}x{h}.png"))).unwrap();
        let ours = runner::data::image::resize_area(&src, w, h);
        let max = ours
            .pixels
            .iter()
            .zip(&golden.pixels)
            .map(|(&a, &b)| (a as i32 - b as i32).abs())
            .max()
            .unwrap();
        assert!(max <= 1, "{w}x{h}: max |diff| {max} vs cv2.INTER_AREA");
    }
}

fn max_diff(a: &runner::data::image::RgbImage, b: &runner::data::image::RgbImage) -> i32 {
    assert_eq!((a.width, a.height), (b.width, b.height));
    a.pixels
        .iter()
        .zip(&b.pixels)
        .map(|(&x, &y)| (x as i32 - y as i32).abs())
        .max()
        .unwrap()
}

/// Pillow's `Image.resize` with BILINEAR and BICUBIC (and torchvision's
/// `Resize` on PIL images, which calls it), byte for byte: the same
/// fixed-point taps and the same two passes.
#[test]
fn bilinear_and_bicubic_match_pillow_exactly() {
    use runner::spec::Resize;
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let src = decode_rgb(&data.join("area_src_64x50.png")).unwrap();
    for (name, filter) in [("bilinear", Resize::Bilinear), ("bicubic", Resize::Bicubic)] {
        for (w, h) in [(31, 23), (17, 50), (90, 35), (101, 77)] {
            let golden = decode_rgb(&data.join(format!("pil_{name}_{w}x{h}.png"))).unwrap();
            let ours = runner::data::image::resize(&src, w, h, filter);
            assert_eq!(max_diff(&ours, &golden), 0, "{name} {w}x{h}");
        }
    }
}

/// timm's eval transform with `crop_pct` (torchvision `Resize(floor(size /
/// crop_pct))` of the shorter side, then `CenterCrop(size)`), byte for byte.
#[test]
fn crop_pct_matches_torchvision_resize_and_centre_crop() {
    use runner::data::image::Fit;
    use runner::spec::Resize;
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let src = decode_rgb(&data.join("area_src_64x50.png")).unwrap();
    for (name, filter) in [("bilinear", Resize::Bilinear), ("bicubic", Resize::Bicubic)] {
        for (size, pct) in [(32usize, 0.875f64), (29, 0.9), (40, 1.0)] {
            let golden =
                decode_rgb(&data.join(format!("tv_{name}_{size}_crop{pct:?}.png"))).unwrap();
            let fit = Fit {
                size,
                filter,
                shorter_side: Some((size as f64 / pct).floor() as usize),
            };
            assert_eq!(
                max_diff(&fit.apply(&src), &golden),
                0,
                "{name} {size} {pct}"
            );
        }
    }
}
