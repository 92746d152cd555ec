"""A hand-written CPU kernel for the fiber convolutions of MF-Net's early stages.

MF-Net's ``conv2`` and ``conv3`` stages are grouped convolutions with 6 and 12 channels per group, which oneDNN
runs at 17-48 GMAC/s on the 2-core test machine. ``csrc/fiber_conv.c`` keeps each group's activations
group-major and vectorises over the output width instead (71-82 GMAC/s on the same shapes; with AVX-512 and 12
or more input channels per group, pairs of outputs along a row come from a Winograd F(2,3) tile, 4 multiply-adds
per pair where direct tiles take 6: ``set_winograd``). It is compiled once
per machine with the system C compiler (AVX2 + FMA), cached under ``~/.cache/mfnet/kernels`` (or
``$MFNET_CACHE_DIR/kernels``) and loaded with ``ctypes``; where there is no compiler or no AVX2, or with
``MFNET_KERNELS=0``, ``load()`` returns ``None`` and the fast path keeps using oneDNN.

``fiber_conv3d`` is one such convolution for training: forward, input gradient (the same kernel on the
flipped, transposed weights) and weight gradient (``mf_conv_wgrad``), used by ``mfnet.tools.train_convs``.

``KernelFiberTail`` runs the second half of a multi-fiber unit (``b = relu(bn(x_in))``, ``h = relu(conv_m1'(b))``,
``out = conv_m2(h) + shortcut``) in two passes: pack (with the BN-ReLU), then ``conv_m1`` and ``conv_m2`` (with the
sum) band by band of rows, ``h`` never leaving the cache (``mf_tail``; a ``conv_m2`` with temporal taps takes a
third pass); the work of each is split between ``torch.get_num_threads()`` threads. ``KernelMultiplexer`` runs the
first half (``x_in = conv_i2(relu(conv_i1'(relu(bn(x))))) + x``) and the BN-ReLU of ``x_in`` in one pass over blocks
of rows; with it, the tail's pack becomes that pass (``KernelFiberTail.forward_unit``: the whole unit).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

logger = logging.getLogger(__name__)

ENV_VAR = "MFNET_KERNELS"
AVX512_ENV_VAR = "MFNET_KERNEL_AVX512"
WINOGRAD_ENV_VAR = "MFNET_KERNEL_WINOGRAD"
CFLAGS = ("-O3", "-mavx2", "-mfma", "-shared", "-fPIC", "-std=c99")
TILE_CHANNELS = 6  # output channels per register tile; a group's output channels must be a multiple
# Where the kernel beats oneDNN, measured unit by unit (inference: a unit's tail, 8 frames, batch 1). On the AVX-512
# EPYC (Zen 4): 24 channels per group at 14 wide (conv4 at 224) 10.7 against 11.2 ms, 12 channels at 14 wide (conv3
# at 112) 3.8 against 7.5 ms; at 7 wide oneDNN wins (24 channels: 2.9 against 5.2 ms). On the AVX2 EPYC (Zen 3)
# 24 channels per group and 14-wide frames had been a tie.
MAX_GROUP_CHANNELS = 24
MIN_WIDTH = 14
MAX_GROUP_CHANNELS_TRAINING = 12  # training (mfnet.tools.train_convs): measured for 6 and 12 channels per group
MIN_WIDTH_TRAINING = 24
MIN_WIDTH_3X3X3_TRAINING = 14  # forward + backward of a 3x3x3 at 14 wide: 48.6 ms against 52.9 (1x3x3: 22.3 / 20.2)
WINOGRAD_MIN_CHANNELS = 12  # conv_rows in fiber_conv.c: fewer input channels per group stay on the direct tiles
MUX_CHANNELS = 24  # the multiplexer's hidden channels must be a multiple of this (mf_mux_pack's 4 x 24 tiles)
MUX_POSITIONS = 28  # least positions per work item of the multiplexer (whole rows; see _mux_rows)


def worth_it(
    x: torch.Tensor, kernel_size: tuple[int, ...] | None = None, *, training: bool = False, groups: int = 1
) -> bool:
    """Whether the kernel beats oneDNN on activations of this shape ``(N, C, T, H, W)`` (``groups``: the
    convolution's): in inference, frames at least 14 wide; in training, 24 wide, or 14 for the forward and backward
    of a ``3x3x3`` convolution (MF-Net's conv3 at 112) and of one with three taps along the rows that runs on the
    Winograd tile (conv3's ``1x3x3`` at 112: 28.0 against 32.3 ms; a tie with the direct tiles)."""
    if not training:
        return x.shape[-1] >= MIN_WIDTH
    if kernel_size is not None and tuple(kernel_size) == (3, 3, 3):
        return x.shape[-1] >= MIN_WIDTH_3X3X3_TRAINING
    if kernel_size is not None and kernel_size[-1] == 3 and winograd_runs(x.shape[1] // groups):
        return x.shape[-1] >= MIN_WIDTH_3X3X3_TRAINING
    return x.shape[-1] >= MIN_WIDTH_TRAINING


def winograd_runs(channels: int) -> bool:
    """Whether a convolution with three taps along the rows and ``channels`` input channels per group runs on the
    kernel's Winograd tile (``fiber_conv.c``'s ``conv_rows``: AVX-512 on, the tile on, at least 12 channels)."""
    return bool(_state.get("avx512")) and bool(_state.get("winograd")) and channels >= WINOGRAD_MIN_CHANNELS


CL3D = torch.channels_last_3d
_PTR = ctypes.c_void_p
_INT = ctypes.c_int

_lock = threading.Lock()
_state: dict[str, object] = {}
if hasattr(os, "register_at_fork"):  # a forked child has none of the parent's pool threads: start a new pool
    os.register_at_fork(after_in_child=lambda: _state.pop("pool", None))


def switched_on(variable: str) -> bool:
    """Whether the environment switch ``variable`` is on: unset or anything but ``0``, ``false``, ``no``, ``off``."""
    return os.environ.get(variable, "1").strip().lower() not in ("0", "false", "no", "off")


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def _cpu_has_avx2_fma() -> bool:
    return {"avx2", "fma"} <= _cpu_flags()


def avx512_available() -> bool:
    """Whether the CPU has what the AVX-512 tiles use: AVX-512F, and VL for the 8-wide vectors of the 6 x 56 tile."""
    return {"avx512f", "avx512vl"} <= _cpu_flags()


def avx512_on() -> bool:
    """Whether the AVX-512 tiles are in use now: the CPU has them and neither ``set_avx512(False)`` nor
    ``MFNET_KERNEL_AVX512=0`` turned them off (``False`` where the kernel cannot be built)."""
    return load() is not None and bool(_state.get("avx512"))


def set_avx512(on: bool | None = None) -> bool:
    """Turns the AVX-512 tiles of the convolution kernel on or off (``None``: on where the CPU has AVX-512F and VL,
    unless ``MFNET_KERNEL_AVX512=0``); returns whether they are on. The AVX2 tiles compute the same numbers."""
    lib = _library()
    if on is None:
        on = switched_on(AVX512_ENV_VAR)
    on = bool(on) and avx512_available()
    lib.mf_set_avx512(int(on))
    _state["avx512"] = on
    return on


def set_winograd(on: bool | None = None) -> bool:
    """Lets the kernel's convolutions with three taps along the rows use the Winograd tile (``on=None``: on unless
    ``MFNET_KERNEL_WINOGRAD=0``; it needs the AVX-512 tiles); returns whether it is on. The direct tiles compute the
    same convolution in another order (differences of a few units in the last place)."""
    lib = _library()
    if on is None:
        on = switched_on(WINOGRAD_ENV_VAR)
    lib.mf_set_winograd(int(bool(on)))
    _state["winograd"] = bool(on)
    return bool(on)


def cache_dir() -> Path:
    """Where the compiled kernel is kept: ``$MFNET_CACHE_DIR/kernels`` or ``~/.cache/mfnet/kernels``."""
    root = os.environ.get("MFNET_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "mfnet")
    return Path(root) / "kernels"


def _source() -> str:
    return resources.files("mfnet").joinpath("csrc/fiber_conv.c").read_text()


def _compile(source: str, target: Path) -> None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (cc/gcc) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "fiber_conv.c"
        src.write_text(source)
        out = Path(tmp) / target.name
        subprocess.run([compiler, *CFLAGS, "-o", str(out), str(src)], check=True, capture_output=True, timeout=120)
        os.replace(out, target)  # atomic: a concurrent process sees the old file or the whole new one


def load() -> ctypes.CDLL | None:
    """The compiled kernel library (compiling it on first use), or ``None`` where it cannot run here."""
    with _lock:
        if "lib" in _state:
            return _state["lib"]  # type: ignore[return-value]
        lib = None
        if switched_on(ENV_VAR) and _cpu_has_avx2_fma():
            try:
                source = _source()
                digest = hashlib.sha256((source + " ".join(CFLAGS)).encode()).hexdigest()[:16]
                target = cache_dir() / f"fiber_conv-{digest}.so"
                if not target.exists():
                    _compile(source, target)
                lib = ctypes.CDLL(str(target))
                _declare(lib)
                _state["loaded"] = lib  # kept for modules built with it, even if load() is later turned off
                set_avx512()
                set_winograd()
            except (OSError, RuntimeError, subprocess.SubprocessError) as err:
                logger.info("fiber kernel unavailable (%s); using oneDNN", err)
                lib = None
        _state["lib"] = lib
        return lib


def _declare(lib: ctypes.CDLL) -> None:
    _LONG, _DOUBLE = ctypes.c_long, ctypes.c_double
    items = [_PTR, _INT, _INT]  # mf_sched *, item0, item1 (see _parallel)
    lib.mf_pack.argtypes = [_PTR, _PTR, _PTR, _PTR] + [_INT] * 11 + items
    lib.mf_mux_pack.argtypes = [_PTR] * 7 + [_INT] + [_PTR] * 4 + [_INT] * 13 + [_PTR] * 3 + [_INT] * 3 + items
    lib.mf_mux_pack.restype = _INT
    lib.mf_conv.argtypes = [_PTR] * 3 + [_INT] * 14 + [_PTR] + [_INT] * 4 + [_PTR] * 3 + items
    lib.mf_conv_wgrad.argtypes = [_PTR] * 4 + [_INT] * 18 + items
    # BatchNorm + ReLU in training (mfnet.tools.train_bn): rows P as a C long, channels as an int
    lib.mf_bn_stats.argtypes = [_PTR] * 4 + [_LONG, _INT] + items
    lib.mf_bn_relu.argtypes = [_PTR] * 4 + [_LONG, _INT] + items
    lib.mf_bn_relu_grad_sums.argtypes = [_PTR] * 7 + [_LONG, _INT] + items
    lib.mf_bn_relu_grad_input.argtypes = [_PTR] * 9 + [_LONG, _INT] + items
    lib.mf_bn_finalize.argtypes = [_PTR, _PTR, _INT] + [_PTR] * 5 + [_DOUBLE, _DOUBLE, _LONG, _INT] + [_PTR] * 4
    lib.mf_bn_grad_finalize.argtypes = [_PTR, _PTR, _INT, _PTR, _PTR, _LONG, _INT] + [_PTR] * 5
    lib.mf_set_avx512.argtypes = [_INT]
    lib.mf_set_winograd.argtypes = [_INT]
    lib.mf_conv_dense.argtypes = [_PTR] * 3 + [_INT] * 14 + [_PTR] * 2 + [_INT] + [_PTR] * 3 + [_INT] * 2 + items
    lib.mf_conv_dense.restype = _INT
    lib.mf_tail.argtypes = [_PTR] * 5 + [_INT] * 16 + [_PTR] * 4 + items
    lib.mf_tail.restype = _INT
    lib.mf_max_pool.argtypes = [_PTR, _PTR] + [_INT] * 13 + items
    lib.mf_max_pool.restype = None
    bn = (lib.mf_bn_stats, lib.mf_bn_relu, lib.mf_bn_relu_grad_sums, lib.mf_bn_relu_grad_input, lib.mf_bn_finalize)
    setters = (lib.mf_set_avx512, lib.mf_set_winograd)
    for fn in (lib.mf_pack, lib.mf_conv, lib.mf_conv_wgrad, *bn, lib.mf_bn_grad_finalize, *setters):
        fn.restype = None


def _pool() -> ThreadPoolExecutor:
    threads = max(1, torch.get_num_threads())
    pool = _state.get("pool")
    if pool is None or _state.get("pool_threads") != threads:
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mfnet-kernel")
        _state["pool"], _state["pool_threads"] = pool, threads
    return pool  # type: ignore[return-value]


class _Schedule(ctypes.Structure):
    """``mf_sched`` of fiber_conv.c: the next unclaimed item and the number of threads holding one."""

    _fields_ = [("next", ctypes.c_int), ("active", ctypes.c_int)]


def _parallel(fn: ctypes._CFuncPtr, args: tuple, items: int) -> list:
    """Runs ``fn(*args, sched, 0, items)`` on ``torch.get_num_threads()`` threads (ctypes drops the GIL) that claim
    the items one at a time from a shared ``mf_sched``: this thread starts at once and does whatever the pool's
    threads, woken meanwhile, do not take. Returns what the calls returned: this thread's only, unless it returned
    non-zero (it could not run), in which case the others' too, after they have done all the items."""
    threads = min(max(1, torch.get_num_threads()), items)
    if threads == 1:
        return [fn(*args, None, 0, items)]
    schedule = _Schedule(0, 0)
    shared = ctypes.byref(schedule)  # kept alive by the pool's tasks: a late one reads it and finds no item
    futures = [_pool().submit(fn, *args, shared, 0, items) for _ in range(threads - 1)]
    first = fn(*args, shared, 0, items)
    if first:
        return [first, *(future.result() for future in futures)]
    while schedule.active:  # a pool thread finishing its last item (at most one item's time)
        pass
    return [first]


BN_BLOCK_ROWS = 256  # MF_BN_BLOCK of fiber_conv.c: rows (positions) per work item of the BatchNorm functions


def scale_shift_relu_applies(x: torch.Tensor) -> bool:
    """Whether ``scale_shift_relu`` runs on ``x``: float32 CPU ``(N, C, T, H, W)`` channels-last, C % 8 == 0."""
    return (
        x.dim() == 5
        and x.dtype == torch.float32
        and x.device.type == "cpu"
        and x.shape[1] % 8 == 0
        and x.is_contiguous(memory_format=CL3D)
        and not torch.compiler.is_compiling()
        and load() is not None
    )


def scale_shift_relu(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``relu(x * scale + shift)`` per channel (an eval BatchNorm and ReLU) in one pass.

    Check ``scale_shift_relu_applies`` first. ``x`` ``(N, C, T, H, W)`` channels-last-3d; ``scale``, ``shift``
    ``(C,)`` contiguous float32. NaN stays NaN.
    """
    c = x.shape[1]
    rows = x.numel() // c
    out = torch.empty_like(x, memory_format=CL3D)
    _parallel(_library().mf_bn_relu, (_ptr(x), _ptr(scale), _ptr(shift), _ptr(out), rows, c), -(-rows // BN_BLOCK_ROWS))
    return out


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


ROWS_PER_ITEM = 8  # MF_ROWS of fiber_conv.c: output rows per work item of a convolution into channels-last


def _row_blocks(h: int) -> int:
    return -(-h // ROWS_PER_ITEM)


def _row_length(w: int) -> int:
    return (w + 15) // 16 * 16 + 8  # whole 16-wide tiles, plus room for the last tile's reads


def supports(weight: torch.Tensor, groups: int, stride: tuple[int, ...], padding: tuple[int, ...]) -> bool:
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
    cache: dict[tuple, tuple[torch.Tensor, ...]], interior: tuple, *shapes: tuple[int, ...]
) -> tuple[torch.Tensor, ...]:
    """Zeroed tensors of these shapes, kept in ``cache`` per ``interior`` (the sizes and padding their data fills),
    shapes and thread (at most 4 entries) and reused: the kernels' padded buffers, whose padding is never written,
    so it stays zero and packing skips it. Keyed by the interior too, as one shape holds several: rows of 28 and of
    27 positions both take 40 floats, and a buffer packed 28 wide has data where a 27-wide one needs zeros."""
    key = (interior, *shapes, threading.get_ident())
    kept = cache.get(key)
    if kept is None:
        if len(cache) >= 4:
            cache.clear()
        kept = cache[key] = tuple(torch.zeros(shape) for shape in shapes)
    return kept


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
            return _kept(self._buffers_cache, (n, t, h, w), shape_1)
        shape_2 = (n, g, self._out_length(t) + 2 * pd2, h + 2 * ph2, c2, row)
        return _kept(self._buffers_cache, (n, t, h, w), shape_1, shape_2)

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
        c_in, c_mid = self.weight_1.shape[4], self.weight_1.shape[5]
        c_out = self.weight_2.shape[5] * g
        lib = _library()
        dims_1 = (buf_1.shape[2], buf_1.shape[3], buf_1.shape[5])  # padded T, H and row length
        if multiplexer is not None:
            multiplexer.run(x_in, buf=buf_1, padding=(pd1, ph1, pw1))
        else:
            _pack_into(buf_1, x_in, (pd1, ph1, pw1), lib, self.scale, self.shift)
        t_out = self._out_length(t)
        if shortcut.shape != (n, c_out, t_out, h, w):
            raise ValueError(f"shortcut of shape {tuple(shortcut.shape)} cannot be added to {(n, c_out, t_out, h, w)}")
        out = torch.empty((n, c_out, t_out, h, w), memory_format=torch.channels_last_3d)
        if self._one_pass():  # conv2/conv3/conv4 units at 224: 0.2-1.3 ms faster each than two passes
            weights = (_ptr(buf_1), _ptr(self.weight_1), _ptr(self.bias_1), _ptr(self.weight_2), _ptr(self.bias_2))
            dims = (t_out, h, w, g, c_in, c_mid, c_out // g, *self.kernel_1, self.temporal_stride, *self.kernel_2[1:])
            wino = (_ptr(self.wino_1), _ptr(self.wino_2))
            if any(_parallel(lib.mf_tail, (*weights, *dims, *dims_1, _ptr(out), _ptr(shortcut), *wino), n * t_out)):
                raise MemoryError("the fiber kernel could not allocate its scratch rows")
            return out
        buf_2 = buffers[1]
        dims_2 = (buf_2.shape[2], buf_2.shape[3], buf_2.shape[5])
        conv_1 = (_ptr(buf_1), _ptr(self.weight_1), _ptr(self.bias_1), t_out, h, w, g, c_in, c_mid, *self.kernel_1)
        into_buffer = (1, _ptr(buf_2), pd2, ph2, pw2, dims_2[2], None, None, _ptr(self.wino_1))
        _parallel(lib.mf_conv, (*conv_1, self.temporal_stride, *dims_1, *into_buffer), n * g * t_out)
        conv_2 = (_ptr(buf_2), _ptr(self.weight_2), _ptr(self.bias_2), t_out, h, w, g, c_mid, c_out // g)
        into_output = (0, None, 0, 0, 0, 0, _ptr(out), _ptr(shortcut), _ptr(self.wino_2))
        _parallel(lib.mf_conv, (*conv_2, *self.kernel_2, 1, *dims_2, *into_output), n * t_out * _row_blocks(h))
        return out

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
    def supported(channels: int, hidden: int) -> bool:
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
        groups, per_group = (buf.shape[1], buf.shape[4]) if buf is not None else (1, c)
        dims = (buf.shape[2], buf.shape[3], buf.shape[5]) if buf is not None else (t, h, w)
        weights = (self.scale, self.shift, self.weight_1, self.bias_1, self.weight_2, self.bias_2)
        args = (_ptr(x), *map(_ptr, weights), self.weight_1.shape[1], _ptr(self.out_scale), _ptr(self.out_shift))
        rows = _mux_rows(w)
        args += (_ptr(buf), _ptr(out), n, t, h, w, groups, per_group, *dims, *padding, rows)
        proj_bn = (self.proj_scale, self.proj_shift) if proj is not None else (None, None)
        args += (*map(_ptr, proj_bn), _ptr(proj), *self.proj_stride)
        if all(_parallel(_library().mf_mux_pack, args, -(-n * t * h // rows))):  # no thread could run
            raise MemoryError("the fiber kernel could not allocate its scratch rows")
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
    def spatial_stride_applies(weight: torch.Tensor, groups: int) -> bool:
        """Whether the kernel runs this convolution ``(C_out, C_in/G, kt, kh, kw)`` with a spatial stride of 2: 3x3
        spatial taps, output channels per group a multiple of 12 (``s2_tile12`` of fiber_conv.c), AVX-512 on."""
        return (
            tuple(weight.shape[3:]) == (3, 3)
            and (weight.shape[0] // groups) % 12 == 0
            and bool(_state.get("avx512"))
        )

    def out_size(self, t: int, h: int, w: int) -> tuple[int, int, int]:
        """The output's ``(T, H, W)`` for an input of ``(t, h, w)``."""
        kt, s = self.kernel[0], self.spatial_stride
        return (t + 2 * (kt // 2) - kt) // self.temporal_stride + 1, (h - 1) // s + 1, (w - 1) // s + 1

    def worth_it(self, x: torch.Tensor) -> bool:
        """Whether the kernel beats oneDNN on this input ``(N, C, T, H, W)``: outputs at least ``MIN_WIDTH`` wide."""
        return self.out_size(*x.shape[2:])[2] >= MIN_WIDTH

    def _buffer(self, n: int, c: int, t: int, h: int, w: int) -> torch.Tensor:
        """The zero-padded group-major input buffer (see ``_kept``)."""
        pd, ph, pw = (k // 2 for k in self.kernel)
        row = _row_length(w + 2 * pw)
        if self.spatial_stride == 2:  # the strided tile reads 34 inputs from 2 x0 for 16 outputs at x0
            row = max(row, 32 * ((self.out_size(t, h, w)[2] + 15) // 16 - 1) + 40)
        shape = (n, self.groups, t + 2 * pd, h + 2 * ph, c // self.groups, row)
        return _kept(self._buffers_cache, (n, c, t, h, w), shape)[0]

    @torch.no_grad()
    def pack_from(self, x: torch.Tensor, multiplexer: KernelMultiplexer) -> torch.Tensor | None:
        """For a first unit: ``multiplexer`` (whose BN after ``x_in`` is this one's) packs straight into the
        convolution's buffer; returns the projection's input it writes too, if it has the projection's BN
        (``forward_with_projection``), else ``None``. ``conv(x.shape)`` then convolves."""
        padding = tuple(k // 2 for k in self.kernel)
        buf = self._buffer(*x.shape)
        _, proj = multiplexer.run(x, buf=buf, padding=padding, projection=multiplexer.has_projection)
        return proj

    @torch.no_grad()
    def pack(self, x: torch.Tensor) -> None:
        """Packs ``relu(x * scale + shift)`` of ``x`` ``(N, C, T, H, W)`` into the buffer ``conv(x.shape)`` reads."""
        padding = tuple(k // 2 for k in self.kernel)
        buf = self._buffer(*x.shape)
        _pack_into(buf, x.contiguous(memory_format=CL3D), padding, _library(), self.scale, self.shift)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution alone (without the dense one; not with a spatial stride)."""
        if self.spatial_stride != 1:
            raise ValueError("a strided KernelFiberConv runs with its dense convolution only (conv)")
        self.pack(x)
        return self.conv(x.shape, dense=False)

    def conv(
        self,
        in_shape: torch.Size,
        *,
        add: torch.Tensor | None = None,
        extra: torch.Tensor | None = None,
        dense: bool = True,
    ) -> torch.Tensor:
        """The convolution of the packed buffer of an input of ``in_shape``; with the dense convolution (where
        there is one and ``dense``), then ``+ add`` (channels-last, the output's shape); ``extra``: the folded
        projection's input (``fold_projection``), needed once one is folded."""
        n, _, t, h, w = in_shape
        buf = self._buffer(*in_shape)
        lib = _library()
        t_out, h_out, w_out = self.out_size(t, h, w)
        if not (dense and self.has_dense):
            if self.spatial_stride != 1:
                raise ValueError("a strided KernelFiberConv runs with its dense convolution only")
            if add is not None or extra is not None:
                raise ValueError("a sum needs the dense convolution after this one")
            out_shape = (n, self.out_channels, t_out, h, w)
            return _conv(
                buf, self.weight, out_shape, lib, bias=self.bias, relu=True, temporal_stride=self.temporal_stride
            )
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
        _, kt, kh, kw, ci, co = self.weight.shape
        args = (_ptr(buf), _ptr(self.weight), _ptr(self.bias), t_out, h_out, w_out, self.groups, ci, co, kt, kh, kw)
        args += (self.temporal_stride, buf.shape[2], buf.shape[3], buf.shape[5], 1)
        args += (_ptr(self.dense_weight), _ptr(self.dense_bias), c_post, _ptr(out), _ptr(add))
        args += (_ptr(extra), self.projection_channels, self.spatial_stride)
        if all(_parallel(lib.mf_conv_dense, args, n * t_out * _row_blocks(h_out))):  # no thread could run
            raise MemoryError("the fiber kernel could not allocate its scratch rows")
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


def supports_training(weight: torch.Tensor, groups: int, stride: tuple[int, ...], padding: tuple[int, ...]) -> bool:
    """Whether ``fiber_conv3d`` can run (forward and backward) a convolution with this weight and these settings.

    On top of ``supports``: stride 1, at most 12 channels per group, and input channels per group a multiple of 6
    too (the input gradient is a convolution from the output channels to the input channels; 6 or 12 here, as in
    mfnet3d's ``conv2`` and ``conv3``).
    """
    return (
        supports(weight, groups, stride, padding)
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
    ``fiber_conv.c`` (``wino_tile``): ``(G, kt, kh, C_in/G, 4, C_out/G)`` holding ``w0``, ``(w0 + w1 + w2) / 2``,
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
    lib: ctypes.CDLL,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
) -> None:
    """Writes channels-last ``x`` ``(N, C, T, H, W)`` (``relu(x * scale + shift)`` with a BN) into the interior of
    the padded group-major ``buf`` ``(N, G, T + 2pd, H + 2ph, C/G, row)``. Its padding is never written: keep the
    buffer, zeroed once (``_kept``, ``_take_buffer``)."""
    n, c, t, h, w = x.shape
    groups = buf.shape[1]
    dims = (buf.shape[2], buf.shape[3], buf.shape[5], *padding)
    args = (_ptr(x), _ptr(scale), _ptr(shift), _ptr(buf), t, h, w, groups, c // groups, *dims)
    _parallel(lib.mf_pack, args, n * t * h)


def _conv(
    buf: torch.Tensor,
    weight: torch.Tensor,
    out_shape: tuple[int, ...],
    lib: ctypes.CDLL,
    *,
    bias: torch.Tensor | None = None,
    relu: bool = False,
    temporal_stride: int = 1,
    add: torch.Tensor | None = None,
) -> torch.Tensor:
    """The convolution (spatial stride 1) of a padded group-major buffer with a weight in kernel layout (then
    ``+ bias`` and ReLU if asked, then ``+ add``, a tensor of the output's shape), channels-last out."""
    n, groups = buf.shape[:2]
    _, kt, kh, kw, ci, co = weight.shape
    _, _, t, h, w = out_shape
    out = torch.empty(out_shape, memory_format=CL3D)
    bias = torch.zeros(groups * co) if bias is None else bias
    conv = (_ptr(buf), _ptr(weight), _ptr(bias), t, h, w, groups, ci, co, kt, kh, kw, temporal_stride)
    if add is not None:
        if tuple(add.shape) != tuple(out_shape):
            raise ValueError(f"cannot add a tensor of shape {tuple(add.shape)} to the output {tuple(out_shape)}")
        add = add.contiguous(memory_format=CL3D)
    wino = _winograd_weight(weight) if winograd_runs(ci) else None  # held here: the kernel reads it below
    into_output = (int(relu), None, 0, 0, 0, 0, _ptr(out), _ptr(add), _ptr(wino))
    _parallel(lib.mf_conv, (*conv, buf.shape[2], buf.shape[3], buf.shape[5], *into_output), n * t * _row_blocks(h))
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
    a new one.

    Training's buffers are pooled (``_give_buffer``) so that packing writes only their interior: a fresh buffer
    must be written whole, its zeros included (``conv2``'s 3x3x3 input: 37 MB for 19 MB of data)."""
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


def _packed_into_kept(
    x: torch.Tensor, groups: int, padding: tuple[int, ...], lib: ctypes.CDLL
) -> tuple[torch.Tensor, tuple]:
    """``x`` packed into a pooled buffer whose padding is zero already, and the buffer's pool key (give it back with
    ``_give_buffer``)."""
    key = _pool_key(x.shape, groups, padding)
    buf = _take_buffer(key)
    _pack_into(buf, x.contiguous(memory_format=CL3D), padding, lib)
    return buf, key


def _graph_kept() -> bool:
    """Whether the running backward keeps its graph (``retain_graph=True``): its saved buffers may be read again.
    True where PyTorch cannot tell."""
    keep_graph = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    try:
        return True if keep_graph is None else bool(keep_graph())
    except RuntimeError:
        return True


class _FiberConv3d(torch.autograd.Function):
    """``F.conv3d(x, weight, None, 1, padding, 1, groups)`` with the kernel in both directions (CPU, float32).

    The padded input saved for the backward and the gradient's padded copy come from a pool of zeroed buffers
    (``_take_buffer``); the backward hands both back, the input's only where the graph is not kept for another
    backward."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        padding: tuple[int, ...],
        groups: int,
        add: torch.Tensor | None = None,
    ) -> torch.Tensor:
        lib = _library()
        buf_x, ctx.key_x = _packed_into_kept(x, groups, padding, lib)
        out_shape = (x.shape[0], weight.shape[0], *x.shape[2:])
        out = _conv(buf_x, _kernel_weight(weight, groups), out_shape, lib, add=add)
        ctx.save_for_backward(buf_x, weight)
        ctx.conf = (tuple(x.shape), padding, groups)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        buf_x, weight = ctx.saved_tensors
        x_shape, padding, groups = ctx.conf
        lib = _library()
        c_in = x_shape[1]
        c_out, ci, kt, kh, kw = weight.shape
        co = c_out // groups
        buf_g, key_g = _packed_into_kept(grad, groups, padding, lib)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:  # a convolution with the flipped, transposed kernels of each group
            flipped = weight.detach().reshape(groups, co, ci, kt, kh, kw).transpose(1, 2).flip(3, 4, 5)
            grad_x = _conv(buf_g, _kernel_weight(flipped.reshape(c_in, co, kt, kh, kw), groups), x_shape, lib)
        if ctx.needs_input_grad[1]:
            grad_w = _weight_grad(buf_x, buf_g, padding, tuple(grad.shape), tuple(weight.shape), groups, 1, lib)
            grad_w = grad_w.contiguous(memory_format=CL3D)
        _give_buffer(key_g, buf_g)
        if not _graph_kept():
            _give_buffer(ctx.key_x, buf_x)
        return grad_x, grad_w, None, None, grad if ctx.needs_input_grad[4] else None


def _weight_grad(
    buf_x: torch.Tensor,
    buf_g: torch.Tensor,
    offset: tuple[int, ...],
    out_shape: tuple[int, ...],
    weight_shape: tuple[int, ...],
    groups: int,
    temporal_stride: int,
    lib: ctypes.CDLL,
) -> torch.Tensor:
    """The weight gradient ``(C_out, C_in/G, kt, kh, kw)`` (plain layout) from the padded group-major input
    ``buf_x`` and the output gradient ``buf_g``, a group-major buffer whose data starts at ``offset`` and whose
    other entries are zero; ``out_shape``: the output's ``(N, C_out, T', H', W')``."""
    n, _, t, h, w = out_shape
    c_out, ci, kt, kh, kw = weight_shape
    co = c_out // groups
    dw = torch.empty(groups, kt, kh, kw, ci, co)
    scratch = torch.empty(groups * kt * kh * kw * ci * co * 16)
    args = (_ptr(buf_x), _ptr(buf_g), _ptr(dw), _ptr(scratch), n, t, h, w, groups, ci, co, kt, kh, kw, temporal_stride)
    args += (buf_x.shape[2], buf_x.shape[3], buf_x.shape[5], *offset, buf_g.shape[5])
    _parallel(lib.mf_conv_wgrad, args, groups)
    return dw.permute(0, 5, 4, 1, 2, 3).reshape(weight_shape)


def weight_grad_applies(weight: torch.Tensor, groups: int, stride: tuple[int, ...], padding: tuple[int, ...]) -> bool:
    """Whether ``conv3d_weight_grad`` can compute this convolution's weight gradient: as ``supports`` (any temporal
    stride), ``kw == 3``, with the kernel loaded and its AVX-512 loop on (the AVX2 one needs an even number of input
    channels per group and is not used here)."""
    return (
        supports(weight, groups, stride, padding)
        and weight.shape[-1] == 3
        and load() is not None
        and bool(_state.get("avx512"))
    )


def conv3d_weight_grad(
    x: torch.Tensor,
    grad: torch.Tensor,
    weight_shape: tuple[int, ...],
    padding: tuple[int, ...],
    groups: int,
    temporal_stride: int,
) -> torch.Tensor:
    """``d loss / d weight`` of ``F.conv3d(x, weight, None, (temporal_stride, 1, 1), padding, 1, groups)`` on the
    kernel, given ``grad``, its output's gradient. ``x (N, C_in, T, H, W)``, ``grad (N, C_out, T', H', W')``, float32 on
    CPU, channels-last-3d for the fastest packing; returns the weight's shape in plain layout. Check
    ``weight_grad_applies`` first.

    Used for ``conv2``'s first ``conv_m1`` (one input channel per group, temporal stride 2), whose im2col matrix
    oneDNN and a batched matrix product would build with 27 copies."""
    lib = _library()
    buf_x, key_x = _packed_into_kept(x, groups, padding, lib)
    buf_g, key_g = _packed_into_kept(grad, groups, (0, 0, 0), lib)  # the weight gradient needs no padding around it
    dw = _weight_grad(buf_x, buf_g, (0, 0, 0), tuple(grad.shape), tuple(weight_shape), groups, temporal_stride, lib)
    _give_buffer(key_x, buf_x)
    _give_buffer(key_g, buf_g)
    return dw


def _library() -> ctypes.CDLL:
    lib = _state.get("loaded") or load()
    if lib is None:
        raise RuntimeError("the fiber kernel could not be loaded")
    return lib  # type: ignore[return-value]


def fiber_conv3d(
    x: torch.Tensor, weight: torch.Tensor, padding: tuple[int, ...], groups: int, add: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.conv3d(x, weight, None, 1, padding, 1, groups) (+ add)`` on the kernel, differentiable in ``x``,
    ``weight`` and ``add`` (added as the output is written, not in a pass of its own).

    ``x`` ``(N, C_in, T, H, W)`` float32 on CPU (any layout; the output is channels-last-3d); ``add`` of the
    output's shape. Check ``supports_training`` and ``load()`` first.
    """
    return _FiberConv3d.apply(x, weight, tuple(padding), groups, add)
