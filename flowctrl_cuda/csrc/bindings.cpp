// torch binding of the flowctrl_cuda launchers (flowctrl_cuda.h). Checks inputs, allocates outputs,
// passes raw pointers and the current CUDA stream. Autograd lives in flowctrl_cuda/_cuda.py.
#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "flowctrl_cuda.h"

namespace {

int dtype_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return FC_F32;
    case at::kHalf: return FC_F16;
    case at::kBFloat16: return FC_BF16;
    default: TORCH_CHECK(false, "flowctrl_cuda: x must be float32, float16 or bfloat16, got ", t.scalar_type());
  }
  return -1;
}

void check_cuda(const at::Tensor& t, const char* name, bool f32) {
  TORCH_CHECK(t.is_cuda(), "flowctrl_cuda: ", name, " must be a CUDA tensor");
  TORCH_CHECK(t.is_contiguous(), "flowctrl_cuda: ", name, " must be contiguous");
  if (f32) TORCH_CHECK(t.scalar_type() == at::kFloat, "flowctrl_cuda: ", name, " must be float32");
}

const float* fptr(const c10::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->data_ptr<float>() : nullptr;
}

void* stream() { return static_cast<void*>(c10::cuda::getCurrentCUDAStream().stream()); }

void check_rc(int rc, const char* what) {
  TORCH_CHECK(rc == 0, "flowctrl_cuda: ", what, " failed with CUDA error ", rc, " (",
              cudaGetErrorString(static_cast<cudaError_t>(rc)), ")");
}

at::Tensor warp_forward(const at::Tensor& x, const at::Tensor& flow, bool border) {
  check_cuda(x, "x", false);
  check_cuda(flow, "flow", true);
  const c10::cuda::CUDAGuard guard(x.device());
  auto out = at::empty_like(x);
  check_rc(fc_warp_forward(dtype_code(x), x.data_ptr(), flow.data_ptr<float>(), out.data_ptr(), x.size(0), x.size(1),
                           x.size(2), x.size(3), border ? 1 : 0, stream()),
           "warp_forward");
  return out;
}

std::vector<at::Tensor> warp_backward(const at::Tensor& x, const at::Tensor& flow, const at::Tensor& grad_out,
                                      bool border, bool need_x, bool need_flow) {
  check_cuda(x, "x", false);
  check_cuda(flow, "flow", true);
  check_cuda(grad_out, "grad_out", true);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor gx = need_x ? at::zeros(x.sizes(), f32) : at::Tensor();
  at::Tensor gf = need_flow ? at::empty(flow.sizes(), f32) : at::Tensor();
  check_rc(fc_warp_backward(dtype_code(x), x.data_ptr(), flow.data_ptr<float>(), grad_out.data_ptr<float>(),
                            need_x ? gx.data_ptr<float>() : nullptr, need_flow ? gf.data_ptr<float>() : nullptr,
                            x.size(0), x.size(1), x.size(2), x.size(3), border ? 1 : 0, stream()),
           "warp_backward");
  return {gx, gf};
}

// returns {out (x dtype), out_f32 (normalized float32; same tensor as out for float32), norm}
std::vector<at::Tensor> splat_forward(const at::Tensor& x, const at::Tensor& flow, const c10::optional<at::Tensor>& z,
                                      const c10::optional<at::Tensor>& zmax, int64_t mode, bool need_norm) {
  check_cuda(x, "x", false);
  check_cuda(flow, "flow", true);
  if (z.has_value()) check_cuda(*z, "weight", true);
  if (zmax.has_value()) check_cuda(*zmax, "zmax", true);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor num = at::zeros({N, C, H, W}, f32);
  at::Tensor norm = (need_norm || mode != FC_SPLAT_SUM) ? at::zeros({N, 1, H, W}, f32) : at::Tensor();
  float* norm_ptr = norm.defined() ? norm.data_ptr<float>() : nullptr;
  check_rc(fc_splat_forward(dtype_code(x), x.data_ptr(), flow.data_ptr<float>(), fptr(z), fptr(zmax),
                            num.data_ptr<float>(), norm_ptr, N, C, H, W, static_cast<int>(mode), stream()),
           "splat_forward");
  const bool divide = mode != FC_SPLAT_SUM;
  at::Tensor out = x.scalar_type() == at::kFloat ? num : at::empty_like(x);
  if (divide || x.scalar_type() != at::kFloat) {
    check_rc(fc_splat_finish(dtype_code(x), num.data_ptr<float>(), norm_ptr, out.data_ptr(), N, C, H * W,
                             divide ? 1 : 0, stream()),
             "splat_finish");
  }
  return {out, num, norm};
}

std::vector<at::Tensor> splat_backward(const at::Tensor& x, const at::Tensor& flow, const c10::optional<at::Tensor>& z,
                                       const c10::optional<at::Tensor>& zmax, const c10::optional<at::Tensor>& norm,
                                       const c10::optional<at::Tensor>& out_f32, const at::Tensor& grad_out,
                                       const c10::optional<at::Tensor>& grad_norm, int64_t mode, bool need_x,
                                       bool need_flow, bool need_e) {
  check_cuda(x, "x", false);
  check_cuda(flow, "flow", true);
  check_cuda(grad_out, "grad_out", true);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor gx = need_x ? at::empty({N, C, H, W}, f32) : at::Tensor();
  at::Tensor gf = need_flow ? at::empty({N, 2, H, W}, f32) : at::Tensor();
  at::Tensor ge = need_e ? at::empty({N, 1, H, W}, f32) : at::Tensor();
  check_rc(fc_splat_backward(dtype_code(x), x.data_ptr(), flow.data_ptr<float>(), fptr(z), fptr(zmax), fptr(norm),
                             fptr(out_f32), grad_out.data_ptr<float>(), fptr(grad_norm),
                             need_x ? gx.data_ptr<float>() : nullptr, need_flow ? gf.data_ptr<float>() : nullptr,
                             need_e ? ge.data_ptr<float>() : nullptr, N, C, H, W, static_cast<int>(mode), stream()),
           "splat_backward");
  return {gx, gf, ge};
}

// x (outer, T, inner, C) contiguous, M (C, T, T) float32 -> y like x
at::Tensor freq_apply(const at::Tensor& x, const at::Tensor& M) {
  check_cuda(x, "x", false);
  check_cuda(M, "matrix", true);
  TORCH_CHECK(x.dim() == 4, "flowctrl_cuda: freq_apply expects x viewed as (outer, T, inner, C)");
  const int64_t T = x.size(1), C = x.size(3);
  TORCH_CHECK(M.dim() == 3 && M.size(0) == C && M.size(1) == T && M.size(2) == T,
              "flowctrl_cuda: matrix must be (C, T, T)");
  TORCH_CHECK(T <= fc_freq_max_frames(), "flowctrl_cuda: freq_apply supports T <= ", fc_freq_max_frames());
  const c10::cuda::CUDAGuard guard(x.device());
  auto y = at::empty_like(x);
  check_rc(fc_freq_apply(dtype_code(x), x.data_ptr(), M.data_ptr<float>(), y.data_ptr(), x.size(0), T, x.size(2), C,
                         stream()),
           "freq_apply");
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "flowctrl_cuda CUDA kernels (see flowctrl_cuda/_cuda.py for the autograd wrappers)";
  m.def("warp_forward", &warp_forward, "backward_warp forward");
  m.def("warp_backward", &warp_backward, "backward_warp backward -> [grad_x f32, grad_flow f32]");
  m.def("splat_forward", &splat_forward, "splat forward -> [out, out_f32, norm]");
  m.def("splat_backward", &splat_backward, "splat backward -> [grad_x, grad_flow, grad_e] (float32)");
  m.def("freq_apply", &freq_apply, "per-channel T x T matrix along time: y = M x");
  m.def("freq_max_frames", []() { return fc_freq_max_frames(); });
}
