// freq_adaptor, fused: irfft(rfft(x, T) * W) along time is a real T x T matrix per channel, built
// in torch from the complex weights (reference.freq_adaptor_matrix). This kernel applies it:
//   y[o, t, i, c] = sum_s M[c, t, s] * x[o, s, i, c]
// reading x once and writing y once. A block owns a tile of 32 channels (their matrices staged in
// shared memory) and walks many token columns; each thread keeps TOK columns of T values in
// registers so each shared-memory matrix entry feeds TOK multiply-adds. The backward pass for x is
// the same kernel with M transposed.
#include "common.cuh"

namespace {

constexpr int kTileC = 32;             // channels per block (= threadIdx.x)
constexpr int kLanes = 8;              // token lanes per block (= threadIdx.y)
constexpr int kSmemStride = kTileC + 1;  // padding: conflict-free staging writes and reads
constexpr int kMaxFrames = 32;

template <typename T, int MAXT, int TOK>
__global__ void __launch_bounds__(kTileC* kLanes)
    freq_apply_kernel(const T* __restrict__ x, const float* __restrict__ M, T* __restrict__ y, int64_t outer,
                      int frames, int64_t inner, int64_t C) {
  extern __shared__ float ms[];  // [frames * frames][kSmemStride]
  const int tt = frames * frames;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kTileC;
  const int tid = threadIdx.y * kTileC + threadIdx.x;
  for (int j = tid; j < tt * kTileC; j += kTileC * kLanes) {
    const int ch = j / tt, ts = j - ch * tt;  // contiguous global reads of one channel's matrix
    ms[ts * kSmemStride + ch] = c0 + ch < C ? M[(c0 + ch) * tt + ts] : 0.0f;
  }
  __syncthreads();
  const int cl = threadIdx.x;
  const int64_t c = c0 + cl;
  if (c >= C) return;
  const int64_t cols = outer * inner;
  const int64_t tstride = inner * C;  // distance between consecutive frames
  const int64_t step = static_cast<int64_t>(gridDim.y) * kLanes * TOK;
  for (int64_t base = (static_cast<int64_t>(blockIdx.y) * kLanes + threadIdx.y) * TOK; base < cols; base += step) {
    float xv[TOK][MAXT];
    int64_t off[TOK];
    bool ok[TOK];
#pragma unroll
    for (int j = 0; j < TOK; ++j) {
      const int64_t col = base + j;
      ok[j] = col < cols;
      const int64_t o = ok[j] ? col / inner : 0, ii = ok[j] ? col - o * inner : 0;
      off[j] = (o * frames * inner + ii) * C + c;
#pragma unroll
      for (int s = 0; s < MAXT; ++s) xv[j][s] = (ok[j] && s < frames) ? fc::to_f(x[off[j] + s * tstride]) : 0.0f;
    }
#pragma unroll 1
    for (int t = 0; t < frames; ++t) {  // not unrolled: only the register-indexed s loop must be
      float acc[TOK];
#pragma unroll
      for (int j = 0; j < TOK; ++j) acc[j] = 0.0f;
#pragma unroll
      for (int s = 0; s < MAXT; ++s) {
        if (s >= frames) break;
        const float m = ms[(t * frames + s) * kSmemStride + cl];
#pragma unroll
        for (int j = 0; j < TOK; ++j) acc[j] += m * xv[j][s];
      }
#pragma unroll
      for (int j = 0; j < TOK; ++j)
        if (ok[j]) y[off[j] + t * tstride] = fc::from_f<T>(acc[j]);
    }
  }
}

template <typename T, int MAXT, int TOK>
int launch_freq(const T* x, const float* M, T* y, int64_t outer, int frames, int64_t inner, int64_t C,
                cudaStream_t s) {
  const size_t smem = sizeof(float) * frames * frames * kSmemStride;
  auto kernel = freq_apply_kernel<T, MAXT, TOK>;
  if (smem > 48 * 1024) {
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return static_cast<int>(err);
  }
  int device = 0, sms = 80;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const int64_t cols = outer * inner;
  const int64_t tiles_c = (C + kTileC - 1) / kTileC;
  const int64_t need_y = (cols + kLanes * TOK - 1) / (kLanes * TOK);
  // enough blocks to fill the card several times over, few enough that each block amortizes its
  // shared-memory matrix load over many token columns
  int64_t grid_y = (static_cast<int64_t>(sms) * 8 + tiles_c - 1) / tiles_c;
  grid_y = grid_y < 1 ? 1 : (grid_y > need_y ? need_y : grid_y);
  if (grid_y > 65535) grid_y = 65535;
  dim3 grid(static_cast<unsigned int>(tiles_c), static_cast<unsigned int>(grid_y));
  dim3 block(kTileC, kLanes);
  kernel<<<grid, block, smem, s>>>(x, M, y, outer, frames, inner, C);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

extern "C" int fc_freq_max_frames(void) { return kMaxFrames; }

extern "C" int fc_freq_apply(int dtype, const void* x, const float* M, void* y, int64_t outer, int64_t T,
                             int64_t inner, int64_t C, void* stream) {
  if (T < 1 || T > kMaxFrames || C < 1 || C > (int64_t(65535) * kTileC)) return static_cast<int>(cudaErrorInvalidValue);
  if (outer * inner == 0) return 0;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int frames = static_cast<int>(T);
  FC_DISPATCH_DTYPE(dtype, S, {
    const S* xs = static_cast<const S*>(x);
    S* ys = static_cast<S*>(y);
    return frames <= 16 ? launch_freq<S, 16, 4>(xs, M, ys, outer, frames, inner, C, s)
                        : launch_freq<S, 32, 2>(xs, M, ys, outer, frames, inner, C, s);
  });
  return 0;
}
