"""BatchNorm + ReLU of MF-Net's pre-activation units in fewer memory passes, for CPU training.

Every multi-fiber unit starts its convolutions with ``BN -> ReLU`` (``BnActConv``). In training, PyTorch runs them
as separate operators: BatchNorm reads its input twice and writes its output, ReLU reads and writes it again, and
the backward pass takes eight passes over the activations. Here the pair is one operator, ``mfnet::bn_relu_train``,
on the native kernels, with a registered autograd formula::

    forward:   statistics (1 pass), y = relu(x * scale + shift) (1 pass)
    backward:  sum(dz), sum(dz * (x - mean)) with dz = dy * [x * scale + shift > 0] (1 pass), dx (1 pass)

It saves the BN input ``x`` (the ReLU mask is recomputed from it), not the output, which the next convolution
saves anyway. Statistics use shifted sums (the first row of each channel as the shift) in blocks of rows, added
in float64, against cancellation. Running statistics are updated as ``nn.BatchNorm3d`` does.

It applies to float32 channels-last CPU activations of a plain ``nn.BatchNorm3d`` (affine, tracking running
statistics with a momentum) whose channels are a multiple of 8, in training mode with gradients on, where the
native operators loaded (``bn_relu_train_runs``); everywhere else the module runs as built.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mfnet.fastpath import native

BLOCK_ROWS = 256  # MF_BN_BLOCK of fiber_conv.cpp
_CL3D = torch.channels_last_3d


def bn_relu_train_runs(x: torch.Tensor, bn: nn.Module) -> bool:
    """Whether ``bn_relu_train`` can run ``relu(bn(x))`` (see the module docstring)."""
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
        and native.load()
    )


def bn_relu_train(x: torch.Tensor, bn: nn.BatchNorm3d) -> torch.Tensor:
    """``relu(bn(x))`` in training mode, with ``bn``'s running statistics updated; check ``bn_relu_train_runs``.

    ``x``: ``(N, C, T, H, W)`` channels-last-3d; the output has its shape and layout.
    """
    y, mean, _, var = bn_relu_batch(x, bn.weight, bn.bias, float(bn.eps))
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        rows = x.numel() // x.shape[1]
        momentum = float(bn.momentum)
        bn.running_mean.mul_(1 - momentum).add_(mean.float(), alpha=momentum)
        bn.running_var.mul_(1 - momentum).add_((var * rows / max(rows - 1, 1)).float(), alpha=momentum)
    return y


def _blocks(x: torch.Tensor) -> tuple[int, int, int]:
    """Rows ``P`` of channels-last ``x`` as ``(P, C)``, its channels and the number of row blocks."""
    c = x.shape[1]
    rows = x.numel() // c
    return rows, c, math.ceil(rows / BLOCK_ROWS)


def _affine(
    weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``scale = weight * invstd``, ``shift = bias - mean * scale`` (float32) from float64 statistics."""
    scale = weight.detach().double() * invstd
    shift = bias.detach().double() - mean * scale
    return scale.float().contiguous(), shift.float().contiguous()


torch.library.define(
    "mfnet::bn_relu_train",
    "(Tensor x, Tensor weight, Tensor bias, float eps) -> (Tensor, Tensor, Tensor, Tensor)",
    lib=native.LIBRARY,
)
torch.library.define(
    "mfnet::bn_relu_train_backward",
    "(Tensor dy, Tensor x, Tensor weight, Tensor bias, Tensor mean, Tensor invstd) -> (Tensor, Tensor, Tensor)",
    lib=native.LIBRARY,
)


def bn_relu_batch(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``relu(batch_norm(x))`` with the batch's statistics: ``(y, mean, invstd, var)`` (the last three float64
    ``(C,)``, ``var`` biased), differentiable in ``x``, ``weight`` and ``bias`` (``mfnet::bn_relu_train``).
    ``x`` ``(N, C, T, H, W)`` channels-last-3d float32."""
    return torch.ops.mfnet.bn_relu_train(x, weight, bias, eps)


@torch.library.impl("mfnet::bn_relu_train", "cpu", lib=native.LIBRARY)
def _bn_relu_train_cpu(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    rows, c, blocks = _blocks(x)
    shift_k = x.permute(0, 2, 3, 4, 1).reshape(rows, c)[0].clone()
    s1, s2 = torch.empty(2, blocks, c, dtype=torch.float64).unbind(0)
    torch.ops.mfnet.bn_stats(x, shift_k, s1, s2)
    m1 = s1.sum(0) / rows
    var = (s2.sum(0) / rows - m1 * m1).clamp_min(0.0)
    mean = shift_k.double() + m1
    invstd = torch.rsqrt(var + eps)
    scale, shift = _affine(weight, bias, mean, invstd)
    y = torch.empty_like(x, memory_format=_CL3D)
    torch.ops.mfnet.bn_relu(x, scale, shift, y)
    return y, mean, invstd, var


def _bn_relu_train_fake(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    stat = x.new_empty(x.shape[1], dtype=torch.float64)
    return torch.empty_like(x, memory_format=_CL3D), stat, stat.clone(), stat.clone()


@torch.library.impl("mfnet::bn_relu_train_backward", "cpu", lib=native.LIBRARY)
def _bn_relu_train_backward_cpu(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    mean: torch.Tensor,
    invstd: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of ``bn_relu_train``'s ``y`` with respect to ``x``, ``weight`` and ``bias``."""
    rows, c, blocks = _blocks(x)
    scale, shift = _affine(weight, bias, mean, invstd)
    mean32 = mean.float().contiguous()
    s1, s2 = torch.empty(2, blocks, c, dtype=torch.float64).unbind(0)
    torch.ops.mfnet.bn_relu_grad_sums(x, dy, scale, shift, mean32, s1, s2)
    sum_dz, sum_dzx = s1.sum(0), s2.sum(0)
    a = weight.detach().double() * invstd
    grad_bias, grad_weight = sum_dz.float(), (sum_dzx * invstd).float()
    b, d = (a * sum_dz / rows).float(), (a * invstd * invstd * sum_dzx / rows).float()
    dx = torch.empty_like(x, memory_format=_CL3D)
    torch.ops.mfnet.bn_relu_grad_input(x, dy, scale, shift, mean32, a.float(), b, d, dx)
    return dx, grad_weight, grad_bias


def _bn_relu_train_backward_fake(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    mean: torch.Tensor,
    invstd: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.empty_like(x, memory_format=_CL3D), torch.empty_like(weight), torch.empty_like(bias)


def _bn_relu_setup(ctx: object, inputs: tuple, output: tuple) -> None:
    x, weight, bias, _ = inputs
    _, mean, invstd, _ = output
    ctx.save_for_backward(x, weight, bias, mean, invstd)


def _bn_relu_grad(ctx: object, dy: torch.Tensor, *_: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    x, weight, bias, mean, invstd = ctx.saved_tensors
    dy = dy.contiguous(memory_format=_CL3D)
    dx, grad_weight, grad_bias = torch.ops.mfnet.bn_relu_train_backward(dy, x, weight, bias, mean, invstd)
    return dx, grad_weight, grad_bias, None


torch.library.register_fake("mfnet::bn_relu_train", _bn_relu_train_fake, lib=native.LIBRARY)
torch.library.register_fake("mfnet::bn_relu_train_backward", _bn_relu_train_backward_fake, lib=native.LIBRARY)
torch.library.register_autograd("mfnet::bn_relu_train", _bn_relu_grad, setup_context=_bn_relu_setup, lib=native.LIBRARY)
