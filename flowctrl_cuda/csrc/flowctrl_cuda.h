// C ABI of the flowctrl_cuda launchers (implemented in the .cu files, called from bindings.cpp).
// Every launcher enqueues on `stream` (a cudaStream_t passed as void*) and returns a cudaError_t
// code (0 = success). Tensors are contiguous; x / out use the dtype code, everything else float32.
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { FC_F32 = 0, FC_F16 = 1, FC_BF16 = 2 };
enum { FC_SPLAT_SUM = 0, FC_SPLAT_AVG = 1, FC_SPLAT_SOFTMAX = 2 };

// backward_warp: out (N,C,H,W) = x sampled at p + flow(p); border != 0 clamps the position.
int fc_warp_forward(int dtype, const void* x, const float* flow, void* out, int64_t N, int64_t C, int64_t H,
                    int64_t W, int border, void* stream);
// grad_x (N,C,H,W) float32, zero-filled by the caller (scatter with atomics), may be null;
// grad_flow (N,2,H,W) float32 (written), may be null. grad_out is float32.
int fc_warp_backward(int dtype, const void* x, const float* flow, const float* grad_out, float* grad_x,
                     float* grad_flow, int64_t N, int64_t C, int64_t H, int64_t W, int border, void* stream);

// splat: accumulate num (N,C,H,W) and norm (N,1,H,W) (float32, zero-filled by the caller; norm may
// be null for FC_SPLAT_SUM). z (N,1,H,W) or null; zmax (N,) per-image max of z for softmax.
int fc_splat_forward(int dtype, const void* x, const float* flow, const float* z, const float* zmax, float* num,
                     float* norm, int64_t N, int64_t C, int64_t H, int64_t W, int mode, void* stream);
// num ← num / norm where norm > 0 else 0 (divide != 0), and out (dtype) ← num. out may alias num
// when dtype is float32.
int fc_splat_finish(int dtype, float* num, const float* norm, void* out, int64_t N, int64_t C, int64_t HW,
                    int divide, void* stream);
// Gradients of splat per source pixel (gathers; no atomics). out_f32 is the (normalized) float32
// output for avg/softmax (null for sum); grad_norm may be null. grad_x (N,C,H,W), grad_flow
// (N,2,H,W), grad_e (N,1,H,W) = dL/d(per-source weight e) — each may be null, all float32.
int fc_splat_backward(int dtype, const void* x, const float* flow, const float* z, const float* zmax,
                      const float* norm, const float* out_f32, const float* grad_out, const float* grad_norm,
                      float* grad_x, float* grad_flow, float* grad_e, int64_t N, int64_t C, int64_t H, int64_t W,
                      int mode, void* stream);

// freq_adaptor, fused: x viewed as (outer, T, inner, C); y[o,t,i,c] = sum_s M[c,t,s] x[o,s,i,c].
// M (C,T,T) float32. Reads x once and writes y once. T <= fc_freq_max_frames().
int fc_freq_apply(int dtype, const void* x, const float* M, void* y, int64_t outer, int64_t T, int64_t inner,
                  int64_t C, void* stream);
int fc_freq_max_frames(void);

#ifdef __cplusplus
}
#endif
