"""Convolutions with the eval BatchNorm after them folded in and a ReLU fused (CPU inference, oneDNN).

``FusedConv`` is a convolution (+ a following eval BN folded in) (+ ReLU) whose oneDNN weights are packed once per
input shape; ``FusedBnReLU`` an eval ``BN -> ReLU`` as one pass. Both go through ``mfnet.fastpath.onednn``, which
falls back to the public convolutions where oneDNN's fused operators are missing or a graph is being traced.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from mfnet.fastpath import kernels, onednn

MAX_PACKED_SHAPES = 4  # input shapes per convolution whose packed weights are kept

_BatchNorm = nn.modules.batchnorm._BatchNorm
_Conv = nn.Conv2d | nn.Conv3d


def memory_format(ndim: int) -> torch.memory_format:
    """The channels-last memory format for a tensor of ``ndim`` dimensions (5: 3D, 4: 2D)."""
    return torch.channels_last_3d if ndim == 5 else torch.channels_last


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` (``(N, C, T, H, W)`` or ``(N, C, H, W)``) with its channels innermost in memory; same values."""
    return x.contiguous(memory_format=memory_format(x.ndim)) if x.ndim in (4, 5) else x


def bn_or_none(module: nn.Module) -> _BatchNorm | None:
    """``module`` if it is a BatchNorm (else ``None``: an ``nn.Identity`` left by folding)."""
    return module if isinstance(module, _BatchNorm) else None


def bn_affine(bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as ``y = x * scale + shift``; returns ``(scale, shift)``, each ``(C,)``."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    shift = -bn.running_mean * scale
    if bn.affine:
        scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
    return scale.detach().clone(), shift.detach().clone()


class FusedConv(nn.Module):
    """A convolution (+ a following eval BN folded in) (+ ReLU) as one oneDNN primitive with packed weights.

    ``forward(x, add=None)`` returns ``relu?(conv(x) + bias) [+ add]``; ``x`` and ``add`` are ``(N, C, T, H, W)``
    (or ``(N, C, H, W)``) and are used in channels-last layout; the output is channels-last.

    Args:
        weight: ``(C_out, C_in / groups, k...)``.
        bias: ``(C_out,)`` or ``None``.
        padding, stride, dilation, groups: As in ``nn.Conv3d``.
        relu: Apply ReLU to the convolution's output (before ``add``).
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        *,
        padding: Sequence[int],
        stride: Sequence[int],
        dilation: Sequence[int],
        groups: int,
        relu: bool = False,
    ) -> None:
        super().__init__()
        self.ndim = weight.ndim
        self.padding, self.stride, self.dilation = list(padding), list(stride), list(dilation)
        self.groups = groups
        self.attr = "relu" if relu else "none"
        self.register_buffer("weight", weight.detach().contiguous(memory_format=memory_format(weight.ndim)))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self._pack()

    @classmethod
    def from_conv(cls, conv: _Conv, *, post_bn: _BatchNorm | None = None, relu: bool = False) -> FusedConv:
        """Builds from ``conv`` and, if given, the eval BN that normalises its output (folded into it)."""
        weight = conv.weight.detach().clone()
        bias = conv.bias.detach().clone() if conv.bias is not None else None
        if post_bn is not None:
            scale, shift = bn_affine(post_bn)
            weight = weight * scale.view(-1, *([1] * (weight.ndim - 1)))  # scaled per output channel
            bias = shift if bias is None else bias * scale + shift
        return cls(
            weight,
            bias,
            padding=conv.padding,
            stride=conv.stride,
            dilation=conv.dilation,
            groups=conv.groups,
            relu=relu,
        )

    def _pack(self) -> None:
        # oneDNN's blocked copies of the weights, one per input shape, packed once instead of on every call (not
        # saved, not copied). The best blocked layout depends on the input shape; a copy packed for another shape
        # still gives the right numbers, but oneDNN then reorders the weights on every call.
        self._packed: dict[tuple[int, ...], torch.Tensor] = {}

    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        packed = self._packed.get(shape)
        if packed is None:
            if len(self._packed) >= MAX_PACKED_SHAPES:
                self._packed.clear()
            packed = onednn.pack_weight(
                self.weight,
                padding=self.padding,
                stride=self.stride,
                dilation=self.dilation,
                groups=self.groups,
                input_shape=shape,
            )
            self._packed[shape] = packed
        return packed

    def forward(self, x: torch.Tensor, add: torch.Tensor | None = None, *, add_in_place: bool = False) -> torch.Tensor:
        """``relu?(conv(x) + bias) [+ add]``; with ``add_in_place`` the result may be written into ``add`` (a
        temporary of the caller's, channels-last, same shape): oneDNN then accumulates into it."""
        x = x.contiguous(memory_format=memory_format(self.ndim))
        packed = self._packed_weight(x) if onednn.fused_ops_run(x) else None
        conv = dict(padding=self.padding, stride=self.stride, dilation=self.dilation, groups=self.groups)
        if add is not None and self.groups == 1 and self.attr == "none":  # oneDNN fuses sums into dense convs
            in_place = add_in_place and add.is_contiguous(memory_format=memory_format(self.ndim))
            add = add.contiguous(memory_format=memory_format(self.ndim))
            return onednn.conv_add(x, add, self.weight, self.bias, packed=packed, in_place=in_place, **conv)
        out = onednn.conv(x, self.weight, self.bias, relu=self.attr == "relu", packed=packed, **conv)
        return out if add is None else out + add

    def __deepcopy__(self, memo: dict) -> FusedConv:  # oneDNN tensors cannot be deep-copied: copy, then repack
        new = copy.copy(self)
        new.__dict__ = {k: copy.deepcopy(v, memo) for k, v in self.__dict__.items() if k != "_packed"}
        new._pack()
        return new

    def _apply(self, fn, recurse=True):  # .to() / .float() etc. move the weights: drop the packed copies
        out = super()._apply(fn, recurse)
        self._pack()
        return out

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, stride={tuple(self.stride)}, groups={self.groups}, post={self.attr}"


class FusedBnReLU(FusedConv):
    """Eval ``BN -> ReLU`` as one pass: ``relu(x * scale + shift)`` on the kernel library where it runs (3D,
    channels a multiple of 8), else a depthwise 1x1 oneDNN convolution with a ReLU post-op.

    ``(N, C, T, H, W) -> (N, C, T, H, W)`` for a ``BatchNorm3d`` (``(N, C, H, W)`` for 2D), channels-last.
    """

    def __init__(self, bn: _BatchNorm) -> None:
        scale, shift = bn_affine(bn)
        n_dim = 3 if isinstance(bn, nn.BatchNorm3d) else 2
        super().__init__(
            scale.view(-1, *([1] * (n_dim + 1))),  # (C, 1, 1, 1[, 1]): one scale per channel
            shift,
            padding=[0] * n_dim,
            stride=[1] * n_dim,
            dilation=[1] * n_dim,
            groups=scale.numel(),
            relu=True,
        )
        self.register_buffer("scale", scale.detach().float().contiguous().clone())
        self.register_buffer("shift", shift.detach().float().contiguous().clone())

    def forward(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        if add is None and kernels.bn_relu_runs(x):  # one pass instead of oneDNN's depthwise convolution
            return kernels.bn_relu(x, self.scale, self.shift)
        return super().forward(x, add)
