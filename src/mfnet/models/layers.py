"""Small building blocks shared by every family: pre-activation convolutions and the stem, in 2D or 3D."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

Size = int | Sequence[int]


def as_tuple(value: Size, dim: int) -> tuple[int, ...]:
    """``3 -> (3, 3, 3)`` for ``dim=3``; a sequence must already have ``dim`` entries."""
    if isinstance(value, int):
        return (value,) * dim
    out = tuple(int(v) for v in value)
    if len(out) != dim:
        raise ValueError(f"expected {dim} sizes, got {out}")
    return out


def conv_layer(dim: int) -> type[nn.Conv2d] | type[nn.Conv3d]:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return {2: nn.Conv2d, 3: nn.Conv3d}[dim]


def norm_layer(dim: int) -> type[nn.BatchNorm2d] | type[nn.BatchNorm3d]:
    """``nn.BatchNorm2d`` or ``nn.BatchNorm3d``."""
    return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dim]


def pool_layer(dim: int) -> type[nn.MaxPool2d] | type[nn.MaxPool3d]:
    """``nn.MaxPool2d`` or ``nn.MaxPool3d``."""
    return {2: nn.MaxPool2d, 3: nn.MaxPool3d}[dim]


def same_conv(
    in_channels: int, out_channels: int, kernel_size: Size, *, stride: Size = 1, groups: int = 1, dim: int = 3
) -> nn.Conv2d | nn.Conv3d:
    """A convolution without bias whose padding (``kernel // 2``) keeps the size for odd kernels before the stride."""
    kernel = as_tuple(kernel_size, dim)
    padding = tuple(k // 2 for k in kernel)
    return conv_layer(dim)(
        in_channels, out_channels, kernel, stride=as_tuple(stride, dim), padding=padding, groups=groups, bias=False
    )


def activation(act_layer: type[nn.Module]) -> nn.Module:
    """``act_layer()``, in place where it is ``nn.ReLU``."""
    return act_layer(inplace=True) if act_layer is nn.ReLU else act_layer()


class BnActConv(nn.Module):
    """Pre-activation convolution: ``BN -> ReLU -> Conv`` (no bias), in 2D or 3D.

    Input and output are ``(N, C, T, H, W)`` for ``dim=3`` and ``(N, C, H, W)`` for ``dim=2``. Padding keeps
    the size for odd kernels (``kernel // 2``) before the stride.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Size = 1,
        *,
        stride: Size = 1,
        groups: int = 1,
        dim: int = 3,
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        # NOTE: the attribute names `bn` and `conv` match the authors' released checkpoints.
        self.bn = norm_layer(dim)(in_channels)
        self.relu = activation(act_layer)
        self.conv = same_conv(in_channels, out_channels, kernel_size, stride=stride, groups=groups, dim=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.relu(self.bn(x)))


class ConvBnAct(nn.Sequential):
    """A stem ``Conv -> BN -> ReLU`` (no bias) in 2D or 3D: a sequential with the children ``conv``, ``bn``, ``relu``.

    Input and output are ``(N, C, T, H, W)`` for ``dim=3`` and ``(N, C, H, W)`` for ``dim=2``. Padding keeps the
    size for odd kernels (``kernel // 2``) before the stride.

    ``backend`` is ``None`` or a callable attached by ``mfnet.fastpath.prepare_for_training``; ``forward(x)`` then
    returns ``backend(self, x)``, the same numbers as ``forward_reference(x)``. It holds no state and is not a child,
    so the sequential holds exactly ``conv``, ``bn`` and ``relu``.
    """

    backend: Callable[[ConvBnAct, torch.Tensor], torch.Tensor] | None = None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Size,
        *,
        stride: Size = 1,
        dim: int = 3,
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        # NOTE: the child names make the authors' keys `conv1.conv.*` and `conv1.bn.*`.
        self.conv = same_conv(in_channels, out_channels, kernel_size, stride=stride, dim=dim)
        self.bn = norm_layer(dim)(out_channels)
        self.relu = activation(act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend is not None:
            return self.backend(self, x)
        return self.forward_reference(x)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The children in order, as built (``nn.Sequential.forward``)."""
        return super().forward(x)
