"""The multi-fiber unit, written once for 2D and 3D (Chen et al., ECCV 2018, Fig. 2 and 3).

::

    x ──▶ [multiplexer: BN-ReLU-Conv1x1 (C -> mid/4) -> BN-ReLU-Conv1x1 (mid/4 -> C)] ──(+ x)──▶ x_in
    x_in ──▶ BN-ReLU-Conv k_m1 (C -> mid, N fibers, stride) ──▶ BN-ReLU-Conv k_m2 (mid -> out, N fibers) ──▶ h
    out = h + shortcut(x)          shortcut = x, or BN-ReLU-Conv1x1 (C -> out, stride) in a stage's first unit

In the first unit of a stage the second convolution is a dense 1x1 convolution, which also lets the fibers
exchange information where the width changes. There is no activation after the residual sum.

Two options serve the other families (both off by default, leaving MF-Net's modules and key names unchanged):
``kernel_dw`` puts a depthwise ``BN-ReLU-Conv`` (``conv_dw``, carrying the stride) between the two fiber
convolutions, which turns the unit into MobileNet-v2's inverted residual sliced into fibers; ``dense_first=False``
keeps the second convolution of a stage's first unit grouped with kernel ``k_m2`` (ResNet's basic-block shape).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mfnet.models.layers import BnActConv, Size


class MultiFiberUnit(nn.Module):
    """A residual unit sliced into ``fibers`` grouped paths, with an optional multiplexer at its head.

    Args:
        in_channels: Channels ``C`` of the input.
        mid_channels: Channels after the first convolution (a multiple of ``fibers``).
        out_channels: Channels of the output.
        kernel_m1: Kernel of the first convolution, e.g. ``(3, 3, 3)`` or ``(3, 3)``.
        kernel_m2: Kernel of the second convolution (a stage's first unit always uses 1x1 here).
        stride: Stride of the first convolution and of the shortcut.
        fibers: Number of fibers (convolution groups); 1 gives a plain pre-activation residual unit.
        multiplexer: Whether to put the multiplexer (two 1x1 convolutions routing across fibers) at the head.
        first: Whether this is the first unit of a stage (dense 1x1 second conv and a projection shortcut).
        dim: 2 for ``(N, C, H, W)``, 3 for ``(N, C, T, H, W)``.
        kernel_dw: Kernel of an optional depthwise convolution between the two fiber convolutions; it takes the
            stride instead of the first convolution (``None``: no depthwise convolution, as in MF-Net).
        dense_first: Whether a first unit's second convolution is a dense 1x1 convolution (MF-Net) or, when
            ``False``, a grouped ``kernel_m2`` convolution like the other units.

    ``backend`` is ``None`` or a module attached by ``mfnet.fastpath`` (``prepare_for_training``,
    ``optimize_for_inference``); ``forward(x)`` then returns ``backend(self, x)``, the same numbers as
    ``forward_reference(x)`` computed faster. A training backend holds no tensors: the ``state_dict`` keys stay.
    """

    backend: nn.Module | None

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        *,
        kernel_m1: Size = 3,
        kernel_m2: Size = 3,
        stride: Size = 1,
        fibers: int = 16,
        multiplexer: bool = True,
        first: bool = False,
        dim: int = 3,
        kernel_dw: Size | None = None,
        dense_first: bool = True,
    ) -> None:
        super().__init__()
        dense_m2 = first and dense_first
        if mid_channels % fibers or (not dense_m2 and out_channels % fibers):
            raise ValueError(f"channels {mid_channels}/{out_channels} are not divisible into {fibers} fibers")
        # NOTE: the names conv_i1, conv_i2, conv_m1, conv_m2 and conv_w1 match the authors' checkpoints.
        if multiplexer:
            self.conv_i1 = BnActConv(in_channels, mid_channels // 4, 1, dim=dim)
            self.conv_i2 = BnActConv(mid_channels // 4, in_channels, 1, dim=dim)
        m1_stride = stride if kernel_dw is None else 1
        self.conv_m1 = BnActConv(in_channels, mid_channels, kernel_m1, stride=m1_stride, groups=fibers, dim=dim)
        if kernel_dw is not None:
            self.conv_dw = BnActConv(mid_channels, mid_channels, kernel_dw, stride=stride, groups=mid_channels, dim=dim)
        if dense_m2:
            self.conv_m2 = BnActConv(mid_channels, out_channels, 1, dim=dim)
        else:
            self.conv_m2 = BnActConv(mid_channels, out_channels, kernel_m2, groups=fibers, dim=dim)
        if first:
            self.conv_w1 = BnActConv(in_channels, out_channels, 1, stride=stride, dim=dim)
        self.backend = None

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if "backend" not in self.__dict__ and "backend" not in self._modules:
            self.backend = None  # a unit pickled before the backend slot existed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, T, H, W) -> (N, out, T', H', W')`` (``(N, C, H, W)`` in 2D), on the backend if one is attached."""
        if self.backend is not None:
            return self.backend(self, x)
        return self.forward_reference(x)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The unit as drawn in the module docstring, on PyTorch's own modules."""
        x_in = x + self.conv_i2(self.conv_i1(x)) if hasattr(self, "conv_i1") else x
        h = self.conv_m1(x_in)
        if hasattr(self, "conv_dw"):
            h = self.conv_dw(h)
        h = self.conv_m2(h)
        shortcut = self.conv_w1(x) if hasattr(self, "conv_w1") else x
        return h + shortcut


def fiber_stage(
    in_channels: int,
    channels: int,
    depth: int,
    *,
    stride: Sequence[int] | int,
    kernel_m1: Size,
    kernel_m2: Size,
    fibers: int,
    multiplexer: bool,
    dim: int,
    mid_channels: int | None = None,
    kernel_dw: Size | None = None,
    dense_first: bool = True,
) -> nn.Sequential:
    """A stage of ``depth`` multi-fiber units named ``B01, B02, ...`` (the authors' key names).

    The first unit has the stride, the projection shortcut and (with ``dense_first``) the dense 1x1 second
    convolution. ``kernel_dw`` and ``dense_first`` are passed to every unit (see ``MultiFiberUnit``).
    """
    mid = mid_channels or channels
    units = nn.Sequential()
    for i in range(depth):
        unit = MultiFiberUnit(
            in_channels if i == 0 else channels,
            mid,
            channels,
            kernel_m1=kernel_m1,
            kernel_m2=kernel_m2,
            stride=stride if i == 0 else 1,
            fibers=fibers,
            multiplexer=multiplexer,
            first=i == 0,
            dim=dim,
            kernel_dw=kernel_dw,
            dense_first=dense_first,
        )
        units.add_module(f"B{i + 1:02d}", unit)  # NOTE: B01, B02, ... as in the authors' checkpoints.
    return units
