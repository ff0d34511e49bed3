"""Stage-1 models: exact identities (zero-init reference attention, guider, T), codec mapping, save/load."""
from types import SimpleNamespace

import pytest
import torch

from flowctrl.models.crm import CameraReferenceModel
from flowctrl.models.embeddings import MotionStrengthEmbedding
from flowctrl.models.fgm import FlowGenerationModel, sparse_condition
from flowctrl.models.flow_codec import FlowCodec, channels_to_flow, flow_to_channels
from flowctrl.models.guider import ConditionEncoder, group_frames, latent_num_frames
from flowctrl.models.refiner import RefinementNet, layer_affinity_loss, nearest_control_distance, parametric_interpolation, robust_affine_fit


pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = dict(num_attention_heads=2, attention_head_dim=8, time_embed_dim=32, num_layers=2,
            sample_height=4, sample_width=4, sample_frames=9)


def _inputs(b=2, t=9, h=32, w=32, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    tl = latent_num_frames(t)
    x = torch.randn(b, tl, c, h // 8, w // 8, generator=g)
    img = torch.randn(b, 1, c, h // 8, w // 8, generator=g)
    sparse = torch.randn(b, t, 2, h, w, generator=g) * 5
    mask = (torch.rand(b, t, 1, h, w, generator=g) > 0.95).float()
    plucker = torch.randn(b, t, 6, h, w, generator=g)
    return x, img, sparse_condition(sparse, mask, 8.0), plucker, torch.tensor([3, 700]), torch.tensor([0.5, 4.0])


def test_fresh_crm_leaves_fgm_bit_identical():
    torch.manual_seed(0)
    fgm_plain = FlowGenerationModel(**TINY)  # no reference attention at all: diffusers' own processor
    torch.manual_seed(0)
    fgm = FlowGenerationModel(**TINY, reference_dim=32)
    missing = fgm.load_state_dict(fgm_plain.state_dict(), strict=False)
    assert all(".processor." in k for k in missing.missing_keys) and not missing.unexpected_keys
    crm = CameraReferenceModel(**{**TINY, "attention_head_dim": 16, "num_layers": 3})
    x, img, cond, plucker, t, s = _inputs()
    refs = crm(img, t, plucker)
    assert len(refs) == 3 and refs[0].shape == (2, 3 * 2 * 2, 32)
    with torch.no_grad():
        a = fgm(x, t, img, cond, s, refs).sample
        b = fgm(x, t, img, cond, s).sample
        c = fgm_plain(x, t, img, cond, s).sample
    assert torch.equal(a, b) and torch.equal(b, c)
    # and the reference path is live: a non-zero gate changes the output, and gradients reach the CRM
    fgm.transformer_blocks[0].attn1.processor.ref_out.weight.data.normal_()
    out = fgm(x, t, img, cond, s, crm(img, t, plucker)).sample
    assert not torch.equal(out, b)
    out.square().mean().backward()
    assert crm.transformer_blocks[0].attn1.to_q.weight.grad.abs().sum() > 0


def test_zero_init_guider_and_strength_and_refiner():
    enc = ConditionEncoder(3, 16)
    assert torch.equal(enc(torch.randn(1, 9, 3, 32, 32)), torch.zeros(1, 3 * 2 * 2, 16))
    emb = MotionStrengthEmbedding(32)
    assert torch.equal(emb(torch.tensor([0.0, 7.5])), torch.zeros(2, 32))
    T = RefinementNet(channels=(8, 16, 16))
    dense = torch.randn(1, 5, 2, 16, 16) * 3
    out = T(torch.rand(1, 3, 16, 16), dense, torch.zeros(1, 5, 1, 16, 16))
    assert torch.equal(out[:, 1:], dense[:, 1:]) and torch.equal(out[:, 0], torch.zeros_like(out[:, 0]))


def _affine_scene(points, outliers=()):
    """A known affine flow (translation (2, -1) + 0.05·(x, y) scaling) sampled at ``points`` (x, y) on a 32² frame,
    plus ``outliers`` ((x, y), (dx, dy)) points that move differently."""
    h = w = 32
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    flow = torch.stack([2.0 + 0.05 * (xs - 15.5), -1.0 + 0.05 * (ys - 15.5)])[None, None].repeat(1, 3, 1, 1, 1)
    flow[:, 0] = 0
    sparse, mask = torch.zeros_like(flow), torch.zeros(1, 3, 1, h, w)
    for x, y in points:
        sparse[..., y, x], mask[..., y, x] = flow[..., y, x], 1
    for (x, y), v in outliers:
        sparse[:, 1:, :, y, x], mask[..., y, x] = torch.tensor(v), 1
    return flow, sparse, mask


def test_parametric_interpolation_recovers_affine_motion_and_ignores_an_outlier():
    pts = [(3, 4), (28, 6), (5, 27), (26, 25), (16, 15), (10, 20)]
    flow, sparse, mask = _affine_scene(pts)
    # no ridge: an affine field is fitted exactly from ≥ 3 points, everywhere in the frame
    assert torch.allclose(robust_affine_fit(sparse, mask, ridge=0.0), flow, atol=1e-3)
    assert torch.allclose(parametric_interpolation(sparse, mask, ridge=0.0), flow, atol=1e-3)
    # a pure translation is exact whatever the ridge; eq. 6–7 would fade it to 0 away from a single point
    tr = torch.zeros(1, 3, 2, 32, 32)
    tr[:, 1:, 0], tr[:, 1:, 1] = 3.0, -2.0
    one = torch.zeros(1, 3, 1, 32, 32)
    one[..., 2, 2] = 1
    assert torch.allclose(parametric_interpolation(tr * one, one), tr, atol=1e-4)
    # one point on another layer: the robust fit stays on the majority, the control itself is kept exactly
    flow, sparse, mask = _affine_scene(pts, outliers=[((20, 8), (-6.0, 5.0))])
    fit = robust_affine_fit(sparse, mask, ridge=0.0)
    plain = robust_affine_fit(sparse, mask, ridge=0.0, irls_steps=0)
    far = (slice(None), slice(1, None), slice(None), slice(24, 32), slice(0, 8))  # away from the outlier
    assert (fit - flow)[far].abs().max() < 0.1 < (plain - flow)[far].abs().max()
    p = parametric_interpolation(sparse, mask, ridge=0.0)
    assert torch.allclose(p[0, 1:, :, 8, 20], torch.tensor([-6.0, 5.0]).expand(2, 2))
    d = nearest_control_distance(mask)
    assert d.shape == (1, 1, 32, 32) and d[0, 0, 4, 3] == 0 and torch.isclose(d[0, 0, 0, 0], torch.tensor(5.0 / 32))


def test_guided_refiner_starts_from_the_parametric_flow_and_its_attention_head_learns():
    flow, sparse, mask = _affine_scene([(3, 4), (28, 6), (5, 27), (16, 15)])
    img = torch.rand(1, 3, 32, 32)
    dense = sparse + 0.5 * (1 - mask)  # T only reads the controls (dense at the mask) for its base flow
    torch.manual_seed(0)
    T = RefinementNet(channels=(8, 16), guided=True)  # residual output, zero-initialised: returns the base
    with torch.no_grad():
        out = T(img, dense, mask)
    assert torch.equal(out[:, 1:], parametric_interpolation(sparse, mask, T.config.ridge, T.config.residual_sigma)[:, 1:])
    assert torch.equal(out[:, 0], torch.zeros_like(out[:, 0]))
    A = RefinementNet(channels=(8, 16), guided=True, output="attention")
    times = torch.tensor([[0.0, 0.5, 1.0]])
    out = A(img, dense, mask, times)
    assert out.shape == flow.shape and torch.equal(out[:, 0], torch.zeros_like(out[:, 0]))
    # the output mixes the base flow and the control values, so it stays within their range
    lo, hi = torch.minimum(sparse.amin(dim=(3, 4)), out.new_zeros(1)), sparse.amax(dim=(3, 4))
    assert ((out[:, 1:].amin(dim=(3, 4)) >= lo[:, 1:] - 0.05) & (out[:, 1:].amax(dim=(3, 4)) <= hi[:, 1:] + 0.05)).all()
    (out - flow).square().mean().backward()
    assert A.head.weight.grad[:A.config.feature_dim].abs().sum() > 0 and A.log_sigma.grad.abs() > 0
    with pytest.raises(ValueError, match="output"):
        RefinementNet(channels=(8,), output="nope")
    # per-clip features: one U-Net pass per clip, the same φ for every frame
    C = RefinementNet(channels=(8, 16), guided=True, output="attention", clip_features=True)
    out, feats = C(img, dense, mask, times, return_features=True)
    assert out.shape == flow.shape and feats.shape == (1, C.config.feature_dim, 32, 32)


def test_layer_affinity_loss_scores_same_surface_pairs():
    layers = torch.zeros(2, 1, 16, 16, dtype=torch.long)
    layers[:, :, 4:12, 4:12] = 1
    layers[1, :, :3] = 2
    onehot = torch.nn.functional.one_hot(layers[:, 0], 4).permute(0, 3, 1, 2).float()
    good = (onehot - 0.25) * 20.0  # simplex codes: same surface → φ·φ = 300 ≫ 0, different → −100 ≪ 0
    g = torch.Generator().manual_seed(0)
    lo = layer_affinity_loss(good, layers, generator=g)
    rnd = layer_affinity_loss(torch.randn(2, 4, 16, 16), layers, generator=torch.Generator().manual_seed(0))
    assert lo < 0.35 < rnd
    # per-frame features score every frame against the clip's layers
    assert layer_affinity_loss(good[:, None].expand(2, 3, 4, 16, 16), layers, generator=torch.Generator().manual_seed(0)) < 0.35


def test_group_frames_follows_causal_vae_grouping():
    t = 10  # padded to 13 → latent frames {0}, {1..4}, {5..8}, {9, 9, 9, 9}
    x = torch.arange(t, dtype=torch.float).view(1, t, 1, 1, 1)
    g = group_frames(x)
    assert g.shape == (1, 4, 4, 1, 1)
    assert g[0, :, :, 0, 0].tolist() == [[0] * 4, [1, 2, 3, 4], [5, 6, 7, 8], [9, 9, 9, 9]]
    assert [latent_num_frames(n) for n in (1, 2, 5, 9, 16, 17, 49)] == [1, 2, 2, 3, 5, 5, 13]


def test_flow_channel_mapping_round_trip_and_codec_shapes():
    f = torch.randn(2, 3, 2, 8, 8) * 6
    ch = flow_to_channels(f, 8.0)
    assert ch.abs().max() < 1
    assert torch.allclose(channels_to_flow(ch, 8.0), f, atol=1e-3)
    codec = FlowCodec(latent_channels=4, block_out_channels=(8, 8, 8, 8))
    with torch.no_grad():
        z = codec.encode(torch.randn(1, 9, 2, 32, 32))
        assert z.shape == (1, 3, 4, 4, 4)
        out = codec.decode(z, num_frames=9, size=(16, 16))
    assert out.shape == (1, 9, 2, 16, 16) and torch.equal(out[:, 0], torch.zeros_like(out[:, 0]))
    # the EPE term adds the decoded flow's end-point error (px / flow_scale) and reaches the VAE's weights
    f = torch.randn(1, 5, 2, 16, 16) * 2
    l0 = codec.loss(f, generator=torch.Generator().manual_seed(0))
    l1 = codec.loss(f, generator=torch.Generator().manual_seed(0), epe_weight=1.0)
    assert l1 > l0
    l1.backward()
    assert codec.vae.decoder.conv_out.conv.weight.grad.abs().sum() > 0


def test_save_load_round_trips_outputs_exactly(tmp_path):
    torch.manual_seed(1)
    crm = CameraReferenceModel(**TINY)
    fgm = FlowGenerationModel(**TINY, reference_dim=16, control_tokens=8)
    for p in fgm.parameters():  # make the zero-initialised parts non-zero so they are tested too
        p.data.add_(torch.randn_like(p) * 0.01)
    T = RefinementNet(channels=(8, 16))
    torch.nn.init.normal_(T.head.weight)
    codec = FlowCodec(latent_channels=4, block_out_channels=(8, 8, 8, 8))
    x, img, cond, plucker, t, s = _inputs()
    for name, m in {"fgm": fgm, "crm": crm, "T": T, "codec": codec}.items():
        m.save_pretrained(tmp_path / name)
        assert (tmp_path / name / "diffusion_pytorch_model.safetensors").is_file()
    fgm2 = FlowGenerationModel.from_pretrained(tmp_path / "fgm")
    crm2 = CameraReferenceModel.from_pretrained(tmp_path / "crm")
    T2 = RefinementNet.from_pretrained(tmp_path / "T")
    codec2 = FlowCodec.from_pretrained(tmp_path / "codec")
    with torch.no_grad():
        assert torch.equal(fgm(x, t, img, cond, s, crm(img, t, plucker)).sample,
                           fgm2(x, t, img, cond, s, crm2(img, t, plucker)).sample)
        d, m = torch.randn(1, 3, 2, 8, 8), torch.ones(1, 3, 1, 8, 8)
        im = torch.rand(1, 3, 8, 8)
        assert torch.equal(T(im, d, m), T2(im, d, m))
        f = torch.randn(1, 5, 2, 16, 16)
        assert torch.equal(codec.decode(codec.encode(f), 5), codec2.decode(codec2.encode(f), 5))


def test_rotary_and_gradient_checkpointing_paths_agree():
    torch.manual_seed(2)
    rope = {**TINY, "attention_head_dim": 16, "use_rotary_positional_embeddings": True}  # RoPE splits head_dim 1:3:3 (even parts)
    fgm = FlowGenerationModel(**rope, reference_dim=32)
    crm = CameraReferenceModel(**rope)
    x, img, cond, plucker, t, s = _inputs()
    ref = fgm(x, t, img, cond, s, crm(img, t, plucker)).sample
    fgm.enable_gradient_checkpointing()
    crm.enable_gradient_checkpointing()
    out = fgm(x, t, img, cond, s, crm(img, t, plucker)).sample
    assert torch.allclose(ref, out, atol=1e-6)
    out.mean().backward()
    assert fgm.condition_encoder.conv_out.weight.grad is not None


def test_bad_condition_size_is_reported():
    fgm = FlowGenerationModel(**TINY)
    x, img, cond, _, t, s = _inputs()
    with pytest.raises(ValueError, match="condition"):
        fgm(x, t, img, cond[:, :5], s)


def test_residual_fgm_condition_and_pipeline_return_base_plus_decoded_residual(monkeypatch):
    from diffusers import DDIMScheduler

    from flowctrl.models.fgm import coarse_base, fgm_condition, zero_residual_latent
    from flowctrl.pipelines.flow_generation import FlowGenerationPipeline

    flow, sparse, mask = _affine_scene([(3, 4), (28, 6), (5, 27), (26, 25)])
    cond, base = fgm_condition(sparse, mask, 8.0, "parametric")
    assert cond.shape == (1, 3, 5, 32, 32) and torch.equal(cond[:, :, :3], sparse_condition(sparse, mask, 8.0))
    assert torch.allclose(base, parametric_interpolation(sparse, mask)) and torch.equal(cond[:, :, 3:], torch.tanh(base / 8.0))
    assert fgm_condition(sparse, mask, 8.0)[1] is None and fgm_condition(sparse, mask, 8.0)[0].shape[2] == 3
    assert torch.equal(coarse_base(sparse, torch.zeros_like(mask), "parametric"), torch.zeros_like(sparse))  # camera-only
    with pytest.raises(ValueError, match="condition_in_channels"):
        FlowGenerationModel(**{**TINY, "sample_frames": 3}, base="parametric")
    fgm = FlowGenerationModel(**{**TINY, "sample_frames": 3}, base="parametric", condition_in_channels=5)
    codec = FlowCodec(latent_channels=4, block_out_channels=(8, 8, 8, 8))
    pipe = FlowGenerationPipeline(fgm=fgm, codec=codec, image_codec=FlowCodec(latent_channels=4, block_out_channels=(8, 8, 8, 8)),
                                  scheduler=DDIMScheduler(prediction_type="sample", timestep_spacing="trailing"), guidance_scale=1.0)
    # a fresh residual FGM predicts x0 = 0, the latent of a zero residual: one DDIM step returns the base flow
    # exactly (the decoded zero residual, the codec's round-trip error of 0, is subtracted)
    unified = SimpleNamespace(flow=torch.zeros_like(flow), sparse_flow=sparse, sparse_mask=mask, num_frames=3, size=(32, 32),
                              K=None, w2c=None)
    fresh = pipe(torch.rand(1, 3, 32, 32), unified, num_inference_steps=1, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(fresh, base, atol=1e-5) and torch.allclose(base, parametric_interpolation(sparse, mask))
    assert torch.allclose(fresh[0, 1:, :, 27, 5], flow[0, 1:, :, 27, 5], atol=1e-4)  # exact at a control
    # the answer is base + decode(latent + z0) − decode(z0): with a decoder that sums its latent and a model
    # that predicts x0 = 0.01 everywhere, the residual is 0.01 × the latent's size
    zero = zero_residual_latent(codec, 3, (32, 32))
    monkeypatch.setattr(codec, "decode", lambda z, num_frames: torch.ones(1, num_frames, 2, 32, 32) * z.sum())
    with torch.no_grad():
        fgm.proj_out.bias.fill_(0.01)
    out = pipe(torch.rand(1, 3, 32, 32), unified, num_inference_steps=1)
    assert torch.allclose(out, base + 0.01 * zero.numel(), atol=1e-3)


def test_crm_camera_base_starts_the_residual_from_the_cameras_plane_flow():
    """A CRM's camera_base_depth: the residual base is the camera's flow of a fronto-parallel plane plus the
    parametric interpolation of what the controls add to it; a pure rotation's plane flow is the homography's
    at any depth, a sideways move's is f·t/depth everywhere; a fresh FGM + CRM returns that base exactly."""
    from diffusers import DDIMScheduler

    from flowctrl.flow.camera import homography_flow
    from flowctrl.models.fgm import coarse_base, plane_camera_flow
    from flowctrl.pipelines.flow_generation import FlowGenerationPipeline

    K = torch.tensor([[[30.0, 0.0, 15.5], [0.0, 30.0, 15.5], [0.0, 0.0, 1.0]]])
    yaw = torch.tensor([0.0, 0.02, 0.04])
    rot = torch.eye(4).repeat(1, 3, 1, 1)
    rot[0, :, 0, 0], rot[0, :, 0, 2], rot[0, :, 2, 0], rot[0, :, 2, 2] = yaw.cos(), yaw.sin(), -yaw.sin(), yaw.cos()
    for depth in (2.0, 50.0):
        got = plane_camera_flow(K, rot, depth, (32, 32))
        assert got.shape == (1, 3, 2, 32, 32)
        assert torch.allclose(got[0], homography_flow(K.expand(3, 3, 3), rot[0, :, :3, :3], 32, 32), atol=1e-4)
    move = torch.eye(4).repeat(1, 3, 1, 1)
    move[0, :, 0, 3] = torch.tensor([0.0, 0.1, 0.2])
    side = plane_camera_flow(K, move, 4.0, (32, 32))
    assert torch.allclose(side[0, :, 0], (30.0 * move[0, :, 0, 3] / 4.0)[:, None, None].expand(3, 32, 32), atol=1e-4)
    assert torch.allclose(side[0, :, 1], torch.zeros(3, 32, 32), atol=1e-5)

    flow, sparse, mask = _affine_scene([(3, 4), (28, 6), (5, 27), (26, 25)])
    assert torch.equal(coarse_base(sparse, torch.zeros_like(mask), "parametric", side), side)  # camera-only
    base = coarse_base(sparse, mask, "parametric", side)
    on = mask[0, 1:, 0] > 0
    assert torch.allclose(base[0, 1:].permute(1, 0, 2, 3)[:, on], sparse[0, 1:].permute(1, 0, 2, 3)[:, on], atol=1e-4)
    with pytest.raises(ValueError, match="camera_base_depth"):
        CameraReferenceModel(**TINY, camera_base_depth=0.0)

    fgm = FlowGenerationModel(**{**TINY, "sample_frames": 3}, base="parametric", condition_in_channels=5, reference_dim=32)
    crm = CameraReferenceModel(**{**TINY, "sample_frames": 3, "attention_head_dim": 16}, camera_base_depth=4.0)
    codec = FlowCodec(latent_channels=4, block_out_channels=(8, 8, 8, 8))
    pipe = FlowGenerationPipeline(fgm=fgm, crm=crm, codec=codec, image_codec=FlowCodec(latent_channels=4, block_out_channels=(8, 8, 8, 8)),
                                  scheduler=DDIMScheduler(prediction_type="sample", timestep_spacing="trailing"), guidance_scale=1.0)
    no_points = SimpleNamespace(flow=torch.zeros(1, 3, 2, 32, 32), sparse_flow=torch.zeros(1, 3, 2, 32, 32),
                                sparse_mask=torch.zeros(1, 3, 1, 32, 32), num_frames=3, size=(32, 32), K=K, w2c=move)
    out = pipe(torch.rand(1, 3, 32, 32), no_points, num_inference_steps=1, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, side, atol=1e-4)
    own = torch.rand(1, 3, 2, 32, 32)  # stage 1's own camera flow (the user's depth) wins over the plane
    given = pipe(torch.rand(1, 3, 32, 32), SimpleNamespace(**vars(no_points), camera_flow=own), num_inference_steps=1)
    assert torch.allclose(given, own, atol=1e-4)
    # the zero residual's latent and decoded flow are computed once per size and codec weights
    cached = pipe._zero_residual_pair(3, (32, 32))
    assert pipe._zero_residual_pair(3, (32, 32))[1] is cached[1]
    with torch.no_grad():
        next(codec.parameters()).mul_(1.5)  # fine-tuned in place: recomputed
    assert not torch.equal(pipe._zero_residual_pair(3, (32, 32))[1], cached[1])
    static = pipe(torch.rand(1, 3, 32, 32), SimpleNamespace(**{**vars(no_points), "K": None, "w2c": None}), num_inference_steps=1)
    assert torch.allclose(static, torch.zeros_like(static), atol=1e-5)  # no camera given: no camera flow


def test_fgm_condition_image_reaches_the_tokens_only_through_the_guider():
    """config.condition_image: the full-resolution image joins the condition; a fresh guider (zero output)
    ignores it, a trained one does not; forgetting the image or the channel count is a clear error."""
    with pytest.raises(ValueError, match="condition_in_channels=8"):
        FlowGenerationModel(**TINY, base="parametric", condition_in_channels=5, condition_image=True)
    torch.manual_seed(0)
    fgm = FlowGenerationModel(**TINY, base="parametric", condition_in_channels=8, condition_image=True).eval()
    z, img_lat, cond, _, t, strength = _inputs()
    cond = torch.cat([cond, cond[:, :, :2]], dim=2)  # (B,T,5,H,W): sparse 2 + mask 1 + base 2
    with pytest.raises(ValueError, match="image="):
        fgm(z, t, img_lat, cond, strength)
    a, b = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fgm(z, t, img_lat, cond, strength, image=a).sample, fgm(z, t, img_lat, cond, strength, image=b).sample)
        torch.nn.init.normal_(fgm.condition_encoder.conv_out.weight, std=0.1)
        torch.nn.init.normal_(fgm.proj_out.weight, std=0.1)
        assert not torch.allclose(fgm(z, t, img_lat, cond, strength, image=a).sample, fgm(z, t, img_lat, cond, strength, image=b).sample)


def test_control_pixels_and_tokens_know_where_each_control_is():
    """control_pixels finds the controlled pixels (any frame), subsamples evenly past max_tokens and pads; the
    encoder emits one token per (control, latent frame) and a keep mask (a clip without controls keeps its
    "no controls" tokens)."""
    from flowctrl.models.control_tokens import ControlTokenEncoder, control_pixels, fourier_features

    mask = torch.zeros(3, 5, 1, 8, 8)
    mask[0, 2, 0, 1, 3] = 1      # pixel 11, on one frame only
    mask[0, :, 0, 6, 2] = 1      # pixel 50
    mask[1, :, 0].view(5, 64)[:, ::2] = 1  # 32 pixels: 0, 2, …, 62
    index, valid = control_pixels(mask, max_tokens=4)
    assert index.shape == (3, 4) and index[0, :2].tolist() == [11, 50] and valid[0].tolist() == [True, True, False, False]
    assert index[1].tolist() == [0, 20, 42, 62] and bool(valid[1].all()) and not bool(valid[2].any())
    assert torch.allclose(fourier_features(torch.tensor([[0.5]]), 2), torch.tensor([[1.0, 0.0, 0.0, -1.0]]), atol=1e-6)

    enc = ControlTokenEncoder(out_dim=6, max_tokens=4)
    sparse = torch.zeros(3, 5, 2, 8, 8)
    tokens, keep = enc(sparse_condition(sparse, mask, 8.0), torch.rand(3, 3, 8, 8))
    assert tokens.shape == (3, 2 * 4, 6) and keep.shape == (3, 8)  # 5 frames → 2 latent frames × 4 controls
    assert keep[0].tolist() == [True, True, False, False] * 2 and bool(keep[1].all())
    assert keep[2].tolist() == [True, False, False, False] * 2  # no controls: the empty token per latent frame
    assert torch.equal(tokens[2, 0], enc.empty.detach()) and torch.equal(tokens[0, 2], enc.empty.detach())


def test_fgm_control_tokens_read_the_controls_and_ignore_batch_padding():
    """config.control_tokens: with the guider's output still zero, the controls reach the prediction through the
    tokens alone — moving one control's flow changes it; a clip's output is the same alone or batched with a
    clip that has more controls (padding is masked out of the attention); save → load keeps the option."""
    torch.manual_seed(0)
    fgm = FlowGenerationModel(**TINY, control_tokens=8).eval()
    torch.nn.init.normal_(fgm.proj_out.weight, std=0.1)
    assert float(fgm.condition_encoder.conv_out.weight.abs().sum()) == 0
    z, img_lat, _, _, t, strength = _inputs()
    sparse, mask = torch.zeros(2, 9, 2, 32, 32), torch.zeros(2, 9, 1, 32, 32)
    mask[0, :, 0, 5, 7] = 1
    mask[1, :, 0, 20, 3] = mask[1, :, 0, 9, 30] = mask[1, :, 0, 25, 25] = 1
    sparse[:, :, 0] = 4.0 * mask[:, :, 0]
    image = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        both = fgm(z, t, img_lat, sparse_condition(sparse, mask, 8.0), strength, image=image).sample
        alone = fgm(z[:1], t[:1], img_lat[:1], sparse_condition(sparse[:1], mask[:1], 8.0), strength[:1], image=image[:1]).sample
        assert torch.allclose(both[:1], alone, atol=1e-5)
        moved = sparse.clone()
        moved[0, :, 1, 5, 7] = -3.0
        other = fgm(z, t, img_lat, sparse_condition(moved, mask, 8.0), strength, image=image).sample
        assert not torch.allclose(other[0], both[0], atol=1e-4) and torch.allclose(other[1], both[1], atol=1e-5)
        # the same with reference attention (its processor takes the padding mask too)
        torch.manual_seed(1)
        crm, ref_fgm = CameraReferenceModel(**TINY), FlowGenerationModel(**TINY, control_tokens=8, reference_dim=16).eval()
        for p in ref_fgm.parameters():
            p.data.add_(torch.randn_like(p) * 0.05)
        plucker = torch.randn(2, 9, 6, 32, 32)
        cond = sparse_condition(sparse, mask, 8.0)
        both = ref_fgm(z, t, img_lat, cond, strength, crm(img_lat, t, plucker), image=image).sample
        alone = ref_fgm(z[:1], t[:1], img_lat[:1], cond[:1], strength[:1], crm(img_lat[:1], t[:1], plucker[:1]), image=image[:1]).sample
        assert torch.allclose(both[:1], alone, atol=1e-5)


def test_control_affinity_loss_scores_tokens_against_the_surface_share_of_each_control():
    """Two surfaces split the image at x = 16 (tokens of 16 px: the left column of tokens lies on surface 0, the
    right on 1). Tokens whose products say exactly that score ≈ 0; the swapped assignment scores high; padded
    controls do not count; and the FGM returns its last block's tokens for it."""
    from flowctrl.models.control_tokens import control_affinity_loss, control_pixels

    b, t, h, w, d = 1, 5, 32, 32, 4
    layers = torch.zeros(b, 1, h, w, dtype=torch.long)
    layers[..., 16:] = 1
    mask = torch.zeros(b, t, 1, h, w)
    mask[:, :, :, 5, 3] = 1     # a control on surface 0
    mask[:, :, :, 20, 27] = 1   # a control on surface 1
    cond = torch.cat([torch.zeros(b, t, 2, h, w), mask], dim=2)
    index, valid = control_pixels(mask, 8)
    assert valid.all() and index.tolist() == [[5 * 32 + 3, 20 * 32 + 27]]
    tl = 2
    side = torch.tensor([0.0, 1.0, 0.0, 1.0])                                 # token raster (2×2): x = 0, 1, 0, 1
    patch = torch.stack([(1 - side) * 10, side * 10, -torch.ones(4) * 10, torch.zeros(4)], -1)   # (S=4, D)
    control = torch.tensor([[10.0, 0, 1, 0], [0, 10.0, 1, 0]])                # surface 0, surface 1
    patch_tokens = patch.repeat(tl, 1)[None]                                  # (1, T'·S, D)
    good = control_affinity_loss(patch_tokens, control.repeat(tl, 1)[None], cond, layers, 8, 16)
    swapped = control_affinity_loss(patch_tokens, control.flip(0).repeat(tl, 1)[None], cond, layers, 8, 16)
    assert good < 0.01 and swapped > 10
    # a third, padded control slot (another clip in the batch has more) changes nothing
    mask2 = mask.repeat(2, 1, 1, 1, 1)
    mask2[1, :, :, 9, 9] = 1
    cond2 = torch.cat([torch.zeros(2, t, 2, h, w), mask2], dim=2)
    tokens2 = torch.cat([control, torch.full((1, d), 5.0)]).repeat(tl, 1)[None].repeat(2, 1, 1)   # (2, T'·3, D)
    both = control_affinity_loss(patch_tokens.repeat(2, 1, 1), tokens2, cond2, layers.repeat(2, 1, 1, 1), 8, 16)
    tokens2[0, 2::3] = -50.0   # clip 0's padded slot
    assert torch.isfinite(both) and control_affinity_loss(patch_tokens.repeat(2, 1, 1), tokens2, cond2,
                                                          layers.repeat(2, 1, 1, 1), 8, 16) == both

    fgm = FlowGenerationModel(**TINY, control_tokens=4)
    z, img_lat, cond_in, _, tt, strength = _inputs()
    out = fgm(z, tt, img_lat, cond_in, strength, image=torch.rand(2, 3, 32, 32), return_tokens=True)
    assert out.patch_tokens.shape == (2, 3 * 4, 16) and out.control_tokens.shape[0] == 2
    assert out.control_tokens.shape[1] % 3 == 0
