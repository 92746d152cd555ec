"""Class names shipped with the package, and class lists read from files.

The packaged lists (``kinetics400``, ``ucf101``, ``hmdb51``) follow the order of the MF-Net authors'
released checkpoints: line ``i`` is class index ``i``. Kinetics-400 and HMDB51 write spaces as ``_`` in
their files; names are returned with spaces (``air_drumming`` -> ``air drumming``). UCF-101's CamelCase
names are kept as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from mfnet.errors import DataError

BUILTIN_LABELS = ("kinetics400", "ucf101", "hmdb51")

# Lists whose files write spaces as underscores.
_UNDERSCORE_SPACES = frozenset({"kinetics400", "hmdb51"})


def display_name(name: str) -> str:
    """``"passing_American_football_(in_game)"`` -> ``"passing American football (in game)"``."""
    return name.replace("_", " ")


def load_labels(spec: str | Path) -> list[str]:
    """Returns the class names of a packaged list or of a text file.

    Args:
        spec: ``"kinetics400"``, ``"ucf101"``, ``"hmdb51"``, or the path of a text file with one class name
            per line (line ``i`` is class ``i``; blank lines are ignored; names are kept as written).

    Raises:
        DataError: If the file is missing or holds no names.
    """
    if str(spec) in BUILTIN_LABELS:
        text = resources.files(__name__).joinpath(f"{spec}.txt").read_text(encoding="utf-8")
        names = [line.strip() for line in text.splitlines() if line.strip()]
        return [display_name(n) for n in names] if spec in _UNDERSCORE_SPACES else names
    path = Path(spec)
    if not path.is_file():
        raise DataError(
            f"no label list {str(spec)!r}: give one of {', '.join(BUILTIN_LABELS)} or a text file with one "
            "class name per line"
        )
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise DataError(f"label file {path} holds no class names: write one name per line, class 0 first")
    return names


_SHIPPED_BY_SIZE = {400: "kinetics400", 101: "ucf101", 51: "hmdb51"}


def class_names_for(labels: str | Path | None, meta: Mapping[str, Any]) -> list[str] | None:
    """The class names of a model: ``labels`` (a packaged list or a file), else the checkpoint's ``classes``, else
    the packaged list of the classifier's size (400, 101, 51), else ``None``.

    Args:
        labels: What the user asked for (``--labels``), or ``None``.
        meta: The checkpoint's metadata (``num_classes``, ``classes``).

    Raises:
        DataError: ``labels`` cannot be read, or has another number of names than the classifier.
    """
    num_classes = meta.get("num_classes")
    if labels is not None:
        names = load_labels(labels)
        if num_classes and len(names) != num_classes:
            raise DataError(
                f"--labels {labels} has {len(names)} names but the model has {num_classes} classes: give the "
                "list the model was trained with"
            )
        return names
    if meta.get("classes"):
        return [str(c) for c in meta["classes"]]
    return load_labels(_SHIPPED_BY_SIZE[num_classes]) if num_classes in _SHIPPED_BY_SIZE else None
