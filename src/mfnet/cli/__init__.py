"""The ``mfnet`` command line: argument parsing and printing only, over the library's functions.

Each command family lives in its own module with a ``register(commands, groups)`` function that adds
its sub-parsers; ``commands`` is the top-level sub-parser set and ``groups`` maps a group name (such as
``"data"``) to the sub-parser set of ``mfnet <group> ...``. A sub-parser sets ``handler`` to a function
``handler(args) -> int`` that returns the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from mfnet import __version__
from mfnet.cli._common import OneLineParser, report_error, run_handler
from mfnet.errors import MfnetError

# Modules that add commands, in the order their commands are listed by ``mfnet --help``.
COMMAND_MODULES = (
    "mfnet.cli.models",
    "mfnet.cli.weights",
    "mfnet.cli.data",
    "mfnet.cli.train",
    "mfnet.cli.predict",
    "mfnet.cli.bench",
    "mfnet.cli.demo",
)


def build_parser() -> argparse.ArgumentParser:
    """Builds the full ``mfnet`` parser from every command module."""

    parser = OneLineParser(
        prog="mfnet",
        description="Multi-Fiber Networks for video recognition: models, data, training, prediction, export.",
    )
    parser.add_argument("--version", action="version", version=f"mfnet {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    data = commands.add_parser("data", help="dataset tools: index, check, make-motion")
    data.set_defaults(handler=lambda args: _print_help(data))
    groups = {"data": data.add_subparsers(title="data commands", metavar="DATA_COMMAND")}
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(commands, groups)
    parser.set_defaults(handler=lambda args: _print_help(parser))
    return parser


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``mfnet`` with ``argv`` (default: ``sys.argv[1:]``) and returns the exit status."""
    try:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    except MfnetError as err:  # raised by an argument type
        report_error(str(err))
        return 2
    except SystemExit as exit_:  # a usage error (one line already printed), or --help / --version
        return exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 2
    return run_handler(args.handler, args)
