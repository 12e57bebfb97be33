//! Elementwise maps `y = f(x)` compiled for the widest vector unit the CPU
//! has: the same loop, monomorphised for `f`, inside functions with AVX-512
//! or AVX2+FMA enabled, picked at run time (the crate is otherwise built
//! for the baseline x86-64, four lanes). An `f` made of multiply-adds,
//! divisions and bit casts (erf, exp, GELU) then runs 8 or 16 values at a
//! time.

/// `y[i] = f(x[i])`; `x` and `y` have the same length.
#[inline]
pub fn map_into<F: Fn(f32) -> f32>(f: &F, x: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return unsafe { map_into_avx512(f, x, y) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return unsafe { map_into_avx2(f, x, y) };
        }
    }
    map_into_plain(f, x, y)
}

/// `v[i] = f(v[i])`.
#[inline]
pub fn map_in_place<F: Fn(f32) -> f32>(f: &F, v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return unsafe { map_in_place_avx512(f, v) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return unsafe { map_in_place_avx2(f, v) };
        }
    }
    map_in_place_plain(f, v)
}

#[inline(always)]
fn map_into_plain<F: Fn(f32) -> f32>(f: &F, x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = f(x);
    }
}

#[inline(always)]
fn map_in_place_plain<F: Fn(f32) -> f32>(f: &F, v: &mut [f32]) {
    for v in v.iter_mut() {
        *v = f(*v);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn map_into_avx512<F: Fn(f32) -> f32>(f: &F, x: &[f32], y: &mut [f32]) {
    map_into_plain(f, x, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn map_into_avx2<F: Fn(f32) -> f32>(f: &F, x: &[f32], y: &mut [f32]) {
    map_into_plain(f, x, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn map_in_place_avx512<F: Fn(f32) -> f32>(f: &F, v: &mut [f32]) {
    map_in_place_plain(f, v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn map_in_place_avx2<F: Fn(f32) -> f32>(f: &F, v: &mut [f32]) {
    map_in_place_plain(f, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_maps_every_value() {
        let x: Vec<f32> = (0..1001).map(|i| i as f32 * 0.5 - 100.0).collect();
        let f = |v: f32| v * v - 3.0;
        let mut y = vec![0.0; x.len()];
        map_into(&f, &x, &mut y);
        let mut z = x.clone();
        map_in_place(&f, &mut z);
        for ((&x, &y), &z) in x.iter().zip(&y).zip(&z) {
            assert_eq!((y, z), (f(x), f(x)));
        }
    }
}
