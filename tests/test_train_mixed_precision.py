"""bf16 autocast (the mixed precision of the GPU configs) through every stage-1 model and loss, on the CPU's
bf16 autocast: the forward and backward run, stay finite and agree with float32 to bf16 accuracy. This is what
catches dtype mismatches (attention masks, reference states, hand-made embeddings) before a GPU run does."""
import pytest
import torch

from flowctrl.flow.camera import plucker_rays
from flowctrl.models.crm import CameraReferenceModel
from flowctrl.models.fgm import FlowGenerationModel, sparse_condition
from flowctrl.models.flow_codec import FlowCodec
from flowctrl.models.refiner import RefinementNet
from flowctrl.train.config import load_config
from flowctrl.train.flow_loop import DecodedLatentLoss, diffusion_loss, epe_loss, make_scheduler

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(num_attention_heads=2, attention_head_dim=8, time_embed_dim=32, num_layers=2,
            sample_height=4, sample_width=4, sample_frames=9)


def _both_precisions(loss_fn, params):
    """loss_fn() in float32 and under CPU bf16 autocast → (loss32, loss16, grads16)."""
    with torch.no_grad():
        loss32 = float(loss_fn())
    for p in params:
        p.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16 = loss_fn()
    loss16.float().backward()
    grads = [p.grad for p in params if p.requires_grad]
    return loss32, loss16.item(), grads


def test_fgm_crm_with_control_tokens_and_decoded_loss_under_bf16_autocast():
    from flowctrl.train.scenes import SceneConfig, render_scene

    torch.manual_seed(0)
    codec = FlowCodec(latent_channels=4, block_out_channels=[8, 8, 8, 8], layers_per_block=1, norm_num_groups=4).requires_grad_(False)
    crm = CameraReferenceModel(**TINY)
    fgm = FlowGenerationModel(**TINY, reference_dim=crm.hidden_dim, control_tokens=8, base="parametric",
                              condition_in_channels=8, condition_image=True)
    for p in fgm.parameters():  # leave the zero-initialised gates: every path carries signal
        p.data.add_(torch.randn_like(p) * 0.02)
    clip = render_scene(0, SceneConfig(num_frames=9, height=32, width=32))
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(2, 9, 1, 32, 32, generator=g) > 0.97).float()
    cond = sparse_condition(clip.flow[None] * mask, mask, 8.0)
    batch = {
        "latents": torch.randn(2, 3, 4, 4, 4, generator=g) * 0.1,
        "image_latents": torch.randn(2, 1, 4, 4, 4, generator=g),
        "condition": torch.cat([cond, torch.tanh(clip.flow[None].expand(2, -1, -1, -1, -1) / 8.0)], dim=2),
        "image": clip.video[None, 0].expand(2, -1, -1, -1),
        "strength": torch.tensor([1.0, 2.0]),
        "plucker": plucker_rays(clip.K[None], clip.w2c[None], 32, 32).expand(2, -1, -1, -1, -1),
        "noise": torch.randn(2, 3, 4, 4, 4, generator=g),
        "timesteps": torch.tensor([950, 990]),
        "target_flow": clip.flow[None].expand(2, -1, -1, -1, -1) * 0.1,
    }
    sched = make_scheduler(load_config(None, {"scheduler": {"prediction_type": "sample"}}))
    decoded = DecodedLatentLoss(codec, 9, (32, 32), None, 1.0, "flow", residual=True)
    params = list(fgm.parameters()) + list(crm.parameters())
    loss32, loss16, grads = _both_precisions(lambda: diffusion_loss(fgm, crm, sched, batch, decoded=decoded), params)
    assert torch.isfinite(torch.tensor(loss16)) and loss16 == pytest.approx(loss32, rel=0.05)
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    assert fgm.control_encoder.mlp[0].weight.grad.abs().sum() > 0 and crm.transformer_blocks[0].attn1.to_q.weight.grad.abs().sum() > 0


def test_refiner_and_codec_under_bf16_autocast():
    from flowctrl.models.refiner import layer_affinity_loss
    from flowctrl.train.scenes import SceneConfig, render_scene

    torch.manual_seed(0)
    clip = render_scene(1, SceneConfig(num_frames=9, height=32, width=32))
    flow = clip.flow[None]
    mask = torch.zeros(1, 9, 1, 32, 32)
    mask[..., ::7, ::9] = 1
    refiner = RefinementNet(channels=[8, 16, 16], guided=True, output="attention", clip_features=True)
    for p in refiner.parameters():
        p.data.add_(torch.randn_like(p) * 0.02)

    def refiner_loss():
        pred, feats = refiner(clip.video[None, 0], flow * mask, mask, None, return_features=True)
        return epe_loss(pred, flow) + 0.5 * layer_affinity_loss(feats, clip.layer_ids[None], generator=torch.Generator().manual_seed(0))

    loss32, loss16, grads = _both_precisions(refiner_loss, list(refiner.parameters()))
    assert loss16 == pytest.approx(loss32, rel=0.05) and all(torch.isfinite(g).all() for g in grads if g is not None)

    codec = FlowCodec(latent_channels=4, block_out_channels=[8, 8, 8, 8], layers_per_block=1, norm_num_groups=4)
    loss32, loss16, grads = _both_precisions(
        lambda: codec.loss(flow, generator=torch.Generator().manual_seed(0), epe_weight=0.1), list(codec.parameters()))
    assert loss16 == pytest.approx(loss32, rel=0.05) and all(torch.isfinite(g).all() for g in grads if g is not None)


def test_flow_pipeline_runs_in_bf16_and_returns_float32_flow(tmp_path):
    """FlowGenerationPipeline.to(dtype=bf16) / from_pretrained(torch_dtype=bf16): the models run in bf16, the
    latents, scheduler and returned flow stay float32. A fresh residual FGM + CRM returns its camera + parametric
    base exactly, in bf16 as in float32 (its zero prediction decodes to the zero residual it is measured from);
    with trained-like weights the two precisions agree to bf16 accuracy; T stays float32."""
    from types import SimpleNamespace

    from diffusers import DDIMScheduler

    from flowctrl.pipelines.flow_generation import FlowGenerationPipeline

    torch.manual_seed(0)
    tiny = {**TINY, "sample_frames": 5}
    fgm = FlowGenerationModel(**tiny, base="parametric", condition_in_channels=8, condition_image=True, reference_dim=32,
                              control_tokens=4)
    crm = CameraReferenceModel(**{**tiny, "attention_head_dim": 16}, camera_base_depth=4.0)
    codec = lambda: FlowCodec(latent_channels=4, block_out_channels=(8, 8, 8, 8))  # noqa: E731
    pipe = FlowGenerationPipeline(fgm=fgm, crm=crm, codec=codec(), image_codec=codec(), guidance_scale=1.0,
                                  scheduler=DDIMScheduler(prediction_type="sample", timestep_spacing="trailing"),
                                  refiner=RefinementNet(channels=[8, 8], guided=True))
    w2c = torch.eye(4).repeat(1, 5, 1, 1)
    w2c[0, :, 0, 3] = torch.linspace(0, 0.2, 5)
    sparse, mask = torch.zeros(1, 5, 2, 32, 32), torch.zeros(1, 5, 1, 32, 32)
    mask[:, :, :, 8, 20] = mask[:, :, :, 24, 6] = 1
    sparse[:, :, 0] = 2.0 * mask[:, :, 0]
    unified = SimpleNamespace(flow=torch.zeros(1, 5, 2, 32, 32), sparse_flow=sparse, sparse_mask=mask, num_frames=5,
                              size=(32, 32), K=torch.tensor([[[30.0, 0, 16], [0, 30, 16], [0, 0, 1]]]), w2c=w2c)
    image = torch.rand(1, 3, 32, 32)
    run = lambda p: p(image, unified, num_inference_steps=2, generator=torch.Generator().manual_seed(0))  # noqa: E731
    fresh32 = run(pipe)
    pipe.save_pretrained(tmp_path / "p")
    pipe16 = FlowGenerationPipeline.from_pretrained(tmp_path / "p", torch_dtype=torch.bfloat16)
    assert pipe16.dtype == torch.bfloat16 and next(pipe16.codec.parameters()).dtype == torch.bfloat16
    assert next(pipe16.refiner.parameters()).dtype == torch.float32
    fresh16 = run(pipe16)
    assert fresh16.dtype == torch.float32 and torch.allclose(fresh16, fresh32, atol=1e-4)

    with torch.no_grad():
        for p in fgm.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    trained32 = run(pipe)
    trained16 = run(pipe.to(dtype=torch.bfloat16))
    assert not torch.allclose(trained32, fresh32, atol=1e-3)                      # the model does move the flow
    assert trained16.dtype == torch.float32 and torch.isfinite(trained16).all()
    assert (trained16 - trained32).norm(dim=2).mean() < 0.05 * trained32.norm(dim=2).mean() + 0.01
