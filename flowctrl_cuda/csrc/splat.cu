// splat: forward splatting with a bilinear footprint (sum / avg / softmax, Niklaus & Liu 2020).
// Forward: one thread per source pixel, float32 atomics into num / norm, then one elementwise pass
// that divides and casts. Backward: one thread per source pixel gathering from its 4 targets (no
// atomics): with A = dL/dnum and B = dL/dnorm at a target q,
//   dL/dx_c(p) = sum_k b_k e A_c(q_k),  dL/db_k = e * s_k,  dL/de = sum_k b_k s_k,
//   s_k = sum_c x_c(p) A_c(q_k) + B(q_k);  for avg/softmax A = G / norm, B = Gn - sum_c G out / norm.
#include "common.cuh"

namespace {

__device__ __forceinline__ bool source_position(const float* flow, int64_t n, int64_t p, int64_t H, int64_t W,
                                                float* qx, float* qy) {
  const int64_t HW = H * W;
  const int64_t yy = p / W, xx = p - yy * W;
  const float rx = static_cast<float>(xx) + flow[n * 2 * HW + p];
  const float ry = static_cast<float>(yy) + flow[n * 2 * HW + HW + p];
  if (!isfinite(rx) || !isfinite(ry)) return false;
  // positions beyond [-2, size+1] touch no pixel; clamping keeps the integer conversion in range
  *qx = fc::clampf(rx, -2.0f, static_cast<float>(W + 1));
  *qy = fc::clampf(ry, -2.0f, static_cast<float>(H + 1));
  return true;
}

__device__ __forceinline__ float source_weight(const float* z, const float* zmax, int64_t n, int64_t p, int64_t HW,
                                               int mode) {
  if (z == nullptr) return 1.0f;
  const float v = z[n * HW + p];
  return mode == FC_SPLAT_SOFTMAX ? expf(v - zmax[n]) : v;
}

template <typename T>
__global__ void splat_forward_kernel(const T* __restrict__ x, const float* __restrict__ flow,
                                     const float* __restrict__ z, const float* __restrict__ zmax, float* num,
                                     float* norm, int64_t N, int64_t C, int64_t H, int64_t W, int mode) {
  const int64_t HW = H * W;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * HW) return;
  const int64_t n = i / HW, p = i - n * HW;
  float qx, qy;
  if (!source_position(flow, n, p, H, W, &qx, &qy)) return;
  const fc::Footprint f = fc::footprint(qx, qy, H, W);
  const float e = source_weight(z, zmax, n, p, HW, mode);
  const T* xn = x + n * C * HW;
  float* numn = num + n * C * HW;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if (!f.valid[k]) continue;
    const float wk = f.w[k] * e;
    if (norm != nullptr) atomicAdd(norm + n * HW + f.idx[k], wk);
    for (int64_t c = 0; c < C; ++c) atomicAdd(numn + c * HW + f.idx[k], fc::to_f(xn[c * HW + p]) * wk);
  }
}

template <typename T>
__global__ void splat_finish_kernel(float* num, const float* __restrict__ norm, T* out, int64_t N, int64_t C,
                                    int64_t HW, int divide) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * C * HW) return;
  float v = num[i];
  if (divide) {
    const int64_t n = i / (C * HW), p = i % HW;
    const float d = norm[n * HW + p];
    v = d > 0.0f ? v / d : 0.0f;
    num[i] = v;
  }
  out[i] = fc::from_f<T>(v);
}

template <typename T>
__global__ void splat_backward_kernel(const T* __restrict__ x, const float* __restrict__ flow,
                                      const float* __restrict__ z, const float* __restrict__ zmax,
                                      const float* __restrict__ norm, const float* __restrict__ out_f32,
                                      const float* __restrict__ grad_out, const float* __restrict__ grad_norm,
                                      float* __restrict__ grad_x, float* __restrict__ grad_flow,
                                      float* __restrict__ grad_e, int64_t N, int64_t C, int64_t H, int64_t W,
                                      int mode) {
  const int64_t HW = H * W;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * HW) return;
  const int64_t n = i / HW, p = i - n * HW;
  const bool divide = mode != FC_SPLAT_SUM;
  float qx, qy;
  if (!source_position(flow, n, p, H, W, &qx, &qy)) {
    if (grad_x != nullptr)
      for (int64_t c = 0; c < C; ++c) grad_x[(n * C + c) * HW + p] = 0.0f;
    if (grad_flow != nullptr) grad_flow[n * 2 * HW + p] = grad_flow[n * 2 * HW + HW + p] = 0.0f;
    if (grad_e != nullptr) grad_e[n * HW + p] = 0.0f;
    return;
  }
  const fc::Footprint f = fc::footprint(qx, qy, H, W);
  const float e = source_weight(z, zmax, n, p, HW, mode);
  float inv[4];  // 1 / norm at each tap (0 at holes: the reference's where() passes no gradient there)
  float s[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    s[k] = 0.0f;
    inv[k] = 1.0f;
    if (f.valid[k] && divide) {
      const float d = norm[n * HW + f.idx[k]];
      inv[k] = d > 0.0f ? 1.0f / d : 0.0f;
    }
    if (f.valid[k] && grad_norm != nullptr) s[k] = grad_norm[n * HW + f.idx[k]];
  }
  const T* xn = x + n * C * HW;
  const float* gn = grad_out + n * C * HW;
  const float* on = out_f32 != nullptr ? out_f32 + n * C * HW : nullptr;
  for (int64_t c = 0; c < C; ++c) {
    const float xv = fc::to_f(xn[c * HW + p]);
    float gx = 0.0f;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (!f.valid[k]) continue;
      const float a = gn[c * HW + f.idx[k]] * inv[k];
      gx += f.w[k] * a;
      s[k] += divide ? (xv - on[c * HW + f.idx[k]]) * a : xv * a;
    }
    if (grad_x != nullptr) grad_x[(n * C + c) * HW + p] = gx * e;
  }
  float gfx = 0.0f, gfy = 0.0f, ge = 0.0f;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if (!f.valid[k]) continue;
    gfx += s[k] * f.dwdx[k];
    gfy += s[k] * f.dwdy[k];
    ge += s[k] * f.w[k];
  }
  if (grad_flow != nullptr) {
    grad_flow[n * 2 * HW + p] = gfx * e;
    grad_flow[n * 2 * HW + HW + p] = gfy * e;
  }
  if (grad_e != nullptr) grad_e[n * HW + p] = ge;
}

}  // namespace

extern "C" int fc_splat_forward(int dtype, const void* x, const float* flow, const float* z, const float* zmax,
                                float* num, float* norm, int64_t N, int64_t C, int64_t H, int64_t W, int mode,
                                void* stream) {
  if (mode < FC_SPLAT_SUM || mode > FC_SPLAT_SOFTMAX) return static_cast<int>(cudaErrorInvalidValue);
  if ((mode != FC_SPLAT_SUM && norm == nullptr) || (mode == FC_SPLAT_SOFTMAX && z != nullptr && zmax == nullptr))
    return static_cast<int>(cudaErrorInvalidValue);
  if (N * H * W == 0) return 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  FC_DISPATCH_DTYPE(dtype, T,
                    splat_forward_kernel<T><<<fc::blocks_for(N * H * W), fc::kThreads, 0, s>>>(
                        static_cast<const T*>(x), flow, z, zmax, num, norm, N, C, H, W, mode));
  return static_cast<int>(cudaGetLastError());
}

extern "C" int fc_splat_finish(int dtype, float* num, const float* norm, void* out, int64_t N, int64_t C, int64_t HW,
                               int divide, void* stream) {
  if (divide && norm == nullptr) return static_cast<int>(cudaErrorInvalidValue);
  if (N * C * HW == 0) return 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  FC_DISPATCH_DTYPE(dtype, T,
                    splat_finish_kernel<T><<<fc::blocks_for(N * C * HW), fc::kThreads, 0, s>>>(
                        num, norm, static_cast<T*>(out), N, C, HW, divide));
  return static_cast<int>(cudaGetLastError());
}

extern "C" int fc_splat_backward(int dtype, const void* x, const float* flow, const float* z, const float* zmax,
                                 const float* norm, const float* out_f32, const float* grad_out,
                                 const float* grad_norm, float* grad_x, float* grad_flow, float* grad_e, int64_t N,
                                 int64_t C, int64_t H, int64_t W, int mode, void* stream) {
  if (mode < FC_SPLAT_SUM || mode > FC_SPLAT_SOFTMAX) return static_cast<int>(cudaErrorInvalidValue);
  if (mode != FC_SPLAT_SUM && (norm == nullptr || out_f32 == nullptr)) return static_cast<int>(cudaErrorInvalidValue);
  if (N * H * W == 0) return 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  FC_DISPATCH_DTYPE(dtype, T,
                    splat_backward_kernel<T><<<fc::blocks_for(N * H * W), fc::kThreads, 0, s>>>(
                        static_cast<const T*>(x), flow, z, zmax, norm, out_f32, grad_out, grad_norm, grad_x,
                        grad_flow, grad_e, N, C, H, W, mode));
  return static_cast<int>(cudaGetLastError());
}
