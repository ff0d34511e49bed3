"""Camera accuracy of a video: pose estimation with pycolmap and the CameraCtrl/CamI2V error protocol.

Protocol (made explicit, so numbers are comparable across papers and reruns):

1. Estimate per-frame poses with COLMAP's incremental mapper (SIFT features, sequential or exhaustive
   matching, intrinsics **fixed** to the known ``K``; CPU).
2. Express both trajectories camera-to-world relative to frame 0 and scale each one's translations so
   that its farthest camera centre is at distance 1 (COLMAP's scale is arbitrary).
3. ``RotErr = Σ_t angle(R_gt(t)ᵀ R_est(t))`` (radians), ``TransErr = Σ_t ‖t_gt(t) − t_est(t)‖``,
   ``CamMC = Σ_t ‖[R|t]_gt(t) − [R|t]_est(t)‖_F``. Sums are reported (papers sum over 16 frames) and
   per-frame means (sum / T).
4. Each video is estimated ``trials`` times (COLMAP is randomized); a video whose frames are not all
   registered in one model is a **failure**: it is counted in the failure rate, never dropped silently.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Dict, Iterator, List, Optional

import numpy as np
import torch
from torch import Tensor

logger = logging.getLogger("flowctrl")

__all__ = [
    "PoseEstimate",
    "CameraErrors",
    "CameraAccuracy",
    "estimate_poses",
    "normalize_trajectory",
    "camera_errors",
    "evaluate_camera",
    "perturb_trajectory",
]


@dataclass
class PoseEstimate:
    """Poses estimated for one video.

    Attributes:
        w2c: ``(T, 4, 4)`` float64 world-to-camera relative to frame 0 (``w2c[0] == I``), or ``None``
            when the estimation failed. Frames that were not registered hold NaN.
        registered: ``(T,)`` bool, frames registered in the chosen (largest) model.
    """

    w2c: Optional[Tensor]
    registered: Tensor

    @property
    def success(self) -> bool:
        """True when every frame was registered in one model (the protocol's definition)."""
        return self.w2c is not None and bool(self.registered.all())


@dataclass
class CameraErrors:
    """Errors of one estimated trajectory against the requested one (sums over frames, radians/units)."""

    rot_err: float
    trans_err: float
    cam_mc: float
    num_frames: int

    @property
    def rot_err_mean(self) -> float:
        return self.rot_err / self.num_frames

    @property
    def trans_err_mean(self) -> float:
        return self.trans_err / self.num_frames

    @property
    def cam_mc_mean(self) -> float:
        return self.cam_mc / self.num_frames

    def as_dict(self) -> Dict[str, float]:
        return {
            "RotErr": self.rot_err,
            "TransErr": self.trans_err,
            "CamMC": self.cam_mc,
            "RotErr_mean": self.rot_err_mean,
            "TransErr_mean": self.trans_err_mean,
            "CamMC_mean": self.cam_mc_mean,
        }


@dataclass
class CameraAccuracy:
    """The result of :func:`evaluate_camera` for one video over several trials."""

    trials: int
    failures: int
    errors: List[CameraErrors] = field(default_factory=list)  # successful trials only
    estimates: List[PoseEstimate] = field(default_factory=list)  # every trial, failures included

    @property
    def failure_rate(self) -> float:
        return self.failures / max(self.trials, 1)

    def median(self, key: str) -> float:
        """Median over successful trials of an :meth:`CameraErrors.as_dict` key; NaN if all failed."""
        values = [e.as_dict()[key] for e in self.errors]
        return float(median(values)) if values else float("nan")

    def summary(self) -> Dict[str, float]:
        keys = ("RotErr", "TransErr", "CamMC", "RotErr_mean", "TransErr_mean", "CamMC_mean")
        out = {key: self.median(key) for key in keys}
        out.update(trials=self.trials, failures=self.failures, failure_rate=self.failure_rate)
        return out


# ----------------------------------------------------------------------------------------------
# trajectory math (pure, float64)


def _c2w_relative(w2c: Tensor) -> Tensor:
    """``(T,4,4)`` world-to-camera → camera-to-world relative to frame 0 (``out[0] == I``)."""
    w2c = w2c.to(torch.float64)
    c2w = torch.linalg.inv(w2c)
    return w2c[0] @ c2w  # (c2w_0)^-1 c2w_t = w2c_0 c2w_t


def normalize_trajectory(w2c: Tensor) -> Tensor:
    """Camera-to-world poses relative to frame 0 with the farthest camera centre at distance 1.

    Args:
        w2c: ``(T, 4, 4)`` world-to-camera matrices (any frame of reference, any scale).

    Returns:
        ``(T, 4, 4)`` float64 camera-to-world matrices; a trajectory without translation is returned
        unscaled.
    """
    c2w = _c2w_relative(w2c)
    farthest = c2w[:, :3, 3].norm(dim=-1).max()
    if farthest > 1e-12:
        c2w = c2w.clone()
        c2w[:, :3, 3] /= farthest
    return c2w


def camera_errors(w2c_gt: Tensor, w2c_est: Tensor) -> CameraErrors:
    """RotErr / TransErr / CamMC (sums over frames) between two trajectories.

    Args:
        w2c_gt, w2c_est: ``(T, 4, 4)`` world-to-camera matrices; each is made relative to its own
            frame 0 and scale-normalized first, so a global scale or a change of world frame of either
            trajectory does not change the errors.
    """
    if w2c_gt.shape != w2c_est.shape:
        raise ValueError(f"trajectories differ in shape: {tuple(w2c_gt.shape)} vs {tuple(w2c_est.shape)}")
    gt, est = normalize_trajectory(w2c_gt), normalize_trajectory(w2c_est)
    relative = gt[:, :3, :3].transpose(1, 2) @ est[:, :3, :3]
    cos = ((relative.diagonal(dim1=1, dim2=2).sum(-1) - 1.0) / 2.0).clamp(-1.0, 1.0)
    rot = torch.arccos(cos)
    trans = (gt[:, :3, 3] - est[:, :3, 3]).norm(dim=-1)
    cam_mc = (gt[:, :3, :4] - est[:, :3, :4]).flatten(1).norm(dim=-1)
    return CameraErrors(float(rot.sum()), float(trans.sum()), float(cam_mc.sum()), int(gt.shape[0]))


# ----------------------------------------------------------------------------------------------
# pose estimation (pycolmap)


def _import_pycolmap():
    try:
        import pycolmap
    except ImportError as error:  # the [bench] extra
        raise ImportError(
            "camera accuracy needs pycolmap: pip install 'flowctrl[bench]' (or pip install pycolmap)"
        ) from error
    return pycolmap


@contextlib.contextmanager
def _workdir(path: Optional[os.PathLike]) -> Iterator[Path]:
    if path is not None:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="flowctrl-colmap-") as tmp:
        yield Path(tmp)


def _write_frames(video: Tensor, folder: Path) -> List[str]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    frames = (video.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    names = []
    for index, frame in enumerate(frames.permute(0, 2, 3, 1).cpu().numpy()):
        name = f"{index:05d}.png"
        Image.fromarray(np.ascontiguousarray(frame)).save(folder / name)
        names.append(name)
    return names


def estimate_poses(
    video: Tensor,
    K: Tensor,
    *,
    matcher: str = "sequential",
    seed: int = 0,
    max_features: int = 4096,
    peak_threshold: float = 0.002,
    init_min_tri_angle: float = 4.0,
    num_threads: int = -1,
    workdir: Optional[os.PathLike] = None,
    verbose: bool = False,
) -> PoseEstimate:
    """Estimate per-frame camera poses of a video with COLMAP (pycolmap), intrinsics fixed to ``K``.

    Args:
        video: ``(T, 3, H, W)`` float in [0, 1].
        K: ``(3, 3)`` pinhole intrinsics in pixels of this video.
        matcher: ``"sequential"`` (each frame with its 10 successors), ``"exhaustive"`` (all pairs).
        seed: COLMAP's random seed (RANSAC, initial pair choice); vary it across trials.
        max_features: SIFT features per frame.
        peak_threshold: SIFT detection threshold (lower = more features on small frames).
        init_min_tri_angle: smallest triangulation angle (degrees) of the initial pair; COLMAP's
            default 16° rejects most 16-frame clips, whose total parallax is a few degrees.
        workdir: keep COLMAP's database and images there (default: a temporary folder).
        verbose: keep COLMAP's log (otherwise only errors).

    Returns:
        A :class:`PoseEstimate`; frames outside the largest reconstruction are unregistered, and a
        video that COLMAP cannot reconstruct at all gives ``w2c=None`` (a failure, not an exception).
    """
    pycolmap = _import_pycolmap()
    if not verbose:
        pycolmap.logging.minloglevel = 2  # COLMAP's INFO/WARNING lines flood the terminal
    if video.ndim != 4 or video.shape[1] != 3:
        raise ValueError(f"video must be (T, 3, H, W), got {tuple(video.shape)}")
    num_frames = int(video.shape[0])
    K = torch.as_tensor(K, dtype=torch.float64)
    # flowctrl puts pixel centres at integer coordinates, COLMAP at +0.5.
    fx, fy = float(K[0, 0]), float(K[1, 1])
    cx, cy = float(K[0, 2]) + 0.5, float(K[1, 2]) + 0.5
    failed = PoseEstimate(w2c=None, registered=torch.zeros(num_frames, dtype=torch.bool))

    with _workdir(workdir) as work:
        image_dir, database = work / "images", work / "database.db"
        if database.exists():
            database.unlink()
        names = _write_frames(video, image_dir)

        reader = pycolmap.ImageReaderOptions()
        reader.camera_model = "PINHOLE"
        reader.camera_params = f"{fx},{fy},{cx},{cy}"
        extraction = pycolmap.FeatureExtractionOptions()
        extraction.num_threads = num_threads
        extraction.sift.max_num_features = max_features
        # COLMAP's default (0.0067) is tuned for megapixel photos; at 256 px it leaves ~150 features.
        extraction.sift.peak_threshold = peak_threshold
        device = pycolmap.Device.cpu
        pycolmap.extract_features(
            database, image_dir, image_names=names, camera_mode=pycolmap.CameraMode.SINGLE,
            reader_options=reader, extraction_options=extraction, device=device,
        )
        matching = pycolmap.FeatureMatchingOptions()
        matching.num_threads = num_threads
        if matcher == "sequential":
            pairing = pycolmap.SequentialPairingOptions()
            pairing.overlap = min(10, max(num_frames - 1, 1))
            pycolmap.match_sequential(database, matching_options=matching, pairing_options=pairing, device=device)
        elif matcher == "exhaustive":
            pycolmap.match_exhaustive(database, matching_options=matching, device=device)
        else:
            raise ValueError(f"matcher must be 'sequential' or 'exhaustive', got {matcher!r}")

        options = pycolmap.IncrementalPipelineOptions()
        options.ba_refine_focal_length = False
        options.ba_refine_principal_point = False
        options.ba_refine_extra_params = False
        options.mapper.abs_pose_refine_focal_length = False
        options.mapper.abs_pose_refine_extra_params = False
        options.random_seed = seed
        options.mapper.random_seed = seed
        options.triangulation.random_seed = seed
        options.num_threads = num_threads
        options.min_model_size = 3
        # Short, low-parallax clips (generated videos) rarely reach COLMAP's default thresholds.
        options.mapper.init_min_tri_angle = init_min_tri_angle
        options.mapper.init_min_num_inliers = 50
        (work / "sparse").mkdir(exist_ok=True)
        try:
            models = pycolmap.incremental_mapping(database, image_dir, work / "sparse", options=options)
        except Exception as error:  # COLMAP raises plain RuntimeErrors on degenerate input
            logger.info("COLMAP found no reconstruction (%s)", error)
            return failed
        if not models:
            return failed
        model = max(models.values(), key=lambda rec: rec.num_reg_images())
        w2c = torch.full((num_frames, 4, 4), float("nan"), dtype=torch.float64)
        registered = torch.zeros(num_frames, dtype=torch.bool)
        index_of = {name: i for i, name in enumerate(names)}
        for image in model.images.values():
            if not image.has_pose:
                continue
            i = index_of[image.name]
            pose = image.cam_from_world()
            matrix = torch.eye(4, dtype=torch.float64)
            matrix[:3, :4] = torch.from_numpy(np.asarray(pose.matrix(), dtype=np.float64))
            w2c[i] = matrix
            registered[i] = True
    if not registered[0]:
        return PoseEstimate(w2c=None, registered=registered)
    w2c = w2c @ torch.linalg.inv(w2c[0])  # relative to frame 0
    return PoseEstimate(w2c=w2c, registered=registered)


def evaluate_camera(
    video: Tensor,
    K: Tensor,
    w2c_requested: Tensor,
    *,
    trials: int = 3,
    matcher: str = "sequential",
    seed: int = 0,
    **estimate_kwargs,
) -> CameraAccuracy:
    """Camera accuracy of one video against the requested trajectory over ``trials`` COLMAP runs.

    Args:
        video: ``(T, 3, H, W)`` in [0, 1]. K: ``(3, 3)`` pixels. w2c_requested: ``(T, 4, 4)``.
    """
    if w2c_requested.shape[0] != video.shape[0]:
        raise ValueError(
            f"{video.shape[0]} frames but {w2c_requested.shape[0]} requested poses; resample the trajectory first"
        )
    result = CameraAccuracy(trials=trials, failures=0)
    for trial in range(trials):
        estimate = estimate_poses(video, K, matcher=matcher, seed=seed + trial, **estimate_kwargs)
        result.estimates.append(estimate)
        if not estimate.success:
            result.failures += 1
            continue
        result.errors.append(camera_errors(w2c_requested, estimate.w2c))
    return result


def perturb_trajectory(w2c: Tensor, amount: float, seed: int = 0) -> Tensor:
    """A smoothly perturbed copy of a trajectory (for sensitivity checks of the metrics).

    Each frame's camera is rotated by up to ``amount`` radians about a fixed random axis, growing
    linearly over the clip, and its centre moved by ``amount`` times the trajectory's extent.

    Args:
        w2c: ``(T, 4, 4)`` relative world-to-camera. amount: perturbation size (≥ 0).
    """
    generator = torch.Generator().manual_seed(seed)
    axis = torch.randn(3, generator=generator, dtype=torch.float64)
    axis = axis / axis.norm()
    offset = torch.randn(3, generator=generator, dtype=torch.float64)
    offset = offset / offset.norm()
    c2w = torch.linalg.inv(w2c.to(torch.float64))
    extent = float(c2w[:, :3, 3].norm(dim=-1).max().clamp_min(1e-6))
    num_frames = w2c.shape[0]
    out = c2w.clone()
    for t in range(num_frames):
        ramp = t / max(num_frames - 1, 1)
        angle = amount * ramp
        skew = torch.tensor(
            [[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]], dtype=torch.float64
        )
        rotation = torch.eye(3, dtype=torch.float64) + math.sin(angle) * skew + (1 - math.cos(angle)) * skew @ skew
        out[t, :3, :3] = c2w[t, :3, :3] @ rotation
        out[t, :3, 3] = c2w[t, :3, 3] + amount * ramp * extent * offset
    return torch.linalg.inv(out)
