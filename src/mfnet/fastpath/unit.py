"""The fast path's backends for the multi-fiber unit and the stem, and the one place that chooses between them.

The fast path never replaces a module of the model. It attaches a backend to the ``backend`` slot of each
``MultiFiberUnit`` (a ``FiberBackend``, a child module without parameters) and of a ``ConvBnAct`` stem (a
``StemBackend``); the unit stays the same object of the same class, with its hooks, and its ``forward(x)`` becomes
``backend(unit, x)``. For every call, ``select_backend`` picks what runs on this input and this machine::

    "reference"  unit.forward_reference, the unit as built                 anything (GPU, fp16, fx tracing, ...)
    "training"   the same sums and convolutions, with BN-ReLU on the       training mode with gradients, CPU fp32,
                 native kernels, faster convolution gradients and the      after prepare_for_training
                 residual sums done by the convolutions (train_bn, train_convs)
    "fused"      the eval unit as oneDNN primitives with BNs folded and    after optimize_for_inference, CPU fp32
                 ReLUs fused (2 memory passes besides the convolutions)
    "kernel"     the same, with the multiplexer and the fiber              as "fused", where the native operators
                 convolutions on the native operators (InferencePlan)     loaded and the frames are wide enough

``prepare_for_training`` switches a backend's training path on (``fast_training``) and drops its inference plan;
``optimize_for_inference`` gives the backend of each unit of its copy an ``InferencePlan`` built from the
BN-folded eval unit. Each attaches a backend where there is none and updates the one there, so the two compose in
any order and any number of times. The stem's backend only has the training path ("training" or "reference").
"""

from __future__ import annotations

import torch
from torch import fx, nn

from mfnet.fastpath import kernels, native
from mfnet.fastpath.fused import FusedBnReLU, FusedConv, bn_affine, bn_or_none, to_channels_last
from mfnet.fastpath.kernels import KernelFiberConv, KernelFiberTail, KernelMultiplexer
from mfnet.fastpath.train_bn import bn_relu_train, bn_relu_train_runs
from mfnet.fastpath.train_convs import conv3d_train
from mfnet.models.fiber import MultiFiberUnit
from mfnet.models.layers import BnActConv, ConvBnAct

REFERENCE, TRAINING, FUSED, KERNEL = "reference", "training", "fused", "kernel"
BACKENDS = (REFERENCE, TRAINING, FUSED, KERNEL)
_BatchNorm = nn.modules.batchnorm._BatchNorm


def select_backend(
    module: nn.Module, x: torch.Tensor, *, fast_training: bool, plan: InferencePlan | None = None
) -> str:
    """The backend that runs ``module`` (a unit or the stem) on ``x``: the one place where the fast path chooses.

    Args:
        module: The unit or stem (its ``training`` flag is read).
        x: Its input, ``(N, C, T, H, W)`` (or ``(N, C, H, W)``).
        fast_training: Whether the training path is on (``prepare_for_training``).
        plan: The unit's inference plan, or ``None``.

    Returns:
        One of ``BACKENDS`` (see the module docstring).
    """
    if isinstance(x, fx.Proxy) or x.device.type != "cpu" or x.dtype != torch.float32:
        return REFERENCE
    if module.training:
        return TRAINING if fast_training and torch.is_grad_enabled() else REFERENCE
    if plan is None:
        return REFERENCE
    return KERNEL if plan.kernel_runs(x) else FUSED


class FiberBackend(nn.Module):
    """The backend in a ``MultiFiberUnit``'s slot: runs ``unit(x)`` on what ``select_backend`` picks; same outputs.

    It holds no parameters of its own; only an inference plan (``optimize_for_inference``'s copy) holds tensors.

    Args:
        fast_training: Whether the training path runs in training mode (``prepare_for_training`` sets it).

    Attributes:
        plan: The ``InferencePlan`` of the eval, BN-folded unit, or ``None`` (``optimize_for_inference`` sets it).
    """

    def __init__(self, *, fast_training: bool = False) -> None:
        super().__init__()
        self.fast_training = fast_training
        self.plan: InferencePlan | None = None

    @classmethod
    def of(cls, unit: MultiFiberUnit) -> FiberBackend:
        """``unit``'s backend, attached first where it has none."""
        if not isinstance(unit.backend, FiberBackend):
            unit.backend = cls()
        return unit.backend

    def select_backend(self, unit: MultiFiberUnit, x: torch.Tensor) -> str:
        """The backend that runs ``unit(x)`` (``select_backend`` with this backend's switches)."""
        return select_backend(unit, x, fast_training=self.fast_training, plan=self.plan)

    def forward(self, unit: MultiFiberUnit, x: torch.Tensor) -> torch.Tensor:
        """``unit(x)``; ``x`` ``(N, C, T, H, W)`` (``(N, C, H, W)`` for a 2D unit), output channels-last on the
        fused and kernel backends."""
        backend = self.select_backend(unit, x)
        if backend == KERNEL:
            return self.plan.forward_kernel(to_channels_last(x))
        if backend == FUSED:
            return self.plan.forward_fused(to_channels_last(x))
        if backend == TRAINING:
            return _forward_training(unit, x)
        return unit.forward_reference(x)

    def extra_repr(self) -> str:
        return f"fast_training={self.fast_training}"


class StemBackend:
    """The backend in a ``ConvBnAct`` stem's slot (``prepare_for_training``): in training, its 3D convolution with
    the faster CPU gradients of ``conv3d_train``; otherwise the stem as built. Same outputs.

    Not a module and without state, so the stem's children stay ``conv``, ``bn`` and ``relu``.
    """

    def __call__(self, stem: ConvBnAct, x: torch.Tensor) -> torch.Tensor:
        """``stem(x)``; ``x`` ``(N, C, T, H, W)``, channels-last for the fastest path."""
        if select_backend(stem, x, fast_training=True) != TRAINING:
            return stem.forward_reference(x)
        for module in stem:
            x = conv3d_train(module, x) if type(module) is nn.Conv3d else module(x)
        return x

    def __repr__(self) -> str:
        return "StemBackend()"


def _forward_training(unit: MultiFiberUnit, x: torch.Tensor) -> torch.Tensor:
    """``unit.forward_reference`` with each ``BN -> ReLU -> Conv`` on the training kernels and the two residual sums
    done by the convolutions that produce their left sides."""
    x_in = _train_part(unit.conv_i2, _train_part(unit.conv_i1, x), add=x) if hasattr(unit, "conv_i1") else x
    h = _train_part(unit.conv_m1, x_in)
    if hasattr(unit, "conv_dw"):
        h = _train_part(unit.conv_dw, h)
    shortcut = _train_part(unit.conv_w1, x) if hasattr(unit, "conv_w1") else x
    return _train_part(unit.conv_m2, h, add=shortcut)


def _train_part(part: nn.Module, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
    """``part(x) (+ add)`` for a ``BnActConv`` ``part`` in training (any other module runs as built)."""
    if not isinstance(part, BnActConv):
        out = part(x)
        return out if add is None else out + add
    if type(part.relu) is nn.ReLU and bn_relu_train_runs(x, part.bn):
        y = bn_relu_train(x, part.bn)
    else:
        y = part.relu(part.bn(x))
    if type(part.conv) is nn.Conv3d:
        return conv3d_train(part.conv, y, add)
    out = part.conv(y)
    return out if add is None else out + add


def unit_fuses(unit: MultiFiberUnit, n_dim: int) -> bool:
    """Whether ``InferencePlan`` can run ``unit``: every part a ``BnActConv`` with ReLU, a plain convolution and a
    BN (or the ``nn.Identity`` folding leaves), and no depthwise convolution between the fiber convolutions."""
    if hasattr(unit, "conv_dw"):
        return False
    parts = [getattr(unit, n) for n in ("conv_i1", "conv_i2", "conv_m1", "conv_m2", "conv_w1") if hasattr(unit, n)]
    kind = nn.Conv3d if n_dim == 3 else nn.Conv2d
    return all(
        type(p) is BnActConv
        and type(p.relu) is nn.ReLU
        and type(p.conv) is kind
        and p.conv.padding_mode == "zeros"
        and (type(p.bn) is nn.Identity or (isinstance(p.bn, _BatchNorm) and p.bn.running_var is not None))
        for p in parts
    )


class InferencePlan(nn.Module):
    """An eval, BN-folded ``MultiFiberUnit`` as fused oneDNN primitives and, where they run, native kernels.

    ::

        x_in = conv_i2(relu(conv_i1'(bnrelu_i(x)))) + x         (multiplexer; conv_i2's BN folded in conv_i1')
        out  = conv_m2(relu(conv_m1'(bnrelu_m(x_in)))) + shortcut(x)

    ``forward_fused`` runs it on oneDNN; ``forward_kernel`` with the parts the native operators took at build time
    (``kernel_runs`` says whether they run on an input). Input and output ``(N, C, T, H, W)`` channels-last.

    Args:
        unit: The eval unit, its BNs folded where they follow one convolution.
        use_kernels: Whether to build the native parts (where the operators loaded).
    """

    def __init__(self, unit: MultiFiberUnit, *, use_kernels: bool = True) -> None:
        super().__init__()
        self.multiplexer = hasattr(unit, "conv_i1")
        if self.multiplexer:
            self.act_i = FusedBnReLU(unit.conv_i1.bn)
            self.conv_i1 = FusedConv.from_conv(unit.conv_i1.conv, post_bn=bn_or_none(unit.conv_i2.bn), relu=True)
            self.conv_i2 = FusedConv.from_conv(unit.conv_i2.conv)
        self.act_m = FusedBnReLU(unit.conv_m1.bn)
        self.conv_m1 = FusedConv.from_conv(unit.conv_m1.conv, post_bn=bn_or_none(unit.conv_m2.bn), relu=True)
        self.conv_m2 = FusedConv.from_conv(unit.conv_m2.conv)
        self.projection = hasattr(unit, "conv_w1")
        if self.projection:
            self.act_w = FusedBnReLU(unit.conv_w1.bn)
            self.conv_w1 = FusedConv.from_conv(unit.conv_w1.conv)
        use_kernels = use_kernels and self.conv_m1.ndim == 5 and native.load()
        self.kernel_tail = _kernel_tail(unit, self.conv_m1, self.conv_m2) if use_kernels else None
        self.kernel_m1 = _kernel_m1(unit, self.conv_m1, self.conv_m2) if use_kernels and not self.kernel_tail else None
        self.kernel_mux = None
        if use_kernels and self.multiplexer:
            self.kernel_mux = _kernel_multiplexer(unit, self.conv_i1, self.conv_i2)
        # Where the multiplexer's pass also writes the projection's BN-ReLU (subsampled), the projection runs at
        # stride 1 on that, and no pass of its own reads the whole input.
        self.conv_w1_compact = None
        if self.kernel_mux is not None and self.kernel_mux.has_projection:
            w1 = self.conv_w1
            self.conv_w1_compact = FusedConv(
                w1.weight, w1.bias, padding=[0] * 3, stride=[1] * 3, dilation=[1] * 3, groups=1
            )
            if self.kernel_m1 is not None and self.kernel_m1.has_dense:
                # a first unit whose conv_m2 is dense: the projection joins it as more input channels
                self.kernel_m1.fold_projection(w1.weight, w1.bias)

    @property
    def has_kernels(self) -> bool:
        """Whether some part of the unit runs on the native operators."""
        return any(k is not None for k in (self.kernel_tail, self.kernel_m1, self.kernel_mux))

    def kernel_runs(self, x: torch.Tensor) -> bool:
        """Whether ``forward_kernel`` runs on ``x`` (float32 CPU): the multiplexer on the kernel runs at any width;
        without it, the tail or the first convolution where the frames are wide enough for the kernel to win."""
        if self.kernel_mux is not None:
            return True
        if not kernels.wide_enough(x):
            return False
        return self.kernel_tail is not None or (self.kernel_m1 is not None and self.kernel_m1.spatial_stride == 1)

    def forward_kernel(self, x: torch.Tensor) -> torch.Tensor:
        """The unit with its native parts; ``x`` channels-last ``(N, C, T, H, W)``, float32, CPU."""
        if self.kernel_mux is None:
            x_in = self.conv_i2(self.conv_i1(self.act_i(x)), add=x) if self.multiplexer else x
            shortcut = self.conv_w1(self.act_w(x)) if self.projection else x
            if self.kernel_tail is not None:
                return self.kernel_tail(x_in, shortcut)
            return self.conv_m2(self.kernel_m1(x_in), add=shortcut, add_in_place=self.projection)
        if self.kernel_tail is not None and not self.projection and kernels.wide_enough(x):
            return self.kernel_tail.forward_unit(x, self.kernel_mux)  # multiplexer, pack, conv_m1, conv_m2 + x
        if self.kernel_m1 is not None and self.conv_w1_compact is not None and self.kernel_m1.wide_enough(x):
            # a stage's first unit: the multiplexer packs conv_m1's buffer; conv_m1 and the dense conv_m2 with the
            # projection's sum on the kernels
            buf, proj = self.kernel_m1.pack_from(x, self.kernel_mux)
            if self.kernel_m1.projection_channels:
                return self.kernel_m1.conv(buf, x.shape, extra=proj)
            shortcut = self.conv_w1_compact(proj)
            if self.kernel_m1.has_dense:
                return self.kernel_m1.conv(buf, x.shape, add=shortcut)
            return self.conv_m2(self.kernel_m1.conv(buf, x.shape), add=shortcut, add_in_place=True)
        if self.conv_w1_compact is not None:
            y, proj = self.kernel_mux.forward_with_projection(x)
            return self.conv_m2(self.conv_m1(y), add=self.conv_w1_compact(proj), add_in_place=True)
        shortcut = self.conv_w1(self.act_w(x)) if self.projection else x
        return self.conv_m2(self.conv_m1(self.kernel_mux(x)), add=shortcut, add_in_place=self.projection)

    def forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """The unit on oneDNN alone; ``x`` channels-last."""
        x_in = self.conv_i2(self.conv_i1(self.act_i(x)), add=x) if self.multiplexer else x
        shortcut = self.conv_w1(self.act_w(x)) if self.projection else x
        return self.conv_m2(self.conv_m1(self.act_m(x_in)), add=shortcut, add_in_place=self.projection)


def _kernel_m1(unit: MultiFiberUnit, conv_m1: FusedConv, conv_m2: FusedConv) -> KernelFiberConv | None:
    """The unit's ``BN-ReLU -> conv_m1`` on the native kernel, where it runs, with ``conv_m2`` after it where that is
    a dense 1x1x1 convolution (else ``conv_m2`` stays on oneDNN). A spatial stride of 2 runs where ``conv_m2`` is
    dense and the kernel's strided tile fits."""
    bn = unit.conv_m1.bn
    if not isinstance(bn, _BatchNorm) or conv_m1.attr != "relu":
        return None
    dense = conv_m2.groups == 1 and conv_m2.attr == "none" and conv_m2.weight.shape[0] % 8 == 0
    dense = dense and tuple(conv_m2.weight.shape[2:]) == (1, 1, 1) and tuple(conv_m2.stride) == (1, 1, 1)
    stride = tuple(conv_m1.stride)
    spatial_stride = 1
    if stride[1:] == (2, 2) and dense and KernelFiberConv.spatial_stride_fits(conv_m1.weight, conv_m1.groups):
        stride, spatial_stride = (stride[0], 1, 1), 2  # the strided tile reads the input at stride 2 itself
    if (
        conv_m1.weight.device.type != "cpu"
        or tuple(conv_m1.dilation) != (1, 1, 1)
        or not kernels.conv_fits(conv_m1.weight, conv_m1.groups, stride, tuple(conv_m1.padding))
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
    """The unit's multiplexer and the BN-ReLU before ``conv_m1`` on the native kernel, where it runs: BN before two
    dense 1x1x1 convolutions between channel counts that ``KernelMultiplexer.fits``."""
    bn_i, bn_m = unit.conv_i1.bn, unit.conv_m1.bn
    for conv in (conv_i1, conv_i2):
        if conv.groups != 1 or tuple(conv.weight.shape[2:]) != (1, 1, 1) or tuple(conv.stride) != (1, 1, 1):
            return None
        if conv.weight.device.type != "cpu":
            return None
    if not (isinstance(bn_i, _BatchNorm) and isinstance(bn_m, _BatchNorm)) or conv_i1.attr != "relu":
        return None
    if conv_i2.attr != "none" or not KernelMultiplexer.fits(conv_i1.weight.shape[1], conv_i1.weight.shape[0]):
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
    """The unit's ``BN-ReLU -> conv_m1 -> conv_m2 (+ shortcut)`` on the native kernel, where it runs."""
    bn = unit.conv_m1.bn
    if not isinstance(bn, _BatchNorm) or conv_m1.attr != "relu" or conv_m2.attr != "none":
        return None
    for conv in (conv_m1, conv_m2):
        if conv.weight.device.type != "cpu" or tuple(conv.dilation) != (1, 1, 1):
            return None
        if not kernels.conv_fits(conv.weight, conv.groups, tuple(conv.stride), tuple(conv.padding)):
            return None
    if conv_m1.groups != conv_m2.groups or tuple(conv_m2.stride) != (1, 1, 1):
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
