"""What the three stage-1 tasks (flow codec, refinement net T, FGM + CRM) share: the
:class:`~flowctrl.train.config.TrainConfig` they read, loading a trained codec, the flow datasets and the
default batch / loss / gradient-checkpointing steps."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List

import torch
from torch import nn

from flowctrl.errors import MissingWeightsError
from flowctrl.train.config import TrainConfig, config_to_dict
from flowctrl.train.data import ConditionConfig, ShardConditionDataset, SyntheticConfig, SyntheticFlowDataset, collate
from flowctrl.train.engine import TrainTask


def load_codec(path: str, field: str):
    """A :class:`~flowctrl.models.flow_codec.FlowCodec` from a ``save_pretrained`` folder or a CogVideoX folder's
    ``vae/`` (config key ``field`` names it in the error line)."""
    from flowctrl.models.flow_codec import FlowCodec

    p = Path(path)
    try:
        if (p / "vae" / "config.json").is_file():  # a CogVideoX checkpoint folder → its VAE
            from diffusers import AutoencoderKLCogVideoX

            return FlowCodec.from_cogvideox_vae(AutoencoderKLCogVideoX.from_pretrained(
                str(p), subfolder="vae", local_files_only=True, use_safetensors=True))
        return FlowCodec.from_pretrained(str(p), local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, EnvironmentError) as err:
        raise MissingWeightsError.at(path, field, f"cannot be loaded as a FlowCodec ({type(err).__name__})",
                                     "give a folder written by save_pretrained or a CogVideoX folder with vae/") from None


def build_dataset(cfg: TrainConfig):
    """The flow dataset of a stage-1 run: synthetic scenes or ``flowctrl prepare-data`` shards (with the
    densified flow ``dense`` for the refinement net T)."""
    cond = ConditionConfig(**cfg.data.condition)
    with_dense = cfg.model == "refiner"
    if cfg.data.source == "shards":
        return ShardConditionDataset(cfg.data.shards, cond, seed=cfg.data.seed, with_dense=with_dense)
    d = cfg.data
    return SyntheticFlowDataset(SyntheticConfig(num_scenes=d.num_scenes, seed=d.seed, num_frames=d.num_frames,
                                                height=d.height, width=d.width, condition=cond, with_dense=with_dense,
                                                cache_dir=d.cache_dir, condition_variants=d.condition_variants))


def enable_gradient_checkpointing(module: nn.Module) -> None:
    """Gradient checkpointing in each child model of ``module`` that supports it (diffusers models)."""
    for m in module.children():
        if hasattr(m, "enable_gradient_checkpointing") and getattr(m, "_supports_gradient_checkpointing", False):
            m.enable_gradient_checkpointing()


class Stage1Task(TrainTask):
    """A stage-1 run: ``models`` (name → model, see each task's ``build_models``), ``module`` the trainable
    container whose ``forward(batch, generator)`` is the loss. Subclasses set :meth:`build` and :meth:`save_final`
    and, where the batch is more than the collated items, :meth:`make_batch`."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.title = cfg.model
        self.time_limit_s = cfg.time_limit_s
        self.models: Dict[str, nn.Module] = {}
        self.dataset = None

    def build_module(self, module: nn.Module) -> nn.Module:
        if self.cfg.gradient_checkpointing:
            enable_gradient_checkpointing(module)
        return module

    def setup_data(self, accelerator, log: Callable[[str], None]) -> Any:
        self.dataset = build_dataset(self.cfg)
        return self.dataset

    def make_batch(self, items: List[Dict[str, Any]], indices: List[int], generator: torch.Generator) -> Dict[str, torch.Tensor]:
        return collate(items)

    def batch(self, items, indices, generator, device) -> Dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in self.make_batch(items, indices, generator).items()}

    def loss(self, accelerator, model, batch, generator) -> torch.Tensor:
        return model(batch, generator)

    def config_dict(self) -> Dict[str, Any]:
        return config_to_dict(self.cfg)
