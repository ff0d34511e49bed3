"""Accelerate training loops for stage 1: FGM (+ CRM), refinement net T, flow-codec fine-tuning.

One entry point, :func:`train`, runs the same code single-process, under ``accelerate launch`` on several
CPU processes (gloo) or GPUs (DDP / FSDP / DeepSpeed via the configs in ``configs/accelerate/``).

Determinism (what makes ``--resume`` bit-exact): the batch of global step ``s`` on process ``r`` is a pure
function of ``(config, s, r)`` — epoch order from a seeded permutation, conditions from a per-item
generator, diffusion noise/timesteps/condition dropout from a generator seeded by ``(seed, s, r)``.
Checkpoints hold model, optimizer, LR scheduler and RNG states (``accelerator.save_state``) plus the
step; they are written to a temporary folder and renamed, so a kill never leaves a half checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from flowctrl.errors import ConfigError, MissingWeightsError
from flowctrl.train.config import TrainConfig, config_to_dict
from flowctrl.train.data import (
    ConditionConfig,
    ShardConditionDataset,
    SyntheticConfig,
    SyntheticFlowDataset,
    collate,
    num_batches,
    seeded_order,
)

CHECKPOINT_PREFIX = "checkpoint-"


# ------------------------------------------------------------------------------------------- models
def make_scheduler(cfg: TrainConfig):
    """The training noise scheduler (DDIM's schedule; samplers are swapped in at inference)."""
    from diffusers import DDIMScheduler

    s = cfg.scheduler
    return DDIMScheduler(
        num_train_timesteps=s.num_train_timesteps, beta_schedule=s.beta_schedule, beta_start=s.beta_start,
        beta_end=s.beta_end, prediction_type=s.prediction_type, clip_sample=False, set_alpha_to_one=True,
        timestep_spacing="trailing", rescale_betas_zero_snr=s.rescale_betas_zero_snr,
    )


def _load_codec(path: str, field: str):
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


def build_models(cfg: TrainConfig) -> Dict[str, nn.Module]:
    """Instantiate (or load) every model of the run. Returns a dict with the keys the run needs."""
    from flowctrl.models.crm import CameraReferenceModel
    from flowctrl.models.fgm import FlowGenerationModel
    from flowctrl.models.flow_codec import FlowCodec
    from flowctrl.models.refiner import RefinementNet

    torch.manual_seed(cfg.seed)
    models: Dict[str, nn.Module] = {}
    if cfg.model == "refiner":
        models["refiner"] = RefinementNet(**cfg.refiner)
        return models
    codec = _load_codec(cfg.codec_path, "codec_path") if cfg.codec_path else FlowCodec(**cfg.codec)
    models["codec"] = codec
    if cfg.model == "codec":
        return models
    if cfg.image_codec_path:
        image_codec = _load_codec(cfg.image_codec_path, "image_codec_path")
    elif cfg.pretrained_cogvideox:
        image_codec = _load_codec(cfg.pretrained_cogvideox, "pretrained_cogvideox")
    else:
        torch.manual_seed(cfg.seed + 1)
        image_codec = FlowCodec(**{k: v for k, v in cfg.codec.items() if k != "flow_scale"})
    models["image_codec"] = image_codec
    lat_c = codec.config.latent_channels
    img_c = image_codec.config.latent_channels
    sample = dict(sample_height=cfg.data.height // 8, sample_width=cfg.data.width // 8,
                  sample_frames=4 * -(-(cfg.data.num_frames - 1) // 4) + 1)
    crm = None
    torch.manual_seed(cfg.seed + 2)
    if cfg.use_crm:
        ckw = {**sample, **(cfg.crm or {}), "image_latent_channels": img_c}
        crm = (CameraReferenceModel.from_cogvideox(cfg.pretrained_cogvideox, **ckw) if cfg.pretrained_cogvideox
               else CameraReferenceModel(**ckw))
        models["crm"] = crm
    fkw = {**sample, "flow_scale": codec.config.flow_scale, **cfg.fgm, "in_channels": lat_c, "image_latent_channels": img_c,
           "reference_dim": crm.hidden_dim if crm is not None else None}
    torch.manual_seed(cfg.seed + 3)
    models["fgm"] = (FlowGenerationModel.from_cogvideox(cfg.pretrained_cogvideox, **fkw) if cfg.pretrained_cogvideox
                     else FlowGenerationModel(**fkw))
    return models


class Stage1Trainable(nn.Module):
    """The trainable modules of one run in one ``nn.Module`` (what DDP/FSDP wrap). ``forward`` = loss."""

    def __init__(self, kind: str, models: Dict[str, nn.Module], scheduler=None, codec_epe_weight: float = 0.0,
                 codec_sample_latent: bool = True, refiner_layer_weight: float = 0.0,
                 latent_weight: Optional[torch.Tensor] = None, decoded: Optional["DecodedLatentLoss"] = None,
                 latent_loss_weight: float = 1.0, affinity_weight: float = 0.0) -> None:
        super().__init__()
        self.kind = kind
        self.latent_loss_weight = latent_loss_weight
        self.affinity_weight = affinity_weight
        self.decoded = decoded  # holds the frozen codec outside the module tree (not trained, not checkpointed)
        if latent_weight is not None:
            self.register_buffer("latent_weight", latent_weight, persistent=False)
        else:
            self.latent_weight = None
        self.codec_epe_weight = codec_epe_weight
        self.codec_sample_latent = codec_sample_latent
        self.refiner_layer_weight = refiner_layer_weight
        if kind == "fgm":
            self.fgm = models["fgm"]
            self.crm = models.get("crm")
            self.scheduler = scheduler
        elif kind == "refiner":
            self.refiner = models["refiner"]
        else:
            self.codec = models["codec"]

    def forward(self, batch: Dict[str, torch.Tensor], generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if self.kind == "fgm":
            return diffusion_loss(self.fgm, self.crm, self.scheduler, batch, self.latent_weight, self.decoded,
                                  self.latent_loss_weight, self.affinity_weight)
        if self.kind == "refiner":
            if self.refiner_layer_weight > 0 and "layers" in batch:  # synthetic data: surfaces known
                from flowctrl.models.refiner import layer_affinity_loss

                pred, feats = self.refiner(batch["image"], batch["dense"], batch["mask"], batch.get("times"), return_features=True)
                return epe_loss(pred, batch["flow"]) + self.refiner_layer_weight * layer_affinity_loss(feats, batch["layers"], generator=generator)
            pred = self.refiner(batch["image"], batch["dense"], batch["mask"], batch.get("times"))
            return epe_loss(pred, batch["flow"])
        return self.codec.loss(batch["flow"], generator=generator, epe_weight=self.codec_epe_weight,
                               sample_latent=self.codec_sample_latent)


def epe_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean end-point error (px) of (B,T,2,H,W) flows — the benchmark metric, used as T's loss."""
    return (pred - target).pow(2).sum(dim=2).add(1e-8).sqrt().mean()


def diffusion_target(scheduler, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the model regresses for the scheduler's ``prediction_type``: v (``v_prediction``), the clean
    latent z0 (``sample``) or ε (``epsilon``); same shape as ``z0``. Shared by the stage-1 and stage-2 loops."""
    kind = scheduler.config.prediction_type
    if kind == "v_prediction":
        return scheduler.get_velocity(z0, noise, t)
    return z0 if kind == "sample" else noise


def diffusion_loss(fgm: nn.Module, crm: Optional[nn.Module], scheduler, batch: Dict[str, torch.Tensor],
                   latent_weight: Optional[torch.Tensor] = None,
                   decoded: Optional[Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = None,
                   latent_loss_weight: float = 1.0, affinity_weight: float = 0.0) -> torch.Tensor:
    """``latent_loss_weight`` × MSE of the FGM's prediction (:func:`diffusion_target`) on one prepared batch.

    ``batch`` keys: ``latents`` (B,T',C,h,w) clean flow latent, ``image_latents`` (B,1,C_i,h,w),
    ``condition`` (B,T,3|5,H,W) (already dropped to zeros for CFG samples), ``strength`` (B,),
    ``plucker`` (B,T,6,H,W), ``noise`` like latents, ``timesteps`` (B,) long (``crop_offsets`` (B,2)
    with a cropping ``decoded``, ``target_flow`` (B,T,2,H,W) px with a flow-target one). ``latent_weight``
    (1,T',C,1,1) weights the squared error (:func:`decoder_latent_weights`);
    ``decoded(pred_x0, z0, crop_offsets, target_flow)`` adds a loss on decoded flows (:class:`DecodedLatentLoss`);
    ``affinity_weight`` × :func:`~flowctrl.models.control_tokens.control_affinity_loss` is added when the batch
    has ``layers`` (B,1,H,W) (synthetic data) and the FGM has control tokens.
    """
    z0, noise, t = batch["latents"], batch["noise"], batch["timesteps"]
    zt = scheduler.add_noise(z0, noise, t)
    target = diffusion_target(scheduler, z0, noise, t)
    refs = None
    if crm is not None:
        refs = crm(batch["image_latents"], t, batch["plucker"])
    with_affinity = affinity_weight > 0 and "layers" in batch
    out = fgm(zt, t, batch["image_latents"], batch["condition"], batch["strength"], refs, image=batch.get("image"),
              return_tokens=with_affinity)
    pred = out.sample
    err = (pred.float() - target.float()).square()
    loss = latent_loss_weight * ((err * latent_weight).mean() if latent_weight is not None else err.mean())
    if decoded is not None:
        loss = loss + decoded(pred, z0, batch.get("crop_offsets"), batch.get("target_flow"))
    if with_affinity and out.control_tokens is not None:
        from flowctrl.models.control_tokens import control_affinity_loss

        cfg = fgm.config
        loss = loss + affinity_weight * control_affinity_loss(out.patch_tokens, out.control_tokens, batch["condition"],
                                                              batch["layers"], cfg.control_tokens, 8 * cfg.patch_size)
    return loss


@torch.no_grad()
def decoder_latent_weights(codec: nn.Module, num_frames: int, size: Tuple[int, int], probe_scale: float = 0.1,
                           generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """How much the frozen decoder moves the flow per unit of latent error, per latent frame and channel.

    Around the zero-residual latent z₀, noise of std ``probe_scale`` is put into one (latent frame, channel)
    at a time; the weight is the decoded flow's mean squared change / probe_scale², normalised to mean 1.
    A latent MSE weighted by it approximates the decoded flow's squared error (a diagonal linearisation of
    the decoder), which the plain latent MSE does not: unweighted, a residual FGM lowered its latent error
    on validation scenes by 16 % while its decoded EPE rose by 7 %. Returns (1, T', C, 1, 1).
    """
    from flowctrl.models.fgm import zero_residual_latent

    zero = zero_residual_latent(codec, num_frames, size)
    _, tl, c, h, w = zero.shape
    ref = codec.decode(zero, num_frames)
    probes = []
    for f in range(tl):
        for ch in range(c):
            z = zero.clone()
            z[0, f, ch] += probe_scale * torch.randn(h, w, generator=generator).to(z.device)
            probes.append(z)
    gains = []
    for start in range(0, len(probes), 8):
        batch = torch.cat(probes[start:start + 8])
        gains.append((codec.decode(batch, num_frames) - ref).square().flatten(1).mean(1) / probe_scale ** 2)
    g = torch.cat(gains).view(1, tl, c, 1, 1)
    return (g / g.mean()).cpu()


class DecodedLatentLoss:
    """Mean EPE (in units of ``flow_scale`` px) of the frozen decoder's flow of the predicted clean latent: the
    FGM's error as the flow sees it. A residual FGM's latents are decoded relative to the zero-residual latent
    z₀ (``residual``), as :class:`~flowctrl.pipelines.flow_generation.FlowGenerationPipeline` samples them.

    ``target``: ``"latent"`` compares with the decoder's flow of the true latent (the codec's round trip of the
    true flow; a second, gradient-free decode per step); ``"flow"`` compares ``decode(pred + z₀) − decode(z₀)``
    with the true (residual) flow itself — what the benchmark measures, codec error included, and one decode
    per step instead of two. ``crop`` (h, w latent cells, all frames; ``"latent"`` only): one random crop per
    sample, a fraction of a full decode's cost (the crop's border effects appear on both sides; the decoder's
    group norms see only the crop, though); None: the whole latent."""

    def __init__(self, codec: nn.Module, num_frames: int, size: Tuple[int, int], crop: Optional[Tuple[int, int]],
                 weight: float, target: str = "latent", residual: bool = True) -> None:
        from flowctrl.models.fgm import zero_residual_latent

        if target not in ("latent", "flow"):
            raise ValueError(f"decoded-loss target {target!r}: use latent or flow")
        self.codec, self.num_frames, self.weight, self.target = codec, num_frames, weight, target
        self.crop = tuple(int(v) for v in crop) if crop else None
        if self.crop and target == "flow":
            raise ValueError("the flow target is compared on whole clips: crop must be None")
        self.zero = zero_residual_latent(codec, num_frames, size)
        self.zero_flow = None
        if residual:
            with torch.no_grad():
                self.zero_flow = codec.decode(self.zero, num_frames)
        else:  # a whole-flow FGM's latents are the codec's own
            self.zero = torch.zeros_like(self.zero)

    def offsets(self, batch: int, latent_size: Tuple[int, int], generator: torch.Generator) -> torch.Tensor:
        """(B, 2) top-left latent cells of the crops, drawn from ``generator``."""
        hy, hx = (max(1, n - c + 1) for n, c in zip(latent_size, self.crop))
        return torch.stack([torch.randint(0, hy, (batch,), generator=generator),
                            torch.randint(0, hx, (batch,), generator=generator)], dim=1)

    def _crop(self, z: torch.Tensor, offsets: Optional[torch.Tensor]) -> torch.Tensor:
        if self.crop is None:
            return z
        ch, cw = self.crop
        return torch.stack([z[i, :, :, int(y):int(y) + ch, int(x):int(x) + cw] for i, (y, x) in enumerate(offsets.tolist())])

    def __call__(self, pred: torch.Tensor, z0: torch.Tensor, offsets: Optional[torch.Tensor] = None,
                 target_flow: Optional[torch.Tensor] = None) -> torch.Tensor:
        """pred, z0 (B,T',C,h,w) latents (relative to z₀ for a residual FGM); ``target_flow`` (B,T,2,H,W) px, the
        true (residual) flow, needed with ``target="flow"``. Returns the weighted loss (scalar)."""
        zero = self._crop(self.zero.to(pred.device).expand(len(pred), -1, -1, -1, -1), offsets)
        got = self.codec.decode(self._crop(pred, offsets).to(zero.dtype) + zero, self.num_frames)
        if self.target == "flow":
            if target_flow is None:
                raise ValueError("the flow-target decoded loss needs the batch's target_flow")
            want = target_flow.to(got)
            if self.zero_flow is not None:
                got = got - self.zero_flow.to(got)
        else:
            with torch.no_grad():
                want = self.codec.decode(self._crop(z0, offsets) + zero, self.num_frames)
        scale = float(self.codec.config.flow_scale)
        return self.weight * (got - want).square().sum(dim=2).add(1e-8).sqrt().mean() / scale


# --------------------------------------------------------------------------------------------- data
def build_dataset(cfg: TrainConfig):
    cond = ConditionConfig(**cfg.data.condition)
    with_dense = cfg.model == "refiner"
    if cfg.data.source == "shards":
        return ShardConditionDataset(cfg.data.shards, cond, seed=cfg.data.seed, with_dense=with_dense)
    d = cfg.data
    return SyntheticFlowDataset(SyntheticConfig(num_scenes=d.num_scenes, seed=d.seed, num_frames=d.num_frames,
                                                height=d.height, width=d.width, condition=cond, with_dense=with_dense,
                                                cache_dir=d.cache_dir, condition_variants=d.condition_variants))


def batch_indices(cfg: TrainConfig, n: int, step: int, rank: int, world: int) -> Tuple[int, List[int]]:
    """(epoch, dataset indices) of global step ``step`` for process ``rank`` of ``world``."""
    nb = num_batches(n, cfg.batch_size, world)
    epoch, pos = divmod(step, nb)
    order = seeded_order(n, epoch, cfg.data.seed, cfg.data.shuffle)
    if len(order) < cfg.batch_size * world:  # tiny datasets: wrap around
        order = (order * (cfg.batch_size * world // max(1, len(order)) + 1))
    start = (pos * world + rank) * cfg.batch_size
    return epoch, order[start:start + cfg.batch_size]


class LatentCache:
    """Frozen-codec latents of each dataset item (the flow target and the reference image never change);
    for a residual FGM (``base``) the residual latent and the base flow of each (item, condition draw).
    ``camera_depth`` (the CRM's ``camera_base_depth``): the bases carry the camera's plane flow (fgm.coarse_base)."""

    def __init__(self, codec: nn.Module, image_codec: nn.Module, camera_depth: Optional[float] = None) -> None:
        self.codec, self.image_codec = codec, image_codec
        self.camera_depth = camera_depth
        self.store: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}
        self.residual: Dict[Any, Tuple[torch.Tensor, torch.Tensor]] = {}
        self._zero: Dict[Tuple[int, int, int], torch.Tensor] = {}

    @torch.no_grad()
    def encode_residuals(self, flows: torch.Tensor, sparse: torch.Tensor, mask: torch.Tensor, base: str,
                         K: Optional[torch.Tensor] = None, w2c: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Flows (B,T,2,H,W) px and their controls → (latents of flow − base relative to the zero residual's
        (B,T',C,h,w) on the CPU, base flows (B,T,2,H,W) px). The zero-residual latent is encoded once per size.
        K (B,3,3), w2c (B,T,4,4): the cameras, needed with ``camera_depth``."""
        from flowctrl.models.fgm import coarse_base, plane_camera_flow, zero_residual_latent

        t, h, w = flows.shape[1], flows.shape[-2], flows.shape[-1]
        if (t, h, w) not in self._zero:
            self._zero[(t, h, w)] = zero_residual_latent(self.codec, t, (h, w))
        cam = None
        if self.camera_depth is not None:
            if K is None or w2c is None:
                raise ValueError("a CRM with camera_base_depth needs each item's camera (K, w2c)")
            cam = plane_camera_flow(K, w2c, self.camera_depth, (h, w))
        dense = coarse_base(sparse, mask, base, cam)
        dev = next(self.codec.parameters()).device
        return (self.codec.encode((flows - dense).to(dev)) - self._zero[(t, h, w)]).cpu(), dense

    @torch.no_grad()
    def get_residual(self, key: Any, flow: torch.Tensor, sparse: torch.Tensor, mask: torch.Tensor, base: str,
                     K: Optional[torch.Tensor] = None, w2c: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(latent of flow − base relative to a zero residual's, base (T,2,H,W) px) for one item whose
        condition is identified by ``key`` (None: not cached, the condition changes every epoch)."""
        if key is not None and key in self.residual:
            return self.residual[key]
        z, dense = self.encode_residuals(flow[None], sparse[None], mask[None], base,
                                         None if K is None else K[None], None if w2c is None else w2c[None])
        out = (z[0], dense[0])
        if key is not None:
            self.residual[key] = out
        return out

    def fingerprint(self, data, base: Optional[str]) -> str:
        """A hash of what the cached latents depend on: both codecs' weights, the data config, the base."""
        import hashlib

        h = hashlib.sha256()
        for model in (self.codec, self.image_codec):
            for name, tensor in sorted(model.state_dict().items()):
                h.update(name.encode())
                h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        # not data.cache_dir: where the rendered scenes are kept does not change them
        fields = {k: getattr(data, k) for k in ("source", "shards", "num_scenes", "seed", "num_frames", "height", "width",
                                                 "condition", "condition_variants")}
        what = {"data": fields, "base": base}
        if self.camera_depth is not None:  # (absent otherwise: caches written before it existed stay valid)
            what["camera_depth"] = self.camera_depth
        h.update(json.dumps(what, sort_keys=True, default=str).encode())
        return h.hexdigest()

    def save(self, path: str, key: str) -> None:
        """Write the cache to ``path`` (torch format; temporary file + rename) under fingerprint ``key``."""
        from flowctrl.io_safety import atomic_path

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=".tmp") as tmp:
            torch.save({"fingerprint": key, "store": self.store, "residual": self.residual}, tmp)

    def load(self, path: Optional[str], key: str) -> bool:
        """Fill the cache from ``path`` when it exists and was written for fingerprint ``key``."""
        if not path or not os.path.isfile(path):
            return False
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("fingerprint") != key:
            return False
        self.store.update(saved["store"])
        self.residual.update(saved["residual"])
        return True

    @torch.no_grad()
    def precompute(self, dataset, base: Optional[str], variants: int, batch_size: int = 8, progress: bool = True) -> int:
        """Encode every (item, condition draw) of ``dataset`` before training, in batches (≈3× faster per
        item than one at a time): the image latents and, for a residual FGM (``base`` set), the residual
        latents and base flows under the keys :meth:`SyntheticFlowDataset.condition_key` gives at epochs
        ``0 … variants−1``; without a base, the flow latents. Returns the number of entries encoded."""
        import sys

        from tqdm import tqdm

        dev = next(self.codec.parameters()).device
        if base is None:
            jobs = [(0, i) for i in range(len(dataset)) if i not in self.store]
        else:
            jobs = [(v, i) for v in range(variants) for i in range(len(dataset)) if (i, v) not in self.residual]
        bar = tqdm(total=len(jobs), desc="encode latents", unit="item", disable=not progress, file=sys.stderr)
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start:start + batch_size]
            items = []
            for v, i in chunk:
                dataset.set_epoch(v)
                items.append(dataset[i])
            images = torch.stack([it["image"] for it in items])[:, None].to(dev)
            zi = self.image_codec.encode_channels(images * 2 - 1).cpu()
            flows = torch.stack([it["flow"] for it in items])
            if base is None:
                z = self.codec.encode(flows.to(dev)).cpu()
                for k, (_, i) in enumerate(chunk):
                    self.store[i] = (z[k], zi[k])
            else:
                stack = lambda key: torch.stack([it[key] for it in items]) if key in items[0] else None  # noqa: E731
                z, dense = self.encode_residuals(flows, stack("sparse"), stack("mask"), base, stack("K"), stack("w2c"))
                for k, (v, i) in enumerate(chunk):
                    self.residual[(i, v)] = (z[k], dense[k])
                    self.store.setdefault(i, (None, zi[k]))
            bar.update(len(chunk))
        bar.close()
        dataset.set_epoch(0)
        return len(jobs)

    @torch.no_grad()
    def get(self, index: int, flow: torch.Tensor, image: torch.Tensor, with_flow: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        """(flow latent, image latent) of item ``index``; ``with_flow=False`` skips the flow (None)."""
        if index not in self.store:
            dev = next(self.codec.parameters()).device
            z = self.codec.encode(flow[None].to(dev))[0].cpu() if with_flow else None
            zi = self.image_codec.encode_channels(image[None, None].to(dev) * 2 - 1)[0].cpu()
            self.store[index] = (z, zi)
        return self.store[index]


def prepare_fgm_batch(items: List[Dict[str, torch.Tensor]], indices: List[int], cache: LatentCache, scheduler,
                      flow_scale: float, cfg_dropout: float, generator: torch.Generator,
                      base: Optional[str] = None, keys: Optional[List[Any]] = None,
                      min_timestep: int = 0, decoded: Optional[DecodedLatentLoss] = None) -> Dict[str, torch.Tensor]:
    """Items → the batch :func:`diffusion_loss` takes (latents, noise, timesteps in
    ``[min_timestep, num_train_timesteps)``, dropped conditions).

    ``base`` (the FGM's ``config.base``): the latent is the codec's encoding of ``flow − coarse base``; it
    depends on the sampled condition, so it is cached per condition ``keys`` (e.g. the dataset's
    ``condition_key``; None: encoded every step)."""
    from flowctrl.models.fgm import append_base, sparse_condition

    b = collate(items)
    lat = [cache.get(i, it["flow"], it["image"], with_flow=base is None) for i, it in zip(indices, items)]
    zi = torch.stack([l[1] for l in lat])
    cond = sparse_condition(b["sparse"], b["mask"], flow_scale)
    if base is None:
        z0 = torch.stack([l[0] for l in lat])
    else:
        res = [cache.get_residual(None if keys is None else keys[k], it["flow"], it["sparse"], it["mask"], base,
                                  it.get("K"), it.get("w2c")) for k, it in enumerate(items)]
        z0 = torch.stack([r[0] for r in res])
        dense = torch.stack([r[1] for r in res])
        cond = append_base(cond, dense, flow_scale)
    keep = (torch.rand(len(items), generator=generator) >= cfg_dropout).float().view(-1, 1, 1, 1, 1)
    out = {
        "latents": z0,
        "image_latents": zi,
        "condition": cond * keep,
        "strength": b["strength"],
        "plucker": b["plucker"],
        "image": b["image"],
        "noise": torch.randn(z0.shape, generator=generator),
        "timesteps": torch.randint(min_timestep, scheduler.config.num_train_timesteps, (len(items),), generator=generator),
    }
    if decoded is not None and decoded.crop is not None:  # drawn last: other runs keep their random stream
        out["crop_offsets"] = decoded.offsets(len(items), tuple(z0.shape[-2:]), generator)
    if decoded is not None and decoded.target == "flow":
        out["target_flow"] = b["flow"] if base is None else b["flow"] - dense
    if "layers" in b:  # synthetic data: the surfaces, for the control-affinity loss
        out["layers"] = b["layers"]
    return out


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


def crop_flow(flow: torch.Tensor, crop, generator: torch.Generator) -> torch.Tensor:
    """(B,T,2,H,W) → (B,t,2,h,w): the first ``t`` frames (the causal VAE's first frame is special) and a
    random h×w window. The codec is convolutional, so it learns on crops what it applies to full clips."""
    t, h, w = (int(v) for v in crop)
    H, W = flow.shape[-2:]
    y = int(torch.randint(0, H - h + 1, (1,), generator=generator)) if H > h else 0
    x = int(torch.randint(0, W - w + 1, (1,), generator=generator)) if W > w else 0
    return flow[:, :t, :, y:y + h, x:x + w]


# ------------------------------------------------------------------------------------- checkpoints
def list_checkpoints(output_dir: os.PathLike) -> List[Path]:
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def resolve_resume(output_dir: str, resume: Optional[str]) -> Optional[Path]:
    """``latest`` → newest complete checkpoint (None if there is none yet); a path → that checkpoint."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    p = Path(resume)
    if not (p / "trainer_state.json").is_file():
        raise ConfigError.at(resume, "--resume", "is not a complete checkpoint folder", "give latest or output_dir/checkpoints/checkpoint-N")
    return p


def _save_checkpoint(accelerator, output_dir: Path, step: int, limit: int) -> Path:
    root = output_dir / "checkpoints"
    final = root / f"{CHECKPOINT_PREFIX}{step}"
    tmp = root / f".tmp-{CHECKPOINT_PREFIX}{step}"
    if accelerator.is_main_process:
        from flowctrl.io_safety import register_temp

        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        register_temp(tmp)  # removed if the run is stopped (SIGTERM / SIGHUP / Ctrl-C) before the rename
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step}))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        from flowctrl.io_safety import unregister_temp

        unregister_temp(tmp)
        for old in list_checkpoints(output_dir)[:-limit] if limit > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _truncate_metrics(path: Path, step: int) -> None:
    if not path.exists():
        return
    from flowctrl.io_safety import write_text_atomic

    keep = [l for l in path.read_text().splitlines() if l.strip() and json.loads(l)["step"] <= step]
    write_text_atomic(path, "".join(l + "\n" for l in keep))



def check_restorable(ckpt: Path, process_index: int) -> None:
    """Refuse a checkpoint whose random-number state cannot be restored: accelerate's ``load_state``
    skips an unreadable ``random_states_N.pkl`` with a log line, and the run would then continue with
    other random draws than the run it claims to resume (no longer bit-exact)."""
    from accelerate.utils import load as accelerate_load
    from accelerate.utils.constants import RNG_STATE_NAME

    path = ckpt / f"{RNG_STATE_NAME}_{process_index}.pkl"
    if not path.is_file():
        raise ConfigError.at(ckpt, "--resume", f"{path.name} is missing: the random state of process {process_index} "
                             "cannot be restored", "resume with the same number of processes, or start a new run")
    try:
        states = accelerate_load(path)
        ok = isinstance(states, dict) and all(k in states for k in ("random_state", "numpy_random_seed", "torch_manual_seed"))
    except Exception:  # noqa: BLE001 - what accelerate would skip silently
        ok = False
    if not ok:
        raise ConfigError.at(path, "--resume", "the saved random state cannot be read, so the run cannot resume exactly",
                             "restore the file from a copy, or start a new run without --resume")


def start_run(accelerator, out: Path, config: Dict[str, Any], resume: Optional[str],
              log: Callable[[str], None]) -> Tuple[int, Path]:
    """Shared start of a training run in ``out`` (stage 1 and stage 2 loops).

    Loads the accelerator state when resuming, writes ``config`` to ``train_config.json`` and makes
    ``metrics.jsonl`` match the starting step (truncated on resume, removed on a fresh start).
    Returns ``(start_step, metrics_path)``.
    """
    step = 0
    ckpt = resolve_resume(str(out), resume)
    if ckpt is not None:
        check_restorable(ckpt, accelerator.process_index)
        try:
            accelerator.load_state(str(ckpt))
            step = int(json.loads((ckpt / "trainer_state.json").read_text())["step"])
        except Exception as error:  # noqa: BLE001 - any part that cannot be restored ends the resume
            raise ConfigError.at(ckpt, "--resume", f"cannot restore the checkpoint ({type(error).__name__}: "
                                 f"{' '.join(str(error).split())[:160]})",
                                 "restore the checkpoint's files or start a new run without --resume") from None
        log(f"resumed from {ckpt} at step {step}")
    metrics = out / "metrics.jsonl"
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        from flowctrl.io_safety import write_text_atomic

        write_text_atomic(out / "train_config.json", json.dumps(config, indent=1))
        if ckpt is not None or resume:
            _truncate_metrics(metrics, step)
        elif metrics.exists():
            metrics.unlink()
    accelerator.wait_for_everyone()
    return step, metrics


def make_lr_scheduler(name: str, optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int,
                      accumulation: int, world: int):
    """The LR schedule of a run, counted in optimizer updates.

    A run's step counts (``max_steps``, ``lr_warmup_steps``) are batches per process; with gradient
    accumulation ``accumulation`` of them make one optimizer update, and the scheduler that accelerate
    prepares advances ``world`` times per update (once per process) and not at all in between. So warmup
    and decay span ``ceil(warmup_steps / accumulation)`` and ``max_steps // accumulation`` updates, and a
    decaying schedule ends at the run's last update whatever the accumulation and the number of processes.
    """
    from diffusers.optimization import get_scheduler

    warmup_updates = -(-warmup_steps // accumulation)
    total_updates = max(1, max_steps // accumulation)
    return get_scheduler(name, optimizer, num_warmup_steps=warmup_updates * world, num_training_steps=total_updates * world)


def optimizer_step(accelerator, loss: torch.Tensor, params, optimizer, lr_sched, grad_clip: float) -> None:
    """Backward, optional gradient clipping (on synchronizing steps), optimizer and LR-scheduler step.
    Call inside ``accelerator.accumulate(model)``."""
    accelerator.backward(loss)
    if accelerator.sync_gradients and grad_clip > 0:
        accelerator.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    lr_sched.step()
    optimizer.zero_grad(set_to_none=True)


def record_step(accelerator, metrics: Path, step: int, loss: torch.Tensor, lr_sched, t0: float,
                log_every: int, max_steps: int, log: Callable[[str], None]) -> float:
    """The loss averaged over processes; the main process appends it to ``metrics.jsonl`` and logs
    every ``log_every`` steps. Returns the averaged loss."""
    loss_value = float(accelerator.reduce(loss.detach().float(), reduction="mean"))
    if accelerator.is_main_process:
        lr = lr_sched.get_last_lr()[0]
        with open(metrics, "a") as f:
            f.write(json.dumps({"step": step, "loss": loss_value, "lr": lr, "time": round(time.time() - t0, 3)}) + "\n")
        if step % log_every == 0 or step == max_steps:
            log(f"step {step}/{max_steps} loss {loss_value:.5f} lr {lr:.2e} ({time.time() - t0:.1f}s)")
    return loss_value


def read_metrics(output_dir: os.PathLike) -> List[Dict[str, float]]:
    """The per-step log of a run: list of ``{"step", "loss", "lr", "time"}``."""
    p = Path(output_dir) / "metrics.jsonl"
    return [json.loads(l) for l in p.read_text().splitlines() if l.strip()] if p.exists() else []


# ------------------------------------------------------------------------------------------- train
def train(cfg: TrainConfig, resume: Optional[str] = None, log: Callable[[str], None] = print,
          stop_after: Optional[int] = None) -> Dict[str, Any]:
    """Run (or continue) one training run. Returns ``{"step", "loss", "output_dir", "final"}``.

    ``stop_after``: leave the loop after this many steps *of this invocation* without the final save
    (what a kill does; used by tests and for time-sliced jobs). Checkpoints go to
    ``output_dir/checkpoints``; the trained models to ``output_dir/final`` (pipeline layout).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=cfg.mixed_precision if torch.cuda.is_available() else "no",
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
    )
    rank, world = accelerator.process_index, accelerator.num_processes
    out = Path(cfg.output_dir)
    set_seed(cfg.seed)
    try:
        models = build_models(cfg)
    except (TypeError, ValueError) as error:  # a model section (fgm:, crm:, codec:, refiner:) the model refuses
        raise ConfigError.at(cfg.output_dir, cfg.model, f"the config's model settings are refused "
                             f"({' '.join(str(error).split())[:200]})", "check the keys and values of that section") from None
    scheduler = make_scheduler(cfg) if cfg.model == "fgm" else None
    for name in ("codec", "image_codec"):  # frozen in an FGM run (the loss helpers below decode with the codec)
        if cfg.model == "fgm" and name in models:
            models[name].requires_grad_(False).eval()
    latent_weight, decoded = None, None
    if cfg.model == "fgm":
        size = (cfg.data.height, cfg.data.width)
        if cfg.fgm_latent_weighting == "decoder":
            latent_weight = decoder_latent_weights(models["codec"], cfg.data.num_frames, size,
                                                   generator=torch.Generator().manual_seed(cfg.seed))
        if cfg.fgm_decoded_loss_weight > 0:
            decoded = DecodedLatentLoss(models["codec"], cfg.data.num_frames, size, cfg.fgm_decoded_crop,
                                        cfg.fgm_decoded_loss_weight, cfg.fgm_decoded_target,
                                        residual=models["fgm"].config.base is not None)
    module = Stage1Trainable(cfg.model, models, scheduler, codec_epe_weight=cfg.codec_epe_weight,
                              codec_sample_latent=cfg.codec_sample_latent,
                              refiner_layer_weight=cfg.refiner_layer_weight, latent_weight=latent_weight, decoded=decoded,
                              latent_loss_weight=cfg.fgm_latent_loss_weight, affinity_weight=cfg.fgm_affinity_weight)
    if cfg.gradient_checkpointing:
        for m in module.children():
            if hasattr(m, "enable_gradient_checkpointing") and getattr(m, "_supports_gradient_checkpointing", False):
                m.enable_gradient_checkpointing()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.weight_decay)
    lr_sched = make_lr_scheduler(cfg.lr_scheduler, optimizer, cfg.lr_warmup_steps, cfg.max_steps,
                                 accelerator.gradient_accumulation_steps, world)  # the launcher may override the config's
    module, optimizer, lr_sched = accelerator.prepare(module, optimizer, lr_sched)
    device = accelerator.device
    for name in ("codec", "image_codec"):
        if cfg.model == "fgm":
            models[name].to(device)

    dataset = build_dataset(cfg)
    cache = None
    if cfg.model == "fgm":
        from flowctrl.models.fgm import camera_base_depth

        cache = LatentCache(models["codec"], models["image_codec"], camera_base_depth(models.get("crm")))
    flow_scale = float(models["codec"].config.flow_scale) if cfg.model == "fgm" else 0.0
    if cache is not None and cfg.data.precompute_latents:  # before the clock: data preparation, not training
        t = time.time()
        key = cache.fingerprint(cfg.data, models["fgm"].config.base)
        if cache.load(cfg.data.latent_cache_file, key):
            log(f"latents read from {cfg.data.latent_cache_file} in {time.time() - t:.0f}s")
        else:
            n = cache.precompute(dataset, models["fgm"].config.base, cfg.data.condition_variants,
                                 progress=accelerator.is_main_process)
            log(f"encoded {n} latents with the frozen codecs in {time.time() - t:.0f}s")
            if cfg.data.latent_cache_file and accelerator.is_main_process:
                cache.save(cfg.data.latent_cache_file, key)
        accelerator.wait_for_everyone()

    step, metrics = start_run(accelerator, out, config_to_dict(cfg), resume, log)

    module.train()
    loss_value = float("nan")
    done_here = 0
    t0 = time.time()
    while step < cfg.max_steps:
        epoch, idx = batch_indices(cfg, len(dataset), step, rank, world)
        dataset.set_epoch(epoch)
        items = [dataset[i] for i in idx]
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 1009 + rank)
        if cfg.model == "fgm":
            keys = [dataset.condition_key(i) for i in idx] if cfg.data.condition_variants and hasattr(dataset, "condition_key") else None
            batch = prepare_fgm_batch(items, idx, cache, scheduler, flow_scale, cfg.cfg_dropout, gen,
                                      models["fgm"].config.base, keys, cfg.scheduler.train_timestep_min, decoded)
        else:
            batch = collate(items)
            if cfg.model == "refiner" and cfg.refiner_frames:
                batch = pick_frames(batch, cfg.refiner_frames, gen)
            if cfg.model == "codec" and cfg.codec_crop:
                batch = {"flow": crop_flow(batch["flow"], cfg.codec_crop, gen)}
        batch = {k: v.to(device) for k, v in batch.items()}
        with accelerator.accumulate(module):
            loss = module(batch, gen) if cfg.model in ("codec", "refiner") else module(batch)
            optimizer_step(accelerator, loss, params, optimizer, lr_sched, cfg.grad_clip)
        step += 1
        done_here += 1
        loss_value = record_step(accelerator, metrics, step, loss, lr_sched, t0, cfg.log_every, cfg.max_steps, log)
        if step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
            _save_checkpoint(accelerator, out, step, cfg.checkpoints_total_limit)
        if stop_after is not None and done_here >= stop_after:
            break
        if cfg.time_limit_s is not None:
            over = torch.tensor([float(time.time() - t0 >= cfg.time_limit_s)], device=device)
            if float(accelerator.reduce(over, reduction="sum")) > 0:  # every process stops at the same step
                log(f"time limit {cfg.time_limit_s:.0f}s reached at step {step}")
                break

    # DDP sanity check: every process's parameters must be identical after the same optimizer steps
    # (sharded runs hold different shards by design: nothing to compare).
    sums, in_sync = None, None
    if not shards_parameters(accelerator):
        local = torch.stack([p.detach().double().sum() + p.detach().double().abs().sum() * 1e-3
                             for p in accelerator.unwrap_model(module).parameters()]).sum().reshape(1).to(device)
        sums = accelerator.gather(local).cpu().tolist()
        in_sync = max(sums) - min(sums) == 0.0
    if accelerator.is_main_process:
        (out / "train_summary.json").write_text(json.dumps({
            "world_size": world, "step": step, "loss": loss_value, "param_checksums": sums,
            "in_sync": in_sync}, indent=1))

    final = None
    timed_out = cfg.time_limit_s is not None and time.time() - t0 >= cfg.time_limit_s
    if step >= cfg.max_steps or (timed_out and stop_after is None):
        _save_checkpoint(accelerator, out, step, cfg.checkpoints_total_limit)
        trained = trained_module(accelerator, module)  # every process: gathering sharded weights is collective
        if accelerator.is_main_process:
            final = save_final(cfg, trained, models, out / "final")
            log(f"saved {final}")
    accelerator.wait_for_everyone()
    result = {"step": step, "loss": loss_value, "output_dir": str(out), "final": str(final) if final else None}
    accelerator.end_training()
    del module, optimizer, lr_sched, models
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return result


def shards_parameters(accelerator) -> bool:
    """Whether each process holds only a shard of every parameter (FSDP, DeepSpeed ZeRO-3)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return accelerator.distributed_type == DistributedType.DEEPSPEED and plugin is not None and plugin.zero_stage == 3


def with_full_weights(module: nn.Module, state: Dict[str, torch.Tensor],
                      rebuild: Optional[Callable[[nn.Module], Any]] = None) -> Any:
    """A copy of ``module`` holding the whole weights of ``state`` (its full state dict, keys as ``module.state_dict()``).

    Each diffusers model (``module`` itself, or each of its children that is one) is rebuilt from its config,
    passed to ``rebuild`` (e.g. to add the same LoRA adapter) and loaded with its part of ``state``, strictly.
    Returns the rebuilt model, or for a container (:class:`Stage1Trainable`) a namespace of its rebuilt
    children (``fgm``, ``crm``, ``refiner``, ``codec``; None where absent). Needed where the trained parameters are
    sharded across processes (:func:`shards_parameters`), so the module itself cannot be saved as it is.
    """
    from types import SimpleNamespace

    from diffusers.models.modeling_utils import ModelMixin

    def fresh(model: ModelMixin, part: Dict[str, torch.Tensor]) -> ModelMixin:
        # FSDP2 swaps a sharded module's class for a subclass FSDP<Class>: rebuild the model's own class
        cls = next(c for c in type(model).__mro__ if issubclass(c, ModelMixin) and not c.__name__.startswith("FSDP"))
        new = cls.from_config(model.config)
        if rebuild is not None:
            rebuild(new)
        new.load_state_dict(part)
        return new

    if isinstance(module, ModelMixin):
        return fresh(module, state)
    parts: Dict[str, Any] = {"fgm": None, "crm": None, "refiner": None, "codec": None}
    for name, child in module.named_children():
        if isinstance(child, ModelMixin):
            prefix = name + "."
            parts[name] = fresh(child, {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    return SimpleNamespace(**parts)


def trained_module(accelerator, model: nn.Module, rebuild: Optional[Callable[[nn.Module], Any]] = None) -> Any:
    """The trained module to save, with whole weights, on the main process (None on the others).

    Under DDP that is the unwrapped module. Under FSDP or ZeRO-3 every process holds a shard of each
    parameter: the full state dict is gathered (a collective, so *every* process must call this) and loaded
    into fresh copies (:func:`with_full_weights`).
    """
    if not shards_parameters(accelerator):
        return accelerator.unwrap_model(model) if accelerator.is_main_process else None
    state = accelerator.get_state_dict(model)
    return with_full_weights(accelerator.unwrap_model(model), state, rebuild) if accelerator.is_main_process else None


def save_final(cfg: TrainConfig, module: Stage1Trainable, models: Dict[str, nn.Module], path: Path) -> Path:
    """Write the trained models in the layout :class:`FlowGenerationPipeline.from_pretrained` reads."""
    from flowctrl.pipelines.flow_generation import FlowGenerationPipeline

    if cfg.model == "codec":
        tmp = path.with_name(f".{path.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        module.codec.save_pretrained(str(tmp))
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
        return path
    if cfg.model == "refiner":
        pipe = FlowGenerationPipeline(refiner=module.refiner)
    else:
        pipe = FlowGenerationPipeline(fgm=module.fgm, crm=module.crm, codec=models["codec"],
                                      image_codec=models["image_codec"], scheduler=make_scheduler(cfg))
    pipe.save_pretrained(path)
    return path
