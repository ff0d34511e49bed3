"""Benchmark harness pieces that need no COLMAP run: CLI errors, irregular sampling, tables."""
import math
import subprocess
import sys

import numpy as np
import torch

from flowctrl.eval.bench import _irregular, camera_markdown, render_with_backend, CameraCase
from flowctrl.eval.camera import normalize_trajectory
from flowctrl.train.scenes import SceneConfig, random_trajectory, render_scene


def test_bench_cli_missing_folder_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "flowctrl", "bench", "camera", "--suite", "re10k", "--re10k",
                           str(tmp_path / "absent"), "-o", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "--re10k" in proc.stderr and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_irregular_resampling_keeps_path_but_changes_speed():
    dense = random_trajectory(np.random.default_rng(0), 32, max_translation=1.0, max_rotation_deg=10.0)
    out = _irregular(dense, 16, np.random.default_rng(1))
    assert out.shape == (16, 4, 4)
    assert torch.allclose(out[0], torch.eye(4, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(out[-1], dense[-1], atol=1e-6)
    steps = normalize_trajectory(out)[:, :3, 3].diff(dim=0).norm(dim=-1)
    assert float(steps.max() / steps.min()) > 2.0  # uneven speed, unlike the regular presets


def test_camera_markdown_lists_rows_and_failure_rate():
    rows = [dict(case="a", suite="re10k", video="oracle", RotErr=0.1, TransErr=0.2, CamMC=0.3, RotErr_mean=0.01,
                 TransErr_mean=0.02, CamMC_mean=0.03, trials=3, failures=0),
            dict(case="a", suite="re10k", video="warp", RotErr=math.nan, TransErr=math.nan, CamMC=math.nan,
                 RotErr_mean=math.nan, TransErr_mean=math.nan, CamMC_mean=math.nan, trials=3, failures=3)]
    md = camera_markdown(rows)
    assert "| a | re10k | oracle | 0.100 | 0.200 | 0.300 |" in md and "| re10k | warp | nan | nan | nan | 1.00 |" in md


def test_warp_backend_with_true_depth_reproduces_the_synthetic_video():
    clip = render_scene(2, SceneConfig(num_frames=4, height=48, width=64, moving_layers=False, num_layers=(1, 1)))
    case = CameraCase("s", "basic", clip.video, clip.w2c.double(), clip.K.double(), clip.depth[:1])
    video = render_with_backend(case, "warp")
    assert video.shape == clip.video.shape
    err = (video - clip.video).abs().mean(1)[clip.visibility[:, 0].bool()]
    assert float(err.mean()) < 0.06  # the warp renderer follows the requested camera with the true depth
