"""Which clips a checkpoint gets: its own ``InputSpec``, a user's overrides, and a one-line account of both.

``predict``, ``features``, ``eval``, ``export`` and ``Predictor.from_weights`` all start from
:func:`input_spec_of`: the spec stored in the checkpoint's metadata; for checkpoints written before specs were
stored, the ``recipe.json`` of the run folder the file sits in; for a registered checkpoint, its record's; else the
paper's test setting. :func:`apply_overrides` then applies options the user gave and says, in one line, what they
changed, so a model is never silently fed clips it was not trained on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mfnet.data.transforms import describe_test_protocol, protocol_of_resize
from mfnet.errors import MfnetError
from mfnet.models.weights import PAPER_IMAGE_INPUT, PAPER_INPUT, InputSpec, WeightsRecord, check_input_spec

_OPTION_NAMES = {
    "frames": "--frames",
    "interval": "--interval",
    "crop_size": "--size",
    "resize": "--resize",
    "normalization": "--normalization",
    "test_protocol": "--test-protocol",
}


@dataclass(frozen=True)
class ResolvedSpec:
    """An ``InputSpec`` and where it came from.

    Attributes:
        spec: The clips to use.
        source: Where the base spec came from, e.g. ``"the checkpoint"`` or ``"the paper's defaults"``.
        stored: Whether the weights carry the spec themselves (a checkpoint's metadata or its run's recipe).
        note: A sentence for the user when the clips differ from what the checkpoint stores, or the checkpoint
            stores none (else ``None``).
        overridden: The fields the user's options changed.
    """

    spec: InputSpec
    source: str
    stored: bool
    note: str | None = None
    overridden: tuple[str, ...] = ()

    def describe_geometry(self) -> str:
        """``test protocol: authors (frames resized to 256x256, aspect not kept; centre crop 224x224) [source]``."""
        text = describe_test_protocol(
            self.spec.test_protocol, crop_size=self.spec.crop_size, resize=self.spec.eval_resize
        )
        source = "--resize" if "resize" in self.overridden else self.source
        return f"test protocol: {text} [{source}]"


def input_spec_of_recipe(recipe: Any) -> InputSpec:
    """The evaluation clips of a training recipe (a ``Recipe`` or its dict)."""
    get = recipe.get if isinstance(recipe, Mapping) else lambda key, default=None: getattr(recipe, key, default)
    resize = get("resize", 256)
    return InputSpec(
        frames=int(get("clip_length", 16)),
        interval=int(get("frame_interval", 2)),
        crop_size=int(get("crop_size", 224)),
        resize=tuple(resize) if isinstance(resize, (list, tuple)) else int(resize),
        normalization=str(get("normalization", "mfnet")),
        test_protocol=str(get("test_protocol", None) or "keep-aspect"),
    )


def _run_recipe(weights: Path | None) -> dict[str, Any] | None:
    if weights is None:
        return None
    for candidate in (weights.parent / "recipe.json", weights.parent.parent / "recipe.json"):
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
            except (OSError, ValueError):
                return None
            return data if isinstance(data, dict) else None
    return None


def input_spec_of(
    meta: Mapping[str, Any] | None,
    *,
    weights: str | Path | None = None,
    record: WeightsRecord | None = None,
    image: bool = False,
) -> ResolvedSpec:
    """The clips a checkpoint expects, and where that answer came from.

    Args:
        meta: The checkpoint's ``"mfnet"`` metadata (``None`` for the authors' files and plain state dicts).
        weights: The checkpoint's path, to find the ``recipe.json`` of a run folder written before checkpoints
            stored their spec.
        record: The registry record the checkpoint was resolved from, if any.
        image: The model is a 2D image model (the paper's image setting is the fallback).
    """
    stored = (meta or {}).get("input_spec")
    if stored:
        return ResolvedSpec(InputSpec.from_dict(dict(stored)), "the checkpoint", True)
    recipe = _run_recipe(Path(weights) if weights is not None else None)
    if recipe is not None:
        return ResolvedSpec(input_spec_of_recipe(recipe), "the run's recipe.json", True)
    if record is not None:
        return ResolvedSpec(
            record.input_spec,
            f"the registry record {record.name}",
            False,
            f"the checkpoint stores no clip spec: using the registry record {record.name}'s "
            f"({record.input_spec.describe()})",
        )
    default = PAPER_IMAGE_INPUT if image else PAPER_INPUT
    return ResolvedSpec(
        default,
        "the paper's defaults",
        False,
        f"the checkpoint stores no clip spec: using the paper's test setting ({default.describe()}); "
        "pass --frames/--interval/--size/--resize if it was trained otherwise",
    )


def apply_overrides(resolved: ResolvedSpec, **overrides: Any) -> ResolvedSpec:
    """``resolved`` with the fields the user gave (``None`` keeps the stored value), and a note naming them.

    A new crop size without a new resize keeps the stored ratio of resize to crop (224 -> 256 becomes 64 -> 73).

    Raises:
        MfnetError: A field ends up not positive, or an unknown protocol.
    """
    unknown = sorted(set(overrides) - set(_OPTION_NAMES))
    if unknown:
        raise MfnetError(f"unknown clip setting {', '.join(unknown)}: use {', '.join(_OPTION_NAMES)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(given.get("resize"), list):
        given["resize"] = tuple(given["resize"])
    if "resize" in given and "test_protocol" not in given:  # (H, W) is the authors' squash, N keeps the aspect
        given["test_protocol"] = protocol_of_resize(given["resize"])
    base = resolved.spec
    if "crop_size" in given and "resize" not in given and given["crop_size"] != base.crop_size:
        ratio = given["crop_size"] / base.crop_size
        if isinstance(base.resize, tuple):
            given["resize_auto"] = tuple(round(r * ratio) for r in base.resize)
        else:
            given["resize_auto"] = round(base.resize * ratio)
    auto = given.pop("resize_auto", None)
    spec = base.replace(**given)
    if auto is not None:
        spec = spec.replace(resize=auto)
    check_input_spec(spec)
    changed = [k for k, v in given.items() if getattr(base, k) != v]
    if not changed:
        return ResolvedSpec(spec, resolved.source, resolved.stored, resolved.note, resolved.overridden)
    implied = "test_protocol" not in overrides  # set by the form of --resize, which the note names already
    parts = ", ".join(
        f"{_OPTION_NAMES.get(k, k)} {_show(getattr(spec, k))}"
        for k in changed
        if not (k == "test_protocol" and implied)
    )
    if resolved.stored:
        note = f"{parts} override{'s' if len(changed) == 1 else ''} {resolved.source}'s clip spec ({base.describe()})"
    else:
        note = f"{resolved.note}; overridden by {parts}" if resolved.note else f"{parts} given"
    return ResolvedSpec(spec, resolved.source, resolved.stored, note, (*resolved.overridden, *changed))


def _show(value: Any) -> str:
    return "x".join(map(str, value)) if isinstance(value, tuple) else str(value)
