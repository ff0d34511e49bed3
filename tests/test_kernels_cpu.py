"""The compiled CPU path equals the reference within 1e-5, and the dispatchers pick it correctly."""
import logging

import pytest
import torch

import flowctrl_cuda
from flowctrl.flow import warp as flow_warp
from flowctrl_cuda import _cpu
from flowctrl_cuda import reference as R

pytestmark = pytest.mark.skipif(not _cpu.available(), reason="no C++ compiler: the compiled CPU path is not built")

SHAPES = [(1, 3, 17, 23), (3, 1, 9, 31), (2, 5, 12, 7), (4, 3, 1, 6)]  # N=1 takes the row-split path


def _inputs(shape, seed, scale=4.0):
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = torch.rand(n, c, h, w, generator=g)
    flow = torch.randn(n, 2, h, w, generator=g) * scale
    flow[:, :, ::5, ::3] = torch.round(flow[:, :, ::5, ::3])  # integer targets hit the tap edge cases
    return x, flow, g


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", ["sum", "avg", "softmax"])
@pytest.mark.parametrize("with_weight", [False, True])
def test_cpu_splat_equals_reference(shape, mode, with_weight):
    x, flow, g = _inputs(shape, seed=sum(shape) * 10 + len(mode))
    weight = None
    if with_weight:
        n, _, h, w = shape
        # avg needs non-negative weights; softmax takes any importance (wide range stresses exp)
        weight = torch.rand(n, 1, h, w, generator=g) + 0.1 if mode != "softmax" else torch.randn(n, 1, h, w, generator=g) * 8
    out_c, norm_c = _cpu.splat(x, flow, weight, mode, True)
    out_r, norm_r = R.splat(x, flow, weight, mode, True)
    torch.testing.assert_close(out_c, out_r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(norm_c, norm_r, atol=1e-5, rtol=1e-5)
    assert torch.equal(norm_c == 0, norm_r == 0)  # the same holes
    assert torch.allclose(_cpu.splat(x, flow, weight, mode, False), out_c)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_cpu_warp_equals_reference(shape, padding):
    x, flow, _ = _inputs(shape, seed=7)
    torch.testing.assert_close(_cpu.backward_warp(x, flow, padding), R.backward_warp(x, flow, padding=padding), atol=1e-5, rtol=1e-5)


def test_cpu_path_handles_nonfinite_and_huge_flow():
    x, flow, _ = _inputs((2, 3, 8, 9), seed=11)
    flow[0, 0, 1, 1] = float("nan")
    flow[0, 1, 2, 2] = float("inf")
    flow[1, 0, 3, 3] = -1e30
    flow[1, 1, 4, 4] = 1e30
    for mode in ("sum", "softmax"):
        a = _cpu.splat(x, flow, torch.zeros(2, 1, 8, 9), mode, True)
        b = R.splat(x, flow, torch.zeros(2, 1, 8, 9), mode, True)
        for u, v in zip(a, b):
            assert torch.isfinite(u).all()
            torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-5)
    for padding in ("zeros", "border"):
        torch.testing.assert_close(_cpu.backward_warp(x, flow, padding), R.backward_warp(x, flow, padding=padding), atol=1e-5, rtol=1e-5)


def test_cpu_path_on_a_larger_image_uses_threads_and_matches():
    x, flow, g = _inputs((1, 3, 96, 128), seed=5, scale=10.0)  # above the single-thread cut-off
    z = torch.randn(1, 1, 96, 128, generator=g)
    torch.testing.assert_close(_cpu.splat(x, flow, z, "softmax", False), R.splat(x, flow, z, "softmax"), atol=1e-5, rtol=1e-5)
    x, flow, g = _inputs((3, 3, 64, 80), seed=6, scale=10.0)
    torch.testing.assert_close(_cpu.splat(x, flow, None, "avg", False), R.splat(x, flow, None, "avg"), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(_cpu.backward_warp(x, flow, "zeros"), R.backward_warp(x, flow), atol=1e-5, rtol=1e-5)


def test_cpu_path_accepts_non_contiguous_inputs():
    x, flow, _ = _inputs((2, 3, 10, 12), seed=9)
    xt = x.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    ft = flow.transpose(2, 3).contiguous().transpose(2, 3)
    assert not xt.is_contiguous()
    torch.testing.assert_close(_cpu.splat(xt, ft, None, "sum", False), R.splat(x, flow), atol=1e-5, rtol=1e-5)


def test_dispatch_uses_cpu_path_without_grad_and_reference_with_grad(caplog):
    x, flow, _ = _inputs((1, 3, 8, 8), seed=1)
    assert flowctrl_cuda.implementation("splat", x, flow) == "cpu"
    assert flowctrl_cuda.implementation("freq_adaptor", torch.zeros(1, 4, 2, 3), torch.zeros(3, 3, 2)) == "reference"
    assert flowctrl_cuda.implementation("splat", x.double(), flow.double()) == "reference"
    xg = x.clone().requires_grad_()
    assert flowctrl_cuda.implementation("splat", xg, flow) == "reference"
    with torch.no_grad():
        assert flowctrl_cuda.implementation("splat", xg, flow) == "cpu"
    # gradients flow through the public function (reference path)
    out = flow_warp.splat(xg, flow, mode="avg")
    out.sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    # one log line per (op, implementation)
    flowctrl_cuda._announced.clear()
    with caplog.at_level(logging.INFO, logger="flowctrl"):
        for _ in range(3):
            flow_warp.backward_warp(x, flow)
    lines = [r.getMessage() for r in caplog.records if "backward_warp" in r.getMessage()]
    assert lines == ["flowctrl_cuda: backward_warp runs on cpu"]


def test_forced_reference_by_environment(monkeypatch):
    x, flow, _ = _inputs((1, 3, 8, 8), seed=2)
    monkeypatch.setenv("FLOWCTRL_KERNELS", "reference")
    assert flowctrl_cuda.implementation("splat", x, flow) == "reference"


def test_build_is_cached_by_source_hash():
    first = _cpu.build()
    assert first.exists() and first.name.startswith("flowctrl_cpu_ops_")
    assert _cpu.build() == first  # no rebuild: same name, same file
    assert first.stat().st_mtime == _cpu.build().stat().st_mtime


def test_missing_compiler_falls_back_with_one_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("FLOWCTRL_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_cpu, "_compiler", lambda: None)
    monkeypatch.setattr(_cpu, "_lib", None)
    monkeypatch.setattr(_cpu, "_failed", None)
    x, flow, _ = _inputs((1, 3, 8, 8), seed=3)
    with pytest.warns(RuntimeWarning, match="compiled CPU path is unavailable"):
        out = flowctrl_cuda.splat(x, flow, mode="avg")
    torch.testing.assert_close(out, R.splat(x, flow, mode="avg"))
    assert flowctrl_cuda.implementation("splat", x, flow) == "reference"


def test_cpu_softmax_exp_matches_reference_over_the_whole_range():
    # importance far below the max (underflow to denormals and 0), the polynomial's range edges,
    # and exactly representable values: the compiled exp must agree with torch.exp's semantics
    x, flow, _ = _inputs((2, 3, 10, 12), seed=12, scale=0.3)
    z = torch.linspace(-120.0, 0.0, 2 * 10 * 12).view(2, 1, 10, 12)
    z[0, 0, 0, :4] = torch.tensor([-87.0, -86.99, -87.01, 88.0]) - 88.0
    a = _cpu.splat(x, flow, z, "softmax", True)
    b = R.splat(x, flow, z, "softmax", True)
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a[1], b[1], atol=1e-12, rtol=1e-5)
    assert torch.equal(a[1] == 0, b[1] == 0)


def test_prebuild_entry_point_reports_the_cpu_path(capsys):
    from flowctrl_cuda.__main__ import main

    assert main() == 0
    out = capsys.readouterr().out
    assert "splat -> cpu" in out and "freq_adaptor -> reference" in out
