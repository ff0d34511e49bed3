"""`flowctrl generate`: the diffusion backend's flags (with a tiny random model) and the progress bars."""
import io
import os
import pty
import select
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flowctrl.cli import main

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "examples" / "astronaut.png"
ARROWS = REPO / "examples" / "a.json"

pytestmark = [pytest.mark.filterwarnings("ignore:no depth given"), pytest.mark.usefixtures("one_torch_thread")]


class FakeTTY(io.StringIO):
    """stderr that says it is a terminal (the bars' on-switch) and records what is drawn."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny random pixel-space FlowCtrl model (window 9 frames, 16x16) and a LoRA folder for it."""
    from diffusers import CogVideoXDDIMScheduler
    from flowctrl.models.transformer import FlowCtrlTransformer
    from flowctrl.pipelines.diffusion import FlowCtrlVideoPipeline

    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    kw = dict(num_attention_heads=2, attention_head_dim=16, in_channels=6, out_channels=3, time_embed_dim=32,
              text_embed_dim=16, num_layers=1, sample_width=16, sample_height=16, sample_frames=9, patch_size=4,
              max_text_seq_length=4, temporal_compression_ratio=1, flow_in_channels=2, stabilizer_frames=9)
    pipe = FlowCtrlVideoPipeline(transformer=FlowCtrlTransformer(**kw),
                                 scheduler=CogVideoXDDIMScheduler(prediction_type="v_prediction"))
    pipe.save_pretrained(root / "model")
    lora = None
    try:
        from peft import LoraConfig

        from flowctrl.train.video_loop import save_lora

        # init_lora_weights=False: random A and B, so the adapter really changes the model.
        pipe.transformer.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v"],
                                                init_lora_weights=False))
        lora = save_lora(pipe, root / "lora")
    except ImportError:
        pass
    return root / "model", lora


def _diffusion(model, out, *extra, frames=9):
    return main(["generate", "--image", str(IMAGE), "--arrows", str(ARROWS), "--backend", "diffusion",
                 "--model", str(model), "--frames", str(frames), "--size", "16x16", "--seed", "1",
                 "-o", str(out), *extra])


def _png_frames(folder):
    return np.stack([np.asarray(Image.open(p)) for p in sorted(Path(folder).glob("*.png"))])


@pytest.fixture()
def backends(monkeypatch):
    """Every DiffusionBackend the CLI builds, to read back the options it received."""
    from flowctrl.pipelines.diffusion import DiffusionBackend

    made = []
    init = DiffusionBackend.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(DiffusionBackend, "__init__", spy)
    return made


def test_sampling_flags_reach_the_backend_and_set_the_work_done(tiny_model, tmp_path, backends, monkeypatch):
    model, _ = tiny_model
    err = FakeTTY()
    monkeypatch.setattr(sys, "stderr", err)
    # 17 frames = 2 windows of 9 (plan_windows(17, 9) == [(0, 9), (8, 17)]); chain denoises both fully.
    rc = _diffusion(model, tmp_path / "chain/", "--steps", "3", "--guidance", "1", "--flow-guidance", "0",
                    "--long-video", "chain", "--negative-prompt", "blurry", frames=17)
    assert rc == 0, err.getvalue()
    b = backends[-1]
    assert (b.num_inference_steps, b.guidance_scale, b.flow_guidance_scale, b.long_video, b.negative_prompt) == (
        3, 1.0, 0.0, "chain", "blurry")
    assert b.last_num_function_evals == 2 * 3
    assert _png_frames(tmp_path / "chain").shape == (17, 16, 16, 3)
    assert "denoise" in err.getvalue() and "6/6" in err.getvalue()  # the denoise bar counts steps over windows
    # phased: window 1 takes all 5 steps, window 2 shares the first ceil(0.8 * 5) = 4 and runs 1 of its own
    assert _diffusion(model, tmp_path / "phased/", "--steps", "5", "--guidance", "1", "--long-video", "phased",
                      frames=17) == 0
    assert backends[-1].long_video == "phased" and backends[-1].last_num_function_evals == 5 + 1


def test_preset_supplies_defaults_and_flags_override_it(tiny_model, tmp_path, backends):
    from diffusers import CogVideoXDPMScheduler

    model, _ = tiny_model
    assert _diffusion(model, tmp_path / "o/", "--preset", "cpu", "--steps", "2", "-q") == 0
    b = backends[-1]
    # flowctrl/presets/pipeline/cpu.yaml: 25 steps, guidance 6, DPM scheduler; --steps 2 wins over its 25
    assert b.num_inference_steps == 2 and b.guidance_scale == 6.0
    assert isinstance(b.pipeline.scheduler, CogVideoXDPMScheduler)
    assert b.last_num_function_evals == 2


def test_lora_changes_the_video_and_scale_zero_is_the_base_model(tiny_model, tmp_path):
    model, lora = tiny_model
    if lora is None:
        pytest.skip("peft not installed")
    common = ("--steps", "2", "--guidance", "1", "-q")
    assert _diffusion(model, tmp_path / "base/", *common) == 0
    assert _diffusion(model, tmp_path / "lora/", *common, "--lora", str(lora)) == 0
    assert _diffusion(model, tmp_path / "zero/", *common, "--lora", str(lora), "--lora-scale", "0") == 0
    base, with_lora, zero = (_png_frames(tmp_path / n) for n in ("base", "lora", "zero"))
    assert base.shape == (9, 16, 16, 3)
    assert np.array_equal(zero, base)
    assert np.abs(with_lora.astype(int) - base.astype(int)).max() > 0


def test_negative_prompt_without_a_text_encoder_is_one_line(tiny_model, tmp_path, capsys):
    model, _ = tiny_model
    out = tmp_path / "o.gif"
    rc = _diffusion(model, out, "--steps", "1", "--guidance", "6", "--negative-prompt", "blurry", "-q")
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not out.exists()
    assert len(err.splitlines()) == 1 and "negative_prompt" in err and "text encoder" in err


@pytest.mark.parametrize("extra, needle", [
    (["--negative-prompt", "blurry"], "--negative-prompt is only used by the diffusion and guided backends"),
    (["--steps", "3"], "--steps is only used"),
    (["--guidance", "2"], "--guidance is only used"),
    (["--flow-guidance", "2"], "--flow-guidance is only used"),
    (["--preset", "24gb"], "--preset is only used"),
    (["--long-video", "chain"], "--long-video is only used"),
    (["--lora", str(ARROWS)], "--lora is only used"),
    (["--steps", "3", "--lora-scale", "0.5"], "--steps, --lora-scale are only used"),
])
def test_diffusion_flags_with_the_warp_backend_exit_2(extra, needle, tmp_path, capsys):
    out = tmp_path / "o.mp4"
    rc = main(["generate", "--image", str(IMAGE), "-o", str(out), *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not out.exists() and list(tmp_path.iterdir()) == []
    assert len(err.splitlines()) == 1 and needle in err and "--backend diffusion" in err, err


@pytest.mark.parametrize("extra, needle", [
    (["--steps", "0"], "--steps: is 0"),
    (["--guidance", "-1"], "--guidance: is -1.0"),
    (["--flow-guidance", "nan"], "--flow-guidance: is nan"),
    (["--preset", "12gb"], "use one of 24gb, 80gb, cpu"),
    (["--lora", "no/such/lora"], "no/such/lora: --lora: not found"),
])
def test_bad_diffusion_values_exit_2_before_loading(extra, needle, tmp_path, capsys):
    out = tmp_path / "o.mp4"
    # --model points nowhere: the flag checks must fire first (no model is loaded)
    rc = main(["generate", "--image", str(IMAGE), "--backend", "diffusion", "--model", str(tmp_path / "none"),
               "-o", str(out), *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not out.exists()
    assert len(err.splitlines()) == 1 and needle in err, err


def _warp(tmp_path, *extra):
    return main(["generate", "--image", str(IMAGE), "--arrows", str(ARROWS), "--size", "32x32", "--frames", "5",
                 "-o", str(tmp_path / "o.mp4"), *extra])


def test_progress_bars_per_stage_on_a_terminal_and_silent_otherwise(tmp_path, monkeypatch, capsys):
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    assert _warp(tmp_path) == 0
    drawn = tty.getvalue()
    for stage in ("local", "render", "encode"):  # streamed: flow, splat and fill per chunk of frames
        assert f"{stage}: 100%|" in drawn, (stage, drawn)
    assert "5/5" in drawn and "wrote" in drawn
    (tmp_path / "o.mp4").unlink()
    whole = FakeTTY()  # side-by-side needs the whole flow: the stages run one after the other
    monkeypatch.setattr(sys, "stderr", whole)
    assert _warp(tmp_path, "--side-by-side") == 0
    for stage in ("local", "compose", "splat", "fill", "encode"):
        assert f"{stage}: 100%|" in whole.getvalue(), (stage, whole.getvalue())
    quiet = FakeTTY()
    monkeypatch.setattr(sys, "stderr", quiet)
    (tmp_path / "o.mp4").unlink()
    assert _warp(tmp_path, "-q") == 0 and quiet.getvalue() == ""  # -q: nothing at all
    monkeypatch.undo()
    capsys.readouterr()
    (tmp_path / "o.mp4").unlink()
    # stderr captured = not a terminal: no bars, only the summary line (an explicit --segment: no fallback notice)
    assert _warp(tmp_path, "--segment", "edges") == 0
    err = capsys.readouterr().err
    assert "%|" not in err and err.startswith("wrote ") and len(err.splitlines()) == 1


def test_bars_render_on_a_terminal_that_reports_no_size(monkeypatch):
    """A fresh pseudo-terminal is 0x0 (as under `script` and some CI consoles). tqdm sizes bars on
    sys.stderr from the terminal, gets nrows -1 and draws nothing; StageProgress must still draw."""
    from flowctrl.commands.generate import StageProgress

    master, slave = pty.openpty()
    try:
        assert tuple(os.get_terminal_size(slave)) == (0, 0)
        with os.fdopen(os.dup(slave), "w") as term:
            monkeypatch.setattr(sys, "stderr", term)
            progress = StageProgress(enabled=True)
            progress("splat", 3, 9)
            progress.write("a warning line")
            progress("splat", 9, 9)
            progress.close()
            term.flush()
            monkeypatch.undo()
        data = b""
        while select.select([master], [], [], 0.5)[0]:
            chunk = os.read(master, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(master)
        os.close(slave)
    text = data.decode("utf-8", "replace")
    assert "splat:  33%|" in text and "splat: 100%|" in text and "9/9" in text
    assert "a warning line" in text


def test_prompt_with_the_warp_backend_is_ignored_with_one_warning_line(tmp_path, capsys):
    assert _warp(tmp_path, "--prompt", "a cat") == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "--prompt" in line]
    assert len(lines) == 1 and "ignored by the warp backend" in lines[0] and "--backend guided" in lines[0]
    assert (tmp_path / "o.mp4").exists()
