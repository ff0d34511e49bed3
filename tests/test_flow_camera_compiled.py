"""camera_flow's compiled float32 path (inference) equals its tensor path (used under autograd)."""
import math

import pytest
import torch

from flowctrl.flow.camera import camera_flow
from flowctrl_cuda import _cpu

pytestmark = pytest.mark.skipif(not _cpu.available(), reason="no C++ compiler: the compiled CPU path is not built")


def _orbit(t: int, radius: float = 0.4) -> torch.Tensor:
    w2c = torch.eye(4).repeat(1, t, 1, 1)
    for i in range(t):
        a = 0.15 * i / max(t - 1, 1)
        c, s = math.cos(a), math.sin(a)
        w2c[0, i, :3, :3] = torch.tensor([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])
        w2c[0, i, :3, 3] = torch.tensor([radius * s, 0.05 * i, radius * (1 - c) - 0.3 * i / t])
    return w2c


@pytest.mark.parametrize("occlusion", [True, False])
def test_compiled_camera_flow_matches_tensor_path(occlusion):
    g = torch.Generator().manual_seed(3)
    h, w, t = 23, 31, 5
    depth = 1.0 + torch.rand(1, 1, h, w, generator=g)
    depth[..., 8:14, 10:20] = 0.4  # a near block: its edges occlude the far points behind
    K = torch.tensor([[[30.0, 0.0, 15.0], [0.0, 30.0, 11.0], [0.0, 0.0, 1.0]]])
    w2c = _orbit(t)
    fast_flow, fast_valid = camera_flow(depth, K, w2c, occlusion=occlusion)
    slow_flow, slow_valid = camera_flow(depth.clone().requires_grad_(), K, w2c, occlusion=occlusion)
    assert fast_flow.shape == (1, t, 2, h, w) and fast_valid.dtype == torch.bool
    assert torch.allclose(fast_flow, slow_flow.detach(), atol=1e-4, rtol=1e-5)
    assert torch.equal(fast_valid, slow_valid)
    assert (~fast_valid[:, 1:]).any()  # the test scene does hide / lose some points


def test_compiled_composition_matches_tensor_path():
    from flowctrl.flow.compose import compose_flows, compose_with_visibility

    g = torch.Generator().manual_seed(5)
    h, w, t = 19, 27, 4
    local = torch.randn(1, t, 2, h, w, generator=g) * 3
    local[:, :, :, ::4, ::3] = torch.round(local[:, :, :, ::4, ::3])  # integer targets: tap edge cases
    cam = torch.randn(1, t, 2, h, w, generator=g) * 4
    valid = torch.rand(1, t, 1, h, w, generator=g) > 0.3
    static = torch.zeros(1, 1, h, w, dtype=torch.bool)
    static[..., :5, :5] = True
    fast_flow, fast_valid = compose_with_visibility(local, cam, valid, static)
    slow_flow, slow_valid = compose_with_visibility(local.clone().requires_grad_(), cam, valid, static)
    assert torch.equal(fast_flow, slow_flow.detach()) and torch.equal(fast_valid, slow_valid)
    assert torch.equal(fast_flow, compose_flows(local, cam, static))
    assert fast_valid.any() and (~fast_valid).any()
