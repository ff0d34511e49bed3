"""Camera control files: RealEstate10K, flowctrl JSON, MotionCtrl JSON, presets (signs in OpenCV axes)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from flowctrl.controls import (
    CameraTrajectory, camera_preset, list_camera_presets, load_camera, parse_camera_json, parse_motionctrl,
    parse_re10k, validate_poses,
)
from flowctrl.controls.presets import parse_preset_spec, preset_file_names, preset_json
from flowctrl.errors import ControlFileError

REPO = Path(__file__).resolve().parents[1]


def _rot_y(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _project(traj: CameraTrajectory, point, H=64, W=64):
    """(T, 2) pixel positions of a world (= frame-0 camera) point in every frame."""
    K = traj.intrinsics_all(H, W)
    X = torch.tensor([*point, 1.0], dtype=torch.float64)
    cam = (traj.w2c @ X)[:, :3]
    uv = (K @ cam[..., None])[..., 0]
    return (uv[:, :2] / uv[:, 2:]).numpy()


# ---------------------------------------------------------------- RealEstate10K (real files)

def test_every_re10k_file_loads_relative_to_frame0(shared_dir):
    files = sorted((shared_dir / "data" / "re10k").glob("*.txt"))
    assert files, "no RealEstate10K .txt files in the shared data"
    for path in files:
        traj = load_camera(path)
        raw = [line.split() for line in path.read_text().splitlines()[1:] if line.strip()]
        assert len(traj) == len(raw) >= 2
        assert torch.allclose(traj.w2c[0], torch.eye(4, dtype=torch.float64), atol=1e-12)
        R = traj.w2c[:, :3, :3]
        assert torch.allclose(torch.linalg.det(R), torch.ones(len(traj), dtype=torch.float64), atol=1e-9)
        assert torch.allclose(R.transpose(1, 2) @ R, torch.eye(3, dtype=torch.float64).expand_as(R), atol=1e-9)
        # relative pose equals raw_i @ inv(raw_0) (up to the file's 9 printed decimals)
        mats = np.array([[float(v) for v in r[7:]] for r in raw]).reshape(-1, 3, 4)
        full = np.tile(np.eye(4), (len(mats), 1, 1))
        full[:, :3] = mats
        rel = full @ np.linalg.inv(full[0])
        assert np.allclose(traj.w2c.numpy(), rel, atol=1e-5)
        assert traj.timestamps[0] == 0 and bool((traj.timestamps.diff() > 0).all())
        fx = float(raw[0][1])
        assert traj.intrinsics(100, 200)[0, 0].item() == pytest.approx(fx * 200)


def test_re10k_resample_keeps_ends_and_is_rotation():
    R1 = _rot_y(0.4)
    lines = ["https://example.com/v"]
    for k, (R, t) in enumerate([(np.eye(3), [0, 0, 0]), (R1, [0.2, 0, 0.1])]):
        vals = [k * 1000, 0.5, 0.8, 0.5, 0.5, 0, 0] + np.hstack([R, np.array(t)[:, None]]).ravel().tolist()
        lines.append(" ".join(str(v) for v in vals))
    traj = parse_re10k("\n".join(lines), "x.txt")
    res = traj.resample(5)
    assert len(res) == 5
    assert torch.allclose(res.w2c[-1], traj.w2c[-1], atol=1e-10)
    # slerp: the middle frame is rotated by half the angle
    R_mid = res.w2c[2, :3, :3].numpy()
    assert np.allclose(R_mid, _rot_y(0.2), atol=1e-9)
    assert np.allclose(np.linalg.det(res.w2c[:, :3, :3].numpy()), 1.0)


# ---------------------------------------------------------------- malformed inputs

def _good_frames(n=3):
    return [{"R": _rot_y(0.1 * i).tolist(), "t": [0.0, 0.0, 0.1 * i]} for i in range(n)]


@pytest.mark.parametrize("mutate, needle", [
    (lambda d: d.pop("frames"), "frames: missing required field"),
    (lambda d: d["frames"][1]["t"].__setitem__(0, float("nan")), "not a finite number"),
    (lambda d: d.__setitem__("frames", d["frames"][:1]), "at least 2"),
    (lambda d: d.__setitem__("frames", "orbit"), "expected a list"),
    (lambda d: d["frames"][2].__setitem__("R", (np.diag([1.0, 1.0, -1.0])).tolist()), "det R = -1"),
    (lambda d: d["frames"][1].__setitem__("R", (1.1 * np.eye(3)).tolist()), "not orthonormal"),
    (lambda d: d.__setitem__("intrinsics", {"units": "normalized", "fx": 0.8, "fy": 0.8, "cx": 7, "cy": 0.5}),
     "far outside the image"),
    (lambda d: d.__setitem__("intrinsics", {"units": "px", "fx": 500, "fy": 500, "cx": 250, "cy": 250}),
     "intrinsics.width: missing required field"),
    (lambda d: d.__setitem__("focal_scale", [1, 0, 2]), "focal_scale"),
    (lambda d: d.__setitem__("timestamps", [0, 2, 1]), "not strictly increasing"),
    (lambda d: d.__setitem__("frmaes", []), "frmaes: unknown field"),
])
def test_camera_json_errors_name_the_problem(mutate, needle):
    data = {"frames": _good_frames()}
    mutate(data)
    with pytest.raises(ControlFileError) as info:
        parse_camera_json(data, "cam.json")
    message = str(info.value)
    assert message.startswith("cam.json") and needle in message and "\n" not in message


def test_camera_file_errors(tmp_path):
    with pytest.raises(ControlFileError, match="does not exist"):
        load_camera(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"frames": [}')
    with pytest.raises(ControlFileError, match="invalid JSON"):
        load_camera(bad)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 20)
    with pytest.raises(ControlFileError, match="not UTF-8"):
        load_camera(binary)
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(ControlFileError, match="folder"):
        load_camera(tmp_path / "dir.json")
    wrong = tmp_path / "wrong.json"
    wrong.write_text('"orbit"')
    with pytest.raises(ControlFileError, match="expected an object"):
        load_camera(wrong)


def test_re10k_errors():
    row = "0 0.5 0.8 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 0"
    with pytest.raises(ControlFileError, match="at least 2"):
        parse_re10k("http://x\n" + row, "a.txt")
    with pytest.raises(ControlFileError, match="line 2: has 18 numbers"):
        parse_re10k("http://x\n" + row.rsplit(" ", 1)[0] + "\n" + row, "a.txt")
    with pytest.raises(ControlFileError, match="non-finite|not a finite"):
        parse_re10k(row + "\n" + row.replace("0.8", "nan").replace("0 0.5", "1 0.5", 1), "a.txt")
    refl = "1 0.5 0.8 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 -1 0"
    with pytest.raises(ControlFileError, match="det R = -1"):
        parse_re10k(row + "\n" + refl, "a.txt")
    with pytest.raises(ControlFileError, match="not strictly increasing"):
        parse_re10k(row + "\n" + row, "a.txt")


def test_motionctrl_json(tmp_path):
    rt = [np.hstack([_rot_y(0.05 * i), [[0.1 * i], [0], [0]]]).ravel().tolist() for i in range(4)]
    path = tmp_path / "mc.json"
    path.write_text(json.dumps(rt))
    traj = load_camera(path)
    assert len(traj) == 4 and torch.allclose(traj.w2c[0], torch.eye(4, dtype=torch.float64))
    assert torch.allclose(traj.w2c[3, :3, :3], torch.from_numpy(_rot_y(0.15)), atol=1e-12)
    with pytest.raises(ControlFileError, match=r"\[1\]: has 11 numbers, expected 12"):
        parse_motionctrl([rt[0], rt[1][:11]], "mc.json")
    with pytest.raises(ControlFileError, match="at least 2"):
        parse_motionctrl([rt[0]], "mc.json")
    with pytest.raises(ControlFileError, match="empty list"):
        parse_motionctrl([], "mc.json")


# hypothesis: any garbage JSON value either parses into a valid trajectory or raises ControlFileError
json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True, allow_infinity=True) | st.integers() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["frames", "R", "t", "w2c", "intrinsics", "fx", "units", "timestamps", "x"]), children,
        max_size=4),
    max_leaves=20)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(json_values)
def test_camera_parsers_never_crash(value):
    for parse in (parse_camera_json, parse_motionctrl):
        try:
            traj = parse(value, "h.json")
        except ControlFileError as error:
            assert str(error).startswith("h.json") and "\n" not in str(error)
        else:
            assert torch.allclose(traj.w2c[0], torch.eye(4, dtype=torch.float64))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.floats(-math.pi, math.pi), st.floats(-3, 3), st.floats(-3, 3)), min_size=2, max_size=6),
       st.integers(0, 5), st.sampled_from([float("nan"), float("inf"), -float("inf")]))
def test_poses_with_a_nonfinite_value_are_rejected(poses, where, bad):
    mats = np.stack([np.vstack([np.hstack([_rot_y(a), [[x], [0], [z]]]), [0, 0, 0, 1]]) for a, x, z in poses])
    good = validate_poses(mats, "p")
    assert torch.allclose(torch.linalg.det(good[:, :3, :3]), torch.ones(len(mats), dtype=torch.float64))
    i = where % len(mats)
    mats[i, where % 3, 3] = bad
    with pytest.raises(ControlFileError, match=rf"frames\[{i}\]: contains a non-finite"):
        validate_poses(mats, "p")


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.floats(-math.pi, math.pi), st.integers(0, 2))
def test_reflections_are_rejected(angle, axis):
    flip = np.eye(3)
    flip[axis, axis] = -1
    mats = np.tile(np.eye(4), (2, 1, 1))
    mats[1, :3, :3] = _rot_y(angle) @ flip
    with pytest.raises(ControlFileError, match=r"frames\[1\].*det R = -1"):
        validate_poses(mats, "p")


# ---------------------------------------------------------------- presets

def test_preset_files_match_code_and_load():
    names = preset_file_names()
    for required in ("orbit", "pan-left", "zoom-in", "dolly-out", "spin"):
        assert required in names
    for name in names:
        path = REPO / "configs" / "camera" / f"{name}.json"
        assert path.read_text() == preset_json(name), f"{path} is stale: regenerate with write_camera_preset_files"
        from_file, from_code = load_camera(path), camera_preset(name)
        assert torch.allclose(from_file.w2c, from_code.w2c, atol=1e-8)
        assert from_file.scene_depth == from_code.scene_depth
    assert set(list_camera_presets()) >= {"static", "pan-left", "tilt-up", "roll-cw", "zoom-in", "dolly-in",
                                          "truck-left", "pedestal-up", "orbit"}


CENTRE, RIGHT, UP = (0.0, 0.0, 2.0), (0.5, 0.0, 2.0), (0.0, -0.5, 2.0)


@pytest.mark.parametrize("name, point, axis, sign", [
    ("pan-left", CENTRE, 0, +1), ("pan-right", CENTRE, 0, -1),
    ("tilt-up", CENTRE, 1, +1), ("tilt-down", CENTRE, 1, -1),
    ("truck-left", CENTRE, 0, +1), ("truck-right", CENTRE, 0, -1),
    ("pedestal-up", CENTRE, 1, +1), ("pedestal-down", CENTRE, 1, -1),
    ("roll-cw", RIGHT, 1, -1), ("roll-ccw", RIGHT, 1, +1), ("spin", RIGHT, 1, -1),
    ("zoom-in", RIGHT, 0, +1), ("zoom-out", RIGHT, 0, -1),
    ("dolly-in", RIGHT, 0, +1), ("dolly-out", RIGHT, 0, -1),
    ("zoom-in", UP, 1, -1), ("dolly-in", UP, 1, -1),
])
def test_presets_move_points_as_named(name, point, axis, sign):
    """OpenCV: x right, y down. pan-left: camera yaws left so image content moves right, etc."""
    traj = camera_preset(name)
    uv = _project(traj, point)
    delta = uv[-1, axis] - uv[0, axis]
    assert sign * delta > 1.0, (name, uv[0], uv[-1])
    # monotone: each step moves the same way
    steps = np.diff(uv[:, axis])
    assert (sign * steps >= -1e-9).all()


def test_orbit_keeps_lookat_at_centre_and_moves_camera():
    for name, sx in (("orbit-right", +1), ("orbit-left", -1), ("orbit", +1)):
        traj = camera_preset(name, degrees=40, depth=3)
        assert traj.scene_depth == 3
        uv = _project(traj, (0.0, 0.0, 3.0), 64, 64)
        assert np.allclose(uv, 31.5, atol=1e-9)
        centres = traj.centers.numpy()
        assert sx * centres[-1, 0] > 0.5
        assert np.allclose(np.linalg.norm(centres - [0, 0, 3], axis=1), 3.0)
        # the camera turned 40 degrees about y
        angle = math.degrees(math.acos(np.clip((np.trace(traj.w2c[-1, :3, :3].numpy()) - 1) / 2, -1, 1)))
        assert angle == pytest.approx(40)


def test_zoom_changes_focal_only_and_static_is_static():
    zoom = camera_preset("zoom-in", factor=2.0, frames=5)
    assert torch.allclose(zoom.w2c, torch.eye(4, dtype=torch.float64).expand(5, 4, 4))
    K = zoom.intrinsics_all(32, 48)
    assert K[-1, 0, 0] / K[0, 0, 0] == pytest.approx(2.0) and K[-1, 0, 2] == K[0, 0, 2]
    assert zoom.has_varying_intrinsics
    assert zoom.resample(9).focal_scale[-1] == pytest.approx(2.0)
    static = camera_preset("static")
    assert torch.allclose(static.w2c, torch.eye(4, dtype=torch.float64).expand_as(static.w2c))
    # default intrinsics: 60 degree horizontal field of view
    K0 = static.intrinsics(48, 64)
    assert math.degrees(2 * math.atan(32 / K0[0, 0].item())) == pytest.approx(60)
    assert K0[1, 1].item() == pytest.approx(K0[0, 0].item())


def test_difficult_variants_are_irregular_same_path():
    easy, hard = camera_preset("pan-left"), camera_preset("pan-left-difficult")
    assert torch.allclose(easy.w2c[-1], hard.w2c[-1], atol=1e-12)
    yaw = lambda t: np.arctan2(t.w2c[:, 0, 2].numpy(), t.w2c[:, 0, 0].numpy())  # noqa: E731
    assert np.allclose(np.diff(yaw(easy)), np.diff(yaw(easy))[0])
    steps = np.abs(np.diff(yaw(hard)))
    assert steps.max() > 3 * steps.min() and (steps > 0).all()
    assert torch.equal(camera_preset("pan-left", difficult=1, seed=0).w2c, hard.w2c)
    assert not torch.equal(camera_preset("pan-left", difficult=1, seed=1).w2c, hard.w2c)


def test_preset_spec_syntax():
    assert parse_preset_spec("orbit:degrees=45,depth=3") == ("orbit", {"degrees": 45.0, "depth": 3.0})
    traj = load_camera("orbit:degrees=45,depth=3,frames=7", num_frames=10)
    assert len(traj) == 10 and traj.scene_depth == 3
    assert load_camera("tilt-up-difficult").name == "tilt-up-difficult"
    with pytest.raises(ControlFileError, match="unknown camera preset"):
        camera_preset("orbitt")
    with pytest.raises(ControlFileError, match="orbit.*degres: unknown parameter"):
        load_camera("orbit:degres=3")
    with pytest.raises(ControlFileError, match="is not key=value"):
        load_camera("orbit:degrees")
    with pytest.raises(ControlFileError, match="is not a number"):
        load_camera("orbit:degrees=lots")
    with pytest.raises(ControlFileError, match="depth: is -1, must be > 0"):
        load_camera("orbit:depth=-1")
    with pytest.raises(ControlFileError, match="does not exist and is not a preset"):
        load_camera("panleft")


def test_camera_json_roundtrip_with_per_frame_intrinsics():
    traj = camera_preset("orbit", frames=4)
    K = torch.tensor([[0.9, 0, 0.5], [0, 1.2, 0.45], [0, 0, 1]], dtype=torch.float64).repeat(4, 1, 1)
    K[:, 0, 0] = torch.tensor([0.9, 1.0, 1.1, 1.2])
    traj = CameraTrajectory(w2c=traj.w2c, K_normalized=K, timestamps=torch.tensor([0.0, 1, 3, 7]), name="t")
    back = parse_camera_json(json.loads(json.dumps(traj.to_json())), "t.json")
    assert torch.allclose(back.w2c, traj.w2c, atol=1e-8) and torch.allclose(back.K_normalized, K)
    assert torch.equal(back.timestamps, traj.timestamps)
    # resample follows the timestamps: at time 3.5 (of 7) it is between frames 2 and 3
    assert back.resample(3).K_normalized[1, 0, 0].item() == pytest.approx(1.1 + 0.1 * 0.5 / 4)
    px = parse_camera_json({"intrinsics": {"units": "px", "fx": 100, "fy": 100, "cx": 63.5, "cy": 31.5,
                                           "width": 128, "height": 64}, "frames": _good_frames(2)}, "p.json")
    assert torch.allclose(px.intrinsics(64, 128), torch.tensor([[100, 0, 63.5], [0, 100, 31.5], [0, 0, 1.0]],
                                                               dtype=torch.float64))
    assert torch.allclose(px.intrinsics(32, 64)[:2], torch.tensor([[50, 0, 31.5], [0, 50, 15.5]], dtype=torch.float64))
