"""The real CUDA kernels against the reference (runs only where a CUDA device is present).

Forward within tolerance (float32 ~1e-5, bfloat16 / float16 within their rounding), gradients of the
kernels' backward passes equal the reference's float64 autograd gradients at small sizes, and the
dispatchers route CUDA tensors to the kernels.
"""
import pytest
import torch

import flowctrl_cuda
from flowctrl_cuda import reference as R

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@pytest.fixture(scope="module")
def cuda_ops():
    from flowctrl_cuda import _cuda

    if not _cuda.available():
        pytest.fail("CUDA is present but the flowctrl_cuda extension failed to build (see the warning)")
    return _cuda


def _inputs(n=2, c=3, h=19, w=23, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, h, w, generator=g)
    flow = torch.randn(n, 2, h, w, generator=g) * 4
    z = torch.randn(n, 1, h, w, generator=g) * 3
    return x.cuda(), flow.cuda(), z.cuda()


def _tol(dtype):
    return {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_cuda_warp_forward_matches_reference(cuda_ops, dtype, padding):
    x, flow, _ = _inputs()
    out = cuda_ops.backward_warp(x.to(dtype), flow, padding)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), R.backward_warp(x, flow, padding=padding), atol=_tol(dtype), rtol=_tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["sum", "avg", "softmax"])
def test_cuda_splat_forward_matches_reference(cuda_ops, dtype, mode):
    x, flow, z = _inputs(seed=1)
    weight = z if mode == "softmax" else (z.abs() + 0.1)
    out, norm = cuda_ops.splat(x.to(dtype), flow, weight, mode, True)
    ref_out, ref_norm = R.splat(x, flow, weight, mode, True)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref_out, atol=_tol(dtype) * 4, rtol=_tol(dtype))
    torch.testing.assert_close(norm.float(), ref_norm, atol=_tol(dtype) * 4, rtol=_tol(dtype))


def _grads(fn, inputs, dtype):
    leaves = [t.detach().to(dtype).requires_grad_() for t in inputs]
    out = fn(*leaves)
    outs = out if isinstance(out, tuple) else (out,)
    loss = sum((o.double() * torch.linspace(-1, 2, o.numel(), device=o.device, dtype=torch.float64).view(o.shape)).sum() for o in outs)
    loss.backward()
    return [t.grad.double() for t in leaves]


@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_cuda_warp_gradients_match_float64_reference(cuda_ops, padding):
    x, flow, _ = _inputs(1, 2, 7, 9, seed=2)
    ref = _grads(lambda a, f: R.backward_warp(a, f, padding=padding), [x, flow], torch.float64)
    got = _grads(lambda a, f: cuda_ops.backward_warp(a, f, padding), [x, flow], torch.float32)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", ["sum", "avg", "softmax"])
def test_cuda_splat_gradients_match_float64_reference(cuda_ops, mode):
    x, flow, z = _inputs(1, 2, 7, 9, seed=3)
    flow = flow * 0.4
    z = z if mode == "softmax" else z.abs() + 0.5
    ref = _grads(lambda a, f, e: R.splat(a, f, e, mode, True), [x, flow, z], torch.float64)
    got = _grads(lambda a, f, e: cuda_ops.splat(a, f, e, mode, True), [x, flow, z], torch.float32)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("t", [13, 24])
def test_cuda_freq_adaptor_matches_fft_reference(cuda_ops, dtype, t):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, t, 37, 70, generator=g).cuda()
    w = torch.randn(t // 2 + 1, 70, 2, generator=g).cuda()
    y = cuda_ops.freq_adaptor(x.to(dtype), w, 1)
    assert y.dtype == dtype
    ref = R.freq_adaptor(x.to(dtype).float(), w, 1)
    torch.testing.assert_close(y.float(), ref, atol=1e-4 if dtype == torch.float32 else 0.1, rtol=1e-4 if dtype == torch.float32 else 2e-2)
    ones = torch.zeros_like(w)
    ones[..., 0] = 1
    torch.testing.assert_close(cuda_ops.freq_adaptor(x, ones, 1), x, atol=1e-5, rtol=0)


def test_cuda_freq_adaptor_gradients_match_float64_reference(cuda_ops):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 9, 5, 33, generator=g).cuda()
    w = torch.randn(5, 33, 2, generator=g).cuda()
    ref = _grads(lambda a, b: R.freq_adaptor(a, b, 1), [x, w], torch.float64)
    got = _grads(lambda a, b: cuda_ops.freq_adaptor(a, b, 1), [x, w], torch.float32)
    for r, gg in zip(ref, got):
        torch.testing.assert_close(gg, r, atol=1e-4, rtol=1e-4)


def test_dispatch_routes_cuda_tensors_to_kernels(cuda_ops):
    x, flow, z = _inputs()
    assert flowctrl_cuda.implementation("splat", x, flow, z) == "cuda"
    assert flowctrl_cuda.implementation("backward_warp", x, flow) == "cuda"
    assert flowctrl_cuda.implementation("splat", x.double(), flow.double()) == "reference"
    torch.testing.assert_close(flowctrl_cuda.splat(x, flow, z, "softmax"), R.splat(x, flow, z, "softmax"), atol=2e-5, rtol=1e-4)
