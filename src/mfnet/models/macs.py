"""Counting parameters and multiply-adds (the paper's "FLOPs") with PyTorch's own flop counter."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of learnable parameters (BN running statistics are buffers and not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of one forward pass on a zero input of ``input_shape`` (e.g. ``(1, 3, 16, 224, 224)``).

    Uses ``torch.utils.flop_counter.FlopCounterMode``, which counts convolutions and matrix products (2 FLOPs
    per multiply-add); normalisation, activations and pooling are not counted, as in the paper's tables.
    The model is run in eval mode on its own device and dtype and put back in its previous mode.
    """
    param = next(model.parameters(), None)
    x = torch.zeros(
        tuple(input_shape),
        device=param.device if param is not None else "cpu",
        dtype=param.dtype if param is not None else torch.float32,
    )
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
