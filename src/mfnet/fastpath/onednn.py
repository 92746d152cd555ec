"""oneDNN's fused convolutions, behind one set of functions with a public fallback.

PyTorch exposes oneDNN's convolution with fused post-operations (ReLU, a residual sum) and its weight packing only
as private operators (``torch.ops.mkldnn._convolution_pointwise``, ``_reorder_convolution_weight``). They are used
here and nowhere else in mfnet. Where they are missing (another PyTorch build, a GPU) or a graph is being traced
(``torch.compile``, ``torch.export``), the same numbers come from the public ``F.conv2d``/``F.conv3d`` followed by
the ReLU and the sum.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def fused_ops_available(device: torch.device | str = "cpu") -> bool:
    """Whether oneDNN's fused convolutions can run: a CPU build of PyTorch with oneDNN and these operators."""
    return (
        torch.device(device).type == "cpu"
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
        and hasattr(torch.ops.mkldnn, "_reorder_convolution_weight")
    )


def fused_ops_run(x: torch.Tensor) -> bool:
    """Whether the fused operators run on ``x``: float32 on a CPU that has them, outside a traced graph."""
    return not torch.compiler.is_compiling() and x.dtype == torch.float32 and fused_ops_available(x.device)


def pack_weight(
    weight: torch.Tensor,
    *,
    padding: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    input_shape: Sequence[int],
) -> torch.Tensor:
    """oneDNN's blocked copy of ``weight`` for inputs of ``input_shape``, packed once instead of on every call."""
    return torch.ops.mkldnn._reorder_convolution_weight(
        weight, list(padding), list(stride), list(dilation), groups, list(input_shape)
    )


def _public_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> torch.Tensor:
    conv = F.conv3d if weight.ndim == 5 else F.conv2d
    return conv(x, weight, bias, list(stride), list(padding), list(dilation), groups)


def conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    padding: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    relu: bool = False,
    packed: torch.Tensor | None = None,
) -> torch.Tensor:
    """``relu?(conv(x, weight) + bias)``; ``packed``: ``pack_weight``'s copy of ``weight`` (fused path only)."""
    if fused_ops_run(x):
        w = weight if packed is None else packed
        args = (list(padding), list(stride), list(dilation), groups)
        return torch.ops.mkldnn._convolution_pointwise(x, w, bias, *args, "relu" if relu else "none", [], "")
    out = _public_conv(x, weight, bias, padding, stride, dilation, groups)
    return out.relu_() if relu else out


def conv_add(
    x: torch.Tensor,
    add: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    padding: Sequence[int],
    stride: Sequence[int],
    groups: int,
    dilation: Sequence[int] | None = None,
    packed: torch.Tensor | None = None,
    in_place: bool = False,
) -> torch.Tensor:
    """``conv(x, weight) + bias + add`` with the sum done as the convolution writes its output. With ``in_place``
    the result is written into ``add`` (a temporary of the caller's, same shape and layout as the output)."""
    dilation = [1] * (weight.ndim - 2) if dilation is None else list(dilation)
    if fused_ops_run(x):
        w = weight if packed is None else packed
        args = (list(padding), list(stride), dilation, groups)
        if in_place:
            return torch.ops.mkldnn._convolution_pointwise_.binary(add, x, w, bias, *args, "add", 1.0, None, [], "")
        return torch.ops.mkldnn._convolution_pointwise.binary(x, add, w, bias, *args, "add", 1.0, None, [], "")
    return _public_conv(x, weight, bias, padding, stride, dilation, groups) + add
