"""The CUDA path's math and autograd glue, checked on CPU.

No GPU here, so the kernels themselves cannot run. These tests replace the compiled extension with
a vectorized PyTorch transcription of exactly what each kernel computes per pixel (csrc/warp.cu,
csrc/splat.cu backward formulas, csrc/freq_adaptor.cu's matrix apply) and drive the real autograd
Functions of flowctrl_cuda/_cuda.py with it. The gradients must equal the reference's autograd
gradients: this proves the hand-derived backward formulas the kernels implement and the Python
glue around them (float32 staging, the softmax max-shift term, the freq adaptor's bmm gradient).
On a CUDA machine tests/test_kernels_cuda.py runs the real kernels against the reference.
"""
import pytest
import torch

from flowctrl_cuda import _cuda
from flowctrl_cuda import reference as R


def _taps(qx, qy, h, w):
    """Kernel footprint (common.cuh): floor, weights, d/dqx, d/dqy, validity, flat index; (N,4,H,W)."""
    x0, y0 = torch.floor(qx), torch.floor(qy)
    ax, ay = qx - x0, qy - y0
    wts = torch.stack([(1 - ax) * (1 - ay), ax * (1 - ay), (1 - ax) * ay, ax * ay], 1)
    dwdx = torch.stack([-(1 - ay), 1 - ay, -ay, ay], 1)
    dwdy = torch.stack([-(1 - ax), -ax, 1 - ax, ax], 1)
    cx = torch.stack([x0, x0 + 1, x0, x0 + 1], 1).long()
    cy = torch.stack([y0, y0, y0 + 1, y0 + 1], 1).long()
    valid = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
    idx = torch.where(valid, cy * w + cx, torch.zeros_like(cx))
    return wts, dwdx, dwdy, valid, idx


def _positions(flow):
    n, _, h, w = flow.shape
    gy = torch.arange(h, dtype=flow.dtype).view(1, h, 1)
    gx = torch.arange(w, dtype=flow.dtype).view(1, 1, w)
    rx, ry = gx + flow[:, 0], gy + flow[:, 1]
    finite = torch.isfinite(rx) & torch.isfinite(ry)
    return torch.where(finite, rx, torch.zeros_like(rx)), torch.where(finite, ry, torch.zeros_like(ry)), finite


def _gather(t, idx):
    """t (N,C,HW), idx (N,4,H,W) -> (N,C,4,H,W)"""
    n, c, _ = t.shape
    flat = idx.reshape(n, 1, -1).expand(n, c, -1)
    return torch.gather(t, 2, flat).view(n, c, *idx.shape[1:])


class FakeExt:
    """Per-pixel kernel formulas, vectorized. Signatures and outputs match csrc/bindings.cpp."""

    @staticmethod
    def warp_forward(x, flow, border):
        return R.backward_warp(x.float(), flow, padding="border" if border else "zeros").to(x.dtype)

    @staticmethod
    def warp_backward(x, flow, grad_out, border, need_x, need_flow):
        n, c, h, w = x.shape
        rx, ry, finite = _positions(flow)
        lox, hix = (0.0, w - 1.0) if border else (-2.0, w + 1.0)
        loy, hiy = (0.0, h - 1.0) if border else (-2.0, h + 1.0)
        passx = ((rx >= lox) & (rx <= hix) & finite).float()
        passy = ((ry >= loy) & (ry <= hiy) & finite).float()
        wts, dwdx, dwdy, valid, idx = _taps(rx.clamp(lox, hix), ry.clamp(loy, hiy), h, w)
        valid = valid & finite.unsqueeze(1)
        wts = wts * valid
        g = grad_out.view(n, c, 1, h, w)
        xq = _gather(x.float().view(n, c, h * w), idx) * valid.unsqueeze(1)  # x at each tap
        gx = torch.zeros(n, c, h * w).scatter_add_(
            2, idx.reshape(n, 1, -1).expand(n, c, -1), (wts.unsqueeze(1) * g).reshape(n, c, -1)
        ).view(n, c, h, w)
        v = (xq * g).sum(1)  # (N,4,H,W)
        gf = torch.stack([(v * dwdx).sum(1) * passx, (v * dwdy).sum(1) * passy], 1)
        return [gx if need_x else None, gf if need_flow else None]

    @staticmethod
    def splat_forward(x, flow, z, zmax, mode, need_norm):
        name = ["sum", "avg", "softmax"][mode]
        out, norm = R.splat(x.float(), flow, z, name, True)
        return [out.to(x.dtype), out, norm]

    @staticmethod
    def splat_backward(x, flow, z, zmax, norm, out_f32, grad_out, grad_norm, mode, need_x, need_flow, need_e):
        n, c, h, w = x.shape
        rx, ry, finite = _positions(flow)
        wts, dwdx, dwdy, valid, idx = _taps(rx.clamp(-2, w + 1), ry.clamp(-2, h + 1), h, w)
        valid = (valid & finite.unsqueeze(1)).float()
        if z is None:
            e = torch.ones(n, 1, h, w)
        else:
            e = torch.exp(z - zmax.view(-1, 1, 1, 1)) if mode == 2 else z
        divide = mode != 0
        if divide:
            nq = _gather(norm.view(n, 1, h * w), idx)[:, 0]
            inv = torch.where(nq > 0, 1 / nq.clamp_min(1e-38), torch.zeros_like(nq)) * valid
        else:
            inv = valid
        a = _gather(grad_out.view(n, c, h * w), idx) * inv.unsqueeze(1)  # A_c(q_k), (N,C,4,H,W)
        xs = x.float().unsqueeze(2)
        if divide:
            s = ((xs - _gather(out_f32.view(n, c, h * w), idx)) * a).sum(1)
        else:
            s = (xs * a).sum(1)
        if grad_norm is not None:
            s = s + _gather(grad_norm.view(n, 1, h * w), idx)[:, 0] * valid
        s = s * valid
        gx = (wts.unsqueeze(1) * a).sum(2) * e
        gf = torch.stack([(s * dwdx).sum(1), (s * dwdy).sum(1)], 1) * e
        ge = (s * wts).sum(1, keepdim=True)
        return [gx if need_x else None, gf if need_flow else None, ge if need_e else None]

    @staticmethod
    def freq_apply(x4, m):
        return torch.einsum("cts,osic->otic", m, x4.float()).to(x4.dtype)


@pytest.fixture
def fake_ext(monkeypatch):
    monkeypatch.setattr(_cuda, "_ext", FakeExt())


def _reference_grads(fn, *inputs):
    leaves = [t.detach().double().requires_grad_() if t is not None else None for t in inputs]
    out = fn(*leaves)
    loss = sum(((o * torch.linspace(-1, 2, o.numel(), dtype=o.dtype).view(o.shape)).sum() for o in out))
    loss.backward()
    return [None if t is None else t.grad.float() for t in leaves]


def _glue_grads(fn, *inputs):
    leaves = [t.detach().float().requires_grad_() if t is not None else None for t in inputs]
    out = fn(*leaves)
    loss = sum(((o * torch.linspace(-1, 2, o.numel()).view(o.shape)).sum() for o in out))
    loss.backward()
    return [None if t is None else t.grad for t in leaves]


@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_warp_backward_formula_matches_reference_autograd(fake_ext, padding):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 6, 7)
    flow = torch.rand(2, 2, 6, 7) * 8 - 4  # many taps outside, some positions clamped
    ref = _reference_grads(lambda a, f: [R.backward_warp(a, f, padding=padding)], x, flow)
    got = _glue_grads(lambda a, f: [_cuda.backward_warp(a, f, padding)], x, flow)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["sum", "avg", "softmax"])
@pytest.mark.parametrize("with_weight", [False, True])
@pytest.mark.parametrize("use_norm", [False, True])
def test_splat_backward_formula_matches_reference_autograd(fake_ext, mode, with_weight, use_norm):
    torch.manual_seed(1)
    n, c, h, w = 2, 3, 5, 6
    x = torch.rand(n, c, h, w)
    flow = torch.rand(n, 2, h, w) * 3 - 1.5
    z = (torch.rand(n, 1, h, w) + 0.5) if mode != "softmax" else torch.randn(n, 1, h, w) * 2
    weight = z if with_weight else None

    def pick(out):
        return list(out) if use_norm else [out[0]]

    ref = _reference_grads(lambda a, f, e: pick(R.splat(a, f, e, mode, True)), x, flow, weight)
    got = _glue_grads(lambda a, f, e: pick(_cuda.splat(a, f, e, mode, True)), x, flow, weight)
    for r, g in zip(ref, got):
        if r is None:
            assert g is None
            continue
        torch.testing.assert_close(g, r, atol=5e-5, rtol=1e-4)


def test_splat_backward_handles_nonfinite_flow_and_holes(fake_ext):
    x = torch.rand(1, 2, 4, 5)
    flow = torch.zeros(1, 2, 4, 5)
    flow[0, 0, :, 0] = 1.0  # column 0 moves onto column 1: column 0 becomes a hole
    flow[0, 1, 2, 3] = float("nan")
    xg, fg = x.clone().requires_grad_(), flow.clone().requires_grad_()
    out, norm = _cuda.splat(xg, fg, None, "avg", True)
    (out.sum() + norm.sum()).backward()
    assert torch.isfinite(xg.grad).all() and torch.isfinite(fg.grad).all()
    assert xg.grad[0, :, 2, 3].abs().sum() == 0 and fg.grad[0, :, 2, 3].abs().sum() == 0
    ref_out, ref_norm = R.splat(x, torch.nan_to_num(flow, nan=1e9), None, "avg", True)
    torch.testing.assert_close(out.detach(), ref_out)


@pytest.mark.parametrize("dim", [1, 2])
def test_freq_adaptor_glue_matches_reference_values_and_grads(fake_ext, dim):
    torch.manual_seed(2)
    x = torch.randn(2, 7, 5, 4) if dim == 1 else torch.randn(2, 3, 9, 4)
    t = x.shape[dim]
    weight = torch.randn(t // 2 + 1, 4, 2)
    ref = _reference_grads(lambda a, wt: [R.freq_adaptor(a, wt, dim)], x, weight)
    got = _glue_grads(lambda a, wt: [_cuda.freq_adaptor(a, wt, dim)], x, weight)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, atol=5e-5, rtol=1e-4)
    torch.testing.assert_close(_cuda.freq_adaptor(x, weight, dim), R.freq_adaptor(x, weight, dim), atol=2e-5, rtol=1e-5)


def test_freq_adaptor_beyond_kernel_frame_limit_uses_reference(fake_ext, monkeypatch):
    x = torch.randn(1, _cuda.MAX_FRAMES + 3, 2, 3)
    w = torch.randn((x.shape[1]) // 2 + 1, 3, 2)

    def boom(*args):
        raise AssertionError("the kernel must not be called beyond its frame limit")

    monkeypatch.setattr(FakeExt, "freq_apply", staticmethod(boom))
    torch.testing.assert_close(_cuda.freq_adaptor(x, w, 1), R.freq_adaptor(x, w, 1))


def test_cuda_dispatch_refuses_cpu_and_float64_inputs():
    cpu = torch.zeros(1, 3, 4, 4)
    assert not _cuda.supports("splat", cpu)
    if not torch.cuda.is_available():
        assert not _cuda.available()
