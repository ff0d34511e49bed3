"""Property-based fuzzing (hypothesis) of every control-file reader and of the CLI's options.

The property is the README's promise itself, not a particular message: for *any* input,

* a reader returns a valid object or raises :class:`~flowctrl.errors.FlowCtrlError` with a
  one-line message (never another exception, never a hang);
* ``flowctrl generate`` / ``flowctrl flow`` exit 0 (writing exactly their outputs) or exit 2 with
  exactly one stderr line, no traceback, no file left behind and every input byte-for-byte unchanged.

Hostile values are mutations of the valid example files: one leaf (or subtree) is replaced by a value
from a list of known troublemakers (1e308, 1e-300, huge integers, NaN text, paths that escape, wrong
types, deep nesting). The runs are derandomized (the same cases in CI every time);
``FLOWCTRL_FUZZ_EXAMPLES=2000`` explores further.
"""
from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import tempfile
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any, List, Tuple

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st
from PIL import Image

from flowctrl.cli import main
from flowctrl.controls import Controls, load_arrows, load_camera, load_drags, load_pose
from flowctrl.errors import FlowCtrlError

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
N = int(os.environ.get("FLOWCTRL_FUZZ_EXAMPLES", "0"))


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=N or examples, deadline=None, derandomize=not N, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ------------------------------------------------------------------------------------ strategies

TROUBLE: List[Any] = [
    1e308, -1e308, 1e-300, -1e-300, 0, -1, 10**400, -(10**30), 1e6 + 1, 2.5, "NaN", "Infinity", "-inf", "1e999", "",
    " ", "a\nb", "../../../etc/passwd", "/etc/passwd", "/dev/zero", "~", ".", "mask.png", True, False, None, [], {},
    [1e308, 1e308], [0, 0], [-1, -1], [[0, 0], [1e308, 0]], [1, 2, 3], {"x": 1}, [[[[[]]]]], "orbit:degrees=1e308",
    "zoom-in:factor=0", "pan-left:frames=1", "linear", "ease-in-out", "px", "normalized", 7, 63.0, 0.5,
]
trouble = st.sampled_from(TROUBLE) | st.floats(allow_nan=False) | st.integers(min_value=-10**6, max_value=10**6)
nested = st.recursive(trouble, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(["start", "end", "points", "radius", "mask", "frames", "w2c", "R", "t", "fx", "units", "x"]),
    inner, max_size=3), max_leaves=8)


def leaf_paths(tree: Any, prefix: Tuple = ()) -> List[Tuple]:
    """Every position in a JSON tree (containers and leaves), as key paths."""
    out = [prefix]
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += leaf_paths(v, prefix + (k,))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += leaf_paths(v, prefix + (i,))
    return out


def nearby(value: Any) -> st.SearchStrategy:
    """Plausible edits of a number (so that many mutants stay valid and reach the flow math)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or abs(value) > 1e300:
        return st.just(value)
    return st.sampled_from([value, value * 2, value / 2, value + 1, -value, value * 1000, value * 1e-3, float(value)])


@st.composite
def mutated(draw: Any, example: Any) -> Any:
    """``example`` with zero to three positions edited: a plausible nearby number, or a hostile value
    (a leaf or a subtree replaced, keys added or dropped). Zero edits (the valid file) is the simplest case."""
    tree = copy.deepcopy(example)
    for _ in range(draw(st.integers(0, 3))):
        paths = leaf_paths(tree)[1:] or [()]
        path = draw(st.sampled_from(paths))
        current = tree
        for key in path:
            current = current[key]
        value = copy.deepcopy(draw(nearby(current) | nested))  # TROUBLE's lists and dicts must never be mutated
        if not path:
            tree = value
            continue
        parent = tree
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "replace", "drop", "add"]))
        if action == "drop" and isinstance(parent, (dict, list)) and len(parent) > 0:
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(["strenght", "mask", "radius", "times", "units", "image_size"]))] = value
        else:
            parent[path[-1]] = value
    return tree


def example(name: str) -> Any:
    return json.loads((EXAMPLES / name).read_text())


CAMERA = {"frames": [{"R": np.eye(3).tolist(), "t": [0, 0, 0]}, {"R": np.eye(3).tolist(), "t": [0.1, 0, 0]}],
          "intrinsics": {"units": "normalized", "fx": 0.9, "fy": 0.9, "cx": 0.5, "cy": 0.5},
          "timestamps": [0, 1], "focal_scale": [1, 1.1], "scene_depth": 2}
DRAGS = {"units": "px", "drags": [{"points": [[10, 10], [20, 15], [30, 20]], "radius": 8, "times": [0, 0.5, 1]}]}
ARROWS = {"units": "px", "arrows": [{"start": [10, 10], "end": [30, 20], "strength": 1.0, "easing": "linear",
                                     "mask": "mask.png"}]}
BUNDLE = {"image_size": [48, 64], "arrows": "a.json", "drags": DRAGS, "camera": "orbit:degrees=10",
          "mask": "mask.png", "static_mask": "mask.png", "strength": 2.0, "depth": "depth.npy"}


def make_inputs(folder: Path) -> None:
    """The files the hostile control files may name (valid ones): image, mask, depth, arrows."""
    Image.fromarray((np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)).save(folder / "img.png")
    mask = np.zeros((48, 64), np.uint8)
    mask[8:30, 8:40] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    np.save(folder / "depth.npy", np.full((48, 64), 2.0, np.float32))
    (folder / "a.json").write_text(json.dumps(ARROWS))


def snapshot(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def inputs_dir():
    with tempfile.TemporaryDirectory(prefix="flowctrl-fuzz-") as name:
        make_inputs(Path(name))
        yield Path(name)


def one_line(error: BaseException) -> None:
    message = str(error)
    assert message and "\n" not in message and "Traceback" not in message, repr(message)


# --------------------------------------------------------------------------- the readers, directly

READERS = {
    "arrows": (ARROWS, lambda p: load_arrows(p, (48, 64))),
    "drags": (DRAGS, lambda p: load_drags(p, (48, 64))),
    "camera": (CAMERA, lambda p: load_camera(p)),
    "motionctrl": (example("motionctrl.json"), lambda p: load_camera(p)),
    "pose": (example("pose.json"), lambda p: load_pose(p, (512, 512))),
    "bundle": (BUNDLE, lambda p: Controls.from_bundle(p)),
}


@pytest.mark.parametrize("kind", sorted(READERS))
def test_every_json_reader_parses_or_says_one_line(inputs_dir, kind):
    valid, read = READERS[kind]

    @fuzz_settings(60)
    @given(data=mutated(valid))
    def check(data: Any) -> None:
        path = inputs_dir / f"fuzz-{kind}.json"
        path.write_text(json.dumps(data, allow_nan=True))
        try:
            read(path)
            event("parsed")
        except FlowCtrlError as error:
            event("refused")
            one_line(error)

    check()


TOKENS = ["0", "1", "-1", "0.5", "1e308", "-1e308", "1e-300", "nan", "inf", "x", "1,", "[3", "#", "", "33366",
          "10000000000000000000000"]


@pytest.mark.parametrize("kind", ["re10k", "drag_txt"])
def test_every_text_reader_parses_or_says_one_line(inputs_dir, kind):
    base = "0 0.5 0.9 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 0".split() if kind == "re10k" else ["10", "12"]

    @fuzz_settings(60)
    @given(lines=st.lists(st.lists(st.sampled_from(TOKENS), min_size=0, max_size=3), min_size=1, max_size=4),
           where=st.lists(st.integers(0, len(base) - 1), min_size=1, max_size=4), rows=st.integers(1, 4))
    def check(lines: List[List[str]], where: List[int], rows: int) -> None:
        text = []
        for r in range(rows):
            tokens = list(base)
            if r < len(lines):
                for i, tok in zip(where, lines[r]):
                    tokens[i] = tok
            text.append(" ".join(tokens) if kind == "re10k" else ", ".join(tokens))
        path = inputs_dir / ("fuzz.txt" if kind == "re10k" else "fuzz_drag.txt")
        path.write_text("\n".join(text))
        try:
            load_camera(path) if kind == "re10k" else load_drags(path, (48, 64))
        except FlowCtrlError as error:
            one_line(error)

    check()


@pytest.mark.parametrize("raw", [b"", b"\xff\xfe\x00", b"{" * 100000, b"[" * 5000 + b"]" * 5000, b"\x00" * 64,
                                 b'{"arrows": [' + b"1," * 200000 + b"1]}"])
def test_raw_bytes_are_one_line(inputs_dir, raw):
    path = inputs_dir / "raw.json"
    path.write_bytes(raw)
    for read in (lambda p: load_arrows(p, (48, 64)), load_camera, lambda p: Controls.from_bundle(p)):
        try:
            read(path)
        except FlowCtrlError as error:
            one_line(error)


# ------------------------------------------------------------------------------- the CLI, in process

# (valid, hostile) values; valid ones are drawn about two times in three, so that about half of the
# cases render and the rest are refused
FRAMES = (["2", "3"], ["-1", "0", "1", "1025", "100000", "2.5", "x"])
SIZES = ([None, "32x24", "16x16", "32X24"], ["0x8", "-8x8", "99999x99999", "abc", "8x100000", "1e9x2"])
FLOATS = (["1", "2.5"], ["0", "-1", "1e308", "-1e308", "1e-300", "nan", "inf", "x", "0.001", "5000"])
OUTPUTS = (["new"], ["input", "hardlink", "control-file", "empty", "folder", "missing-folder", "dev-null"])


def mostly(choices: Tuple[List[Any], List[Any]]) -> st.SearchStrategy:
    valid, hostile = choices
    return st.one_of(st.sampled_from(valid), st.sampled_from(valid), st.sampled_from(hostile))


def edited(example: Any) -> st.SearchStrategy:
    return st.one_of(st.just(copy.deepcopy(example)), mutated(example))


@st.composite
def cli_case(draw: Any) -> Tuple[str, List[str], str, Any]:
    """(command, options, output choice, hostile control file or None)."""
    command = draw(st.sampled_from(["generate", "generate-preview", "flow"]))
    options: List[str] = ["--frames", draw(mostly(FRAMES))]
    size = draw(mostly(SIZES))
    if size is not None:
        options += ["--size", size]
    for flag in ("--strength", "--plane-distance") + (("--fps",) if command != "generate-preview" else ()):
        if draw(st.booleans()):
            options += [flag, draw(mostly(FLOATS))]
    if command == "flow" and draw(st.booleans()):
        options += ["--depth-scale", draw(mostly(FLOATS))]
    control = draw(st.sampled_from(["preset", "arrows", "drags", "camera", "bundle", "none"]))
    hostile = None
    if control in ("arrows", "drags", "camera", "bundle"):
        hostile = (control, draw(edited({"arrows": ARROWS, "drags": DRAGS, "camera": CAMERA, "bundle": BUNDLE}[control])))
    elif control == "preset":
        hostile = ("preset", draw(mostly((["orbit", "zoom-in", "pan-left:distance=0.5"], [
            "orbit:degrees=1e308", "zoom-in:factor=1e-300", "pan-left:distance=-1", "nope", "orbit:frames=1e9"]))))
    output = draw(mostly(OUTPUTS))
    return command, options, output, hostile


def _output_path(choice: str, command: str, folder: Path, control: Path) -> str:
    """The ``-o`` of a case; every choice but "new" names something that must be refused: the input
    image, a hard link to it (with the output's suffix), the control file, ..."""
    suffix = {"flow": ".npy", "generate-preview": ".png"}.get(command, ".gif")
    if choice == "hardlink":
        os.link(folder / "img.png", folder / f"hard{suffix}")
    if choice == "dev-null" and command == "generate-preview":
        return str(folder / "img")  # --preview would write /dev/null.png: name the input image instead
    return {"new": str(folder / f"out{suffix}"), "input": str(folder / "img.png"),
            "hardlink": str(folder / f"hard{suffix}"), "control-file": str(control), "empty": "",
            "folder": str(folder / "frames"), "missing-folder": str(folder / "no" / f"out{suffix}"),
            "dev-null": "/dev/null"}[choice]


def test_cli_options_and_control_files_keep_the_promise(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-fuzz")
    make_inputs(folder)
    (folder / "bundle.json").write_text(json.dumps(BUNDLE))
    (folder / "frames").mkdir()  # a non-empty folder as -o
    (folder / "frames" / "00000.png").write_bytes((folder / "mask.png").read_bytes())
    pristine = snapshot(folder)

    @fuzz_settings(120)
    @given(case=cli_case())
    def check(case: Tuple[str, List[str], str, Any]) -> None:
        command, options, output, hostile = case
        for p in folder.iterdir():  # back to the pristine set of inputs
            if p.name not in pristine:
                p.unlink() if p.is_file() else None
        argv = ["flow", "--no-viz"] if command == "flow" else ["generate"]
        argv += ["-q", "--image", str(folder / "img.png"), *options]
        if command == "generate-preview":
            argv.append("--preview")
        control = folder / "bundle.json"
        if hostile is not None and hostile[0] == "preset":
            argv += ["--camera", hostile[1], "--controls", str(control)]
        elif hostile is not None:
            control = folder / "hostile.json"
            control.write_text(json.dumps(hostile[1], allow_nan=True))
            argv += ["--controls" if hostile[0] == "bundle" else f"--{hostile[0]}", str(control)]
        else:
            argv += ["--controls", str(control)]
        out = _output_path(output, command, folder, control)
        argv += ["-o", out]
        before = snapshot(folder)
        err = io.StringIO()
        with redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as stop:  # argparse
                rc = stop.code
        lines = [line for line in err.getvalue().splitlines() if line.strip()]
        event(f"exit {rc}")  # --hypothesis-show-statistics: how many cases rendered and how many were refused
        assert "Traceback" not in err.getvalue(), (argv, err.getvalue())
        assert rc in (0, 2), (argv, rc, lines)
        after = snapshot(folder)
        changed = {k for k in before if after.get(k) != before[k]}
        assert not changed, (argv, "inputs changed", changed, lines)
        new = set(after) - set(before)
        if rc == 2:
            assert len(lines) == 1 and "error:" in lines[0], (argv, lines)
            assert not new, (argv, "files left behind", new)
        else:
            written = Path(out)
            if command == "generate-preview" and written.suffix.lower() != ".png":
                written = written.with_suffix(".png")  # --preview writes the output's name with .png
            assert output == "new" or written != Path(out), (argv, "wrote to a refused kind of output", lines)
            assert new == {written.name}, (argv, new)
        assert not [p for p in folder.iterdir() if p.name.startswith(".")], (argv, "temporary file left")

    check()


# ------------------------------------------------------------------------- training configs (--set)

YAML_VALUES = ["-1", "0", "1", "2.5", "1e-4", "1e400", "-1e400", ".nan", ".inf", "abc", "null", "true", "[]", "{}",
               "[1, 2]", "[4, 4]", "{a: 1}", "'64'", "10000000000000000000000", "-64", "1.5e3", "[[[]]]"]


def _config_keys(cls: Any, prefix: str = "") -> List[str]:
    import dataclasses

    keys = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            keys += _config_keys(type(default), prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys


@pytest.mark.parametrize("target", ["flow", "video"])
def test_training_config_settings_load_or_say_one_line(target):
    """Any ``--set KEY=VALUE`` on the shipped tiny configs gives a valid config or one ConfigError line."""
    from flowctrl.errors import ConfigError
    from flowctrl.train.config import TrainConfig, load_config
    from flowctrl.train.video_loop import VideoTrainConfig, load_video_config

    cls, load, config = ((TrainConfig, load_config, "fgm_tiny.yaml") if target == "flow"
                         else (VideoTrainConfig, load_video_config, "video_tiny.yaml"))
    keys = _config_keys(cls)

    @fuzz_settings(80)
    @given(settings_=st.lists(st.tuples(st.sampled_from(keys), st.sampled_from(YAML_VALUES)), min_size=1, max_size=3))
    def check(settings_: List[Tuple[str, str]]) -> None:
        try:
            cfg = load(str(REPO / "configs" / "train" / config), {}, [f"{k}={v}" for k, v in settings_])
        except ConfigError as error:
            one_line(error)
            return
        assert cfg.max_steps >= 1 and cfg.batch_size >= 1

    check()


@pytest.mark.parametrize("case", [
    ("generate", {"drags": {"drags": [{"points": [[1, 1], [1e308, 5]], "radius": 1e308}]}}),
    ("flow", {"camera": {"frames": [{"w2c": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]}] * 2, "focal_scale": [1, 1e300]}}),
    ("generate", {"controls": {"image_size": [48, 64], "mask": "/dev/zero", "arrows": [[[]]]}}),
])
def test_the_promise_in_a_real_process(tmp_path, case):
    """A few hostile cases as real processes: exit 2, one stderr line, nothing on stdout, no file."""
    import subprocess
    import sys

    command, controls = case
    make_inputs(tmp_path)
    flag, data = next(iter(controls.items()))
    (tmp_path / "c.json").write_text(json.dumps(data))
    before = snapshot(tmp_path)
    out = tmp_path / ("o.npy" if command == "flow" else "o.mp4")
    proc = subprocess.run([sys.executable, "-m", "flowctrl", command, "--image", str(tmp_path / "img.png"),
                           f"--{flag}", str(tmp_path / "c.json"), "--frames", "3", "-o", str(out)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "error:" in lines[0], proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    assert snapshot(tmp_path) == before
