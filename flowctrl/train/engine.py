"""The one training engine: every training run (flow codec, FGM + CRM, refinement net T, stage-2 video DiT)
goes through :func:`run`, driven by a :class:`TrainTask` that says what is specific to it (models, data,
loss, final save; see :mod:`flowctrl.train.tasks`).

The engine owns what every run shares: the accelerate setup (single process, ``accelerate launch`` on
several CPU processes (gloo) or GPUs: DDP / FSDP / DeepSpeed via ``configs/accelerate/``), start and resume,
checkpoints, the AdamW step with gradient accumulation and clipping, the LR schedule, the metrics log, the
time limit, the DDP parameter check and gathering sharded weights for the final save.

Determinism (what makes ``--resume`` bit-exact): the batch of global step ``s`` on process ``r`` is a pure
function of ``(config, s, r)`` — epoch order from a seeded permutation (:func:`batch_indices`), conditions
from a per-item generator, and every other random draw of the step (noise, timesteps, dropout, crops) from
the generator :func:`step_generator` seeds with ``(seed, s, r)``. Checkpoints hold model, optimizer, LR
scheduler and RNG states (``accelerator.save_state``) plus the step; they are written to a temporary folder
and renamed, so a kill never leaves a half checkpoint.
"""
from __future__ import annotations

import abc
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from flowctrl.errors import ConfigError
from flowctrl.io_safety import register_temp, unregister_temp, write_text_atomic
from flowctrl.train.data import num_batches, seeded_order

CHECKPOINT_PREFIX = "checkpoint-"


# --------------------------------------------------------------------------------------------- task
class TrainTask(abc.ABC):
    """What one kind of training run adds to the engine. ``cfg`` carries the fields every run has:
    ``output_dir, seed, max_steps, batch_size, learning_rate, weight_decay, adam_beta1, adam_beta2,
    lr_scheduler, lr_warmup_steps, grad_clip, gradient_accumulation_steps, mixed_precision, log_every,
    checkpoint_every, checkpoints_total_limit`` and ``data.seed, data.shuffle``.

    The engine calls, in this order: :meth:`build` (models; seeded by the engine's ``set_seed`` first),
    :meth:`param_groups`, ``accelerator.prepare``, :meth:`setup_data` (frozen parts to the device, the
    dataset and caches: data preparation, before the clock), then per step :meth:`batch` and :meth:`loss`,
    and at the end :meth:`rebuild` (sharded runs) and :meth:`save_final` on the main process.
    """

    cfg: Any
    title: str = "model"                     # what ``flowctrl train`` says it trained
    time_limit_s: Optional[float] = None     # end the run (with the final save) after this much training time

    @abc.abstractmethod
    def build(self, accelerator) -> nn.Module:
        """Build (or load) the models; return the module whose trainable parameters the optimizer steps
        (what DDP / FSDP wrap). Frozen parts stay on the task."""

    def param_groups(self, module: nn.Module, params: List[nn.Parameter]) -> List[Dict[str, Any]]:
        """The optimizer's parameter groups over ``params`` (the trainable parameters of ``module``)."""
        return [{"params": params}]

    @abc.abstractmethod
    def setup_data(self, accelerator, log: Callable[[str], None]) -> Any:
        """The training dataset (``len``, ``set_epoch(epoch)``, ``[index]`` → item), after ``accelerator.prepare``."""

    @abc.abstractmethod
    def batch(self, items: List[Dict[str, Any]], indices: List[int], generator: torch.Generator, device) -> Any:
        """Dataset items of one step → what :meth:`loss` takes. Random draws come from ``generator`` only."""

    @abc.abstractmethod
    def loss(self, accelerator, model: nn.Module, batch: Any, generator: torch.Generator) -> torch.Tensor:
        """The scalar loss of one batch; ``model`` is the prepared (wrapped) module of :meth:`build`."""

    def config_dict(self) -> Dict[str, Any]:
        """The config as written to ``output_dir/train_config.json``."""
        return dataclasses.asdict(self.cfg)

    def rebuild(self, fresh: nn.Module) -> None:
        """Make a fresh copy of a trained model ready for its gathered weights (e.g. add the same LoRA
        adapter); used only where parameters are sharded (:func:`with_full_weights`)."""
        return None  # most models need nothing beyond their constructor

    @abc.abstractmethod
    def save_final(self, trained: Any, path: Path) -> Path:
        """Write the trained models (:func:`trained_module`'s result) to ``path``; main process only."""

    def result(self) -> Dict[str, Any]:
        """Extra keys of :func:`run`'s result."""
        return {}


# ---------------------------------------------------------------------------------------------- run
def make_accelerator(cfg: Any):
    """The run's ``Accelerator``: CPU when there is no GPU (then float32: ``mixed_precision`` applies on GPU only)."""
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    return Accelerator(cpu=not cuda, mixed_precision=cfg.mixed_precision if cuda else "no",
                       gradient_accumulation_steps=cfg.gradient_accumulation_steps)


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The CPU generator of every random draw of global step ``step`` on process ``rank``."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 1009 + rank)


def run(task: TrainTask, resume: Optional[str] = None, log: Callable[[str], None] = print,
        stop_after: Optional[int] = None, time_limit_s: Optional[float] = None) -> Dict[str, Any]:
    """Run (or continue) one training run. Returns ``{"step", "loss", "output_dir", "final"}`` and the
    task's :meth:`~TrainTask.result` keys.

    ``resume``: ``latest`` or a checkpoint folder. ``stop_after``: leave the loop after this many steps
    *of this invocation* without the final save (what a kill does; used by tests and for time-sliced jobs).
    ``time_limit_s`` (default: the task's): end the run once this much training time has passed, with a
    checkpoint and the final save (every process stops at the same step). Checkpoints go to
    ``output_dir/checkpoints``; the trained models to ``output_dir/final``.
    """
    from accelerate.utils import set_seed

    cfg = task.cfg
    time_limit_s = task.time_limit_s if time_limit_s is None else time_limit_s
    accelerator = make_accelerator(cfg)
    rank, world = accelerator.process_index, accelerator.num_processes
    out = Path(cfg.output_dir)
    set_seed(cfg.seed)
    try:
        module = task.build(accelerator)
    except (TypeError, ValueError) as error:  # a model section of the config that the model refuses
        raise ConfigError.at(cfg.output_dir, getattr(task, "title", "model"), f"the config's model settings are "
                             f"refused ({' '.join(str(error).split())[:200]})",
                             "check the keys and values of that section") from None
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(task.param_groups(module, params), lr=cfg.learning_rate,
                                  betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay)
    lr_sched = make_lr_scheduler(cfg.lr_scheduler, optimizer, cfg.lr_warmup_steps, cfg.max_steps,
                                 accelerator.gradient_accumulation_steps, world)  # the launcher may override the config's
    model, optimizer, lr_sched = accelerator.prepare(module, optimizer, lr_sched)
    device = accelerator.device
    dataset = task.setup_data(accelerator, log)
    step, metrics = start_run(accelerator, out, task.config_dict(), resume, log)

    model.train()
    loss_value, done_here, out_of_time = float("nan"), 0, False
    t0 = time.time()
    while step < cfg.max_steps:
        epoch, idx = batch_indices(cfg, len(dataset), step, rank, world)
        dataset.set_epoch(epoch)
        items = [dataset[i] for i in idx]
        gen = step_generator(cfg.seed, step, rank)
        batch = task.batch(items, idx, gen, device)
        with accelerator.accumulate(model):
            loss = task.loss(accelerator, model, batch, gen)
            optimizer_step(accelerator, loss, params, optimizer, lr_sched, cfg.grad_clip)
        step += 1
        done_here += 1
        loss_value = record_step(accelerator, metrics, step, loss, lr_sched, t0, cfg.log_every, cfg.max_steps, log)
        if step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
            save_checkpoint(accelerator, out, step, cfg.checkpoints_total_limit)
        if stop_after is not None and done_here >= stop_after:
            break
        if time_limit_s is not None:
            over = torch.tensor([float(time.time() - t0 >= time_limit_s)], device=device)
            if float(accelerator.reduce(over, reduction="sum")) > 0:  # every process stops at the same step
                log(f"time limit {time_limit_s:.0f}s reached at step {step}")
                out_of_time = True
                break

    write_summary(accelerator, model, out, step, loss_value)
    final = None
    if step >= cfg.max_steps or out_of_time:
        save_checkpoint(accelerator, out, step, cfg.checkpoints_total_limit)
        trained = trained_module(accelerator, model, rebuild=task.rebuild)  # every process: gathering is collective
        if accelerator.is_main_process:
            final = task.save_final(trained, out / "final")
            log(f"saved {final}")
    accelerator.wait_for_everyone()
    result = {"step": step, "loss": loss_value, "output_dir": str(out), "final": str(final) if final else None,
              **task.result()}
    accelerator.end_training()
    del model, module, optimizer, lr_sched
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return result


def write_summary(accelerator, model: nn.Module, out: Path, step: int, loss_value: float) -> None:
    """``out/train_summary.json``: world size, step, loss and a DDP sanity check — every process's parameters
    must be identical after the same optimizer steps (sharded runs hold different shards by design: nothing
    to compare, ``in_sync`` is null)."""
    sums, in_sync = None, None
    if not shards_parameters(accelerator):
        local = torch.stack([p.detach().double().sum() + p.detach().double().abs().sum() * 1e-3
                             for p in accelerator.unwrap_model(model).parameters()]).sum().reshape(1).to(accelerator.device)
        sums = accelerator.gather(local).cpu().tolist()
        in_sync = max(sums) - min(sums) == 0.0
    if accelerator.is_main_process:
        (out / "train_summary.json").write_text(json.dumps({
            "world_size": accelerator.num_processes, "step": step, "loss": loss_value, "param_checksums": sums,
            "in_sync": in_sync}, indent=1))


# ------------------------------------------------------------------------------------- batches
def batch_indices(cfg: Any, n: int, step: int, rank: int, world: int) -> Tuple[int, List[int]]:
    """(epoch, dataset indices) of global step ``step`` for process ``rank`` of ``world``."""
    nb = num_batches(n, cfg.batch_size, world)
    epoch, pos = divmod(step, nb)
    order = seeded_order(n, epoch, cfg.data.seed, cfg.data.shuffle)
    if len(order) < cfg.batch_size * world:  # tiny datasets: wrap around
        order = (order * (cfg.batch_size * world // max(1, len(order)) + 1))
    start = (pos * world + rank) * cfg.batch_size
    return epoch, order[start:start + cfg.batch_size]


# ------------------------------------------------------------------------------------- checkpoints
def list_checkpoints(output_dir: os.PathLike) -> List[Path]:
    """The complete checkpoints of a run, oldest first."""
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


def save_checkpoint(accelerator, output_dir: Path, step: int, limit: int) -> Path:
    """``output_dir/checkpoints/checkpoint-<step>`` (accelerator state + step), written to a temporary folder and
    renamed; keeps the newest ``limit`` checkpoints (0: all). Collective: every process calls it."""
    root = output_dir / "checkpoints"
    final = root / f"{CHECKPOINT_PREFIX}{step}"
    tmp = root / f".tmp-{CHECKPOINT_PREFIX}{step}"
    if accelerator.is_main_process:
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
        unregister_temp(tmp)
        for old in list_checkpoints(output_dir)[:-limit] if limit > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _truncate_metrics(path: Path, step: int) -> None:
    if not path.exists():
        return
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
        write_text_atomic(out / "train_config.json", json.dumps(config, indent=1))
        if ckpt is not None or resume:
            _truncate_metrics(metrics, step)
        elif metrics.exists():
            metrics.unlink()
    accelerator.wait_for_everyone()
    return step, metrics


# ------------------------------------------------------------------------------------ optimizer, metrics
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


# ------------------------------------------------------------------------------------ sharded weights
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
    Returns the rebuilt model, or for a container (a stage-1 task's module) a namespace of its rebuilt
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
