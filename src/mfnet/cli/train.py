"""Commands of this family (filled in by its issue)."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    """Adds this family's commands to the ``mfnet`` parser."""
