"""FlowCtrlTransformer: exact conversion from CogVideoX, flow branch behaviour, save/load round trip."""
import pytest
import torch
from diffusers import CogVideoXTransformer3DModel
from diffusers.models.embeddings import get_3d_rotary_pos_embed

from flowctrl.errors import InputError, MissingWeightsError
from flowctrl.models.transformer import FlowCtrlTransformer

TINY = dict(num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=32,
            text_embed_dim=16, num_layers=2, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
            max_text_seq_length=4, temporal_compression_ratio=4)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 8, 8, 8, generator=g)          # (B, T', 2C, h, w): noisy latent ⊕ image latent
    text = torch.randn(2, 4, 16, generator=g)
    flow = torch.randn(2, 3, 4, 8, 8, generator=g)
    return x, text, torch.tensor([999, 10]), flow


@pytest.mark.parametrize("rotary", [False, True])
def test_converted_model_equals_base_exactly(tmp_path, rotary):
    base = CogVideoXTransformer3DModel(**TINY, use_rotary_positional_embeddings=rotary).eval()
    base.save_pretrained(tmp_path / "transformer")            # pipeline-folder layout
    model = FlowCtrlTransformer.from_cogvideox(tmp_path, flow_in_channels=4, stabilizer_frames=3).eval()
    x, text, t, flow = _inputs()
    rope = get_3d_rotary_pos_embed(16, ((0, 0), (4, 4)), (4, 4), 3) if rotary else None
    with torch.no_grad():
        ref = base(x, text, t, image_rotary_emb=rope).sample
        out = model(x, text, t, flow_latents=flow, image_rotary_emb=rope).sample
        out_noflow = model(x, text, t, image_rotary_emb=rope).sample
    assert torch.equal(out, ref)              # zero gate + identity stabilizers: bit for bit
    assert torch.equal(out_noflow, ref)
    # every base weight was copied; only the new parts are new
    new = set(model.new_parameter_names())
    assert new and all(n.startswith(("flow_", "frequency_stabilizers.")) for n in new)
    base_sd = base.state_dict()
    for name, value in model.state_dict().items():
        if name in base_sd:
            assert torch.equal(value, base_sd[name])
    assert len(model.frequency_stabilizers) == TINY["num_layers"]


def test_missing_checkpoint_is_one_clear_line(tmp_path):
    with pytest.raises(MissingWeightsError) as info:
        FlowCtrlTransformer.from_cogvideox(tmp_path / "nope")
    msg = str(info.value)
    assert "\n" not in msg and "huggingface-cli download" in msg
    with pytest.raises(MissingWeightsError):
        FlowCtrlTransformer.from_cogvideox("someone/not-cached-model")
    t2v = CogVideoXTransformer3DModel(**{**TINY, "in_channels": 4})
    t2v.save_pretrained(tmp_path / "t2v")
    with pytest.raises(MissingWeightsError, match="text-to-video"):
        FlowCtrlTransformer.from_cogvideox(tmp_path / "t2v")


def test_flow_branch_acts_once_gate_is_trained_and_flow_scale_drops_it():
    torch.manual_seed(0)
    model = FlowCtrlTransformer(**TINY, flow_in_channels=4, stabilizer_frames=3).eval()
    torch.nn.init.normal_(model.flow_gate.weight, std=0.5)
    x, text, t, flow = _inputs()
    with torch.no_grad():
        off = model(x, text, t).sample
        on = model(x, text, t, flow_latents=flow).sample
        other = model(x, text, t, flow_latents=flow.flip(1)).sample
        dropped = model(x, text, t, flow_latents=flow, flow_scale=torch.tensor([0.0, 1.0])).sample
    assert (on - off).abs().max() > 1e-3 and (on - other).abs().max() > 1e-3
    assert torch.equal(dropped[0], off[0])                 # per-sample dropout == no flow
    torch.testing.assert_close(dropped[1], on[1])


def test_stabilizer_learned_weights_change_output_and_gradients_reach_new_parts():
    torch.manual_seed(0)
    model = FlowCtrlTransformer(**TINY, flow_in_channels=4, stabilizer_frames=3, stabilizer_layers=[1])
    assert list(model.frequency_stabilizers) == ["1"]
    x, text, t, flow = _inputs()
    loss = model(x, text, t, flow_latents=flow).sample.pow(2).mean()
    loss.backward()
    assert model.flow_gate.weight.grad.abs().sum() > 0     # zero-init gate still learns
    assert model.frequency_stabilizers["1"].delta.grad.abs().sum() > 0


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = FlowCtrlTransformer(**TINY, flow_in_channels=4, stabilizer_frames=3).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = FlowCtrlTransformer.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.flow_in_channels == 4 and loaded.config.stabilizer_frames == 3
    x, text, t, flow = _inputs()
    with torch.no_grad():
        assert torch.equal(model(x, text, t, flow_latents=flow).sample, loaded(x, text, t, flow_latents=flow).sample)


def test_gradient_checkpointing_same_gradients():
    torch.manual_seed(0)
    model = FlowCtrlTransformer(**TINY, flow_in_channels=4, stabilizer_frames=3)
    torch.nn.init.normal_(model.flow_gate.weight, std=0.1)
    x, text, t, flow = _inputs()
    model(x, text, t, flow_latents=flow).sample.sum().backward()
    g1 = model.flow_patch_embed.weight.grad.clone()
    model.zero_grad()
    model.enable_gradient_checkpointing()
    model(x, text, t, flow_latents=flow).sample.sum().backward()
    torch.testing.assert_close(model.flow_patch_embed.weight.grad, g1, atol=1e-5, rtol=1e-4)


def test_cogvideox_15_layout_converts_exactly(tmp_path):
    """CogVideoX 1.5: temporal patches (patch_size_t = 2), RoPE, ofs embedding."""
    cfg = {**TINY, "patch_size_t": 2, "ofs_embed_dim": 32, "use_rotary_positional_embeddings": True,
           "patch_bias": False}
    base = CogVideoXTransformer3DModel(**cfg).eval()
    base.save_pretrained(tmp_path)
    model = FlowCtrlTransformer.from_cogvideox(tmp_path, flow_in_channels=4, stabilizer_frames=4).eval()
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 4, 8, 8, 8, generator=g), torch.randn(1, 4, 16, generator=g)
    flow = torch.randn(1, 4, 4, 8, 8, generator=g)
    rope = get_3d_rotary_pos_embed(16, None, (4, 4), 2, grid_type="slice", max_size=(4, 4))
    ofs = torch.full((1,), 2.0)
    with torch.no_grad():
        ref = base(x, text, torch.tensor([500]), ofs=ofs, image_rotary_emb=rope).sample
        out = model(x, text, torch.tensor([500]), flow_latents=flow, ofs=ofs, image_rotary_emb=rope).sample
        torch.nn.init.normal_(model.flow_gate.weight, std=0.1)
        moved = model(x, text, torch.tensor([500]), flow_latents=flow, ofs=ofs, image_rotary_emb=rope).sample
    assert out.shape == (1, 4, 4, 8, 8) and torch.equal(out, ref)
    assert (moved - ref).abs().max() > 1e-4


def test_warped_image_branch_converts_exactly_and_checks_channels(tmp_path):
    """flow_warp_channels > 0 (flow latent ⊕ warped image latent ⊕ coverage) and flow_token_skip: still
    exact at conversion (zero gate)."""
    base = CogVideoXTransformer3DModel(**TINY).eval()
    base.save_pretrained(tmp_path)
    model = FlowCtrlTransformer.from_cogvideox(tmp_path, flow_in_channels=4, flow_warp_channels=5,
                                               flow_token_skip=True, stabilizer_frames=3).eval()
    assert model.flow_patch_embed.in_features == (4 + 5) * 2 * 2
    x, text, t, flow = _inputs()
    cond = torch.cat([flow, torch.randn(2, 3, 5, 8, 8, generator=torch.Generator().manual_seed(1))], dim=2)
    with torch.no_grad():
        assert torch.equal(model(x, text, t, flow_latents=cond).sample, base(x, text, t).sample)
        with pytest.raises(InputError, match="9"):
            model(x, text, t, flow_latents=flow)                      # the flow alone lacks the 5 channels


def test_flow_token_skip_reads_the_aligned_flow_token():
    """With flow_token_skip the gate input is fused[video i] + fused[flow i]: known answer through the block."""
    torch.manual_seed(0)
    model = FlowCtrlTransformer(**TINY, flow_in_channels=4, flow_token_skip=True, stabilizer_frames=3).eval()
    torch.nn.init.normal_(model.flow_gate.weight, std=0.5)
    g = torch.Generator().manual_seed(2)
    video_tokens, flow = torch.randn(2, 48, 32, generator=g), torch.randn(2, 3, 4, 8, 8, generator=g)
    captured = {}
    model.flow_fusion_block.register_forward_hook(lambda mod, inp, out: captured.update(out=out))
    with torch.no_grad():
        residual = model.flow_residual(video_tokens, flow)
        fused = captured["out"]
        torch.testing.assert_close(residual, model.flow_gate(fused[:, :48] + fused[:, 48:]))
        model.register_to_config(flow_token_skip=False)
        torch.testing.assert_close(model.flow_residual(video_tokens, flow), model.flow_gate(fused[:, :48]))


def test_flow_warp_input_is_extra_patch_embedding_channels_and_converts_exactly(tmp_path):
    """flow_warp_input: the warped image + coverage enter as input channels of the main patch embedding.
    Known answer: with the input weights set, the output equals a CogVideoX whose patch embedding is
    widened by those channels (weights = [base | flow_input_proj]) fed [x ⊕ warped]; zero at conversion,
    and flow_scale 0 drops it."""
    base = CogVideoXTransformer3DModel(**TINY).eval()
    base.save_pretrained(tmp_path)
    model = FlowCtrlTransformer.from_cogvideox(tmp_path, flow_in_channels=4, flow_warp_channels=5,
                                               flow_warp_input=True, stabilizer_frames=3).eval()
    assert "flow_input_proj.weight" in model.new_parameter_names()
    x, text, t, flow = _inputs()
    warp = torch.randn(2, 3, 5, 8, 8, generator=torch.Generator().manual_seed(1))
    cond = torch.cat([flow, warp], dim=2)
    with torch.no_grad():
        assert torch.equal(model(x, text, t, flow_latents=cond).sample, base(x, text, t).sample)   # exact at init
        torch.nn.init.normal_(model.flow_input_proj.weight, std=0.3)
        torch.nn.init.normal_(model.flow_input_proj.bias, std=0.3)
        wide = CogVideoXTransformer3DModel(**{**TINY, "in_channels": 8 + 5}).eval()
        state = base.state_dict()
        state["patch_embed.proj.weight"] = torch.cat(
            [state["patch_embed.proj.weight"], model.flow_input_proj.weight.view(32, 5, 2, 2)], dim=1)
        state["patch_embed.proj.bias"] = state["patch_embed.proj.bias"] + model.flow_input_proj.bias
        wide.load_state_dict(state)
        ours = model(x, text, t, flow_latents=cond).sample                 # flow gate still zero
        torch.testing.assert_close(ours, wide(torch.cat([x, warp], dim=2), text, t).sample, atol=1e-5, rtol=1e-5)
        assert (ours - base(x, text, t).sample).abs().max() > 1e-3
        assert torch.equal(model(x, text, t, flow_latents=cond, flow_scale=0.0).sample, base(x, text, t).sample)
        mixed = model(x, text, t, flow_latents=cond, flow_scale=torch.tensor([1.0, 0.0])).sample
        torch.testing.assert_close(mixed[0], ours[0])
        torch.testing.assert_close(mixed[1], base(x, text, t).sample[1])
    with pytest.raises(ValueError, match="flow_warp_channels"):
        FlowCtrlTransformer(**TINY, flow_in_channels=4, flow_warp_input=True)


def test_flow_output_skip_copies_the_warped_patch_known_answer(tmp_path):
    """flow_output_skip: zero at conversion (exact); with the DiT's own output projection zeroed and the
    pointwise skip set to the identity on the warped-latent channels, the prediction *is* the warped latent;
    flow_scale 0 removes it per sample."""
    base = CogVideoXTransformer3DModel(**TINY).eval()
    base.save_pretrained(tmp_path)
    model = FlowCtrlTransformer.from_cogvideox(tmp_path, flow_in_channels=4, flow_warp_channels=5,
                                               flow_output_skip=True, stabilizer_frames=3).eval()
    x, text, t, flow = _inputs()
    warp = torch.randn(2, 3, 5, 8, 8, generator=torch.Generator().manual_seed(1))
    cond = torch.cat([flow, warp], dim=2)
    with torch.no_grad():
        assert torch.equal(model(x, text, t, flow_latents=cond).sample, base(x, text, t).sample)
        model.proj_out.weight.zero_()
        model.proj_out.bias.zero_()
        model.flow_output_proj.weight.copy_(torch.eye(4, 5))                  # pointwise: latent channels
        out = model(x, text, t, flow_latents=cond, flow_scale=torch.tensor([1.0, 0.0])).sample
    assert torch.equal(out[0], warp[0, :, :4]) and torch.equal(out[1], torch.zeros_like(out[1]))
    with pytest.raises(ValueError, match="flow_warp_channels"):
        FlowCtrlTransformer(**TINY, flow_in_channels=4, flow_output_skip=True)
