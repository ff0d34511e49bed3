"""Object regions with Segment Anything (SAM / SAM 2) through transformers, prompted by control points.

Each group of seed points (one arrow's or drag's start, or a pose's keypoints) is one prompt with
all its points as foreground clicks; of SAM's three candidate masks the one with the highest
predicted IoU is kept. The image is embedded once per call and the regions of all groups are
decoded from that embedding.

Loading: a folder (``config.json`` + safetensors) or a hub id, ``use_safetensors=True``. A hub id
downloads on request through huggingface_hub (``HF_HUB_OFFLINE=1`` honoured); what cannot be loaded
raises :class:`flowctrl.errors.MissingWeightsError` with one line.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from flowctrl.errors import MissingWeightsError
from flowctrl.hub import hub_offline, is_hub_id

DEFAULT_SAM = "facebook/sam-vit-base"  # Apache-2.0


def _missing(name: str, problem: str) -> MissingWeightsError:
    return MissingWeightsError.at(
        name, "segment", problem,
        f"pass a folder holding config.json + model.safetensors, allow the download of a hub id (e.g. {DEFAULT_SAM}), "
        "or use --segment edges (no weights)")


def is_local_folder(name: str) -> bool:
    """Whether ``name`` names a path on disk rather than a hub id."""
    return not is_hub_id(name)


def sam_available(name: str = DEFAULT_SAM) -> bool:
    """Whether SAM weights can be had without a download: a local folder or a hub id in the cache."""
    if is_local_folder(name):
        return (Path(name).expanduser() / "config.json").is_file()
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(name, "config.json"), str)


class SamSegmenter:
    """``segmenter(image (1, 3, H, W) in [0, 1], groups) -> (G, H, W)`` float {0, 1} regions."""

    name = "sam"

    def __init__(self, model, processor):
        self.model = model.eval()
        self.processor = processor

    @classmethod
    def from_pretrained(cls, name_or_path: Union[str, "os.PathLike[str]"] = DEFAULT_SAM, device: Optional[str] = None,
                        local_files_only: bool = False) -> "SamSegmenter":
        """Load SAM from a folder or a hub id (downloads on request unless ``local_files_only``)."""
        name = str(name_or_path)
        if is_local_folder(name) and not (Path(name).expanduser() / "config.json").is_file():
            raise _missing(name, "no config.json in this folder (SAM weights are not there)")
        try:
            from transformers import AutoModelForMaskGeneration, AutoProcessor

            model = AutoModelForMaskGeneration.from_pretrained(name, use_safetensors=True, local_files_only=local_files_only)
            processor = AutoProcessor.from_pretrained(name, local_files_only=local_files_only)
        except (OSError, ValueError) as exc:
            why = "offline (HF_HUB_OFFLINE) and not cached" if hub_offline() else f"could not be loaded ({type(exc).__name__})"
            raise _missing(name, f"SAM weights {why}") from exc
        seg = cls(model, processor)
        if device is not None:
            seg.model.to(device)
        return seg

    @torch.no_grad()
    def __call__(self, image: torch.Tensor, groups: Sequence[torch.Tensor]) -> torch.Tensor:
        H, W = image.shape[-2:]
        if len(groups) == 0:
            return torch.zeros(0, H, W)
        device = next(self.model.parameters()).device
        rgb = (image[0].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
        enc = self.processor(images=rgb, return_tensors="pt")
        pixel_values = enc["pixel_values"].to(device=device, dtype=self.model.dtype)
        embeddings = self.model.get_image_embeddings(pixel_values)
        out = []
        for pts in groups:
            pts = torch.as_tensor(pts, dtype=torch.float32).reshape(-1, 2)
            # the processor maps (x, y) pixels of the original image into the model's input frame
            prompt = self.processor(images=rgb, input_points=[[pts.tolist()]], input_labels=[[[1] * len(pts)]],
                                    return_tensors="pt")
            kwargs = {"input_points": prompt["input_points"].to(device=device, dtype=torch.float32), "input_labels": prompt["input_labels"].to(device)}
            kwargs["image_embeddings"] = embeddings  # one tensor (SAM) or the multi-level list (SAM 2)
            pred = self.model(**kwargs, multimask_output=True)
            best = int(pred.iou_scores[0, 0].argmax())
            sizes = [enc["original_sizes"]]
            if "reshaped_input_sizes" in enc:  # SAM; SAM 2's processor needs only the original sizes
                sizes.append(enc["reshaped_input_sizes"])
            masks = self.processor.post_process_masks(pred.pred_masks[:, :, best:best + 1].float().cpu(), *sizes)
            out.append(masks[0][0, 0].to(torch.float32).reshape(H, W))
        return torch.stack(out)
