"""`flowctrl generate`: end to end on the bundled example, outputs, README/CI commands, bad inputs."""
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from flowctrl.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "examples" / "astronaut.png"
ARROWS = REPO / "examples" / "a.json"
ORBIT = REPO / "configs" / "camera" / "orbit.json"

pytestmark = pytest.mark.filterwarnings("ignore:no depth given")


def _decode(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        return frames, float(stream.average_rate)


def _generate(tmp_path, *extra, name="out.mp4"):
    argv = ["generate", "--image", str(IMAGE), "--camera", str(ORBIT), "--arrows", str(ARROWS),
            "--size", "64x48", "--frames", "9", "-q", "-o", str(tmp_path / name), *extra]
    return main(argv)


def test_generate_bundled_example_writes_decodable_deterministic_mp4(tmp_path):
    assert _generate(tmp_path, name="a.mp4") == 0
    assert _generate(tmp_path, name="b.mp4") == 0
    a, rate = _decode(tmp_path / "a.mp4")
    b, _ = _decode(tmp_path / "b.mp4")
    assert a.shape == (9, 48, 64, 3) and rate == pytest.approx(8.0)
    assert np.array_equal(a, b)  # same seed, same video
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()
    assert np.abs(a[-1].astype(int) - a[0].astype(int)).mean() > 2  # it actually moves
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "b.mp4"]  # no temp files left


def test_extra_outputs_side_by_side_gif_pngs_and_flow(tmp_path):
    from flowctrl.flow.io import load_flow

    rc = _generate(tmp_path, "--side-by-side", "--gif", "--png-dir", str(tmp_path / "frames"),
                   "--save-flow", str(tmp_path / "flow.safetensors"), "--fps", "12", "--fill", "inpaint")
    assert rc == 0
    frames, rate = _decode(tmp_path / "out.mp4")
    assert frames.shape == (9, 48, 192, 3) and rate == pytest.approx(12.0)  # input | flow | result
    from flowctrl.video_io import read_video

    assert read_video(tmp_path / "out.gif").shape == (9, 48, 192, 3)
    assert len(list((tmp_path / "frames").glob("*.png"))) == 9
    flow = load_flow(tmp_path / "flow.safetensors")
    assert flow.shape == (1, 9, 2, 48, 64) and float(flow[0, 0].abs().max()) == 0.0
    assert float(flow[0, -1].abs().max()) > 0.5


def test_save_flow_npy_matches_rendered_flow(tmp_path):
    assert _generate(tmp_path, "--save-flow", str(tmp_path / "f.npy")) == 0
    flow = np.load(tmp_path / "f.npy")
    assert flow.shape == (1, 9, 2, 48, 64) and np.isfinite(flow).all()


def test_preview_writes_only_a_png(tmp_path):
    rc = main(["generate", "--image", str(IMAGE), "--arrows", str(ARROWS), "--camera", "orbit", "--preview",
               "-q", "--size", "64x64", "-o", str(tmp_path / "out.mp4")])
    assert rc == 0
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
    from PIL import Image

    with Image.open(tmp_path / "out.png") as im:
        assert im.format == "PNG" and im.size == (64, 64)


def test_readme_quick_start_is_what_ci_runs(tmp_path):
    readme = (REPO / "README.md").read_text()

    def block(marker):
        m = re.search(rf"<!-- {marker} -->\s*```\s*\n(.*?)\n```\s*<!-- /{marker} -->", readme, re.S)
        assert m, f"README.md has no {marker} block"
        return m.group(1).strip()

    run_cmd, test_cmd = block("run-command"), block("test-command")
    # .ci/run extracts the test command with sed; run its exact extraction and compare
    ci = (REPO / ".ci" / "run").read_text()
    sed_line = next(line for line in ci.splitlines() if line.startswith("test_cmd="))
    extracted = subprocess.run(["bash", "-c", sed_line + '; printf %s "$test_cmd"'], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout
    assert extracted == test_cmd
    assert 'bash -c "$test_cmd"' in ci and "pytest" in test_cmd and "pip install" in test_cmd
    # the run command installs and then runs `flowctrl generate` on the bundled example
    install, generate = [part.strip() for part in run_cmd.split("&&")]
    assert "pip install" in install
    argv = shlex.split(generate)
    assert argv[:2] == ["flowctrl", "generate"]
    args = build_parser().parse_args(argv[1:])
    assert Path(args.image) == Path("examples/astronaut.png") and Path(args.arrows) == Path("examples/a.json")
    assert Path(args.camera) == Path("configs/camera/orbit.json")
    for path in (args.image, args.arrows, args.camera):
        assert (REPO / path).is_file()
    # and it works (at a small size to stay fast)
    argv = [a if not a.endswith(".mp4") else str(tmp_path / "out.mp4") for a in argv[1:]]
    argv = [str(REPO / a) if (REPO / a).is_file() else a for a in argv]
    assert main(argv + ["--size", "32x32", "--frames", "3", "-q"]) == 0
    assert _decode(tmp_path / "out.mp4")[0].shape == (3, 32, 32, 3)


def _bad_cases(tmp_path):
    corrupt = tmp_path / "in" / "corrupt.png"
    corrupt.write_bytes(IMAGE.read_bytes()[:200])
    broken = tmp_path / "in" / "broken.json"
    broken.write_text('{"arrows": [ {"start": [1, 2], ')
    wrong = tmp_path / "in" / "wrong.json"
    wrong.write_text(json.dumps({"arrows": [{"start": [1, 2, 3], "end": [4, 5]}]}))
    image_copy = tmp_path / "in" / "img.png"
    image_copy.write_bytes(IMAGE.read_bytes())
    out = str(tmp_path / "out" / "o.mp4")
    base = ["generate", "--image", str(IMAGE)]
    return {
        "missing image": (["generate", "--image", str(tmp_path / "nope.png"), "-o", out], "nope.png"),
        "corrupt png": (["generate", "--image", str(corrupt), "-o", out], "corrupt.png"),
        "broken json": (base + ["--arrows", str(broken), "-o", out], "broken.json"),
        "wrong json": (base + ["--arrows", str(wrong), "-o", out], "wrong.json"),
        "unknown preset": (base + ["--camera", "barrel-roll", "-o", out], "barrel-roll"),
        "frames 1": (base + ["--frames", "1", "-o", out], "--frames"),
        "negative plane distance": (base + ["--plane-distance", "-2", "-o", out], "--plane-distance"),
        "absurd size": (base + ["--size", "100000x100000", "-o", out], "--size"),
        "bad size text": (base + ["--size", "big", "-o", out], "--size"),
        "missing out dir": (base + ["-o", str(tmp_path / "out" / "nodir" / "o.mp4")], "does not exist"),
        "output is input": (["generate", "--image", str(image_copy), "--preview", "-o", str(image_copy)], "input"),
        "bad out type": (base + ["-o", str(tmp_path / "out" / "o.avi")], ".avi"),
        "png folder not empty": (base + ["-o", str(tmp_path / "in")], "not an empty folder"),
        "diffusion without weights": (base + ["--backend", "diffusion", "-o", out], "--model"),
    }


def test_every_bad_input_exits_2_with_one_line_and_no_output(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    for name, (argv, needle) in _bad_cases(tmp_path).items():
        before = sorted(p.name for p in (tmp_path / "in").iterdir())
        rc = main(argv)
        err = capsys.readouterr().err.strip()
        assert rc == 2, name
        assert len(err.splitlines()) == 1 and needle in err, (name, err)
        assert err.startswith("flowctrl generate: error: ")
        assert list((tmp_path / "out").iterdir()) == [], name
        assert sorted(p.name for p in (tmp_path / "in").iterdir()) == before, name
    assert (tmp_path / "in" / "img.png").read_bytes() == IMAGE.read_bytes()  # input never overwritten


def test_real_process_exit_status_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "flowctrl", "generate", "--image", str(tmp_path / "x.png"),
                           "-o", str(tmp_path / "o.mp4")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "x.png" in proc.stderr and not (tmp_path / "o.mp4").exists()


def test_help_shows_an_example():
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices["generate"]
    text = sub.format_help()
    assert "example" in text and "flowctrl generate --image examples/astronaut.png" in text
    for flag in ("--camera", "--arrows", "--drags", "--ref-video", "--pose", "--mask", "--static-mask", "--depth",
                 "--depth-model", "--strength", "--frames", "--fps", "--size", "--backend", "--model",
                 "--flow-model", "--prompt", "--fill", "--side-by-side", "--gif", "--png-dir", "--seed",
                 "--preview", "--save-flow", "--output", "--negative-prompt", "--steps", "--guidance",
                 "--flow-guidance", "--preset", "--long-video", "--lora", "--lora-scale"):
        assert flag in text, flag
    assert "--backend diffusion --model" in text  # the diffusion flags have an example too


def test_sharp_resampling_is_a_flag_that_keeps_frame_0_and_sharpens_later_frames(tmp_path):
    """--sharp samples every frame once from the input (bicubic) where one surface lands: frame 0 is the
    input either way, and later frames keep more fine detail (Laplacian variance) than the splat's blend."""
    import cv2

    assert _generate(tmp_path, "--size", "128x128", name="soft.mp4") == 0
    assert _generate(tmp_path, "--size", "128x128", "--sharp", name="sharp.mp4") == 0
    soft, _ = _decode(tmp_path / "soft.mp4")
    sharp, _ = _decode(tmp_path / "sharp.mp4")
    assert np.abs(soft[0].astype(int) - sharp[0].astype(int)).mean() < 1.0

    def detail(frame):
        return cv2.Laplacian(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var()

    assert detail(sharp[4]) > 1.1 * detail(soft[4])
