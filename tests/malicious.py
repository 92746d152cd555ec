"""Malicious pickles for the tests that weights files never run code (shared by the CLI and loader tests)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch


class Payload:
    """Unpickling it creates the folder ``marker``: it stands in for any command a malicious file runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.mkdir, (str(self.marker),)


def pickled(obj: object) -> bytes:
    """``obj`` as ``torch.save`` writes it."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()
