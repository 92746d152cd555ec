"""Helpers shared by the command modules: error handling, JSON output, shape parsing."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from mfnet.data import transforms
from mfnet.errors import MfnetError


def run_handler(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Runs a command handler, turning user errors into one line on stderr and a non-zero status.

    ``MfnetError`` (and a missing file) print ``mfnet: error: <sentence>`` and return 2; Ctrl-C returns 130.
    Any other exception is a bug and keeps its traceback.
    """
    try:
        return int(handler(args) or 0)
    except MfnetError as err:
        print(f"mfnet: error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"mfnet: error: no such file or directory: {err.filename or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mfnet: interrupted", file=sys.stderr)
        return 130


def print_json(obj: Any) -> None:
    """Prints one JSON object on one line of stdout."""
    print(json.dumps(obj, default=_json_default))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "__fspath__"):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def parse_shape(text: str) -> tuple[int, ...]:
    """Parses ``"1x3x16x224x224"`` into ``(1, 3, 16, 224, 224)``; raises ``MfnetError`` on bad text."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise MfnetError(f"invalid shape {text!r}: write positive sizes joined by 'x', e.g. 1x3x16x224x224")
    return shape


def parse_resize(text: str) -> int | tuple[int, int]:
    """``--resize``: ``"256"`` (the short side) or ``"340x256"`` (W x H) -> ``256`` or ``(256, 340)`` (H, W)."""
    try:
        return transforms.parse_resize(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
