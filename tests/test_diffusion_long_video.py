"""Long videos: window plan, phased inference NFE count, shared noise reschedule, chain baseline."""
import math

import pytest
import torch
from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

from flowctrl.errors import InputError
from flowctrl.models.transformer import FlowCtrlTransformer
from flowctrl.pipelines.diffusion import DiffusionBackend, FlowCtrlVideoPipeline
from flowctrl.pipelines.long_video import (generate_long_video, phased_steps, plan_windows,
                                           shared_noise_reschedule)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def pixel_pipeline(scheduler=CogVideoXDDIMScheduler):
    """Pixel-space tiny pipeline (no VAE): window = 9 frames, 16×16."""
    torch.manual_seed(0)
    tr = FlowCtrlTransformer(num_attention_heads=2, attention_head_dim=16, in_channels=6, out_channels=3,
                             time_embed_dim=32, text_embed_dim=16, num_layers=1, sample_width=16, sample_height=16,
                             sample_frames=9, patch_size=4, max_text_seq_length=4, temporal_compression_ratio=1,
                             flow_in_channels=2, stabilizer_frames=9).eval()
    torch.nn.init.normal_(tr.flow_gate.weight, std=0.05)
    return FlowCtrlVideoPipeline(transformer=tr, scheduler=scheduler(prediction_type="v_prediction"))


def _inputs(n=25):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 16, 16, generator=g)
    # a uniform pan of 0.5 px/frame, relative to frame 0 over the whole video
    flow = torch.zeros(1, n, 2, 16, 16)
    flow[:, :, 0] = 0.5 * torch.arange(n, dtype=torch.float32).view(1, n, 1, 1)
    return image, flow


def test_plan_windows_and_phased_steps():
    assert plan_windows(25, 9) == [(0, 9), (8, 17), (16, 25)]
    assert plan_windows(129, 49) == [(0, 49), (48, 97), (80, 129)]
    assert plan_windows(9, 9) == [(0, 9)] and plan_windows(5, 9) == [(0, 5)]
    assert phased_steps(50, 0.8) == 40 and phased_steps(10, 0.8) == 8 and phased_steps(7, 0.8) == math.ceil(5.6)
    with pytest.raises(InputError):
        phased_steps(10, 1.5)


@pytest.mark.parametrize("scheduler", [CogVideoXDDIMScheduler, CogVideoXDPMScheduler])
def test_phased_three_windows_expected_function_evaluations(scheduler):
    pipe = pixel_pipeline(scheduler)
    image, flow = _inputs(25)
    steps = 10
    calls = []
    r = generate_long_video(pipe, image, flow, mode="phased", num_inference_steps=steps, guidance_scale=1.0,
                            generator=torch.Generator().manual_seed(0), callback=lambda *a: calls.append(a))
    m = math.ceil(0.8 * steps)
    assert r.windows == [(0, 9), (8, 17), (16, 25)] and r.shared_steps == m
    assert r.num_function_evals == steps + 2 * (steps - m) == 14
    assert r.chain_function_evals == 3 * steps
    assert r.saving == pytest.approx(1 - 14 / 30)
    assert r.video.shape == (1, 25, 3, 16, 16)
    assert calls[-1] == ("denoise", 14, 14)
    chain = generate_long_video(pipe, image, flow, mode="chain", num_inference_steps=steps, guidance_scale=1.0,
                                generator=torch.Generator().manual_seed(0))
    assert chain.num_function_evals == 30 and chain.video.shape == (1, 25, 3, 16, 16)
    # frame 8 of the chain is window 2's conditioning image: window 1's last frame, kept as generated
    assert torch.isfinite(chain.video).all()


def test_without_randomness_later_windows_start_from_window_one_state():
    """ω = 0 and no shuffle: z^k_M = z^1_M exactly (eq. 9); so a window with window 1's flow repeats it."""
    pipe = pixel_pipeline()
    image, _ = _inputs()
    t = torch.arange(25.0)
    periodic = torch.zeros(1, 25, 2, 16, 16)                  # period 8: every window sees the same flow slice
    periodic[:, :, 1] = (1.5 * torch.sin(2 * math.pi * (t % 8) / 8)).view(1, 25, 1, 1)
    assert torch.equal(periodic[:, 8:17], periodic[:, 0:9])
    r = generate_long_video(pipe, image, periodic, mode="phased", omega=0.0, shuffle=False, num_inference_steps=6,
                            guidance_scale=1.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(r.video[:, 9:17], r.video[:, 1:9], atol=1e-4, rtol=0)
    torch.testing.assert_close(r.video[:, 17:25], r.video[:, 1:9], atol=1e-4, rtol=0)
    noisy = generate_long_video(pipe, image, periodic, mode="phased", omega=0.2, num_inference_steps=6,
                                guidance_scale=1.0, generator=torch.Generator().manual_seed(0))
    assert (noisy.video[:, 9:17] - noisy.video[:, 1:9]).abs().max() > 1e-3   # ω > 0: windows differ


def test_shared_noise_reschedule_statistics():
    n = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    out = shared_noise_reschedule(n, 3, 0.2, torch.Generator().manual_seed(2), shuffle=False)
    assert len(out) == 2 and out[0].shape == n.shape
    # ñ_k = (n + ω ε_k)/√(1+ω²): correlated with n, different from each other
    for o in out:
        corr = torch.corrcoef(torch.stack([o.flatten(), n.flatten()]))[0, 1]
        assert corr > 0.95
    assert not torch.allclose(out[0], out[1])
    exact = shared_noise_reschedule(n, 2, 0.0, None, shuffle=False)[0]
    assert torch.equal(exact, n)
    shuffled = shared_noise_reschedule(n, 3, 0.0, torch.Generator().manual_seed(0), shuffle=True)
    frames = torch.cat(shuffled, dim=1)[0]
    # shuffling permutes latent frames across the long sequence: the multiset of frames is unchanged
    assert sorted(float(f.sum()) for f in frames) == pytest.approx(sorted(float(f.sum()) for f in torch.cat([n, n], 1)[0]))


def test_backend_long_video_through_render():
    backend = DiffusionBackend(pixel_pipeline(), num_inference_steps=5, guidance_scale=1.0)
    image, flow = _inputs(21)

    class U:
        pass

    u = U()
    u.flow = flow
    video = backend.render(image, u, num_frames=21, generator=torch.Generator().manual_seed(0)).video
    assert video.shape == (1, 21, 3, 16, 16)
    assert len(backend.last_result.windows) == 3
    assert backend.last_num_function_evals == 5 + 2 * (5 - 4)
    chain = backend.render(image, u, num_frames=21, long_video="chain", generator=torch.Generator().manual_seed(0)).video
    assert backend.last_num_function_evals == 15 and chain.shape == video.shape


@pytest.mark.parametrize("kind", ["v_prediction", "epsilon", "sample"])
def test_x0_and_noise_inverts_each_prediction_type(kind):
    """Known answer for every scheduler target (sample = the model predicts x0, used by the tiny benchmark):
    from z_t = √ᾱ x0 + √(1−ᾱ) ε and the exact target, x0_and_noise returns (x0, ε) and renoise rebuilds z_t."""
    pipe = pixel_pipeline()
    pipe.scheduler = CogVideoXDDIMScheduler(prediction_type=kind)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(1, 3, 3, 8, 8, generator=g), torch.randn(1, 3, 3, 8, 8, generator=g)
    t = torch.tensor(400)
    a = pipe.scheduler.alphas_cumprod[400]
    z = a.sqrt() * x0 + (1 - a).sqrt() * eps
    target = {"v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0, "epsilon": eps, "sample": x0}[kind]
    got_x0, got_eps = pipe.x0_and_noise(z, target, t)
    torch.testing.assert_close(got_x0, x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_eps, eps, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(pipe.renoise(got_x0, got_eps, t), z, atol=1e-5, rtol=1e-5)
