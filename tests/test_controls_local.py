"""Local control files: arrows, drags (JSON + Tora/MotionCtrl txt), pose, masks, reference video."""
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from flowctrl.controls import (
    Arrow, Drag, PoseSequence, ease, load_arrows, load_drags, load_mask, load_pose, load_reference_video,
    parse_arrows, parse_drag_txt, parse_drags, parse_pose, resize_mask,
)
from flowctrl.controls.arrows import arrows_to_json
from flowctrl.controls.drags import drags_to_json
from flowctrl.controls.masks import save_mask
from flowctrl.errors import ControlFileError

SIZE = (60, 80)  # (H, W)


# ---------------------------------------------------------------- easing and arrows

def test_easing_endpoints_and_shape():
    u = torch.linspace(0, 1, 101, dtype=torch.float64)
    for name in ("linear", "ease-in-out"):
        e = ease(u, name)
        assert e[0] == 0 and e[-1] == 1 and bool((e.diff() >= 0).all())
    smooth = ease(u, "ease-in-out")
    assert smooth[50].item() == pytest.approx(0.5)
    # zero speed at both ends, pi/2 times linear speed in the middle
    assert (smooth[1] - smooth[0]).item() < 1e-3 and (smooth[-1] - smooth[-2]).item() < 1e-3
    assert ((smooth[51] - smooth[49]) / 0.02).item() == pytest.approx(math.pi / 2, rel=1e-3)
    with pytest.raises(ValueError):
        ease(u, "bounce")


@pytest.mark.parametrize("easing", ["linear", "ease-in-out"])
def test_arrow_track(easing):
    arrow = Arrow(start=(10, 20), end=(30, 10), strength=1.5, easing=easing)
    track = arrow.track(9)
    assert track.shape == (9, 2) and track.dtype == torch.float32
    assert torch.equal(track[0], torch.zeros(2))
    assert torch.allclose(track[-1], torch.tensor([30.0, -15.0]))
    mid = track[4]
    assert torch.allclose(mid, torch.tensor([15.0, -7.5]), atol=1e-5)  # both easings are half-way at t = 1/2
    if easing == "ease-in-out":
        linear = Arrow(start=(10, 20), end=(30, 10), strength=1.5).track(9)
        assert track[1].norm() < 0.5 * linear[1].norm() and track[3].norm() < linear[3].norm()
        assert track[5].norm() > linear[5].norm()


def test_arrows_json_units_and_roundtrip(tmp_path):
    data = {"units": "normalized", "arrows": [{"start": [0.5, 0.5], "end": [1.0, 0.0], "easing": "ease-in-out"}]}
    arrows = parse_arrows(data, "a.json", SIZE)
    assert arrows[0].start == (39.5, 29.5) and arrows[0].end == (79.5, -0.5)
    back = parse_arrows(arrows_to_json(arrows), "b.json", SIZE)
    assert back[0].start == arrows[0].start and back[0].easing == "ease-in-out"
    # bare list, pixel units; a per-arrow mask path relative to the JSON file
    save_mask(tmp_path / "m.png", torch.ones(1, 30, 40, dtype=torch.bool))
    (tmp_path / "a.json").write_text(json.dumps([{"start": [1, 2], "end": [3, 4], "mask": "m.png"}]))
    arrows = load_arrows(tmp_path / "a.json", SIZE)
    assert arrows[0].mask.shape == (1, 60, 80) and bool(arrows[0].mask.all())


@pytest.mark.parametrize("data, needle", [
    ({"arrows": [{"end": [1, 2]}]}, "arrows[0].start: missing required field"),
    ({"arrows": [{"start": [1, float("nan")], "end": [1, 2]}]}, "arrows[0].start[1]: is nan, not a finite number"),
    ({"arrows": [{"start": [1, 2], "end": [100, 2]}]}, "arrows[0].end: [100, 2] is outside the 80x60 image"),
    ({"units": "normalized", "arrows": [{"start": [0.1, 1.2], "end": [0, 0]}]}, "outside [0, 1]"),
    ({"arrows": [{"start": "1, 2", "end": [1, 2]}]}, "arrows[0].start: is a string, expected a list"),
    ({"arrows": {"start": [1, 2]}}, "arrows: is an object, expected a list"),
    ({"arrows": [{"start": [1, 2, 3], "end": [1, 2]}]}, "has 3 numbers, expected 2"),
    ({"arrows": [{"start": [1, 2], "end": [1, 2], "strength": -1}]}, "strength: is -1, must be >= 0"),
    ({"arrows": [{"start": [1, 2], "end": [1, 2], "easing": "bounce"}]}, "easing: is 'bounce'"),
    ({"arrows": [{"start": [1, 2], "end": [1, 2], "strenght": 2}]}, "strenght: unknown field"),
    ({"arrows": []}, "needs at least 1"),
    ({"units": "cm", "arrows": []}, "units: is 'cm'"),
    ("arrows", "is a string, expected an object"),
    ({"arrows": [{"start": [1, 2], "end": [1, 2], "mask": "missing.png"}]}, "arrows[0].mask: 'missing.png' does not exist"),
])
def test_arrow_errors_name_the_problem(data, needle, tmp_path):
    with pytest.raises(ControlFileError) as info:
        parse_arrows(data, "a.json", SIZE, tmp_path)
    assert str(info.value).startswith("a.json: ") and needle in str(info.value), str(info.value)


def test_unreadable_files(tmp_path):
    for load in (load_arrows, load_drags, load_pose):
        with pytest.raises(ControlFileError, match="does not exist"):
            load(tmp_path / "nothing.json")
        bad = tmp_path / "bad.json"
        bad.write_text("{\n  'single quotes': 1}")
        with pytest.raises(ControlFileError, match=r"bad.json: line 2 column 3: invalid JSON"):
            load(bad)
        binary = tmp_path / "bin.json"
        binary.write_bytes(bytes(range(128, 256)))
        with pytest.raises(ControlFileError, match="not UTF-8"):
            load(binary)


coords = st.floats(allow_nan=True, allow_infinity=True, width=32) | st.integers(-10**6, 10**6) | st.text(max_size=3) | st.none()
point = st.lists(coords, min_size=0, max_size=4)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(st.fixed_dictionaries({"start": point, "end": point},
                                      optional={"strength": coords, "easing": st.sampled_from(["linear", "ease-in-out", "x"])}),
                max_size=3),
       st.sampled_from(["px", "normalized"]))
def test_arrow_parser_accepts_exactly_the_valid_files(items, units):
    """Property: the parser returns arrows iff every value is valid, and they are on the image."""
    def ok_point(p):
        if len(p) != 2 or any(isinstance(v, (str, type(None))) or not math.isfinite(v) for v in p):
            return False
        hi = (1, 1) if units == "normalized" else (SIZE[1] - 0.5, SIZE[0] - 0.5)
        lo = 0 if units == "normalized" else -0.5
        return lo <= p[0] <= hi[0] and lo <= p[1] <= hi[1]

    def ok(item):
        s = item.get("strength", 1.0)
        return (ok_point(item["start"]) and ok_point(item["end"]) and item.get("easing", "linear") != "x"
                and not isinstance(s, (str, type(None))) and math.isfinite(s) and s >= 0)

    expected = bool(items) and all(ok(i) for i in items)
    try:
        arrows = parse_arrows({"units": units, "arrows": items}, "p.json", SIZE)
    except ControlFileError as error:
        assert not expected, str(error)
        assert str(error).startswith("p.json: ") and "\n" not in str(error)
    else:
        assert expected and len(arrows) == len(items)
        for a in arrows:
            for x, y in (a.start, a.end):
                assert -0.5 <= x <= SIZE[1] - 0.5 and -0.5 <= y <= SIZE[0] - 0.5


# ---------------------------------------------------------------- drags

def test_pchip_track_hits_points_and_does_not_overshoot():
    pts = np.array([[10, 10], [20, 12], [22, 30], [50, 31], [51, 31]], dtype=np.float64)
    drag = Drag(points=pts, radius=5)
    T = 17  # knots at evenly spaced times 0, 1/4, ... fall on frames 0, 4, 8, 12, 16
    pos = drag.positions(T)
    assert np.allclose(pos[::4], pts, atol=1e-12)
    track = drag.track(T)
    assert torch.equal(track[0], torch.zeros(2))
    assert torch.allclose(track[::4], torch.from_numpy(pts - pts[0]).float(), atol=1e-5)
    # monotone data stays monotone (no overshoot past 31 in y nor below 10 in x)
    assert (np.diff(pos[:, 0]) >= -1e-12).all() and (np.diff(pos[:, 1]) >= -1e-12).all()
    assert pos[:, 1].max() <= 31 + 1e-12
    # explicit times: knot at t = 0.25 is frame 2 of 9
    timed = Drag(points=pts[:3], times=[0.0, 0.25, 1.0])
    assert np.allclose(timed.positions(9)[2], pts[1])
    # two points: a straight line
    line = Drag(points=[[0, 0], [8, 4]]).positions(5)
    assert np.allclose(line, [[0, 0], [2, 1], [4, 2], [6, 3], [8, 4]])


@settings(max_examples=80, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.floats(0, 79), st.floats(0, 59)), min_size=2, max_size=6), st.integers(0, 4))
def test_pchip_passes_through_any_points(points, extra):
    pts = np.array(points)
    k = len(pts) - 1
    T = k * (extra + 1) + 1  # every knot lands on a frame
    pos = Drag(points=pts).positions(T)
    assert np.allclose(pos[:: extra + 1], pts, atol=1e-9)
    lo, hi = pts.min(0), pts.max(0)
    assert (pos >= lo - 1e-9).all() and (pos <= hi + 1e-9).all()  # PCHIP stays inside the data range


def test_drag_files(tmp_path):
    (tmp_path / "d.txt").write_text("# Tora track\n10, 20\n15 25\n[20, 30]\n\n(25;35)\n")
    drags = load_drags(tmp_path / "d.txt", SIZE)
    assert len(drags) == 1 and np.allclose(drags[0].points, [[10, 20], [15, 25], [20, 30], [25, 35]])
    data = {"units": "normalized", "drags": [{"points": [[0, 0], [0.5, 0.5]], "radius": 0.1, "times": [0, 1]}]}
    (tmp_path / "d.json").write_text(json.dumps(data))
    d = load_drags(tmp_path / "d.json", SIZE)[0]
    assert np.allclose(d.points, [[-0.5, -0.5], [39.5, 29.5]]) and d.radius == pytest.approx(0.1 * math.sqrt(4800))
    back = parse_drags(drags_to_json([d]), "x", SIZE)[0]
    assert np.allclose(back.points, d.points) and back.radius == d.radius
    single = parse_drags({"points": [[1, 1], [2, 2]]}, "s.json", SIZE)
    assert len(single) == 1


@pytest.mark.parametrize("text, needle", [
    ("1, 2\n", "has 1 points, a drag needs at least 2"),
    ("1, 2\n3, x\n", "line 2: 'x' is not a number"),
    ("1, 2\n3 4 5\n", "line 2: '3 4 5' is not an 'x, y' pair"),
    ("1, 2\nnan, 4\n", "line 2: is nan, not a finite number"),
    ("1, 2\n300, 4\n", "line 2: [300, 4] is outside the 80x60 image"),
])
def test_drag_txt_errors(text, needle):
    with pytest.raises(ControlFileError) as info:
        parse_drag_txt(text, "d.txt", SIZE)
    assert needle in str(info.value), str(info.value)


@pytest.mark.parametrize("data, needle", [
    ({"drags": [{"radius": 3}]}, "drags[0].points: missing required field"),
    ({"drags": [{"points": [[1, 2]]}]}, "has 1 entries, needs at least 2"),
    ({"drags": [{"points": [[1, 2], [1, -9]]}]}, "points[1]: [1, -9] is outside"),
    ({"drags": [{"points": [[1, 2], [3, 4]], "radius": 0}]}, "radius: is 0, must be > 0"),
    ({"drags": [{"points": [[1, 2], [3, 4]], "times": [0, 0.5]}]}, "times must rise strictly from 0"),
    ({"drags": [{"points": [[1, 2], [3, 4]], "times": [0]}]}, "has 1 numbers, expected 2"),
    ({"drags": 5}, "drags: is a number, expected a list"),
])
def test_drag_json_errors(data, needle):
    with pytest.raises(ControlFileError) as info:
        parse_drags(data, "d.json", SIZE)
    assert str(info.value).startswith("d.json: ") and needle in str(info.value), str(info.value)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(st.lists(st.text(alphabet="0123456789.,- \tnaxe#[]", max_size=12), max_size=6))
def test_drag_txt_parser_never_crashes(lines):
    try:
        drags = parse_drag_txt("\n".join(lines), "d.txt", SIZE)
    except ControlFileError as error:
        assert str(error).startswith("d.txt") and "\n" not in str(error)
    else:
        assert len(drags[0].points) >= 2 and np.isfinite(drags[0].points).all()


# ---------------------------------------------------------------- pose

def _coco_frame(dx=0.0, c=0.9):
    return [[20 + j + dx, 10 + 2 * j, c] for j in range(17)]


def test_pose_coco17_and_openpose18_flat():
    data = {"skeleton": "coco17", "frames": [_coco_frame(), _coco_frame(6.0), _coco_frame(12.0)]}
    pose = parse_pose(data, "p.json", SIZE)
    assert pose.keypoints.shape == (3, 17, 2) and pose.skeleton == "coco17"
    starts, tracks, valid = pose.tracks(5)
    assert torch.allclose(starts[3], torch.tensor([23.0, 16.0]))
    assert torch.allclose(tracks[:, -1], torch.tensor([12.0, 0.0]).expand(17, 2)) and bool(valid.all())
    assert torch.allclose(tracks[:, 2], torch.tensor([6.0, 0.0]).expand(17, 2))
    flat = [v for kp in _coco_frame() for v in kp] + [0.0, 0.0, 0.0]  # 18 OpenPose keypoints, last missing
    op = parse_pose({"skeleton": "openpose18", "units": "px",
                     "frames": [{"pose_keypoints_2d": flat}, {"pose_keypoints_2d": flat}]}, "o.json", SIZE)
    assert op.keypoints.shape == (2, 18, 2) and op.confidence[0, 17] == 0 and len(op.limbs) == 17
    _, _, valid = op.tracks(3)
    assert not valid[17].any() and valid[:17].all()


@pytest.mark.parametrize("mutate, needle", [
    (lambda d: d.pop("frames"), "frames: missing required field"),
    (lambda d: d.__setitem__("skeleton", "smpl"), "skeleton: is 'smpl'"),
    (lambda d: d["frames"].pop(), "frames: has 1 entries, needs at least 2"),
    (lambda d: d["frames"][1].pop(), "frames[1]: has 16 keypoints, the skeleton has 17"),
    (lambda d: d["frames"][1][3].__setitem__(0, float("inf")), "frames[1][3][0]: is inf, not a finite number"),
    (lambda d: d["frames"][1][3].__setitem__(2, 1.5), "confidence: is 1.5"),
    (lambda d: d["frames"][1][3].__setitem__(0, 500), "[500, 16] is outside the 80x60 image"),
    (lambda d: d["frames"].__setitem__(0, [[0, 0, 0]] * 17), "frames[0]: has no visible keypoint"),
    (lambda d: d["frames"].__setitem__(1, "none"), "frames[1]: is a string, expected a list"),
])
def test_pose_errors(mutate, needle):
    data = {"skeleton": "coco17", "frames": [_coco_frame(), _coco_frame(2.0)]}
    mutate(data)
    with pytest.raises(ControlFileError) as info:
        parse_pose(data, "p.json", SIZE)
    assert str(info.value).startswith("p.json: ") and needle in str(info.value), str(info.value)


def test_pose_resample_and_resize():
    kp = torch.zeros(2, 17, 2)
    kp[1] = 10.0
    conf = torch.ones(2, 17)
    conf[1, 0] = 0.0
    seq = PoseSequence(kp, conf).resample(3)
    assert torch.allclose(seq.keypoints[1], torch.full((17, 2), 5.0)) and seq.confidence[1, 0] == 0
    big = PoseSequence(kp, conf).resized((60, 80), (120, 160))
    assert torch.allclose(big.keypoints[1], torch.full((17, 2), 20.5))


# ---------------------------------------------------------------- masks

def test_masks(tmp_path):
    from PIL import Image

    m = np.zeros((30, 40), np.uint8)
    m[10:20, 5:15] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    mask = load_mask(tmp_path / "m.png", SIZE)
    assert mask.shape == (1, 60, 80) and mask.dtype == torch.bool
    assert int(mask.sum()) == 4 * 100 and bool(mask[0, 20:40, 10:30].all())
    # RGBA brush: alpha decides
    rgba = np.zeros((30, 40, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[0:5, 0:5, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "brush.png")
    assert int(load_mask(tmp_path / "brush.png").sum()) == 25
    # downsampling keeps area (>= 50 % coverage), a 1-pixel stroke survives upsampling
    small = resize_mask(mask, (30, 40))
    assert torch.equal(small[0], torch.from_numpy(m > 0))
    line = torch.zeros(1, 10, 10, dtype=torch.bool)
    line[0, 5] = True
    assert resize_mask(line, (20, 20)).sum() == 40
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(ControlFileError, match="empty"):
        load_mask(tmp_path / "empty.png")
    Image.fromarray(m[:, :20]).save(tmp_path / "narrow.png")
    with pytest.raises(ControlFileError, match="aspect ratio"):
        load_mask(tmp_path / "narrow.png", SIZE)
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(ControlFileError, match="cannot be read"):
        load_mask(tmp_path / "junk.png")
    with pytest.raises(ControlFileError, match="does not exist"):
        load_mask(tmp_path / "none.png")


# ---------------------------------------------------------------- reference video (PyAV)

def _write_clip(path, frames):
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=8)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "2"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def test_reference_video(tmp_path):
    n = 6
    frames = np.zeros((n, 32, 48, 3), np.uint8)
    for i in range(n):
        frames[i, :, :, 0] = 40 * i  # red ramp over time identifies the frame
        frames[i, :, :, 2] = 200
    path = tmp_path / "clip.mp4"
    _write_clip(path, frames)
    video = load_reference_video(path)
    assert video.shape == (n, 3, 32, 48) and video.dtype == torch.float32
    red = video[:, 0].mean((1, 2)) * 255
    assert torch.allclose(red, torch.arange(n) * 40.0, atol=6)
    resampled = load_reference_video(path, num_frames=11, size=(16, 24))
    assert resampled.shape == (11, 3, 16, 24)
    r2 = resampled[:, 0].mean((1, 2)) * 255
    assert abs(r2[0].item()) < 6 and abs(r2[-1].item() - 200) < 6 and bool((r2.diff() > -3).all())
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(ControlFileError, match="junk.mp4: cannot decode reference video"):
        load_reference_video(tmp_path / "junk.mp4")
    with pytest.raises(ControlFileError, match="does not exist"):
        load_reference_video(tmp_path / "none.mp4")


def test_sixteen_bit_mask_uses_half_the_full_range(tmp_path):
    from PIL import Image

    a = np.zeros((8, 8), np.uint16)
    a[:4] = 65535
    a[4:6] = 20000  # below half of 65535: outside
    Image.fromarray(a).save(tmp_path / "m16.png")
    mask = load_mask(tmp_path / "m16.png")
    assert int(mask.sum()) == 32 and bool(mask[0, :4].all())


json_leaf = st.none() | st.booleans() | st.floats(allow_nan=True, allow_infinity=True) | st.integers(-1000, 1000) | st.text(max_size=4)
json_any = st.recursive(json_leaf, lambda c: st.lists(c, max_size=5) | st.dictionaries(
    st.sampled_from(["drags", "points", "radius", "times", "units", "skeleton", "frames", "keypoints", "x"]), c,
    max_size=4), max_leaves=25)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(json_any)
def test_drag_and_pose_parsers_never_crash(value):
    """Property: any JSON value gives valid objects or a one-line ControlFileError naming the file."""
    for parse in (parse_drags, parse_pose):
        try:
            out = parse(value, "f.json", SIZE)
        except ControlFileError as error:
            assert str(error).startswith("f.json") and "\n" not in str(error)
        else:
            if parse is parse_drags:
                assert all(len(d.points) >= 2 and np.isfinite(d.points).all() for d in out)
            else:
                assert out.keypoints.shape[0] >= 2 and torch.isfinite(out.keypoints).all()


@settings(max_examples=50, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.floats(-5, 5), st.floats(-5, 5), st.floats(0, 1)), min_size=17, max_size=17),
       st.integers(0, 16), st.sampled_from(["nan", "inf", "range", "conf"]))
def test_pose_parser_rejects_one_bad_value(frame, j, kind):
    kps = [[20 + x, 20 + y, 0.5 + 0.5 * c] for x, y, c in frame]
    parse_pose({"frames": [kps, kps]}, "p.json", SIZE)  # valid
    bad = [list(k) for k in kps]
    bad[j] = {"nan": [float("nan"), 1, 1], "inf": [1, float("inf"), 1], "range": [20, 1e4, 1],
              "conf": [20, 20, 2.0]}[kind]
    with pytest.raises(ControlFileError, match=rf"p.json: frames\[1\]\[{j}\]"):
        parse_pose({"frames": [kps, bad]}, "p.json", SIZE)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=17, max_size=20),
                min_size=0, max_size=4))
def test_re10k_parser_never_crashes(rows):
    from flowctrl.controls import parse_re10k

    text = "https://youtube.com/x\n" + "\n".join(" ".join(repr(v) for v in r) for r in rows)
    try:
        traj = parse_re10k(text, "r.txt")
    except ControlFileError as error:
        assert str(error).startswith("r.txt") and "\n" not in str(error)
    else:
        assert torch.allclose(torch.linalg.det(traj.w2c[:, :3, :3]), torch.ones(len(traj), dtype=torch.float64))
