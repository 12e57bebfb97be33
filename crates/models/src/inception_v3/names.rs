//! The timm / torchvision module names of Inception-v3's 94 `conv2d_bn`
//! layers, in Keras creation order.

/// timm / torchvision module names of the stem convolutions (`conv2d_1..5`).
const TORCH_STEM: [&str; 5] = [
    "Conv2d_1a_3x3",
    "Conv2d_2a_3x3",
    "Conv2d_2b_3x3",
    "Conv2d_3b_1x1",
    "Conv2d_4a_3x3",
];
/// `InceptionA` (`Mixed_5b..5d`, Keras `mixed0..2`) in Keras creation order.
const TORCH_A: [&str; 7] = [
    "branch1x1",
    "branch5x5_1",
    "branch5x5_2",
    "branch3x3dbl_1",
    "branch3x3dbl_2",
    "branch3x3dbl_3",
    "branch_pool",
];
/// `InceptionB` (`Mixed_6a`, Keras `mixed3`).
const TORCH_B: [&str; 4] = [
    "branch3x3",
    "branch3x3dbl_1",
    "branch3x3dbl_2",
    "branch3x3dbl_3",
];
/// `InceptionC` (`Mixed_6b..6e`, Keras `mixed4..7`).
const TORCH_C: [&str; 10] = [
    "branch1x1",
    "branch7x7_1",
    "branch7x7_2",
    "branch7x7_3",
    "branch7x7dbl_1",
    "branch7x7dbl_2",
    "branch7x7dbl_3",
    "branch7x7dbl_4",
    "branch7x7dbl_5",
    "branch_pool",
];
/// `InceptionD` (`Mixed_7a`, Keras `mixed8`).
const TORCH_D: [&str; 6] = [
    "branch3x3_1",
    "branch3x3_2",
    "branch7x7x3_1",
    "branch7x7x3_2",
    "branch7x7x3_3",
    "branch7x7x3_4",
];
/// `InceptionE` (`Mixed_7b`, `Mixed_7c`, Keras `mixed9`, `mixed10`).
const TORCH_E: [&str; 9] = [
    "branch1x1",
    "branch3x3_1",
    "branch3x3_2a",
    "branch3x3_2b",
    "branch3x3dbl_1",
    "branch3x3dbl_2",
    "branch3x3dbl_3a",
    "branch3x3dbl_3b",
    "branch_pool",
];

/// The name map: the timm / torchvision module of Keras `conv2d_{i+1}` /
/// `batch_normalization_{i+1}` is element `i` (94 in all), e.g. `conv2d_1` is
/// `Conv2d_1a_3x3`, `conv2d_6` is `Mixed_5b.branch1x1`, `conv2d_94` is
/// `Mixed_7c.branch_pool`. Its tensors are `MODULE.conv.weight` (OIHW) and
/// `MODULE.bn.{weight,bias,running_mean,running_var}`; timm's `fc.*` and
/// torchvision's `AuxLogits.*` are ignored.
pub fn torch_modules() -> Vec<String> {
    let blocks: [(&str, &[&str]); 11] = [
        ("Mixed_5b", &TORCH_A),
        ("Mixed_5c", &TORCH_A),
        ("Mixed_5d", &TORCH_A),
        ("Mixed_6a", &TORCH_B),
        ("Mixed_6b", &TORCH_C),
        ("Mixed_6c", &TORCH_C),
        ("Mixed_6d", &TORCH_C),
        ("Mixed_6e", &TORCH_C),
        ("Mixed_7a", &TORCH_D),
        ("Mixed_7b", &TORCH_E),
        ("Mixed_7c", &TORCH_E),
    ];
    let stem = TORCH_STEM.iter().map(|m| m.to_string());
    let mixed = blocks
        .iter()
        .flat_map(|(block, branches)| branches.iter().map(move |b| format!("{block}.{b}")));
    stem.chain(mixed).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torch_name_map_covers_the_94_keras_layers_in_order() {
        let m = torch_modules();
        assert_eq!(m.len(), 94);
        assert_eq!(m[0], "Conv2d_1a_3x3"); // conv2d_1
        assert_eq!(m[5], "Mixed_5b.branch1x1"); // conv2d_6
        assert_eq!(m[11], "Mixed_5b.branch_pool"); // conv2d_12
        assert_eq!(m[26], "Mixed_6a.branch3x3"); // conv2d_27
        assert_eq!(m[70], "Mixed_7a.branch3x3_1"); // conv2d_71
        assert_eq!(m[93], "Mixed_7c.branch_pool"); // conv2d_94
        let mut unique = m.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 94);
    }
}
