"""The Controls object: bundle JSON (paths relative to the bundle), from_files, resized, and examples/."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from flowctrl.controls import (
    Arrow, CameraTrajectory, Controls, Drag, PoseSequence, load_arrows, load_camera, load_drags, load_mask,
    load_pose,
)
from flowctrl.controls.masks import save_mask
from flowctrl.errors import ControlFileError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_every_example_file_loads():
    size = (512, 512)
    assert len(load_arrows(EXAMPLES / "a.json", size)) >= 2
    drags = load_drags(EXAMPLES / "drags.json", size)
    assert len(drags) == 2 and all(len(d.points) >= 3 for d in drags)
    txt = load_drags(EXAMPLES / "drag.txt", size)
    assert len(txt) == 1 and txt[0].track(5)[-1, 1] < 0  # the shuttle goes up
    pose = load_pose(EXAMPLES / "pose.json", size)
    assert pose.skeleton == "coco17" and pose.keypoints.shape == (3, 17, 2)
    mask = load_mask(EXAMPLES / "mask.png", size)
    assert mask.shape == (1, 512, 512) and 0 < mask.float().mean() < 0.5
    for name in ("camera.json", "motionctrl.json"):
        cam = load_camera(EXAMPLES / name)
        assert torch.allclose(cam.w2c[0], torch.eye(4, dtype=torch.float64)) and len(cam) >= 3
    bundle = Controls.from_bundle(EXAMPLES / "bundle.json")
    assert bundle.image_size == (512, 512) and bundle.camera is not None and bundle.drags
    assert bundle.motion_mask is not None and bundle.strength == 2.0
    small = sum(p.stat().st_size for p in EXAMPLES.iterdir() if p.name != "astronaut.png")
    assert small < 300_000


def test_bundle_paths_are_relative_to_the_bundle(tmp_path, monkeypatch):
    folder = tmp_path / "shot"
    (folder / "ctl").mkdir(parents=True)
    shutil.copy(EXAMPLES / "a.json", folder / "ctl" / "arrows.json")
    shutil.copy(EXAMPLES / "drag.txt", folder / "ctl" / "drag.txt")
    shutil.copy(EXAMPLES / "pose.json", folder / "pose.json")
    shutil.copy(EXAMPLES / "camera.json", folder / "ctl" / "orbit")  # a file named like a preset wins
    save_mask(folder / "static.png", torch.ones(1, 8, 8, dtype=torch.bool))
    (folder / "ref.mp4").write_bytes(b"")
    bundle = {"image_size": [512, 512], "arrows": "ctl/arrows.json", "drags": "ctl/drag.txt",
              "pose": "pose.json", "camera": "ctl/orbit", "static_mask": "static.png", "ref_video": "ref.mp4",
              "strength": 1.5}
    (folder / "b.json").write_text(json.dumps(bundle))
    monkeypatch.chdir(tmp_path)  # not the bundle folder
    c = Controls.from_bundle(Path("shot") / "b.json")
    assert len(c.arrows) == 3 and len(c.drags) == 1 and c.pose is not None
    assert c.camera.name == "pan-left-dolly-in" and c.static_mask.shape == (1, 512, 512)
    assert Path(c.ref_video).resolve() == (folder / "ref.mp4").resolve() and c.has_local
    # a preset spec when no such file exists; inline objects
    bundle.update(camera="orbit:degrees=10", arrows=[{"start": [1, 2], "end": [3, 4]}],
                  drags={"drags": [{"points": [[1, 1], [5, 5]]}]})
    (folder / "b.json").write_text(json.dumps(bundle))
    c = Controls.from_bundle(folder / "b.json")
    assert c.camera.name == "orbit" and c.arrows[0].end == (3.0, 4.0) and len(c.drags) == 1
    bundle["camera"] = {"frames": [{"w2c": np.eye(4).tolist()}, {"R": np.eye(3).tolist(), "t": [0, 0, -1]}]}
    (folder / "b.json").write_text(json.dumps(bundle))
    assert Controls.from_bundle(folder / "b.json").camera.centers[1, 2].item() == pytest.approx(1.0)


@pytest.mark.parametrize("bundle, needle", [
    ({"arrows": "nope.json"}, "arrows: 'nope.json' does not exist"),
    ({"arrow": "a.json"}, "arrow: unknown field"),
    ({"strength": "fast"}, "strength: is a string, expected a number"),
    ({"strength": -2}, "strength: is -2, must be >= 0"),
    ({"image_size": [512]}, "image_size"),
    ({"camera": 3}, "camera: is a number"),
    ({"camera": "orbit:degres=2"}, "degres: unknown parameter"),
    ({"image": "missing.png"}, "image: "),
    ({"mask": "m.png", "image_size": [64, 64]}, "does not exist"),
    ([1, 2], "is a list, expected an object"),
])
def test_bundle_errors(tmp_path, bundle, needle):
    path = tmp_path / "b.json"
    path.write_text(json.dumps(bundle))
    with pytest.raises(ControlFileError) as info:
        Controls.from_bundle(path)
    assert str(info.value).startswith(str(path)) and needle in str(info.value), str(info.value)


def test_from_files_and_python(tmp_path):
    c = Controls.from_files(arrows=EXAMPLES / "a.json", drags=EXAMPLES / "drags.json", camera="pan-left",
                            pose=EXAMPLES / "pose.json", mask=EXAMPLES / "mask.png", strength=3.0,
                            image_size=(512, 512))
    assert len(c.arrows) == 3 and c.camera.name == "pan-left" and c.motion_mask.shape == (1, 512, 512)
    with pytest.raises(ControlFileError, match="reference video does not exist"):
        Controls.from_files(ref_video=tmp_path / "none.mp4")
    with pytest.raises(ControlFileError, match="outside the 100x100 image"):
        Controls.from_files(arrows=EXAMPLES / "a.json", image_size=(100, 100))
    built = Controls(arrows=[Arrow((1, 2), (3, 4))], camera="zoom-in", image_size=(10, 20),
                     motion_mask=torch.ones(10, 20))
    assert isinstance(built.camera, CameraTrajectory) and built.motion_mask.shape == (1, 10, 20)
    assert Controls().is_empty() and not built.is_empty()


def test_resized_maps_every_pixel_quantity():
    mask = torch.zeros(1, 40, 60, dtype=torch.bool)
    mask[:, 10:20, 30:60] = True
    pose = PoseSequence(torch.full((2, 17, 2), 9.5), torch.ones(2, 17))
    cam = load_camera("orbit")
    c = Controls(arrows=[Arrow((9.5, 19.5), (29.5, 39.5 - 20), strength=2, easing="ease-in-out")],
                 drags=[Drag(points=[[0, 0], [59.5, 39.5]], radius=4.0)], camera=cam, pose=pose,
                 motion_mask=mask, static_mask=~mask, strength=2.0, depth=torch.ones(1, 40, 60),
                 ref_video=torch.rand(3, 3, 40, 60), image_size=(40, 60))
    r = c.resized(80, 120)  # twice the size
    assert r.image_size == (80, 120)
    a = r.arrows[0]
    assert a.start == (19.5, 39.5) and a.end == (59.5, 39.5) and a.strength == 2 and a.easing == "ease-in-out"
    assert torch.allclose(r.arrows[0].track(5), 2 * c.arrows[0].track(5))
    assert np.allclose(r.drags[0].points, [[0.5, 0.5], [119.5, 79.5]]) and r.drags[0].radius == 8.0
    assert torch.allclose(r.pose.keypoints, torch.full((2, 17, 2), 19.5))
    assert r.motion_mask.shape == (1, 80, 120) and int(r.motion_mask.sum()) == 4 * int(mask.sum())
    assert torch.equal(r.static_mask, ~r.motion_mask)
    assert r.strength == 4.0 and r.depth.shape == (1, 80, 120) and r.ref_video.shape == (3, 3, 80, 120)
    assert r.camera is cam  # resolution-free
    # the original is untouched, and going back restores the coordinates
    assert c.arrows[0].start == (9.5, 19.5)
    back = r.resized(40, 60)
    assert back.arrows[0].start == pytest.approx(c.arrows[0].start) and torch.equal(back.motion_mask, mask)
    with pytest.raises(ControlFileError, match="image_size: is unknown"):
        Controls(arrows=[Arrow((1, 1), (2, 2))]).resized(10, 10)
    assert Controls(camera=cam).resized(10, 10).image_size == (10, 10)
    unsized = Controls(motion_mask=mask).resized(80, 120)  # the mask knows its size
    assert unsized.image_size == (80, 120) and torch.equal(unsized.motion_mask, r.motion_mask)


from hypothesis import given, settings, strategies as st  # noqa: E402

from flowctrl.controls.core import BUNDLE_FIELDS  # noqa: E402

_leaf = st.none() | st.booleans() | st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 600) | st.sampled_from(
    ["a.json", "drag.txt", "mask.png", "orbit", "zoom-in:factor=0", "nope.json", "", "."])
_value = st.recursive(_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(
    st.sampled_from(["arrows", "start", "end", "frames", "points", "units"]), c, max_size=3), max_leaves=10)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.dictionaries(st.sampled_from(BUNDLE_FIELDS + ("extra",)), _value, max_size=4))
def test_bundle_parser_never_crashes(data):
    """Property: any bundle object gives Controls or a one-line ControlFileError naming the bundle."""
    try:
        c = Controls.from_dict(data, base_dir=EXAMPLES, source="b.json", image_size=(512, 512))
    except ControlFileError as error:
        assert "\n" not in str(error) and ("b.json" in str(error) or str(EXAMPLES) in str(error)), str(error)
    else:
        assert isinstance(c, Controls) and c.image_size is not None
