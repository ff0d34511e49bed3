"""Task ``model: codec``: fine-tune the flow VAE (:class:`~flowctrl.models.flow_codec.FlowCodec`) on flows,
whole clips or random crops; the final folder is the codec's own ``save_pretrained`` layout."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import torch
from torch import nn

from flowctrl.train.config import TrainConfig
from flowctrl.train.tasks.stage1 import Stage1Task, load_codec


def build_models(cfg: TrainConfig) -> Dict[str, nn.Module]:
    """``{"codec"}``: ``codec_path`` loaded, or a fresh ``FlowCodec(**cfg.codec)`` seeded with ``cfg.seed``."""
    from flowctrl.models.flow_codec import FlowCodec

    torch.manual_seed(cfg.seed)
    return {"codec": load_codec(cfg.codec_path, "codec_path") if cfg.codec_path else FlowCodec(**cfg.codec)}


class CodecLoss(nn.Module):
    """The codec run's trainable module; ``forward(batch, generator)`` = the codec's own reconstruction loss
    on ``batch["flow"]`` (B,T,2,H,W) px (+ ``epe_weight`` × decoded EPE; a posterior sample when ``sample_latent``)."""

    def __init__(self, codec: nn.Module, epe_weight: float = 0.0, sample_latent: bool = True) -> None:
        super().__init__()
        self.codec = codec
        self.codec_epe_weight = epe_weight
        self.codec_sample_latent = sample_latent

    def forward(self, batch: Dict[str, torch.Tensor], generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return self.codec.loss(batch["flow"], generator=generator, epe_weight=self.codec_epe_weight,
                               sample_latent=self.codec_sample_latent)


def crop_flow(flow: torch.Tensor, crop, generator: torch.Generator) -> torch.Tensor:
    """(B,T,2,H,W) → (B,t,2,h,w): the first ``t`` frames (the causal VAE's first frame is special) and a
    random h×w window. The codec is convolutional, so it learns on crops what it applies to full clips."""
    t, h, w = (int(v) for v in crop)
    H, W = flow.shape[-2:]
    y = int(torch.randint(0, H - h + 1, (1,), generator=generator)) if H > h else 0
    x = int(torch.randint(0, W - w + 1, (1,), generator=generator)) if W > w else 0
    return flow[:, :t, :, y:y + h, x:x + w]


def save_codec(codec: nn.Module, path: Path) -> Path:
    """The codec's ``save_pretrained`` folder at ``path`` (temporary folder + rename)."""
    from flowctrl.io_safety import atomic_path

    with atomic_path(path, folder=True, replace=True) as tmp:
        codec.save_pretrained(str(tmp))
    return path


class CodecTask(Stage1Task):
    """``model: codec``: the codec's loss on whole flows or ``codec_crop`` crops; final = the codec folder."""

    def build(self, accelerator) -> nn.Module:
        self.models = build_models(self.cfg)
        return self.build_module(CodecLoss(self.models["codec"], self.cfg.codec_epe_weight, self.cfg.codec_sample_latent))

    def make_batch(self, items, indices, generator):
        batch = super().make_batch(items, indices, generator)
        if self.cfg.codec_crop:
            batch = {"flow": crop_flow(batch["flow"], self.cfg.codec_crop, generator)}
        return batch

    def save_final(self, trained, path: Path) -> Path:
        return save_codec(trained.codec, path)
