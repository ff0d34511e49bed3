"""The fused CPU passes behind flowctrl_cuda's dispatcher equal their references in flowctrl_cuda.reference."""
import pytest
import torch

import flowctrl_cuda
from flowctrl_cuda import _cpu, reference

pytestmark = pytest.mark.skipif(not _cpu.available(), reason="no C++ compiler: the compiled CPU path is not built")


def _camera_inputs(b: int = 2, t: int = 3, h: int = 11, w: int = 14):
    g = torch.Generator().manual_seed(7)
    z0 = 1.0 + torch.rand(b, h * w, generator=g)
    E = torch.randn(b, t, 3, 3, generator=g) * 0.02
    E[..., 2, :2] *= 0.01  # a mild perspective change: most points stay in front of the camera
    q = torch.randn(b, t, 3, generator=g) * torch.tensor([2.0, 2.0, 0.05])
    return z0, E, q, h, w


@pytest.mark.parametrize("occlusion", [True, False])
def test_camera_reprojection_dispatches_to_the_compiled_pass_and_equals_the_reference(occlusion):
    z0, E, q, h, w = _camera_inputs()
    assert flowctrl_cuda.implementation("camera_reprojection", z0, E, q) == "cpu"
    flow, valid = flowctrl_cuda.camera_reprojection(z0, E, q, h, w, 1e-6, 0.02, occlusion)
    ref_flow, ref_valid = reference.camera_reprojection(z0, E, q, h, w, 1e-6, 0.02, occlusion)
    assert flow.shape == (2, 3, 2, h, w) and valid.shape == (2, 3, 1, h, w) and valid.dtype == torch.bool
    assert torch.allclose(flow, ref_flow, atol=1e-4, rtol=1e-5) and torch.equal(valid, ref_valid)


def test_camera_reprojection_of_the_identity_is_zero_flow_and_all_visible():
    z0, E, q, h, w = _camera_inputs(b=1, t=2)
    flow, valid = flowctrl_cuda.camera_reprojection(z0, torch.zeros_like(E), torch.zeros_like(q), h, w, 1e-6, 0.02)
    assert flow.abs().max() == 0 and valid.all()


def test_camera_reprojection_under_autograd_runs_the_reference():
    z0, E, q, h, w = _camera_inputs(b=1, t=2)
    z0.requires_grad_()
    assert flowctrl_cuda.implementation("camera_reprojection", z0, E, q) == "reference"
    flow, _ = flowctrl_cuda.camera_reprojection(z0, E, q, h, w, 1e-6, 0.02)
    flow.sum().backward()
    assert z0.grad is not None and torch.isfinite(z0.grad).all()


def test_compose_visibility_compiled_equals_reference():
    g = torch.Generator().manual_seed(3)
    local = torch.randn(4, 2, 9, 13, generator=g) * 2
    camera = torch.randn(4, 2, 9, 13, generator=g) * 3
    cam_valid = torch.rand(4, 1, 9, 13, generator=g) > 0.3
    assert flowctrl_cuda.implementation("compose_visibility", local, camera) == "cpu"
    flow, valid = flowctrl_cuda.compose_visibility(local, camera, cam_valid)
    ref_flow, ref_valid = reference.compose_visibility(local, camera, cam_valid)
    assert torch.allclose(flow, ref_flow, atol=1e-5) and torch.equal(valid, ref_valid)
    still = flowctrl_cuda.compose_visibility(torch.zeros_like(local), camera, cam_valid)  # no local motion:
    assert torch.allclose(still[0], camera) and torch.equal(still[1][:, :, 1:-1, 1:-1],  # the camera's own
                                                              cam_valid[:, :, 1:-1, 1:-1] & still[1][:, :, 1:-1, 1:-1])


def test_to_uint8_hwc_rounds_half_up_and_clamps_like_the_reference():
    video = torch.tensor([[[[-0.1, 0.5 / 255, 1.5 / 255, 254.5 / 255, 1.2]]]]).repeat(2, 3, 1, 1)
    got = flowctrl_cuda.to_uint8_hwc(video)
    assert got.dtype == torch.uint8 and got.shape == (2, 1, 5, 3)
    assert torch.equal(got, reference.to_uint8_hwc(video))
    assert got[0, 0, :, 0].tolist() == [0, 1, 2, 255, 255]
