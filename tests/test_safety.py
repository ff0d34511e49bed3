"""The README's promises under hostile input, one named test per class (issue 17).

Every failure a user can cause ends in exactly one stderr line and exit status 2, with no traceback,
no hang, no file left behind and no input changed. The in-process cases call ``flowctrl.cli.main``;
the ones that need a real process (a FIFO that would block, signals, a file-size limit) run
``python -m flowctrl`` with a timeout.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import resource
import signal
import struct
import subprocess
import sys
import time
import zlib
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flowctrl.cli import main
from flowctrl.controls import Controls, load_camera, parse_camera_json, parse_drags
from flowctrl.errors import ConfigError, ControlFileError, MissingWeightsError, OutputError

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


# ----------------------------------------------------------------------------------------- helpers


def run_cli(*argv: str) -> tuple:
    """``(exit status, stderr lines)`` of ``flowctrl ARGV`` in this process."""
    err = io.StringIO()
    with redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as stop:  # argparse
            rc = stop.code
    return rc, [line for line in err.getvalue().splitlines() if line.strip()]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` (hidden temporaries included) with its content hash."""
    return {str(p.relative_to(folder)): (digest(p) if p.is_file() else "dir")
            for p in sorted(folder.rglob("*")) if not p.is_fifo()}


def assert_refused(rc: int, lines: list, *, contains: str = "") -> None:
    assert rc == 2, lines
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0] and "error:" in lines[0]
    assert contains.lower() in lines[0].lower(), lines


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A folder with a small image, the example arrows and a mask the size of the image."""
    Image.fromarray((np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)).save(tmp_path / "img.png")
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 10:40] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    (tmp_path / "a.json").write_text(json.dumps({"units": "normalized", "arrows": [
        {"start": [0.3, 0.4], "end": [0.5, 0.5], "mask": "mask.png"}]}))
    return tmp_path


GEN = ("generate", "--frames", "3", "--size", "32x24", "-q")


# ------------------------------------------------------------------------------ 1. data loss


# (bundle key, the file it names, the output flag given that same file): every output flag, every
# kind of file a bundle names, with suffixes the flag accepts so that only the output rule refuses it.
BUNDLE_CASES = [
    ("mask", "t.gif", "-o"), ("static_mask", "t.gif", "--gif"), ("image", "t.png", "--preview"),
    ("mask", "t.png", "--preview"), ("depth", "d.npy", "--save-flow"), ("depth", "d.png", "--preview"),
    ("ref_video", "r.mp4", "-o"), ("ref_video", "r.gif", "--gif"), ("static_mask", "t.png", "--png-dir"),
]


@pytest.mark.parametrize("key, name, flag", BUNDLE_CASES)
def test_a_file_named_inside_a_bundle_is_never_an_output(work, key, name, flag):
    target = work / name
    if key == "ref_video":
        from flowctrl.video_io import write_video

        write_video(target, np.zeros((3, 48, 64, 3), np.uint8), fps=8)
    elif key == "depth" and name.endswith(".npy"):
        np.save(target, np.full((48, 64), 2.0, np.float32))
    elif key == "depth":
        Image.fromarray(np.full((48, 64), 2000, np.uint16)).save(target)
    else:
        Image.open(work / ("img.png" if key == "image" else "mask.png")).save(target)
    bundle = {"camera": "pan-left", key: name}
    if key != "image":
        bundle["image_size"] = [48, 64]
    (work / "bundle.json").write_text(json.dumps(bundle))
    before = snapshot(work)
    out = {"-o": ["-o", target], "--preview": ["--preview", "-o", target],
           "--save-flow": ["-o", work / "x.mp4", "--save-flow", target],
           "--gif": ["-o", work / "x.mp4", "--gif", target],
           "--png-dir": ["-o", work / "x.mp4", "--png-dir", work]}[flag]  # a folder holding the input
    rc, lines = run_cli(*GEN, "--image", work / "img.png", "--controls", work / "bundle.json", *out)
    assert_refused(rc, lines)
    assert "same file as the input" in lines[0] or "not an empty folder" in lines[0] or "holding the input" in lines[0]
    assert snapshot(work) == before


def test_an_arrows_mask_and_a_hard_link_to_it_are_never_outputs(work):
    os.link(work / "mask.png", work / "hard.png")
    (work / "soft.png").symlink_to(work / "mask.png")
    before = snapshot(work)
    for target in ("mask.png", "hard.png", "soft.png"):
        rc, lines = run_cli(*GEN, "--image", work / "img.png", "--arrows", work / "a.json", "--preview",
                            "-o", work / target)
        assert_refused(rc, lines, contains="same file as the input")
    rc, lines = run_cli("flow", "--image", work / "img.png", "--arrows", work / "a.json", "--frames", "2",
                        "--size", "32x24", "-q", "-o", work / "f.npy", "--overlay", work / "hard.png")
    assert_refused(rc, lines, contains="same file as the input")
    assert snapshot(work) == before


def test_flow_output_named_by_a_bundle_is_refused(work):
    np.save(work / "d.npy", np.full((48, 64), 2.0, np.float32))
    (work / "bundle.json").write_text(json.dumps({"camera": "orbit", "depth": "d.npy", "image_size": [48, 64]}))
    before = snapshot(work)
    rc, lines = run_cli("flow", "--image", work / "img.png", "--controls", work / "bundle.json", "--frames", "2",
                        "--size", "32x24", "--no-viz", "-q", "-o", work / "d.npy")
    assert_refused(rc, lines, contains="same file as the input")
    assert snapshot(work) == before


def test_controls_record_every_file_they_read(work):
    from flowctrl.io_safety import recording_inputs

    (work / "bundle.json").write_text(json.dumps({"arrows": "a.json", "image": "img.png", "static_mask": "mask.png"}))
    with recording_inputs() as log:
        Controls.from_bundle(work / "bundle.json")
    names = sorted(p.name for p in log)
    assert names == ["a.json", "bundle.json", "img.png", "mask.png"]


# --------------------------------------------------------------------- 2. hangs, unbounded reads


def test_fifo_as_control_file_is_refused_without_blocking(work):
    os.mkfifo(work / "fifo.json")
    (work / "bundle.json").write_text(json.dumps({"mask": "fifo.json", "camera": "orbit", "image_size": [48, 64]}))
    for flags in (["--arrows", work / "fifo.json"], ["--controls", work / "bundle.json"]):
        t = time.time()
        proc = subprocess.run([sys.executable, "-m", "flowctrl", *GEN, "--image", work / "img.png", *flags,
                               "-o", work / "x.mp4"], capture_output=True, text=True, timeout=120, env=ENV)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "not a regular file" in lines[0], proc.stderr
        assert time.time() - t < 120
    assert not (work / "x.mp4").exists()


@pytest.mark.parametrize("flag", ["--arrows", "--drags", "--camera", "--pose", "--controls", "--mask", "--image"])
def test_dev_zero_and_folders_are_refused(work, flag):
    for source in ("/dev/zero", str(work)):
        image = work / "img.png" if flag != "--image" else source
        extra = [] if flag == "--image" else [flag, source]
        rc, lines = run_cli(*GEN, "--image", image, *extra, "-o", work / "x.mp4")
        assert_refused(rc, lines)
        assert "not a regular file" in lines[0] or "is a folder" in lines[0]
    assert not (work / "x.mp4").exists()


def test_control_files_have_a_size_cap(work):
    from flowctrl.io_safety import MAX_CONTROL_BYTES

    big = work / "big.json"
    with open(big, "wb") as f:  # sparse: no disk space used
        f.truncate(MAX_CONTROL_BYTES + 1)
    rc, lines = run_cli(*GEN, "--image", work / "img.png", "--arrows", big, "-o", work / "x.mp4")
    assert_refused(rc, lines, contains="above the limit")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` (8-bit gray) with one tiny IDAT: opening it reads
    the size, decoding would allocate ``width * height`` bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [20000, 9000])  # 20000²: Pillow's DecompressionBombError; 9000²: our cap
def test_decompression_bomb_as_image_mask_and_bundle_image(work, side):
    (work / "bomb.png").write_bytes(png_header_only(side, side))
    (work / "bundle.json").write_text(json.dumps({"image": "bomb.png", "camera": "orbit"}))
    (work / "bomb.json").write_text(json.dumps({"units": "px", "arrows": [
        {"start": [3, 3], "end": [9, 9], "mask": "bomb.png"}]}))
    cases = [["--image", work / "bomb.png", "--camera", "orbit"],
             ["--image", work / "img.png", "--mask", work / "bomb.png", "--arrows", work / "a.json"],
             ["--image", work / "img.png", "--arrows", work / "bomb.json"]]
    for case in cases:
        rc, lines = run_cli(*GEN, *case, "-o", work / "x.mp4")
        assert_refused(rc, lines)
        assert "too large" in lines[0] or "above the limit" in lines[0]
    with pytest.raises(ControlFileError, match="too large|above the limit"):
        Controls.from_bundle(work / "bundle.json")  # the bundle's image gives the size: read from its header


# --------------------------------------------------------------- 3. numbers that crash later


@pytest.mark.parametrize("make, field", [
    (lambda: parse_drags({"drags": [{"points": [[1, 1], [5, 5]], "radius": 1e308}]}), "radius"),
    (lambda: parse_camera_json({"frames": [{"R": np.eye(3).tolist(), "t": [0, 0, 0]},
                                           {"R": np.eye(3).tolist(), "t": [1e308, 0, 0]}]}), "t"),
    (lambda: parse_camera_json({"frames": [{"w2c": np.eye(4).tolist()}] * 2, "timestamps": [0, 1e308]}), "timestamps"),
    (lambda: parse_camera_json({"frames": [{"w2c": np.eye(4).tolist()}] * 2,
                                "intrinsics": {"fx": 1e-300, "fy": 1, "cx": 0.5, "cy": 0.5}}), "fx"),
    (lambda: parse_camera_json({"frames": [{"w2c": np.eye(4).tolist()}] * 2, "focal_scale": [1, 1e300]}), "focal_scale"),
    (lambda: parse_camera_json({"frames": [{"w2c": np.eye(4).tolist()}] * 2, "scene_depth": 1e-300}), "scene_depth"),
    (lambda: Controls.from_dict({"strength": 1e300}), "strength"),
    (lambda: Controls.from_dict({"image_size": [1e12, 5]}), "image_size"),
    (lambda: load_camera("orbit:degrees=1e300"), "degrees"),
])
def test_absurd_numbers_are_refused_naming_the_field(make, field):
    with pytest.raises(ControlFileError) as caught:
        make()
    message = str(caught.value)
    assert field in message and "\n" not in message


def test_re10k_timestamps_and_focal_lengths_have_ranges(tmp_path):
    row = "0 0.5 0.9 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 0"
    (tmp_path / "ok.txt").write_text(row + "\n" + row.replace("0 0.5", "33366 0.5", 1) + "\n")
    assert load_camera(tmp_path / "ok.txt").timestamps is not None
    (tmp_path / "t.txt").write_text(row + "\n" + row.replace("0 0.5", "1e308 0.5", 1) + "\n")
    (tmp_path / "f.txt").write_text(row.replace("0.5 0.9", "1e-300 0.9") + "\n" + row.replace("0 0.5", "1 0.5", 1) + "\n")
    for name, field in (("t.txt", "timestamp"), ("f.txt", "focal length")):
        with pytest.raises(ControlFileError, match=field):
            load_camera(tmp_path / name)


# ------------------------------------------------------------------------ 4. write failures


def test_read_only_folder_is_one_line(work):
    target = Path("/sys/flowctrl-test-out.mp4")
    try:
        target.touch()
        target.unlink()
        pytest.skip("/sys is writable here")
    except OSError:
        pass
    for args in (["-o", target], ["--preview", "-o", target.with_suffix(".png")]):
        rc, lines = run_cli(*GEN, "--image", work / "img.png", "--camera", "orbit", *args)
        assert_refused(rc, lines, contains="cannot write")


def test_a_file_where_a_folder_is_expected(work):
    rc, lines = run_cli(*GEN, "--image", work / "img.png", "--camera", "orbit", "-o", work / "img.png" / "x.mp4")
    assert_refused(rc, lines, contains="does not exist")
    rc, lines = run_cli("prepare-data", work, "-o", work / "img.png", "--no-progress")
    assert_refused(rc, lines, contains="not a folder")


def test_empty_output_path(work):
    for cmd in (GEN, ("flow", "--frames", "2")):
        rc, lines = run_cli(*cmd, "--image", work / "img.png", "--camera", "orbit", "-o", "")
        assert_refused(rc, lines, contains="empty path")


def test_full_disk_is_one_line_and_leaves_no_temporary_file(work):
    """A file-size limit (RLIMIT_FSIZE) makes writes fail with EFBIG like a full filesystem would."""
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))

    before = snapshot(work)
    proc = subprocess.run([sys.executable, "-m", "flowctrl", "generate", "--image", work / "img.png", "--arrows",
                           work / "a.json", "--frames", "16", "--size", "64x48", "-q", "-o", work / "x.gif"],
                          capture_output=True, text=True, timeout=180, env=ENV, preexec_fn=limit)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "cannot write" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert snapshot(work) == before


def test_atomic_writer_turns_os_errors_into_one_line_and_cleans_up(tmp_path):
    import errno

    from flowctrl.io_safety import atomic_path

    with pytest.raises(OutputError, match=r"cannot write \(No space left on device\); free some disk space"):
        with atomic_path(tmp_path / "out.bin", flag="-o") as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "out.bin") as tmp:
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with atomic_path(tmp_path / "out.bin") as tmp:
        tmp.write_bytes(b"done")
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"] and (tmp_path / "out.bin").read_bytes() == b"done"


def test_flow_checks_frames_and_size_like_generate(work):
    for args, text in ((["--frames", "100000"], "above the limit"), (["--frames", "4", "--size", "100000x100000"], "outside"),
                       (["--fps", "inf"], "--fps"), (["--depth-scale", "1e308"], "--depth-scale")):
        t = time.time()
        rc, lines = run_cli("flow", "--image", work / "img.png", "--camera", "orbit", *args, "-o", work / "f.npy")
        assert_refused(rc, lines, contains=text)
        assert time.time() - t < 10
    assert not (work / "f.npy").exists()


# ------------------------------------------------------------------------------- 5. signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_signal_mid_render_leaves_no_temporary_file(work, sig):
    proc = subprocess.Popen([sys.executable, "-m", "flowctrl", "generate", "--image", work / "img.png", "--camera",
                             "orbit", "--frames", "400", "--size", "256x192", "-q", "-o", work / "x.mp4"],
                            stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.startswith(".x.mp4") for p in work.iterdir()):
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    assert any(p.name.startswith(".x.mp4") for p in work.iterdir()), "the render never started writing"
    proc.send_signal(sig)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + sig, err
    assert f"stopped by {signal.Signals(sig).name}" in err and "Traceback" not in err
    assert not [p.name for p in work.iterdir() if p.name.startswith((".x", "x."))]


# --------------------------------------------------------------- 6-7. train and prepare-data


@pytest.mark.parametrize("setting, text", [
    ("data.height=-64", "data.height"), ("batch_size=two", "batch_size"), ("learning_rate=[1]", "learning_rate"),
    ("data=5", "data"), ("max_steps=1e400", "max_steps"), ("fgm.num_layers=abc", "fgm"),
])
def test_train_config_errors_are_one_line_and_write_nothing(tmp_path, setting, text):
    out = tmp_path / "run"
    rc, lines = run_cli("train", "flow", "--config", REPO / "configs/train/fgm_tiny.yaml", "--output-dir", out,
                        "--set", setting, "--max-steps", "1")
    assert_refused(rc, lines, contains=text)
    assert not out.exists()


def test_train_config_that_is_not_utf8_or_not_a_file(tmp_path):
    (tmp_path / "bad.yaml").write_bytes(b"model: fgm\nmax_steps: \xff\xfe\n")
    for config, text in ((tmp_path / "bad.yaml", "not UTF-8"), ("/dev/zero", "not a regular file")):
        for target in ("flow", "video"):
            rc, lines = run_cli("train", target, "--config", config, "--output-dir", tmp_path / "run")
            assert_refused(rc, lines, contains=text)
    assert not (tmp_path / "run").exists()


def test_train_never_overwrites_its_config(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    config = run / "train_config.json"
    config.write_text((REPO / "configs/train/fgm_tiny.yaml").read_text())
    before = digest(config)
    rc, lines = run_cli("train", "flow", "--config", config, "--output-dir", run, "--max-steps", "1")
    assert_refused(rc, lines, contains="overwrite the input")
    assert digest(config) == before and sorted(p.name for p in run.iterdir()) == ["train_config.json"]


def test_prepare_data_into_an_existing_file_is_one_line(tmp_path):
    (tmp_path / "videos").mkdir()
    (tmp_path / "shards").write_text("not a folder")
    rc, lines = run_cli("prepare-data", tmp_path / "videos", "-o", tmp_path / "shards", "--no-progress")
    assert_refused(rc, lines, contains="not a folder")
    assert (tmp_path / "shards").read_text() == "not a folder"
    for flag, value in (("--num-frames", "100000"), ("--fov", "0"), ("--size", "-3x5"), ("--stride", "0")):
        rc, lines = run_cli("prepare-data", tmp_path / "videos", "-o", tmp_path / "new", flag, value, "--no-progress")
        assert_refused(rc, lines)
    assert not (tmp_path / "new").exists()


def test_resume_refuses_a_checkpoint_whose_random_state_cannot_be_read(tmp_path):
    import random

    import torch
    from accelerate.utils import save

    from flowctrl.train.engine import check_restorable

    ckpt = tmp_path / "checkpoint-3"
    ckpt.mkdir()
    states = {"random_state": random.getstate(), "numpy_random_seed": np.random.get_state(),
              "torch_manual_seed": torch.get_rng_state()}
    save(states, ckpt / "random_states_0.pkl", save_on_each_node=True, safe_serialization=False)
    check_restorable(ckpt, 0)  # a complete state: nothing to say
    with pytest.raises(ConfigError, match="missing"):
        check_restorable(ckpt, 1)
    (ckpt / "random_states_0.pkl").write_bytes(b"\x80\x04garbage")
    with pytest.raises(ConfigError, match="cannot resume exactly"):
        check_restorable(ckpt, 0)


# --------------------------------------------------------------------------- 8. safetensors only


def test_pickle_only_weight_folders_are_refused(work):
    model = work / "model"
    (model / "transformer").mkdir(parents=True)
    (model / "transformer" / "config.json").write_text("{}")
    (model / "transformer" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    flow = work / "flow"
    (flow / "fgm").mkdir(parents=True)
    (flow / "flow_pipeline.json").write_text(json.dumps({"components": ["fgm"]}))
    (flow / "fgm" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    lora = work / "lora"
    lora.mkdir()
    (lora / "pytorch_lora_weights.bin").write_bytes(b"pickle")
    cases = [["--backend", "diffusion", "--model", model], ["--flow-model", flow],
             ["--backend", "diffusion", "--model", model, "--lora", lora]]
    for case in cases:
        rc, lines = run_cli(*GEN, "--image", work / "img.png", "--camera", "orbit", *case, "-o", work / "x.mp4")
        assert_refused(rc, lines, contains="only pickle weights")
    from flowctrl.pipelines.flow_generation import FlowGenerationPipeline

    with pytest.raises(MissingWeightsError, match="safetensors"):
        FlowGenerationPipeline.from_pretrained(flow)
    assert not (work / "x.mp4").exists()


# ------------------------------------------------------------------------------------- 9. app


def test_app_uploads_cannot_name_files_outside_their_folder(tmp_path):
    from flowctrl.app.session import ArrowSketch, build_controls

    upload = tmp_path / "gradio" / "0123abcd"
    upload.mkdir(parents=True)
    Image.fromarray(np.full((48, 64), 255, np.uint8)).save(upload / "mask.png")
    Image.fromarray(np.full((48, 64), 255, np.uint8)).save(tmp_path / "secret.png")
    (upload / "link.png").symlink_to(tmp_path / "secret.png")
    messages = []
    for name in ("/etc/passwd", "/etc/does-not-exist", str(tmp_path / "secret.png"), "../../secret.png",
                 "~/x.png", "link.png"):
        (upload / "a.json").write_text(json.dumps({"arrows": [{"start": [1, 1], "end": [9, 9], "mask": name}]}))
        with pytest.raises(ControlFileError) as caught:
            build_controls((48, 64), ArrowSketch(), arrows_file=str(upload / "a.json"))
        message = str(caught.value)
        assert str(upload) not in message and str(tmp_path) not in message  # no server paths
        assert message.startswith("a.json: arrows[0].mask: ")
        messages.append(message)
    assert messages[0].replace("/etc/passwd", "X") == messages[1].replace("/etc/does-not-exist", "X")  # no oracle
    (upload / "a.json").write_text(json.dumps({"arrows": [{"start": [1, 1], "end": [9, 9], "mask": "mask.png"}]}))
    controls = build_controls((48, 64), ArrowSketch(), arrows_file=str(upload / "a.json"))
    assert controls.arrows[0].mask is not None  # a name beside the upload still works
    with pytest.raises(ControlFileError) as caught:
        build_controls((48, 64), ArrowSketch(), arrows_file=str(upload / "a.json"), drags_file=str(upload / "mask.png"))
    assert str(upload) not in str(caught.value) and "mask.png" in str(caught.value)


def test_app_auth_and_the_warning_beyond_loopback(monkeypatch):
    from flowctrl.commands import app as app_command

    launched = {}

    class Demo:
        def queue(self, **kwargs):
            return self

        def launch(self, **kwargs):
            launched.update(kwargs)

    import flowctrl.app.ui as ui

    monkeypatch.setattr(ui, "build_demo", lambda **_: Demo())
    monkeypatch.delenv("FLOWCTRL_APP_AUTH", raising=False)
    rc, lines = run_cli("app", "--host", "0.0.0.0")
    assert rc == 0 and len(lines) == 1 and "WARNING" in lines[0] and "--auth" in lines[0]
    assert launched["auth"] is None
    rc, lines = run_cli("app", "--host", "0.0.0.0", "--auth", "alice:s3cret")
    assert rc == 0 and lines == [] and launched["auth"] == ("alice", "s3cret")
    monkeypatch.setenv("FLOWCTRL_APP_AUTH", "bob:pw")
    rc, lines = run_cli("app", "--host", "::")
    assert rc == 0 and lines == [] and launched["auth"] == ("bob", "pw")
    monkeypatch.delenv("FLOWCTRL_APP_AUTH")
    rc, lines = run_cli("app")
    assert rc == 0 and lines == [] and launched["server_name"] == "127.0.0.1"
    rc, lines = run_cli("app", "--auth", "nopassword")
    assert_refused(rc, lines, contains="USER:PASSWORD")
    assert app_command.is_loopback("127.0.0.2") and app_command.is_loopback("::1") and not app_command.is_loopback("10.0.0.1")


# ----------------------------------------------------------------------------------- 10. argparse


@pytest.mark.parametrize("argv, text", [
    (["generate", "--image", "x.png"], "-o: is required"),
    (["generate", "--image", "x.png", "-o", "x.mp4", "--frames", "many"], "invalid int value"),
    (["generate", "--image", "x.png", "-o", "x.mp4", "--backend", "magic"], "invalid choice"),
    (["flow", "--image", "x.png", "-o", "f.npy", "--bogus"], "unrecognized arguments"),
    (["nonsense"], "invalid choice"),
    (["train", "flow"], "required: --config"),
])
def test_usage_errors_are_one_line(argv, text):
    rc, lines = run_cli(*argv)
    assert_refused(rc, lines, contains=text)
    assert "usage:" not in lines[0] and "--help" in lines[0]


@pytest.mark.parametrize("argv, text", [
    (["bench", "camera", "--frames", "100000"], "--frames"), (["bench", "reconstruct", "--size", "5", "5"], "--size"),
    (["bench", "camera", "--plane-distance", "nan"], "--plane-distance"), (["bench", "camera", "--trials", "0"], "--trials"),
])
def test_bench_numbers_and_outputs_are_checked(tmp_path, argv, text):
    rc, lines = run_cli(*argv, "-o", tmp_path / "bench")
    assert_refused(rc, lines, contains=text)
    assert not (tmp_path / "bench").exists()
    (tmp_path / "file").write_text("x")
    rc, lines = run_cli("bench", "camera", "--suite", "basic", "-o", tmp_path / "file")
    assert_refused(rc, lines, contains="not a folder")
    assert (tmp_path / "file").read_text() == "x"


def test_atomic_folder_replaces_a_saved_folder_only_when_complete(tmp_path):
    from flowctrl.io_safety import atomic_path

    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "old.safetensors").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "final", folder=True, replace=True) as tmp:
            (tmp / "new.safetensors").write_text("half")
            raise RuntimeError("killed mid-save")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    assert [p.name for p in (tmp_path / "final").iterdir()] == ["old.safetensors"]
    with atomic_path(tmp_path / "final", folder=True, replace=True) as tmp:
        (tmp / "new.safetensors").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    assert [p.name for p in (tmp_path / "final").iterdir()] == ["new.safetensors"]
