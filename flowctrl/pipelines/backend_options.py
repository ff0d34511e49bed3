"""Which options each stage-2 backend takes, declared once (no heavy imports: the CLI reads it at start-up).

Two kinds of options:

* **construction options** (``FlowCtrlPipeline(backend=..., **options)``; CLI flags): what the backend
  is built with — weights, memory preset, sampling defaults;
* **render options** (``pipe(image, controls, **options)``): what one call may change; the options a
  backend *ignores* are accepted with one log line (scripts pass one set of options to every backend),
  every other unknown option is refused with one line.

The CLI's backend flags, its "only used by" messages and the backends' own checks all come from here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Tuple

__all__ = ["BackendOption", "FLAGS", "BACKENDS", "BackendSpec", "backends_taking", "check_render_options",
           "construction_options", "flags_not_taken"]


@dataclass(frozen=True)
class BackendOption:
    """A construction option: its keyword, its CLI flag and the flag's argparse ``dest``."""

    keyword: str
    flag: str
    dest: str


# every construction flag of `flowctrl generate` that belongs to a backend (defaults None = "not given")
FLAGS: Tuple[BackendOption, ...] = (
    BackendOption("model", "--model", "model"),
    BackendOption("negative_prompt", "--negative-prompt", "negative_prompt"),
    BackendOption("num_inference_steps", "--steps", "steps"),
    BackendOption("guidance_scale", "--guidance", "guidance"),
    BackendOption("flow_guidance_scale", "--flow-guidance", "flow_guidance"),
    BackendOption("preset", "--preset", "preset"),
    BackendOption("long_video", "--long-video", "long_video"),
    BackendOption("lora", "--lora", "lora"),
    BackendOption("lora_scale", "--lora-scale", "lora_scale"),
    BackendOption("t_weak", "--t-weak", "t_weak"),
    BackendOption("t_strong", "--t-strong", "t_strong"),
)


@dataclass(frozen=True)
class BackendSpec:
    """construction: keywords of :data:`FLAGS` it is built with; render: ``render()`` keywords it uses;
    ignored: ``render()`` keywords it accepts and ignores (with one log line)."""

    construction: Tuple[str, ...]
    render: Tuple[str, ...]
    ignored: Tuple[str, ...] = ()
    hint: str = ""


BACKENDS: Dict[str, BackendSpec] = {
    "warp": BackendSpec(
        construction=(), render=("fill",),
        ignored=("prompt", "negative_prompt", "num_inference_steps", "guidance_scale"),
        hint="add --backend guided --model PATH_OR_HUB_ID (or --backend diffusion --model PATH)"),
    "diffusion": BackendSpec(
        construction=("model", "negative_prompt", "num_inference_steps", "guidance_scale", "flow_guidance_scale",
                      "preset", "long_video", "lora", "lora_scale"),
        render=("prompt", "negative_prompt", "prompt_embeds", "negative_prompt_embeds", "num_inference_steps",
                "guidance_scale", "flow_guidance_scale", "long_video", "gamma", "omega", "fill"),
        hint="add --backend diffusion --model PATH"),
    "guided": BackendSpec(
        construction=("model", "negative_prompt", "num_inference_steps", "guidance_scale", "preset", "t_weak",
                      "t_strong"),
        render=("prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "t_weak", "t_strong", "fill",
                "window"),
        ignored=("flow_guidance_scale",),
        hint="add --backend guided --model PATH_OR_HUB_ID"),
}


def backends_taking(keyword: str) -> List[str]:
    """Names of the backends built with construction option ``keyword``."""
    return [name for name, spec in BACKENDS.items() if keyword in spec.construction]


def flags_not_taken(backend: str, given: Iterable[str]) -> List[BackendOption]:
    """The given construction options (keywords) that ``backend`` is not built with."""
    takes = set(BACKENDS[backend].construction)
    return [o for o in FLAGS if o.keyword in set(given) and o.keyword not in takes]


def construction_options(backend: str, values: Mapping[str, Any]) -> Dict[str, Any]:
    """``{keyword: value}`` of the options ``backend`` takes, from ``values`` keyed by argparse ``dest``
    (None = not given, left out)."""
    takes = set(BACKENDS[backend].construction)
    return {o.keyword: values[o.dest] for o in FLAGS
            if o.keyword in takes and o.dest in values and values[o.dest] is not None}


def check_render_options(backend: str, options: Mapping[str, Any]) -> List[str]:
    """Refuse render options ``backend`` does not know (one ``InputError`` line); return the ignored ones given."""
    from flowctrl.errors import InputError

    spec = BACKENDS[backend]
    unknown = sorted(k for k in options if k not in spec.render and k not in spec.ignored)
    if unknown:
        users = sorted({name for name, s in BACKENDS.items() for k in unknown if k in s.render} - {backend})
        fix = f"remove them, or use the {' or '.join(users)} backend" if users else "remove them"
        raise InputError.at(None, "backend options", f"the {backend} backend has no option(s) {', '.join(unknown)}",
                            fix)
    return [k for k in spec.ignored if options.get(k) is not None]
