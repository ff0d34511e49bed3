"""Depth by default: ``--depth-model auto`` from the HF cache, the plane fallback, the per-image cache."""
import subprocess
import sys
import warnings

import pytest
import torch

from flowctrl.depth import DEFAULT_DEPTH_MODEL, FlatDepthWarning, resolve_depth
from flowctrl.depth import auto as depth_auto
from flowctrl.errors import MissingWeightsError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny_depth_anything(folder):
    transformers = pytest.importorskip("transformers")
    backbone = transformers.Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                                         image_size=28, patch_size=14,
                                         out_features=["stage1", "stage2"], reshape_hidden_states=False)
    config = transformers.DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=16,
                                              reassemble_factors=[2, 1], neck_hidden_sizes=[8, 8],
                                              fusion_hidden_size=8, head_hidden_size=4, patch_size=14)
    torch.manual_seed(0)
    transformers.DepthAnythingForDepthEstimation(config).save_pretrained(folder, safe_serialization=True)
    return folder


def _fake_hf_home(root):
    """A Hugging Face cache holding a tiny random model under the default hub id (no downloads)."""
    repo = root / "hub" / ("models--" + DEFAULT_DEPTH_MODEL.replace("/", "--"))
    commit = "0" * 40
    _tiny_depth_anything(repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return root


@pytest.fixture
def fresh(monkeypatch):
    import flowctrl.depth as depth_pkg

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    depth_auto.forget_auto_failure()
    depth_auto.clear_depth_cache()
    depth_pkg._ESTIMATORS.clear()
    yield monkeypatch
    depth_auto.forget_auto_failure()
    depth_auto.clear_depth_cache()
    depth_pkg._ESTIMATORS.clear()


def test_auto_offline_with_empty_cache_falls_back_to_the_plane_with_one_warning(tmp_path, fresh):
    fresh.setenv("HF_HOME", str(tmp_path / "empty"))
    fresh.delenv("HF_HUB_CACHE", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = resolve_depth(torch.rand(1, 3, 12, 16), depth_model="auto")
    flat = [w for w in caught if issubclass(w.category, FlatDepthWarning)]
    assert len(flat) == 1 and "HF_HUB_OFFLINE" in str(flat[0].message) and "\n" not in str(flat[0].message)
    assert torch.allclose(d, torch.ones(1, 1, 12, 16))
    with pytest.raises(MissingWeightsError, match="not available locally"):  # asked for by name: an error
        resolve_depth(torch.rand(1, 3, 8, 8), depth_model=DEFAULT_DEPTH_MODEL)


def test_auto_uses_the_cached_model_once_per_image(tmp_path, fresh):
    fresh.setenv("HF_HOME", str(_fake_hf_home(tmp_path / "hf")))
    fresh.delenv("HF_HUB_CACHE", raising=False)
    from flowctrl.depth.anything import DepthAnythingEstimator

    calls = []
    original = DepthAnythingEstimator.__call__
    fresh.setattr(DepthAnythingEstimator, "__call__", lambda self, im: calls.append(1) or original(self, im))
    image = torch.rand(1, 3, 20, 30)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FlatDepthWarning)  # no plane: the model is used
        d1 = resolve_depth(image)  # the default is auto
        d2 = resolve_depth(image.clone(), depth_model="auto")
    assert d1.shape == (1, 1, 20, 30) and (d1 > 0).all() and abs(float(d1.median()) - 1.0) < 0.05
    assert torch.allclose(d1, d2) and len(calls) == 1  # same content: cached, one model call
    resolve_depth(torch.rand(1, 3, 20, 30))
    assert len(calls) == 2  # another image: a new call
    by_id = resolve_depth(image, depth_model=DEFAULT_DEPTH_MODEL)  # the hub id by name, from the cache
    assert torch.allclose(by_id, d1)


def test_depth_model_none_is_the_plane(fresh):
    with pytest.warns(FlatDepthWarning):
        d = resolve_depth(torch.rand(1, 3, 6, 6), depth_model="none", plane_distance=2.0)
    assert torch.allclose(d, torch.full((1, 1, 6, 6), 2.0))


def _run(args, env_extra, tmp_path):
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    return subprocess.run([sys.executable, "-m", "flowctrl", *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)


def test_cli_auto_default_and_missing_explicit_model(tmp_path, repo_dir):
    import os

    image = repo_dir / "examples" / "astronaut.png"
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty"), "PYTHONPATH": str(repo_dir)}
    base = ["generate", "--image", str(image), "--camera", "dolly-in", "--frames", "4", "--size", "64x64"]
    r = _run([*base, "-o", str(tmp_path / "a.mp4")], env, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("fronto-parallel plane") == 1  # offline, nothing cached: the plane, one line
    r = _run([*base, "--depth-model", "depth-anything/not-cached-xyz", "-o", str(tmp_path / "b.mp4")], env, tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "not available" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not os.path.exists(tmp_path / "b.mp4")
