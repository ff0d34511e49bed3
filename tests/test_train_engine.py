"""The one training engine (flowctrl.train.engine) driving a task defined here, as a newcomer would add one:
a line fit whose true answer is known (y = 2x + 1), bit-exact resume, the time limit's final save, and a
``flowctrl train <name>`` subcommand that appears once the task's command is registered."""
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml

from flowctrl.cli import main as cli_main
from flowctrl.train.engine import TrainTask, list_checkpoints, read_metrics, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass
class LineData:
    seed: int = 0
    shuffle: bool = True
    num_points: int = 16


@dataclass
class LineConfig:
    output_dir: str = "runs/line"
    seed: int = 0
    max_steps: int = 150
    batch_size: int = 4
    learning_rate: float = 0.05
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    grad_clip: float = 0.0
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    log_every: int = 1000
    checkpoint_every: int = 20
    checkpoints_total_limit: int = 2
    noise: float = 0.0
    data: LineData = field(default_factory=LineData)


def load_line_config(path, overrides=None, settings=()):
    raw = yaml.safe_load(Path(path).read_text()) if path else {}
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return LineConfig(**{**raw, "data": LineData(**raw.get("data", {}))})


class LinePoints(torch.utils.data.Dataset):
    """Points of y = 2x + 1, x evenly spaced in [-1, 1]."""

    def __init__(self, n):
        self.x = torch.linspace(-1, 1, n)

    def __len__(self):
        return len(self.x)

    def set_epoch(self, epoch):
        pass

    def __getitem__(self, i):
        return {"x": self.x[i:i + 1], "y": 2 * self.x[i:i + 1] + 1}


class LineTask(TrainTask):
    title = "line"

    def __init__(self, cfg):
        self.cfg = cfg

    def build(self, accelerator):
        return torch.nn.Linear(1, 1)

    def setup_data(self, accelerator, log):
        return LinePoints(self.cfg.data.num_points)

    def batch(self, items, indices, generator, device):
        x = torch.stack([it["x"] for it in items])
        y = torch.stack([it["y"] for it in items])
        return x.to(device), (y + self.cfg.noise * torch.randn(y.shape, generator=generator)).to(device)

    def loss(self, accelerator, model, batch, generator):
        x, y = batch
        return torch.nn.functional.mse_loss(model(x), y)

    def save_final(self, trained, path):
        path.mkdir(parents=True, exist_ok=True)
        (path / "line.json").write_text(json.dumps({"slope": trained.weight.item(), "intercept": trained.bias.item()}))
        return path


def test_engine_fits_the_line_and_saves_the_final_model(tmp_path):
    res = run(LineTask(LineConfig(output_dir=str(tmp_path / "fit"))), log=lambda m: None)
    assert res["step"] == 150 and res["final"]
    fit = json.loads((tmp_path / "fit" / "final" / "line.json").read_text())
    assert fit["slope"] == pytest.approx(2.0, abs=0.02) and fit["intercept"] == pytest.approx(1.0, abs=0.02)
    assert res["loss"] < 1e-3 and len(read_metrics(tmp_path / "fit")) == 150
    assert [p.name for p in list_checkpoints(tmp_path / "fit")] == ["checkpoint-140", "checkpoint-150"]  # limit 2
    assert json.loads((tmp_path / "fit" / "train_summary.json").read_text())["in_sync"] is True


def test_engine_resume_is_bit_exact_with_the_steps_random_draws(tmp_path):
    def cfg(name):
        return LineConfig(output_dir=str(tmp_path / name), max_steps=40, noise=0.3)

    run(LineTask(cfg("straight")), log=lambda m: None)
    first = run(LineTask(cfg("split")), log=lambda m: None, stop_after=30)   # "killed" at 30, checkpoint at 20
    assert first["step"] == 30 and first["final"] is None
    logs = []
    run(LineTask(cfg("split")), resume="latest", log=logs.append)
    assert any("resumed from" in m and "at step 20" in m for m in logs)
    straight, split = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "split")
    assert [r["step"] for r in split] == list(range(1, 41))
    assert [r["loss"] for r in split] == [r["loss"] for r in straight]


def test_engine_time_limit_ends_the_run_with_a_checkpoint_and_the_final_save(tmp_path):
    logs = []
    res = run(LineTask(LineConfig(output_dir=str(tmp_path / "t"))), log=logs.append, time_limit_s=0.0)
    assert res["step"] == 1 and res["final"] and any("time limit" in m for m in logs)
    assert [p.name for p in list_checkpoints(tmp_path / "t")] == ["checkpoint-1"]


def test_a_registered_command_becomes_a_train_subcommand(tmp_path, monkeypatch, capsys):
    from flowctrl.train.tasks import COMMANDS, Command

    monkeypatch.setitem(COMMANDS, "line", Command(
        help="a line fit", description="Fit y = 2x + 1.", examples=("flowctrl train line --config line.yaml",),
        load_config=f"{__name__}:load_line_config", make_task=f"{__name__}:LineTask"))
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump({"max_steps": 5, "checkpoint_every": 5}))
    assert cli_main(["train", "line", "--config", str(path), "--output-dir", str(tmp_path / "cli")]) == 0
    assert "trained line: step 5" in capsys.readouterr().out
    assert (tmp_path / "cli" / "final" / "line.json").is_file()
