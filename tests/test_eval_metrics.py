"""Flow / quality / Fréchet / Tem-Cons metrics against closed-form answers."""
import logging
import math

import numpy as np
import pytest
import torch

from flowctrl.errors import MissingWeightsError
from flowctrl.eval.flow_metrics import epe, flow_fidelity, objmc, track_points
from flowctrl.eval.frechet import feature_statistics, fid, frechet_distance, fvd
from flowctrl.eval.quality import load_lpips, psnr, ssim


def test_epe_of_identical_flows_is_zero_and_known_offset():
    g = torch.Generator().manual_seed(0)
    flow = torch.randn(2, 4, 2, 8, 9, generator=g)
    assert epe(flow, flow.clone()) == 0.0
    shifted = flow.clone()
    shifted[:, :, 0] += 3.0
    shifted[:, :, 1] -= 4.0
    assert epe(flow, shifted) == pytest.approx(5.0)
    mask = torch.zeros(1, 1, 1, 8, 9, dtype=torch.bool)
    mask[..., :4, :] = True
    other = flow.clone()
    other[..., 4:, :] += 10.0  # only outside the mask
    assert epe(flow, other, mask) == 0.0 and epe(flow, other, ~mask) == pytest.approx(math.sqrt(200))
    assert math.isnan(epe(flow, other, torch.zeros_like(mask)))


def test_flow_fidelity_on_a_translating_texture():
    # a texture shifted by 2 px/frame right: DIS measures it, so EPE vs the true flow is small
    from flowctrl.train.scenes import _texture

    tex = _texture("astronaut")[:, :96, :128]
    T = 4
    video = torch.stack([torch.roll(tex, shifts=2 * t, dims=-1) for t in range(T)])
    true = torch.zeros(T, 2, 96, 128)
    true[:, 0] = 2.0 * torch.arange(T).view(T, 1, 1)
    mask = torch.zeros(1, 1, 96, 128, dtype=torch.bool)
    mask[..., :, 20:100] = True
    res = flow_fidelity(true, video, control_mask=mask)
    assert res["EPE_inside"] < 0.3
    assert flow_fidelity(true[None], video[None], control_mask=mask[None]) == res  # pipeline's batched layout
    wrong = flow_fidelity(torch.zeros_like(true), video, control_mask=mask)
    assert wrong["EPE_inside"] > 10 * res["EPE_inside"] + 1.0


def test_objmc_and_tracking_are_exact_for_a_known_flow():
    T, H, W = 5, 20, 30
    flow = torch.zeros(T, 2, H, W)
    flow[:, 0] = torch.arange(T).view(T, 1, 1) * 1.5  # dx = 1.5 t
    flow[:, 1] = -torch.arange(T).view(T, 1, 1) * 0.5
    starts = torch.tensor([[3.0, 4.0], [10.5, 12.25]])
    tracks = track_points(flow, starts)
    expected = starts[None] + torch.stack([1.5 * torch.arange(T), -0.5 * torch.arange(T)], -1)[:, None].float()
    assert torch.allclose(tracks, expected, atol=1e-5)
    requested = expected.permute(1, 0, 2).clone()
    video = torch.zeros(T, 3, H, W)
    assert objmc(requested, video, measured_flow=flow) == pytest.approx(0.0, abs=1e-5)
    requested[:, 1:, 0] += 2.0
    assert objmc(requested, video, measured_flow=flow) == pytest.approx(2.0, abs=1e-5)


def test_psnr_ssim_known_values():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(3, 3, 32, 32, generator=g)
    b = (a + 0.1).clamp(0, 1)
    b = a.clone()
    b[:, :, :16] += 0.1  # MSE = 0.01 / 2
    expected = 10 * math.log10(1 / 0.005)
    assert torch.allclose(psnr(a, b), torch.full((3,), expected), atol=1e-4)
    assert torch.isinf(psnr(a, a)).all()
    assert torch.allclose(ssim(a, a), torch.ones(3), atol=1e-5)
    assert (ssim(a, torch.rand(3, 3, 32, 32, generator=g)) < 0.2).all()


def test_lpips_missing_weights_and_torchscript_plumbing(tmp_path):
    with pytest.raises(MissingWeightsError):
        load_lpips(tmp_path / "absent.pt")

    class L1(torch.nn.Module):
        def forward(self, x, y):
            return (x - y).abs().mean(dim=(1, 2, 3))

    torch.jit.script(L1()).save(str(tmp_path / "l1.pt"))
    dist = load_lpips(tmp_path / "l1.pt")
    a = torch.zeros(2, 3, 8, 8)
    assert torch.allclose(dist(a, a + 0.25), torch.full((2,), 0.5))  # [-1,1] range doubles the gap


def test_frechet_distance_of_known_gaussians_matches_closed_form():
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T + np.eye(d), b @ b.T + np.eye(d)
    # closed form through the symmetric form Tr((Σ1^{1/2} Σ2 Σ1^{1/2})^{1/2})
    w, v = np.linalg.eigh(s1)
    r1 = v @ np.diag(np.sqrt(w)) @ v.T
    w2 = np.linalg.eigvalsh(r1 @ s2 @ r1)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(w2))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    # diagonal covariances: Σ (σ1 − σ2)² + ‖Δμ‖²
    v1, v2 = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
    closed = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(closed, rel=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-7)
    # singular covariances (rank-deficient features) stay finite and real
    low = np.outer(mu1, mu1)
    assert np.isfinite(frechet_distance(mu1, low, mu2, low))


def test_feature_statistics_warn_for_small_samples(caplog):
    feats = torch.randn(50, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with caplog.at_level(logging.WARNING, logger="flowctrl"):
        mu, sigma = feature_statistics(feats)
    assert "only 50 samples" in caplog.text
    assert np.allclose(mu, feats.mean(0).numpy()) and np.allclose(sigma, np.cov(feats.numpy(), rowvar=False))


class _TinyI3D(torch.nn.Module):
    """Stands in for StyleGAN-V's I3D TorchScript: same call signature, random conv features."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(3, 8, 3, stride=2)

    def forward(self, x, rescale: bool = False, resize: bool = True, return_features: bool = True):
        return self.conv(x).mean(dim=(2, 3, 4))


class _TinyInception(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)

    def forward(self, x, return_features: bool = True):
        return self.conv(x.float() / 255).mean(dim=(2, 3))


def test_fvd_fid_plumbing_with_tiny_torchscript_nets(tmp_path):
    from flowctrl.errors import InputError

    path = tmp_path / "i3d.pt"
    torch.jit.script(_TinyI3D()).save(str(path))
    g = torch.Generator().manual_seed(0)
    real = torch.rand(12, 10, 3, 32, 32, generator=g)
    same = fvd(real, real.clone(), path)
    assert same == pytest.approx(0.0, abs=1e-6)
    assert fvd(real, (real * 0.3).clamp(0, 1), path) > same + 1e-4
    with pytest.raises(InputError):  # too short for I3D
        fvd(real[:, :8], real[:, :8], path)
    with pytest.raises(InputError):  # length mismatch
        fvd(real, real[:, :9].repeat(1, 2, 1, 1, 1)[:, :12], path)
    with pytest.raises(MissingWeightsError):
        fvd(real, real, tmp_path / "missing.pt")
    inc = tmp_path / "inception.pt"
    torch.jit.script(_TinyInception()).save(str(inc))
    imgs = torch.rand(16, 3, 24, 24, generator=g)
    assert fid(imgs, imgs, inc) == pytest.approx(0.0, abs=1e-6)
    assert fid(imgs, imgs * 0.5, inc) > 1e-4


def test_tem_cons_with_tiny_random_clip(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from flowctrl.eval.temporal import load_clip, temporal_consistency

    with pytest.raises(MissingWeightsError):
        load_clip(tmp_path / "no-clip")
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8, projection_dim=16)
    CLIPVisionModelWithProjection(cfg).save_pretrained(tmp_path / "clip")
    model = load_clip(tmp_path / "clip")
    g = torch.Generator().manual_seed(0)
    frame = torch.rand(3, 40, 48, generator=g)
    static = frame.expand(5, 3, 40, 48)
    mean, pairs = temporal_consistency(static, model)
    assert pairs.shape == (4,) and mean == pytest.approx(1.0, abs=1e-5)
    noisy = torch.rand(5, 3, 40, 48, generator=g)
    assert temporal_consistency(noisy, model)[0] < mean
