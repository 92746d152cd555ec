"""Folding eval BatchNorms into the convolutions before them: the one BN fold of mfnet (inference and export).

``conv -> BN`` becomes ``conv'`` with ``W' = W * s`` and ``b' = (b - mean) * s + beta`` where
``s = gamma / sqrt(var + eps)`` per output channel. In mfnet's pre-activation units (``BN -> ReLU -> Conv``) that
is the stem (``conv1.conv -> conv1.bn``), ``conv_m1.conv -> conv_m2.bn`` and ``conv_i1.conv -> conv_i2.bn``; a BN
that reads a residual sum stays.
"""

from __future__ import annotations

import torch
from torch import fx, nn


class _FeatureGraph(nn.Module):
    """Wraps a classifier so that ``torch.fx`` traces its ``forward_features`` (no input-shape branches)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def fold_batchnorm(model: nn.Module) -> list[str]:
    """Folds, in place, every BatchNorm that reads the output of one convolution and nothing else.

    ``conv -> BN`` becomes ``conv'`` with ``W' = W * s`` and ``b' = (b - mean) * s + beta`` where
    ``s = gamma / sqrt(var + eps)`` per output channel, and the BN is replaced by ``nn.Identity``. The
    pairs are found on a ``torch.fx`` trace of ``model.forward_features``: the convolution's only user
    must be the BN, and each module must be called once. A model that cannot be traced is left as it is.

    Args:
        model: A classifier in eval mode (its BN running statistics are used).

    Returns:
        Qualified names of the folded BatchNorm modules (empty if none could be folded).
    """
    try:
        graph = fx.symbolic_trace(_FeatureGraph(model)).graph
    except Exception:  # a model with data-dependent control flow: keep it unfolded, it is still correct
        return []
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    folded = []
    for node in graph.nodes:
        if node.op != "call_module" or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        src = node.args[0]
        if src.op != "call_module" or len(src.users) != 1 or calls[node.target] != 1 or calls[src.target] != 1:
            continue
        bn_name, conv_name = node.target.removeprefix("model."), src.target.removeprefix("model.")
        bn, conv = model.get_submodule(bn_name), model.get_submodule(conv_name)
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or type(conv) not in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
            continue
        if bn.running_mean is None or bn.running_var is None or bn.num_features != conv.out_channels:
            continue
        _fold_into_conv(conv, bn)
        parent_name, _, child = bn_name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, nn.Identity())
        folded.append(bn_name)
    return folded


@torch.no_grad()
def _fold_into_conv(conv: nn.Conv1d | nn.Conv2d | nn.Conv3d, bn: nn.modules.batchnorm._BatchNorm) -> None:
    scale = torch.rsqrt(bn.running_var + bn.eps)  # (C_out,)
    shift = -bn.running_mean * scale
    if bn.affine:
        scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
    bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
    conv.weight.mul_(scale.view(-1, *([1] * (conv.weight.ndim - 1))))  # (C_out, C_in/groups, k...) scaled per C_out
    conv.bias = nn.Parameter(bias * scale + shift)
