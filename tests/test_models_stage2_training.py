"""Stage-2 training: overfits a fixed batch, exact resume, LoRA weights saved/loaded on their own, config errors."""
import json

import pytest
import torch

from flowctrl.errors import ConfigError
from flowctrl.train.video_loop import (build_pipeline, encode_batch, load_video_config, save_lora,
                                       setup_trainable, train, training_loss)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_cfg(tmp_path, **top):
    raw = {
        "output_dir": str(tmp_path / "run"), "max_steps": 4, "batch_size": 2, "learning_rate": 2e-3,
        "lr_warmup_steps": 0, "log_every": 1, "checkpoint_every": 2,
        "data": {"num_scenes": 3, "num_frames": 5, "height": 16, "width": 16},
        "model": {"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 16, "patch_size": 4,
                  "time_embed_dim": 32},
    }
    raw.update(top)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "cfg.yaml"
    import yaml

    path.write_text(yaml.safe_dump(raw))
    return path


def _batch(size=16):
    g = torch.Generator().manual_seed(0)
    video = torch.rand(2, 5, 3, size, size, generator=g)
    flow = torch.randn(2, 5, 2, size, size, generator=g)
    flow[:, 0] = 0
    return video, flow


def test_tiny_model_overfits_a_fixed_batch(tmp_path):
    cfg = load_video_config(tiny_cfg(tmp_path))
    cfg.model.patch_size = 2                      # 12 outputs per token from width 32: no rank bottleneck
    cfg.data.height = cfg.data.width = 8
    pipe = build_pipeline(cfg)
    model = pipe.transformer
    params = setup_trainable(model, cfg)
    opt = torch.optim.AdamW(params, lr=1e-2)
    lat = encode_batch(pipe, *_batch(8))
    losses = []
    for _ in range(100):
        loss = training_loss(pipe, model, lat, torch.Generator().manual_seed(0), flow_dropout=0.0, image_noise=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.1 * losses[0]


def test_resume_is_exact_and_checkpoints_are_atomic(tmp_path):
    straight = train(load_video_config(tiny_cfg(tmp_path / "a")), log=lambda m: None)
    cfg_b = load_video_config(tiny_cfg(tmp_path / "b"))
    first = train(cfg_b, log=lambda m: None, stop_after=3)        # "killed" after step 3 (checkpoint at 2)
    assert first["final"] is None
    ckpts = sorted(p.name for p in (tmp_path / "b" / "run" / "checkpoints").iterdir())
    assert ckpts == ["checkpoint-2"]                               # no half-written folders left behind
    resumed = train(cfg_b, resume="latest", log=lambda m: None)
    assert resumed["step"] == 4
    a = straight["pipeline"].transformer.state_dict()
    b = resumed["pipeline"].transformer.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics = [json.loads(l) for l in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    # the final folder loads as a diffusion backend
    from flowctrl.pipelines.diffusion import DiffusionBackend

    backend = DiffusionBackend.from_pretrained(tmp_path / "b" / "run" / "final", num_inference_steps=1, guidance_scale=1.0)
    assert backend.pipeline.vae is None and backend.pipeline.config.pixel_flow_scale == 4.0


def test_lora_weights_save_and_load_separately(tmp_path):
    pytest.importorskip("peft")
    cfg = load_video_config(tiny_cfg(tmp_path, lora={"rank": 4, "train_new_parts": False}))
    pipe = build_pipeline(cfg)
    base_state = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    params = setup_trainable(pipe.transformer, cfg)
    names = [n for n, p in pipe.transformer.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    opt = torch.optim.AdamW(params, lr=1e-2)
    lat = encode_batch(pipe, *_batch())
    for _ in range(3):
        loss = training_loss(pipe, pipe.transformer, lat, torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
    image, flow = _batch()[0][:1, 0], _batch()[1][:1]
    pipe.transformer.eval()
    ref = pipe(image, flow, num_inference_steps=2, guidance_scale=1.0, generator=torch.Generator().manual_seed(0))
    lora_dir = save_lora(pipe, tmp_path / "lora")
    files = list(lora_dir.iterdir())
    assert [f.name for f in files] == ["pytorch_lora_weights.safetensors"]
    from safetensors.torch import load_file

    keys = list(load_file(str(files[0])))
    assert keys and all("lora" in k for k in keys)                 # only the adapter, not the base model
    # a fresh pipeline with the untouched base weights + the LoRA file reproduces the trained model
    fresh = build_pipeline(cfg)
    assert all(torch.equal(fresh.transformer.state_dict()[k], v) for k, v in base_state.items())
    fresh.load_lora_weights(str(lora_dir))
    fresh.transformer.eval()
    out = fresh(image, flow, num_inference_steps=2, guidance_scale=1.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    from flowctrl.errors import MissingWeightsError
    from flowctrl.pipelines.diffusion import DiffusionBackend

    via_backend = DiffusionBackend(build_pipeline(cfg), lora=lora_dir, num_inference_steps=2, guidance_scale=1.0)
    via_backend.pipeline.transformer.eval()
    out2 = via_backend.pipeline(image, flow, num_inference_steps=2, guidance_scale=1.0,
                                generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out2, ref, atol=1e-5, rtol=0)
    with pytest.raises(MissingWeightsError, match="lora"):
        DiffusionBackend(build_pipeline(cfg), lora=tmp_path / "no_lora")
    plain = build_pipeline(cfg)
    plain.transformer.eval()
    base_out = plain(image, flow, num_inference_steps=2, guidance_scale=1.0, generator=torch.Generator().manual_seed(0))
    assert (base_out - ref).abs().max() > 1e-5                     # the LoRA did change the model


def test_config_errors_name_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_steps: 3\nmodel: {layers: 2}\n")
    with pytest.raises(ConfigError) as info:
        load_video_config(bad)
    assert str(bad) in str(info.value) and "model.layers" in str(info.value)
    bad.write_text("data: {source: shards}\n")
    with pytest.raises(ConfigError, match="data.shards"):
        load_video_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_video_config(tmp_path / "missing.yaml")


def test_repo_configs_parse(repo_dir):
    cfg = load_video_config(repo_dir / "configs" / "train" / "video_tiny.yaml")
    assert cfg.model.init == "tiny" and cfg.lora.rank == 0
    lora = load_video_config(repo_dir / "configs" / "train" / "video_motion_lora.yaml")
    assert lora.lora.rank == 16 and lora.data.camera == "static"


def test_shard_and_texture_datasets(tmp_path):
    from flowctrl.train.shards import write_shard
    from flowctrl.train.video_loop import ShardVideoDataset, TextureMotionDataset
    from flowctrl.flow.warp import backward_warp

    # shards from `flowctrl prepare-data` (F): resized to the training size, flow scaled with it
    video = torch.rand(6, 3, 8, 12)
    flow = torch.zeros(6, 2, 8, 12)
    flow[:, 0] = 1.0
    flow[:, 1] = -0.5
    write_shard(tmp_path / "a.safetensors", video, flow, torch.eye(3), metadata={"caption": "a pan"})
    item = ShardVideoDataset(str(tmp_path), num_frames=5, height=16, width=24)[0]
    assert item["video"].shape == (5, 3, 16, 24) and item["caption"] == "a pan"
    torch.testing.assert_close(item["flow"][:, 0], torch.full((5, 16, 24), 2.0))
    torch.testing.assert_close(item["flow"][:, 1], torch.full((5, 16, 24), -1.0))
    with pytest.raises(ConfigError, match="num_frames"):
        ShardVideoDataset(str(tmp_path), num_frames=9, height=16, width=24)[0]
    # moving textures: the flow is exact — frame t sampled at p + F_t(p) is frame 0 (interior pixels)
    ds = TextureMotionDataset(2, 7, 5, 24, 24)
    it = ds[0]
    assert torch.equal(it["video"], ds[0]["video"]) and torch.equal(it["flow"][0], torch.zeros(2, 24, 24))
    v, f = it["video"], it["flow"]
    warped = backward_warp(v[1:], f[1:], padding="border")
    err = (warped - v[:1])[..., 5:-5, 5:-5].abs().mean()
    still = (v[1:] - v[:1])[..., 5:-5, 5:-5].abs().mean()
    assert err < 0.25 * still


def test_latent_space_training_with_3d_vae_and_flow_codec(tmp_path):
    """model.pixel_space: false → a (tiny) CogVideoX VAE + FlowCodec encode video and flow; no latent cache."""
    cfg = load_video_config(tiny_cfg(tmp_path, max_steps=2, cache_latents=False,
                                     model={"pixel_space": False, "vae_block_out_channels": [8, 8, 8],
                                            "vae_latent_channels": 4, "num_layers": 1, "num_attention_heads": 2,
                                            "attention_head_dim": 16, "patch_size": 2, "time_embed_dim": 32}))
    result = train(cfg, log=lambda m: None)
    pipe = result["pipeline"]
    assert pipe.vae is not None and pipe.flow_codec is not None and result["step"] == 2
    assert pipe.transformer.config.flow_in_channels == 4
    from flowctrl.pipelines.diffusion import DiffusionBackend

    backend = DiffusionBackend.from_pretrained(result["final"], num_inference_steps=1, guidance_scale=1.0)
    g = torch.Generator().manual_seed(0)

    class U:
        flow = torch.zeros(1, 5, 2, 16, 16)

    video = backend.render(torch.rand(1, 3, 16, 16, generator=g), U(), num_frames=5, generator=g).video
    assert video.shape == (1, 5, 3, 16, 16)


def test_flow_branch_learns_flow_dependent_videos(tmp_path):
    """Same image, two flows (pan right / pan left): after a short training the model's one-step
    prediction (t = 999, pure noise) follows the flow it is given, not the other one."""
    cfg = load_video_config(tiny_cfg(tmp_path))
    cfg.model.patch_size = 2
    cfg.model.flow_gate_init_std = 0.02
    cfg.data.height = cfg.data.width = 8
    pipe = build_pipeline(cfg)
    model = pipe.transformer
    g = torch.Generator().manual_seed(0)
    image = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(8, 8), mode="bilinear")
    t = torch.arange(5.0).view(1, 5, 1, 1)
    flows = torch.zeros(2, 5, 2, 8, 8)
    flows[0, :, 0] = t[0]                 # content moves right by 1 px per frame
    flows[1, :, 0] = -t[0]                # content moves left
    videos = torch.stack([torch.stack([image[0].roll(int(s) * k, dims=-1) for k in range(5)]) for s in (1, -1)])
    lat = encode_batch(pipe, videos, flows)
    text = torch.zeros(2, 4, 16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ts = torch.full((2,), 999)

    def x0(flow_lat):
        noise = torch.randn(lat["z0"].shape, generator=torch.Generator().manual_seed(1))
        v = model(torch.cat([noise, lat["image"]], 2), text, ts, flow_latents=flow_lat).sample
        return -v                          # zero terminal SNR: x0 = -v at t = 999

    for _ in range(150):
        loss = (x0(lat["flow"]) - lat["z0"]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        right = (x0(lat["flow"]) - lat["z0"]).pow(2).mean()
        swapped = (x0(lat["flow"].flip(0)) - lat["z0"]).pow(2).mean()
    assert right < 0.25 * swapped          # measured: 0.003 vs 0.067


def test_warped_image_option_feeds_training_the_pipelines_flow_condition(tmp_path):
    """model.warped_image: the transformer gets flow_warp_channels = 3 + 1 (pixel space) and training sees
    exactly what inference builds (FlowCtrlVideoPipeline.encode_flow_condition)."""
    cfg = load_video_config(tiny_cfg(tmp_path, model={"num_layers": 1, "num_attention_heads": 2,
                                                      "attention_head_dim": 16, "patch_size": 4, "time_embed_dim": 32,
                                                      "warped_image": True, "flow_token_skip": True,
                                                      "flow_gate_init_std": 0.02}))
    pipe = build_pipeline(cfg)
    assert pipe.transformer.config.flow_warp_channels == 4 and pipe.transformer.config.flow_token_skip
    video, flow = _batch()
    lat = encode_batch(pipe, video, flow)
    assert lat["flow"].shape == (2, 5, 2 + 4, 16, 16)
    assert torch.equal(lat["flow"], pipe.encode_flow_condition(flow, video[:, 0]))
    setup_trainable(pipe.transformer, cfg)
    training_loss(pipe, pipe.transformer, lat, torch.Generator().manual_seed(0), flow_dropout=0.0).backward()
    grad = pipe.transformer.flow_patch_embed.weight.grad.view(-1, 6, 4, 4)   # (D, C, p, p) patch layout
    assert grad[:, 2:].abs().sum() > 0                                       # the warped-image channels learn


def test_sample_prediction_regresses_x0_and_warped_input_option(tmp_path):
    """scheduler.prediction_type: sample → the training target is z0 itself (an oracle that returns the clean
    video scores exactly 0; under v_prediction it does not); model.warped_input / warped_output_skip build the
    zero-initialized input channels / output skip and need model.warped_image."""
    model_cfg = {"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 16, "patch_size": 4,
                 "time_embed_dim": 32, "warped_image": True, "warped_input": True, "warped_output_skip": True}
    cfg = load_video_config(tiny_cfg(tmp_path, model=model_cfg, scheduler={"prediction_type": "sample"}))
    pipe = build_pipeline(cfg)
    assert pipe.scheduler.config.prediction_type == "sample"
    proj = pipe.transformer.flow_input_proj
    assert pipe.transformer.config.flow_warp_input and proj.in_features == 4 * 4 * 4 and not proj.weight.any()
    skip = pipe.transformer.flow_output_proj
    assert (skip.in_features, skip.out_features) == (3 + 1, 3) and not skip.weight.any()
    video, flow = _batch()
    lat = encode_batch(pipe, video, flow)

    class Oracle(torch.nn.Module):          # returns the clean latent whatever it is given
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(()))

        def forward(self, hidden_states, **kw):
            return (lat["z0"] + self.p,)

    assert training_loss(pipe, Oracle(), lat, torch.Generator().manual_seed(0)).item() == 0.0
    pipe.scheduler.register_to_config(prediction_type="v_prediction")
    assert training_loss(pipe, Oracle(), lat, torch.Generator().manual_seed(0)).item() > 0.01
    with pytest.raises(ConfigError, match="model.warped_input"):
        load_video_config(tiny_cfg(tmp_path, model={**model_cfg, "warped_image": False}))
    from flowctrl.train.video_loop import param_groups

    params = setup_trainable(pipe.transformer, cfg)
    assert param_groups(pipe.transformer, params, cfg) == [{"params": params}]
    cfg.output_skip_lr_scale = 10.0
    rest, fast = param_groups(pipe.transformer, params, cfg)
    names = {id(p): n for n, p in pipe.transformer.named_parameters()}
    assert sorted(names[id(p)] for p in fast["params"]) == ["flow_output_proj.bias", "flow_output_proj.weight",
                                                            "flow_output_time.bias", "flow_output_time.weight"]
    assert fast["lr"] == 10 * cfg.learning_rate and len(rest["params"]) + 4 == len(params)
    with pytest.raises(ConfigError, match="model.warped_output_skip"):
        load_video_config(tiny_cfg(tmp_path, model={**model_cfg, "warped_image": False, "warped_input": False}))
    with pytest.raises(ConfigError, match="prediction_type"):
        load_video_config(tiny_cfg(tmp_path, scheduler={"prediction_type": "flow"}))


def test_training_loss_under_bf16_autocast_matches_float32(tmp_path):
    """The stage-2 loss (latent-space model: 3D VAE and flow codec) under the CPU's bf16 autocast,
    the mixed precision of the GPU configs: finite, within bf16 rounding of float32, gradients reach the flow branch."""
    cfg = load_video_config(tiny_cfg(tmp_path, max_steps=1, model={
        "pixel_space": False, "vae_block_out_channels": [8, 8, 8], "vae_latent_channels": 4, "num_layers": 1,
        "num_attention_heads": 2, "attention_head_dim": 16, "patch_size": 2, "time_embed_dim": 32}))
    pipe = build_pipeline(cfg)
    model = pipe.transformer
    torch.nn.init.normal_(model.flow_gate.weight, std=0.05)   # open the zero gate: the flow branch carries gradient
    video, flow = _batch()
    with torch.no_grad():
        latents = encode_batch(pipe, video, flow)
        full = training_loss(pipe, model, latents, torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = training_loss(pipe, model, latents, torch.Generator().manual_seed(0))
    half.backward()
    assert half.dtype == torch.float32 and torch.isfinite(half) and half.item() == pytest.approx(full.item(), rel=0.05)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.flow_gate.weight.grad.abs().sum() > 0
