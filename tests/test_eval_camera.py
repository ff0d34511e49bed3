"""Camera accuracy protocol: metrics with known answers, pycolmap on a synthetic scene, failures."""
import math

import pytest
import torch

from flowctrl.eval.camera import (CameraAccuracy, camera_errors, evaluate_camera, normalize_trajectory,
                                  perturb_trajectory)
from flowctrl.train.scenes import SceneConfig, random_trajectory


def _trajectory(seed: int = 0, frames: int = 12) -> torch.Tensor:
    import numpy as np

    return random_trajectory(np.random.default_rng(seed), frames, max_translation=1.0, max_rotation_deg=15.0)


def test_identical_trajectories_have_zero_error():
    w2c = _trajectory()
    errors = camera_errors(w2c, w2c.clone())
    assert errors.rot_err == pytest.approx(0, abs=1e-6)
    assert errors.trans_err == pytest.approx(0, abs=1e-9) and errors.cam_mc == pytest.approx(0, abs=1e-6)


def test_known_rotation_error_sums_geodesic_angles():
    T, angle = 5, 0.1
    gt = torch.eye(4, dtype=torch.float64).repeat(T, 1, 1)
    est = gt.clone()
    for t in range(T):  # camera t yawed by t*angle, no translation
        c, s = math.cos(t * angle), math.sin(t * angle)
        est[t, :3, :3] = torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=torch.float64)
    errors = camera_errors(gt, est)
    assert errors.rot_err == pytest.approx(angle * sum(range(T)), rel=1e-9)
    assert errors.rot_err_mean == pytest.approx(errors.rot_err / T)
    assert errors.trans_err == 0.0
    # CamMC = Σ ‖R_gt − R_est‖_F = Σ 2√(1−cos θ)·√2/… ; closed form for a rotation about one axis:
    expected = sum(math.sqrt(4 * (1 - math.cos(t * angle))) for t in range(T))
    assert errors.cam_mc == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("scale", [0.01, 3.0, 250.0])
def test_errors_invariant_to_global_scale_of_either_trajectory(scale):
    gt, est = _trajectory(1), perturb_trajectory(_trajectory(1), 0.2, seed=3)
    base = camera_errors(gt, est).as_dict()
    for a, b in ((gt, est), (est, gt)):
        scaled = a.clone()
        scaled[:, :3, 3] *= scale
        other = camera_errors(scaled, b).as_dict() if a is gt else camera_errors(b, scaled).as_dict()
        for key, value in base.items():
            assert other[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_normalization_is_relative_to_frame0_and_unit_extent():
    w2c = _trajectory(2)
    world = torch.eye(4, dtype=torch.float64)
    world[:3, 3] = torch.tensor([5.0, -2.0, 1.0])  # a different world frame
    c2w = normalize_trajectory(w2c @ torch.linalg.inv(world))
    assert torch.allclose(c2w[0], torch.eye(4, dtype=torch.float64), atol=1e-12)
    assert c2w[:, :3, 3].norm(dim=-1).max() == pytest.approx(1.0)
    assert torch.allclose(c2w, normalize_trajectory(w2c), atol=1e-10)


def test_perturbation_increases_errors_monotonically():
    gt = _trajectory(4)
    previous = None
    for amount in (0.0, 0.05, 0.1, 0.2, 0.4):
        errors = camera_errors(gt, perturb_trajectory(gt, amount, seed=7))
        if previous is not None:
            assert errors.rot_err > previous.rot_err and errors.trans_err > previous.trans_err
            assert errors.cam_mc > previous.cam_mc
        previous = errors


def test_failure_rate_counts_failed_trials():
    acc = CameraAccuracy(trials=4, failures=1)
    assert acc.failure_rate == 0.25 and math.isnan(acc.median("RotErr"))


# --------------------------------------------------------------------------------- pycolmap runs
@pytest.fixture(scope="module")
def synthetic_clip():
    from flowctrl.train.scenes import render_scene

    cfg = SceneConfig(num_frames=8, height=192, width=256, max_translation=1.2, moving_layers=False,
                      num_layers=(3, 3), textures=("astronaut", "chelsea", "coffee", "rocket"))
    return render_scene(3, cfg)


def test_pycolmap_recovers_synthetic_camera_path(synthetic_clip):
    pytest.importorskip("pycolmap")
    torch.manual_seed(0)
    clip = synthetic_clip
    acc = evaluate_camera(clip.video, clip.K, clip.w2c, trials=1, matcher="exhaustive", num_threads=1)
    assert acc.failures == 0, "COLMAP must register every frame of an exact synthetic render"
    errors = acc.errors[0]
    assert errors.rot_err_mean < 0.01
    assert errors.trans_err_mean < 0.05
    # the video follows the known path; a perturbed requested path scores monotonically worse
    estimate = acc.estimates[0].w2c
    scores = [camera_errors(perturb_trajectory(clip.w2c.double(), a, seed=1), estimate).rot_err
              for a in (0.05, 0.15, 0.3)]
    assert errors.rot_err < scores[0] < scores[1] < scores[2]


def test_flat_gray_clip_is_a_failure_not_a_crash():
    pytest.importorskip("pycolmap")
    video = torch.full((6, 3, 96, 128), 0.5)
    K = torch.tensor([[110.0, 0, 63.5], [0, 110.0, 47.5], [0, 0, 1]])
    acc = evaluate_camera(video, K, torch.eye(4).repeat(6, 1, 1), trials=2, num_threads=1)
    assert acc.trials == 2 and acc.failures == 2 and acc.failure_rate == 1.0
    assert all(not e.success and e.w2c is None for e in acc.estimates)
    assert math.isnan(acc.summary()["RotErr"])
