"""`flowctrl generate --backend diffusion` and `flowctrl train video` through the real CLI dispatcher."""
import pytest
import torch
from diffusers import CogVideoXDDIMScheduler

from flowctrl.cli import main
from flowctrl.models.transformer import FlowCtrlTransformer
from flowctrl.pipelines.diffusion import FlowCtrlVideoPipeline


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def tiny_folder(tmp_path):
    torch.manual_seed(0)
    tr = FlowCtrlTransformer(num_attention_heads=2, attention_head_dim=16, in_channels=6, out_channels=3,
                             time_embed_dim=32, text_embed_dim=16, num_layers=1, sample_width=16, sample_height=16,
                             sample_frames=9, patch_size=4, max_text_seq_length=4, temporal_compression_ratio=1,
                             flow_in_channels=2, stabilizer_frames=9)
    pipe = FlowCtrlVideoPipeline(transformer=tr, scheduler=CogVideoXDDIMScheduler(prediction_type="v_prediction"))
    pipe.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_generate_long_video_with_the_diffusion_backend(tiny_folder, tmp_path, repo_dir, capsys):
    image = repo_dir / "examples" / "astronaut.png"
    if not image.is_file():
        pytest.skip("examples/astronaut.png not present")
    out = tmp_path / "out.gif"
    rc = main(["generate", "--image", str(image), "--backend", "diffusion", "--model", str(tiny_folder),
               "--frames", "25", "--size", "16x16", "-o", str(out)])
    assert rc == 0 and out.is_file() and out.stat().st_size > 0


def test_generate_without_weights_is_one_line_exit_2(tmp_path, repo_dir, capsys):
    image = repo_dir / "examples" / "astronaut.png"
    if not image.is_file():
        pytest.skip("examples/astronaut.png not present")
    out = tmp_path / "out.gif"
    rc = main(["generate", "--image", str(image), "--backend", "diffusion", "--model", str(tmp_path / "none"),
               "--frames", "9", "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not out.exists()
    assert len(err.splitlines()) == 1 and "--model" in err and "huggingface-cli download" in err


def test_train_video_command(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "max_steps: 2\nbatch_size: 1\nlog_every: 1\ncheckpoint_every: 1\n"
        "data: {source: textures, num_scenes: 2, num_frames: 5, height: 16, width: 16}\n"
        "model: {num_layers: 1, num_attention_heads: 2, attention_head_dim: 16, patch_size: 8, time_embed_dim: 32}\n")
    rc = main(["train", "video", "--config", str(cfg), "--output-dir", str(tmp_path / "run")])
    assert rc == 0 and (tmp_path / "run" / "final" / "transformer" / "config.json").is_file()
    assert "trained video model: step 2" in capsys.readouterr().out
    rc = main(["train", "video", "--config", str(tmp_path / "missing.yaml")])
    assert rc == 2
