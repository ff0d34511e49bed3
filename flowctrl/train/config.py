"""Training configuration (YAML) for ``flowctrl train flow``: one dataclass tree, strict keys.

Example (``configs/train/fgm_tiny.yaml``)::

    model: fgm                 # fgm (FGM [+ CRM]) | refiner (T) | codec (flow-VAE fine-tuning)
    max_steps: 300
    batch_size: 2
    learning_rate: 1.0e-3
    data: {source: synthetic, num_scenes: 8, num_frames: 16, height: 64, width: 64}
    fgm: {num_layers: 2, num_attention_heads: 2, attention_head_dim: 16}
    crm: {num_layers: 2}       # null → FGM alone
    scheduler: {prediction_type: v_prediction}

Unknown keys raise :class:`~flowctrl.errors.ConfigError` naming the file and the key.
"""
from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import yaml

from flowctrl.errors import ConfigError

MODELS = ("fgm", "refiner", "codec")
MAX_CONFIG_INT = 10**12
MAX_CONFIG_FLOAT = 1e12


@dataclass
class DataConfig:
    source: str = "synthetic"          # synthetic | shards
    shards: Optional[str] = None       # folder written by `flowctrl prepare-data`
    num_scenes: int = 64
    seed: int = 0
    num_frames: int = 16
    height: int = 64
    width: int = 64
    condition: Dict[str, Any] = field(default_factory=dict)   # ConditionConfig fields
    shuffle: bool = True
    cache_dir: Optional[str] = None    # synthetic: rendered scenes kept on disk (render once, reuse across runs)
    condition_variants: Optional[int] = None  # synthetic: conditions cycle through this many draws per scene
                                              # (lets the residual FGM cache its per-condition latents)
    precompute_latents: bool = False   # fgm: encode every (scene, condition draw) with the frozen codecs before
                                       # the training clock starts (needs condition_variants), like VAE-latent caching
    latent_cache_file: Optional[str] = None  # with precompute_latents: keep the encoded latents in this file and reuse
                                             # them in later runs with the same codecs and data (else re-encoded)


@dataclass
class SchedulerConfig:
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    prediction_type: str = "v_prediction"   # epsilon | v_prediction | sample (x0)
    rescale_betas_zero_snr: bool = False
    train_timestep_min: int = 0              # train on t in [this, num_train_timesteps): e.g. only the high-noise
                                             # steps that few-step sampling visits


@dataclass
class TrainConfig:
    model: str = "fgm"
    seed: int = 0
    output_dir: str = "runs/flow"
    max_steps: int = 300
    time_limit_s: Optional[float] = None          # stop (and save final/) after this much training time
    batch_size: int = 2
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    lr_scheduler: str = "constant_with_warmup"   # any diffusers.optimization scheduler name
    lr_warmup_steps: int = 0
    grad_clip: float = 1.0
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"                   # no | fp16 | bf16 (bf16/fp16 on GPU)
    gradient_checkpointing: bool = False
    checkpoint_every: int = 100
    checkpoints_total_limit: int = 2
    log_every: int = 10
    cfg_dropout: float = 0.1                      # drop the sparse condition (classifier-free guidance)
    data: DataConfig = field(default_factory=DataConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    fgm: Dict[str, Any] = field(default_factory=dict)
    crm: Optional[Dict[str, Any]] = field(default_factory=dict)
    codec: Dict[str, Any] = field(default_factory=dict)
    codec_crop: Optional[List[int]] = None        # codec training on [frames, h, w] crops (frames from 0)
    codec_epe_weight: float = 0.0                 # codec training: + weight × decoded-flow EPE (px / flow_scale)
    codec_sample_latent: bool = True              # codec training: decode a posterior sample (False: the mode)
    codec_path: Optional[str] = None              # a trained FlowCodec folder (save_pretrained)
    image_codec_path: Optional[str] = None        # image VAE: FlowCodec folder or CogVideoX folder (vae/)
    pretrained_cogvideox: Optional[str] = None    # start FGM and CRM from a CogVideoX checkpoint
    refiner: Dict[str, Any] = field(default_factory=dict)
    refiner_layer_weight: float = 0.0             # T (attention output) on synthetic data: + weight × layer_affinity_loss
    refiner_frames: Optional[int] = None          # T trains on this many random frames (of 1..T-1) per clip
    fgm_latent_loss_weight: float = 1.0           # fgm: weight of the latent-space MSE (0 = the decoded loss alone)
    fgm_affinity_weight: float = 0.0              # fgm with control tokens, synthetic data: + weight × control_affinity_loss
    fgm_latent_weighting: str = "none"            # fgm: none | decoder (weight the latent MSE per latent frame and
                                                  # channel by the frozen decoder's gain, ≈ the decoded flow's error)
    fgm_decoded_loss_weight: float = 0.0          # fgm (x0 prediction): + weight × EPE (px / flow_scale) between the
                                                  # decoded predicted and true latents, on a random latent crop
    fgm_decoded_crop: Optional[List[int]] = field(default_factory=lambda: [4, 4])  # latent cells (h, w) of that
                                                  # crop; null = decode the whole latent (exact, slower)
    fgm_decoded_target: str = "latent"            # fgm: what the decoded prediction is compared with: latent = the
                                                  # decoder's flow of the true latent (the codec's round trip);
                                                  # flow = the true flow itself (what the benchmark measures; no
                                                  # frozen decode of the target per step; needs fgm_decoded_crop: null)

    @property
    def use_crm(self) -> bool:
        return self.model == "fgm" and self.crm is not None


def _build(cls, data: Dict[str, Any], source: str, prefix: str = ""):
    if not isinstance(data, dict):
        raise ConfigError.at(source, prefix.rstrip(".") or "<root>", f"is {type(data).__name__}, not a mapping", "write key: value pairs")
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError.at(source, prefix + str(key), "is not a known key", f"use one of {sorted(names)}")
        if key == "data":
            value = _build(DataConfig, value or {}, source, "data.")
        elif key == "scheduler":
            value = _build(SchedulerConfig, value or {}, source, "scheduler.")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as err:  # pragma: no cover - dataclass guards
        raise ConfigError.at(source, prefix, str(err), "check the keys") from None


_SCALARS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
# Integers that may be negative (none of the sizes, counts or steps may be).
_SIGNED_INTS: Tuple[str, ...] = ()


def _check_value(value: Any, kind: Any, src: str, where: str) -> Any:
    """``value`` checked (and numbers normalized) against the annotation ``kind``; one ConfigError line."""
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_value(value, inner[0], src, where) if len(inner) == 1 else value
    if value is None:
        raise ConfigError.at(src, where, "is null", f"give {_describe(kind)}")
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError.at(src, where, f"is {value!r}", "give true or false")
        return value
    if kind is int:
        if isinstance(value, float) and math.isfinite(value) and value == int(value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError.at(src, where, f"is {value!r}", "give an integer")
        if value < 0 and where.rsplit(".", 1)[-1] not in _SIGNED_INTS:
            raise ConfigError.at(src, where, f"is {value}, must be >= 0", "give a non-negative integer")
        if value > MAX_CONFIG_INT:
            raise ConfigError.at(src, where, f"is {value}, above {MAX_CONFIG_INT:g}", "give a smaller integer")
        return value
    if kind is float:
        if isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError.at(src, where, f"is {value!r}", "give a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError.at(src, where, f"is {value!r}", "give a number")
        value = float(value)
        if not math.isfinite(value) or abs(value) > MAX_CONFIG_FLOAT:
            raise ConfigError.at(src, where, f"is {value}", f"give a finite number of at most {MAX_CONFIG_FLOAT:g}")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError.at(src, where, f"is {value!r}", "give a string")
        return value
    if origin in (list, List):
        if not isinstance(value, list):
            raise ConfigError.at(src, where, f"is {value!r}", f"give {_describe(kind)}")
        return [_check_value(v, args[0], src, f"{where}[{i}]") for i, v in enumerate(value)] if args else value
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError.at(src, where, f"is {value!r}", "give a mapping of key: value pairs")
        return value
    return value


def _describe(kind: Any) -> str:
    origin = typing.get_origin(kind)
    if origin in (list, List):
        return f"a list of {_describe(typing.get_args(kind)[0])}s" if typing.get_args(kind) else "a list"
    return _SCALARS.get(kind, "a value")


# (low, high, low is exclusive) per key; applied to whichever of the two trainers' configs has the key.
RANGES: Dict[str, Tuple[float, float, bool]] = {
    "max_steps": (1, 1e9, False), "batch_size": (1, 4096, False), "gradient_accumulation_steps": (1, 4096, False),
    "checkpoint_every": (1, 1e9, False), "log_every": (1, 1e9, False), "checkpoints_total_limit": (0, 1e6, False),
    "learning_rate": (0, 10, True), "adam_beta1": (0, 0.999999, False), "adam_beta2": (0, 0.999999, False),
    "weight_decay": (0, 100, False), "grad_clip": (0, 1e6, False), "cfg_dropout": (0, 1, False),
    "flow_dropout": (0, 1, False), "time_limit_s": (0, 1e9, True), "lr_warmup_steps": (0, 1e9, False),
    "data.num_scenes": (1, 1e8, False), "data.num_frames": (2, 1024, False), "data.height": (8, 4096, False),
    "data.width": (8, 4096, False), "data.condition_variants": (1, 1e6, False),
    "scheduler.num_train_timesteps": (1, 1e6, False), "scheduler.beta_start": (0, 1, True),
    "scheduler.beta_end": (0, 1, True),
}
MAX_CLIP_VOXELS = 2048 * 2048 * 49  # frames x height x width of one training clip (the renderer's limit)


def check_ranges(cfg: Any, src: str) -> None:
    """Every key of :data:`RANGES` present in ``cfg`` lies in its range (one ConfigError line naming
    the range), and one clip's frames x height x width stays within :data:`MAX_CLIP_VOXELS`."""
    for key, (low, high, open_low) in RANGES.items():
        node: Any = cfg
        for part in key.split("."):
            node = getattr(node, part, None)
        if node is None:
            continue
        if node < low or node > high or (open_low and node == low):
            bound = f"({low:g}, {high:g}]" if open_low else f"[{low:g}, {high:g}]"
            raise ConfigError.at(src, key, f"is {node}, outside {bound}", f"give a value in {bound}")
    name = getattr(cfg, "lr_scheduler", None)
    if name is not None:
        from diffusers.optimization import SchedulerType

        names = [t.value for t in SchedulerType]
        if name not in names:
            raise ConfigError.at(src, "lr_scheduler", f"is {name!r}", f"use one of {', '.join(names)}")
    data = getattr(cfg, "data", None)
    if data is not None and data.num_frames * data.height * data.width > MAX_CLIP_VOXELS:
        raise ConfigError.at(src, "data", f"{data.num_frames} frames of {data.width}x{data.height} exceed "
                             f"{MAX_CLIP_VOXELS} frame-pixels", "lower data.num_frames, data.height or data.width")


def check_types(cfg: Any, src: str, prefix: str = "") -> None:
    """Every field of the dataclass tree ``cfg`` matches its annotation (in place: numbers are
    normalized, e.g. YAML's ``1e-4`` string to a float); sizes and counts are >= 0, numbers finite.
    A wrong type is one :class:`ConfigError` line naming the key."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check_types(value, src, f"{prefix}{f.name}.")
            continue
        setattr(cfg, f.name, _check_value(value, hints[f.name], src, prefix + f.name))


def apply_settings(data: Dict[str, Any], settings: Sequence[str], source: str) -> Dict[str, Any]:
    """``--set KEY=VALUE`` strings applied to a config mapping (in place, returned): dotted keys reach into
    nested mappings (``data.num_scenes=200``), values are YAML (``null``, ``[4, 4]``, ``1e-4``)."""
    for item in settings:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError.at(source, "--set", f"{item!r} is not KEY=VALUE", "write e.g. --set data.num_scenes=200")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError.at(source, f"--set {key}", f"value {text!r} is not valid YAML", "quote strings, write lists as [a, b]") from None
        *parents, leaf = key.strip().split(".")
        node = data
        for name in parents:
            child = node.get(name)
            if child is None:
                child = node[name] = {}
            if not isinstance(child, dict):
                raise ConfigError.at(source, f"--set {key}", f"{name} is not a mapping", "set the whole value instead")
            node = child
        node[leaf] = value
    return data


def read_config_data(path: Optional[os.PathLike], overrides: Optional[Dict[str, Any]] = None,
                     example: str = "configs/train/fgm_tiny.yaml", settings: Sequence[str] = ()) -> Dict[str, Any]:
    """The top-level mapping of a YAML config file (empty when ``path`` is None) with the non-None
    CLI ``overrides`` and then the ``--set KEY=VALUE`` ``settings`` (:func:`apply_settings`) applied; a
    missing or unparsable file is a one-line :class:`ConfigError`."""
    data: Dict[str, Any] = {}
    if path is not None:
        from flowctrl.io_safety import read_bounded_text

        p = Path(path)
        if not p.exists():
            raise ConfigError.at(path, "--config", "does not exist", f"give a YAML file such as {example}")
        text = read_bounded_text(p, "config", ConfigError)  # a FIFO, device, huge or non-UTF-8 file: one line
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError.at(path, "yaml", f"cannot be parsed ({str(err).splitlines()[0]})", "fix the YAML syntax") from None
        if not isinstance(data, dict):
            raise ConfigError.at(path, "(top level)", f"is {type(data).__name__}", "write a mapping of keys to values")
    for k, v in (overrides or {}).items():
        if v is not None:
            data[k] = v
    return apply_settings(data, settings, str(path or "<defaults>"))


def load_config(path: Optional[str], overrides: Optional[Dict[str, Any]] = None, settings: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config (or defaults when ``path`` is None) and apply CLI overrides and ``--set`` settings."""
    data = read_config_data(path, overrides, settings=settings)
    cfg = _build(TrainConfig, data, str(path or "<defaults>"))
    src = str(path or "<defaults>")
    check_types(cfg, src)
    check_ranges(cfg, src)
    if cfg.model not in MODELS:
        raise ConfigError.at(src, "model", f"is {cfg.model!r}", f"use one of {list(MODELS)}")
    if cfg.data.source not in ("synthetic", "shards"):
        raise ConfigError.at(src, "data.source", f"is {cfg.data.source!r}", "use synthetic or shards")
    if cfg.data.source == "shards" and not cfg.data.shards:
        raise ConfigError.at(src, "data.shards", "is empty while data.source is shards", "give the prepare-data output folder")
    if cfg.data.precompute_latents and (cfg.data.source != "synthetic" or not cfg.data.condition_variants):
        raise ConfigError.at(src, "data.precompute_latents", "needs data.source: synthetic with data.condition_variants set",
                             "set data.condition_variants (how many condition draws per scene to encode), or turn it off")
    if cfg.fgm_latent_weighting not in ("none", "decoder"):
        raise ConfigError.at(src, "fgm_latent_weighting", f"is {cfg.fgm_latent_weighting!r}", "use none or decoder")
    if cfg.fgm_latent_loss_weight < 0 or (cfg.fgm_latent_loss_weight == 0 and cfg.fgm_decoded_loss_weight <= 0):
        raise ConfigError.at(src, "fgm_latent_loss_weight", f"is {cfg.fgm_latent_loss_weight} with fgm_decoded_loss_weight "
                             f"{cfg.fgm_decoded_loss_weight}: nothing to train on", "give one of them a positive weight")
    if cfg.fgm_decoded_loss_weight > 0 and cfg.scheduler.prediction_type != "sample":
        raise ConfigError.at(src, "fgm_decoded_loss_weight", "needs the predicted clean latent",
                             "set scheduler.prediction_type: sample")
    if cfg.fgm_affinity_weight < 0:
        raise ConfigError.at(src, "fgm_affinity_weight", f"is {cfg.fgm_affinity_weight}", "give 0 (off) or a positive weight")
    if cfg.fgm_affinity_weight > 0 and not (cfg.fgm or {}).get("control_tokens"):
        raise ConfigError.at(src, "fgm_affinity_weight", f"is {cfg.fgm_affinity_weight} without control tokens",
                             "set fgm.control_tokens (the loss scores patch tokens against control tokens), or 0")
    if cfg.fgm_decoded_target not in ("latent", "flow"):
        raise ConfigError.at(src, "fgm_decoded_target", f"is {cfg.fgm_decoded_target!r}", "use latent or flow")
    if cfg.fgm_decoded_target == "flow" and cfg.fgm_decoded_crop:
        raise ConfigError.at(src, "fgm_decoded_target", "is flow with a latent crop (fgm_decoded_crop)",
                             "set fgm_decoded_crop: null (the flow target is compared on the whole decoded clip)")
    if not 0 <= cfg.scheduler.train_timestep_min < cfg.scheduler.num_train_timesteps:
        raise ConfigError.at(src, "scheduler.train_timestep_min", f"is {cfg.scheduler.train_timestep_min}",
                             f"give 0 to {cfg.scheduler.num_train_timesteps - 1}")
    if cfg.scheduler.prediction_type not in ("epsilon", "v_prediction", "sample"):
        raise ConfigError.at(src, "scheduler.prediction_type", f"is {cfg.scheduler.prediction_type!r}", "use epsilon, v_prediction or sample")
    if cfg.mixed_precision not in ("no", "fp16", "bf16"):
        raise ConfigError.at(src, "mixed_precision", f"is {cfg.mixed_precision!r}", "use no, fp16 or bf16")
    for name in ("max_steps", "batch_size", "checkpoint_every", "log_every"):
        if int(getattr(cfg, name)) < 1:
            raise ConfigError.at(src, name, f"is {getattr(cfg, name)}", "give a positive integer")
    return cfg


RUN_FILES = ("train_config.json", "metrics.jsonl")
RUN_FOLDERS = ("final", "checkpoints")


def check_run_outputs(config_path: Optional[os.PathLike], output_dir: str, inputs: Sequence[Any], src: str) -> None:
    """The output rule for a training run: what it writes in ``output_dir`` (``train_config.json``,
    ``metrics.jsonl``, ``final/``, ``checkpoints/``) may not be or hold the config file or any input
    (``inputs``: shard folders, codec / model folders named by the config). Checked before any work."""
    from flowctrl.io_safety import same_file

    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError.at(src, "output_dir", f"{output_dir} exists and is not a folder", "give a folder for the run")
    named = [Path(p) for p in ([config_path] if config_path else []) + [p for p in inputs if p]]
    for src_path in named:
        real = os.path.realpath(src_path)
        for name in RUN_FILES:
            if same_file(out / name, src_path):
                raise ConfigError.at(src, "output_dir", f"the run would overwrite the input {src_path} ({name})",
                                     "choose another output_dir or move the input")
        for name in RUN_FOLDERS:
            folder = os.path.realpath(out / name)
            if real == folder or real.startswith(folder + os.sep):
                raise ConfigError.at(src, "output_dir", f"the run replaces {out / name}, which holds the input {src_path}",
                                     "choose another output_dir or move the input")


def config_to_dict(cfg: TrainConfig) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)
