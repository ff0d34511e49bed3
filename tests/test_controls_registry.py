"""Local control kinds as a registry: a kind registered here (a "nudge": one pixel pushed by a fixed
offset over the clip) flows through bundles, files, resizing, stage 1, the preview and the CLI flags
without any change to flowctrl — the recipe of docs/CONTRACTS.md, "How to add a control"."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, List, Optional, Tuple

import numpy as np
import pytest
import torch
from PIL import Image

from flowctrl.controls import Controls
from flowctrl.controls._common import Size, err, expect_list, expect_object, number_list, reject_unknown, to_pixels
from flowctrl.controls.local import LocalControl
from flowctrl.controls.registry import local_control_entries, register, unregister
from flowctrl.errors import ControlFileError

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- the new kind (one module)
@dataclass
class Nudge:
    """Pixel ``at (x, y)`` moved linearly by ``by (dx, dy)`` pixels over the clip."""

    at: Tuple[float, float]
    by: Tuple[float, float]

    def resized(self, old_size: Size, new_size: Size) -> "Nudge":
        sy, sx = new_size[0] / old_size[0], new_size[1] / old_size[1]
        return replace(self, at=((self.at[0] + 0.5) * sx - 0.5, (self.at[1] + 0.5) * sy - 0.5),
                       by=(self.by[0] * sx, self.by[1] * sy))


class NudgeControl(LocalControl):
    many = True
    label = "nudge"

    def parse(self, value: Any, source: Any, image_size: Optional[Size], base_dir: Optional[Path]) -> List[Nudge]:
        items = value if isinstance(value, list) else expect_object(value, source, "(top level)", '{"nudges": []}').get("nudges")
        if isinstance(value, dict):
            reject_unknown(value, ("nudges",), source, "")
        out = []
        for i, item in enumerate(expect_list(items, source, "nudges", '[{"at": [x, y], "by": [dx, dy]}]', min_len=1)):
            item = expect_object(item, source, f"nudges[{i}]", '{"at": [x, y], "by": [dx, dy]}')
            if "at" not in item or "by" not in item:
                raise err(source, f"nudges[{i}]", "needs at and by", 'write {"at": [x, y], "by": [dx, dy]}')
            at = to_pixels(number_list(item["at"], source, f"nudges[{i}].at", 2), "px", image_size, source,
                           f"nudges[{i}].at")
            out.append(Nudge(at=at, by=tuple(number_list(item["by"], source, f"nudges[{i}].by", 2))))
        return out

    def tracks(self, item: Nudge, num_frames: int):
        progress = torch.linspace(0, 1, num_frames)[:, None]
        track = progress * torch.tensor(item.by, dtype=torch.float32)[None]
        return track[None], torch.tensor(item.at, dtype=torch.float32)[None], None


CONTROL = NudgeControl()


@pytest.fixture
def nudges():
    """The registration line a new module adds to flowctrl/controls/registry.py, undone after the test."""
    register("nudges", __name__, help="nudges JSON (test kind)")
    yield
    unregister("nudges")


def _bundle(tmp_path: Path, nudges: Any, **more: Any) -> Path:
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps({"image_size": [32, 48], "nudges": nudges, **more}))
    return path


# ----------------------------------------------------------------------------- tests
def test_builtin_kinds_are_registered_in_order_and_the_registry_needs_no_torch():
    assert [e.field for e in local_control_entries()][:3] == ["arrows", "drags", "pose"]
    code = "import sys, flowctrl.controls.registry as r; r.get_control; assert 'torch' not in sys.modules, 'torch'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr


def test_unregistered_kind_is_an_unknown_bundle_field(tmp_path):
    with pytest.raises(ControlFileError, match="nudges: unknown field"):
        Controls.from_bundle(_bundle(tmp_path, [{"at": [10, 20], "by": [6, 0]}]))


def test_new_kind_from_bundle_files_and_resize(tmp_path, nudges):
    ctl = Controls.from_bundle(_bundle(tmp_path, [{"at": [10, 20], "by": [6, -2]}]))
    assert ctl.nudges == [Nudge(at=(10.0, 20.0), by=(6.0, -2.0))] and ctl.has_local and not ctl.is_empty()
    assert ctl.arrows == [] and ctl.pose is None  # the built-in kinds are untouched
    (tmp_path / "n.json").write_text(json.dumps({"nudges": [{"at": [10, 20], "by": [6, -2]}]}))
    from_file = Controls.from_bundle(_bundle(tmp_path, "n.json"))
    assert from_file.nudges == ctl.nudges
    assert Controls.from_files(nudges=tmp_path / "n.json", image_size=(32, 48)).nudges == ctl.nudges
    assert Controls(image_size=(32, 48)).nudges == []
    half = ctl.resized(16, 24).nudges[0]
    assert half.at == pytest.approx((4.75, 9.75)) and half.by == pytest.approx((3.0, -1.0))
    flags_win = ctl.updated(nudges=[Nudge(at=(1, 1), by=(0, 0))])
    assert flags_win.nudges[0].at == (1, 1) and ctl.nudges[0].at == (10.0, 20.0)
    with pytest.raises(ControlFileError, match=r"bundle.json: nudges: nudges\[0\].at"):  # the kind's own errors
        Controls.from_bundle(_bundle(tmp_path, [{"at": [99, 20], "by": [1, 1]}]))
    with pytest.raises(TypeError, match="wiggles"):
        Controls.from_files(wiggles="w.json")


def test_new_kind_moves_its_pixel_in_stage1(tmp_path, nudges):
    from flowctrl.pipelines.stage1 import compute_unified_flow

    ctl = Controls.from_bundle(_bundle(tmp_path, [{"at": [10, 20], "by": [6, -2]}]))
    image = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    uf = compute_unified_flow(image, ctl, 5, segment="none")
    assert torch.allclose(uf.flow[0, :, :, 20, 10], torch.linspace(0, 1, 5)[:, None] * torch.tensor([6.0, -2.0]),
                          atol=1e-4)
    assert float(uf.local_mask[0, -1, 0, 20, 10]) > 0
    # at half the size the pixel and its motion scale with the image
    small = compute_unified_flow(image[..., ::2, ::2], ctl, 5, segment="none")
    assert torch.allclose(small.flow[0, -1, :, 10, 5], torch.tensor([3.0, -1.0]), atol=1e-3)


def test_new_kind_is_drawn_and_listed_as_cli_flags(tmp_path, nudges):
    from flowctrl.cli import build_parser
    from flowctrl.flow.viz import draw_controls

    ctl = Controls(extra_local={"nudges": [Nudge(at=(10, 20), by=(20, 0))]}, image_size=(32, 48))
    out = draw_controls(torch.zeros(3, 32, 48), ctl)
    assert torch.allclose(out[:, 20, 10], torch.tensor([200, 60, 200]) / 255.0, atol=0.02)  # the start dot
    assert float(out[0, 20, 25]) > 0.5 and float(out[0, 5, 25]) == 0  # the line to where it ends, nothing else
    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices
    for command in ("generate", "flow"):
        assert "--nudges" in choices[command].format_help() and "nudges JSON (test kind)" in choices[command].format_help()


def test_new_kind_through_the_flow_and_generate_commands(tmp_path, nudges):
    from flowctrl.cli import main

    Image.fromarray(np.full((32, 48, 3), 90, np.uint8)).save(tmp_path / "img.png")
    (tmp_path / "n.json").write_text(json.dumps([{"at": [10, 20], "by": [6, -2]}]))
    assert main(["flow", "--image", str(tmp_path / "img.png"), "--nudges", str(tmp_path / "n.json"), "--frames", "5",
                 "--segment", "none", "--size", "48x32", "--no-viz", "-q", "-o", str(tmp_path / "f.npy")]) == 0
    flow = np.load(tmp_path / "f.npy").reshape(5, 2, 32, 48)
    np.testing.assert_allclose(flow[-1, :, 20, 10], [6.0, -2.0], atol=1e-3)
    # a bundle entry is overridden by the flag, as for the built-in kinds
    bundle = _bundle(tmp_path, [{"at": [30, 5], "by": [0, 9]}])
    assert main(["flow", "--image", str(tmp_path / "img.png"), "--controls", str(bundle), "--nudges",
                 str(tmp_path / "n.json"), "--frames", "5", "--segment", "none", "--size", "48x32", "--no-viz", "-q",
                 "-o", str(tmp_path / "g.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "g.npy").reshape(5, 2, 32, 48)[-1, :, 20, 10], [6.0, -2.0], atol=1e-3)
    # generate --preview draws it; its file is an input no output may take
    assert main(["generate", "--image", str(tmp_path / "img.png"), "--nudges", str(tmp_path / "n.json"),
                 "--segment", "none", "--preview", "-o", str(tmp_path / "p.png")]) == 0
    preview = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    scale = preview.shape[0] / 32
    assert np.abs(preview[round(20 * scale), round(10 * scale)].astype(int) - [200, 60, 200]).max() < 40
    assert main(["flow", "--image", str(tmp_path / "img.png"), "--nudges", str(tmp_path / "n.json"), "--frames", "5",
                 "--no-viz", "-q", "-o", str(tmp_path / "n.json")]) == 2
    assert json.loads((tmp_path / "n.json").read_text())[0]["at"] == [10, 20]


def test_app_builds_controls_of_any_registered_kind(tmp_path, nudges):
    from flowctrl.app.session import ArrowSketch, build_controls

    (tmp_path / "n.json").write_text(json.dumps([{"at": [10, 20], "by": [6, -2]}]))
    ctl = build_controls((32, 48), ArrowSketch().click(1, 1).click(5, 5),
                         control_files={"nudges": str(tmp_path / "n.json")})
    assert ctl.nudges == [Nudge(at=(10.0, 20.0), by=(6.0, -2.0))] and len(ctl.arrows) == 1


def test_builtin_kinds_implement_the_interface():
    from flowctrl.controls import Arrow, Drag, load_pose
    from flowctrl.controls.registry import get_control

    arrow, drag, pose = get_control("arrows"), get_control("drags"), get_control("pose")
    tracks, starts, valid = arrow.tracks(Arrow(start=(3, 4), end=(13, 0), strength=0.5), 5)
    assert tracks.shape == (1, 5, 2) and valid is None and torch.allclose(starts, torch.tensor([[3.0, 4.0]]))
    assert torch.allclose(tracks[0, -1], torch.tensor([5.0, -2.0]))
    assert arrow.region(Arrow(start=(3, 4), end=(13, 0)), 8, 16) is None
    region = drag.region(Drag(points=[[8, 4], [10, 4]], radius=2.0), 8, 16)
    disc = region["region"][0]
    assert bool(disc[4, 8]) and bool(disc[4, 10]) and not bool(disc[4, 11]) and int(disc.sum()) == 13  # |p - c| <= 2
    from flowctrl.flow.densify import THRESHOLD_R  # the drag's motion fades to R at its radius (eq. 7)

    assert region["radius"] == 2.0 and np.exp(-(2.0 / region["sigma"]) ** 2) == pytest.approx(THRESHOLD_R)
    seq = load_pose(REPO / "examples" / "pose.json")
    tracks, starts, valid = pose.tracks(seq, 6)
    n = len(seq.keypoints[0]) + 8 * len(seq.limbs)
    assert tracks.shape == (n, 6, 2) and starts.shape == (n, 2) and valid.shape == (n, 6)
    assert torch.allclose(tracks[:, 0], torch.zeros(n, 2))
    assert len(pose.seeds(tracks, starts, valid)) == min(16, int(valid[:, 0].sum()))
    assert arrow.many and drag.many and pose.many is False
