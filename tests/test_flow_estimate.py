"""Reference-video flow: DIS sub-pixel accuracy and chaining into reference form."""
import numpy as np
import pytest
import torch

from flowctrl.errors import FlowCtrlError
from flowctrl.flow.estimate import estimate_flow


def _texture(h=96, w=96, seed=0):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    img = gaussian_filter(rng.random((h + 64, w + 64)), 2.0)
    img = (img - img.min()) / (img.max() - img.min())
    return img


def _shifted(img, dx, dy, h=96, w=96):
    """The texture translated by (dx, dy): new(p) = old(p - d), sub-pixel by spline interpolation."""
    from scipy.ndimage import shift

    out = shift(img, (dy, dx), order=3, mode="reflect")[32:32 + h, 32:32 + w]
    return torch.from_numpy(np.repeat(out[None], 3, 0)).float()


def test_dis_recovers_subpixel_translation():
    img = _texture()
    video = torch.stack([_shifted(img, 0, 0), _shifted(img, 1.3, -0.6)])
    flow = estimate_flow(video)
    assert flow.shape == (1, 2, 2, 96, 96) and flow[0, 0].abs().max() == 0
    inner = flow[0, 1, :, 16:-16, 16:-16]
    assert abs(float(inner[0].median()) - 1.3) < 0.1
    assert abs(float(inner[1].median()) + 0.6) < 0.1


def test_chained_reference_flow_equals_sum_of_motions():
    img = _texture(seed=1)
    steps = [(0.0, 0.0), (0.8, 0.3), (1.1, -0.5), (0.6, 0.4), (1.4, 0.2), (0.7, -0.6), (1.0, 0.5), (0.9, -0.3)]
    pos = np.cumsum(np.array(steps), axis=0)
    video = torch.stack([_shifted(img, x, y) for x, y in pos])
    flow = estimate_flow(video)
    assert flow.shape == (1, 8, 2, 96, 96)
    for t in (3, 7):
        inner = flow[0, t, :, 24:-24, 24:-24]
        assert abs(float(inner[0].median()) - pos[t, 0]) < 0.2
        assert abs(float(inner[1].median()) - pos[t, 1]) < 0.2


def test_bad_method_and_shape_are_user_errors():
    with pytest.raises(FlowCtrlError, match="flow method"):
        estimate_flow(torch.rand(2, 3, 8, 8), method="farneback")
    with pytest.raises(FlowCtrlError, match="reference video"):
        estimate_flow(torch.rand(1, 3, 8, 8))


def test_raft_path_when_torchvision_present(tmp_path):
    pytest.importorskip("torchvision")
    from flowctrl.errors import MissingWeightsError

    with pytest.raises(MissingWeightsError):
        estimate_flow(torch.rand(2, 3, 64, 64), method="raft", weights=str(tmp_path / "none.pth"))


def test_chaining_beats_adding_on_real_realestate10k_clips(shared_dir):
    """Real camera motion (parallax, rotation): warping frame 7 back with the chained reference-form
    flow reproduces frame 0 better than with summed consecutive flows, on every shipped clip."""
    from flowctrl.controls import load_reference_video
    from flowctrl.flow._sampling import backward_warp
    from flowctrl.flow.compose import to_reference
    from flowctrl.flow.estimate import dis_consecutive

    clips = sorted((shared_dir / "data" / "re10k").glob("*.mp4"))
    if not clips:
        pytest.skip("no RealEstate10K clips")
    chained_err, added_err = [], []
    for path in clips:
        video = load_reference_video(path, num_frames=48, size=(144, 256))[:8]
        cons = dis_consecutive(video)[None]
        chained = to_reference(cons)
        added = torch.cat([torch.zeros_like(cons[:, :1]), cons.cumsum(1)], 1)

        def photometric(flow):
            rec = backward_warp(video[-1:], flow[0, -1:], padding="zeros")
            seen = backward_warp(torch.ones_like(video[-1:, :1]), flow[0, -1:], padding="zeros") > 0.999
            return float((rec - video[:1]).abs().mean(1, keepdim=True)[seen].mean())

        still = float((video[-1] - video[0]).abs().mean())
        chained_err.append(photometric(chained))
        added_err.append(photometric(added))
        assert chained_err[-1] < 0.35 * still
        assert chained_err[-1] <= added_err[-1] + 1e-3
    assert np.mean(chained_err) < 0.9 * np.mean(added_err)
