"""The pure-PyTorch references of flowctrl_cuda: known true answers and float64 gradchecks."""
import math

import pytest
import torch
import torch.nn.functional as F

from flowctrl.errors import InputError
from flowctrl_cuda import reference as R


def _grid_sample_warp(x, flow, padding):
    n, _, h, w = x.shape
    gy, gx = torch.meshgrid(
        torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij"
    )
    grid = torch.stack([(gx + flow[:, 0]) * 2 / (w - 1) - 1, (gy + flow[:, 1]) * 2 / (h - 1) - 1], -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=True)


# ---------------------------------------------------------------- backward_warp


@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_warp_zero_flow_is_identity(padding):
    x = torch.rand(2, 3, 7, 11)
    assert torch.equal(R.backward_warp(x, torch.zeros(2, 2, 7, 11), padding=padding), x)


@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_warp_equals_grid_sample_align_corners(padding):
    x = torch.rand(3, 4, 13, 17)
    flow = torch.randn(3, 2, 13, 17) * 6  # many positions fall outside the image
    out = R.backward_warp(x, flow, padding=padding)
    torch.testing.assert_close(out, _grid_sample_warp(x, flow, padding), atol=1e-5, rtol=0)


def test_warp_integer_shift_is_a_roll_with_zero_band():
    x = torch.rand(1, 2, 6, 8)
    flow = torch.zeros(1, 2, 6, 8)
    flow[:, 0], flow[:, 1] = 2.0, -1.0  # out(y, x) = x(y - 1, x + 2)
    out = R.backward_warp(x, flow)
    expect = torch.roll(x, shifts=(1, -2), dims=(2, 3))
    expect[:, :, 0, :] = 0  # row -1 does not exist
    expect[:, :, :, -2:] = 0  # columns W, W+1 do not exist
    assert torch.equal(out, expect)


@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_warp_nonfinite_flow_reads_zero(padding):
    x = torch.rand(1, 1, 4, 4)
    flow = torch.zeros(1, 2, 4, 4)
    flow[0, 0, 1, 2] = float("nan")
    flow[0, 1, 3, 3] = float("inf")
    out = R.backward_warp(x, flow, padding=padding)
    assert out[0, 0, 1, 2] == 0 and out[0, 0, 3, 3] == 0
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_warp_gradcheck_float64(padding):
    x = torch.rand(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    flow = (torch.rand(1, 2, 5, 6, dtype=torch.float64) * 3 - 1.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, f: R.backward_warp(a, f, padding=padding), (x, flow))


# ---------------------------------------------------------------- splat


@pytest.mark.parametrize("mode", ["sum", "avg", "softmax"])
def test_splat_zero_flow_is_identity(mode):
    x = torch.rand(2, 3, 5, 9)
    z = torch.randn(2, 1, 5, 9)
    out, norm = R.splat(x, torch.zeros(2, 2, 5, 9), weight=z if mode == "softmax" else None, mode=mode, return_norm=True)
    torch.testing.assert_close(out, x, atol=1e-6, rtol=1e-6)
    if mode != "softmax":
        assert torch.equal(norm, torch.ones_like(norm))


@pytest.mark.parametrize("mode", ["sum", "avg", "softmax"])
def test_splat_integer_shift_equals_roll_with_entering_band_empty(mode):
    h, w, dx, dy = 7, 10, 3, -2
    x = torch.rand(2, 3, h, w)
    flow = torch.zeros(2, 2, h, w)
    flow[:, 0], flow[:, 1] = float(dx), float(dy)
    weight = {"sum": None, "avg": torch.rand(2, 1, h, w) + 0.5, "softmax": torch.randn(2, 1, h, w) * 3}[mode]
    out, norm = R.splat(x, flow, weight=weight, mode=mode, return_norm=True)
    expect = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    band = torch.zeros(h, w, dtype=torch.bool)
    band[:, :dx] = True  # nobody lands left of column dx
    band[h + dy :, :] = True  # nor in the bottom |dy| rows
    expect[:, :, band] = 0
    torch.testing.assert_close(out, expect, atol=1e-6, rtol=1e-6)
    assert (norm[:, :, band] == 0).all()
    assert (norm[:, :, ~band] > 0).all()


def test_softmax_splat_large_importance_wins():
    # two sources land on the same target pixel (0, 2): source (0,1) moves +1, source (0,2) stays
    x = torch.tensor([[[[0.0, 0.25, 0.75, 0.5]]]])
    flow = torch.zeros(1, 2, 1, 4)
    flow[0, 0, 0, 1] = 1.0
    z = torch.zeros(1, 1, 1, 4)
    z[0, 0, 0, 1] = 40.0
    out = R.splat(x, flow, weight=z, mode="softmax")
    assert out[0, 0, 0, 2].item() == pytest.approx(0.25, abs=1e-6)
    z[0, 0, 0, 1], z[0, 0, 0, 2] = 0.0, 40.0
    out = R.splat(x, flow, weight=z, mode="softmax")
    assert out[0, 0, 0, 2].item() == pytest.approx(0.75, abs=1e-6)
    # equal importance = plain average; pixel 1 is a hole
    out, norm = R.splat(x, flow, weight=torch.zeros_like(z), mode="softmax", return_norm=True)
    assert out[0, 0, 0, 2].item() == pytest.approx(0.5, abs=1e-6)
    assert out[0, 0, 0, 1].item() == 0 and norm[0, 0, 0, 1].item() == 0
    # softmax is invariant to shifting Z
    out2 = R.splat(x, flow, weight=torch.zeros_like(z) + 1000.0, mode="softmax")
    torch.testing.assert_close(out, out2)


def test_splat_half_pixel_shift_spreads_bilinearly():
    x = torch.zeros(1, 1, 3, 4)
    x[0, 0, 1, 1] = 1.0
    flow = torch.zeros(1, 2, 3, 4)
    flow[0, 0, 1, 1], flow[0, 1, 1, 1] = 0.25, 0.5
    out = R.splat(x, flow, mode="sum")
    expect = torch.zeros(3, 4)
    expect[1, 1], expect[1, 2], expect[2, 1], expect[2, 2] = 0.75 * 0.5, 0.25 * 0.5, 0.75 * 0.5, 0.25 * 0.5
    torch.testing.assert_close(out[0, 0], expect)
    assert out.sum().item() == pytest.approx(1.0)


def test_splat_sum_conserves_mass_when_nothing_leaves():
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    flow = torch.rand(2, 2, 16, 16, dtype=torch.float64) * 0.9  # less than one pixel right / down
    flow[:, :, -1, :] = 0  # the last row and column stay, so every tap lands inside
    flow[:, :, :, -1] = 0
    out, norm = R.splat(x, flow, return_norm=True)
    torch.testing.assert_close(out.sum(dim=(2, 3)), x.sum(dim=(2, 3)), atol=1e-9, rtol=0)
    assert norm.sum().item() == pytest.approx(2 * 16 * 16, abs=1e-9)


@pytest.mark.parametrize("mode", ["sum", "avg", "softmax"])
def test_splat_gradcheck_float64(mode):
    torch.manual_seed(3)
    x = torch.rand(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    flow = (torch.rand(1, 2, 4, 5, dtype=torch.float64) * 2.6 - 1.3).requires_grad_()
    z = (torch.rand(1, 1, 4, 5, dtype=torch.float64) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, f, e: torch.cat(R.splat(a, f, weight=e, mode=mode, return_norm=True), 1), (x, flow, z)
    )


def test_splat_rejects_bad_shapes_with_one_line():
    x = torch.rand(1, 3, 4, 4)
    with pytest.raises(InputError) as info:
        R.splat(x, torch.zeros(1, 3, 4, 4))
    assert "flow" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(InputError):
        R.splat(x, torch.zeros(1, 2, 4, 4), mode="max")
    with pytest.raises(InputError):
        R.splat(x, torch.zeros(1, 2, 4, 4), weight=torch.zeros(1, 3, 4, 4))
    with pytest.raises(InputError):
        R.backward_warp(x, torch.zeros(1, 2, 4, 4), padding="reflect")


# ---------------------------------------------------------------- freq_adaptor


def _ones_weight(t, c):
    w = torch.zeros(t // 2 + 1, c, 2)
    w[..., 0] = 1
    return w


@pytest.mark.parametrize("t", [13, 16])
def test_freq_adaptor_all_ones_is_identity(t):
    x = torch.randn(2, t, 5, 6)
    torch.testing.assert_close(R.freq_adaptor(x, _ones_weight(t, 6)), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(R.freq_adaptor_via_matrix(x, _ones_weight(t, 6)), x, atol=1e-5, rtol=0)
    m = R.freq_adaptor_matrix(_ones_weight(t, 6), t)
    torch.testing.assert_close(m, torch.eye(t).expand(6, t, t), atol=1e-6, rtol=0)


def test_freq_adaptor_low_pass_removes_known_sinusoid():
    t, c = 16, 4
    time = torch.arange(t, dtype=torch.float32)
    base = torch.randn(2, 1, 3, c)  # constant over time
    drift = 0.5 * torch.cos(2 * math.pi * 1 * time / t).view(1, t, 1, 1)  # slow component, kept
    flicker = torch.sin(2 * math.pi * 5 * time / t).view(1, t, 1, 1)  # frequency 5, removed
    x = base + drift + flicker
    w = _ones_weight(t, c)
    w[3:, :, 0] = 0  # pass frequencies 0..2
    y = R.freq_adaptor(x, w)
    torch.testing.assert_close(y, (base + drift).expand_as(y), atol=1e-5, rtol=0)
    # a channel-specific weight: channel 0 keeps everything
    w[:, 0, 0] = 1
    y = R.freq_adaptor(x, w)
    torch.testing.assert_close(y[..., 0], x[..., 0], atol=1e-5, rtol=0)


def test_freq_adaptor_imaginary_weight_shifts_phase():
    # multiplying frequency k by -i turns cos(2πkt/T) into sin(2πkt/T)
    t, k = 12, 2
    time = torch.arange(t, dtype=torch.float64)
    x = torch.cos(2 * math.pi * k * time / t).view(1, t, 1, 1)
    w = torch.zeros(t // 2 + 1, 1, 2, dtype=torch.float64)
    w[k, 0, 1] = -1.0
    y = R.freq_adaptor(x, w)
    torch.testing.assert_close(y.view(t), torch.sin(2 * math.pi * k * time / t), atol=1e-12, rtol=0)


@pytest.mark.parametrize("dim", [1, 2])
def test_freq_adaptor_matrix_form_equals_fft(dim):
    x = torch.randn(2, 9, 7, 5)
    t = x.shape[dim]
    w = torch.randn(t // 2 + 1, 5, 2)
    torch.testing.assert_close(R.freq_adaptor_via_matrix(x, w, dim), R.freq_adaptor(x, w, dim), atol=2e-5, rtol=1e-5)


def test_freq_adaptor_keeps_dtype_and_checks_weight():
    x = torch.randn(1, 8, 3, 4, dtype=torch.bfloat16)
    y = R.freq_adaptor(x, _ones_weight(8, 4))
    assert y.dtype == torch.bfloat16 and torch.equal(y, x)
    with pytest.raises(InputError) as info:
        R.freq_adaptor(x, torch.zeros(8, 4, 2))
    assert "weight" in str(info.value)
    with pytest.raises(InputError):
        R.freq_adaptor(x, _ones_weight(8, 4), dim=-1)


def test_freq_adaptor_gradcheck_float64():
    x = torch.randn(1, 6, 2, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: R.freq_adaptor(a, b), (x, w))
    assert torch.autograd.gradcheck(lambda a, b: R.freq_adaptor_via_matrix(a, b), (x, w))
