"""Faster backward passes for MF-Net's grouped 3D convolutions on CPU (training only).

oneDNN computes the weight gradient of a grouped ``3x3x3`` convolution with an im2col GEMM (its direct
kernels do not take these shapes), which is 1.3-2x slower than the same work done by 2D kernels. With the
activations in channels-last-3d layout, a clip ``(N, C, T, H, W)`` is in memory a batch of ``N*T`` channels-last
frames ``(N*T, C, H, W)``, so the weight gradient of a ``kt x kh x kw`` convolution (temporal stride 1, temporal
padding ``kt // 2``) splits into one 2D weight gradient per temporal tap ``k``::

    dW[:, :, k] = sum_t  grad[t] (x) x[t + k - kt//2]          pairs of frames inside the same clip

For each tap the pairs are two views of the frame batch shifted against each other (no copies); the few pairs
that straddle two clips are computed separately and subtracted. With 24 or more input channels per group
(``conv4``, ``conv5``) the taps are folded into the input channels instead: one copy of the input with the ``kt``
frames each output frame reads side by side, and one 2D weight gradient (``_weight_grad_folded``). For a
convolution with one input channel per group (the first unit of MF-Net's conv2: 16 -> 96 channels in 16 groups)
the input gradient is 2.5x faster in the plain ``NCDHW`` layout, so it is computed there, and the weight gradient
comes from the native kernel (``kernels.conv3d_weight_grad``, with AVX-512) or else is one batched matrix
product over a small im2col copy (2.4x faster than oneDNN). Everything else uses PyTorch's own kernels.

Grouped convolutions with 6 or 12 channels per group, stride 1 and wide enough frames run forward and backward on
the native kernel instead (``mfnet.fastpath.kernels.fiber_conv3d``), where it was built. ``conv3d_train(conv, x,
add)`` adds a residual sum as the output is written (the kernel, or oneDNN's fused sum).

``conv3d_train`` is what the training backends of ``mfnet.fastpath.unit`` call for each 3D convolution of a unit
and of the stem; on GPUs, without gradients and while tracing it is the module's own forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from mfnet.fastpath import kernels, native, onednn

_CL3D = torch.channels_last_3d
_CL2D = torch.channels_last


def conv3d_train(conv: nn.Conv3d, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
    """``conv(x) + add`` with the faster CPU gradients of this module (see its docstring); same outputs.

    Args:
        conv: The convolution (its parameters are used as they are: gradients reach them).
        x: ``(N, C_in, T, H, W)``, channels-last-3d for the fastest path.
        add: A residual to add, of the output's shape (or broadcastable), or ``None``.
    """
    if add is not None and (isinstance(conv.padding, str) or tuple(add.shape) != _out_shape(conv, x)):
        return conv3d_train(conv, x) + add  # broadcast: a sum of its own
    if _fast_backward_runs(x, conv):
        if (
            conv.bias is None
            and _kernel_fits(conv)
            and kernels.wide_enough(x, conv.kernel_size, training=True, groups=conv.groups)
        ):
            return kernels.fiber_conv3d(x, conv.weight, list(conv.padding), conv.groups, add)
        args = (x, conv.weight, conv.bias, conv.stride, conv.padding, conv.groups)
        if add is not None and not _sum_fuses(x, add):
            return _FastBackward.apply(*args, None) + add
        return _FastBackward.apply(*args, add)
    out = conv(x)
    return out if add is None else out + add


def _out_shape(conv: nn.Conv3d, x: torch.Tensor) -> tuple[int, ...]:
    """The output's shape for input ``x`` ``(N, C, T, H, W)``."""
    dims = zip(x.shape[2:], conv.padding, conv.dilation, conv.kernel_size, conv.stride, strict=True)
    size = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in dims]
    return (x.shape[0], conv.out_channels, *size)


def _kernel_fits(conv: nn.Conv3d) -> bool:
    """Whether this convolution runs on the native kernel (6 or 12 channels per group, stride 1)."""
    return native.load() and kernels.training_conv_fits(
        conv.weight, conv.groups, tuple(conv.stride), tuple(conv.padding)
    )


def _fast_backward_runs(x: torch.Tensor, conv: nn.Conv3d) -> bool:
    return (
        type(conv) is nn.Conv3d
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and (x.requires_grad or conv.weight.requires_grad)
        and conv.padding_mode == "zeros"
        and tuple(conv.dilation) == (1, 1, 1)
    )


def _sum_fuses(x: torch.Tensor, add: torch.Tensor) -> bool:
    """Whether oneDNN adds ``add`` as it writes the convolution's output (both channels-last, a PyTorch built with
    oneDNN's fused operators), saving a pass over the activations."""
    return (
        onednn.fused_ops_available() and x.is_contiguous(memory_format=_CL3D) and add.is_contiguous(memory_format=_CL3D)
    )


class _FastBackward(torch.autograd.Function):
    """``F.conv3d`` forward (``+ add`` in the same oneDNN primitive); the backward described in the module
    docstring."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride: Sequence[int],
        padding: Sequence[int],
        groups: int,
        add: torch.Tensor | None,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conf = (tuple(stride), tuple(padding), groups, bias is not None)
        if add is None:
            return F.conv3d(x, weight, bias, stride, padding, 1, groups)
        return onednn.conv_add(x, add, weight, bias, padding=padding, stride=stride, groups=groups)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride, padding, groups, has_bias = ctx.conf
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_add = grad if ctx.needs_input_grad[6] else None  # the residual sum's gradient passes through
        channels_last = x.is_contiguous(memory_format=_CL3D)
        grad_w = grad_x = grad_b = None
        one_channel = _one_channel_per_group(weight, groups)
        if need_w and one_channel and native.load() and kernels.weight_grad_fits(weight, groups, stride, padding):
            # on the fiber kernel, from the channels-last tensors (conv2's first conv_m1: its backward 78 -> 38.5 ms)
            grad_w = kernels.conv3d_weight_grad(x, grad, weight.shape, padding, groups, stride[0])
            need_w = False
        if one_channel:  # the input gradient (and the weight gradient without the kernel) is computed in NCDHW
            # the input gradient reads only x's shape and layout: without the weight gradient, no copy of x
            grad, x = grad.contiguous(), x.contiguous() if need_w else x.new_empty(x.shape)
        elif channels_last:
            grad = grad.contiguous(memory_format=_CL3D)
        if need_x:
            grad_x = conv3d_input_grad(grad, x, weight, stride, padding, groups)
            grad_x = grad_x.contiguous(memory_format=_CL3D) if channels_last else grad_x
        if need_w:
            grad_w = conv3d_weight_grad(grad, x, weight, stride, padding, groups)
        if has_bias and need_b:
            grad_b = grad.sum((0, 2, 3, 4))
        return grad_x, grad_w, grad_b, None, None, None, grad_add


def _native_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    groups: int,
    mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.ops.aten.convolution_backward(
        grad, x, weight, None, list(stride), list(padding), [1, 1, 1], False, [0, 0, 0], groups, mask
    )


def conv3d_input_grad(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    groups: int,
) -> torch.Tensor:
    """``d loss / d x`` of ``F.conv3d(x, weight, None, stride, padding, 1, groups)`` given ``grad`` (its output's).

    Layouts: ``grad (N, C_out, T', H', W')``, ``x (N, C_in, T, H, W)``, ``weight (C_out, C_in / groups, kt, kh, kw)``.
    """
    if _one_channel_per_group(weight, groups):
        # One input channel per group, several outputs: oneDNN's channels-last kernel is slow here, plain is not.
        plain_weight = weight.contiguous().view(-1).view(weight.shape)  # plain strides, even for size-1 dims
        out = _native_backward(
            grad.contiguous(), x.contiguous(), plain_weight, stride, padding, groups, [True, False, False]
        )[0]
        return out.contiguous(memory_format=_CL3D) if x.is_contiguous(memory_format=_CL3D) else out
    return _native_backward(grad, x, weight, stride, padding, groups, [True, False, False])[0]


def conv3d_weight_grad(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    groups: int,
) -> torch.Tensor:
    """``d loss / d weight`` of ``F.conv3d(x, weight, None, stride, padding, 1, groups)``; layouts as above.

    Split into 2D weight gradients per temporal tap (module docstring) when ``x`` and ``grad`` are
    channels-last-3d, the temporal stride is 1 and the temporal padding keeps the length; else PyTorch's own.
    """
    if _one_channel_per_group(weight, groups):
        return _weight_grad_one_channel(grad, x, weight, stride, padding, groups)
    kt = weight.shape[2]
    n, _, t, _, _ = x.shape
    splittable = (
        stride[0] == 1
        and padding[0] == kt // 2
        and kt % 2 == 1
        and grad.shape[2] == t
        and x.is_contiguous(memory_format=_CL3D)
        and grad.is_contiguous(memory_format=_CL3D)
    )
    if not splittable:
        return _native_backward(grad, x, weight, stride, padding, groups, [False, True, False])[1]
    if kt > 1 and weight.shape[1] >= FOLD_MIN_CHANNELS:
        return _weight_grad_folded(grad, x, weight, stride, padding, groups)
    frames_x = _frames(x)  # (N*T, C_in, H, W) views, channels-last
    frames_g = _frames(grad)
    w2d = weight[:, :, 0]
    taps = []
    for k in range(kt):
        shift = k - kt // 2  # this tap pairs output frame t with input frame t + shift
        if abs(shift) >= t:
            taps.append(torch.zeros_like(w2d))
            continue
        g_frames, x_frames = _shifted(frames_g, frames_x, shift)
        tap = _weight_grad_2d(g_frames, x_frames, w2d, stride, padding, groups)
        if shift != 0 and n > 1:
            # Subtract the pairs that run from one clip into the next (the flat frame batch has no clip edges).
            g_edge, x_edge = _clip_edges(frames_g, frames_x, shift, t)
            tap = tap - _weight_grad_2d(g_edge, x_edge, w2d, stride, padding, groups)
        taps.append(tap)
    return torch.stack(taps, dim=2)


FOLD_MIN_CHANNELS = 24  # input channels per group from which _weight_grad_folded beats one 2D gradient per tap


def _weight_grad_folded(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    groups: int,
) -> torch.Tensor:
    """The weight gradient of a ``kt x kh x kw`` convolution (temporal stride 1, padding ``kt // 2``) as one 2D
    weight gradient, the temporal taps folded into the input channels::

        cat[n, t, h, w, g, k, i] = x[n, g * ci + i, t + k - kt//2, h, w]      (zero outside the clip)
        dW2d = weight gradient of a 2D convolution (groups G, kt * ci inputs per group) of cat's frames

    One copy of ``x`` (``kt`` frames per output frame) instead of ``kt`` gradients of shifted frame batches and the
    clip-edge corrections: with 24-48 input channels per group (mfnet3d's ``conv4``/``conv5`` at batch 8)
    21.4 / 24.4 / 18.0 -> 17.8 / 18.3 / 14.5 ms; with 6 or 12 channels oneDNN's grouped gradient of the wider
    input is slower (``conv3``/``conv4``'s first units: 23.3 / 16.8 -> 38.6 / 18.6 ms), so those keep the split.
    Layouts as in ``conv3d_weight_grad`` (channels-last-3d ``x`` and ``grad``).
    """
    n, _, t, h, w = x.shape
    c_out, ci, kt, kh, kw = weight.shape
    pd = padding[0]
    cat = x.new_empty(n, t, h, w, groups, kt, ci)
    frames = x.permute(0, 2, 3, 4, 1).reshape(n, t, h, w, groups, ci)  # a view of the channels-last memory
    for k in range(kt):
        lo, hi = max(0, pd - k), min(t, t + pd - k)  # output frames whose input frame t + k - pd is in the clip
        cat[:, :lo, ..., k, :].zero_()
        cat[:, hi:, ..., k, :].zero_()
        cat[:, lo:hi, ..., k, :].copy_(frames[:, lo + k - pd : hi + k - pd])
    x2d = cat.view(n * t, h, w, groups * kt * ci).permute(0, 3, 1, 2)  # (N*T, G*kt*ci, H, W) channels-last
    g2d = _frames(grad)
    w2d = weight.new_empty(c_out, kt * ci, kh, kw)
    dw = _weight_grad_2d(g2d, x2d, w2d, stride, padding, groups)
    return dw.reshape(c_out, kt, ci, kh, kw).permute(0, 2, 1, 3, 4)


def _one_channel_per_group(weight: torch.Tensor, groups: int) -> bool:
    """One input channel per group and several outputs (conv2's first conv_m1: 16 -> 96 channels, 16 groups)."""
    return weight.shape[1] == 1 and groups > 1 and weight.shape[0] != groups


def _weight_grad_one_channel(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    groups: int,
) -> torch.Tensor:
    """The weight gradient of a convolution with one input channel per group, as one batched matrix product.

    With one input channel per group the im2col matrix of a group is small (``taps`` columns), so it is built::

        cols[g, tap, p] = x_padded[n, g, p * stride + tap]      p = (n, t', h', w') over the output positions
        dW[g, o, tap]   = sum_p grad[n, g * m + o, p] * cols[g, tap, p]        (m outputs per group)

    2.4x faster than oneDNN's channels-last kernel for conv2's first conv_m1 (16 ms against 39 ms, batch 8 at
    16x112x112). Layouts as in ``conv3d_weight_grad``.
    """
    n = x.shape[0]
    c_out, _, kt, kh, kw = weight.shape
    m = c_out // groups
    t2, h2, w2 = grad.shape[2:]
    (st, sh, sw), (pd, ph, pw) = stride, padding
    x_padded = F.pad(x.contiguous(), (pw, pw, ph, ph, pd, pd))
    cols = x.new_empty(groups, kt * kh * kw, n, t2, h2, w2)
    tap = 0
    for a in range(kt):
        for b in range(kh):
            for c in range(kw):
                window = x_padded[
                    :, :, a : a + st * (t2 - 1) + 1 : st, b : b + sh * (h2 - 1) + 1 : sh, c : c + sw * (w2 - 1) + 1 : sw
                ]
                cols[:, tap].copy_(window.transpose(0, 1))
                tap += 1
    g = grad.contiguous().view(n, groups, m, t2 * h2 * w2).permute(1, 2, 0, 3).reshape(groups, m, -1)
    dw = torch.bmm(g, cols.view(groups, kt * kh * kw, -1).transpose(1, 2))  # (G, m, taps)
    return dw.reshape(weight.shape).contiguous(memory_format=torch.contiguous_format)


def _frames(v: torch.Tensor) -> torch.Tensor:
    """A channels-last-3d ``(N, C, T, H, W)`` tensor as the channels-last frame batch ``(N*T, C, H, W)`` (a view)."""
    n, c, t, h, w = v.shape
    return v.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)


def _shifted(frames_g: torch.Tensor, frames_x: torch.Tensor, shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Views pairing output frame ``i`` with input frame ``i + shift`` of the flat frame batch."""
    if shift > 0:
        return frames_g[:-shift], frames_x[shift:]
    if shift < 0:
        return frames_g[-shift:], frames_x[:shift]
    return frames_g, frames_x


def _clip_edges(
    frames_g: torch.Tensor, frames_x: torch.Tensor, shift: int, t: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs ``(output frame i, input frame i + shift)`` of ``_shifted`` whose frames lie in different clips."""
    total = frames_g.shape[0]
    if shift > 0:  # output frames t-shift..t-1 of clips 0..N-2 meet the first frames of the next clip
        index = torch.tensor([c * t + r for c in range(total // t - 1) for r in range(t - shift, t)])
    else:  # output frames 0..|shift|-1 of clips 1..N-1 meet the last frames of the previous clip
        index = torch.tensor([c * t + r for c in range(1, total // t) for r in range(-shift)])
    g = frames_g.index_select(0, index).contiguous(memory_format=_CL2D)
    x = frames_x.index_select(0, index + shift).contiguous(memory_format=_CL2D)
    return g, x


def _weight_grad_2d(
    g: torch.Tensor, x: torch.Tensor, w2d: torch.Tensor, stride: Sequence[int], padding: Sequence[int], groups: int
) -> torch.Tensor:
    return torch.ops.aten.convolution_backward(
        g, x, w2d, None, list(stride[1:]), list(padding[1:]), [1, 1], False, [0, 0], groups, [False, True, False]
    )[1]
