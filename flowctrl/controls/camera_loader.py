"""``load_camera``: a camera trajectory from a file (any supported format) or a preset spec.

Above both :mod:`flowctrl.controls.camera` (the trajectory type and the file parsers) and
:mod:`flowctrl.controls.presets` (which builds trajectories), so neither imports the other's user.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from flowctrl.controls._common import PathLike, err, read_json, read_text
from flowctrl.controls.camera import CameraTrajectory, parse_camera_json, parse_motionctrl, parse_re10k
from flowctrl.controls.presets import is_preset_spec, list_camera_presets, preset_from_spec

__all__ = ["load_camera"]


def load_camera(path_or_preset: Union[PathLike, CameraTrajectory], num_frames: Optional[int] = None) -> CameraTrajectory:
    """A camera trajectory from a file (flowctrl ``.json``, MotionCtrl ``.json``, RealEstate10K
    ``.txt``) or a preset spec (``orbit``, ``orbit:degrees=30,depth=2``; see
    :func:`flowctrl.controls.presets.camera_preset`); resampled to ``num_frames`` when given."""
    if isinstance(path_or_preset, CameraTrajectory):
        traj = path_or_preset
    else:
        spec = str(path_or_preset)
        path = Path(spec).expanduser()
        if path.exists() or spec.lower().endswith((".json", ".txt")) or not is_preset_spec(spec):
            traj = _load_camera_file(path)
        else:
            traj = preset_from_spec(spec)
    if num_frames is not None:
        traj = traj.resample(num_frames)
    return traj


def _load_camera_file(path: Path) -> CameraTrajectory:
    if not path.exists():
        raise err(path, None, "camera file does not exist and is not a preset name",
                  f"give a camera file or a preset ({', '.join(list_camera_presets())})")
    if path.suffix.lower() == ".txt":
        return parse_re10k(read_text(path, "camera"), path)
    data = read_json(path, "camera")
    if isinstance(data, list):
        return parse_motionctrl(data, path)
    return parse_camera_json(data, path)
