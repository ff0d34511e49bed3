"""``flowctrl app``: start the local web UI (gradio) — upload an image, click arrows, pick a camera, generate."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional, Tuple

HELP = "start a local web UI: upload an image, click arrows onto it, pick a camera, generate"
EPILOG = """\
examples:
  flowctrl app                         # http://127.0.0.1:7860 on this machine
  flowctrl app --host 0.0.0.0 --port 8000 --auth alice:s3cret   # reachable from the network: log in
  FLOWCTRL_APP_AUTH=alice:s3cret flowctrl app --host 0.0.0.0     # the same, password not in `ps`
  flowctrl app --model THUDM/CogVideoX-5b-I2V --preset offload   # the guided backend (GPU), prompt box added

needs gradio: pip install "flowctrl[app]". The UI renders with the warp backend on the CPU (no weights).
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("app", help=HELP, description=HELP, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--share", action="store_true", help="also ask gradio for a public share link (needs internet)")
    p.add_argument("--auth", metavar="USER:PASSWORD", default=None,
                   help="require this login (gradio's auth); default: $FLOWCTRL_APP_AUTH. Use it whenever --host "
                        "is not 127.0.0.1 or --share is on")
    p.add_argument("--frames", type=int, default=49, help="default number of frames in the UI (default 49)")
    p.add_argument("--fps", type=float, default=8.0, help="default frame rate in the UI (default 8)")
    p.add_argument("--model", metavar="PATH|HUB_ID",
                   help="render with the guided backend and this image-to-video model (CogVideoX-I2V / Wan I2V; GPU)")
    p.add_argument("--preset", metavar="NAME", help="memory preset of the guided backend: full, offload, low, cpu")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flowctrl.app.ui import build_demo
    from flowctrl.errors import InputError
    from flowctrl.render.warp_renderer import MAX_FRAMES

    if not 1 <= args.port <= 65535:
        raise InputError.at("--port", None, f"is {args.port}", "give a port in 1-65535, e.g. 7860")
    if not 2 <= args.frames <= min(MAX_FRAMES, 129):
        raise InputError.at("--frames", None, f"is {args.frames}", f"give 2 to {min(MAX_FRAMES, 129)}")
    if not 1 <= args.fps <= 30:
        raise InputError.at("--fps", None, f"is {args.fps}", "give 1 to 30")
    auth = parse_auth(args.auth if args.auth is not None else os.environ.get(AUTH_ENV))
    if args.preset is not None and not args.model:
        raise InputError.at("--preset", None, "is only used with --model", "add --model PATH_OR_HUB_ID")
    if auth is None and (args.share or not is_loopback(args.host)):
        where = "a public share link" if args.share else f"--host {args.host}"
        print(f"flowctrl app: WARNING: {where} without --auth: ANYONE who can reach this address can use the app "
              "and its CPU; add --auth USER:PASSWORD (or set FLOWCTRL_APP_AUTH)", file=sys.stderr)
    pipeline = None
    if args.model:  # loaded before the UI starts: a bad model is one line, exit 2
        from flowctrl.pipelines.flowctrl_pipeline import FlowCtrlPipeline

        pipeline = FlowCtrlPipeline(backend="guided", model=args.model, preset=args.preset)
    demo = build_demo(default_frames=args.frames, default_fps=args.fps, pipeline=pipeline)  # no gradio -> exit 2
    demo.queue().launch(server_name=args.host, server_port=args.port, share=args.share, auth=auth)
    return 0


AUTH_ENV = "FLOWCTRL_APP_AUTH"


def parse_auth(text: Optional[str]) -> Optional[Tuple[str, str]]:
    """``"user:password"`` → ``(user, password)`` for gradio's ``launch(auth=...)``; None stays None."""
    from flowctrl.errors import InputError

    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise InputError.at("--auth", None, "is not USER:PASSWORD", "give e.g. --auth alice:s3cret (both non-empty)")
    return user, password


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host.strip().lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: assume it is reachable from elsewhere
