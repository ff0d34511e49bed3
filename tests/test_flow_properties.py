"""Property-based checks (hypothesis) of the flow math's exact identities."""
import tempfile
from pathlib import Path

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowctrl.flow.camera import camera_flow, homography_flow
from flowctrl.flow.compose import compose_flows, to_consecutive, to_reference
from flowctrl.flow.io import load_flow, save_flow
from flowctrl.flow.sparse import sparse_flow_from_tracks

FAST = settings(max_examples=12, deadline=None)
small = st.floats(-3.0, 3.0, allow_nan=False, width=32)


@FAST
@given(st.lists(st.tuples(small, small), min_size=1, max_size=5))
def test_translation_round_trip_is_exact(steps):
    cons = torch.zeros(1, len(steps), 2, 10, 12)
    for k, (u, v) in enumerate(steps):
        cons[0, k, 0], cons[0, k, 1] = u, v
    ref = to_reference(cons)
    total = torch.tensor(steps).sum(0)
    assert torch.allclose(ref[0, -1, :, 5, 6], total, atol=1e-4)
    assert torch.allclose(to_consecutive(ref), cons, atol=1e-4)


@FAST
@given(st.integers(0, 2 ** 31 - 1))
def test_zero_camera_identity_for_any_local_flow(seed):
    g = torch.Generator().manual_seed(seed)
    local = torch.randn(1, 3, 2, 7, 9, generator=g) * 4
    assert torch.equal(compose_flows(local, torch.zeros_like(local)), local)


@FAST
@given(st.lists(st.tuples(st.floats(0, 15.4), st.floats(0, 11.4), small, small), min_size=1, max_size=6))
def test_sparse_scatter_places_averages(points):
    starts = torch.tensor([[p[0], p[1]] for p in points])[None]
    tracks = torch.tensor([[[0.0, 0.0], [p[2], p[3]]] for p in points])[None]
    sp, m = sparse_flow_from_tracks(tracks, starts, 12, 16)
    cells = {}
    for x, y, u, v in points:
        cells.setdefault((round(x), round(y)), []).append((u, v))
    assert int(m[0, 1].sum()) == len(cells)
    for (x, y), vals in cells.items():
        assert torch.allclose(sp[0, 1, :, y, x], torch.tensor(vals).mean(0), atol=1e-5)


@FAST
@given(st.floats(-0.3, 0.3), st.floats(-0.3, 0.3), st.floats(-0.3, 0.3), st.floats(10, 60), st.integers(0, 1000))
def test_rotation_flow_is_homography(rx, ry, rz, f, seed):
    from scipy.spatial.transform import Rotation

    H, W = 9, 13
    K = torch.tensor([[[f, 0.0, 6.0], [0.0, f, 4.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    R = torch.from_numpy(Rotation.from_rotvec([rx, ry, rz]).as_matrix())
    w2c = torch.eye(4, dtype=torch.float64).repeat(1, 2, 1, 1)
    w2c[0, 1, :3, :3] = R
    depth = torch.rand(1, 1, H, W, generator=torch.Generator().manual_seed(seed)) * 10 + 0.2
    flow, valid = camera_flow(depth, K, w2c, occlusion=False)
    hom = homography_flow(K, R[None], H, W)
    ok = valid[0, 1, 0]
    err = (flow[0, 1].double() - hom[0]).abs()[:, ok]
    assert err.numel() == 0 or float(err.max()) < 1e-3 * max(1.0, float(hom.abs().max()))


@FAST
@given(st.sampled_from([".flo", ".npy", ".safetensors"]), st.integers(1, 4), st.integers(1, 6), st.integers(1, 6))
def test_flow_files_round_trip_any_shape(suffix, t, h, w):
    flow = torch.randn(1, t, 2, h, w) * 10
    with tempfile.TemporaryDirectory() as d:
        back = load_flow(save_flow(Path(d) / f"f{suffix}", flow))
    assert torch.equal(back, flow)
