//! Decoding + area resize against the reference (OpenCV `INTER_AREA`)
//! pixels stored in the shared fixtures.

use candle_core::{Device, Tensor};
use runner::data::image::{decode_rgb, resize_area};

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
fn area_resize_matches_opencv_within_one_grey_level() {
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
            let ours = resize_area(&img, w, h);
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
