"""The guided backend (Time-to-Move) on tiny random diffusers I2V pipelines saved with ``save_pretrained``.

Known answers: with ``t_weak = 0`` and an empty mask the adapters reproduce diffusers' own pipelines
(same start noise as ``latents``); a full mask held to the last step returns ``z_ref``; an empty mask
starts from the scheduler's own forward process at ``t_weak`` (SDEdit) with ``(N − t_weak) × CFG``
transformer branches; Wan 2.2 switches experts at ``boundary_ratio``.
"""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import guided_tiny as tiny  # noqa: E402

from flowctrl.errors import MissingWeightsError  # noqa: E402
from flowctrl.pipelines.denoisers import load_denoiser  # noqa: E402
from flowctrl.pipelines.guided import GuidedBackend, _to_pil, motion_mask  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
T = tiny.FRAMES


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("guided")
    return {fam: tiny.save_tiny(fam, root / fam) for fam in ("cogvideox", "wan21", "wan22", "ti2v")}


def _inputs(fam, seed=0):
    H, W = tiny.SIZE[fam]
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, H, W, generator=g), torch.rand(1, T, 3, H, W, generator=g)


def _run(backend, fam, mask, *, t_weak, t_strong, steps=3, guidance=3.0, noise=None, output_type="latent"):
    image, warped = _inputs(fam)
    return backend.generate(image, warped, mask, prompt="a cat", negative_prompt="blurry", num_inference_steps=steps,
                            guidance_scale=guidance, t_weak=t_weak, t_strong=t_strong,
                            generator=torch.Generator().manual_seed(5), noise=noise, output_type=output_type)


@pytest.mark.parametrize("fam", ["cogvideox", "wan21", "wan22", "ti2v"])
def test_t_weak_0_empty_mask_equals_diffusers_pipeline(folders, fam):
    """The adapter is faithful: same latents as diffusers' own pipeline loaded from the same folder."""
    from diffusers import DiffusionPipeline

    backend = GuidedBackend(model=folders[fam])
    H, W = tiny.SIZE[fam]
    noise = torch.randn(backend.denoiser.noise_shape(T, H, W), generator=torch.Generator().manual_seed(1))
    ours = _run(backend, fam, torch.zeros(1, T, 1, H, W), t_weak=0, t_strong=2, noise=noise)
    pipe = DiffusionPipeline.from_pretrained(str(folders[fam]), use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    image, _ = _inputs(fam)
    ref = _diffusers_latents(pipe, fam, image, steps=3, noise=noise)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    if fam in ("cogvideox", "wan21"):  # decoded through the model's VAE like diffusers' postprocess
        video = _run(backend, fam, torch.zeros(1, T, 1, H, W), t_weak=0, t_strong=2, noise=noise, output_type="pt")
        ref_video = _diffusers_latents(pipe, fam, image, steps=3, noise=noise, output_type="pt")
        torch.testing.assert_close(video, ref_video.float(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("fam", ["cogvideox", "wan21", "ti2v"])
def test_full_mask_until_the_last_step_returns_z_ref(folders, fam):
    backend = GuidedBackend(model=folders[fam])
    H, W = tiny.SIZE[fam]
    latents = _run(backend, fam, torch.ones(1, T, 1, H, W), t_weak=1, t_strong=3)
    z_ref = backend.last_info["z_ref"]
    assert z_ref.abs().max() > 0
    torch.testing.assert_close(latents, z_ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("fam,branches_per_call", [("cogvideox", 2), ("wan21", 1)])
def test_empty_mask_is_sdedit_from_t_weak(folders, fam, branches_per_call):
    """Starts at the scheduler's own forward process of z_ref at t_weak; (N − t_weak) × 2 CFG branches;
    the strong clock is a no-op without a mask (same latents for any t_strong)."""
    backend = GuidedBackend(model=folders[fam])
    den = backend.denoiser
    H, W = tiny.SIZE[fam]
    steps, k = 5, 2
    noise = torch.randn(den.noise_shape(T, H, W), generator=torch.Generator().manual_seed(1))
    calls = []
    hook = den.pipe.transformer.register_forward_pre_hook(
        lambda mod, args, kw: calls.append(kw["hidden_states"].detach().clone()), with_kwargs=True)
    try:
        sdedit = _run(backend, fam, torch.zeros(1, T, 1, H, W), t_weak=k, t_strong=k, steps=steps, noise=noise)
    finally:
        hook.remove()
    assert backend.last_info["branch_evals"] == (steps - k) * 2
    assert len(calls) * branches_per_call == (steps - k) * 2
    # the first model input is z_ref noised by the scheduler's own forward process at t[k]
    image, warped = _inputs(fam)
    z_ref = den.encode_video(warped)
    sched = den.scheduler
    sched.set_timesteps(steps)
    t = sched.timesteps[k]
    if fam == "cogvideox":
        expected = sched.add_noise(z_ref, noise, t.reshape(1).long())
        first = calls[0][:1, :, : z_ref.shape[2]]
    else:
        sched.set_begin_index(k)
        expected = sched.scale_noise(z_ref, t.reshape(1), noise)
        first = calls[0][:, : z_ref.shape[1]]
    torch.testing.assert_close(first.float(), expected.float(), atol=1e-5, rtol=0)
    later = _run(backend, fam, torch.zeros(1, T, 1, H, W), t_weak=k, t_strong=steps, steps=steps, noise=noise)
    torch.testing.assert_close(later, sdedit, atol=1e-6, rtol=0)


def _diffusers_latents(pipe, fam, image, *, steps, noise, output_type="latent"):
    """diffusers' own pipeline from the same start latents (the reference every adapter must equal)."""
    H, W = tiny.SIZE[fam]
    kw = {"max_sequence_length": 8} if fam == "cogvideox" else {}
    return pipe(image=_to_pil(image), prompt="a cat", negative_prompt="blurry", height=H, width=W, num_frames=T,
                num_inference_steps=steps, guidance_scale=3.0, latents=noise.clone(),
                generator=torch.Generator().manual_seed(5), output_type=output_type, **kw).frames


def test_wan22_switches_experts_at_the_boundary(folders):
    backend = GuidedBackend(model=folders["wan22"])
    den = backend.denoiser
    assert den.variant == "wan2.2-a14b"
    ran = []
    hooks = [m.register_forward_pre_hook(lambda mod, args, kw, name=name: ran.append(name), with_kwargs=True)
             for name, m in den.transformers.items()]
    try:
        _run(backend, "wan22", torch.zeros(1, T, 1, *tiny.SIZE["wan22"]), t_weak=1, t_strong=1, steps=8)
    finally:
        for h in hooks:
            h.remove()
    timesteps = den.scheduler.timesteps[1:]
    boundary = 0.875 * den.scheduler.config.num_train_timesteps
    expected = ["transformer" if float(t) >= boundary else "transformer_2" for t in timesteps]
    assert backend.last_info["experts"] == expected
    assert {"transformer", "transformer_2"} <= set(expected)        # the switch happens inside the run
    assert ran == [name for name in expected for _ in range(2)]     # cond + uncond on the expert recorded


def test_motion_mask_follows_the_flow_and_excludes_holes():
    """A 4x4 square moved 6 px right: M covers it where it lands, not where it left; the camera mask is
    every covered pixel."""
    from types import SimpleNamespace

    from flowctrl.render.warp_renderer import render_warp

    H = W = 16
    local = torch.zeros(1, 3, 1, H, W)
    local[..., 4:8, 2:6] = 1
    flow = torch.zeros(1, 3, 2, H, W)
    flow[:, 2, 0] = local[0, 2, 0] * 6.0
    uni = SimpleNamespace(flow=flow, local_mask=local, valid=None, w2c=None)
    holes = render_warp(torch.rand(1, 3, H, W), flow, fill="none").holes
    m = motion_mask(uni, holes)
    assert m[0, 2, 0, 4:8, 8:12].min() == 1 and m[0, 2, 0, 4:8, 2:6].max() == 0   # moved, the source left
    assert not bool((m.bool() & holes).any())
    cam = motion_mask(SimpleNamespace(flow=flow, local_mask=local, valid=None, w2c=torch.eye(4)), holes)
    assert torch.equal(cam.bool(), ~holes)


def test_flowctrl_pipeline_with_the_guided_backend(folders, repo_dir):
    """FlowCtrlPipeline(backend="guided", model=...) end to end: arrows → flow → warp → TTM → video + masks."""
    from flowctrl import FlowCtrlPipeline
    from flowctrl.controls import Arrow, Controls

    pipe = FlowCtrlPipeline(backend="guided", model=str(tiny.save_tiny("cogvideox", Path(folders["cogvideox"]).parent / "c2")),
                            num_inference_steps=3)
    controls = Controls(arrows=[Arrow(start=(6, 6), end=(12, 6))], image_size=(16, 16))
    out = pipe(torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)), controls=controls, num_frames=9,
               height=16, width=16, generator=torch.Generator().manual_seed(0), prompt="a cat")
    assert out.video.shape == (1, 9, 3, 16, 16) and out.frames.dtype.name == "uint8"
    assert out.masks["motion"].shape == (1, 9, 1, 16, 16) and out.masks["motion"].sum() > 0
    info = pipe.backend.last_info
    assert (info["t_weak"], info["t_strong"]) == (0, 1)           # CogVideoX's 4/9 of 50 scaled to 3 steps


def test_wan_without_ftfy_is_one_clear_error(folders, monkeypatch):
    import diffusers.utils

    backend = GuidedBackend(model=folders["wan21"])
    monkeypatch.setattr(diffusers.utils, "is_ftfy_available", lambda: False)
    with pytest.raises(MissingWeightsError, match="pip install ftfy"):
        _run(backend, "wan21", torch.zeros(1, T, 1, 16, 16), t_weak=0, t_strong=0, steps=1)


def test_loading_errors_name_the_problem(folders, tmp_path):
    import shutil

    broken = tmp_path / "novae"
    shutil.copytree(folders["cogvideox"], broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(MissingWeightsError, match="vae"):
        load_denoiser(broken)
    with pytest.raises(MissingWeightsError, match="no such folder"):
        load_denoiser(tmp_path / "nothing" / "here")


@pytest.mark.parametrize("fam,scheduler", [("cogvideox", "dpm"), ("wan21", "unipc")])
def test_other_schedulers_match_diffusers_and_their_forward_process(fam, scheduler):
    """CogVideoX-5b-I2V ships the DPM scheduler (its state carried across steps), Wan 2.1 the UniPC
    flow-matching one: both still equal diffusers' pipeline, and SDEdit starts at the scheduler's own
    ``add_noise`` at ``t[k]``."""
    from diffusers import CogVideoXDPMScheduler, UniPCMultistepScheduler

    pipe = tiny.tiny_pipeline(fam)
    if scheduler == "dpm":
        pipe.scheduler = CogVideoXDPMScheduler.from_config(pipe.scheduler.config)
    else:
        pipe.scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                 flow_shift=3.0, num_train_timesteps=1000)
    pipe.set_progress_bar_config(disable=True)
    backend = GuidedBackend(pipe)
    H, W = tiny.SIZE[fam]
    noise = torch.randn(backend.denoiser.noise_shape(T, H, W), generator=torch.Generator().manual_seed(1))
    ours = _run(backend, fam, torch.zeros(1, T, 1, H, W), t_weak=0, t_strong=2, steps=4, noise=noise)
    image, warped = _inputs(fam)
    ref = _diffusers_latents(pipe, fam, image, steps=4, noise=noise)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    den = backend.denoiser
    z = den.encode_video(warped)
    timesteps = den.set_timesteps(4)
    den.scheduler.set_begin_index(2) if hasattr(den.scheduler, "set_begin_index") else None
    expected = den.scheduler.add_noise(z, noise, timesteps[2:3])
    torch.testing.assert_close(den.add_noise(z, noise, 2, timesteps), expected, atol=1e-5, rtol=0)


def test_long_video_with_a_flow_matching_family_chains_windows():
    """17 frames with Wan (flow matching) and a 9-frame window: two windows sharing frame 8; window 2 is
    conditioned on window 1's generated frame 8 and starts from the same noise ε."""
    from types import SimpleNamespace

    import numpy as np

    backend = GuidedBackend(tiny.tiny_pipeline("wan21"), window=9, num_inference_steps=2, t_weak=1, t_strong=2)
    den = backend.denoiser
    seen = []
    original = den.prepare

    def spy(image, **kw):
        seen.append((np.asarray(image).astype(np.float32) / 255.0, kw["noise"].clone()))
        return original(image, **kw)

    den.prepare = spy
    H = W = 16
    local = torch.zeros(1, 17, 1, H, W)
    local[..., 4:10, 4:10] = 1
    flow = torch.zeros(1, 17, 2, H, W)
    flow[:, :, 0] = torch.linspace(0, 4, 17).view(1, 17, 1, 1) * local[:, :, 0]
    uni = SimpleNamespace(flow=flow, local_mask=local, valid=None, w2c=None)
    image = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(0))
    result = backend.render(image, uni, num_frames=17, generator=torch.Generator().manual_seed(0), prompt="a cat")
    video = result.video
    assert video.shape == (1, 17, 3, H, W)
    assert backend.last_info["windows"] == [(0, 9), (8, 17)]
    assert backend.last_info["branch_evals"] == 2 * (2 - 1) * 2
    assert len(seen) == 2
    frame8 = video[0, 8].permute(1, 2, 0).numpy()
    assert np.abs(seen[1][0] - frame8).max() <= 0.5 / 255 + 1e-6      # conditioned on the generated frame 8
    torch.testing.assert_close(seen[0][1], seen[1][1], atol=0, rtol=0)  # one shared ε
    assert result.masks["motion"].shape == (1, 17, 1, H, W) and result.masks["holes"].shape == (1, 17, 1, H, W)


def test_trained_backend_runs_on_the_shared_loop(monkeypatch):
    """The trained flow-conditioned pipeline steps through the same ``run_steps`` as the guided backend
    (its old tests, unchanged, pin its outputs)."""
    from flowctrl.pipelines.denoisers import loop
    from flowctrl.pipelines.denoisers.trained import FlowCtrlDenoiser
    from test_diffusion_pipeline import _inputs as flow_inputs
    from test_diffusion_pipeline import tiny_pipeline as tiny_trained

    used = []
    real = loop.run_steps
    monkeypatch.setattr(loop, "run_steps", lambda den, *a, **k: used.append(den) or real(den, *a, **k))
    pipe = tiny_trained()
    image, flow = flow_inputs()
    video = pipe(image, flow, prompt_embeds=torch.zeros(1, 4, 16), num_inference_steps=3, guidance_scale=1.0,
                 generator=torch.Generator().manual_seed(0))
    assert video.shape == (1, 9, 3, 16, 16)
    assert len(used) == 1 and isinstance(used[0], FlowCtrlDenoiser) and used[0].expert_log == ["transformer"] * 3


def test_cogvideox_5b_learned_positions_run_at_their_size_and_resize_back():
    """CogVideoX-5b-I2V (learned positional embeddings) only runs at its training size: any requested
    size works there and comes back at the requested size."""
    from diffusers import CogVideoXTransformer3DModel

    pipe = tiny.tiny_pipeline("cogvideox")
    cfg = {k: v for k, v in pipe.transformer.config.items() if not k.startswith("_")}
    cfg.update(use_learned_positional_embeddings=True, use_rotary_positional_embeddings=True)
    pipe.transformer = CogVideoXTransformer3DModel.from_config(cfg).eval()
    backend = GuidedBackend(pipe)
    assert backend.denoiser.fixed_size == (16, 16)
    g = torch.Generator().manual_seed(0)
    image, warped = torch.rand(1, 3, 24, 20, generator=g), torch.rand(1, T, 3, 24, 20, generator=g)
    video = backend.generate(image, warped, torch.ones(1, T, 1, 24, 20), prompt="a cat", negative_prompt=None,
                             num_inference_steps=2, guidance_scale=1.0, t_weak=1, t_strong=2, generator=g)
    assert video.shape == (1, T, 3, 24, 20) and bool(torch.isfinite(video).all())


def test_app_offers_the_guided_backend(folders, tmp_path, capsys):
    """``flowctrl app --model``: the UI's generate handler renders with the guided backend and a prompt; a
    bad model is one line, exit 2, before the UI starts."""
    pytest.importorskip("gradio")
    import numpy as np

    from flowctrl import FlowCtrlPipeline
    from flowctrl.app.session import ArrowSketch
    from flowctrl.app.ui import build_demo
    from flowctrl.cli import main
    from flowctrl.video_io import read_video

    pipe = FlowCtrlPipeline(backend="guided", model=str(folders["cogvideox"]), num_inference_steps=2)
    handlers = {fn.name: fn.fn for fn in build_demo(default_frames=9, pipeline=pipe).fns.values()}
    image = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    sketch = ArrowSketch().click(4, 4).click(10, 6)
    controls = (1.0, "linear", "none", "", None, None, None, None, 0)
    path = handlers["on_generate"](image, sketch, *controls, 9, 4, "push-pull", "a cat", progress=lambda *a, **k: None)
    assert read_video(path).shape == (9, 16, 16, 3)
    assert pipe.backend.last_info["steps"] == 2
    capsys.readouterr()
    rc = main(["app", "--model", str(tmp_path / "missing")])
    lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "--model" in lines[0]


def test_memory_presets_on_a_cpu_machine(folders):
    """Presets set VAE tiling/slicing and dtype; without CUDA, offloading is skipped and all stays on the CPU."""
    den = load_denoiser(folders["cogvideox"], preset="offload", dtype="float32")
    assert den.pipe.vae.use_tiling and den.pipe.vae.use_slicing and den.device.type == "cpu"
    half = load_denoiser(folders["wan21"], preset="low")
    assert half.pipe.transformer.dtype == torch.bfloat16
    assert half.pipe.vae.dtype == torch.float32 and half.pipe.image_encoder.dtype == torch.float32  # as diffusers' examples
    from flowctrl.errors import InputError

    with pytest.raises(InputError, match="full, offload, low, cpu"):
        load_denoiser(folders["cogvideox"], preset="24gb")


def test_latent_mask_reads_the_first_frame_of_each_vae_group():
    """T = 9, temporal factor 4: latent frames read pixel frames 0, 1, 5 (groups [0], [1..4], [5..8])."""
    backend = GuidedBackend(tiny.tiny_pipeline("wan21"))
    mask = torch.zeros(1, T, 1, 16, 16)
    for frame in (0, 1, 5):
        mask[:, frame, :, frame:frame + 4] = 1       # a band at a row that names the frame
    m = backend.denoiser.latent_mask(mask, 3)       # Wan layout (1, 1, T', h, w), h = w = 2
    assert m.shape == (1, 1, 3, 2, 2)
    expected = torch.nn.functional.interpolate(mask[0, [0, 1, 5]], size=(2, 2), mode="nearest")
    torch.testing.assert_close(m[0, 0], expected[:, 0], atol=0, rtol=0)
    assert m.sum() > 0


def test_cogvideox_15_padding_frames_match_diffusers_and_stay_free():
    """CogVideoX 1.5 (temporal patches of 2): 3 latent frames are padded to 4 like diffusers' pipeline
    (same latents from the same noise); the padding frame is outside the mask and dropped at the end."""
    from diffusers import CogVideoXTransformer3DModel

    pipe = tiny.tiny_pipeline("cogvideox")
    cfg = {k: v for k, v in pipe.transformer.config.items() if not k.startswith("_")}
    cfg.update(patch_size_t=2, ofs_embed_dim=32, use_rotary_positional_embeddings=True, patch_bias=False)
    torch.manual_seed(0)
    pipe.transformer = CogVideoXTransformer3DModel.from_config(cfg).eval()
    pipe.set_progress_bar_config(disable=True)
    backend = GuidedBackend(pipe)
    den = backend.denoiser
    assert den.variant == "cogvideox1.5" and den.noise_shape(T, 16, 16)[1] == 4
    noise = torch.randn(den.noise_shape(T, 16, 16), generator=torch.Generator().manual_seed(1))
    ours = _run(backend, "cogvideox", torch.zeros(1, T, 1, 16, 16), t_weak=0, t_strong=2, noise=noise)
    image, warped = _inputs("cogvideox")
    ref = pipe(image=_to_pil(image), prompt="a cat", negative_prompt="blurry", height=16, width=16, num_frames=T,
               num_inference_steps=3, guidance_scale=3.0, latents=noise.clone(), max_sequence_length=8,
               generator=torch.Generator().manual_seed(5), output_type="latent").frames
    torch.testing.assert_close(ours, ref[:, 1:], atol=1e-5, rtol=0)   # diffusers drops the pad when decoding
    m = den.latent_mask(torch.ones(1, T, 1, 16, 16), 4)
    assert m[:, 0].max() == 0 and m[:, 1:].min() == 1
    held = _run(backend, "cogvideox", torch.ones(1, T, 1, 16, 16), t_weak=1, t_strong=3)
    assert held.shape[1] == 3
    torch.testing.assert_close(held, backend.last_info["z_ref"], atol=1e-6, rtol=0)
