"""Numerical helpers shared by the fast-path and export tests."""

from __future__ import annotations

import torch
from torch import nn


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Gives every BatchNorm of ``model`` running statistics and affine terms far from their initial values, so that
    folding mistakes show in the outputs; returns ``model`` (its mode unchanged)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.rand(c, generator=g) * 0.4 - 0.2)
    return model


def max_rel_diff(got: torch.Tensor, expected: torch.Tensor) -> float:
    """``max |got - expected| / max |expected|``: the measure the fast path's 1e-4 promise is stated in."""
    got, expected = got.detach(), expected.detach()
    return float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-12))
