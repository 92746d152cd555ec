"""BatchNorm + ReLU of MF-Net's pre-activation units in fewer memory passes, for CPU training.

Every multi-fiber unit starts its convolutions with ``BN -> ReLU`` (``BnActConv``). In training, PyTorch runs them
as separate operators: BatchNorm reads its input twice and writes its output, ReLU reads and writes it again, and
the backward pass takes eight passes over the activations (ReLU's gradient, then BatchNorm's two reductions and
its input gradient). On 2 CPU cores these memory-bound passes are about 14% of a training step. Here the pair
is one autograd function on the hand-written kernels of ``csrc/fiber_conv.c``:

    forward:   statistics (1 pass), y = relu(x * scale + shift) (1 pass)
    backward:  sum(dz), sum(dz * (x - mean)) with dz = dy * [x * scale + shift > 0] (1 pass), dx (1 pass)

It saves the BN input ``x`` (the ReLU mask is recomputed from it), not the output, which the next convolution
saves anyway. Per layer it is 1.4-2.9x faster than PyTorch's operators (``conv2``'s activations at batch 8: 6.7
against 9.2 ms forward and backward); in a whole mfnet3d step the gain was within the run-to-run noise, as the
passes were already near the memory bandwidth. Statistics use shifted sums (the first row of each channel as the
shift) in blocks of rows, added in float64, against cancellation. Running statistics are updated as
``nn.BatchNorm3d`` does.

It applies to float32 channels-last CPU activations of a plain ``nn.BatchNorm3d`` (affine, tracking running
statistics with a momentum) whose channels are a multiple of 8, in training mode with gradients on, where the
kernel library loaded; everywhere else (eval mode, GPUs, ``SyncBatchNorm``, compiling) the module runs as built.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from mfnet.models.layers import BnActConv
from mfnet.tools import fiber_kernel
from mfnet.tools.train_convs import FastBackwardConv3d, replace_class

BLOCK_ROWS = 256  # MF_BN_BLOCK of fiber_conv.c
_CL3D = torch.channels_last_3d


class FastBnActConv(BnActConv):
    """``BnActConv`` whose ``BN -> ReLU`` runs as one fused function in CPU training; same parameters and outputs.

    ``forward(x, add)`` returns ``conv(relu(bn(x))) + add``, the sum done by the convolution where it can (a
    ``FastBackwardConv3d``: see ``mfnet.tools.train_convs``).
    """

    def forward(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        if self.training and isinstance(self.relu, nn.ReLU) and applies(x, self.bn):
            y = bn_relu(x, self.bn)
        else:
            y = self.relu(self.bn(x))
        if add is None:
            return self.conv(y)
        if isinstance(self.conv, FastBackwardConv3d):
            return self.conv(y, add=add)
        return self.conv(y) + add


def enable_fused_bn_relu(model: nn.Module) -> int:
    """Turns every ``BnActConv`` of ``model`` into a ``FastBnActConv`` in place; returns how many.

    Parameters, buffers, names and ``state_dict`` keys stay as they are.
    """
    return replace_class(model, BnActConv, FastBnActConv)


def applies(x: torch.Tensor, bn: nn.Module) -> bool:
    """Whether ``bn_relu`` can run ``relu(bn(x))`` (see the module docstring)."""
    return (
        type(bn) is nn.BatchNorm3d
        and bn.training
        and bn.affine
        and bn.track_running_stats
        and bn.momentum is not None
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.dim() == 5
        and x.shape[1] % 8 == 0
        and x.numel() > x.shape[1]
        and x.is_contiguous(memory_format=_CL3D)
        and torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and fiber_kernel.load() is not None
    )


def bn_relu(x: torch.Tensor, bn: nn.BatchNorm3d) -> torch.Tensor:
    """``relu(bn(x))`` in training mode, with ``bn``'s running statistics updated; check ``applies`` first.

    ``x``: ``(N, C, T, H, W)`` channels-last-3d; the output has its shape and layout.
    """
    bn.num_batches_tracked.add_(1)
    return _BnRelu.apply(x, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.momentum, bn.eps)


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _rows(x: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
    """``x`` as its ``(P, C)`` rows (a view), P, C and the number of row blocks."""
    c = x.shape[1]
    rows = x.permute(0, 2, 3, 4, 1).view(-1, c)
    return rows, rows.shape[0], c, math.ceil(rows.shape[0] / BLOCK_ROWS)


class _BnRelu(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        running_mean: torch.Tensor,
        running_var: torch.Tensor,
        momentum: float,
        eps: float,
    ) -> torch.Tensor:
        lib = fiber_kernel._library()
        rows, p, c, blocks = _rows(x)
        shift_k = rows[0].clone()
        sums = torch.empty(2, blocks, c, dtype=torch.float64)
        fiber_kernel._parallel(lib.mf_bn_stats, (_ptr(x), _ptr(shift_k), _ptr(sums[0]), _ptr(sums[1]), p, c), blocks)
        scale, shift, mean, invstd = torch.empty(4, c)
        stats = (_ptr(sums[0]), _ptr(sums[1]), blocks, _ptr(shift_k), _ptr(weight), _ptr(bias))
        stats += (_ptr(running_mean), _ptr(running_var), float(momentum), float(eps), p, c)
        lib.mf_bn_finalize(*stats, _ptr(scale), _ptr(shift), _ptr(mean), _ptr(invstd))
        y = torch.empty_like(x, memory_format=_CL3D)
        fiber_kernel._parallel(lib.mf_bn_relu, (_ptr(x), _ptr(scale), _ptr(shift), _ptr(y), p, c), blocks)
        ctx.save_for_backward(x, weight, scale, shift, mean, invstd)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, scale, shift, mean, invstd = ctx.saved_tensors
        lib = fiber_kernel._library()
        dy = dy.contiguous(memory_format=_CL3D)
        _, p, c, blocks = _rows(x)
        sums = torch.empty(2, blocks, c, dtype=torch.float64)
        args = (_ptr(x), _ptr(dy), _ptr(scale), _ptr(shift), _ptr(mean), _ptr(sums[0]), _ptr(sums[1]), p, c)
        fiber_kernel._parallel(lib.mf_bn_relu_grad_sums, args, blocks)
        grad_weight, grad_bias, a, b, d = torch.empty(5, c)  # d loss / d weight, / d bias; dx = a*dz - b - (x-mean)*d
        coefficients = (_ptr(grad_weight), _ptr(grad_bias), _ptr(a), _ptr(b), _ptr(d))
        lib.mf_bn_grad_finalize(_ptr(sums[0]), _ptr(sums[1]), blocks, _ptr(weight), _ptr(invstd), p, c, *coefficients)
        dx = None
        if ctx.needs_input_grad[0]:
            dx = torch.empty_like(x, memory_format=_CL3D)
            args = (_ptr(x), _ptr(dy), _ptr(scale), _ptr(shift), _ptr(mean), _ptr(a), _ptr(b), _ptr(d), _ptr(dx))
            fiber_kernel._parallel(lib.mf_bn_relu_grad_input, (*args, p, c), blocks)
        return dx, grad_weight, grad_bias, None, None, None, None
