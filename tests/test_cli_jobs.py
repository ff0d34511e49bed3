"""`flowctrl generate --jobs`: many generations from one jsonl file, resumable, split over processes."""
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _image(path: Path, h=32, w=48, seed=0) -> None:
    from PIL import Image

    Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)).save(path)


def _flowctrl(*args, cwd):
    return subprocess.run([sys.executable, "-m", "flowctrl", *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=240)


def _frames(path: Path) -> int:
    from flowctrl.video_io import read_video

    return read_video(path).shape[0]


def test_jobs_run_each_line_report_a_bad_one_and_resume(tmp_path):
    _image(tmp_path / "a.png")
    (tmp_path / "arrows.json").write_text('{"arrows": [{"start": [10, 10], "end": [20, 14]}]}')
    (tmp_path / "out").mkdir()
    (tmp_path / "jobs.jsonl").write_text("\n".join([
        '{"image": "a.png", "output": "out/pan.mp4", "camera": "pan-left:degrees=5"}',
        '# comments and blank lines are skipped',
        '',
        '{"image": "a.png", "output": "out/arrow.mp4", "arrows": "arrows.json", "frames": 3}',
        '{"image": "nope.png", "output": "out/missing.mp4", "camera": "orbit"}',
        '{"image": "a.png", "output": "out/inline.gif", "drags": [{"points": [[5, 5], [9, 7], [12, 12]]}]}',
    ]) + "\n")
    proc = _flowctrl("generate", "--jobs", "jobs.jsonl", "--frames", "4", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert _frames(tmp_path / "out/pan.mp4") == 4 and _frames(tmp_path / "out/arrow.mp4") == 3  # per-job frames
    assert _frames(tmp_path / "out/inline.gif") == 4 and not (tmp_path / "out/missing.mp4").exists()
    failures = [line for line in proc.stderr.splitlines() if "failed:" in line]
    assert len(failures) == 1 and "line 5" in failures[0] and "nope.png" in failures[0], proc.stderr
    assert "Traceback" not in proc.stderr
    warning = [line for line in proc.stderr.splitlines() if "parallax is flat" in line]
    assert len(warning) == 1 and warning[0].endswith("on the command line: --depth FILE or --depth-model ID")
    assert proc.stderr.strip().splitlines()[-1] == (
        "flowctrl generate: 4 jobs: 3 done, 0 skipped (output exists), 1 failed (lines 5)")

    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    _image(tmp_path / "nope.png")  # fix the failing job and run the same file again: only it runs
    proc = _flowctrl("generate", "--jobs", "jobs.jsonl", "--frames", "4", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "flowctrl generate: 4 jobs: 1 done, 3 skipped (output exists), 0 failed")
    assert all((tmp_path / "out" / name).stat().st_mtime_ns == t for name, t in before.items())
    assert _frames(tmp_path / "out/missing.mp4") == 4


def test_jobs_file_errors_are_one_line(tmp_path):
    _image(tmp_path / "a.png")
    (tmp_path / "jobs.jsonl").write_text('{"image": "a.png", "output": "x.mp4", "camera": "orbit"}\n')
    proc = _flowctrl("generate", "--jobs", "missing.jsonl", cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "missing.jsonl" in proc.stderr
    proc = _flowctrl("generate", "--jobs", "jobs.jsonl", "--image", "a.png", cwd=tmp_path)
    assert proc.returncode == 2 and "--image" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    (tmp_path / "bad.jsonl").write_text('not json\n{"image": "a.png", "output": "y.mp4", "frames": "many"}\n'
                                        '{"image": "a.png", "output": "y.mp4", "camera": "orbit"}\n')
    proc = _flowctrl("generate", "--jobs", "bad.jsonl", "--frames", "3", "-q", cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 4, proc.stderr  # 3 failures + the summary
    assert "not valid JSON" in lines[0] and "frames: is 'many'" in lines[1] and "same output as line 2" in lines[2]
    proc = _flowctrl("generate", "--frames", "3", cwd=tmp_path)
    assert proc.returncode == 2 and "--image: is required" in proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_jobs_under_two_accelerate_processes_run_every_job_exactly_once(tmp_path):
    pytest.importorskip("accelerate")
    _image(tmp_path / "a.png")
    names = [f"out/{i}.mp4" for i in range(5)]
    (tmp_path / "out").mkdir()
    (tmp_path / "jobs.jsonl").write_text("".join(
        f'{{"image": "a.png", "output": "{name}", "arrows": {{"arrows": [{{"start": [10, 10], "end": [{12 + i}, 14]}}]}}}}\n'
        for i, name in enumerate(names)))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "configs/accelerate/cpu_2proc.yaml"), "--main_process_port", str(_free_port()),
           "-m", "flowctrl", "generate", "--jobs", "jobs.jsonl", "--frames", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = re.findall(r"\[rank (\d)\] \[\d+/\d+\] done (\S+)", proc.stderr)
    by_rank = {rank: sorted(path for r, path in done if r == rank) for rank in ("0", "1")}
    assert sorted(path for _, path in done) == sorted(names)  # every job once, none twice
    assert by_rank["0"] and by_rank["1"] and not set(by_rank["0"]) & set(by_rank["1"])
    assert "5 jobs in 2 processes: 5 done, 0 skipped (output exists), 0 failed" in proc.stderr
    assert all(_frames(tmp_path / name) == 3 for name in names)


def test_help_and_the_unsupported_suffix_error_list_the_same_outputs(tmp_path):
    from flowctrl.commands.generate import OUTPUT_TYPES
    from flowctrl.video_io import OUTPUT_TYPES_TEXT

    assert OUTPUT_TYPES == OUTPUT_TYPES_TEXT
    _image(tmp_path / "a.png")
    help_text = " ".join(_flowctrl("generate", "--help", cwd=tmp_path).stdout.split())
    proc = _flowctrl("generate", "--image", "a.png", "--camera", "orbit", "-o", "x.avi", cwd=tmp_path)
    assert proc.returncode == 2 and "unsupported output type '.avi'" in proc.stderr
    assert OUTPUT_TYPES in proc.stderr and OUTPUT_TYPES in help_text
    for suffix in (".mov", ".mkv", ".gif"):
        assert suffix in help_text
