"""``flowctrl generate --jobs jobs.jsonl``: many generations from one file, resumable, optionally spread
over processes / GPUs with ``accelerate launch``.

One JSON object per line: a control bundle (the keys of ``docs/controls.md``: arrows, drags, camera,
pose, mask, depth, strength, ...) plus ``"image"`` and ``"output"``, and optionally per-job
``"frames"``, ``"fps"``, ``"size"`` ("WxH"), ``"seed"`` and ``"prompt"``, which override the command
line's. Paths are relative to the jsonl file's folder; blank lines and lines starting with ``#`` are
skipped. Every other ``flowctrl generate`` flag (``--backend``, ``--fill``, ``--gif``, ...) applies to
every job::

    {"image": "a.png", "output": "out/a.mp4", "camera": "orbit:degrees=20"}
    {"image": "b.png", "output": "out/b.mp4", "arrows": "b_arrows.json", "frames": 25}

A job whose output already exists is skipped (outputs appear only complete, so an interrupted batch
resumes where it stopped). A failing job is reported in one line and the others go on; the summary at
the end counts done / skipped / failed, and the exit status is 1 if any job failed (2 if the jobs file
itself cannot be read). Under ``accelerate launch -m flowctrl generate --jobs ...`` every process takes
its own share of the jobs (accelerate's ``PartialState.split_between_processes``, by line order).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from flowctrl.commands._messages import cli_warning_text
from flowctrl.errors import ControlFileError, FlowCtrlError, InputError

# Per-job keys that are render options, not controls: (json key, argparse dest)
JOB_OPTIONS: Tuple[Tuple[str, str], ...] = (
    ("frames", "frames"), ("fps", "fps"), ("size", "size"), ("seed", "seed"), ("prompt", "prompt"))
# Flags that name one image or output and so make no sense for a whole batch
SINGLE_RUN_FLAGS = (("image", "--image"), ("output", "-o"), ("controls", "--controls"), ("preview", "--preview"),
                    ("png_dir", "--png-dir"), ("save_flow", "--save-flow"))


def add_jobs_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--jobs FILE`` to ``flowctrl generate``'s parser."""
    parser.add_argument_group("batch").add_argument(
        "--jobs", metavar="FILE",
        help="run many generations: one JSON object per line, a control bundle plus \"image\" and \"output\" "
             "(paths relative to FILE); existing outputs are skipped; under accelerate launch the jobs are "
             "split across processes")


@dataclasses.dataclass
class InlineBundle:
    """A job's control bundle, read by ``generate`` in place of a ``--controls`` file."""

    data: Dict[str, Any]
    base_dir: Path
    source: str

    def load(self, image_size: Tuple[int, int]) -> Any:
        from flowctrl.controls import Controls

        return Controls.from_dict(self.data, base_dir=self.base_dir, source=self.source, image_size=image_size)


@dataclasses.dataclass
class Job:
    """One line of the jobs file. ``error`` is set when the line itself is unusable."""

    line: int
    output: Optional[Path] = None
    image: Optional[Path] = None
    bundle: Dict[str, Any] = dataclasses.field(default_factory=dict)
    options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    error: Optional[str] = None

    @property
    def name(self) -> str:
        return f"line {self.line}" + (f" ({self.output})" if self.output is not None else "")


def read_jobs(path: Path) -> List[Job]:
    """Parse the jsonl file; a bad line becomes a :class:`Job` with ``error`` (so the others still run).

    Raises:
        InputError: the file is missing or unreadable.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError.at(str(path), "--jobs", "does not exist", "give a .jsonl file, one job per line") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError.at(str(path), "--jobs", f"cannot be read ({type(error).__name__})",
                            "give a UTF-8 .jsonl file, one job per line") from None
    base = path.parent
    jobs: List[Job] = []
    seen: Dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        job = Job(line=number)
        jobs.append(job)
        try:
            data = json.loads(line)
        except json.JSONDecodeError as error:
            job.error = f"not valid JSON ({error.msg} at column {error.colno})"
            continue
        if not isinstance(data, dict):
            job.error = 'is not a JSON object; give {"image": ..., "output": ..., <controls>}'
            continue
        for key in ("image", "output"):
            if not isinstance(data.get(key), str) or not data[key]:
                job.error = f'has no "{key}" path'
                break
        if job.error:
            continue
        job.image = base / data["image"]
        job.output = base / data.pop("output")
        job.options = {dest: data.pop(key) for key, dest in JOB_OPTIONS if key in data}
        job.bundle = data  # "image" stays: a bundle may read its size from it
        key = os.path.normpath(os.path.abspath(job.output))
        if key in seen:
            job.error = f"writes the same output as line {seen[key]}"
            continue
        seen[key] = number
    return jobs


def output_done(path: Path) -> bool:
    """A finished output: a file, or a non-empty PNG folder (writers rename into place only when complete)."""
    if path.is_dir():
        return any(path.iterdir())
    return path.exists()


def _job_args(args: argparse.Namespace, job: Job, jobs_file: Path) -> argparse.Namespace:
    """The ``flowctrl generate`` arguments of one job: the command line's, with the job's image, output,
    inline bundle and options."""
    ns = copy.copy(args)
    ns.jobs = None
    ns.image, ns.output, ns.quiet = str(job.image), str(job.output), True
    ns.controls = InlineBundle(job.bundle, jobs_file.parent, f"{jobs_file}: line {job.line}")
    for dest, value in job.options.items():
        if dest in ("frames", "seed") and not (isinstance(value, int) and not isinstance(value, bool)):
            raise ControlFileError.at(str(jobs_file), f"line {job.line}: {dest}", f"is {value!r}", "give an integer")
        if dest == "fps" and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
            raise ControlFileError.at(str(jobs_file), f"line {job.line}: fps", f"is {value!r}", "give a number, e.g. 8")
        if dest in ("size", "prompt") and not isinstance(value, str):
            raise ControlFileError.at(str(jobs_file), f"line {job.line}: {dest}", f"is {value!r}",
                                      'give a string, e.g. "512x512"' if dest == "size" else "give a string")
        setattr(ns, dest, value)
    return ns


def _check_batch_flags(args: argparse.Namespace) -> None:
    for dest, flag in SINGLE_RUN_FLAGS:
        if getattr(args, dest, None):
            raise InputError.at(flag, "--jobs", "names one run's file and cannot apply to a batch",
                                "put it in each job's line (image, output, controls) or drop it")
    if args.gif not in (None, ""):
        raise InputError.at("--gif", "--jobs", "a GIF path cannot apply to every job",
                            "give --gif without a path (each job's output with .gif)")


def _distributed() -> Any:
    """accelerate's process state when launched by ``accelerate launch`` / torchrun, else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    import torch

    # without GPUs, the CPU processes talk over gloo (PartialState(cpu=True)); with GPUs, one per process
    return PartialState(cpu=not torch.cuda.is_available())


class _Ticker:
    """The progress over jobs: a tqdm bar on a terminal, else one plain line per finished job."""

    def __init__(self, total: int, enabled: bool, prefix: str) -> None:
        self.total, self.count, self.prefix, self.enabled = total, 0, prefix, enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            from flowctrl.commands._common import terminal_size

            cols, rows = terminal_size(sys.stderr)  # explicit: a 0x0 pseudo-terminal would hide the bar
            self.bar = tqdm(total=total, desc=f"{prefix}jobs", file=sys.stderr, unit="job", ncols=min(100, cols),
                            nrows=rows)

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def step(self, status: str, job: Job, seconds: float) -> None:
        self.count += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled:
            self.line(f"{self.prefix}[{self.count}/{self.total}] {status} {job.output or job.name} ({seconds:.1f} s)")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_jobs(args: argparse.Namespace, run_one: Callable[[argparse.Namespace], int]) -> int:
    """Run every job of ``args.jobs`` (this process's share of them under accelerate); 0 if none failed, else 1.

    ``run_one(job_args)``: one generation (``flowctrl generate``'s, without its own warning printer).
    """
    _check_batch_flags(args)
    jobs_file = Path(args.jobs)
    jobs = read_jobs(jobs_file)
    if not jobs:
        raise InputError.at(str(jobs_file), "--jobs", "has no jobs", 'give one JSON object per line, '
                            'e.g. {"image": "a.png", "output": "a.mp4", "camera": "orbit"}')
    state = _distributed()
    prefix = f"[rank {state.process_index}] " if state is not None else ""
    if state is not None:
        with state.split_between_processes(jobs) as share:  # by line order: every job in exactly one process
            mine = list(share)
    else:
        mine = jobs

    results: List[Tuple[int, str]] = []  # (line, "done" | "skipped" | "failed")
    ticker = _Ticker(len(mine), not args.quiet, prefix)
    warned: set = set()
    for job in mine:
        t0 = time.perf_counter()
        if job.error is None and output_done(job.output):
            results.append((job.line, "skipped"))
            ticker.step("skipped", job, 0.0)
            continue
        try:
            if job.error is not None:
                raise ControlFileError(f"{jobs_file}: line {job.line}: {job.error}")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                run_one(_job_args(args, job, jobs_file))
            for w in caught:  # each distinct library warning once per batch, not once per job
                message = cli_warning_text(w.message, w.category)
                if message not in warned and not args.quiet:
                    warned.add(message)
                    ticker.line(f"{prefix}flowctrl generate: warning: {message}")
            results.append((job.line, "done"))
            ticker.step("done", job, time.perf_counter() - t0)
        except FlowCtrlError as error:
            results.append((job.line, "failed"))
            ticker.line(f"{prefix}flowctrl generate: job {job.name} failed: {error}")
            ticker.step("failed", job, time.perf_counter() - t0)
        except Exception as error:  # noqa: BLE001 - one broken job must not stop the batch
            results.append((job.line, "failed"))
            ticker.line(f"{prefix}flowctrl generate: job {job.name} failed: {type(error).__name__}: {error}")
            ticker.step("failed", job, time.perf_counter() - t0)
    ticker.close()

    if state is not None:
        from accelerate.utils import gather_object

        results = gather_object(results)  # every process's results, on every process
        state.destroy_process_group()
    counts = {status: sum(1 for _, s in results if s == status) for status in ("done", "skipped", "failed")}
    if (state is None or state.is_main_process) and (not args.quiet or counts["failed"]):
        failed = sorted(line for line, s in results if s == "failed")
        tail = f" (lines {', '.join(map(str, failed))})" if failed else ""
        processes = f" in {state.num_processes} processes" if state is not None else ""
        print(f"flowctrl generate: {len(results)} jobs{processes}: {counts['done']} done, {counts['skipped']} "
              f"skipped (output exists), {counts['failed']} failed{tail}", file=sys.stderr)
    return 1 if counts["failed"] else 0
