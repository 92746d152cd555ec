"""Multi-fiber units whose residual sums are done by the convolutions before them, for CPU training.

A ``MultiFiberUnit`` adds twice: ``x_in = x + conv_i2(...)`` and ``out = conv_m2(...) + shortcut``. In training,
PyTorch runs each sum as an operator of its own, a pass that reads two activations and writes a third (about
40 ms of an mfnet3d step at batch 8 on 2 cores). ``FastMultiFiberUnit`` hands each sum to the convolution that
produces its left side (``FastBnActConv.forward(x, add)``): the fiber kernel adds as it writes its output, and
oneDNN fuses the sum into its convolution (a binary post-op). The outputs and gradients are those of the unit as
built (the same two roundings).
"""

from __future__ import annotations

import torch
from torch import nn

from mfnet.models.fiber import MultiFiberUnit
from mfnet.tools.train_bn import FastBnActConv
from mfnet.tools.train_convs import replace_class


class FastMultiFiberUnit(MultiFiberUnit):
    """``MultiFiberUnit`` with its residual sums inside the convolutions (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _sums_in_convs(self):
            return super().forward(x)
        x_in = self.conv_i2(self.conv_i1(x), add=x) if hasattr(self, "conv_i1") else x
        h = self.conv_m1(x_in)
        if hasattr(self, "conv_dw"):
            h = self.conv_dw(h)
        shortcut = self.conv_w1(x) if hasattr(self, "conv_w1") else x
        return self.conv_m2(h, add=shortcut)


def _sums_in_convs(unit: nn.Module) -> bool:
    """Whether the convolutions that produce the sums take an addend (``FastBnActConv``)."""
    return isinstance(unit.conv_m2, FastBnActConv) and (
        not hasattr(unit, "conv_i1") or isinstance(unit.conv_i2, FastBnActConv)
    )


def enable_fused_sums(model: nn.Module) -> int:
    """Turns every ``MultiFiberUnit`` of ``model`` into a ``FastMultiFiberUnit`` in place; returns how many.

    Call it after ``mfnet.tools.train_bn.enable_fused_bn_relu`` (the sums need its ``FastBnActConv``). Parameters,
    names and ``state_dict`` keys stay as they are.
    """
    return replace_class(model, MultiFiberUnit, FastMultiFiberUnit)
