"""``create_model``: build a registered model and optionally load weights into it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from mfnet.models.registry import build_model


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    weights: str | Path | None = None,
    inflate: str = "average",
    **arch_kwargs: Any,
) -> nn.Module:
    """Builds model ``name`` and loads ``weights`` into it.

    Args:
        name: A name from ``list_models()``.
        num_classes: Classes of the classifier; ``None`` takes them from ``weights`` when given, else the
            builder's default.
        weights: A checkpoint path: the authors' released files, one of ours (training run or export), or
            safetensors. A 2D checkpoint given to a 3D model is inflated. A classifier of another size is
            skipped (and reported) only when ``num_classes`` was given explicitly.
        inflate: How 2D kernels fill time when inflating: ``"average"`` (repeat and divide by T, sums to W),
            ``"random"`` (the authors' method: one W/T tap, cancelling noise, shuffled; sums to W/3 for 3 taps) or
            ``"average-noise"`` (zero-sum noise on the average; sums to W); see ``inflate_kernel``.
        **arch_kwargs: Architecture options of the builder (``fibers``, ``multiplexer``, ``drop_rate``, ...).
    """
    if weights is None:
        return build_model(name, num_classes=num_classes, **arch_kwargs)
    from mfnet.models.checkpoint import load_weights, read_checkpoint

    checkpoint = read_checkpoint(weights)
    classes_given = num_classes is not None
    if not classes_given:
        num_classes = checkpoint.num_classes
    model = build_model(name, num_classes=num_classes, **arch_kwargs)
    load_weights(model, checkpoint, skip_classifier=classes_given, inflate=inflate)
    return model
