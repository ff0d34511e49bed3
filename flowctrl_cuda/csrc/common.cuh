// Shared device helpers of the flowctrl_cuda kernels: dtype conversion, launch sizes, the bilinear
// footprint. Plain CUDA (no torch headers) so every .cu compile-checks with `nvcc -c` in seconds.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "flowctrl_cuda.h"

namespace fc {

template <typename T>
__device__ __forceinline__ float to_f(T v);
template <>
__device__ __forceinline__ float to_f<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ float from_f<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

constexpr int kThreads = 256;

inline unsigned int blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(b < 1 ? 1 : b);
}

// Bilinear footprint of position (qx, qy) (pixels, already clamped by the caller):
// taps (x0,y0), (x0+1,y0), (x0,y0+1), (x0+1,y0+1) with weights w and their derivatives.
struct Footprint {
  int64_t idx[4];
  float w[4];
  float dwdx[4];
  float dwdy[4];
  bool valid[4];
};

__device__ __forceinline__ Footprint footprint(float qx, float qy, int64_t H, int64_t W) {
  Footprint f;
  const float x0f = floorf(qx), y0f = floorf(qy);
  const float ax = qx - x0f, ay = qy - y0f;
  const int64_t x0 = static_cast<int64_t>(x0f), y0 = static_cast<int64_t>(y0f);
  // same multiplication order as reference.py (no fused multiply-add on the weights)
  f.w[0] = __fmul_rn(1.0f - ax, 1.0f - ay);
  f.w[1] = __fmul_rn(ax, 1.0f - ay);
  f.w[2] = __fmul_rn(1.0f - ax, ay);
  f.w[3] = __fmul_rn(ax, ay);
  f.dwdx[0] = -(1.0f - ay);
  f.dwdx[1] = 1.0f - ay;
  f.dwdx[2] = -ay;
  f.dwdx[3] = ay;
  f.dwdy[0] = -(1.0f - ax);
  f.dwdy[1] = -ax;
  f.dwdy[2] = 1.0f - ax;
  f.dwdy[3] = ax;
  const bool vx0 = x0 >= 0 && x0 < W, vx1 = x0 + 1 >= 0 && x0 + 1 < W;
  const bool vy0 = y0 >= 0 && y0 < H, vy1 = y0 + 1 >= 0 && y0 + 1 < H;
  f.valid[0] = vx0 && vy0;
  f.valid[1] = vx1 && vy0;
  f.valid[2] = vx0 && vy1;
  f.valid[3] = vx1 && vy1;
  const int64_t q00 = y0 * W + x0;
  f.idx[0] = q00;
  f.idx[1] = q00 + 1;
  f.idx[2] = q00 + W;
  f.idx[3] = q00 + W + 1;
  return f;
}

__device__ __forceinline__ float clampf(float v, float lo, float hi) { return fminf(fmaxf(v, lo), hi); }

}  // namespace fc

// Dispatch a templated launch on the runtime dtype code (FC_F32 / FC_F16 / FC_BF16).
#define FC_DISPATCH_DTYPE(DTYPE, T, ...)              \
  switch (DTYPE) {                                    \
    case FC_F32: {                                    \
      using T = float;                                \
      __VA_ARGS__;                                    \
      break;                                          \
    }                                                 \
    case FC_F16: {                                    \
      using T = __half;                               \
      __VA_ARGS__;                                    \
      break;                                          \
    }                                                 \
    case FC_BF16: {                                   \
      using T = __nv_bfloat16;                        \
      __VA_ARGS__;                                    \
      break;                                          \
    }                                                 \
    default:                                          \
      return static_cast<int>(cudaErrorInvalidValue); \
  }
