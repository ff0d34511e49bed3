// backward_warp: out(p) = x(p + flow(p)), bilinear, flow in pixels (no normalized grid).
// Forward: one thread per output pixel, channels looped (the footprint is computed once).
// Backward: grad_x scattered with float32 atomics; grad_flow written per pixel.
#include "common.cuh"

namespace {

template <typename T>
__global__ void warp_forward_kernel(const T* __restrict__ x, const float* __restrict__ flow, T* __restrict__ out,
                                    int64_t N, int64_t C, int64_t H, int64_t W, int border) {
  const int64_t HW = H * W;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * HW) return;
  const int64_t n = i / HW, p = i - n * HW;
  const int64_t yy = p / W, xx = p - yy * W;
  float qx = static_cast<float>(xx) + flow[n * 2 * HW + p];
  float qy = static_cast<float>(yy) + flow[n * 2 * HW + HW + p];
  const T* xn = x + n * C * HW;
  T* on = out + n * C * HW;
  if (!isfinite(qx) || !isfinite(qy)) {
    for (int64_t c = 0; c < C; ++c) on[c * HW + p] = fc::from_f<T>(0.0f);
    return;
  }
  if (border) {
    qx = fc::clampf(qx, 0.0f, static_cast<float>(W - 1));
    qy = fc::clampf(qy, 0.0f, static_cast<float>(H - 1));
  } else {
    qx = fc::clampf(qx, -2.0f, static_cast<float>(W + 1));
    qy = fc::clampf(qy, -2.0f, static_cast<float>(H + 1));
  }
  const fc::Footprint f = fc::footprint(qx, qy, H, W);
  for (int64_t c = 0; c < C; ++c) {
    const T* plane = xn + c * HW;
    float acc = 0.0f;
#pragma unroll
    for (int k = 0; k < 4; ++k)
      if (f.valid[k]) acc += fc::to_f(plane[f.idx[k]]) * f.w[k];
    on[c * HW + p] = fc::from_f<T>(acc);
  }
}

template <typename T>
__global__ void warp_backward_kernel(const T* __restrict__ x, const float* __restrict__ flow,
                                     const float* __restrict__ grad_out, float* __restrict__ grad_x,
                                     float* __restrict__ grad_flow, int64_t N, int64_t C, int64_t H, int64_t W,
                                     int border) {
  const int64_t HW = H * W;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * HW) return;
  const int64_t n = i / HW, p = i - n * HW;
  const int64_t yy = p / W, xx = p - yy * W;
  const float rx = static_cast<float>(xx) + flow[n * 2 * HW + p];
  const float ry = static_cast<float>(yy) + flow[n * 2 * HW + HW + p];
  float* gf = grad_flow != nullptr ? grad_flow + n * 2 * HW : nullptr;
  if (!isfinite(rx) || !isfinite(ry)) {
    if (gf != nullptr) {
      gf[p] = 0.0f;
      gf[HW + p] = 0.0f;
    }
    return;
  }
  const float lox = border ? 0.0f : -2.0f, hix = border ? static_cast<float>(W - 1) : static_cast<float>(W + 1);
  const float loy = border ? 0.0f : -2.0f, hiy = border ? static_cast<float>(H - 1) : static_cast<float>(H + 1);
  // torch.clamp passes the gradient where lo <= v <= hi
  const float passx = (rx >= lox && rx <= hix) ? 1.0f : 0.0f;
  const float passy = (ry >= loy && ry <= hiy) ? 1.0f : 0.0f;
  const fc::Footprint f = fc::footprint(fc::clampf(rx, lox, hix), fc::clampf(ry, loy, hiy), H, W);
  const T* xn = x + n * C * HW;
  const float* gn = grad_out + n * C * HW;
  float* gxn = grad_x != nullptr ? grad_x + n * C * HW : nullptr;
  float gfx = 0.0f, gfy = 0.0f;
  for (int64_t c = 0; c < C; ++c) {
    const float g = gn[c * HW + p];
    if (g == 0.0f) continue;
    const T* plane = xn + c * HW;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (!f.valid[k]) continue;
      if (gxn != nullptr) atomicAdd(gxn + c * HW + f.idx[k], f.w[k] * g);
      const float v = fc::to_f(plane[f.idx[k]]) * g;
      gfx += v * f.dwdx[k];
      gfy += v * f.dwdy[k];
    }
  }
  if (gf != nullptr) {
    gf[p] = gfx * passx;
    gf[HW + p] = gfy * passy;
  }
}

}  // namespace

extern "C" int fc_warp_forward(int dtype, const void* x, const float* flow, void* out, int64_t N, int64_t C, int64_t H,
                               int64_t W, int border, void* stream) {
  if (N * H * W == 0) return 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  FC_DISPATCH_DTYPE(dtype, T,
                    warp_forward_kernel<T><<<fc::blocks_for(N * H * W), fc::kThreads, 0, s>>>(
                        static_cast<const T*>(x), flow, static_cast<T*>(out), N, C, H, W, border));
  return static_cast<int>(cudaGetLastError());
}

extern "C" int fc_warp_backward(int dtype, const void* x, const float* flow, const float* grad_out, float* grad_x,
                                float* grad_flow, int64_t N, int64_t C, int64_t H, int64_t W, int border,
                                void* stream) {
  if (N * H * W == 0) return 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  FC_DISPATCH_DTYPE(dtype, T,
                    warp_backward_kernel<T><<<fc::blocks_for(N * H * W), fc::kThreads, 0, s>>>(
                        static_cast<const T*>(x), flow, grad_out, grad_x, grad_flow, N, C, H, W, border));
  return static_cast<int>(cudaGetLastError());
}
