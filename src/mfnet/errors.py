"""Errors meant for people.

Every ``MfnetError`` carries one sentence that names the thing that is wrong and how to fix it. The
command line prints that sentence and exits non-zero without a traceback; library users can catch the
specific subclasses.
"""

from __future__ import annotations


class MfnetError(Exception):
    """An error caused by the user's input (a path, a name, a file), with a one-sentence message."""


class UnknownModelError(MfnetError, KeyError):
    """A model name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(MfnetError):
    """A checkpoint that is missing, unreadable or made for another architecture."""


class VideoError(MfnetError):
    """A video file that is missing or cannot be decoded."""


class DataError(MfnetError):
    """An annotation file or dataset folder that is missing or malformed."""
