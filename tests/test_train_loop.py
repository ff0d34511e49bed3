"""Training: a tiny FGM+CRM overfits, resume after a kill is bit-exact, 2-process DDP stays in sync,
the trained folder loads in the pipeline, config errors are one line."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from flowctrl.cli import main as cli_main
from flowctrl.errors import ConfigError, MissingWeightsError
from flowctrl.models.crm import CameraReferenceModel
from flowctrl.models.fgm import FlowGenerationModel, sparse_condition
from flowctrl.train.config import load_config
from flowctrl.train.flow_loop import diffusion_loss, make_scheduler, read_metrics, train


pytestmark = pytest.mark.usefixtures("one_torch_thread")


REPO = Path(__file__).resolve().parents[1]

TINY_RUN = {
    "model": "fgm", "seed": 0, "max_steps": 6, "batch_size": 1, "learning_rate": 1e-3, "checkpoint_every": 3,
    "log_every": 100,
    "data": {"source": "synthetic", "num_scenes": 3, "num_frames": 9, "height": 32, "width": 32},
    "codec": {"latent_channels": 4, "block_out_channels": [8, 8, 8, 8], "layers_per_block": 1, "norm_num_groups": 4},
    "fgm": {"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 8, "time_embed_dim": 32},
    "crm": {"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 8, "time_embed_dim": 32},
}


def _config(tmp_path, name="run", **over):
    data = {**TINY_RUN, "output_dir": str(tmp_path / name), **over}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_tiny_fgm_crm_overfits_a_fixed_batch():
    from flowctrl.train.scenes import SceneConfig, render_scene

    torch.manual_seed(0)
    cfg = load_config(None, {"scheduler": {"prediction_type": "v_prediction"}})
    sched = make_scheduler(cfg)
    tiny = dict(num_attention_heads=2, attention_head_dim=8, time_embed_dim=32, num_layers=1,
                sample_height=4, sample_width=4, sample_frames=9)
    crm = CameraReferenceModel(**tiny)
    fgm = FlowGenerationModel(**tiny, reference_dim=16)
    clip = render_scene(0, SceneConfig(num_frames=9, height=32, width=32))
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(1, 9, 1, 32, 32, generator=g) > 0.97).float()
    from flowctrl.flow.camera import plucker_rays

    batch = {  # everything fixed, noise and timesteps included: the model can memorise it
        "latents": torch.randn(2, 3, 4, 4, 4, generator=g),
        "image_latents": torch.randn(2, 1, 4, 4, 4, generator=g),
        "condition": sparse_condition(clip.flow[None] * mask, mask, 8.0).expand(2, -1, -1, -1, -1),
        "strength": torch.tensor([1.0, 2.0]),
        "plucker": plucker_rays(clip.K[None], clip.w2c[None], 32, 32).expand(2, -1, -1, -1, -1),
        "noise": torch.randn(2, 3, 4, 4, 4, generator=g),
        "timesteps": torch.tensor([100, 600]),
    }
    opt = torch.optim.Adam(list(fgm.parameters()) + list(crm.parameters()), lr=3e-3)
    losses = []
    for _ in range(100):  # the loss is down >90% by ~50 steps; 100 leaves margin
        loss = diffusion_loss(fgm, crm, sched, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])
    # the CRM took part: its reference gates left zero
    assert fgm.transformer_blocks[0].attn1.processor.ref_out.weight.abs().sum() > 0


def _wait_for(pred, timeout=120.0):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_resume_after_kill_reproduces_the_uninterrupted_loss_curve(tmp_path):
    cfg_a = load_config(str(_config(tmp_path, "a", max_steps=8, checkpoint_every=3)))
    train(cfg_a, log=lambda m: None)
    full = [r["loss"] for r in read_metrics(tmp_path / "a")]
    assert len(full) == 8

    path_b = _config(tmp_path, "b", max_steps=8, checkpoint_every=3)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "flowctrl", "train", "flow", "--config", str(path_b)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "b" / "checkpoints" / "checkpoint-3"
    got = _wait_for(lambda: ckpt.is_dir() and len(read_metrics(tmp_path / "b")) >= 4)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert got, "the run never reached its first checkpoint"
    assert not (tmp_path / "b" / "final").exists()
    killed_at = len(read_metrics(tmp_path / "b"))
    assert 4 <= killed_at < 8 or (tmp_path / "b" / "final").exists()
    rc = cli_main(["train", "flow", "--config", str(path_b), "--resume", "latest"])
    assert rc == 0
    resumed = [r["loss"] for r in read_metrics(tmp_path / "b")]
    assert resumed == full  # bit-exact: same floats, step for step
    assert (tmp_path / "b" / "final" / "flow_pipeline.json").is_file()


def test_trained_folder_loads_in_the_pipeline(tmp_path):
    from flowctrl.pipelines.flow_generation import FlowGenerationPipeline

    cfg = load_config(str(_config(tmp_path, "p", max_steps=2, checkpoint_every=5)))
    res = train(cfg, log=lambda m: None)
    pipe = FlowGenerationPipeline.from_pretrained(res["final"])
    assert pipe.crm is not None and pipe.fgm.config.reference_dim == pipe.crm.hidden_dim
    g = torch.Generator().manual_seed(0)
    sparse = torch.zeros(1, 9, 2, 32, 32)
    mask = torch.zeros(1, 9, 1, 32, 32)
    sparse[:, :, 0, 10, 10], mask[:, :, :, 10, 10] = torch.linspace(0, 4, 9).view(1, 9), 1
    w2c = torch.eye(4).repeat(1, 9, 1, 1)
    w2c[0, :, 0, 3] = torch.linspace(0, 0.2, 9)
    unified = SimpleNamespace(flow=torch.zeros(1, 9, 2, 32, 32), sparse_flow=sparse, sparse_mask=mask, num_frames=9,
                              size=(32, 32), K=torch.tensor([[[30.0, 0, 16], [0, 30, 16], [0, 0, 1]]]), w2c=w2c)
    steps = []
    flow = pipe(torch.rand(1, 3, 32, 32), unified, num_inference_steps=3, generator=g,
                callback=lambda stage, done, total: steps.append((stage, done, total)))
    assert flow.shape == (1, 9, 2, 32, 32) and torch.isfinite(flow).all() and torch.equal(flow[:, 0], torch.zeros_like(flow[:, 0]))
    # the codec passes are stages of their own, so a progress display never looks stuck on them
    assert steps == [("flow encode", 0, 1), ("flow encode", 1, 1), ("flow_model", 1, 3), ("flow_model", 2, 3),
                     ("flow_model", 3, 3), ("flow decode", 0, 1), ("flow decode", 1, 1)]
    again = pipe(torch.rand(1, 3, 32, 32), unified, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                 sampler="dpm", guidance_scale=1.0)
    assert again.shape == flow.shape
    with pytest.raises(MissingWeightsError, match="flow_pipeline.json"):
        FlowGenerationPipeline.from_pretrained(tmp_path / "nothing")
    # through the public pipeline, at a size the model was not trained at (48×40 is not a multiple of 16)
    from flowctrl.controls import Arrow, Controls
    from flowctrl.pipelines.flowctrl_pipeline import FlowCtrlPipeline

    full = FlowCtrlPipeline(flow_model=res["final"])
    controls = Controls(arrows=[Arrow(start=(10, 10), end=(20, 15))], image_size=(48, 40))
    out = full(torch.rand(1, 3, 48, 40), controls=controls, num_frames=9, generator=torch.Generator().manual_seed(0))
    assert out.flow.shape == (1, 9, 2, 48, 40) and out.video.shape == (1, 9, 3, 48, 40)


def test_refiner_run_and_pipeline(tmp_path):
    from flowctrl.pipelines.flow_generation import FlowGenerationPipeline

    path = _config(tmp_path, "r", model="refiner", max_steps=3, refiner_frames=2, batch_size=2, refiner_layer_weight=0.5,
                   refiner={"channels": [8, 16, 16], "guided": True, "output": "attention", "clip_features": True},
                   data={**TINY_RUN["data"], "condition": {"mode": "random"}})
    res = train(load_config(str(path)), log=lambda m: None)
    assert len(read_metrics(res["output_dir"])) == 3
    pipe = FlowGenerationPipeline.from_pretrained(res["final"])
    sparse = torch.zeros(1, 4, 2, 24, 24)
    mask = torch.zeros(1, 4, 1, 24, 24)
    sparse[:, 1:, 0, 5, 5], mask[:, 1:, :, 5, 5] = 3.0, 1
    unified = SimpleNamespace(flow=torch.zeros(1, 4, 2, 24, 24), sparse_flow=sparse, sparse_mask=mask, num_frames=4,
                              size=(24, 24), camera_flow=None)
    assert pipe(torch.rand(1, 3, 24, 24), unified).shape == (1, 4, 2, 24, 24)  # 24 is padded to 32 inside


def test_pick_frames_keeps_clips_and_reports_their_times():
    from flowctrl.train.flow_loop import pick_frames

    t = 9
    flow = torch.arange(t, dtype=torch.float).view(1, t, 1, 1, 1).expand(3, t, 2, 4, 4).clone()
    batch = {"image": torch.rand(3, 3, 4, 4), "flow": flow, "dense": flow + 0.5, "mask": flow[:, :, :1] > 3,
             "strength": torch.ones(3)}
    out = pick_frames(batch, 4, torch.Generator().manual_seed(0))
    assert out["flow"].shape == (3, 4, 2, 4, 4) and out["mask"].shape == (3, 4, 1, 4, 4)
    frames = out["flow"][:, :, 0, 0, 0]
    assert torch.equal(out["times"], frames / (t - 1)) and (frames >= 1).all()
    assert all(len(set(r.tolist())) == 4 for r in frames)  # distinct frames per clip
    assert torch.equal(out["dense"], out["flow"] + 0.5) and torch.equal(out["image"], batch["image"])
    assert pick_frames(batch, 8, torch.Generator()) is batch  # every frame but the reference: unchanged


def test_two_process_cpu_ddp_through_accelerate_launch_runs_in_sync_and_resumes(tmp_path):
    """2 gloo processes through `accelerate launch`: parameters stay in sync and final/ is written; 2 steps, then
    --resume latest to 4, equals 4 uninterrupted steps (each process's data position and random streams come
    back from the checkpoint)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def launch(name, *extra):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "configs/accelerate/cpu_2proc.yaml"), "-m", "flowctrl", "train", "flow",
               "--config", str(_config(tmp_path, name, max_steps=4, checkpoint_every=10)), *extra]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]

    launch("whole")
    summary = json.loads((tmp_path / "whole" / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 4
    assert summary["in_sync"] and summary["param_checksums"][0] == summary["param_checksums"][1]
    assert (tmp_path / "whole" / "final" / "fgm" / "diffusion_pytorch_model.safetensors").is_file()
    launch("split", "--max-steps", "2")
    assert len(read_metrics(tmp_path / "split")) == 2
    launch("split", "--resume", "latest")
    whole = [r["loss"] for r in read_metrics(tmp_path / "whole")]
    assert len(whole) == 4 and [r["loss"] for r in read_metrics(tmp_path / "split")] == whole
    assert json.loads((tmp_path / "split" / "train_summary.json").read_text())["in_sync"]


def test_config_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: fgm\nlearning_rte: 1.0\n")
    with pytest.raises(ConfigError, match="learning_rte: is not a known key"):
        load_config(str(bad))
    assert cli_main(["train", "flow", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0]
    bad.write_text("model: gan\n")
    with pytest.raises(ConfigError, match="model"):
        load_config(str(bad))
    assert cli_main(["train", "flow", "--config", str(tmp_path / "missing.yaml")]) == 2


def test_residual_fgm_batch_targets_flow_minus_base_and_caches_per_condition():
    from flowctrl.models.fgm import coarse_base, zero_residual_latent
    from flowctrl.models.flow_codec import FlowCodec
    from flowctrl.train.data import ConditionConfig, SyntheticConfig, SyntheticFlowDataset
    from flowctrl.train.flow_loop import LatentCache, prepare_fgm_batch

    torch.manual_seed(0)
    codec = FlowCodec(latent_channels=4, block_out_channels=(8, 8, 8, 8)).eval()
    ds = SyntheticFlowDataset(SyntheticConfig(num_scenes=2, num_frames=5, height=32, width=32, with_dense=False,
                                              condition=ConditionConfig(mode="random"), condition_variants=1))
    cache = LatentCache(codec, codec)
    sched = make_scheduler(load_config(None, {"scheduler": {"prediction_type": "sample"}}))
    items = [ds[0], ds[1]]
    keys = [ds.condition_key(0), ds.condition_key(1)]
    ds.set_epoch(3)  # one condition variant: every epoch draws the same condition, under the same key
    assert ds.condition_key(0) == keys[0] and torch.equal(ds[0]["sparse"], items[0]["sparse"])
    batch = prepare_fgm_batch(items, [0, 1], cache, sched, 8.0, 0.0, torch.Generator().manual_seed(0), "parametric", keys)
    base = coarse_base(items[0]["sparse"][None], items[0]["mask"][None], "parametric")
    with torch.no_grad():
        want = codec.encode(items[0]["flow"][None] - base) - zero_residual_latent(codec, 5, (32, 32))
    assert torch.allclose(batch["latents"][0], want[0], atol=1e-5)
    assert batch["condition"].shape == (2, 5, 5, 32, 32) and torch.allclose(batch["condition"][0, :, 3:], torch.tanh(base[0] / 8.0))
    assert set(cache.residual) == set(keys) and all(v[0] is None for v in cache.store.values())  # no whole-flow encodes
    # the scheduler's x0 target: the loss of a model that predicts the clean latent is zero
    loss = diffusion_loss(lambda zt, t, *a, **k: SimpleNamespace(sample=batch["latents"]), None, sched, batch)
    assert float(loss) == 0.0
    # scheduler.train_timestep_min: only the high-noise steps that 1-step sampling visits
    high = prepare_fgm_batch(items * 8, list(range(16)), cache, sched, 8.0, 0.0, torch.Generator().manual_seed(1),
                             "parametric", keys * 8, min_timestep=950)
    assert int(high["timesteps"].min()) >= 950 and int(high["timesteps"].max()) <= 999
    with pytest.raises(ConfigError, match="train_timestep_min"):
        load_config(None, {"scheduler": {"train_timestep_min": 1000}})


def test_precomputed_latents_equal_the_ones_encoded_during_training(tmp_path):
    """data.precompute_latents: the batched encode before the clock gives the same (item, condition draw)
    latents and bases that get_residual computes one at a time, under the keys the epochs use."""
    from flowctrl.models.flow_codec import FlowCodec
    from flowctrl.train.data import ConditionConfig, SyntheticConfig, SyntheticFlowDataset
    from flowctrl.train.flow_loop import LatentCache

    torch.manual_seed(0)
    codec = FlowCodec(latent_channels=4, block_out_channels=(8, 8, 8, 8)).eval()
    ds = SyntheticFlowDataset(SyntheticConfig(num_scenes=3, num_frames=5, height=32, width=32, with_dense=False,
                                              condition=ConditionConfig(mode="random"), condition_variants=2))
    pre = LatentCache(codec, codec)
    assert pre.precompute(ds, "parametric", 2, batch_size=4, progress=False) == 6
    assert set(pre.residual) == {(i, v) for i in range(3) for v in range(2)}
    assert pre.precompute(ds, "parametric", 2, progress=False) == 0  # nothing left to encode
    lazy = LatentCache(codec, codec)
    for epoch in (0, 1, 2):  # epoch 2 reuses draw 0
        ds.set_epoch(epoch)
        for i in range(3):
            it = ds[i]
            z, base = lazy.get_residual(ds.condition_key(i), it["flow"], it["sparse"], it["mask"], "parametric")
            zp, bp = pre.residual[ds.condition_key(i)]
            assert torch.allclose(z, zp, atol=1e-5) and torch.allclose(base, bp, atol=1e-5)
            assert torch.allclose(lazy.get(i, it["flow"], it["image"], with_flow=False)[1], pre.store[i][1], atol=1e-5)
    # data.latent_cache_file: a later run with the same codecs and data reads them back; other data re-encodes
    cfg = load_config(None, {"data": {"num_scenes": 3, "condition_variants": 2, "precompute_latents": True}})
    key = pre.fingerprint(cfg.data, "parametric")
    pre.save(str(tmp_path / "lat.pt"), key)
    again = LatentCache(codec, codec)
    assert again.load(str(tmp_path / "lat.pt"), key) and set(again.residual) == set(pre.residual)
    assert torch.equal(again.residual[(2, 1)][0], pre.residual[(2, 1)][0])
    other = load_config(None, {"data": {"num_scenes": 4, "condition_variants": 2, "precompute_latents": True}})
    assert not LatentCache(codec, codec).load(str(tmp_path / "lat.pt"), again.fingerprint(other.data, "parametric"))
    assert not again.load(str(tmp_path / "missing.pt"), key)
    flat = LatentCache(codec, codec)  # an FGM without a base: the flow latents
    assert flat.precompute(ds, None, 2, progress=False) == 3
    it = ds[1]
    with torch.no_grad():
        assert torch.allclose(flat.store[1][0], codec.encode(it["flow"][None])[0], atol=1e-5)
    with pytest.raises(ConfigError, match="condition_variants"):
        load_config(None, {"data": {"precompute_latents": True}})


class _LinearDecoder(torch.nn.Module):
    """A codec stand-in whose decoded flow is linear in the latent: channel c moves both flow components by
    gain[c] × its value at every pixel of its 4-frame group (so the true decoder gains are gain²)."""

    def __init__(self, gain):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(gain), requires_grad=False)
        self.config = SimpleNamespace(flow_scale=2.0)

    def encode(self, flow):
        b, t, _, h, w = flow.shape
        return torch.zeros(b, (t - 1) // 4 + 1, len(self.gain), h // 8, w // 8)

    def decode(self, z, num_frames):
        v = (z * self.gain.view(1, 1, -1, 1, 1)).sum(2, keepdim=True)           # (B,T',1,h,w)
        v = torch.nn.functional.interpolate(v.flatten(0, 1), scale_factor=8.0).view(*v.shape[:3], v.shape[-2] * 8, -1)
        frames = torch.cat([v[:, :1], v[:, 1:].repeat_interleave(4, dim=1)], dim=1)[:, :num_frames]
        return frames.expand(-1, -1, 2, -1, -1)


def test_decoder_latent_weights_and_decoded_loss_measure_the_flow_error_of_a_latent_error():
    from flowctrl.train.flow_loop import DecodedLatentLoss, decoder_latent_weights

    dec = _LinearDecoder([1.0, 2.0, 0.0])
    w = decoder_latent_weights(dec, 9, (32, 32), generator=torch.Generator().manual_seed(0))
    assert w.shape == (1, 3, 3, 1, 1) and abs(float(w.mean()) - 1) < 1e-5
    # weight ∝ gain² (up to the probes' sample variance), zero for a channel the decoder ignores
    assert torch.all(w[0, :, 2] == 0) and torch.allclose(w[0, :, 1] / w[0, :, 0], torch.full((3,), 4.0), rtol=0.5)
    loss = DecodedLatentLoss(dec, 9, (32, 32), crop=(2, 2), weight=3.0)
    z0 = torch.randn(2, 3, 3, 4, 4)
    off = loss.offsets(2, (4, 4), torch.Generator().manual_seed(0))
    assert off.shape == (2, 2) and int(off.min()) >= 0 and int(off.max()) <= 2
    assert float(loss(z0, z0, off)) <= 3.0 * 1e-4 / 2.0 + 1e-6  # the true latent costs nothing (√1e-8 EPE floor)
    pred = z0.clone().requires_grad_(True)
    shifted = pred + torch.tensor([0.0, 0.5, 7.0]).view(1, 1, 3, 1, 1)  # channel 2 is invisible to the decoder
    value = loss(shifted, z0, off)
    # flow error 2·0.5 = 1 px per component → EPE √2 px, in units of flow_scale (2), times the weight 3
    assert abs(float(value.detach()) - 3.0 * 2 ** 0.5 / 2.0) < 1e-3
    value.backward()
    assert pred.grad is not None and float(pred.grad[:, :, 1].abs().sum()) > 0 and float(pred.grad[:, :, 2].abs().sum()) == 0
    with pytest.raises(ConfigError, match="fgm_latent_weighting"):
        load_config(None, {"fgm_latent_weighting": "lpips"})
    with pytest.raises(ConfigError, match="prediction_type: sample"):
        load_config(None, {"fgm_decoded_loss_weight": 1.0, "scheduler": {"prediction_type": "v_prediction"}})


class _BiasedDecoder(_LinearDecoder):
    """_LinearDecoder + 0.7 px everywhere: the decode of the zero latent is not zero flow."""

    def decode(self, z, num_frames):
        return super().decode(z, num_frames) + 0.7


def test_decoded_loss_against_the_true_flow():
    """target="flow" compares decode(pred + z₀) − decode(z₀) with the true residual flow: given the codec's round
    trip of the true latent as that flow, it equals the round-trip ("latent") loss; a whole-flow FGM decodes as is."""
    from flowctrl.train.flow_loop import DecodedLatentLoss

    dec = _BiasedDecoder([1.0, 2.0, 0.0])
    torch.manual_seed(0)
    z0, pred = torch.randn(2, 3, 3, 4, 4), torch.randn(2, 3, 3, 4, 4)
    round_trip = DecodedLatentLoss(dec, 9, (32, 32), crop=None, weight=3.0)
    to_flow = DecodedLatentLoss(dec, 9, (32, 32), crop=None, weight=3.0, target="flow")
    residual_flow = dec.decode(z0, 9) - 0.7        # what a residual FGM's pipeline adds to its base for latent z0
    assert torch.allclose(to_flow(pred, z0, None, residual_flow), round_trip(pred, z0, None))
    assert float(to_flow(z0, torch.zeros_like(z0), None, residual_flow)) < 1e-3  # the true latent costs nothing
    assert float(to_flow(pred, z0, None, residual_flow)) > 0.5
    whole = DecodedLatentLoss(dec, 9, (32, 32), crop=None, weight=1.0, target="flow", residual=False)
    assert float(whole(z0, z0, None, dec.decode(z0, 9))) < 1e-3  # no zero-residual offset, bias kept
    with pytest.raises(ValueError, match="target_flow"):
        to_flow(pred, z0, None)
    with pytest.raises(ValueError, match="crop must be None"):
        DecodedLatentLoss(dec, 9, (32, 32), crop=(2, 2), weight=1.0, target="flow")
    with pytest.raises(ConfigError, match="fgm_decoded_crop: null"):
        load_config(None, {"fgm_decoded_loss_weight": 1.0, "fgm_decoded_target": "flow", "fgm_decoded_crop": [4, 4],
                           "scheduler": {"prediction_type": "sample"}})
    with pytest.raises(ConfigError, match="fgm_decoded_target"):
        load_config(None, {"fgm_decoded_target": "pixels"})


def test_fgm_training_with_image_condition_weighted_and_decoded_losses_runs_and_resumes(tmp_path):
    """The residual FGM's extra options go through the real loop (fresh run and the bit-exact resume)."""
    run = {**TINY_RUN, "max_steps": 4, "checkpoint_every": 2, "cfg_dropout": 0.0,
           "scheduler": {"prediction_type": "sample", "train_timestep_min": 900},
           "fgm": {**TINY_RUN["fgm"], "base": "parametric", "condition_in_channels": 8, "condition_image": True},
           "data": {**TINY_RUN["data"], "condition_variants": 2, "precompute_latents": True,
                    "latent_cache_file": str(tmp_path / "lat.pt")},
           "fgm_latent_weighting": "decoder", "fgm_decoded_loss_weight": 1.0, "fgm_decoded_crop": [2, 2]}
    def config(name):
        cfg = load_config(None, {**run, "output_dir": str(tmp_path / name)})
        cfg.crm = None  # FGM alone (load_config keeps the default for a None override)
        return cfg

    full = train(config("a"), log=lambda m: None)
    assert (tmp_path / "lat.pt").is_file() and full["final"]
    logs = []
    cfg = config("b")
    train(cfg, log=logs.append, stop_after=2)
    assert any("latents read from" in m for m in logs)  # the second run reuses the first run's latents
    train(cfg, resume="latest", log=lambda m: None)
    assert [r["loss"] for r in read_metrics(tmp_path / "a")] == [r["loss"] for r in read_metrics(tmp_path / "b")]


def test_crm_camera_base_trains_on_the_cameras_plane_flow_and_the_decoded_loss_alone(tmp_path):
    """crm.camera_base_depth: the cached residuals are taken over plane flow + parametric interpolation (each
    item's own camera), under their own fingerprint; fgm_latent_loss_weight 0 trains on the decoded loss alone."""
    from flowctrl.models.fgm import coarse_base, plane_camera_flow
    from flowctrl.models.flow_codec import FlowCodec
    from flowctrl.train.data import ConditionConfig, SyntheticConfig, SyntheticFlowDataset
    from flowctrl.train.flow_loop import LatentCache, prepare_fgm_batch

    torch.manual_seed(0)
    codec = FlowCodec(latent_channels=4, block_out_channels=(8, 8, 8, 8)).eval()
    ds = SyntheticFlowDataset(SyntheticConfig(num_scenes=2, num_frames=5, height=32, width=32, with_dense=False,
                                              condition=ConditionConfig(mode="random"), condition_variants=1))
    cam = LatentCache(codec, codec, camera_depth=6.0)
    assert cam.precompute(ds, "parametric", 1, progress=False) == 2
    it = ds[1]
    plane = plane_camera_flow(it["K"][None], it["w2c"][None], 6.0, (32, 32))
    want = coarse_base(it["sparse"][None], it["mask"][None], "parametric", plane)[0]
    assert torch.allclose(cam.residual[(1, 0)][1], want, atol=1e-5) and plane.abs().max() > 0.1
    cfg = load_config(None, {"data": {"num_scenes": 2, "condition_variants": 1, "precompute_latents": True}})
    assert cam.fingerprint(cfg.data, "parametric") != LatentCache(codec, codec).fingerprint(cfg.data, "parametric")
    with pytest.raises(ValueError, match="K, w2c"):
        LatentCache(codec, codec, camera_depth=6.0).get_residual(None, it["flow"], it["sparse"], it["mask"], "parametric")

    sched = make_scheduler(load_config(None, {"scheduler": {"prediction_type": "sample"}}))
    batch = prepare_fgm_batch([ds[0], it], [0, 1], cam, sched, 8.0, 0.0, torch.Generator().manual_seed(0), "parametric",
                              [ds.condition_key(0), ds.condition_key(1)])
    wrong = lambda zt, t, *a, **k: SimpleNamespace(sample=batch["latents"] + 1.0)  # noqa: E731
    decoded = lambda pred, z0, offsets, target_flow: (pred - z0).abs().mean()  # noqa: E731
    only = diffusion_loss(wrong, None, sched, batch, decoded=decoded, latent_loss_weight=0.0)
    both = diffusion_loss(wrong, None, sched, batch, decoded=decoded)
    assert abs(float(only) - 1.0) < 1e-5 and abs(float(both) - 2.0) < 1e-5
    with pytest.raises(ConfigError, match="nothing to train on"):
        load_config(None, {"fgm_latent_loss_weight": 0.0})
    flow_target = SimpleNamespace(crop=None, target="flow")  # a flow-target decoded loss: the batch carries flow − base
    batch = prepare_fgm_batch([ds[0], it], [0, 1], cam, sched, 8.0, 0.0, torch.Generator().manual_seed(0), "parametric",
                              [ds.condition_key(0), ds.condition_key(1)], decoded=flow_target)
    assert torch.allclose(batch["target_flow"][1], it["flow"] - cam.residual[(1, 0)][1])

    run = {**TINY_RUN, "max_steps": 2, "checkpoint_every": 2, "cfg_dropout": 0.0, "output_dir": str(tmp_path / "cam"),
           "scheduler": {"prediction_type": "sample"}, "fgm": {**TINY_RUN["fgm"], "base": "parametric", "condition_in_channels": 5},
           "crm": {**TINY_RUN["crm"], "camera_base_depth": 6.0},
           "fgm_latent_loss_weight": 0.0, "fgm_decoded_loss_weight": 1.0}
    out = train(load_config(None, run), log=lambda m: None)
    assert json.loads((Path(out["final"]) / "crm" / "config.json").read_text())["camera_base_depth"] == 6.0
    # the same run with the true residual flow as the decoded loss's target (whole clips)
    cfg = load_config(None, {**run, "output_dir": str(tmp_path / "cam_flow")},
                      settings=["fgm_decoded_crop=null", "fgm_decoded_target=flow"])
    out = train(cfg, log=lambda m: None)
    losses = [r["loss"] for r in read_metrics(tmp_path / "cam_flow")]
    assert out["final"] and len(losses) == 2 and all(v == v and v > 0 for v in losses)


def test_cli_set_overrides_nested_keys_with_yaml_values(tmp_path, capsys):
    from flowctrl.train.config import apply_settings

    cfg = load_config(str(REPO / "configs/train/fgm_residual_tiny.yaml"),
                      settings=["codec_path=runs/codec/final", "data.num_scenes=200", "fgm_decoded_crop=null",
                                "scheduler.train_timestep_min=950", "fgm.num_layers=3"])
    assert cfg.codec_path == "runs/codec/final" and cfg.data.num_scenes == 200 and cfg.fgm_decoded_crop is None
    assert cfg.scheduler.train_timestep_min == 950 and cfg.scheduler.prediction_type == "sample"  # siblings kept
    assert cfg.fgm["num_layers"] == 3 and cfg.fgm["condition_image"] is True
    assert apply_settings({}, ["a.b.c=[4, 4]"], "x") == {"a": {"b": {"c": [4, 4]}}}
    with pytest.raises(ConfigError, match="is not KEY=VALUE"):
        load_config(None, settings=["num_scenes"])
    with pytest.raises(ConfigError, match="data.num_scens: is not a known key"):
        load_config(None, settings=["data.num_scens=3"])
    bad = _config(tmp_path)
    assert cli_main(["train", "flow", "--config", str(bad), "--set", "batch_size=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "batch_size" in err[0]


def test_lr_schedule_spans_the_runs_optimizer_updates_under_gradient_accumulation(tmp_path):
    # 6 batches, 2 per update: 3 updates; warmup of 2 batches = 1 update. A linear schedule peaks after
    # the first update and reaches 0 at the last (it used to count batches: peak 0.5×, end 0.75×).
    path = _config(tmp_path, "acc", model="refiner", max_steps=6, batch_size=1, gradient_accumulation_steps=2,
                   lr_scheduler="linear", lr_warmup_steps=2, learning_rate=1e-3, refiner_frames=1,
                   refiner={"channels": [8, 8]}, data={**TINY_RUN["data"], "condition": {"mode": "random"}})
    train(load_config(str(path)), log=lambda m: None)
    lrs = [r["lr"] for r in read_metrics(tmp_path / "acc")]
    assert lrs[1] == pytest.approx(1e-3) and lrs[3] == pytest.approx(5e-4) and lrs[5] == pytest.approx(0.0)
    assert lrs[0] == 0.0 and lrs[2] == lrs[1] and lrs[4] == lrs[3]  # unchanged between updates


def test_fgm_affinity_loss_joins_the_training_loss_on_synthetic_data(tmp_path):
    """fgm_affinity_weight: the first step of the same run (same batch, same initial weights) is higher by the
    weighted control-affinity loss (a positive BCE); it needs control tokens."""
    run = {**TINY_RUN, "max_steps": 1, "checkpoint_every": 5, "cfg_dropout": 0.0,
           "data": {**TINY_RUN["data"], "condition": {"mode": "random"}},
           "fgm": {**TINY_RUN["fgm"], "control_tokens": 4}}
    first = {}
    for weight in (0.0, 0.5):
        cfg = load_config(None, {**run, "output_dir": str(tmp_path / f"w{weight}"), "fgm_affinity_weight": weight})
        train(cfg, log=lambda m: None)
        first[weight] = read_metrics(tmp_path / f"w{weight}")[0]["loss"]
    assert 0.5 * 0.05 < first[0.5] - first[0.0] < 0.5 * 5.0
    with pytest.raises(ConfigError, match="control tokens"):
        load_config(None, {"fgm_affinity_weight": 0.5})
