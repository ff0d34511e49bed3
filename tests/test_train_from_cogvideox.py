"""The real-scale stage-1 path at tiny scale: FGM + CRM started from a CogVideoX folder (transformer/ + vae/),
trained through the shipped `fgm_cogvideox_2b.yaml` with only paths and sizes overridden."""
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel

from flowctrl.models.crm import CameraReferenceModel
from flowctrl.models.fgm import FlowGenerationModel, sparse_condition
from flowctrl.train.config import load_config
from flowctrl.train.flow_loop import read_metrics, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cogvideox_folder(tmp_path_factory) -> Path:
    """A random CogVideoX-shaped checkpoint: a 3-block transformer (4 latent channels, 16 wide) and a 4-channel VAE."""
    root = tmp_path_factory.mktemp("cogvideox")
    torch.manual_seed(0)
    CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=8, out_channels=4, time_embed_dim=32,
        text_embed_dim=16, num_layers=3, sample_width=4, sample_height=4, sample_frames=9, patch_size=2,
        max_text_seq_length=4, temporal_compression_ratio=4).save_pretrained(root / "transformer")
    AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
        layers_per_block=1, norm_num_groups=4, temporal_compression_ratio=4, sample_height=32,
        sample_width=32).save_pretrained(root / "vae")
    return root


def test_fgm_and_crm_start_from_the_cogvideox_blocks(cogvideox_folder):
    base = CogVideoXTransformer3DModel.from_pretrained(cogvideox_folder, subfolder="transformer").state_dict()
    crm = CameraReferenceModel.from_cogvideox(cogvideox_folder, num_layers=2)
    fgm = FlowGenerationModel.from_cogvideox(cogvideox_folder, in_channels=4, image_latent_channels=4,
                                             reference_dim=crm.hidden_dim)
    plain = FlowGenerationModel.from_cogvideox(cogvideox_folder, in_channels=4, image_latent_channels=4)
    residual = FlowGenerationModel.from_cogvideox(cogvideox_folder, in_channels=4, image_latent_channels=4,
                                                  base="parametric", condition_in_channels=5)
    fgm_state, crm_state = fgm.state_dict(), crm.state_dict()
    blocks = [k for k in base if k.startswith("transformer_blocks.")]
    assert blocks and all(torch.equal(fgm_state[k], base[k]) for k in blocks)
    assert all(torch.equal(crm_state[k], base[k]) for k in blocks if k.startswith(("transformer_blocks.0.", "transformer_blocks.1.")))
    assert not any(k.startswith("transformer_blocks.2.") for k in crm_state)   # the shallower reference branch
    assert torch.equal(fgm_state["proj_out.weight"], base["proj_out.weight"])
    assert residual.proj_out.weight.abs().sum() == 0 and residual.proj_out.bias.abs().sum() == 0  # starts at its base

    # a fresh CRM on pretrained blocks still leaves the FGM's output exactly as without it
    g = torch.Generator().manual_seed(0)
    x, img = torch.randn(1, 3, 4, 4, 4, generator=g), torch.randn(1, 1, 4, 4, 4, generator=g)
    mask = (torch.rand(1, 9, 1, 32, 32, generator=g) > 0.95).float()
    cond = sparse_condition(torch.randn(1, 9, 2, 32, 32, generator=g) * mask, mask, 8.0)
    t = torch.tensor([500])
    with torch.no_grad():
        with_crm = fgm(x, t, img, cond, None, crm(img, t, torch.randn(1, 9, 6, 32, 32, generator=g))).sample
        without = plain(x, t, img, cond).sample
    assert torch.equal(with_crm, without)


def test_the_shipped_real_scale_config_trains_and_loads_at_tiny_scale(cogvideox_folder, tmp_path):
    from flowctrl.controls import Arrow, Controls
    from flowctrl.pipelines.flow_generation import FlowGenerationPipeline
    from flowctrl.pipelines.flowctrl_pipeline import FlowCtrlPipeline

    root = str(cogvideox_folder)
    cfg = load_config(str(REPO / "configs/train/fgm_cogvideox_2b.yaml"), settings=[
        f"pretrained_cogvideox={root}", f"codec_path={root}", f"output_dir={tmp_path / 'run'}", "max_steps=8",
        "checkpoint_every=4", "log_every=100", "data.source=synthetic", "data.shards=null", "data.num_scenes=2",
        "data.num_frames=9", "data.height=32", "data.width=32", "data.condition.grid_step=8", "crm.num_layers=2"])
    assert cfg.gradient_checkpointing and cfg.gradient_accumulation_steps == 4 and cfg.scheduler.rescale_betas_zero_snr
    res = train(cfg, log=lambda m: None)
    rows = read_metrics(tmp_path / "run")
    assert res["step"] == 8 and len(rows) == 8 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert rows[2]["lr"] == 0.0 < rows[3]["lr"] == rows[6]["lr"] < rows[7]["lr"]   # two optimizer updates (4 batches each)

    pipe = FlowGenerationPipeline.from_pretrained(res["final"])
    assert pipe.fgm.config.num_layers == 3 and pipe.crm.config.num_layers == 2
    assert pipe.codec.config.latent_channels == 4 and pipe.scheduler.config.prediction_type == "v_prediction"
    full = FlowCtrlPipeline(flow_model=res["final"])
    controls = Controls(arrows=[Arrow(start=(8, 8), end=(16, 12))], image_size=(32, 32))
    out = full(torch.rand(1, 3, 32, 32), controls=controls, num_frames=9, generator=torch.Generator().manual_seed(0))
    assert out.flow.shape == (1, 9, 2, 32, 32) and torch.isfinite(out.flow).all()
