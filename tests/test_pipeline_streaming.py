"""Streaming warp rendering (chunks of frames in threads) gives exactly the whole-video frames."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from flowctrl.cli import main
from flowctrl.controls import Controls
from flowctrl.errors import InputError
from flowctrl.pipelines import FlowCtrlPipeline
from flowctrl.pipelines.streaming import chunk_bounds
from flowctrl.video_io import write_video

REPO = Path(__file__).resolve().parents[1]
EX = REPO / "examples"
CAM = REPO / "configs" / "camera"


def _controls(kind: str) -> Controls:
    size = (512, 512)
    if kind == "arrows+orbit":
        return Controls.from_files(arrows=EX / "a.json", camera=CAM / "orbit.json", image_size=size)
    if kind == "zoom+static+strength":  # per-frame K (the reference K must stay frame 0's in every chunk)
        return Controls.from_files(arrows=EX / "a.json", camera=CAM / "zoom-in.json", static_mask=EX / "mask.png",
                                   strength=3.0, image_size=size)
    if kind == "bundle":  # drags with radii, motion brush, orbit preset with parameters, strength
        return Controls.from_bundle(EX / "bundle.json", image_size=size)
    if kind == "depth-no-camera":
        return Controls.from_files(drags=EX / "drags.json", image_size=size)
    return Controls(image_size=size)


@pytest.mark.parametrize("kind", ["arrows+orbit", "zoom+static+strength", "bundle", "depth-no-camera", "none"])
def test_streamed_frames_equal_the_whole_video(kind):
    warnings.simplefilter("ignore")
    pipe = FlowCtrlPipeline(backend="warp")
    kw = dict(controls=_controls(kind), num_frames=9, height=48, width=64)
    if kind == "depth-no-camera":
        kw["depth"] = torch.linspace(1.0, 3.0, 48 * 64).reshape(1, 1, 48, 64)
    whole = pipe(str(EX / "astronaut.png"), **kw).frames
    for chunk_frames, workers in ((1, 1), (4, 2), (3, 2), (16, 2)):
        calls = []
        chunks = list(pipe.stream(str(EX / "astronaut.png"), chunk_frames=chunk_frames, workers=workers,
                                  callback=lambda s, d, t: calls.append((s, d, t)), **kw))
        assert [len(c) for c in chunks] == [b - a for a, b in chunk_bounds(9, chunk_frames)]
        assert np.array_equal(np.concatenate(chunks), whole), (kind, chunk_frames, workers)
        assert calls[-1] == ("render", 9, 9)


def test_stream_leaves_thread_settings_alone_and_refuses_other_backends():
    from flowctrl_cuda import _cpu

    threads = torch.get_num_threads()
    pipe = FlowCtrlPipeline(backend="warp")
    list(pipe.stream(str(EX / "astronaut.png"), _controls("arrows+orbit"), num_frames=5, height=32, width=32, workers=2))
    assert torch.get_num_threads() == threads and _cpu._threads() == max(1, threads)
    with pytest.raises(InputError, match="only the warp backend"):
        FlowCtrlPipeline(backend="warp", flow_model=lambda *a, **k: None).stream(str(EX / "astronaut.png"))
    with pytest.raises(ValueError):
        chunk_bounds(5, 0)


def test_cli_streams_the_same_bytes_as_writing_the_whole_video(tmp_path):
    args = ["--image", str(EX / "astronaut.png"), "--arrows", str(EX / "a.json"), "--camera", str(CAM / "orbit.json"),
            "--size", "64x64", "--frames", "9", "-q"]
    streamed = tmp_path / "streamed.mp4"
    assert main(["generate", *args, "-o", str(streamed), "--gif", str(tmp_path / "s.gif"),
                 "--png-dir", str(tmp_path / "png")]) == 0
    warnings.simplefilter("ignore")
    controls = Controls.from_files(arrows=EX / "a.json", camera=CAM / "orbit.json", image_size=(512, 512))
    frames = FlowCtrlPipeline(backend="warp")(str(EX / "astronaut.png"), controls=controls, num_frames=9, height=64,
                                              width=64).frames
    whole = write_video(tmp_path / "whole.mp4", frames)
    assert streamed.read_bytes() == whole.read_bytes()
    assert len(list((tmp_path / "png").glob("*.png"))) == 9 and (tmp_path / "s.gif").stat().st_size > 0
    # a failing output (a folder that is not empty) leaves none of the others behind
    bad = tmp_path / "busy"
    bad.mkdir()
    (bad / "x.txt").write_text("x")
    assert main(["generate", *args, "-o", str(tmp_path / "o2.mp4"), "--png-dir", str(bad)]) == 2
    assert not (tmp_path / "o2.mp4").exists()
