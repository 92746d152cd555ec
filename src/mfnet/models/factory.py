"""``create_model``: build a registered model and optionally load weights into it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from mfnet.errors import MfnetError
from mfnet.models.checkpoint import load_weights, read_checkpoint
from mfnet.models.hub import HF_PREFIX, is_converted_folder, resolve_weights
from mfnet.models.registry import build_model, list_models
from mfnet.models.weights import WeightsRecord, default_weights, get_weights, is_weights_name, list_weights


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    weights: str | Path | None = None,
    pretrained: bool = False,
    inflate: str = "average",
    **arch_kwargs: Any,
) -> nn.Module:
    """Builds model ``name`` and loads ``weights`` into it.

    Args:
        name: A name from ``list_models()`` (``"mfnet3d"``), a registered weights name from ``list_weights()``
            (``"mfnet3d.k400_authors"``: its architecture, built with the record's arguments and class count), or a
            folder written by ``mfnet weights convert`` / ``hf-hub:ORG/NAME`` (built and loaded from its
            ``config.json`` and weights).
        num_classes: Classes of the classifier; ``None`` takes them from ``weights`` when given, else the
            record's or the builder's default.
        weights: A checkpoint path (the authors' released files, one of ours, safetensors, or a folder written by
            ``mfnet weights convert``), a registered weights name, or ``hf-hub:ORG/NAME``. A 2D checkpoint given to
            a 3D model is inflated. A classifier of another size is skipped (and reported) only when
            ``num_classes`` was given explicitly.
        pretrained: Load the registered weights: those of ``name`` when it is a weights name, else the default
            record of the architecture (``mfnet3d`` -> ``mfnet3d.k400_authors``). The file comes from the cache,
            the Hugging Face Hub or a URL and is checked against the record's sha256 (``mfnet.models.hub``).
        inflate: How 2D kernels fill time when inflating: ``"average"`` (repeat and divide by T, sums to W),
            ``"random"`` (the authors' method: one W/T tap, cancelling noise, shuffled; sums to W/3 for 3 taps) or
            ``"average-noise"`` (zero-sum noise on the average; sums to W); see ``inflate_kernel``.
        **arch_kwargs: Architecture options of the builder (``fibers``, ``multiplexer``, ``drop_rate``, ...).

    Raises:
        UnknownModelError, MfnetError: An unknown name, weights that are not available (the message says which file
            to put where), or weights that do not fit.
    """
    if name.startswith(HF_PREFIX) or is_converted_folder(Path(name)):  # a folder of `mfnet weights convert`
        resolved = resolve_weights(name)
        config = resolved.config or {}
        name, weights = str(config.get("architecture", "mfnet3d")), resolved.path
        arch_kwargs = {**(config.get("arch_kwargs") or {}), **arch_kwargs}
        pretrained = False
    record = _record_of(name, pretrained=pretrained, weights=weights)
    if record is not None:
        name = record.architecture
        arch_kwargs = {**record.arch_kwargs, **arch_kwargs}
        if pretrained:
            weights = record.name
        elif weights is None and num_classes is None:
            num_classes = record.num_classes
    if weights is None:
        return build_model(name, num_classes=num_classes, **arch_kwargs)
    resolved = resolve_weights(weights)
    checkpoint = read_checkpoint(resolved.path)
    meta = checkpoint.meta or {}
    if meta.get("model") == name:  # our checkpoints say how the architecture was built
        arch_kwargs = {**(meta.get("model_kwargs") or {}), **arch_kwargs}
    classes_given = num_classes is not None
    if not classes_given:
        num_classes = checkpoint.num_classes
    model = build_model(name, num_classes=num_classes, **arch_kwargs)
    load_weights(model, checkpoint, skip_classifier=classes_given, inflate=inflate)
    return model


def _record_of(name: str, *, pretrained: bool, weights: str | Path | None) -> WeightsRecord | None:
    """The weights record ``name`` stands for (or the architecture's default one when ``pretrained``)."""
    if is_weights_name(name):
        if pretrained and weights is not None:
            raise MfnetError(f"give either pretrained=True or weights=, not both (create_model({name!r}, ...))")
        return get_weights(name)
    arch, sep, _ = name.partition(".")
    if sep and arch in list_models():
        get_weights(name)  # raises with the closest registered names
    if not pretrained:
        return None
    if weights is not None:
        raise MfnetError(f"give either pretrained=True or weights=, not both (create_model({name!r}, ...))")
    record = default_weights(name)
    if record is None:
        known = ", ".join(list_weights()) or "none"
        raise MfnetError(f"no pretrained weights are registered for {name!r}: use one of {known}, or pass weights=PATH")
    return record
