"""The compiled push-pull fill (fc_push_pull_f32) equals the tensor implementation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import flowctrl_cuda
from flowctrl.render.fill import push_pull_fill, push_pull_fill_holes
from flowctrl_cuda.reference import push_pull_holes as push_pull_fill_holes_reference
from flowctrl_cuda import _cpu

pytestmark = pytest.mark.skipif(not _cpu.available(), reason="no C++ compiler for the compiled CPU path")


def _case(n: int, h: int, w: int, p: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    video = torch.rand(n, 3, h, w, generator=g)
    holes = torch.rand(n, 1, h, w, generator=g) < p
    return video, holes


def _check(video: torch.Tensor, holes: torch.Tensor) -> None:
    ref = push_pull_fill_holes_reference(video, holes)
    got = push_pull_fill_holes(video, holes)
    assert got.shape == ref.shape
    assert torch.isfinite(got).all()
    assert (got - ref).abs().max().item() <= 1e-6
    known = ~holes.expand_as(video)
    assert torch.equal(got[known], video[known])  # known pixels bit-exact


@pytest.mark.parametrize("n,h,w,p,seed", [
    (3, 32, 32, 0.1, 0),     # sparse holes
    (2, 33, 47, 0.6, 1),     # odd sizes, dense holes
    (4, 17, 9, 0.95, 2),     # nearly all holes
    (1, 1, 1, 0.0, 3),       # one pixel
    (2, 5, 64, 0.3, 4),      # wide and short
])
def test_compiled_equals_tensor_random_masks(n: int, h: int, w: int, p: float, seed: int) -> None:
    _check(*_case(n, h, w, p, seed))


def test_no_holes_returns_input_exactly() -> None:
    video, _ = _case(2, 31, 29, 0.0, 5)
    holes = torch.zeros(2, 1, 31, 29, dtype=torch.bool)
    assert torch.equal(push_pull_fill_holes(video, holes), video)


def test_all_holes_but_one_pixel_spreads_that_colour() -> None:
    video, _ = _case(2, 23, 19, 0.0, 6)
    holes = torch.ones(2, 1, 23, 19, dtype=torch.bool)
    holes[0, 0, 11, 7] = False
    holes[1, 0, 0, 18] = False
    _check(video, holes)
    got = push_pull_fill_holes(video, holes)
    # a single known pixel is the only colour source: every pixel takes it
    torch.testing.assert_close(got[0], video[0, :, 11, 7, None, None].expand(3, 23, 19), atol=1e-6, rtol=0)
    torch.testing.assert_close(got[1], video[1, :, 0, 18, None, None].expand(3, 23, 19), atol=1e-6, rtol=0)


def test_frames_are_filled_independently() -> None:
    # frame 0 has one tiny hole (closes after one level), frame 1 a large one (a deep pyramid): each
    # frame keeps its own depth, so the batch equals the frames filled one at a time (chunked renders
    # equal whole renders), for the compiled, tensor and dense fills alike
    video, _ = _case(2, 40, 36, 0.0, 7)
    holes = torch.zeros(2, 1, 40, 36, dtype=torch.bool)
    holes[0, 0, 3, 4] = True
    holes[1, 0, 5:35, 2:30] = True
    _check(video, holes)
    for fill in (push_pull_fill_holes, push_pull_fill_holes_reference):
        batch = fill(video, holes)
        single = torch.cat([fill(video[n:n + 1], holes[n:n + 1]) for n in range(2)])
        assert torch.equal(batch, single)
    dense = push_pull_fill(video, (~holes).float())
    assert torch.equal(dense[:1], push_pull_fill(video[:1], (~holes[:1]).float()))


def test_all_holes_frame_gives_zeros_and_matches() -> None:
    video, holes = _case(3, 16, 16, 0.3, 8)
    holes[1] = True
    _check(video, holes)
    assert push_pull_fill_holes(video, holes)[1].abs().max().item() == 0.0


def test_inplace_writes_into_video_and_agrees_with_dense_fill() -> None:
    video, holes = _case(2, 24, 40, 0.4, 9)
    expect = push_pull_fill(video, (~holes).float())
    buf = video.clone()
    out = push_pull_fill_holes(buf, holes, inplace=True)
    assert out.data_ptr() == buf.data_ptr()
    assert (out - expect).abs().max().item() <= 1e-5


def test_dispatch_only_float32_cpu_without_grad() -> None:
    video, holes = _case(2, 20, 22, 0.3, 10)
    assert flowctrl_cuda.implementation("push_pull_holes", video, holes) == "cpu"
    assert flowctrl_cuda.implementation("push_pull_holes", video.double(), holes) == "reference"
    assert flowctrl_cuda.implementation("push_pull_holes", video.clone().requires_grad_(True), holes) == "reference"
    # float64 takes the tensor code; it agrees with the compiled float32 result
    got64 = push_pull_fill_holes(video.double(), holes)
    assert (got64.float() - push_pull_fill_holes(video, holes)).abs().max().item() <= 1e-6


def test_compiled_uint8_conversion_equals_tensor_conversion() -> None:
    from flowctrl.video_io import to_uint8_frames
    from flowctrl_cuda.reference import to_uint8_hwc

    g = torch.Generator().manual_seed(11)
    video = torch.rand(3, 3, 13, 17, generator=g) * 1.4 - 0.2  # values outside [0, 1] are clamped
    video[0, 0, 0, :4] = torch.tensor([0.5 / 255, 1.5 / 255, 254.5 / 255, 1.0])  # rounding boundaries
    got = to_uint8_frames(video)
    ref = to_uint8_hwc(video).numpy()
    assert got.dtype == np.uint8 and got.shape == (3, 13, 17, 3)
    assert np.array_equal(got, ref)
    assert np.array_equal(to_uint8_frames(video[None]), ref)  # (1, T, 3, H, W) too
