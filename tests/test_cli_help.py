"""`flowctrl --help` and every subcommand's help are complete and show an example (issue 3)."""
import argparse

import pytest

from flowctrl.cli import build_parser


def _subcommands(parser: argparse.ArgumentParser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,), sub
                yield from _subcommands(sub, prefix + (name,))


def test_top_level_help_lists_every_command_and_an_example():
    text = build_parser().format_help()
    for command in ("generate", "flow", "train", "prepare-data", "bench"):
        assert command in text
    assert "example" in text and "flowctrl generate --image" in text


@pytest.mark.parametrize("path,parser", list(_subcommands(build_parser())), ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_every_subcommand_help_shows_an_example(path, parser):
    text = parser.format_help()
    assert "example" in text.lower(), f"flowctrl {' '.join(path)} --help has no example"
    assert "flowctrl " + path[0] in text or "-m flowctrl" in text
