"""Diffusion backend end to end on CPU with tiny random components (3D VAE, FlowCodec, DiT, prompt_embeds)."""
import pytest
import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXDPMScheduler, CogVideoXTransformer3DModel
from diffusers import CogVideoXImageToVideoPipeline

from flowctrl.errors import InputError, MissingWeightsError
from flowctrl.models.flow_codec import FlowCodec
from flowctrl.models.transformer import FlowCtrlTransformer
from flowctrl.pipelines.diffusion import DiffusionBackend, FlowCtrlVideoPipeline, GuidanceConfig

H = W = 16
TR = dict(num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=32,
          text_embed_dim=16, num_layers=1, sample_width=4, sample_height=4, sample_frames=9, patch_size=2,
          max_text_seq_length=4, temporal_compression_ratio=4)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_vae():
    return AutoencoderKLCogVideoX(in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 3,
                                  up_block_types=("CogVideoXUpBlock3D",) * 3, block_out_channels=(8, 8, 8),
                                  latent_channels=4, layers_per_block=1, norm_num_groups=4).eval()


def tiny_pipeline(scheduler=CogVideoXDDIMScheduler, gate=0.05):
    torch.manual_seed(0)
    vae = tiny_vae()
    codec = FlowCodec(latent_channels=4, block_out_channels=(8, 8, 8), norm_num_groups=4).eval()
    tr = FlowCtrlTransformer(**TR, flow_in_channels=4, stabilizer_frames=3).eval()
    torch.nn.init.normal_(tr.flow_gate.weight, std=gate)   # a "trained" flow branch
    return FlowCtrlVideoPipeline(transformer=tr, scheduler=scheduler(prediction_type="v_prediction"), vae=vae,
                                 flow_codec=codec)


class Unified:
    def __init__(self, flow):
        self.flow = flow


def _inputs(t=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, H, W, generator=g)
    flow = torch.randn(1, t, 2, H, W, generator=g) * 2
    flow[:, 0] = 0
    return image, flow


EMB = torch.randn(1, 4, 16, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("scheduler", [CogVideoXDDIMScheduler, CogVideoXDPMScheduler])
def test_backend_renders_requested_frames_with_prompt_embeds(scheduler):
    backend = DiffusionBackend(tiny_pipeline(scheduler), num_inference_steps=3, guidance_scale=2.0,
                               flow_guidance_scale=1.5)
    image, flow = _inputs()
    calls = []
    video = backend.render(image, Unified(flow), num_frames=9, generator=torch.Generator().manual_seed(1),
                           callback=lambda *a: calls.append(a), prompt_embeds=EMB, negative_prompt_embeds=-EMB).video
    assert video.shape == (1, 9, 3, H, W) and video.dtype == torch.float32
    assert 0.0 <= float(video.min()) and float(video.max()) <= 1.0
    assert [c for c in calls if c[0] == "denoise"][-1] == ("denoise", 3, 3)
    assert backend.last_num_function_evals == 3                       # one batched call per step
    again = backend.render(image, Unified(flow), num_frames=9, generator=torch.Generator().manual_seed(1),
                           prompt_embeds=EMB, negative_prompt_embeds=-EMB).video
    other = backend.render(image, Unified(flow), num_frames=9, generator=torch.Generator().manual_seed(2),
                           prompt_embeds=EMB, negative_prompt_embeds=-EMB).video
    assert torch.equal(video, again)                                  # same seed → same video
    assert not torch.equal(video, other)


def test_frame_counts_outside_8n_plus_1_are_padded_and_trimmed():
    backend = DiffusionBackend(tiny_pipeline(), num_inference_steps=2, guidance_scale=1.0)
    image, flow = _inputs(t=7)
    video = backend.render(image, Unified(flow), num_frames=7, generator=torch.Generator().manual_seed(0)).video
    assert video.shape == (1, 7, 3, H, W)
    with pytest.raises(InputError, match="num_frames"):
        backend.render(image, Unified(flow), num_frames=9).video
    with pytest.raises(InputError, match="no option"):
        backend.render(image, Unified(flow), num_frames=7, bogus=1).video


def test_sizes_not_divisible_by_the_latent_grid_are_resized_back():
    backend = DiffusionBackend(tiny_pipeline(), num_inference_steps=1, guidance_scale=1.0)
    g = torch.Generator().manual_seed(0)
    image, flow = torch.rand(1, 3, 12, 20, generator=g), torch.zeros(1, 5, 2, 12, 20)
    assert backend.render(image, Unified(flow), num_frames=5).video.shape == (1, 5, 3, 12, 20)


def test_flow_changes_the_video_and_guidance_math():
    pipe = tiny_pipeline(gate=0.5)
    image, flow = _inputs()
    a = pipe(image, flow, num_inference_steps=2, guidance_scale=1.0, generator=torch.Generator().manual_seed(0))
    b = pipe(image, flow.flip(-1), num_inference_steps=2, guidance_scale=1.0, generator=torch.Generator().manual_seed(0))
    assert (a - b).abs().max() > 1e-4
    # ε = ε(∅,∅) + g_f(ε(∅,f) − ε(∅,∅)) + g_t(ε(c,f) − ε(∅,f)) with known branch outputs
    g = GuidanceConfig(text_scale=3.0, flow_scale=2.0)
    assert g.rows() == [(False, 0.0), (False, 1.0), (True, 1.0)]
    out = g.combine(torch.tensor([[1.0], [2.0], [5.0]]))
    assert float(out) == 1.0 + 2.0 * (2.0 - 1.0) + 3.0 * (5.0 - 2.0)
    assert GuidanceConfig(1.0, 1.0).rows() == [(True, 1.0)]
    assert GuidanceConfig(1.0, 0.0).rows() == [(True, 0.0)]              # flow dropped: one branch
    assert GuidanceConfig(3.0, 0.0).rows() == [(False, 0.0), (True, 0.0)]
    assert float(GuidanceConfig(1.0, 4.0).combine(torch.tensor([[1.0], [2.0]]))) == 5.0


def test_missing_weights_are_one_clear_line(tmp_path):
    with pytest.raises(MissingWeightsError) as info:
        DiffusionBackend()
    assert "--model" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(MissingWeightsError, match="--model"):
        DiffusionBackend.from_pretrained(tmp_path / "absent")
    with pytest.raises(MissingWeightsError, match="transformer"):
        DiffusionBackend.from_pretrained(tmp_path)                    # folder without a checkpoint
    pipe = tiny_pipeline()
    pipe.register_modules(text_encoder=None, tokenizer=None)
    with pytest.raises(MissingWeightsError, match="prompt_embeds"):
        DiffusionBackend(pipe, num_inference_steps=1).render(*_inputs()[:1], Unified(_inputs()[1]), num_frames=9,
                                                             prompt="a cat").video


def test_save_pretrained_round_trip(tmp_path):
    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "ckpt")
    loaded = DiffusionBackend.from_pretrained(tmp_path / "ckpt", num_inference_steps=2, guidance_scale=1.0)
    assert isinstance(loaded.pipeline.transformer, FlowCtrlTransformer)
    assert isinstance(loaded.pipeline.flow_codec, FlowCodec)
    image, flow = _inputs()
    ref = DiffusionBackend(pipe, num_inference_steps=2, guidance_scale=1.0).render(
        image, Unified(flow), num_frames=9, generator=torch.Generator().manual_seed(0)).video
    out = loaded.render(image, Unified(flow), num_frames=9, generator=torch.Generator().manual_seed(0)).video
    assert torch.equal(ref, out)


def _save_i2v_folder(folder, transformer):
    """Write a tiny CogVideoX-I2V folder (transformer, VAE, v-prediction DDIM); returns (vae, scheduler)."""
    vae = tiny_vae()
    sched = CogVideoXDDIMScheduler(prediction_type="v_prediction")
    transformer.save_pretrained(folder / "transformer")
    vae.save_pretrained(folder / "vae")
    sched.save_pretrained(folder / "scheduler")
    return vae, sched


def test_bf16_checkpoint_renders_float32_video_close_to_the_float32_one(tmp_path):
    """dtype bf16 (the GPU presets): every module loads in bf16 and the video still comes back float32 in [0, 1],
    within bf16 rounding of the float32 render (the frequency stabilizers' FFT runs in float32)."""
    tiny_pipeline().save_pretrained(tmp_path / "ckpt")
    kw = dict(num_inference_steps=3, guidance_scale=2.0, flow_guidance_scale=1.5)
    image, flow = _inputs()
    render = lambda b: b.render(image, Unified(flow), num_frames=9, generator=torch.Generator().manual_seed(1),  # noqa: E731
                                prompt_embeds=EMB, negative_prompt_embeds=-EMB).video
    ref = render(DiffusionBackend.from_pretrained(tmp_path / "ckpt", **kw))
    half = DiffusionBackend.from_pretrained(tmp_path / "ckpt", dtype="bf16", **kw)
    assert {half.pipeline.transformer.dtype, half.pipeline.vae.dtype, half.pipeline.flow_codec.dtype} == {torch.bfloat16}
    out = render(half)
    assert out.dtype == torch.float32 and 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert 0 < (out - ref).abs().mean() < 0.01


def test_cogvideox_i2v_folder_converts_and_matches_diffusers_pipeline(tmp_path):
    """An untrained conversion of a CogVideoX-I2V folder reproduces diffusers' own I2V pipeline."""
    torch.manual_seed(0)
    base = CogVideoXTransformer3DModel(**TR).eval()
    backend, ours, ref = _converted_and_diffusers_outputs(tmp_path, base)
    assert backend.pipeline.transformer.config.flow_in_channels == 4   # codec wrapped around the VAE
    torch.testing.assert_close(ours, ref.float(), atol=1e-4, rtol=0)


def _converted_and_diffusers_outputs(tmp_path, base):
    """(converted backend, its 2-step video, diffusers' I2V pipeline video) for the same seed and inputs."""
    vae, sched = _save_i2v_folder(tmp_path, base)
    backend = DiffusionBackend.from_pretrained(tmp_path, num_inference_steps=2, guidance_scale=1.0)
    image, flow = _inputs()
    ours = backend.pipeline(image, flow, prompt_embeds=EMB, num_inference_steps=2, guidance_scale=1.0,
                            generator=torch.Generator().manual_seed(5))
    ref_pipe = CogVideoXImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=base,
                                             scheduler=CogVideoXDDIMScheduler.from_config(sched.config))
    ref_pipe.set_progress_bar_config(disable=True)
    ref = ref_pipe(image=image, prompt_embeds=EMB, height=H, width=W, num_frames=9, num_inference_steps=2,
                   guidance_scale=1.0, generator=torch.Generator().manual_seed(5), output_type="pt").frames
    return backend, ours, ref


def test_memory_options_and_presets():
    pipe = tiny_pipeline()
    backend = DiffusionBackend(pipe, preset="cpu", num_inference_steps=1)
    assert backend.pipeline.vae.use_slicing and backend.num_inference_steps == 1
    with pytest.raises(InputError, match="preset"):
        DiffusionBackend(tiny_pipeline(), preset="no-such-preset")
    with pytest.raises(InputError, match="cpu_offload"):
        DiffusionBackend(tiny_pipeline(), cpu_offload="sometimes")


def test_text_prompts_through_a_tiny_t5():
    """prompt / negative_prompt go through a (tiny, random) transformers T5 encoder + tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "cat": 4, "dog": 5, "blurry": 6}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(0)
    t5 = T5EncoderModel(T5Config(vocab_size=7, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)).eval()
    pipe = tiny_pipeline()
    pipe.register_modules(tokenizer=tokenizer, text_encoder=t5)
    pos, neg = pipe.encode_prompt("a cat", "blurry", None, None, 1, True, torch.device("cpu"), torch.float32)
    assert pos.shape == (1, 4, 16) and not torch.allclose(pos, neg)
    image, flow = _inputs()
    run = lambda prompt: pipe(image, flow, prompt=prompt, negative_prompt="blurry", num_inference_steps=2,  # noqa: E731
                              guidance_scale=4.0, generator=torch.Generator().manual_seed(0))
    cat, dog = run("a cat"), run("a dog")
    assert cat.shape == (1, 9, 3, H, W) and (cat - dog).abs().max() > 1e-5


def test_cogvideox_15_layout_pads_latent_frames_like_diffusers(tmp_path):
    """patch_size_t = 2 with an odd latent frame count: padded in front, trimmed before decoding."""
    torch.manual_seed(0)
    cfg = {**TR, "patch_size_t": 2, "ofs_embed_dim": 32, "use_rotary_positional_embeddings": True,
           "patch_bias": False}
    base = CogVideoXTransformer3DModel(**cfg).eval()
    _, ours, ref = _converted_and_diffusers_outputs(tmp_path, base)  # 9 frames → 3 latent frames → padded to 4
    assert ours.shape == (1, 9, 3, H, W)
    torch.testing.assert_close(ours, ref.float(), atol=1e-4, rtol=0)


def _pixel_pipeline(warp_channels):
    torch.manual_seed(0)
    cfg = {**TR, "in_channels": 6, "out_channels": 3, "sample_width": W, "sample_height": H, "sample_frames": 5,
           "temporal_compression_ratio": 1}
    tr = FlowCtrlTransformer(**cfg, flow_in_channels=2, flow_warp_channels=warp_channels, stabilizer_frames=5).eval()
    return FlowCtrlVideoPipeline(transformer=tr, scheduler=CogVideoXDDIMScheduler(prediction_type="v_prediction"),
                                 pixel_flow_scale=4.0)


def test_warped_image_flow_condition_known_answer():
    """flow_warp_channels: the flow branch reads [flow latent, image forward-warped along the flow, coverage];
    a whole-pixel pan of s px is the image shifted by s with an s-column hole on the left."""
    pipe = _pixel_pipeline(4)
    image = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(0))
    flow = torch.zeros(1, 5, 2, H, W)
    flow[:, :, 0] = 2.0 * torch.arange(5.0).view(1, 5, 1, 1)         # 2 px right per frame
    cond = pipe.encode_flow_condition(flow, image)
    assert cond.shape == (1, 5, 2 + 3 + 1, H, W)
    assert torch.equal(cond[:, :, :2], flow / 4.0)                     # the flow latent (pixel space: flow / scale)
    for t in range(5):
        s = 2 * t
        torch.testing.assert_close(cond[0, t, 2:5, :, s:], 2 * image[0, :, :, : W - s] - 1, atol=1e-5, rtol=0)
        assert bool((cond[0, t, 5, :, s:] == 1).all()) and bool((cond[0, t, 5, :, :s] == 0).all())
    with pytest.raises(InputError, match="image"):
        pipe.encode_flow_condition(flow)
    assert torch.equal(_pixel_pipeline(0).encode_flow_condition(flow, image), flow / 4.0)   # the paper's input


def test_warped_image_branch_with_vae_runs_and_flow_drop_drops_the_warped_image_too():
    torch.manual_seed(0)
    tr = FlowCtrlTransformer(**TR, flow_in_channels=4, flow_warp_channels=5, stabilizer_frames=3).eval()
    torch.nn.init.normal_(tr.flow_gate.weight, std=0.5)
    pipe = FlowCtrlVideoPipeline(transformer=tr, scheduler=CogVideoXDDIMScheduler(prediction_type="v_prediction"),
                                 vae=tiny_vae(), flow_codec=FlowCodec(latent_channels=4, block_out_channels=(8, 8, 8),
                                                                      norm_num_groups=4).eval())
    image, flow = _inputs()
    assert pipe.encode_flow_condition(flow, image).shape == (1, 3, 4 + 4 + 1, H // 4, W // 4)
    run = lambda f, fs: pipe(image, f, num_inference_steps=2, guidance_scale=1.0, flow_guidance_scale=fs,  # noqa: E731
                             generator=torch.Generator().manual_seed(0))
    on, other = run(flow, 1.0), run(flow.flip(-1), 1.0)
    assert on.shape == (1, 9, 3, H, W) and (on - other).abs().max() > 1e-4
    # flow dropped (flow_guidance_scale 0): neither the flow nor the warped image reaches the model
    assert torch.equal(run(flow, 0.0), run(flow.flip(-1), 0.0))
    bad = _pixel_pipeline(5)                                           # pixel space gives 3 + 1 channels
    with pytest.raises(InputError, match="flow_warp_channels"):
        bad.encode_flow_condition(torch.zeros(1, 5, 2, H, W), torch.rand(1, 3, H, W))


def test_zero_valued_options_are_honoured_not_replaced_by_defaults(monkeypatch):
    """gamma=0.0 (no shared-noise mixing) reaches the long-video scheduler as 0.0; 0 steps is an error, not 50."""
    import flowctrl.pipelines.long_video as long_video

    seen = {}
    real = long_video.generate_long_video

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(long_video, "generate_long_video", spy)
    backend = DiffusionBackend(tiny_pipeline(), num_inference_steps=1, guidance_scale=1.0, gamma=0.5)
    image, flow = _inputs()
    backend.render(image, Unified(flow), num_frames=9, gamma=0.0).video
    assert seen["gamma"] == 0.0 and seen["num_inference_steps"] == 1
    with pytest.raises(InputError, match="num_inference_steps"):
        backend.render(image, Unified(flow), num_frames=9, num_inference_steps=0).video
    with pytest.raises(InputError, match="no option"):
        backend.render(image, Unified(flow), num_frames=9, strength_schedule=[1.0]).video
