"""The fast path: the same model, computing the same numbers in less time (inference and training).

Inference (``optimize_for_inference``) works on a copy of the model, in one of these modes:

``"eager"``
    BatchNorms that read one convolution's output are folded into it (``mfnet.tools.export.fold_batchnorm``)
    and weights and activations use the layout the device's convolutions run fastest in
    (``preferred_memory_format``): channels-last (``N, T, H, W, C`` in memory) on CPU, which oneDNN's grouped
    3D convolutions need to run fast, and on CUDA for dense models; NCDHW on CUDA for models with grouped
    convolutions (cuDNN runs those 1.5-2x faster there). Any model and device.
``"fused"`` (the default on CPU)
    ``"eager"``, and then every multi-fiber unit, the stem ``Conv -> BN -> ReLU`` and the tail ``BN -> ReLU``
    run as oneDNN primitives with fused post-ops and weights packed once::

        a = relu(x * s + t)                    one pass (a depthwise 1x1 primitive), instead of BN then ReLU
        h = relu(conv_m1'(a))                  conv_m1 with conv_m2's BN folded in and ReLU as a post-op
        out = conv_m2(h) + shortcut            the residual sum as a post-op (dense convolutions)

    Each pre-activation unit then makes 2 memory passes besides its convolutions, instead of 10. Where the
    hand-written kernels of ``mfnet.tools.fiber_kernel`` compiled, the multiplexer and the BN-ReLU after it run
    as one pass on them (channel counts multiples of 24: every unit of mfnet3d but the first), and in units whose
    fibers have 6, 12 or 24 channels the second line too (frames at least 14 wide), so that such a unit is one
    kernel pipeline.
``"compile"``
    ``"eager"`` compiled by ``torch.compile`` (Inductor; on CPU with weight freezing). Costs tens of seconds
    of compilation on the first call (reported in ``FastpathInfo.compile_s``) and recompiles for new shapes.

Training (``prepare_for_training``) puts the model and its batches in channels-last layout, which speeds up
the forward and backward convolutions alike, and gives the 3D convolutions a faster CPU backward
(``mfnet.tools.train_convs``; the 6- and 12-channel fiber convolutions run forward and backward on the
kernel of ``mfnet.tools.fiber_kernel``); ``autocast_context`` gives mixed precision on GPUs only (on a CPU
without native bf16 it is many times slower, so it is never used there).

On CPU both keep freed memory in the process for the next step instead of returning it to the system
(``mfnet.tools.allocator``; 4-13% faster steps here, process-wide, ``MFNET_KEEP_FREED_MEMORY=0`` turns it off).
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mfnet.models.fiber import MultiFiberUnit
from mfnet.models.layers import BnActConv
from mfnet.tools import fiber_kernel
from mfnet.tools.allocator import keep_freed_memory
from mfnet.tools.export import fold_batchnorm
from mfnet.tools.fiber_kernel import KernelFiberConv, KernelFiberTail, KernelMultiplexer
from mfnet.tools.kernel_pool import KernelMaxPool, max_pool_supported
from mfnet.tools.train_bn import enable_fused_bn_relu
from mfnet.tools.train_convs import FastBackwardConv3d, enable_fast_backward
from mfnet.tools.train_units import enable_fused_sums

MODES = ("auto", "eager", "fused", "compile")
MAX_PACKED_SHAPES = 4  # input shapes per convolution whose packed weights are kept

_BatchNorm = nn.modules.batchnorm._BatchNorm
_Conv = nn.Conv2d | nn.Conv3d


@dataclass
class FastpathInfo:
    """What ``optimize_for_inference`` did, stored as ``fastpath_info`` on the returned module.

    Attributes:
        mode: The mode that was applied (``"eager"``, ``"fused"`` or ``"compile"``).
        folded: Names of the BatchNorms folded into the convolution before them.
        fused_units: Number of multi-fiber units that run as fused oneDNN primitives.
        kernel_units: How many of those run their fiber convolutions on the hand-written kernel
            (``mfnet.tools.fiber_kernel``).
        compile_s: Seconds spent compiling on the example input (``"compile"`` mode; else 0).
        memory_format: The layout of the weights; feed inputs in it too (``x.contiguous(memory_format=...)``).
        max_rel_diff: Largest difference of the logits on the example input, relative to the largest plain
            logit (NaN when not checked).
    """

    mode: str
    folded: list[str]
    fused_units: int = 0
    kernel_units: int = 0
    compile_s: float = 0.0
    max_rel_diff: float = float("nan")
    memory_format: torch.memory_format = torch.channels_last_3d


def memory_format(ndim: int) -> torch.memory_format:
    """The channels-last memory format for a tensor of ``ndim`` dimensions (5: 3D, 4: 2D)."""
    return torch.channels_last_3d if ndim == 5 else torch.channels_last


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` (``(N, C, T, H, W)`` or ``(N, C, H, W)``) with its channels innermost in memory; same values."""
    return x.contiguous(memory_format=memory_format(x.ndim)) if x.ndim in (4, 5) else x


def to_layout(x: torch.Tensor, layout: torch.memory_format) -> torch.Tensor:
    """``x`` in channels-last (``layout`` is a channels-last format) or contiguous NC... layout; same values."""
    return x.contiguous() if layout == torch.contiguous_format else to_channels_last(x)


def preferred_memory_format(model: nn.Module, device: torch.device | str, ndim: int = 5) -> torch.memory_format:
    """The layout in which ``model``'s convolutions run fastest on ``device``, for inputs of ``ndim`` dimensions.

    Channels-last on CPU (oneDNN) and for dense models on CUDA. On CUDA, models with grouped convolutions stay in
    ``torch.contiguous_format`` (NCDHW): cuDNN runs MF-Net's 16-group convolutions 1.5-2x faster there, and the
    whole mfnet3d 1.25x (fp32) to 1.5x (fp16) faster (H100, batch 16, ``benchmarks/bench_gpu.py``).
    """
    if torch.device(device).type == "cuda" and any(
        isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 for m in model.modules()
    ):
        return torch.contiguous_format
    return memory_format(ndim)


def fused_ops_available(device: torch.device | str = "cpu") -> bool:
    """Whether the fused oneDNN primitives can run: a CPU build of PyTorch with oneDNN and its fusion ops."""
    return (
        torch.device(device).type == "cpu"
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
        and hasattr(torch.ops.mkldnn, "_reorder_convolution_weight")
    )


@torch.no_grad()
def optimize_for_inference(
    model: nn.Module, example_input: torch.Tensor, *, mode: str = "auto", check: bool = False
) -> nn.Module:
    """A copy of ``model`` that computes the same outputs (within 1e-4 relative) faster, for inference only.

    The copy keeps the model's class and interface (``forward``, ``clip_features``, ``forward_features``,
    ``num_classes``, ...) except in ``"compile"`` mode, which returns the compiled module (the original
    attributes stay reachable through it). Gradients are off; the copy is in eval mode and not meant to be
    trained or saved (save the original model).

    Args:
        model: A classifier (any mode; the original is not changed).
        example_input: A batch like the ones that will be run, ``(N, C, T, H, W)`` (or ``(N, C, H, W)`` for an
            image model), on the device to run on: the copy is moved there (the model may be elsewhere, e.g. loaded
            on the CPU). It also picks, for ``"compile"``, the traced shape.
        mode: ``"auto"`` (``"fused"`` where oneDNN can run it, else ``"eager"``), ``"eager"``, ``"fused"`` or
            ``"compile"``; see the module docstring.
        check: Run the plain and the optimized model on ``example_input`` and raise if their logits differ
            by more than 1e-4 of the largest logit; the difference is stored in ``fastpath_info``.

    Returns:
        The optimized module, with a ``fastpath_info`` attribute (``FastpathInfo``).

    Raises:
        ValueError: On an unknown mode, ``"fused"`` where oneDNN cannot run, or a failed check.
    """
    if mode not in MODES:
        raise ValueError(f"unknown fast-path mode {mode!r}: use one of {', '.join(MODES)}")
    device = example_input.device
    fusable = fused_ops_available(device) and example_input.dtype == torch.float32
    if mode == "auto":
        mode = "fused" if fusable else "eager"
    if mode == "fused" and not fusable:
        raise ValueError(
            f"the fused fast path needs float32 on a CPU PyTorch with oneDNN, not {example_input.dtype} on "
            f"{device}; use mode='eager'"
        )
    if device.type == "cpu":
        keep_freed_memory()
    fast = copy.deepcopy(model).eval().to(device)  # the copy runs where the example lives
    folded = fold_batchnorm(fast)
    for p in fast.parameters():
        p.requires_grad_(False)
    model_ndim = getattr(model, "input_ndim", example_input.ndim)  # an image model may take clips too
    layout = preferred_memory_format(fast, device, model_ndim)
    fast = fast.to(memory_format=layout)
    info = FastpathInfo(mode=mode, folded=folded, memory_format=layout)
    if mode == "fused":
        info.fused_units = fuse_modules(fast, n_dim=model_ndim - 2)
        info.kernel_units = sum(isinstance(m, KernelFiberTail) for m in fast.modules())
    elif mode == "compile":
        fast, info.compile_s = _compile(fast, to_layout(example_input, layout))
    if check:
        reference = copy.deepcopy(model).eval().to(device)
        expected = reference(example_input)
        got = fast(example_input)
        info.max_rel_diff = float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-12))
        if not info.max_rel_diff <= 1e-4:
            raise ValueError(f"the {mode} fast path differs from the model by {info.max_rel_diff:.2e} (relative)")
    fast.fastpath_info = info
    return fast


def _compile(model: nn.Module, example_input: torch.Tensor) -> tuple[nn.Module, float]:
    """``torch.compile`` (Inductor, weight freezing on CPU) and the seconds its first call took."""
    import torch._inductor.config as inductor_config

    compiled = torch.compile(model, dynamic=False)
    start = time.perf_counter()
    with _inductor_freezing(inductor_config, example_input.device.type == "cpu"), torch.inference_mode():
        compiled(example_input)
    return compiled, time.perf_counter() - start


@contextlib.contextmanager
def _inductor_freezing(config, enabled: bool) -> Iterator[None]:
    previous = config.freezing
    config.freezing = enabled
    try:
        yield
    finally:
        config.freezing = previous


# ---------------------------------------------------------------------------------------------------------
# Fused oneDNN modules (CPU inference)


def fuse_modules(model: nn.Module, *, n_dim: int) -> int:
    """Replaces, in place, the parts of an (eval, BN-folded) model that have a fused oneDNN form.

    ``MultiFiberUnit`` -> ``FusedFiberUnit``; an ``nn.Sequential`` ``Conv -> BN|Identity [-> ReLU]`` (the stem,
    torchvision's conv blocks) -> ``FusedConv``; an ``nn.Sequential`` ``BN -> ReLU`` (the tail) ->
    ``FusedBnReLU``; a ``MaxPool3d`` within frames (the stem's) -> ``KernelMaxPool``. Anything else is kept.
    ``n_dim`` is 3 for a video model, 2 for an image model.

    Returns:
        The number of fused multi-fiber units.
    """
    count = 0
    for name, child in list(model.named_children()):
        replacement: nn.Module | None = None
        if type(child) is MultiFiberUnit and _fusable_unit(child, n_dim):
            replacement = FusedFiberUnit(child)
            count += 1
        elif isinstance(child, nn.Sequential) and type(child).forward is nn.Sequential.forward:
            replacement = _fuse_sequential(child, n_dim)
        elif n_dim == 3 and max_pool_supported(child) and fiber_kernel.load() is not None:
            replacement = KernelMaxPool(child)  # the stem's pool: 2.07 -> 0.82 ms at 16x224x224
        if replacement is not None:
            setattr(model, name, replacement)
        else:
            count += fuse_modules(child, n_dim=n_dim)
    return count


def _fusable_unit(unit: MultiFiberUnit, n_dim: int) -> bool:
    if hasattr(unit, "conv_dw"):  # FusedFiberUnit runs conv_m1 -> conv_m2 only; a depthwise conv between stays eager
        return False
    parts = [getattr(unit, n) for n in ("conv_i1", "conv_i2", "conv_m1", "conv_m2", "conv_w1") if hasattr(unit, n)]
    return all(
        type(p) is BnActConv and type(p.relu) is nn.ReLU and _is_conv(p.conv, n_dim) and _is_bn_or_identity(p.bn)
        for p in parts
    )


def _fuse_sequential(seq: nn.Sequential, n_dim: int) -> nn.Module | None:
    layers = list(seq)
    if len(layers) == 3 and _is_conv(layers[0], n_dim) and _is_bn_or_identity(layers[1]) and _is_relu(layers[2]):
        return FusedConv.from_conv(layers[0], post_bn=_bn_or_none(layers[1]), relu=True)
    if len(layers) == 2 and _is_conv(layers[0], n_dim) and _is_bn_or_identity(layers[1]):
        return FusedConv.from_conv(layers[0], post_bn=_bn_or_none(layers[1]))
    if len(layers) == 2 and isinstance(layers[0], _BatchNorm) and _is_relu(layers[1]):
        return FusedBnReLU(layers[0])
    return None


def _is_conv(module: nn.Module, n_dim: int) -> bool:
    kind = nn.Conv3d if n_dim == 3 else nn.Conv2d
    return (
        isinstance(module, kind)
        # subclasses that only change __init__ (torchvision's) or the backward pass (training) are fine
        and (type(module).forward is kind.forward or isinstance(module, FastBackwardConv3d))
        and module.padding_mode == "zeros"
    )


def _is_relu(module: nn.Module) -> bool:
    return type(module) is nn.ReLU


def _is_bn_or_identity(module: nn.Module) -> bool:
    return type(module) is nn.Identity or (isinstance(module, _BatchNorm) and module.running_var is not None)


def _bn_or_none(module: nn.Module) -> _BatchNorm | None:
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
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                self.weight, self.padding, self.stride, self.dilation, self.groups, list(shape)
            )
            self._packed[shape] = packed
        return packed

    def forward(self, x: torch.Tensor, add: torch.Tensor | None = None, *, add_in_place: bool = False) -> torch.Tensor:
        """``relu?(conv(x) + bias) [+ add]``; with ``add_in_place`` the result is written into ``add`` (a temporary
        of the caller's, channels-last, same shape) where oneDNN can accumulate into it: 1.2-1.5x faster than a
        separate output for a dense 1x1 convolution (``conv_m2`` of a first unit)."""
        x = x.contiguous(memory_format=memory_format(self.ndim))
        weight = self._packed_weight(x)
        args = (self.padding, self.stride, self.dilation, self.groups)
        dense_sum = add is not None and self.groups == 1 and self.attr == "none"  # oneDNN fuses sums into dense convs
        if dense_sum and add_in_place and add.is_contiguous(memory_format=memory_format(self.ndim)):
            return torch.ops.mkldnn._convolution_pointwise_.binary(
                add, x, weight, self.bias, *args, "add", 1.0, None, [], ""
            )
        if dense_sum:
            add = add.contiguous(memory_format=memory_format(self.ndim))
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x, add, weight, self.bias, *args, "add", 1.0, None, [], ""
            )
        out = torch.ops.mkldnn._convolution_pointwise(x, weight, self.bias, *args, self.attr, [], "")
        return out if add is None else out.add_(add)

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
        if add is None and fiber_kernel.scale_shift_relu_applies(x):  # 1.5-2x faster than oneDNN's depthwise 1x1
            return fiber_kernel.scale_shift_relu(x, self.scale, self.shift)
        return super().forward(x, add)


class FusedFiberUnit(nn.Module):
    """A ``MultiFiberUnit`` (eval, BN-folded) as fused oneDNN primitives; same input and output.

    ::

        x_in = conv_i2(relu(conv_i1'(bnrelu_i(x)))) + x         (multiplexer; conv_i2's BN folded in conv_i1')
        out  = conv_m2(relu(conv_m1'(bnrelu_m(x_in)))) + shortcut(x)
    """

    def __init__(self, unit: MultiFiberUnit, *, use_kernel: bool = True) -> None:
        super().__init__()
        self.multiplexer = hasattr(unit, "conv_i1")
        if self.multiplexer:
            self.act_i = FusedBnReLU(unit.conv_i1.bn)
            self.conv_i1 = FusedConv.from_conv(unit.conv_i1.conv, post_bn=_bn_or_none(unit.conv_i2.bn), relu=True)
            self.conv_i2 = FusedConv.from_conv(unit.conv_i2.conv)
        self.act_m = FusedBnReLU(unit.conv_m1.bn)
        self.conv_m1 = FusedConv.from_conv(unit.conv_m1.conv, post_bn=_bn_or_none(unit.conv_m2.bn), relu=True)
        self.conv_m2 = FusedConv.from_conv(unit.conv_m2.conv)
        self.projection = hasattr(unit, "conv_w1")
        if self.projection:
            self.act_w = FusedBnReLU(unit.conv_w1.bn)
            self.conv_w1 = FusedConv.from_conv(unit.conv_w1.conv)
        self.kernel_tail = _kernel_tail(unit, self.conv_m1, self.conv_m2) if use_kernel else None
        self.kernel_m1 = (
            _kernel_m1(unit, self.conv_m1, self.conv_m2) if use_kernel and self.kernel_tail is None else None
        )
        self.kernel_mux = None
        if use_kernel and self.multiplexer:
            self.kernel_mux = _kernel_multiplexer(unit, self.conv_i1, self.conv_i2)
        # where the multiplexer's pass also writes the projection's BN-ReLU (subsampled), the projection runs at
        # stride 1 on that, and no pass of its own reads the whole input: first units of conv3/conv4/conv5 at 224
        # 12.67/10.83/9.44 -> 12.39/10.67/9.18 ms (medians of 50 interleaved runs)
        self.conv_w1_compact = None
        if self.kernel_mux is not None and self.kernel_mux.has_projection:
            w1 = self.conv_w1
            self.conv_w1_compact = FusedConv(
                w1.weight, w1.bias, padding=[0] * 3, stride=[1] * 3, dilation=[1] * 3, groups=1
            )
            if self.kernel_m1 is not None and self.kernel_m1.has_dense:
                # conv2's first unit: the projection joins the kernel's dense conv_m2 as 16 more input channels
                self.kernel_m1.fold_projection(w1.weight, w1.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_channels_last(x)
        if self.kernel_mux is not None and _kernel_can_run(x):
            if self.kernel_tail is not None and not self.projection and fiber_kernel.worth_it(x):
                return self.kernel_tail.forward_unit(x, self.kernel_mux)  # multiplexer, pack, conv_m1, conv_m2 + x
            if self.kernel_m1 is not None and self.conv_w1_compact is not None and self.kernel_m1.worth_it(x):
                # a stage's first unit (conv2-conv4): the multiplexer packs conv_m1's buffer; conv_m1 (temporal
                # stride in conv2, spatial in conv3/conv4) and the dense conv_m2 with the projection's sum on the
                # kernels
                proj = self.kernel_m1.pack_from(x, self.kernel_mux)
                if self.kernel_m1.projection_channels:
                    return self.kernel_m1.conv(x.shape, extra=proj)  # conv_m1, then conv_m2 and the projection
                shortcut = self.conv_w1_compact(proj)
                if self.kernel_m1.has_dense:
                    return self.kernel_m1.conv(x.shape, add=shortcut)
                return self.conv_m2(self.kernel_m1.conv(x.shape), add=shortcut, add_in_place=True)
            if self.conv_w1_compact is not None:
                y, proj = self.kernel_mux.forward_with_projection(x)
                return self.conv_m2(self.conv_m1(y), add=self.conv_w1_compact(proj), add_in_place=True)
            shortcut = self.conv_w1(self.act_w(x)) if self.projection else x
            return self.conv_m2(self.conv_m1(self.kernel_mux(x)), add=shortcut, add_in_place=self.projection)
        x_in = self.conv_i2(self.conv_i1(self.act_i(x)), add=x) if self.multiplexer else x
        shortcut = self.conv_w1(self.act_w(x)) if self.projection else x
        if self.kernel_tail is not None and _kernel_runs(x):
            return self.kernel_tail(x_in, shortcut)
        if self.kernel_m1 is not None and self.kernel_m1.spatial_stride == 1 and _kernel_runs(x):
            return self.conv_m2(self.kernel_m1(x_in), add=shortcut, add_in_place=self.projection)
        return self.conv_m2(self.conv_m1(self.act_m(x_in)), add=shortcut, add_in_place=self.projection)


def _kernel_can_run(x: torch.Tensor) -> bool:
    return x.dtype == torch.float32 and x.device.type == "cpu"


def _kernel_runs(x: torch.Tensor) -> bool:
    return _kernel_can_run(x) and fiber_kernel.worth_it(x)


def _kernel_m1(unit: MultiFiberUnit, conv_m1: FusedConv, conv_m2: FusedConv) -> KernelFiberConv | None:
    """The unit's ``BN-ReLU -> conv_m1`` on the hand-written kernel, where it runs, with ``conv_m2`` after it where
    that is a dense 1x1x1 convolution (else ``conv_m2`` stays on oneDNN). A spatial stride of 2 (the first units of
    mfnet3d's conv3 and conv4) runs where ``conv_m2`` is dense and the kernel's strided tile applies."""
    bn = unit.conv_m1.bn
    if not isinstance(bn, _BatchNorm) or conv_m1.attr != "relu" or fiber_kernel.load() is None:
        return None
    dense = conv_m2.groups == 1 and conv_m2.attr == "none" and conv_m2.weight.shape[0] % 8 == 0
    dense = dense and tuple(conv_m2.weight.shape[2:]) == (1, 1, 1) and tuple(conv_m2.stride) == (1, 1, 1)
    stride = tuple(conv_m1.stride)
    spatial_stride = 1
    if stride[1:] == (2, 2) and dense and KernelFiberConv.spatial_stride_applies(conv_m1.weight, conv_m1.groups):
        stride, spatial_stride = (stride[0], 1, 1), 2  # the strided tile reads the input at stride 2 itself
    if (
        conv_m1.weight.device.type != "cpu"
        or tuple(conv_m1.dilation) != (1, 1, 1)
        or not fiber_kernel.supports(conv_m1.weight, conv_m1.groups, stride, tuple(conv_m1.padding))
    ):
        return None
    scale, shift = bn_affine(bn)
    return KernelFiberConv(
        scale,
        shift,
        conv_m1.weight,
        conv_m1.bias,
        conv_m1.groups,
        temporal_stride=conv_m1.stride[0],
        spatial_stride=spatial_stride,
        dense_weight=conv_m2.weight if dense else None,
        dense_bias=conv_m2.bias if dense else None,
    )


def _kernel_multiplexer(unit: MultiFiberUnit, conv_i1: FusedConv, conv_i2: FusedConv) -> KernelMultiplexer | None:
    """The unit's multiplexer and the BN-ReLU before ``conv_m1`` on the kernel, where it runs it: BN before two dense
    1x1x1 convolutions between channel counts that are multiples of 24."""
    bn_i, bn_m = unit.conv_i1.bn, unit.conv_m1.bn
    for conv in (conv_i1, conv_i2):
        if conv.groups != 1 or tuple(conv.weight.shape[2:]) != (1, 1, 1) or tuple(conv.stride) != (1, 1, 1):
            return None
        if conv.weight.device.type != "cpu":
            return None
    if not (isinstance(bn_i, _BatchNorm) and isinstance(bn_m, _BatchNorm)) or conv_i1.attr != "relu":
        return None
    if conv_i2.attr != "none" or not KernelMultiplexer.supported(conv_i1.weight.shape[1], conv_i1.weight.shape[0]):
        return None
    if fiber_kernel.load() is None:
        return None
    scale, shift = bn_affine(bn_i)
    out_scale, out_shift = bn_affine(bn_m)
    projection = {}
    w1 = getattr(unit, "conv_w1", None)
    if w1 is not None and isinstance(w1.bn, _BatchNorm) and _plain_1x1(w1.conv):
        proj_scale, proj_shift = bn_affine(w1.bn)
        projection = dict(proj_scale=proj_scale, proj_shift=proj_shift, proj_stride=tuple(w1.conv.stride))
    return KernelMultiplexer(
        scale, shift, conv_i1.weight, conv_i1.bias, conv_i2.weight, conv_i2.bias, out_scale, out_shift, **projection
    )


def _plain_1x1(conv: nn.Module) -> bool:
    """A dense 1x1x1 convolution without padding or dilation (any stride)."""
    return (
        isinstance(conv, nn.Conv3d)
        and conv.groups == 1
        and tuple(conv.kernel_size) == (1, 1, 1)
        and tuple(conv.padding) == (0, 0, 0)
        and tuple(conv.dilation) == (1, 1, 1)
    )


def _kernel_tail(unit: MultiFiberUnit, conv_m1: FusedConv, conv_m2: FusedConv) -> KernelFiberTail | None:
    """The unit's ``BN-ReLU -> conv_m1 -> conv_m2 (+ shortcut)`` on the hand-written kernel, where it runs."""
    bn = unit.conv_m1.bn
    if not isinstance(bn, _BatchNorm) or conv_m1.attr != "relu" or conv_m2.attr != "none":
        return None
    for conv in (conv_m1, conv_m2):
        if conv.weight.device.type != "cpu" or tuple(conv.dilation) != (1, 1, 1):
            return None
        if not fiber_kernel.supports(conv.weight, conv.groups, tuple(conv.stride), tuple(conv.padding)):
            return None
    if conv_m1.groups != conv_m2.groups or tuple(conv_m2.stride) != (1, 1, 1) or fiber_kernel.load() is None:
        return None
    scale, shift = bn_affine(bn)
    return KernelFiberTail(
        scale,
        shift,
        conv_m1.weight,
        conv_m1.bias,
        conv_m2.weight,
        conv_m2.bias,
        conv_m1.groups,
        temporal_stride=conv_m1.stride[0],
    )


# ---------------------------------------------------------------------------------------------------------
# Training


def prepare_for_training(model: nn.Module) -> nn.Module:
    """Makes ``model``'s training steps faster, in place; returns it.

    - weights in channels-last layout (feed batches through ``to_channels_last`` too);
    - every ``nn.Conv3d`` computes its gradients with the faster CPU backward of ``mfnet.tools.train_convs``
      (same forward; on GPUs the ordinary path runs);
    - every pre-activation ``BN -> ReLU`` runs as one fused function with fewer memory passes on CPU
      (``mfnet.tools.train_bn``);
    - the residual sums of multi-fiber units are done by the convolutions that produce them
      (``mfnet.tools.train_units``);
    - on CPU, freed memory is kept for the next step (``mfnet.tools.allocator``).

    The parameters keep their values, shapes and names (optimizers, checkpoints and ``state_dict`` are
    unaffected). Works on CPU and GPU.
    """
    ndim = getattr(model, "input_ndim", 5)
    model = model.to(memory_format=memory_format(ndim))
    if ndim == 5:
        enable_fast_backward(model)
        enable_fused_bn_relu(model)
        enable_fused_sums(model)
    if _on_cpu(model):
        keep_freed_memory()
    return model


def _on_cpu(model: nn.Module) -> bool:
    first = next(iter(model.parameters()), None)
    return first is None or first.device.type == "cpu"


def autocast_context(device: torch.device | str, *, enabled: bool = True) -> contextlib.AbstractContextManager:
    """Mixed precision for a training or inference step: fp16 autocast on CUDA, nothing elsewhere.

    fp16 rather than bf16: mfnet3d inference runs 1.12x faster in it on an H100 (training: the same speed), and
    MF-Net's activations are BatchNorm-bounded. Training with it needs a ``torch.amp.GradScaler``. On CPU
    autocast is never used: without native bf16 it is many times slower than fp32.
    """
    device = torch.device(device)
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()
