"""Modules and functions over the native operators of ``mfnet.fastpath.native`` (``torch.ops.mfnet``).

MF-Net's ``conv2`` and ``conv3`` stages are grouped convolutions with 6 and 12 channels per group, which oneDNN
vectorises over the few output channels of a group. ``csrc/fiber_conv.cpp`` keeps each group's activations
group-major and vectorises over the output width instead (with AVX-512 and 12 or more input channels per group,
pairs of outputs along a row come from a Winograd F(2,3) tile).

``KernelFiberTail`` runs the second half of a multi-fiber unit (``b = relu(bn(x_in))``, ``h = relu(conv_m1'(b))``,
``out = conv_m2(h) + shortcut``) in two passes: pack (with the BN-ReLU), then ``conv_m1`` and ``conv_m2`` (with the
sum) band by band of rows, ``h`` never leaving the cache (``mfnet::tail``; a ``conv_m2`` with temporal taps takes
a third pass). ``KernelMultiplexer`` runs the first half (``x_in = conv_i2(relu(conv_i1'(relu(bn(x))))) + x``) and
the BN-ReLU of ``x_in`` in one pass over blocks of rows; with it, the tail's pack becomes that pass
(``KernelFiberTail.forward_unit``: the whole unit). ``KernelFiberConv`` is a stage's first ``conv_m1`` followed by
its dense ``conv_m2``.

``fiber_conv3d`` is one grouped convolution for training, an operator (``mfnet::fiber_conv3d``) with a registered
autograd formula: forward, input gradient (the same kernel on the flipped, transposed weights) and weight gradient
(``mfnet::conv_wgrad``).

Every function here expects ``native.load()`` to have returned ``True``; the predicates ending in ``_runs`` say
whether one can run on given tensors.
"""

from __future__ import annotations

import threading

import torch
from torch import nn

from mfnet.fastpath import native

TILE_CHANNELS = 6  # output channels per register tile; a group's output channels must be a multiple
# Where the kernel beats oneDNN, measured unit by unit (see docs/speed.md): at most 24 channels per group, frames
# at least 14 wide in inference; in training at most 12 channels per group and frames 24 wide (14 for 3x3x3 and
# for three taps along the rows on the Winograd tile).
MAX_GROUP_CHANNELS = 24
MIN_WIDTH = 14
MAX_GROUP_CHANNELS_TRAINING = 12
MIN_WIDTH_TRAINING = 24
MIN_WIDTH_3X3X3_TRAINING = 14
WINOGRAD_MIN_CHANNELS = 12  # conv_rows in fiber_conv.cpp: fewer input channels per group stay on the direct tiles
MUX_CHANNELS = 24  # the multiplexer's hidden channels must be a multiple of this (mf_mux_pack's 4 x 24 tiles)
MUX_POSITIONS = 28  # least positions per work item of the multiplexer (whole rows; see _mux_rows)
CL3D = torch.channels_last_3d
_KEPT_ENTRIES = 16  # kept buffer sets per model (one per stage layout and thread in practice)
_EMPTY = torch.empty(0)  # an output the operator does not write


def wide_enough(
    x: torch.Tensor, kernel_size: tuple[int, ...] | None = None, *, training: bool = False, groups: int = 1
) -> bool:
    """Whether the kernel beats oneDNN on activations of this shape ``(N, C, T, H, W)`` (``groups``: the
    convolution's): in inference, frames at least 14 wide; in training, 24 wide, or 14 for a ``3x3x3`` convolution
    and for one with three taps along the rows that runs on the Winograd tile."""
    if not training:
        return x.shape[-1] >= MIN_WIDTH
    if kernel_size is not None and tuple(kernel_size) == (3, 3, 3):
        return x.shape[-1] >= MIN_WIDTH_3X3X3_TRAINING
    if kernel_size is not None and kernel_size[-1] == 3 and winograd_runs(x.shape[1] // groups):
        return x.shape[-1] >= MIN_WIDTH_3X3X3_TRAINING
    return x.shape[-1] >= MIN_WIDTH_TRAINING


def winograd_runs(channels: int) -> bool:
    """Whether a convolution with three taps along the rows and ``channels`` input channels per group runs on the
    Winograd tile (AVX-512 on, the tile on, at least 12 channels)."""
    return native.winograd_on() and channels >= WINOGRAD_MIN_CHANNELS


def bn_relu_runs(x: torch.Tensor) -> bool:
    """Whether ``bn_relu`` runs on ``x``: float32 CPU ``(N, C, T, H, W)`` channels-last, C % 8 == 0."""
    return (
        x.dim() == 5
        and x.dtype == torch.float32
        and x.device.type == "cpu"
        and x.shape[1] % 8 == 0
        and x.is_contiguous(memory_format=CL3D)
        and native.load()
    )


def bn_relu(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``relu(x * scale + shift)`` per channel (an eval BatchNorm and ReLU) in one pass.

    Check ``bn_relu_runs`` first. ``x`` ``(N, C, T, H, W)`` channels-last-3d; ``scale``, ``shift`` ``(C,)``
    contiguous float32. NaN stays NaN.
    """
    out = torch.empty_like(x, memory_format=CL3D)
    torch.ops.mfnet.bn_relu(x, scale, shift, out)
    return out


def _row_length(w: int) -> int:
    return (w + 15) // 16 * 16 + 8  # whole 16-wide tiles, plus room for the last tile's reads


def conv_fits(weight: torch.Tensor, groups: int, stride: tuple[int, ...], padding: tuple[int, ...]) -> bool:
    """Whether the kernel can run a convolution with this weight ``(C_out, C_in/groups, kt, kh, kw)`` forward."""
    c_out, c_in, *kernel = weight.shape
    per_group_out = c_out // groups
    return (
        weight.ndim == 5
        and groups > 1
        and per_group_out % TILE_CHANNELS == 0
        and per_group_out <= MAX_GROUP_CHANNELS
        and c_in <= MAX_GROUP_CHANNELS
        and tuple(stride[1:]) == (1, 1)  # temporal strides are fine; spatial ones would need strided loads
        and tuple(padding) == tuple(k // 2 for k in kernel)
        and all(k % 2 == 1 for k in kernel)
    )


def _kept(
    cache: dict[tuple, tuple[torch.Tensor, ...]], layout: tuple, interior: tuple, *shapes: tuple[int, ...]
) -> tuple[torch.Tensor, ...]:
    """Zeroed tensors of these shapes (each ``(N, ...)``), kept in ``cache`` and reused: the kernels' padded
    buffers, whose padding is never written, so it stays zero and packing skips it.

    An entry is keyed by ``layout`` (what places the data: the kernel's taps and strides), ``interior`` (the sizes
    its data fills, ``(N, ...)``) and the shapes without ``N``, and by thread. Keyed by the interior too, as one
    shape holds several: rows of 28 and of 27 positions both take 40 floats, and a buffer packed 28 wide has data
    where a 27-wide one needs zeros. A smaller batch takes the first ``N`` samples of a kept larger one, so memory
    follows the largest batch seen, not the number of batch sizes (the last, partial batch of a long run makes
    nothing new). The kernels of one model share ``cache`` (``share_kept_buffers``): its units run one after
    another, so the units of a stage, which have the same layout and sizes, use one set of buffers."""
    if torch.compiler.is_compiling():  # a traced graph allocates its own (zeroed) buffers
        return tuple(torch.zeros(shape) for shape in shapes)
    n = shapes[0][0]
    key = (layout, interior[1:], *(shape[1:] for shape in shapes), threading.get_ident())
    kept = cache.get(key)
    if kept is None or kept[0].shape[0] < n:
        cache.pop(key, None)  # the smaller buffers go before the larger ones are made
        if len(cache) >= _KEPT_ENTRIES:
            cache.clear()
        kept = cache[key] = tuple(torch.zeros(shape) for shape in shapes)
    return kept if kept[0].shape[0] == n else tuple(buf[:n] for buf in kept)


def share_kept_buffers(model: nn.Module) -> int:
    """Gives every kernel module in ``model`` one cache of kept buffers (see ``_kept``); returns how many share it."""
    cache: dict[tuple, tuple[torch.Tensor, ...]] = {}
    modules = [m for m in model.modules() if isinstance(m, (KernelFiberTail, KernelFiberConv))]
    for module in modules:
        module._buffers_cache = cache
    return len(modules)


def _register_bn(module: nn.Module, scale: torch.Tensor, shift: torch.Tensor, prefix: str = "") -> None:
    """A BatchNorm's ``scale`` and ``shift`` ``(C,)`` as float32 buffers ``<prefix>scale``, ``<prefix>shift``."""
    module.register_buffer(f"{prefix}scale", scale.detach().float().contiguous().clone())
    module.register_buffer(f"{prefix}shift", shift.detach().float().contiguous().clone())


def _bias(bias: torch.Tensor | None, channels: int) -> torch.Tensor:
    return torch.zeros(channels) if bias is None else bias.detach().float().contiguous().clone()


class KernelFiberTail(nn.Module):
    """``out = conv_m2(relu(conv_m1(relu(x_in * scale + shift)) + bias_1)) + bias_2 + shortcut`` with the kernel.

    Inputs and output are ``(N, C, T, H, W)`` tensors in channels-last-3d layout, float32, on CPU. The spatial
    size is kept; ``conv_m1`` may have a temporal stride (``shortcut`` then has the output's length). Not for
    training (no gradients).

    Args:
        scale, shift: The BN before ``conv_m1``, ``(C_in,)``.
        weight_1, bias_1: ``conv_m1`` with the following BN folded in, ``(C_mid, C_in/G, kt, kh, kw)``, ``(C_mid,)``.
        weight_2, bias_2: ``conv_m2``, ``(C_out, C_mid/G, kt, kh, kw)``; ``bias_2`` may be ``None``.
        groups: The number of fibers ``G``.
        temporal_stride: ``conv_m1``'s stride in time.
    """

    def __init__(
        self,
        scale: torch.Tensor,
        shift: torch.Tensor,
        weight_1: torch.Tensor,
        bias_1: torch.Tensor | None,
        weight_2: torch.Tensor,
        bias_2: torch.Tensor | None,
        groups: int,
        *,
        temporal_stride: int = 1,
    ) -> None:
        super().__init__()
        self.groups = groups
        self.temporal_stride = temporal_stride
        _register_bn(self, scale, shift)
        self.register_buffer("weight_1", _kernel_weight(weight_1.float(), groups))
        self.register_buffer("bias_1", _bias(bias_1, weight_1.shape[0]))
        self.register_buffer("weight_2", _kernel_weight(weight_2.float(), groups))
        self.register_buffer("bias_2", _bias(bias_2, weight_2.shape[0]))
        self.register_buffer("wino_1", _winograd_weight(self.weight_1))  # None where a conv has no 3 taps along rows
        self.register_buffer("wino_2", _winograd_weight(self.weight_2))
        self.kernel_1 = tuple(weight_1.shape[2:])
        self.kernel_2 = tuple(weight_2.shape[2:])
        self.fused = True  # conv_m1 and a 1 x kh x kw conv_m2 in one pass (mf_tail); False: two mf_conv passes
        self._buffers_cache: dict[tuple, tuple[torch.Tensor, ...]] = {}

    def _out_length(self, t: int) -> int:
        kt = self.kernel_1[0]
        return (t + 2 * (kt // 2) - kt) // self.temporal_stride + 1

    def _one_pass(self) -> bool:
        """Whether ``mf_tail`` runs the tail (``conv_m2`` 1 x kh x kw): ``conv_m1``'s result then needs no buffer."""
        return self.fused and self.kernel_2[0] == 1

    def _padded_buffers(self, n: int, t: int, h: int, w: int) -> tuple[torch.Tensor, ...]:
        """Zero-padded group-major buffers for ``conv_m1``'s input and, in two passes, ``conv_m2``'s (see ``_kept``)."""
        g = self.groups
        c1, c2 = self.weight_1.shape[4], self.weight_2.shape[4]
        (pd1, ph1, pw1), (pd2, ph2, pw2) = ((k // 2 for k in ks) for ks in (self.kernel_1, self.kernel_2))
        row = _row_length(w + 2 * max(pw1, pw2))
        shape_1 = (n, g, t + 2 * pd1, h + 2 * ph1, c1, row)
        if self._one_pass():
            return _kept(self._buffers_cache, self._layout(), (n, t, h, w), shape_1)
        shape_2 = (n, g, self._out_length(t) + 2 * pd2, h + 2 * ph2, c2, row)
        return _kept(self._buffers_cache, self._layout(), (n, t, h, w), shape_1, shape_2)

    def _layout(self) -> tuple:
        """What places the data in the padded buffers (``_kept``)."""
        return ("tail", self.kernel_1, self.kernel_2, self.temporal_stride, self._one_pass())

    @torch.no_grad()
    def forward_unit(self, x: torch.Tensor, multiplexer: KernelMultiplexer) -> torch.Tensor:
        """The whole unit, for a unit whose shortcut is its input ``x`` (channels-last ``(N, C, T, H, W)``):
        ``multiplexer`` (whose BN after ``x_in`` is this tail's) writes straight into the packed buffer."""
        return self._run(x, x, multiplexer=multiplexer)

    @torch.no_grad()
    def forward(self, x_in: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        return self._run(x_in, shortcut)

    def _run(
        self, x_in: torch.Tensor, shortcut: torch.Tensor, *, multiplexer: KernelMultiplexer | None = None
    ) -> torch.Tensor:
        n, _, t, h, w = x_in.shape
        g = self.groups
        x_in = x_in.contiguous(memory_format=torch.channels_last_3d)
        shortcut = shortcut.contiguous(memory_format=torch.channels_last_3d)
        buffers = self._padded_buffers(n, t, h, w)
        buf_1 = buffers[0]
        (pd1, ph1, pw1), (pd2, ph2, pw2) = ((k // 2 for k in ks) for ks in (self.kernel_1, self.kernel_2))
        c_out = self.weight_2.shape[5] * g
        if multiplexer is not None:
            multiplexer.run(x_in, buf=buf_1, padding=(pd1, ph1, pw1))
        else:
            _pack_into(buf_1, x_in, (pd1, ph1, pw1), self.scale, self.shift)
        t_out = self._out_length(t)
        if shortcut.shape != (n, c_out, t_out, h, w):
            raise ValueError(f"shortcut of shape {tuple(shortcut.shape)} cannot be added to {(n, c_out, t_out, h, w)}")
        out = torch.empty((n, c_out, t_out, h, w), memory_format=CL3D)
        if self._one_pass():
            weights = (self.weight_1, self.bias_1, self.weight_2, self.bias_2)
            torch.ops.mfnet.tail(buf_1, *weights, [t_out, h, w], self.temporal_stride, out, shortcut, *self._wino())
            return out
        buf_2 = buffers[1]
        wino_1, wino_2 = self._wino()
        torch.ops.mfnet.conv(
            buf_1,
            self.weight_1,
            self.bias_1,
            [t_out, h, w],
            self.temporal_stride,
            True,
            buf_2,
            [pd2, ph2, pw2],
            _EMPTY,
            None,
            wino_1,
        )
        torch.ops.mfnet.conv(
            buf_2, self.weight_2, self.bias_2, [t_out, h, w], 1, False, _EMPTY, [0, 0, 0], out, shortcut, wino_2
        )
        return out

    def _wino(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The Winograd weights (``None`` without three taps along the rows); the kernel uses them where its tile
        is on."""
        return self.wino_1, self.wino_2

    def extra_repr(self) -> str:
        return (
            f"groups={self.groups}, conv_m1={self.kernel_1}, temporal_stride={self.temporal_stride}, "
            f"conv_m2={self.kernel_2}, kernel=fiber_conv.c"
        )


def _mux_rows(width: int) -> int:
    """Rows of positions per work item of the multiplexer: at least ``MUX_POSITIONS`` positions, so that each pass
    over the weights serves that many, and a multiple of 8 positions, the rows of its register tiles (28 positions
    had computed 32: the multiplexers of mfnet3d at 224 took 35.3 ms per clip, with 56 positions 32.7 ms)."""
    rows = max(1, -(-MUX_POSITIONS // width))
    while rows * width % 8:
        rows += 1
    return rows


class KernelMultiplexer(nn.Module):
    """A multi-fiber unit's multiplexer and the BN-ReLU after it, in one pass over the input (``mf_mux_pack``)::

        x_in = conv_i2(relu(conv_i1(relu(x * scale + shift)) + bias_1)) + bias_2 + x
        out  = relu(x_in * out_scale + out_shift)

    ``x`` and ``out`` are ``(N, C, T, H, W)``, channels-last-3d, float32, CPU. Used for the multiplexer of units
    whose ``conv_m1`` runs on oneDNN (``out`` is its input), and inside ``KernelFiberTail`` (``run(buf=...)`` packs
    ``out`` for the kernel's ``conv_m1``). Not for training.

    With ``proj_scale``/``proj_shift`` (a stage's first unit), the same pass also writes the BN-ReLU before the
    projection shortcut, ``relu(x * proj_scale + proj_shift)``, at the positions its 1x1x1 convolution with
    ``proj_stride`` reads (``forward_with_projection``): the projection then runs as a stride-1 convolution on
    that smaller tensor, and no pass of its own reads the whole input for it.

    Args:
        scale, shift: The BN before ``conv_i1``, ``(C,)``.
        weight_1, bias_1: ``conv_i1`` (1x1x1, dense) with ``conv_i2``'s BN folded in, ``(M, C, 1, 1, 1)``, ``(M,)``.
        weight_2, bias_2: ``conv_i2``, ``(C, M, 1, 1, 1)``; ``bias_2`` may be ``None``.
        out_scale, out_shift: The BN before ``conv_m1``, ``(C,)``.
        proj_scale, proj_shift: The BN before the projection shortcut, ``(C,)``, or ``None``.
        proj_stride: The projection's stride ``(st, sh, sw)``.
    """

    def __init__(
        self,
        scale: torch.Tensor,
        shift: torch.Tensor,
        weight_1: torch.Tensor,
        bias_1: torch.Tensor | None,
        weight_2: torch.Tensor,
        bias_2: torch.Tensor | None,
        out_scale: torch.Tensor,
        out_shift: torch.Tensor,
        *,
        proj_scale: torch.Tensor | None = None,
        proj_shift: torch.Tensor | None = None,
        proj_stride: tuple[int, int, int] = (1, 1, 1),
    ) -> None:
        super().__init__()
        m, c = weight_1.shape[:2]
        _register_bn(self, scale, shift)
        self.register_buffer("weight_1", weight_1.detach().float().reshape(m, c).t().contiguous())  # (C, M)
        self.register_buffer("bias_1", _bias(bias_1, m))
        self.register_buffer("weight_2", weight_2.detach().float().reshape(c, m).t().contiguous())  # (M, C)
        self.register_buffer("bias_2", _bias(bias_2, c))
        _register_bn(self, out_scale, out_shift, prefix="out_")
        self.has_projection = proj_scale is not None and proj_shift is not None
        if self.has_projection:
            _register_bn(self, proj_scale, proj_shift, prefix="proj_")
        self.proj_stride = tuple(int(s) for s in proj_stride)

    @staticmethod
    def fits(channels: int, hidden: int) -> bool:
        """Whether the kernel runs a multiplexer ``channels -> hidden -> channels``: ``hidden`` a multiple of 24,
        ``channels`` of 8 (24 or 48 for the fastest tiles; conv2's first unit has 16)."""
        return channels % 8 == 0 and hidden % MUX_CHANNELS == 0

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)[0]

    @torch.no_grad()
    def forward_with_projection(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(out, p)``: ``out`` as ``forward``, and ``p = relu(x * proj_scale + proj_shift)`` subsampled by
        ``proj_stride``, ``(N, C, T', H', W')`` channels-last (needs the projection's BN)."""
        if not self.has_projection:
            raise ValueError("this multiplexer was built without the projection's BatchNorm")
        return self.run(x, projection=True)  # type: ignore[return-value]

    def run(
        self,
        x: torch.Tensor,
        *,
        buf: torch.Tensor | None = None,
        padding: tuple[int, int, int] = (0, 0, 0),
        projection: bool = False,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(out, p)``: ``out`` channels-last, or, with ``buf``, ``None`` and ``out`` packed into that padded
        group-major buffer ``(N, G, T + 2pd, H + 2ph, C/G, row)`` with ``padding`` ``(pd, ph, pw)`` (only its interior
        is written: keep the buffer and zero it once, as ``_kept`` does); ``p`` the projection's input
        with ``projection`` (see ``forward_with_projection``), else ``None``."""
        n, c, t, h, w = x.shape
        x = x.contiguous(memory_format=CL3D)
        out = None if buf is not None else torch.empty_like(x, memory_format=CL3D)
        proj = None
        if projection:
            size = [(s - 1) // st + 1 for s, st in zip((t, h, w), self.proj_stride, strict=True)]
            proj = torch.empty((n, c, *size), memory_format=CL3D)
        weights = (self.scale, self.shift, self.weight_1, self.bias_1, self.weight_2, self.bias_2)
        proj_bn = (self.proj_scale, self.proj_shift) if proj is not None else (None, None)
        torch.ops.mfnet.mux_pack(
            x,
            *weights,
            self.out_scale,
            self.out_shift,
            _EMPTY if buf is None else buf,
            _EMPTY if out is None else out,
            list(padding),
            _mux_rows(w),
            *proj_bn,
            _EMPTY if proj is None else proj,
            list(self.proj_stride),
        )
        return out, proj

    def extra_repr(self) -> str:
        c, m = self.weight_1.shape
        projection = f", projection BN-ReLU at stride {self.proj_stride}" if self.has_projection else ""
        return f"{c} -> {m} -> {c}{projection}, fiber_conv.c"


class KernelFiberConv(nn.Module):
    """``relu(conv(relu(x * scale + shift)) + bias)`` with the kernel: BN-ReLU, then a grouped convolution.

    The ``conv_m1`` of a unit whose ``conv_m2`` cannot run on the kernel: a stage's first unit, whose ``conv_m2`` is
    a dense 1x1x1 convolution (MF-Net's conv2: 16 -> 96 channels with one input channel per fiber and a temporal
    stride; conv3 and conv4: a spatial stride of 2). Input and output ``(N, C, T, H, W)`` channels-last-3d, float32,
    CPU. Not for training.

    With ``dense_weight`` (``(C_post, C_out, 1, 1, 1)``) and ``dense_bias``, ``conv`` also applies that dense 1x1x1
    convolution (the unit's ``conv_m2``) and a residual sum, block by block while the convolution's output is in
    cache (``mf_conv_dense``). ``fold_projection`` adds the unit's projection shortcut (a second dense 1x1x1
    convolution, of the projection's input) to that matrix product. A spatial stride of 2 (3x3 spatial taps,
    ``spatial_stride_applies``) runs with the dense convolution only.
    """

    def __init__(
        self,
        scale: torch.Tensor,
        shift: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        groups: int,
        *,
        temporal_stride: int = 1,
        spatial_stride: int = 1,
        dense_weight: torch.Tensor | None = None,
        dense_bias: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        strided_ok = spatial_stride == 2 and dense_weight is not None and tuple(weight.shape[3:]) == (3, 3)
        if spatial_stride != 1 and not strided_ok:
            raise ValueError("a spatial stride of 2 needs 3x3 spatial taps and the dense convolution after them")
        self.groups = groups
        self.temporal_stride = temporal_stride
        self.spatial_stride = spatial_stride
        self.kernel = tuple(weight.shape[2:])
        self.out_channels = weight.shape[0]
        _register_bn(self, scale, shift)
        self.register_buffer("weight", _kernel_weight(weight.float(), groups))
        self.register_buffer("bias", _bias(bias, weight.shape[0]))
        self.has_dense = dense_weight is not None
        if dense_weight is not None:
            c_post = dense_weight.shape[0]
            self.register_buffer("dense_weight", dense_weight.detach().float().reshape(c_post, -1).t().contiguous())
            self.register_buffer("dense_bias", _bias(dense_bias, c_post))
        self.projection_channels = 0
        self._buffers_cache: dict[tuple, tuple[torch.Tensor, ...]] = {}

    def fold_projection(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Makes ``conv(..., extra=p)`` add the 1x1x1 convolution ``(weight, bias)`` of ``p`` (the projection's input,
        ``(N, C_x, T', H, W)``) in the dense convolution's matrix product: its weights become more input rows of
        it (``conv2``'s first unit: the 16 -> 96 projection, 1.3 ms on oneDNN, costs 16 more of 112 rows there)."""
        if not self.has_dense or self.projection_channels:
            raise ValueError("a projection folds into the dense convolution, once")
        c_post, c_x = weight.shape[:2]
        if c_post != self.dense_weight.shape[1]:
            raise ValueError(
                f"a projection to {c_post} channels cannot join a dense convolution to {self.dense_weight.shape[1]}"
            )
        w = weight.detach().float().reshape(c_post, c_x).t()
        self.dense_weight = torch.cat([self.dense_weight, w]).contiguous()
        self.dense_bias = self.dense_bias + _bias(bias, c_post)
        self.projection_channels = c_x

    @staticmethod
    def spatial_stride_fits(weight: torch.Tensor, groups: int) -> bool:
        """Whether the kernel runs this convolution ``(C_out, C_in/G, kt, kh, kw)`` with a spatial stride of 2: 3x3
        spatial taps, output channels per group a multiple of 12 (``s2_tile12`` of fiber_conv.c), AVX-512 on."""
        return tuple(weight.shape[3:]) == (3, 3) and (weight.shape[0] // groups) % 12 == 0 and native.avx512_on()

    def out_size(self, t: int, h: int, w: int) -> tuple[int, int, int]:
        """The output's ``(T, H, W)`` for an input of ``(t, h, w)``."""
        kt, s = self.kernel[0], self.spatial_stride
        return (t + 2 * (kt // 2) - kt) // self.temporal_stride + 1, (h - 1) // s + 1, (w - 1) // s + 1

    def wide_enough(self, x: torch.Tensor) -> bool:
        """Whether the kernel beats oneDNN on this input ``(N, C, T, H, W)``: outputs at least ``MIN_WIDTH`` wide."""
        return self.out_size(*x.shape[2:])[2] >= MIN_WIDTH

    def _buffer(self, n: int, c: int, t: int, h: int, w: int) -> torch.Tensor:
        """The zero-padded group-major input buffer (see ``_kept``)."""
        pd, ph, pw = (k // 2 for k in self.kernel)
        row = _row_length(w + 2 * pw)
        if self.spatial_stride == 2:  # the strided tile reads 34 inputs from 2 x0 for 16 outputs at x0
            row = max(row, 32 * ((self.out_size(t, h, w)[2] + 15) // 16 - 1) + 40)
        shape = (n, self.groups, t + 2 * pd, h + 2 * ph, c // self.groups, row)
        layout = ("conv", self.kernel, self.temporal_stride, self.spatial_stride)
        return _kept(self._buffers_cache, layout, (n, c, t, h, w), shape)[0]

    @torch.no_grad()
    def pack_from(self, x: torch.Tensor, multiplexer: KernelMultiplexer) -> tuple[torch.Tensor, torch.Tensor | None]:
        """For a first unit: ``multiplexer`` (whose BN after ``x_in`` is this one's) packs straight into the
        convolution's buffer; returns that buffer and the projection's input it writes too, if it has the
        projection's BN (``forward_with_projection``), else ``None``. ``conv(buf, x.shape)`` then convolves."""
        padding = tuple(k // 2 for k in self.kernel)
        buf = self._buffer(*x.shape)
        _, proj = multiplexer.run(x, buf=buf, padding=padding, projection=multiplexer.has_projection)
        return buf, proj

    @torch.no_grad()
    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """Packs ``relu(x * scale + shift)`` of ``x`` ``(N, C, T, H, W)`` into the buffer ``conv`` reads; returns it."""
        padding = tuple(k // 2 for k in self.kernel)
        buf = self._buffer(*x.shape)
        _pack_into(buf, x.contiguous(memory_format=CL3D), padding, self.scale, self.shift)
        return buf

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution alone (without the dense one; not with a spatial stride)."""
        if self.spatial_stride != 1:
            raise ValueError("a strided KernelFiberConv runs with its dense convolution only (conv)")
        return self.conv(self.pack(x), x.shape, dense=False)

    def conv(
        self,
        buf: torch.Tensor,
        in_shape: torch.Size,
        *,
        add: torch.Tensor | None = None,
        extra: torch.Tensor | None = None,
        dense: bool = True,
    ) -> torch.Tensor:
        """The convolution of ``buf``, the packed buffer of an input of ``in_shape``; with the dense convolution
        (where there is one and ``dense``), then ``+ add`` (channels-last, the output's shape); ``extra``: the
        folded projection's input (``fold_projection``), needed once one is folded."""
        n, _, t, h, w = in_shape
        t_out, h_out, w_out = self.out_size(t, h, w)
        if not (dense and self.has_dense):
            if self.spatial_stride != 1:
                raise ValueError("a strided KernelFiberConv runs with its dense convolution only")
            if add is not None or extra is not None:
                raise ValueError("a sum needs the dense convolution after this one")
            out_shape = (n, self.out_channels, t_out, h, w)
            return _conv(buf, self.weight, out_shape, bias=self.bias, relu=True, temporal_stride=self.temporal_stride)
        c_post = self.dense_weight.shape[1]
        out = torch.empty((n, c_post, t_out, h_out, w_out), memory_format=CL3D)
        if add is not None:
            add = add.contiguous(memory_format=CL3D)
            if add.shape != out.shape:
                raise ValueError(f"cannot add a tensor of shape {tuple(add.shape)} to {tuple(out.shape)}")
        if (extra is None) != (self.projection_channels == 0):
            raise ValueError("the folded projection needs its input as extra=, and only then")
        if extra is not None:
            extra = extra.contiguous(memory_format=CL3D)
            expected = (n, self.projection_channels, t_out, h_out, w_out)
            if extra.shape != expected:
                raise ValueError(f"the projection's input has shape {tuple(extra.shape)}, not {expected}")
        torch.ops.mfnet.conv_dense(
            buf,
            self.weight,
            self.bias,
            [t_out, h_out, w_out],
            self.temporal_stride,
            self.dense_weight,
            self.dense_bias,
            out,
            add,
            extra,
            self.projection_channels,
            self.spatial_stride,
        )
        return out

    def extra_repr(self) -> str:
        dense = f", then dense {tuple(self.dense_weight.shape)}" if self.has_dense else ""
        stride = f", spatial_stride={self.spatial_stride}" if self.spatial_stride != 1 else ""
        return (
            f"groups={self.groups}, kernel={self.kernel}, temporal_stride={self.temporal_stride}{stride}{dense}, "
            "fiber_conv.c"
        )


# ---------------------------------------------------------------------------------------------------------
# Training: forward, input gradient and weight gradient of one grouped convolution


def training_conv_fits(weight: torch.Tensor, groups: int, stride: tuple[int, ...], padding: tuple[int, ...]) -> bool:
    """Whether ``fiber_conv3d`` can run (forward and backward) a convolution with this weight and these settings.

    On top of ``conv_fits``: stride 1, at most 12 channels per group, and input channels per group a multiple of 6
    too (the input gradient is a convolution from the output channels to the input channels; 6 or 12 here, as in
    mfnet3d's ``conv2`` and ``conv3``).
    """
    return (
        conv_fits(weight, groups, stride, padding)
        and tuple(stride) == (1, 1, 1)
        and weight.shape[1] % TILE_CHANNELS == 0
        and max(weight.shape[0] // groups, weight.shape[1]) <= MAX_GROUP_CHANNELS_TRAINING
    )


def _kernel_weight(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """``(C_out, C_in/G, kt, kh, kw) -> (G, kt, kh, kw, C_in/G, C_out/G)``, the kernel's weight layout."""
    c_out, c_in, kt, kh, kw = weight.shape
    return weight.detach().reshape(groups, c_out // groups, c_in, kt, kh, kw).permute(0, 3, 4, 5, 2, 1).contiguous()


def _winograd_weight(weight: torch.Tensor) -> torch.Tensor | None:
    """A kernel-layout weight ``(G, kt, kh, 3, C_in/G, C_out/G)`` transformed for the Winograd tile of
    ``fiber_conv.cpp`` (``wino_tile``): ``(G, kt, kh, C_in/G, 4, C_out/G)`` holding ``w0``, ``(w0 + w1 + w2) / 2``,
    ``(w0 - w1 + w2) / 2`` and ``w2`` of the three taps along the rows; ``None`` for other widths."""
    if weight.shape[3] != 3:
        return None
    w0, w1, w2 = weight.detach().float().unbind(3)
    outer = w0 + w2
    return torch.stack([w0, (outer + w1) * 0.5, (outer - w1) * 0.5, w2], dim=4)


def _pack_into(
    buf: torch.Tensor,
    x: torch.Tensor,
    padding: tuple[int, ...],
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
) -> None:
    """Writes channels-last ``x`` ``(N, C, T, H, W)`` (``relu(x * scale + shift)`` with a BN) into the interior of
    the padded group-major ``buf`` ``(N, G, T + 2pd, H + 2ph, C/G, row)``. Its padding is never written: keep the
    buffer, zeroed once (``_kept``, ``_take_buffer``)."""
    torch.ops.mfnet.pack(x, scale, shift, buf, *padding)


def _conv(
    buf: torch.Tensor,
    weight: torch.Tensor,
    out_shape: tuple[int, ...],
    *,
    bias: torch.Tensor | None = None,
    relu: bool = False,
    temporal_stride: int = 1,
    add: torch.Tensor | None = None,
) -> torch.Tensor:
    """The convolution (spatial stride 1) of a padded group-major buffer with a weight in kernel layout (then
    ``+ bias`` and ReLU if asked, then ``+ add``, a tensor of the output's shape), channels-last out."""
    groups = buf.shape[1]
    ci, co = weight.shape[4:]
    out = torch.empty(out_shape, memory_format=CL3D)
    bias = torch.zeros(groups * co) if bias is None else bias
    if add is not None:
        if tuple(add.shape) != tuple(out_shape):
            raise ValueError(f"cannot add a tensor of shape {tuple(add.shape)} to the output {tuple(out_shape)}")
        add = add.contiguous(memory_format=CL3D)
    wino = _winograd_weight(weight) if winograd_runs(ci) else None
    torch.ops.mfnet.conv(
        buf, weight, bias, list(out_shape[2:]), temporal_stride, relu, _EMPTY, [0, 0, 0], out, add, wino
    )
    return out


_POOL_PER_KEY = 4  # zeroed buffers kept per layout: mfnet3d's conv3 has 3 convolutions of one shape on the kernel
_pool_lock = threading.Lock()
_buffer_pool: dict[tuple, list[torch.Tensor]] = {}


def _pool_key(x_shape: tuple[int, ...], groups: int, padding: tuple[int, ...]) -> tuple:
    """What a pooled buffer holds: the input's shape ``(N, C, T, H, W)``, its groups and padding. The buffer's own
    shape is not enough (rows of 28 and of 27 positions both take 40 floats; see ``_kept``)."""
    return (tuple(x_shape), groups, tuple(padding))


def _take_buffer(key: tuple) -> torch.Tensor:
    """A padded group-major buffer for ``key`` (``_pool_key``) whose padding holds zeros: one given back earlier, or
    a new one. Training's buffers are pooled (``_give_buffer``) so that packing writes only their interior."""
    with _pool_lock:
        kept = _buffer_pool.get(key)
        if kept:
            return kept.pop()
    (n, c, t, h, w), groups, (pd, ph, pw) = key
    return torch.zeros(n, groups, t + 2 * pd, h + 2 * ph, c // groups, _row_length(w + 2 * pw))


def _give_buffer(key: tuple, buf: torch.Tensor) -> None:
    """Hands a buffer from ``_take_buffer(key)`` back once nothing reads it any more; only its interior was
    written."""
    with _pool_lock:
        kept = _buffer_pool.setdefault(key, [])
        if len(kept) < _POOL_PER_KEY:
            kept.append(buf)


def release_buffers() -> None:
    """Frees the zeroed buffers that training with the kernel keeps for its next steps (a few hundred MB)."""
    with _pool_lock:
        _buffer_pool.clear()


def _packed_into_kept(x: torch.Tensor, groups: int, padding: tuple[int, ...]) -> tuple[torch.Tensor, tuple]:
    """``x`` packed into a pooled buffer whose padding is zero already, and the buffer's pool key (give it back with
    ``_give_buffer``)."""
    key = _pool_key(x.shape, groups, padding)
    buf = _take_buffer(key)
    _pack_into(buf, x.contiguous(memory_format=CL3D), padding)
    return buf, key


def _weight_grad(
    buf_x: torch.Tensor,
    buf_g: torch.Tensor,
    offset: tuple[int, ...],
    out_shape: tuple[int, ...],
    weight_shape: tuple[int, ...],
    groups: int,
    temporal_stride: int,
) -> torch.Tensor:
    """The weight gradient ``(C_out, C_in/G, kt, kh, kw)`` (plain layout) from the padded group-major input
    ``buf_x`` and the output gradient ``buf_g``, a group-major buffer whose data starts at ``offset`` and whose
    other entries are zero; ``out_shape``: the output's ``(N, C_out, T', H', W')``."""
    c_out, ci, kt, kh, kw = weight_shape
    co = c_out // groups
    dw = torch.empty(groups, kt, kh, kw, ci, co)
    scratch = torch.empty(groups * kt * kh * kw * ci * co * 16)
    torch.ops.mfnet.conv_wgrad(buf_x, buf_g, dw, scratch, list(out_shape[2:]), temporal_stride, list(offset))
    return dw.permute(0, 5, 4, 1, 2, 3).reshape(weight_shape)


def weight_grad_fits(weight: torch.Tensor, groups: int, stride: tuple[int, ...], padding: tuple[int, ...]) -> bool:
    """Whether ``conv3d_weight_grad`` can compute this convolution's weight gradient: as ``conv_fits`` (any
    temporal stride), ``kw == 3``, with the operators loaded and their AVX-512 tiles on (the AVX2 loop needs an
    even number of input channels per group and is not used here)."""
    return conv_fits(weight, groups, stride, padding) and weight.shape[-1] == 3 and native.avx512_on()


def conv3d_weight_grad(
    x: torch.Tensor,
    grad: torch.Tensor,
    weight_shape: tuple[int, ...],
    padding: tuple[int, ...],
    groups: int,
    temporal_stride: int,
) -> torch.Tensor:
    """``d loss / d weight`` of ``F.conv3d(x, weight, None, (temporal_stride, 1, 1), padding, 1, groups)`` on the
    kernel, given ``grad``, its output's gradient. ``x (N, C_in, T, H, W)``, ``grad (N, C_out, T', H', W')``, float32
    on CPU; returns the weight's shape in plain layout. Check ``weight_grad_fits`` first.

    Used for ``conv2``'s first ``conv_m1`` (one input channel per group, temporal stride 2), whose im2col matrix
    oneDNN would build with 27 copies."""
    buf_x, key_x = _packed_into_kept(x, groups, padding)
    buf_g, key_g = _packed_into_kept(grad, groups, (0, 0, 0))  # the weight gradient needs no padding around it
    dw = _weight_grad(buf_x, buf_g, (0, 0, 0), tuple(grad.shape), tuple(weight_shape), groups, temporal_stride)
    _give_buffer(key_x, buf_x)
    _give_buffer(key_g, buf_g)
    return dw


# ---------------------------------------------------------------------------------------------------------
# mfnet::fiber_conv3d: a grouped convolution for training, with its autograd formula


torch.library.define(
    "mfnet::fiber_conv3d",
    "(Tensor x, Tensor weight, int[] padding, int groups, Tensor? add=None) -> Tensor",
    lib=native.LIBRARY,
)
torch.library.define(
    "mfnet::fiber_conv3d_backward",
    "(Tensor grad, Tensor x, Tensor weight, int[] padding, int groups) -> (Tensor, Tensor)",
    lib=native.LIBRARY,
)


def fiber_conv3d(
    x: torch.Tensor, weight: torch.Tensor, padding: list[int], groups: int, add: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.conv3d(x, weight, None, 1, padding, 1, groups) (+ add)`` on the kernel, differentiable in ``x``,
    ``weight`` and ``add`` (added as the output is written, not in a pass of its own).

    ``x`` ``(N, C_in, T, H, W)`` float32 on CPU (any layout; the output is channels-last-3d); ``add`` of the
    output's shape. Check ``training_conv_fits`` and ``native.load()`` first.
    """
    return torch.ops.mfnet.fiber_conv3d(x, weight, list(padding), groups, add)


@torch.library.impl("mfnet::fiber_conv3d", "cpu", lib=native.LIBRARY)
def _fiber_conv3d_cpu(
    x: torch.Tensor, weight: torch.Tensor, padding: list[int], groups: int, add: torch.Tensor | None = None
) -> torch.Tensor:
    buf_x, key_x = _packed_into_kept(x, groups, tuple(padding))
    out_shape = (x.shape[0], weight.shape[0], *x.shape[2:])
    out = _conv(buf_x, _kernel_weight(weight, groups), out_shape, add=add)
    _give_buffer(key_x, buf_x)
    return out


def _fiber_conv3d_fake(
    x: torch.Tensor, weight: torch.Tensor, padding: list[int], groups: int, add: torch.Tensor | None = None
) -> torch.Tensor:
    return x.new_empty((x.shape[0], weight.shape[0], *x.shape[2:])).contiguous(memory_format=CL3D)


@torch.library.impl("mfnet::fiber_conv3d_backward", "cpu", lib=native.LIBRARY)
def _fiber_conv3d_backward_cpu(
    grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, padding: list[int], groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The input and weight gradients of ``fiber_conv3d`` given its output's gradient ``grad``."""
    c_in = x.shape[1]
    c_out, ci, kt, kh, kw = weight.shape
    co = c_out // groups
    pad = tuple(padding)
    buf_g, key_g = _packed_into_kept(grad, groups, pad)
    # the input gradient: a convolution with the flipped, transposed kernels of each group
    flipped = weight.detach().reshape(groups, co, ci, kt, kh, kw).transpose(1, 2).flip(3, 4, 5)
    grad_x = _conv(buf_g, _kernel_weight(flipped.reshape(c_in, co, kt, kh, kw), groups), tuple(x.shape))
    buf_x, key_x = _packed_into_kept(x, groups, pad)
    grad_w = _weight_grad(buf_x, buf_g, pad, tuple(grad.shape), tuple(weight.shape), groups, 1)
    _give_buffer(key_g, buf_g)
    _give_buffer(key_x, buf_x)
    return grad_x, grad_w.contiguous(memory_format=CL3D)


def _fiber_conv3d_backward_fake(
    grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, padding: list[int], groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    grad_x = x.new_empty(x.shape).contiguous(memory_format=CL3D)
    return grad_x, weight.new_empty(weight.shape).contiguous(memory_format=CL3D)


def _fiber_conv3d_setup(ctx: object, inputs: tuple, output: torch.Tensor) -> None:
    x, weight, padding, groups, add = inputs
    ctx.save_for_backward(x, weight)
    ctx.padding, ctx.groups, ctx.has_add = padding, groups, add is not None


def _fiber_conv3d_grad(ctx: object, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    x, weight = ctx.saved_tensors
    grad = grad.contiguous(memory_format=CL3D)
    grad_x, grad_w = torch.ops.mfnet.fiber_conv3d_backward(grad, x, weight, ctx.padding, ctx.groups)
    return grad_x, grad_w, None, None, grad if ctx.has_add else None


torch.library.register_fake("mfnet::fiber_conv3d", _fiber_conv3d_fake, lib=native.LIBRARY)
torch.library.register_fake("mfnet::fiber_conv3d_backward", _fiber_conv3d_backward_fake, lib=native.LIBRARY)
torch.library.register_autograd(
    "mfnet::fiber_conv3d", _fiber_conv3d_grad, setup_context=_fiber_conv3d_setup, lib=native.LIBRARY
)
