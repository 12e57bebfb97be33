//! Backbone inputs: resized RGB images to preprocessed `(N, 3, H, W)`
//! tensors, on the host ([`input_tensor`]) or, from bytes uploaded once per
//! chunk, on the device ([`upload_images`], [`device_input_tensor`]).

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::data::image::RgbImage;
use crate::spec::{BackboneSpec, View};

/// Converts resized RGB images into a preprocessed `(N, 3, H, W)` tensor,
/// mirrored left to right for [`View::Hflip`].
pub fn input_tensor(
    images: &[&RgbImage],
    backbone: &BackboneSpec,
    view: View,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let size = backbone.input_size;
    let plane = size * size;
    let so = backbone.preprocess.scale_offset();
    let mut data = vec![0f32; images.len() * 3 * plane];
    data.par_chunks_mut(3 * plane)
        .zip(images.par_iter())
        .for_each(|(out, img)| {
            for y in 0..size {
                for x in 0..size {
                    let sx = match view {
                        View::Original => x,
                        View::Hflip => size - 1 - x,
                    };
                    let p = &img.pixels[(y * size + sx) * 3..(y * size + sx) * 3 + 3];
                    for c in 0..3 {
                        out[c * plane + y * size + x] = p[c] as f32 * so[c].0 + so[c].1;
                    }
                }
            }
        });
    Tensor::from_vec(data, (images.len(), 3, size, size), device)
}

/// A chunk's resized images of one input size as one `(N, H, W, 3)` u8
/// tensor on `device`. Off the CPU, the images go to the device once per
/// chunk, as bytes, and every backbone and view preprocesses them there
/// ([`device_input_tensor`]): a quarter of the traffic of f32 inputs, once
/// instead of once per stage.
pub fn upload_images(images: &[RgbImage], device: &Device) -> candle_core::Result<Tensor> {
    let (w, h) = images.first().map_or((0, 0), |img| (img.width, img.height));
    let mut bytes = Vec::with_capacity(images.len() * h * w * 3);
    for img in images {
        bytes.extend_from_slice(&img.pixels);
    }
    Tensor::from_vec(bytes, (images.len(), h, w, 3), device)
}

/// [`input_tensor`] computed on the images' device from [`upload_images`]'
/// bytes, in `dtype`: the same f32 arithmetic (multiply, then add), so the
/// same values.
pub fn device_input_tensor(
    images: &Tensor,
    backbone: &BackboneSpec,
    view: View,
    dtype: candle_core::DType,
) -> candle_core::Result<Tensor> {
    let device = images.device();
    let so = backbone.preprocess.scale_offset();
    let scale = Tensor::new(&so.map(|(s, _)| s), device)?;
    let offset = Tensor::new(&so.map(|(_, o)| o), device)?;
    let x = images
        .to_dtype(candle_core::DType::F32)?
        .broadcast_mul(&scale)?
        .broadcast_add(&offset)?;
    let x = match view {
        View::Original => x,
        View::Hflip => x.flip(&[2])?,
    };
    x.permute((0, 3, 1, 2))?.contiguous()?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::image::{decode_rgb, resize};
    use crate::features::tests::woof_train_photos;
    use crate::spec::Resize;
    use runner_models as models;

    #[test]
    fn device_preprocessing_gives_the_same_inputs_as_the_host_loop() {
        let paths = woof_train_photos();
        let images: Vec<RgbImage> = paths[..3]
            .iter()
            .map(|p| resize(&decode_rgb(p).unwrap(), 40, 40, Resize::Box))
            .collect();
        let refs: Vec<&RgbImage> = images.iter().collect();
        let uploaded = upload_images(&images, &Device::Cpu).unwrap();
        assert_eq!(uploaded.dims(), [3, 40, 40, 3]);
        for preprocess in [
            models::Preprocess::Inception,
            models::Preprocess::EfficientnetLite,
            models::Preprocess::Imagenet,
        ] {
            let bb = BackboneSpec {
                arch: models::Arch::from_name("xception").expect("registered"),
                weights: "unused".into(),
                input_size: 40,
                preprocess,
                resize: Resize::Box,
                output: None,
                input_layout: None,
                pool: None,
                prefix_tokens: None,
                crop_pct: None,
            };
            for view in [View::Original, View::Hflip] {
                let host = input_tensor(&refs, &bb, view, &Device::Cpu).unwrap();
                let dev =
                    device_input_tensor(&uploaded, &bb, view, candle_core::DType::F32).unwrap();
                assert_eq!(dev.dims(), [3, 3, 40, 40]);
                let (a, b): (Vec<f32>, Vec<f32>) = (
                    host.flatten_all().unwrap().to_vec1().unwrap(),
                    dev.flatten_all().unwrap().to_vec1().unwrap(),
                );
                assert_eq!(a, b, "{preprocess:?} {view:?}");
            }
        }
    }
}
