"""Task ``model: refiner``: the refinement net T (:class:`~flowctrl.models.refiner.RefinementNet`) regresses the
true flow from the image and the densified sparse flow (mean EPE, + a layer-affinity term on synthetic data);
the final folder is a :class:`~flowctrl.pipelines.flow_generation.FlowGenerationPipeline` holding T."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import torch
from torch import nn

from flowctrl.train.config import TrainConfig
from flowctrl.train.losses import epe_loss
from flowctrl.train.tasks.stage1 import Stage1Task


def build_models(cfg: TrainConfig) -> Dict[str, nn.Module]:
    """``{"refiner"}``: a fresh ``RefinementNet(**cfg.refiner)`` seeded with ``cfg.seed``."""
    from flowctrl.models.refiner import RefinementNet

    torch.manual_seed(cfg.seed)
    return {"refiner": RefinementNet(**cfg.refiner)}


class RefinerLoss(nn.Module):
    """The refiner run's trainable module; ``forward(batch, generator)`` = mean EPE (px) of T's flow against
    ``batch["flow"]``, + ``layer_weight`` × :func:`~flowctrl.models.refiner.layer_affinity_loss` when the batch has
    ``layers`` (synthetic data: the surfaces are known). Batch keys: ``image``, ``dense``, ``mask``, ``flow``,
    optional ``times`` (B,k) (:func:`pick_frames`)."""

    def __init__(self, refiner: nn.Module, layer_weight: float = 0.0) -> None:
        super().__init__()
        self.refiner = refiner
        self.refiner_layer_weight = layer_weight

    def forward(self, batch: Dict[str, torch.Tensor], generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if self.refiner_layer_weight > 0 and "layers" in batch:
            from flowctrl.models.refiner import layer_affinity_loss

            pred, feats = self.refiner(batch["image"], batch["dense"], batch["mask"], batch.get("times"), return_features=True)
            return epe_loss(pred, batch["flow"]) + self.refiner_layer_weight * layer_affinity_loss(feats, batch["layers"], generator=generator)
        pred = self.refiner(batch["image"], batch["dense"], batch["mask"], batch.get("times"))
        return epe_loss(pred, batch["flow"])


def pick_frames(batch: Dict[str, torch.Tensor], k: int, generator: torch.Generator) -> Dict[str, torch.Tensor]:
    """Refiner batch → the same clips at ``k`` random frames out of 1..T−1 (T runs per frame, so a step on a
    few frames of many clips beats one on every frame of a few), plus ``times`` (B,k) = t/(T−1) for T's time input."""
    t = batch["flow"].shape[1]
    if k >= t - 1:
        return batch
    sel = torch.stack([torch.randperm(t - 1, generator=generator)[:k] + 1 for _ in range(batch["flow"].shape[0])])
    out = {key: (torch.stack([v[i, sel[i]] for i in range(len(sel))]) if key in ("flow", "dense", "mask", "sparse") else v)
           for key, v in batch.items()}
    out["times"] = sel.float() / (t - 1)
    return out


def save_refiner(refiner: nn.Module, path: Path) -> Path:
    """A :class:`FlowGenerationPipeline` folder holding T alone."""
    from flowctrl.pipelines.flow_generation import FlowGenerationPipeline

    FlowGenerationPipeline(refiner=refiner).save_pretrained(path)
    return path


class RefinerTask(Stage1Task):
    """``model: refiner``: T's EPE on ``refiner_frames`` random frames per clip (all frames when unset)."""

    def build(self, accelerator) -> nn.Module:
        self.models = build_models(self.cfg)
        return self.build_module(RefinerLoss(self.models["refiner"], self.cfg.refiner_layer_weight))

    def make_batch(self, items, indices, generator):
        batch = super().make_batch(items, indices, generator)
        if self.cfg.refiner_frames:
            batch = pick_frames(batch, self.cfg.refiner_frames, generator)
        return batch

    def save_final(self, trained, path: Path) -> Path:
        return save_refiner(trained.refiner, path)
