"""The ``flowctrl`` command line: one dispatcher, one module per subcommand in flowctrl/commands/.

Each command module defines ``register(subparsers) -> None`` which adds its parser and sets
``func=run`` where ``run(args) -> int``. User errors (:class:`FlowCtrlError`) become one line on
stderr and exit status 2; nothing else is printed.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from typing import List, NoReturn, Optional

from flowctrl.errors import FlowCtrlError

# Order = order in `flowctrl --help`.
COMMAND_MODULES = [
    "generate",
    "flow",
    "train",
    "prepare_data",
    "bench",
    "app",
]

DESCRIPTION = """\
flowctrl: animate one image with any mix of motion controls (arrows, drags, camera, reference
video, pose keypoints, masks, motion strength). Every control becomes one dense optical-flow
field, and a video is rendered from the image and that flow.

example:
  flowctrl generate --image examples/astronaut.png --camera configs/camera/orbit.json \\
      --arrows examples/a.json -o out.mp4
"""


class _OneLineErrorParser(argparse.ArgumentParser):
    """Bad usage (a missing or malformed flag) is one line on stderr and exit status 2, like every
    other user error: ``flowctrl generate: error: the following arguments are required: --image; see
    flowctrl generate --help``. Subcommand parsers inherit this class through ``add_subparsers``."""

    def error(self, message: str) -> "NoReturn":  # type: ignore[override]
        line = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {line}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrorParser(
        prog="flowctrl", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    from flowctrl import __version__

    parser.add_argument("--version", action="version", version=f"flowctrl {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(f"flowctrl.commands.{name}") is None:
            continue  # a command whose module is not part of this install
        importlib.import_module(f"flowctrl.commands.{name}").register(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from flowctrl.io_safety import install_signal_handlers, restore_signal_handlers

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    previous = install_signal_handlers()  # SIGTERM / SIGHUP clean up like SIGINT (no temporary file is left)
    try:
        return _run(args)
    finally:
        restore_signal_handlers(previous)


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command; every failure a user can cause becomes one stderr line."""
    from flowctrl.io_safety import Terminated, cleanup_pending

    try:
        return int(args.func(args) or 0)
    except FlowCtrlError as error:
        print(f"flowctrl {args.command}: error: {error}", file=sys.stderr)
        return 2
    except Terminated as stop:
        cleanup_pending()
        print(f"flowctrl {args.command}: stopped by {stop}", file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:
        cleanup_pending()
        print(f"flowctrl {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as error:  # a write or read the commands did not name (disk full, read-only folder)
        cleanup_pending()
        where = f"{error.filename}: " if getattr(error, "filename", None) else ""
        reason = error.strerror or " ".join(str(error).split()) or type(error).__name__
        print(f"flowctrl {args.command}: error: {where}{reason}; check the path, its permissions and free space",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
