"""Training data: control-like sparse sampling from true flow, prepare-data shards (PyAV clips, corrupt video)."""
import json

import av
import numpy as np
import pytest
import torch

from flowctrl.cli import main as cli_main
from flowctrl.train.data import ConditionConfig, ShardConditionDataset, sample_condition
from flowctrl.train.scenes import SceneConfig, render_scene
from flowctrl.train.shards import ShardDataset


pytestmark = pytest.mark.usefixtures("one_torch_thread")



@pytest.fixture(scope="module")
def clip():
    return render_scene(3, SceneConfig(num_frames=8, height=32, width=32))


@pytest.mark.parametrize("mode", ["random", "grid", "edge", "camera"])
def test_sparse_condition_holds_the_true_flow_at_its_points(clip, mode):
    cfg = ConditionConfig(mode=mode, max_points=10, grid_step=8)
    g = torch.Generator().manual_seed(5)
    sparse, mask, used = sample_condition(clip.video[0], clip.flow, clip.visibility, cfg, g)
    assert used == mode and sparse.shape == (8, 2, 32, 32) and mask.shape == (8, 1, 32, 32)
    if mode == "camera":
        assert mask.sum() == 0 and sparse.abs().sum() == 0
        return
    sel = mask[:, 0] > 0
    assert sel.any()
    true = clip.flow.permute(0, 2, 3, 1)[sel]
    assert torch.allclose(sparse.permute(0, 2, 3, 1)[sel], true)
    assert torch.all(clip.visibility[:, 0][sel] > 0.5)  # a point is dropped where it is hidden
    assert torch.all(sparse.permute(0, 2, 3, 1)[~sel] == 0)
    if mode == "grid":
        ys, xs = torch.nonzero(mask.amax(0)[0], as_tuple=True)
        assert len(set((ys % 8).tolist())) == 1 and len(set((xs % 8).tolist())) == 1
    again = sample_condition(clip.video[0], clip.flow, clip.visibility, cfg, torch.Generator().manual_seed(5))
    assert torch.equal(again[0], sparse)


def test_edge_sampling_prefers_edges(clip):
    """Edge-biased points sit on stronger image/motion gradients than uniformly random ones."""
    gray = clip.video[0].mean(0)
    grad = torch.zeros_like(gray)
    grad[:-1, :-1] = (gray[:, 1:] - gray[:, :-1]).abs()[:-1] + (gray[1:] - gray[:-1]).abs()[:, :-1]

    def mean_grad(mode):
        vals = []
        for s in range(20):
            _, m, _ = sample_condition(clip.video[0], clip.flow, None, ConditionConfig(mode=mode), torch.Generator().manual_seed(s))
            vals.append(grad[m.amax(0)[0] > 0])
        return torch.cat(vals).mean()

    assert mean_grad("edge") > 1.3 * mean_grad("random")


def _write_mp4(path, video):
    frames = (video.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "10"}
        for f in frames:
            for pkt in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(pkt)
        for pkt in stream.encode():
            out.mux(pkt)


def test_prepare_data_writes_readable_shards_and_skips_a_corrupt_video(tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    clips = {}
    for seed in (0, 1):
        c = render_scene(seed, SceneConfig(num_frames=8, height=48, width=48, num_layers=(1, 1)))
        clips[f"clip{seed}"] = c
        _write_mp4(videos / f"clip{seed}.mp4", c.video)
    (videos / "clip0.txt").write_text("a synthetic room")
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    out = tmp_path / "shards"
    rc = cli_main(["prepare-data", str(videos), "-o", str(out), "--num-frames", "8", "--size", "48x48", "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 0
    assert "broken.mp4" in captured.err and "skipped" in captured.err
    assert "2 video(s)" in captured.out and "1 failed" in captured.out
    ds = ShardDataset(out)
    assert len(ds) == 2
    for item in ds:
        assert item["video"].shape == (8, 3, 48, 48) and item["flow"].shape == (8, 2, 48, 48)
        assert item["K"].shape == (3, 3) and "w2c" not in item
        assert torch.equal(item["flow"][0], torch.zeros(2, 48, 48))
        truth = clips[item["name"].split("-")[0]]
        # DIS flow of the decoded clip is far closer to the exact flow than no motion at all
        err = (item["flow"][1:] - truth.flow[1:]).norm(dim=1).mean()
        assert err < 0.6 * truth.flow[1:].norm(dim=1).mean()
        assert (item["video"][0] - truth.video[0]).abs().mean() < 0.05
    assert ds[0]["caption"] == "a synthetic room"
    manifest = [json.loads(l) for l in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["status"] for r in manifest) == ["failed", "ok", "ok"]
    # resumable: a second run finds everything done
    assert cli_main(["prepare-data", str(videos), "-o", str(out), "--num-frames", "8", "--size", "48x48", "--no-progress"]) == 0
    assert "3 already done" in capsys.readouterr().out
    item = ShardConditionDataset(str(out), ConditionConfig(mode="random"))[1]
    assert item["plucker"].shape == (8, 6, 48, 48) and item["dense"].shape == (8, 2, 48, 48)
    assert item["sparse"].shape == (8, 2, 48, 48) and item["strength"].shape == ()


def test_prepare_data_user_errors(tmp_path, capsys):
    assert cli_main(["prepare-data", str(tmp_path / "none"), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a folder" in err[0]
    (tmp_path / "v").mkdir()
    assert cli_main(["prepare-data", str(tmp_path / "v"), "-o", str(tmp_path / "v")]) == 2
    assert "separate folder" in capsys.readouterr().err


def test_scene_cache_round_trips_and_datasets_agree(tmp_path):
    from flowctrl.train.data import SyntheticConfig, SyntheticFlowDataset, render_clip, scene_cache_file

    fresh = render_clip(7, 4, 32, 32)
    cached = render_clip(7, 4, 32, 32, str(tmp_path))
    path = scene_cache_file(str(tmp_path), 7, 4, 32, 32)
    assert path.endswith(".safetensors") and __import__("os").path.isfile(path)
    again = render_clip(7, 4, 32, 32, str(tmp_path))  # read back from disk
    assert set(fresh) == set(again) and all(torch.equal(fresh[k], again[k]) and torch.equal(fresh[k], cached[k]) for k in fresh)
    a = SyntheticFlowDataset(SyntheticConfig(num_scenes=1, seed=7, num_frames=4, height=32, width=32))
    b = SyntheticFlowDataset(SyntheticConfig(num_scenes=1, seed=7, num_frames=4, height=32, width=32, cache_dir=str(tmp_path)))
    ia, ib = a[0], b[0]
    assert all(torch.equal(ia[k], ib[k]) for k in ia)


def test_prepare_shards_stores_the_poses_of_the_given_estimator(tmp_path):
    """prepare_shards takes the pose estimator as a callable (the command passes pycolmap's): its w2c for
    registered frames land in the shard, unregistered frames get the identity."""
    from types import SimpleNamespace

    from flowctrl.train.shards import prepare_shards

    videos = tmp_path / "videos"
    videos.mkdir()
    _write_mp4(videos / "a.mp4", render_scene(3, SceneConfig(num_frames=8, height=48, width=48, num_layers=(1, 1))).video)
    w2c = torch.eye(4).repeat(8, 1, 1)
    w2c[:, 0, 3] = torch.arange(8.0) * 0.1
    registered = torch.tensor([True] * 7 + [False])
    seen = []

    def estimator(clip, K):
        seen.append((tuple(clip.shape), tuple(K.shape)))
        return SimpleNamespace(w2c=w2c.double(), registered=registered)

    counts = prepare_shards(videos, tmp_path / "out", num_frames=8, size=(48, 48), pose_estimator=estimator,
                            progress=False)
    assert counts["ok"] == 1 and seen == [((8, 3, 48, 48), (3, 3))]
    item = ShardDataset(tmp_path / "out")[0]
    assert torch.allclose(item["w2c"][:7], w2c[:7]) and torch.allclose(item["w2c"][7], torch.eye(4))
