"""A plausible scene size for camera files of unknown scale (flowctrl.depth.scale), known answers."""
import warnings

import numpy as np
import pytest
import torch

from flowctrl.controls import Controls, load_camera
from flowctrl.depth.scale import NEAR_MARGIN, PATH_RATIO, path_extent, plane_distance_for, scene_scale
from flowctrl.pipelines.stage1 import compute_unified_flow


def _dolly_re10k(path, distance, frames=5):
    """A RealEstate10K file: the camera moves ``distance`` units straight ahead."""
    lines = ["https://example.com/clip"]
    for i in range(frames):
        tz = -distance * i / (frames - 1)  # w2c translation = -R c, c = (0, 0, z)
        lines.append(f"{i * 33333} 0.9 1.6 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 {tz}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_path_extent_and_rule_for_a_dolly():
    w2c = torch.eye(4, dtype=torch.float64).repeat(3, 1, 1)
    w2c[1, 2, 3], w2c[2, 2, 3] = -1.0, -4.0  # forward 1 then 4 units
    assert path_extent(w2c) == pytest.approx((4.0, 4.0))
    assert plane_distance_for(w2c) == pytest.approx(max(PATH_RATIO, NEAR_MARGIN) * 4.0)
    assert plane_distance_for(torch.eye(4).repeat(2, 1, 1)) == 1.0  # no translation: unchanged
    # estimated depth with a near floor at 0.1 and median 1: the near margin decides
    depth = torch.ones(1, 1, 20, 20)
    depth[:, :, :4] = 0.1  # 20 % of the pixels
    s = scene_scale(depth, w2c)
    assert s == pytest.approx(max(PATH_RATIO * 4.0 / 1.0, NEAR_MARGIN * 4.0 / 0.1))
    assert 0.1 * s > 4.0  # the nearest surface stays beyond the travelled distance


def test_forward_dolly_file_never_reaches_the_scene(tmp_path):
    cam = load_camera(_dolly_re10k(tmp_path / "dolly.txt", distance=5.0))
    assert cam.scale_free and not load_camera("dolly-in").scale_free
    image = torch.rand(1, 3, 24, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        uf = compute_unified_flow(image, Controls(camera=cam, image_size=(24, 32)), 5, depth_model="none")
    assert float(uf.depth.min()) == pytest.approx(PATH_RATIO * 5.0)  # plane at 2 L = 10 > 5 travelled
    # the last frame magnifies by d / (d - 5) = 2 about the centre: the flow has that size
    x = torch.arange(32.0) - float(uf.K[0, 0, 2])
    assert torch.allclose(uf.flow[0, -1, 0, 12], x, atol=1e-3)
    assert bool(uf.valid[0, -1, 0, 8:16, 10:22].all())
    # an explicit distance still wins (the camera then does fly through the plane at 4 < 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        near = compute_unified_flow(image, Controls(camera=cam, image_size=(24, 32)), 5, depth_model="none",
                                    plane_distance=4.0)
    assert float(near.depth.max()) == pytest.approx(4.0) and not bool(near.valid[0, -1].any())


def test_estimated_depth_is_sized_by_the_rule(tmp_path):
    cam = load_camera(_dolly_re10k(tmp_path / "dolly.txt", distance=5.0))
    rel = torch.ones(1, 1, 24, 32)
    rel[..., :, :8] = 0.25  # a near object: a quarter of the median depth
    uf = compute_unified_flow(torch.rand(1, 3, 24, 32), Controls(camera=cam, image_size=(24, 32)), 5,
                              depth_model=lambda im: rel.clone())
    s = max(PATH_RATIO * 5.0 / 1.0, NEAR_MARGIN * 5.0 / 0.25)
    assert torch.allclose(uf.depth, rel * s)
    assert float(uf.depth.min()) > 5.0  # nothing is passed through
    # presets keep their units (median depth 1)
    preset = compute_unified_flow(torch.rand(1, 3, 24, 32), Controls(camera=load_camera("dolly-in"), image_size=(24, 32)),
                                  5, depth_model=lambda im: rel.clone())
    assert torch.allclose(preset.depth, rel)
    assert np.isfinite(s)
