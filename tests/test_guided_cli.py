"""``flowctrl generate --backend guided`` as users reach it: a subprocess, one line and exit 2 on errors."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import guided_tiny as tiny  # noqa: E402


@pytest.fixture(scope="module")
def cog(tmp_path_factory):
    return tiny.save_tiny("cogvideox", tmp_path_factory.mktemp("gcli") / "cog")


def _cli(args, repo_dir, tmp_path, **env):
    environment = {**os.environ, "PYTHONPATH": str(repo_dir), "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf"),
                   **env}
    return subprocess.run([sys.executable, "-m", "flowctrl", "generate", "--image", str(repo_dir / "examples" / "astronaut.png"),
                           "--frames", "9", "--size", "16x16", *args], capture_output=True, text=True, env=environment,
                          timeout=300)


def test_generate_with_a_saved_cogvideox_folder(cog, repo_dir, tmp_path):
    out = tmp_path / "out.gif"
    r = _cli(["--arrows", str(repo_dir / "examples" / "a.json"), "--backend", "guided", "--model", str(cog),
              "--prompt", "a cat", "--steps", "3", "--t-weak", "1", "--t-strong", "2", "--guidance", "2",
              "-o", str(out)], repo_dir, tmp_path)
    assert r.returncode == 0, r.stderr
    assert out.is_file() and out.stat().st_size > 0


def _one_line_exit_2(r, out, *needles):
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1, r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists()


def test_hub_id_offline_and_not_cached(repo_dir, tmp_path):
    out = tmp_path / "out.mp4"
    r = _cli(["--backend", "guided", "--model", "nobody-here/not-a-cached-model", "-o", str(out)], repo_dir, tmp_path,
             HF_HUB_OFFLINE="1")
    _one_line_exit_2(r, out, "nobody-here/not-a-cached-model", "HF_HUB_OFFLINE", "huggingface-cli download")


def test_folder_missing_a_component(cog, repo_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(cog, broken)
    shutil.rmtree(broken / "transformer")
    out = tmp_path / "out.mp4"
    r = _cli(["--backend", "guided", "--model", str(broken), "-o", str(out)], repo_dir, tmp_path)
    _one_line_exit_2(r, out, "transformer", "missing")


def test_bin_only_folder(repo_dir, tmp_path):
    pipe = tiny.tiny_pipeline("cogvideox")
    pipe.save_pretrained(str(tmp_path / "binonly"), safe_serialization=False)
    out = tmp_path / "out.mp4"
    r = _cli(["--backend", "guided", "--model", str(tmp_path / "binonly"), "-o", str(out)], repo_dir, tmp_path)
    _one_line_exit_2(r, out, ".bin", "safetensors")


@pytest.mark.parametrize("args,needle", [
    (["--backend", "guided"], "--model"),
    (["--backend", "guided", "--model", "x", "--flow-guidance", "2"], "--flow-guidance"),
    (["--backend", "guided", "--model", "x", "--t-weak", "5", "--t-strong", "2"], "--t-strong"),
    (["--backend", "guided", "--model", "x", "--preset", "24gb"], "full, offload, low, cpu"),
    (["--t-weak", "2"], "guided backend"),
    (["--backend", "guided", "--model", "x", "--steps", "10", "--t-weak", "10"], "--t-weak"),
])
def test_flag_errors(args, needle, repo_dir, tmp_path, capsys):
    """Checked before any loading (in-process through the real dispatcher: fast)."""
    from flowctrl.cli import main

    out = tmp_path / "out.mp4"
    rc = main(["generate", "--image", str(repo_dir / "examples" / "astronaut.png"), "--frames", "9", *args,
               "-o", str(out)])
    lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and needle in lines[0] and not out.exists()
