"""Pose keypoints (the Animate Anyone use case, expressed as flow): per-frame 2D skeletons.

JSON format::

    {"skeleton": "coco17",            # or "openpose18"
     "units": "px",                   # or "normalized"
     "frames": [                      # frame 0 = the pose in the reference image
        [[x, y, confidence], ...],    # J = 17 (coco17) or 18 (openpose18) keypoints
        ...]}

A frame may also be a flat ``[x1, y1, c1, x2, y2, c2, ...]`` list (OpenPose's
``pose_keypoints_2d``), or an object ``{"keypoints": [...]}`` / ``{"pose_keypoints_2d": [...]}``.
A keypoint with confidence 0 is missing (its coordinates are ignored, OpenPose writes 0, 0, 0).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from flowctrl.controls._common import (
    PathLike, Size, err, expect_list, expect_object, number, parse_units, read_json, reject_unknown,
    require, rescale_points, to_pixels,
)
from flowctrl.controls.local import LocalControl

__all__ = ["PoseSequence", "SKELETONS", "KEYPOINT_NAMES", "load_pose", "parse_pose"]

KEYPOINT_NAMES: Dict[str, List[str]] = {
    "coco17": ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
               "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
               "left_knee", "right_knee", "left_ankle", "right_ankle"],
    "openpose18": ["nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder",
                   "left_elbow", "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip",
                   "left_knee", "left_ankle", "right_eye", "left_eye", "right_ear", "left_ear"],
}

# Limbs (pairs of keypoint indices) along which pose motion is spread.
SKELETONS: Dict[str, List[Tuple[int, int]]] = {
    "coco17": [(15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
               (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6)],
    "openpose18": [(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
                   (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17)],
}


@dataclass
class PoseSequence:
    """Per-frame 2D keypoints in pixels of the input image.

    keypoints: ``(T0, J, 2)`` float32 pixels (x, y); frame 0 = the reference image's pose.
    confidence: ``(T0, J)`` float32 in [0, 1]; 0 = keypoint missing in that frame.
    skeleton: ``"coco17"`` (J = 17) or ``"openpose18"`` (J = 18).
    """

    keypoints: torch.Tensor
    confidence: torch.Tensor
    skeleton: str = "coco17"

    def __post_init__(self) -> None:
        self.keypoints = torch.as_tensor(self.keypoints, dtype=torch.float32)
        self.confidence = torch.as_tensor(self.confidence, dtype=torch.float32)
        if self.skeleton not in SKELETONS:
            raise ValueError(f"skeleton must be one of {list(SKELETONS)}, got {self.skeleton!r}")
        J = len(KEYPOINT_NAMES[self.skeleton])
        if self.keypoints.dim() != 3 or self.keypoints.shape[1:] != (J, 2) or self.keypoints.shape[0] < 2:
            raise ValueError(f"keypoints must be (T0>=2, {J}, 2), got {tuple(self.keypoints.shape)}")
        if self.confidence.shape != self.keypoints.shape[:2]:
            raise ValueError(f"confidence must be {tuple(self.keypoints.shape[:2])}, got {tuple(self.confidence.shape)}")

    @property
    def limbs(self) -> List[Tuple[int, int]]:
        return SKELETONS[self.skeleton]

    @property
    def num_frames(self) -> int:
        return int(self.keypoints.shape[0])

    def resample(self, num_frames: int) -> "PoseSequence":
        """Linear interpolation to ``num_frames`` evenly spaced frames; a keypoint's confidence is
        the smaller of its two neighbours (missing stays missing)."""
        if num_frames < 2:
            raise ValueError(f"num_frames must be >= 2, got {num_frames}")
        t = torch.linspace(0, self.num_frames - 1, num_frames, dtype=torch.float64)
        lo = t.floor().long().clamp(max=self.num_frames - 2)
        w = (t - lo).float()[:, None]
        kp = self.keypoints[lo] * (1 - w[..., None]) + self.keypoints[lo + 1] * w[..., None]
        conf = torch.minimum(self.confidence[lo], self.confidence[lo + 1])
        exact = w[:, 0] == 0
        conf[exact] = self.confidence[lo[exact]]
        last = w[:, 0] == 1
        conf[last] = self.confidence[lo[last] + 1]
        return PoseSequence(kp, conf, self.skeleton)

    def tracks(self, num_frames: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keypoint motion relative to the reference pose, ready for sparse flow.

        Returns ``starts (J, 2)`` pixels, ``tracks (J, T, 2)`` displacement pixels (frame 0 = 0) and
        ``valid (J, T)`` bool (visible in frame 0 and in frame t).
        """
        seq = self.resample(num_frames)
        starts = seq.keypoints[0]
        tracks = (seq.keypoints - starts[None]).transpose(0, 1).contiguous()
        valid = ((seq.confidence > 0) & (seq.confidence[:1] > 0)).transpose(0, 1).contiguous()
        tracks[~valid] = 0.0
        return starts, tracks, valid

    def resized(self, old_size: Size, new_size: Size) -> "PoseSequence":
        points = rescale_points(self.keypoints.double().numpy(), old_size, new_size)
        return replace(self, keypoints=torch.from_numpy(points).float(), confidence=self.confidence.clone())


def _frame_triples(frame: Any, source: Any, where: str, J: int) -> List[List[float]]:
    if isinstance(frame, dict):
        reject_unknown(frame, ("keypoints", "pose_keypoints_2d"), source, where)
        key = "keypoints" if "keypoints" in frame else "pose_keypoints_2d"
        frame = require(frame, key, source, where, '"keypoints": [[x, y, c], ...]')
        where = f"{where}.{key}"
    items = expect_list(frame, source, where, "[[x, y, confidence], ...]")
    if items and not isinstance(items[0], list):  # flat OpenPose list
        if len(items) != 3 * J:
            raise err(source, where, f"has {len(items)} numbers, expected {3 * J} (x, y, c for {J} keypoints)",
                      "give x, y, confidence for every keypoint of the skeleton")
        items = [items[3 * j: 3 * j + 3] for j in range(J)]
    if len(items) != J:
        raise err(source, where, f"has {len(items)} keypoints, the skeleton has {J}",
                  "give every keypoint (confidence 0 for missing ones) or change \"skeleton\"")
    out = []
    for j, kp in enumerate(items):
        kp = expect_list(kp, source, f"{where}[{j}]", "[x, y, confidence]")
        if len(kp) not in (2, 3):
            raise err(source, f"{where}[{j}]", f"has {len(kp)} numbers", "give [x, y, confidence]")
        out.append([number(v, source, f"{where}[{j}][{k}]") for k, v in enumerate(kp)] + ([1.0] if len(kp) == 2 else []))
    return out


def parse_pose(data: Any, source: Any = "pose", image_size: Optional[Size] = None) -> PoseSequence:
    """Validate a parsed pose JSON object (module docstring) into a :class:`PoseSequence`."""
    obj = expect_object(data, source, "(top level)", '{"skeleton": "coco17", "frames": [[[x, y, c], ...], ...]}')
    reject_unknown(obj, ("skeleton", "units", "frames"), source, "")
    skeleton = obj.get("skeleton", "coco17")
    if not isinstance(skeleton, str) or skeleton not in SKELETONS:
        raise err(source, "skeleton", f"is {skeleton!r}", f"use one of {', '.join(SKELETONS)}")
    units = parse_units(obj, source)
    J = len(KEYPOINT_NAMES[skeleton])
    frames = expect_list(require(obj, "frames", source, "", '"frames": [...]'), source, "frames",
                         "[[[x, y, c], ...], ...] (one keypoint list per frame)", min_len=2)
    keypoints = np.zeros((len(frames), J, 2))
    confidence = np.zeros((len(frames), J))
    for t, frame in enumerate(frames):
        for j, (x, y, c) in enumerate(_frame_triples(frame, source, f"frames[{t}]", J)):
            where = f"frames[{t}][{j}]"
            if not 0.0 <= c <= 1.0:
                raise err(source, f"{where} confidence", f"is {c:g}", "confidences lie in [0, 1] (0 = missing)")
            if c > 0:
                keypoints[t, j] = to_pixels((x, y), units, image_size, source, where)
            confidence[t, j] = c
    if not (confidence[0] > 0).any():
        raise err(source, "frames[0]", "has no visible keypoint (all confidences 0)",
                  "frame 0 is the reference image's pose; give its keypoints")
    return PoseSequence(torch.from_numpy(keypoints).float(), torch.from_numpy(confidence).float(), skeleton)


def load_pose(path: PathLike, image_size: Optional[Size] = None) -> PoseSequence:
    """Read a pose keypoint JSON file (module docstring) into a pixel-unit :class:`PoseSequence`."""
    path = Path(path)
    return parse_pose(read_json(path, "pose"), path, image_size)


class PoseControl(LocalControl):
    """A pose sequence as a local control kind (``Controls.pose``, one item or None): one track per
    keypoint plus ``samples_per_limb`` along each limb; with segmentation it moves the person under
    up to ``max_seeds`` of its visible reference points."""

    many = False
    label = "pose"
    samples_per_limb = 8
    max_seeds = 16

    def parse(self, value: Any, source: Any, image_size: Optional[Size], base_dir: Optional[Path]) -> PoseSequence:
        return parse_pose(value, source, image_size)

    def load(self, path: Path, image_size: Optional[Size]) -> PoseSequence:
        return load_pose(path, image_size)

    def tracks(self, item: PoseSequence, num_frames: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from flowctrl.flow.sparse import pose_tracks

        seq = item.resample(num_frames)
        return pose_tracks(seq.keypoints, seq.confidence, seq.limbs, samples_per_limb=self.samples_per_limb,
                           min_confidence=1e-6)

    def seeds(self, tracks: torch.Tensor, starts: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        seeds = starts[valid[:, 0]] if bool(valid[:, 0].any()) else starts
        pick = torch.linspace(0, len(seeds) - 1, min(len(seeds), self.max_seeds)).round().long()
        return seeds[pick]

    def draw(self, canvas: np.ndarray, item: PoseSequence, thick: int, num_frames: int) -> None:
        """Green limbs of the reference frame's pose (keypoints with confidence > 0.1)."""
        import cv2

        kp = torch.as_tensor(item.keypoints)[0].numpy()
        conf = torch.as_tensor(item.confidence)[0].numpy()
        for j1, j2 in item.limbs:
            if j1 < len(kp) and j2 < len(kp) and conf[j1] > 0.1 and conf[j2] > 0.1:
                cv2.line(canvas, tuple(int(round(v)) for v in kp[j1]), tuple(int(round(v)) for v in kp[j2]),
                         (30, 200, 60), thick, cv2.LINE_AA)


CONTROL = PoseControl()
