"""Depth backends: plane fallback, depth / disparity files, Depth-Anything through transformers."""
import time

import numpy as np
import pytest
import torch

from flowctrl.depth import FlatDepthWarning, load_depth_file, plane_depth, resolve_depth, save_depth_png16
from flowctrl.errors import FlowCtrlError, MissingWeightsError


def test_plane_fallback_is_constant_and_warns():
    with pytest.warns(FlatDepthWarning, match="translation parallax is flat"):
        d = resolve_depth(torch.rand(1, 3, 10, 14))
    assert d.shape == (1, 1, 10, 14) and torch.equal(d, torch.ones(1, 1, 10, 14))
    with pytest.warns(FlatDepthWarning):
        assert torch.equal(plane_depth(3, 4, distance=2.5), torch.full((1, 1, 3, 4), 2.5))


def test_png16_round_trip(tmp_path):
    depth = torch.rand(1, 1, 20, 30) * 8 + 0.5  # metres
    path = save_depth_png16(tmp_path / "d.png", depth)  # millimetres in uint16
    back = resolve_depth(torch.rand(1, 3, 20, 30), path)
    assert back.shape == (1, 1, 20, 30) and (back - depth).abs().max() <= 0.5e-3 + 1e-6


def test_npy_and_disparity_files(tmp_path):
    depth = np.random.default_rng(0).random((12, 16)) * 3 + 1
    np.save(tmp_path / "d.npy", depth.astype(np.float32))
    assert torch.allclose(load_depth_file(tmp_path / "d.npy")[0, 0], torch.from_numpy(depth).float(), rtol=1e-6)
    fB = 120.0  # focal (px) x baseline
    disp = fB / depth
    disp[0, 0] = 0.0  # invalid pixel: filled from its nearest valid neighbour
    np.save(tmp_path / "disp.npy", disp)
    d = load_depth_file(tmp_path / "disp.npy", kind="disparity", scale=fB)
    assert torch.allclose(d[0, 0, 1:, 1:], torch.from_numpy(depth[1:, 1:]).float(), rtol=1e-5)
    assert torch.isfinite(d).all() and d[0, 0, 0, 0] > 0


def test_resize_to_working_size_and_tensor_depth():
    d = resolve_depth(torch.rand(1, 3, 8, 8), torch.full((16, 16), 3.0))
    assert torch.allclose(d, torch.full((1, 1, 8, 8), 3.0))
    with pytest.raises(FlowCtrlError, match="non-positive"):
        resolve_depth(torch.rand(1, 3, 4, 4), torch.zeros(4, 4))


def test_bad_depth_files_are_user_errors(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not a png")
    np.save(tmp_path / "zero.npy", np.zeros((5, 5)))
    cases = [(tmp_path / "missing.png", "not found"), (tmp_path / "x.png", "unreadable"),
             (tmp_path / "zero.npy", "fewer than 1%"), (tmp_path / "d.txt", "not found")]
    for path, match in cases:
        with pytest.raises(FlowCtrlError, match=match):
            load_depth_file(path)
    (tmp_path / "d.txt").write_text("1 2 3")
    with pytest.raises(FlowCtrlError, match="unsupported"):
        load_depth_file(tmp_path / "d.txt")


def test_missing_depth_model_fails_fast_without_network(tmp_path):
    start = time.time()
    with pytest.raises(MissingWeightsError, match="depth_model"):
        resolve_depth(torch.rand(1, 3, 8, 8), depth_model=str(tmp_path / "no-such-model"))
    with pytest.raises(MissingWeightsError, match="not available locally"):
        resolve_depth(torch.rand(1, 3, 8, 8), depth_model="depth-anything/not-a-real-model-xyz")
    assert time.time() - start < 5


def test_tiny_depth_anything_from_a_local_folder(tmp_path):
    from test_depth_auto import _tiny_depth_anything  # the tiny random model, saved with save_pretrained

    _tiny_depth_anything(tmp_path / "tiny-da")
    from flowctrl.depth.anything import DepthAnythingEstimator

    est = DepthAnythingEstimator.from_pretrained(tmp_path / "tiny-da", input_size=28)
    image = torch.rand(1, 3, 20, 30)
    d = resolve_depth(image, depth_model=est)
    assert d.shape == (1, 1, 20, 30) and torch.isfinite(d).all() and (d > 0).all()
    assert abs(float(d.median()) - 1.0) < 0.05  # relative disparity → depth with median ~1
    direct = resolve_depth(image, depth_model=str(tmp_path / "tiny-da"))  # by folder path
    assert direct.shape == (1, 1, 20, 30)
