"""Helpers shared by the command modules: the error boundary, argument types, JSON output, shape parsing."""

from __future__ import annotations

import argparse
import errno
import json
import math
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from mfnet.data import transforms
from mfnet.errors import MfnetError


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr (exit 2), pointing at ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class ShapeError(MfnetError, argparse.ArgumentTypeError):
    """A shape argument that is not positive sizes joined by ``x`` (a usage error inside argparse)."""


def report_error(message: str) -> None:
    """Prints ``mfnet: error: <message>`` as one line on stderr (newlines in the message become spaces)."""
    print(f"mfnet: error: {' '.join(str(message).split())}", file=sys.stderr)


def run_handler(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Runs a command handler, turning user errors into one line on stderr and a non-zero status.

    ``MfnetError`` (and a missing file) print ``mfnet: error: <sentence>`` and return 2; an operating-system
    error (a full disk, no permission) prints its reason and the file and returns 1; Ctrl-C returns 130.
    Any other exception is a bug and keeps its traceback.
    """
    try:
        return int(handler(args) or 0)
    except MfnetError as err:
        report_error(str(err))
        return 2
    except FileNotFoundError as err:
        report_error(f"no such file or directory: {err.filename or err}")
        return 2
    except OSError as err:
        report_error(_os_error(err))
        return 1
    except KeyboardInterrupt:
        print("mfnet: interrupted", file=sys.stderr)
        return 130


def _os_error(err: OSError) -> str:
    reason = err.strerror or str(err) or type(err).__name__
    where = f": {err.filename}" if err.filename else ""
    hint = {
        errno.ENOSPC: "free some space or write elsewhere",
        errno.EDQUOT: "free some space or write elsewhere",
        errno.EFBIG: "free some space or write elsewhere",
        errno.EACCES: "check the permissions or choose another path",
        errno.EROFS: "choose a writable path",
    }.get(err.errno or 0, "check the path" if err.errno else "the disk may be full: free some space or write elsewhere")
    return f"{reason}{where}; {hint}"


def _number(text: str, kind: type, *, minimum: float, inclusive: bool, what: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number: give {what}") from None
    if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
        raise argparse.ArgumentTypeError(f"{text!r} is out of range: give {what}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    return _number(text, int, minimum=1, inclusive=True, what="a whole number of at least 1")


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    return _number(text, int, minimum=0, inclusive=True, what="a whole number of at least 0")


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0 (``nan`` and ``inf`` are refused)."""
    return _number(text, float, minimum=0.0, inclusive=False, what="a finite number above 0")


def fraction(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1."""
    value = positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range: give a number between 0 and 1")
    return value


def print_json(obj: Any) -> None:
    """Prints one JSON object on one line of stdout.

    Raises:
        MfnetError: The object holds NaN or infinite numbers (which are not JSON): the model's output is broken.
    """
    try:
        text = json.dumps(obj, default=_json_default, allow_nan=False)
    except ValueError:
        raise MfnetError(
            "the results hold NaN or infinite numbers (not valid JSON): the model's weights or the input are "
            "broken; check the checkpoint"
        ) from None
    print(text)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "__fspath__"):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def parse_shape(text: str) -> tuple[int, ...]:
    """Parses ``"1x3x16x224x224"`` into ``(1, 3, 16, 224, 224)`` (an argparse type; bad text is a usage error)."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise ShapeError(f"invalid shape {text!r}: write positive sizes joined by 'x', e.g. 1x3x16x224x224")
    return shape


def parse_resize(text: str) -> int | tuple[int, int]:
    """``--resize``: ``"256"`` (the short side) or ``"340x256"`` (W x H) -> ``256`` or ``(256, 340)`` (H, W)."""
    try:
        return transforms.parse_resize(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
