// CUDA kernels of the project's own, compiled to PTX by build.rs
// when the `cuda` feature is on and loaded by src/cuda/mod.rs.
//
// Why they exist: candle's grouped convolution runs one convolution per
// channel, so depthwise convolution needs its own kernel; and a
// convolution's bias, activation and residual are one pass here instead of
// three candle ops. Each kernel mirrors, index for index, the CPU reference
// in mod.rs (`DeviceOp::cpu`), which the tests check against the fixtures.
//
// Layout: NCHW, contiguous. Arithmetic in f32 whatever the storage type
// (f32, f16, bf16). One thread per output element, grid-stride loops.
// PTX for compute_$CUDA_COMPUTE_CAP (else compute_75; see build.rs), which
// the driver JIT-compiles: nothing here needs newer instructions.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

// Activation codes, as `Act::code` in device.rs.
#define ACT_NONE 0
#define ACT_RELU 1
#define ACT_RELU6 2

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
    return __float2bfloat16(v);
}

__device__ __forceinline__ float activate(float v, int act) {
    if (act == ACT_RELU) return fmaxf(v, 0.0f);
    if (act == ACT_RELU6) return fminf(fmaxf(v, 0.0f), 6.0f);
    return v;
}

// y[n, c, oy, ox] = out_act(b[c] + sum_{ky,kx} w[c, ky, kx] *
//                   in_act(x[n, c, oy*s - pad_top + ky, ox*s - pad_left + kx]))
// with taps outside the image contributing zero (zero padding; in_act(0) = 0
// for every activation here, so activating before padding is the same).
template <typename T>
__device__ void depthwise(const T *x, const T *w, const T *b, T *y, int64_t total, int c, int h,
                          int wd, int oh, int ow, int kh, int kw, int stride, int pad_top,
                          int pad_left, int in_act, int out_act) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (int64_t)blockDim.x * gridDim.x) {
        const int ox = (int)(i % ow);
        const int64_t rest = i / ow;
        const int oy = (int)(rest % oh);
        const int64_t plane = rest / oh;  // n * c + channel
        const int ch = (int)(plane % c);
        const T *src = x + plane * h * wd;
        const T *taps = w + (int64_t)ch * kh * kw;
        const int iy0 = oy * stride - pad_top;
        const int ix0 = ox * stride - pad_left;
        float acc = 0.0f;
        for (int ky = 0; ky < kh; ++ky) {
            const int iy = iy0 + ky;
            if (iy < 0 || iy >= h) continue;
            for (int kx = 0; kx < kw; ++kx) {
                const int ix = ix0 + kx;
                if (ix < 0 || ix >= wd) continue;
                acc += activate(to_f32(src[iy * wd + ix]), in_act) * to_f32(taps[ky * kw + kx]);
            }
        }
        y[i] = from_f32<T>(activate(acc + to_f32(b[ch]), out_act));
    }
}

// y[i] = act(x[i] + b[channel of i]) (+ r[i] when r is given): a
// convolution's epilogue. `hw` is the plane size, `c` the channel count.
template <typename T>
__device__ void bias_act(const T *x, const T *b, const T *r, T *y, int64_t total, int c,
                         int64_t hw, int act) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (int64_t)blockDim.x * gridDim.x) {
        const int ch = (int)((i / hw) % c);
        float v = activate(to_f32(x[i]) + to_f32(b[ch]), act);
        if (r != nullptr) v += to_f32(r[i]);
        y[i] = from_f32<T>(v);
    }
}

#define INSTANTIATE(SUFFIX, T)                                                                   \
    extern "C" __global__ void depthwise_##SUFFIX(                                               \
        const T *x, const T *w, const T *b, T *y, int64_t total, int c, int h, int wd, int oh,  \
        int ow, int kh, int kw, int stride, int pad_top, int pad_left, int in_act, int out_act) { \
        depthwise<T>(x, w, b, y, total, c, h, wd, oh, ow, kh, kw, stride, pad_top, pad_left,     \
                     in_act, out_act);                                                           \
    }                                                                                            \
    extern "C" __global__ void bias_act_##SUFFIX(const T *x, const T *b, T *y, int64_t total,    \
                                                 int c, int64_t hw, int act) {                   \
        bias_act<T>(x, b, nullptr, y, total, c, hw, act);                                        \
    }                                                                                            \
    extern "C" __global__ void bias_act_residual_##SUFFIX(                                       \
        const T *x, const T *b, const T *r, T *y, int64_t total, int c, int64_t hw, int act) {   \
        bias_act<T>(x, b, r, y, total, c, hw, act);                                              \
    }

INSTANTIATE(f32, float)
INSTANTIATE(f16, __half)
INSTANTIATE(bf16, __nv_bfloat16)
