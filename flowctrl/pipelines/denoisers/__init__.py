"""Model-agnostic denoisers over diffusers' own image-to-video pipelines (see :mod:`.base`).

:func:`load_denoiser` opens a folder saved by diffusers' ``save_pretrained`` (or a hub id, downloaded on
request) and returns the family's :class:`Denoiser`; :func:`denoiser_for` wraps a pipeline object.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from flowctrl.errors import InputError, MissingWeightsError
from flowctrl.hub import hub_offline, is_hub_id
from flowctrl.io_safety import check_safetensors_folder
from flowctrl.pipelines.denoisers.base import Conditioning, Denoiser
from flowctrl.pipelines.denoisers.loop import check_clocks, dual_clock_denoise, run_steps

logger = logging.getLogger("flowctrl")

__all__ = ["Conditioning", "Denoiser", "FAMILIES", "check_clocks", "denoiser_for", "dual_clock_denoise",
           "load_denoiser", "apply_memory_preset", "MEMORY_PRESETS", "run_steps"]

# model_index.json "_class_name" → (family, adapter "module:class")
FAMILIES: Dict[str, tuple] = {
    "CogVideoXImageToVideoPipeline": ("cogvideox", "flowctrl.pipelines.denoisers.cogvideox:CogVideoXDenoiser"),
    "WanImageToVideoPipeline": ("wan", "flowctrl.pipelines.denoisers.wan:WanDenoiser"),
}
FETCH_HINT = ("fetch it where a network exists: `huggingface-cli download {id} --local-dir ckpt/{name}` and pass "
              "--model ckpt/{name} (or unset HF_HUB_OFFLINE to download on request)")

# Memory presets (``--preset``): what each keeps on the GPU, and the VRAM it targets for a 49/81-frame
# 480p video. ``cpu`` is float32 without offload (checks and tiny models).
MEMORY_PRESETS: Dict[str, Dict[str, Any]] = {
    "full": {"dtype": "bfloat16", "offload": "none", "vae_tiling": False, "vae_slicing": False},     # 80 GB
    "offload": {"dtype": "bfloat16", "offload": "model", "vae_tiling": True, "vae_slicing": True},   # 24-40 GB
    "low": {"dtype": "bfloat16", "offload": "group", "vae_tiling": True, "vae_slicing": True},       # 12-16 GB
    "cpu": {"dtype": "float32", "offload": "none", "vae_tiling": False, "vae_slicing": False},       # no GPU
}
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def denoiser_for(pipe: Any) -> Denoiser:
    """The :class:`Denoiser` for a loaded diffusers pipeline (by its class)."""
    import importlib

    entry = FAMILIES.get(type(pipe).__name__)
    if entry is None:
        raise InputError.at(None, "--model", f"is a {type(pipe).__name__}, not an image-to-video pipeline the "
                            "guided backend knows", f"use one of {', '.join(FAMILIES)}")
    module, attr = entry[1].split(":")
    return getattr(importlib.import_module(module), attr)(pipe)


def resolve_model_folder(model: Union[str, os.PathLike]) -> Path:
    """A local folder, or a hub id downloaded on request through diffusers / huggingface_hub (progress
    bars, cache, ``HF_HUB_OFFLINE``). Offline and not cached → :class:`MissingWeightsError`."""
    src = str(model)
    path = Path(src).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise MissingWeightsError.at(src, "--model", "is a file, not a pipeline folder",
                                     "give the folder written by the pipeline's save_pretrained (with model_index.json)")
    if not is_hub_id(src):
        raise MissingWeightsError.at(src, "--model", "no such folder", "give a pipeline folder or a hub id such as "
                                     "THUDM/CogVideoX-5b-I2V")
    name = src.split("/")[1]
    offline = hub_offline()
    try:
        if offline:  # the cache only, quietly (diffusers' download would log a connection warning first)
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(src, local_files_only=True))
        from diffusers import DiffusionPipeline

        return Path(DiffusionPipeline.download(src, use_safetensors=True))
    except Exception as error:  # noqa: BLE001 - every hub / network failure means "not available here"
        problem = "is not in the local Hugging Face cache and HF_HUB_OFFLINE is set" if offline else \
            f"could not be downloaded ({type(error).__name__})"
        raise MissingWeightsError.at(src, "--model", problem, FETCH_HINT.format(id=src, name=name)) from None


def check_model_folder(root: Path) -> str:
    """Validate a ``save_pretrained`` folder before loading; returns its pipeline class name.

    One-line :class:`MissingWeightsError` for: no ``model_index.json``, a listed component missing, or a
    component holding only pickle (``.bin``) weights (flowctrl loads safetensors only).
    """
    index = root / "model_index.json"
    try:
        spec = json.loads(index.read_text())
    except FileNotFoundError:
        raise MissingWeightsError.at(root, "model_index.json", "not found (not a diffusers pipeline folder)",
                                     "give the folder written by CogVideoXImageToVideoPipeline / "
                                     "WanImageToVideoPipeline.save_pretrained") from None
    except json.JSONDecodeError as error:
        raise MissingWeightsError.at(index, None, f"is not valid JSON ({error.msg})", "re-download the model") from None
    cls = str(spec.get("_class_name", ""))
    if cls not in FAMILIES:
        raise InputError.at(root, "model_index.json", f"is a {cls or 'unknown'} pipeline, not one the guided backend "
                            "runs", f"use a {' or '.join(FAMILIES)} folder")
    for name, value in spec.items():
        if name.startswith("_") or not isinstance(value, list) or value[0] is None:
            continue
        sub = root / name
        if not sub.is_dir():
            raise MissingWeightsError.at(root, name, "component folder is missing",
                                         "re-download the model or re-save it with save_pretrained")
        check_safetensors_folder(sub, "--model")
    return cls


def load_denoiser(model: Union[str, os.PathLike], *, dtype: Optional[str] = None, preset: Optional[str] = None,
                  device: Optional[str] = None) -> Denoiser:
    """Load a CogVideoX-I2V / Wan-I2V pipeline folder or hub id and wrap it in its :class:`Denoiser`.

    ``preset`` (:data:`MEMORY_PRESETS`) sets dtype, offload and VAE tiling/slicing; ``dtype`` overrides
    the preset's. Neither given: ``offload`` on a CUDA machine (bf16, fits 24–40 GB), ``cpu`` without
    one. Weights load with ``use_safetensors=True``.
    """
    if preset is None and dtype is None:
        preset = "offload" if torch.cuda.is_available() else "cpu"
    opts = dict(MEMORY_PRESETS[_preset_name(preset)]) if preset else {}
    if dtype is not None:
        opts["dtype"] = dtype
    torch_dtype = _DTYPES.get(str(opts.get("dtype", "float32")))
    if torch_dtype is None:
        raise InputError.at(None, "dtype", f"unknown dtype '{opts.get('dtype')}'", "use float32, bfloat16 or float16")
    root = resolve_model_folder(model)
    check_model_folder(root)
    from diffusers import DiffusionPipeline  # after the checks: a bad --model fails without the import cost

    try:
        pipe = DiffusionPipeline.from_pretrained(str(root), torch_dtype=torch_dtype, use_safetensors=True)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MissingWeightsError.at(root, None, f"could not be loaded ({first[:200]})",
                                     "re-download the model or re-save it with save_pretrained") from None
    pipe.set_progress_bar_config(disable=True)
    if type(pipe).__name__ == "WanImageToVideoPipeline" and torch_dtype != torch.float32:
        # diffusers' Wan examples keep the VAE and the CLIP image encoder in float32 (bf16 VAE decodes badly)
        for name in ("vae", "image_encoder"):
            if getattr(pipe, name, None) is not None:
                getattr(pipe, name).to(torch.float32)
    apply_memory_preset(pipe, opts, device=device)
    return denoiser_for(pipe)


def _preset_name(preset: str) -> str:
    if preset not in MEMORY_PRESETS:
        raise InputError.at(None, "--preset", f"unknown preset '{preset}' for the guided backend",
                            f"use one of {', '.join(MEMORY_PRESETS)}")
    return preset


def apply_memory_preset(pipe: Any, opts: Dict[str, Any], device: Optional[str] = None) -> None:
    """``offload``: ``none`` (all on ``device``), ``model`` (diffusers' model CPU offload: one component on
    the GPU at a time), ``group`` (diffusers' group offload of the transformers, block by block, with
    model offload for the rest). VAE tiling/slicing bound the decoder's peak memory. Without CUDA
    offloading is skipped (logged) and everything stays on the CPU."""
    vae = getattr(pipe, "vae", None)
    if vae is not None:
        if opts.get("vae_tiling") and hasattr(vae, "enable_tiling"):
            vae.enable_tiling()
        if opts.get("vae_slicing") and hasattr(vae, "enable_slicing"):
            vae.enable_slicing()
    offload = str(opts.get("offload", "none"))
    cuda = torch.cuda.is_available()
    if offload != "none" and not cuda:
        logger.info("offload=%s needs a CUDA device; running everything on the CPU", offload)
        offload = "none"
    if offload == "model":
        pipe.enable_model_cpu_offload()
    elif offload == "group":
        # diffusers' group offloading of every model, layer by layer with a CUDA stream overlapping the
        # transfers; the VAE (small, used twice) stays resident
        pipe.enable_group_offload(onload_device=torch.device("cuda"), offload_device=torch.device("cpu"),
                                  offload_type="leaf_level", use_stream=True, exclude_modules=["vae"])
        pipe.vae.to("cuda")
    else:
        target = device or ("cuda" if cuda else None)
        if target is not None:
            if str(target).startswith("cuda") and not cuda:
                raise InputError.at(None, "device", f"'{target}' is not available on this machine", "run on a GPU machine")
            pipe.to(target)
