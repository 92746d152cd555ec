"""The native operators compute what PyTorch computes, and the fast path uses them."""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

import mfnet
from mfnet.fastpath import kernels, native, optimize_for_inference
from mfnet.fastpath.kernels import KernelFiberConv, KernelFiberTail, KernelMultiplexer
from mfnet.fastpath.train_convs import conv3d_train
from mfnet.models.fiber import MultiFiberUnit

pytestmark = pytest.mark.kernel
needs_kernel = pytest.mark.skipif(not native.load(), reason="native operators not built here (MFNET_KERNELS=0?)")
CL3D = torch.channels_last_3d


def test_kernel_builds_where_it_can() -> None:
    """On an x86 machine with AVX2 and a C++ compiler (the CI machine), the operators must build and load, unless
    ``MFNET_KERNELS=0`` turned them off (then everything runs on oneDNN, and the kernel's tests skip)."""
    if not native.switched_on(native.KERNELS_SWITCH):
        assert native.load() is False
    elif {"avx2", "fma"} <= native._cpu_flags() and shutil.which("c++") and shutil.which("ninja"):
        assert native.load() is True
        assert torch.ops.mfnet.tail.default._schema.name == "mfnet::tail"


def _reference(
    x_in: torch.Tensor,
    shortcut: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor | None,
    w2: torch.Tensor,
    b2: torch.Tensor | None,
    groups: int,
    stride: int,
) -> torch.Tensor:
    a = torch.relu(x_in * scale.view(1, -1, 1, 1, 1) + shift.view(1, -1, 1, 1, 1))
    padding = [k // 2 for k in w1.shape[2:]]
    h = torch.relu(F.conv3d(a, w1, b1, stride=(stride, 1, 1), padding=padding, groups=groups))
    return F.conv3d(h, w2, b2, padding=[k // 2 for k in w2.shape[2:]], groups=groups) + shortcut


@needs_kernel
@pytest.mark.parametrize(
    ("c_in", "c_mid", "c_out", "groups", "size", "stride"),
    [
        (96, 96, 96, 16, (2, 3, 9, 13), 1),  # 6 channels per group; widths that are not multiples of 8 or 16
        (192, 192, 192, 16, (1, 4, 7, 28), 1),  # 12 channels per group
        (384, 384, 384, 16, (1, 3, 5, 14), 1),  # 24 channels per group (conv4 at 224), 14 wide
        (64, 96, 96, 16, (1, 2, 5, 17), 1),  # 4 input channels per group into 6
        (48, 48, 96, 8, (2, 2, 3, 8), 1),  # 6 in, 12 out per group; a one-tile row
        (16, 96, 96, 16, (2, 8, 6, 20), 2),  # conv2's first unit: 1 input channel per group, temporal stride 2
        (16, 96, 96, 16, (1, 5, 4, 9), 2),  # ... on an odd length
        (96, 96, 96, 16, (2, 3, 20, 30), 1),  # three bands of rows (8, 8, 4) in the one-pass tail
        (192, 192, 192, 16, (1, 2, 11, 16), 1),  # rows of 16 or less: tiles of 4, 2 and 1 rows, two bands
    ],
)
@pytest.mark.parametrize("fused", [True, False], ids=["one_pass", "two_passes"])
def test_tail_matches_pytorch(
    c_in: int, c_mid: int, c_out: int, groups: int, size: tuple[int, ...], stride: int, fused: bool
) -> None:
    g = torch.Generator().manual_seed(0)
    n, t, h, w = size
    scale, shift = torch.rand(c_in, generator=g) + 0.5, torch.rand(c_in, generator=g) - 0.5
    w1 = torch.randn(c_mid, c_in // groups, 3, 3, 3, generator=g) * 0.2
    b1 = torch.randn(c_mid, generator=g)
    w2 = torch.randn(c_out, c_mid // groups, 1, 3, 3, generator=g) * 0.2
    x_in = torch.randn(n, c_in, t, h, w, generator=g).contiguous(memory_format=CL3D)
    shortcut = torch.randn(n, c_out, (t - 1) // stride + 1, h, w, generator=g)
    tail = KernelFiberTail(scale, shift, w1, b1, w2, None, groups, temporal_stride=stride)
    tail.fused = fused
    expected = _reference(x_in, shortcut, scale, shift, w1, b1, w2, None, groups, stride)
    for _ in range(2):  # the second call reuses the padded buffers: their padding must still be zero
        got = tail(x_in, shortcut)
        assert got.is_contiguous(memory_format=CL3D)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def _bn(c: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(c, generator=g) + 0.5, torch.rand(c, generator=g) - 0.5


def _multiplexer(c: int, m: int, g: torch.Generator) -> tuple[KernelMultiplexer, Callable]:
    """A kernel multiplexer and its PyTorch reference ``x -> relu(bn_m(x_in))``."""
    (s_i, t_i), (s_m, t_m) = _bn(c, g), _bn(c, g)
    w1, b1 = torch.randn(m, c, 1, 1, 1, generator=g) * 0.2, torch.randn(m, generator=g)
    w2, b2 = torch.randn(c, m, 1, 1, 1, generator=g) * 0.2, torch.randn(c, generator=g)
    mux = KernelMultiplexer(s_i, t_i, w1, b1, w2, b2, s_m, t_m)

    def reference(x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(x * s_i.view(1, -1, 1, 1, 1) + t_i.view(1, -1, 1, 1, 1))
        x_in = F.conv3d(torch.relu(F.conv3d(a, w1, b1)), w2, b2) + x
        return torch.relu(x_in * s_m.view(1, -1, 1, 1, 1) + t_m.view(1, -1, 1, 1, 1))

    return mux, reference


@needs_kernel
@pytest.mark.parametrize(
    ("c", "m", "size"),
    [
        (96, 24, (1, 2, 3, 56)),  # conv2 at 224: one row per work item
        (192, 48, (2, 3, 5, 13)),  # widths that are not multiples of 4; 8 rows (104 positions) per item, 30 rows
        (384, 96, (1, 4, 3, 7)),  # conv5-like rows, 8 per item (56 positions); 12 rows: a partial last item
        (48, 72, (1, 1, 1, 1)),  # one position
        (16, 24, (1, 2, 3, 56)),  # conv2's first unit: 16 channels, not a multiple of 24
        (40, 24, (2, 1, 3, 5)),
    ],
)
@pytest.mark.parametrize("avx512", [False, True])  # 8 x 48 AVX-512 tiles where the columns allow, else 4 x 24 AVX2
def test_multiplexer_matches_pytorch(c: int, m: int, size: tuple[int, ...], avx512: bool) -> None:
    if avx512 and not native.avx512_available():
        pytest.skip("no AVX-512 on this CPU")
    g = torch.Generator().manual_seed(0)
    mux, reference = _multiplexer(c, m, g)
    n, t, h, w = size
    x = torch.randn(n, c, t, h, w, generator=g).contiguous(memory_format=CL3D)
    try:
        native.set_avx512(avx512)
        got = mux(x)
    finally:
        native.set_avx512()
    assert got.is_contiguous(memory_format=CL3D)
    torch.testing.assert_close(got, reference(x), rtol=1e-4, atol=1e-4)


@needs_kernel
@pytest.mark.parametrize(("size", "stride"), [((1, 2, 6, 56), (1, 2, 2)), ((2, 3, 5, 13), (2, 2, 2))])
def test_multiplexer_writes_the_projection_input(size: tuple[int, ...], stride: tuple[int, ...]) -> None:
    """A first unit's multiplexer also writes relu(bn_w(x)) where the strided 1x1x1 projection reads it."""
    g = torch.Generator().manual_seed(2)
    mux, reference = _multiplexer(96, 48, g)
    s_w, t_w = _bn(96, g)
    both = KernelMultiplexer(
        mux.scale, mux.shift, mux.weight_1.t().reshape(48, 96, 1, 1, 1), mux.bias_1,
        mux.weight_2.t().reshape(96, 48, 1, 1, 1), mux.bias_2, mux.out_scale, mux.out_shift,
        proj_scale=s_w, proj_shift=t_w, proj_stride=stride,
    )  # fmt: skip
    x = torch.randn(size[0], 96, *size[1:], generator=g).contiguous(memory_format=CL3D)
    out, proj = both.forward_with_projection(x)
    expected = torch.relu(x * s_w.view(1, -1, 1, 1, 1) + t_w.view(1, -1, 1, 1, 1))
    st, sh, sw = stride
    torch.testing.assert_close(out, reference(x), rtol=1e-4, atol=1e-4)
    assert proj.is_contiguous(memory_format=CL3D)
    torch.testing.assert_close(proj, expected[:, :, ::st, ::sh, ::sw], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="projection"):
        mux.forward_with_projection(x)


@needs_kernel
@pytest.mark.parametrize("size", [(1, 4, 9, 56), (2, 5, 5, 13)])  # 8-row blocks; blocks of 65 positions: 64 + 1
def test_conv_then_dense_matches_pytorch(size: tuple[int, ...]) -> None:
    """conv2's first unit: the kernel's conv_m1 (16 -> 96, one channel per fiber, temporal stride 2), then the dense
    1x1x1 conv_m2 and the projection's sum, block by block (mf_conv_dense)."""
    g = torch.Generator().manual_seed(3)
    scale, shift = _bn(16, g)
    w1, b1 = torch.randn(96, 1, 3, 3, 3, generator=g) * 0.3, torch.randn(96, generator=g)
    w2, b2 = torch.randn(96, 96, 1, 1, 1, generator=g) * 0.1, torch.randn(96, generator=g)
    conv = KernelFiberConv(scale, shift, w1, b1, 16, temporal_stride=2, dense_weight=w2, dense_bias=b2)
    n, t, h, w = size
    x = torch.randn(n, 16, t, h, w, generator=g).contiguous(memory_format=CL3D)
    shortcut = torch.randn(n, 96, (t - 1) // 2 + 1, h, w, generator=g)
    a = torch.relu(x * scale.view(1, -1, 1, 1, 1) + shift.view(1, -1, 1, 1, 1))
    y = torch.relu(F.conv3d(a, w1, b1, stride=(2, 1, 1), padding=1, groups=16))
    torch.testing.assert_close(conv(x), y, rtol=1e-4, atol=1e-4)  # forward: the grouped convolution alone
    buf = conv.pack(x)
    got = conv.conv(buf, x.shape, add=shortcut)
    assert got.is_contiguous(memory_format=CL3D)
    torch.testing.assert_close(got, F.conv3d(y, w2, b2) + shortcut, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(conv.conv(buf, x.shape), F.conv3d(y, w2, b2), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="dense"):
        conv.conv(buf, x.shape, add=shortcut, dense=False)

    # the projection shortcut folded into the dense product: its input joins conv_m1's output as 16 more channels
    wp, bp = torch.randn(96, 16, 1, 1, 1, generator=g) * 0.2, torch.randn(96, generator=g)
    p = torch.relu(torch.randn(n, 16, (t - 1) // 2 + 1, h, w, generator=g))
    conv.fold_projection(wp, bp)
    got = conv.conv(buf, x.shape, extra=p)
    torch.testing.assert_close(got, F.conv3d(y, w2, b2) + F.conv3d(p, wp, bp), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="extra"):
        conv.conv(buf, x.shape)
    with pytest.raises(ValueError, match="once"):
        conv.fold_projection(wp, bp)


@needs_kernel
@pytest.mark.parametrize(
    ("c_in", "size"),
    [
        (96, (1, 3, 16, 56)),  # conv3's first unit at 224 (28 wide out: two 16-output chunks per row, 8-row blocks)
        (192, (1, 2, 28, 28)),  # conv4's (14 wide out: two rows per vector)
        (96, (2, 3, 9, 27)),  # odd sizes: 5 x 14 out, the last input column read as padding
        (192, (1, 1, 3, 5)),  # 2 x 3 out: one partial chunk
    ],
)
@pytest.mark.parametrize("avx512", [True, False])  # the strided AVX-512 tile, or plain loops
def test_strided_conv_then_dense_matches_pytorch(c_in: int, size: tuple[int, ...], avx512: bool) -> None:
    """The first units of conv3 and conv4: conv_m1 with spatial stride 2 (s2_tile), then the dense conv_m2 with the
    projection folded into its product (mf_conv_dense)."""
    if avx512 and not native.avx512_available():
        pytest.skip("the strided tile needs AVX-512")
    g = torch.Generator().manual_seed(5)
    c_mid = 2 * c_in
    scale, shift = _bn(c_in, g)
    w1, b1 = torch.randn(c_mid, c_in // 16, 3, 3, 3, generator=g) * 0.2, torch.randn(c_mid, generator=g)
    w2, b2 = torch.randn(c_mid, c_mid, 1, 1, 1, generator=g) * 0.1, torch.randn(c_mid, generator=g)
    wp, bp = torch.randn(c_mid, c_in, 1, 1, 1, generator=g) * 0.1, torch.randn(c_mid, generator=g)
    conv = KernelFiberConv(scale, shift, w1, b1, 16, spatial_stride=2, dense_weight=w2, dense_bias=b2)
    n, t, h, w = size
    x = torch.randn(n, c_in, t, h, w, generator=g).contiguous(memory_format=CL3D)
    a = torch.relu(x * scale.view(1, -1, 1, 1, 1) + shift.view(1, -1, 1, 1, 1))
    y = torch.relu(F.conv3d(a, w1, b1, stride=(1, 2, 2), padding=1, groups=16))
    assert conv.out_size(t, h, w) == tuple(y.shape[2:])
    p = torch.relu(torch.randn(n, c_in, *y.shape[2:], generator=g))
    shortcut = torch.randn(n, c_mid, *y.shape[2:], generator=g)
    try:
        native.set_avx512(avx512)
        buf = conv.pack(x)
        got = conv.conv(buf, x.shape, add=shortcut)
        assert got.is_contiguous(memory_format=CL3D)
        torch.testing.assert_close(got, F.conv3d(y, w2, b2) + shortcut, rtol=1e-4, atol=1e-4)
        conv.fold_projection(wp, bp)
        got = conv.conv(buf, x.shape, extra=p)
        torch.testing.assert_close(got, F.conv3d(y, w2, b2) + F.conv3d(p, wp, bp), rtol=1e-4, atol=1e-4)
    finally:
        native.set_avx512()
    with pytest.raises(ValueError, match="dense"):
        conv(x)
    with pytest.raises(ValueError, match="dense"):
        KernelFiberConv(scale, shift, w1, b1, 16, spatial_stride=2)


@needs_kernel
@pytest.mark.parametrize("size", [(1, 2, 3, 56), (2, 3, 4, 13)])
def test_whole_unit_with_the_multiplexer_matches_pytorch(size: tuple[int, ...]) -> None:
    """``KernelFiberTail.forward_unit``: the multiplexer writes straight into the packed buffer of ``conv_m1``."""
    g = torch.Generator().manual_seed(1)
    mux, mux_reference = _multiplexer(96, 24, g)
    w1 = torch.randn(96, 6, 3, 3, 3, generator=g) * 0.2
    b1, w2 = torch.randn(96, generator=g), torch.randn(96, 6, 1, 3, 3, generator=g) * 0.2
    tail = KernelFiberTail(mux.out_scale, mux.out_shift, w1, b1, w2, None, 16)
    x = torch.randn(size[0], 96, *size[1:], generator=g).contiguous(memory_format=CL3D)
    h = torch.relu(F.conv3d(mux_reference(x), w1, b1, padding=1, groups=16))
    expected = F.conv3d(h, w2, None, padding=(0, 1, 1), groups=16) + x
    for _ in range(2):  # the buffers are reused: their padding must stay zero
        torch.testing.assert_close(tail.forward_unit(x, mux), expected, rtol=1e-4, atol=1e-4)


@needs_kernel
def test_nan_propagates_through_the_multiplexer() -> None:
    g = torch.Generator().manual_seed(0)
    mux, _ = _multiplexer(96, 24, g)
    x = torch.randn(1, 96, 2, 3, 9, generator=g)
    x[0, 5, 1, 2, 4] = float("nan")
    got = mux(x.contiguous(memory_format=CL3D))
    assert torch.isnan(got[0, :, 1, 2, 4]).all()  # the multiplexer mixes every channel of that position
    assert torch.isnan(got).sum() == 96


@needs_kernel
@pytest.mark.parametrize("avx512", [False, True])
# AVX-512 tiles: 32 + 16; 56; 56 on 50; 64; 64 + 56; 64 + 32 + 16; one partial 16
@pytest.mark.parametrize("width", [40, 56, 50, 64, 120, 100, 13])
def test_avx2_and_avx512_tiles_match_pytorch(avx512: bool, width: int) -> None:
    if avx512 and not native.avx512_available():
        pytest.skip("no AVX-512 on this CPU")
    g = torch.Generator().manual_seed(2)
    scale, shift = _bn(96, g)
    w1, b1 = torch.randn(96, 6, 3, 3, 3, generator=g) * 0.2, torch.randn(96, generator=g)
    w2 = torch.randn(96, 6, 1, 3, 3, generator=g) * 0.2
    x_in = torch.randn(1, 96, 3, 4, width, generator=g).contiguous(memory_format=CL3D)
    shortcut = torch.randn(1, 96, 3, 4, width, generator=g)
    tail = KernelFiberTail(scale, shift, w1, b1, w2, None, 16)
    expected = _reference(x_in, shortcut, scale, shift, w1, b1, w2, None, 16, 1)
    try:
        assert native.set_avx512(avx512) == avx512
        torch.testing.assert_close(tail(x_in, shortcut), expected, rtol=1e-4, atol=1e-4)
    finally:
        native.set_avx512()


@needs_kernel
@pytest.mark.parametrize("fused", [True, False], ids=["one_pass", "two_passes"])
# 16-position chunks, two per Winograd vector: one per row (odd row counts: a half-used vector), two, three (a vector
# across two rows), a partial one; 56 wide stays on the direct 6 x 56 tile
@pytest.mark.parametrize(
    ("channels", "size"),
    [(24, (3, 5, 14)), (12, (2, 4, 28)), (12, (2, 3, 40)), (24, (1, 3, 13)), (12, (2, 3, 56)), (12, (1, 19, 16))],
)
def test_winograd_tile_matches_the_direct_tiles_and_pytorch(fused: bool, channels: int, size: tuple[int, ...]) -> None:
    if not native.avx512_available():
        pytest.skip("the Winograd tile needs AVX-512")
    g = torch.Generator().manual_seed(3)
    c = 16 * channels
    scale, shift = _bn(c, g)
    w1, b1 = torch.randn(c, channels, 3, 3, 3, generator=g) * 0.2, torch.randn(c, generator=g)
    w2, b2 = torch.randn(c, channels, 1, 3, 3, generator=g) * 0.2, torch.randn(c, generator=g)
    x_in = torch.randn(1, c, *size, generator=g).contiguous(memory_format=CL3D)
    shortcut = torch.randn(1, c, *size, generator=g)
    tail = KernelFiberTail(scale, shift, w1, b1, w2, b2, 16)
    tail.fused = fused
    expected = _reference(x_in, shortcut, scale, shift, w1, b1, w2, b2, 16, 1)
    try:
        native.set_avx512(True)  # whatever MFNET_KERNEL_AVX512 says
        got = {}
        for on in (True, False):
            assert native.set_winograd(on) is on
            got[on] = tail(x_in, shortcut)
            torch.testing.assert_close(got[on], expected, rtol=1e-4, atol=1e-4)
        if size[-1] != 56:  # another order of the sums: not bit-identical to the direct tiles, but as close
            assert not torch.equal(got[True], got[False])
    finally:
        native.set_winograd()
        native.set_avx512()


def test_winograd_weights_reproduce_the_three_taps() -> None:
    g = torch.Generator().manual_seed(4)
    weight = torch.randn(2, 1, 3, 3, 5, 6, generator=g)  # (G, kt, kh, kw, C_in/G, C_out/G)
    u = kernels._winograd_weight(weight)
    assert u.shape == (2, 1, 3, 5, 4, 6)
    w0, w1, w2 = weight.unbind(3)
    torch.testing.assert_close(u[:, :, :, :, 1] - u[:, :, :, :, 2], w1)  # y(2q) = d0 w0 + d1 w1 + d2 w2
    torch.testing.assert_close(u[:, :, :, :, 1] + u[:, :, :, :, 2] - u[:, :, :, :, 3], w0)  # y(2q+1)'s d1 term
    torch.testing.assert_close(u[:, :, :, :, 0], w0)
    torch.testing.assert_close(u[:, :, :, :, 3], w2)
    assert kernels._winograd_weight(weight[:, :, :, :1]) is None


@needs_kernel
@pytest.mark.parametrize(
    ("variable", "switch", "default"),
    [
        (native.AVX512_SWITCH, native.set_avx512, native.avx512_available),
        (native.WINOGRAD_SWITCH, native.set_winograd, lambda: True),
    ],
    ids=["avx512", "winograd"],
)
def test_kernel_tiles_can_be_turned_off(
    monkeypatch: pytest.MonkeyPatch, variable: str, switch: Callable, default: Callable
) -> None:
    monkeypatch.setenv(variable, "0")
    try:
        assert switch() is False
        if switch is native.set_avx512:
            assert native.avx512_on() is False  # what the tests and the fast path ask
        monkeypatch.delenv(variable)
        assert switch() is default()
        if switch is native.set_avx512:
            assert native.avx512_on() is native.avx512_available()
    finally:
        switch()


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


@needs_kernel
def test_operators_share_their_items_between_the_pools_threads() -> None:
    """With 2 threads, both take part in an operator's items (an extension built without OpenMP runs on one)."""
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert torch.ops.mfnet.pool_threads(64) == 2
        torch.set_num_threads(1)
        assert torch.ops.mfnet.pool_threads(64) == 1
    finally:
        torch.set_num_threads(previous)


@needs_kernel
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc")
def test_operators_run_on_pytorchs_thread_pool_only() -> None:
    """The operators share their items between the threads of PyTorch's intra-op pool: no thread of their own, the
    same numbers with any number of threads, and ``torch.set_num_threads`` governs them."""
    g = torch.Generator().manual_seed(3)
    scale, shift = _bn(96, g)
    w1, w2 = torch.randn(96, 6, 3, 3, 3, generator=g) * 0.2, torch.randn(96, 6, 1, 3, 3, generator=g) * 0.2
    tail = KernelFiberTail(scale, shift, w1, None, w2, None, 16)
    x_in = torch.randn(1, 96, 4, 9, 30, generator=g).contiguous(memory_format=CL3D)
    shortcut = torch.randn(1, 96, 4, 9, 30, generator=g)
    expected = _reference(x_in, shortcut, scale, shift, w1, None, w2, None, 16, 1)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        torch.randn(1 << 20).exp().sum()  # PyTorch's own pool is started
        before = _threads()
        torch.testing.assert_close(tail(x_in, shortcut), expected, rtol=1e-4, atol=1e-4)
        assert _threads() == before
        torch.set_num_threads(1)
        torch.testing.assert_close(tail(x_in, shortcut), expected, rtol=1e-4, atol=1e-4)
    finally:
        torch.set_num_threads(previous)


def _randomise_bn(model: torch.nn.Module) -> None:
    """BN statistics and scales away from their defaults, so that folding them is tested."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)


@needs_kernel
@pytest.mark.parametrize("shape", [(1, 3, 4, 48, 224), (2, 3, 4, 32, 112)])  # conv2 and conv3 28+ wide; conv3 14
def test_fast_path_uses_the_kernel_and_matches_the_model(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = mfnet.create_model("mfnet3d", num_classes=7, widths=(96, 192, 96, 96), depths=(2, 2, 1, 1)).eval()
    _randomise_bn(model)
    x = torch.randn(shape)
    fast = optimize_for_inference(model, x, check=True)
    assert fast.fastpath_info.kernel_units == 6  # every unit has parts on the kernels (the multiplexer at least)
    plan = {name: unit.backend.plan for name, unit in fast.named_modules() if isinstance(unit, MultiFiberUnit)}
    assert isinstance(plan["conv2.B01"].kernel_m1, KernelFiberConv)  # conv2's first conv_m1 (16 -> 96, stride 2)
    strided = plan["conv3.B01"].kernel_m1  # conv3's first: spatial stride 2 and a dense conv_m2, with AVX-512
    if native.avx512_on():
        assert strided.spatial_stride == 2 and strided.projection_channels == 96
        calls = []
        conv = strided.conv
        strided.conv = lambda *args, **kwargs: calls.append(args) or conv(*args, **kwargs)
        with torch.inference_mode():
            fast(x)
        assert len(calls) == 1  # it runs at these sizes (conv3's outputs 14 or 28 wide)
        del strided.conv
    else:
        assert strided is None
    assert isinstance(plan["conv2.B02"].kernel_mux, KernelMultiplexer)  # with its tail: the whole unit on the kernels
    assert isinstance(plan["conv2.B02"].kernel_tail, KernelFiberTail)
    assert isinstance(plan["conv3.B01"].kernel_mux, KernelMultiplexer)  # it packs the strided conv_m1's buffer
    assert plan["conv3.B01"].kernel_mux.has_projection  # ... and the projection's BN-ReLU, subsampled
    assert plan["conv3.B01"].conv_w1_compact is not None and plan["conv3.B01"].conv_w1_compact.stride == [1, 1, 1]
    assert plan["conv2.B01"].kernel_mux.has_projection  # 16 channels; it packs conv_m1's buffer and the projection's
    assert fast.fastpath_info.max_rel_diff < 1e-4
    copied = copy.deepcopy(fast)
    with torch.inference_mode():
        torch.testing.assert_close(copied(x), fast(x), rtol=0, atol=0)


@needs_kernel
def test_conv4_units_run_whole_on_the_kernels_and_match_the_model() -> None:
    """24 channels per fiber on 14-wide frames (mfnet3d's conv4 at 224): multiplexer and tail on the kernels."""
    torch.manual_seed(1)
    model = mfnet.create_model("mfnet3d", num_classes=5, widths=(96, 192, 384, 96), depths=(1, 1, 2, 1)).eval()
    _randomise_bn(model)
    fast = optimize_for_inference(model, torch.randn(1, 3, 4, 224, 224), check=True)
    unit = fast.conv4.B02.backend.plan
    assert isinstance(unit.kernel_tail, KernelFiberTail) and isinstance(unit.kernel_mux, KernelMultiplexer)
    assert unit.kernel_tail.weight_1.shape[-2:] == (24, 24)  # (G, kt, kh, kw, C_in/G, C_out/G)
    assert fast.fastpath_info.max_rel_diff < 1e-4
    first = fast.conv4.B01.backend.plan.kernel_m1  # 12 -> 24 channels per fiber at stride 2, then the dense 384 -> 384
    if native.avx512_on():
        assert first.spatial_stride == 2 and first.weight.shape[-2:] == (12, 24)
        assert first.wide_enough(torch.empty(1, 192, 2, 28, 28))
        assert not first.wide_enough(torch.empty(1, 192, 2, 14, 14))
    # at 112 conv4's outputs are 7 wide: its first unit stays on oneDNN, with the same numbers
    small = optimize_for_inference(model, torch.randn(1, 3, 4, 112, 112), check=True)
    assert small.fastpath_info.max_rel_diff < 1e-4


def test_turned_off_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.KERNELS_SWITCH, "0")
    monkeypatch.setattr(native, "_state", {})
    assert native.load() is False
    model = mfnet.create_model("mfnet3d", num_classes=3, widths=(96, 96, 96, 96), depths=(2, 1, 1, 1)).eval()
    fast = optimize_for_inference(model, torch.randn(1, 3, 4, 32, 32))
    assert fast.fastpath_info.kernel_units == 0


@needs_kernel
@pytest.mark.parametrize(
    ("channels", "kernel", "size"),
    [
        (96, (3, 3, 3), (2, 3, 5, 26)),  # conv2's conv_m1: 6 channels per group, a row of 16 + 10
        (96, (1, 3, 3), (1, 4, 3, 24)),  # conv2's conv_m2
        (192, (3, 3, 3), (2, 2, 3, 30)),  # 12 channels per group
        (192, (3, 3, 3), (1, 3, 4, 14)),  # conv3 at 112: one 16-wide vector per row
        (96, (1, 3, 3), (1, 2, 2, 37)),  # three 16-wide vectors, the last with 5 positions
    ],
)
@pytest.mark.parametrize("avx512", [False, True])  # the weight gradient's AVX-512 loop (KW == 3) or the AVX2 one
def test_training_convolution_matches_pytorch(
    channels: int, kernel: tuple[int, ...], size: tuple[int, ...], avx512: bool
) -> None:
    if avx512 and not native.avx512_available():
        pytest.skip("this CPU has no AVX-512F/VL")
    try:
        assert native.set_avx512(avx512) == avx512
        _check_training_convolution(channels, kernel, size)
    finally:
        native.set_avx512()


def _check_training_convolution(channels: int, kernel: tuple[int, ...], size: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(0)
    n, t, h, w = size
    padding = tuple(k // 2 for k in kernel)
    weight = torch.randn(channels, channels // 16, *kernel, generator=g) * 0.2
    x = torch.randn(n, channels, t, h, w, generator=g).contiguous(memory_format=CL3D)
    assert kernels.training_conv_fits(weight, 16, (1, 1, 1), padding)
    x_ref, w_ref = x.clone().requires_grad_(), weight.clone().requires_grad_()
    x_k, w_k = x.clone().requires_grad_(), weight.clone().requires_grad_()
    expected = F.conv3d(x_ref, w_ref, None, 1, padding, 1, 16)
    got = kernels.fiber_conv3d(x_k, w_k, list(padding), 16)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    grad = torch.randn(expected.shape, generator=g)
    expected.backward(grad)
    got.backward(grad)
    torch.testing.assert_close(x_k.grad, x_ref.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(w_k.grad, w_ref.grad, rtol=1e-4, atol=1e-3)


def _on_kernel(conv: torch.nn.Conv3d, x: torch.Tensor) -> bool:
    """Whether the training convolution of ``x`` ran on the native kernel (its gradient is the operator's)."""
    return "fiber_conv3d" in type(conv3d_train(conv, x).grad_fn).__name__


@needs_kernel
def test_prepared_convolutions_use_the_kernel_on_wide_frames_only() -> None:
    conv = torch.nn.Conv3d(96, 96, 3, padding=1, groups=16, bias=False)
    flat = torch.nn.Conv3d(96, 96, (1, 3, 3), padding=(0, 1, 1), groups=16, bias=False)
    wide, mid, narrow = (torch.randn(1, 96, 2, 4, w).contiguous(memory_format=CL3D) for w in (24, 14, 12))
    assert _on_kernel(conv, wide)
    assert _on_kernel(conv, mid)  # 3x3x3: 14 wide is enough
    assert not _on_kernel(conv, narrow)
    assert _on_kernel(flat, wide)
    assert not _on_kernel(flat, mid)  # 1x3x3 needs 24
    assert not kernels.training_conv_fits(torch.empty(96, 1, 3, 3, 3), 96, (1, 1, 1), (1, 1, 1))  # depthwise
    assert not kernels.training_conv_fits(torch.empty(96, 6, 3, 3, 3), 16, (1, 2, 2), (1, 1, 1))  # strided
    conv4 = torch.empty(384, 24, 3, 3, 3)  # 24 channels per group: inference only (training measured up to 12)
    assert kernels.conv_fits(conv4, 16, (1, 1, 1), (1, 1, 1))
    assert not kernels.training_conv_fits(conv4, 16, (1, 1, 1), (1, 1, 1))
    assert kernels.wide_enough(mid) and not kernels.wide_enough(torch.randn(1, 96, 2, 4, 7))  # inference
    flat12 = torch.nn.Conv3d(192, 192, (1, 3, 3), padding=(0, 1, 1), groups=16, bias=False)  # conv3's conv_m2
    mid12 = torch.randn(1, 192, 2, 4, 14).contiguous(memory_format=CL3D)
    try:
        for on in (True, False):  # 12 channels per group, 14 wide: on the kernel where its Winograd tile runs
            native.set_winograd(on)
            assert _on_kernel(flat12, mid12) is (on and native.avx512_on())
    finally:
        native.set_winograd()


@needs_kernel
@pytest.mark.parametrize("padding", [(1, 1, 1), (0, 1, 1), (1, 0, 2)])
def test_packing_writes_the_interior_only(padding) -> None:
    """Buffers are zeroed once and kept (``_kept``, ``_take_buffer``): packing writes exactly the interior."""
    n, c, t, h, w, groups = 2, 96, 3, 5, 7, 16
    pd, ph, pw = padding
    x = torch.randn(n, c, t, h, w).contiguous(memory_format=CL3D)
    row = kernels._row_length(w + 2 * pw)
    buf = torch.full((n, groups, t + 2 * pd, h + 2 * ph, c // groups, row), float("nan"))
    kernels._pack_into(buf, x, padding)
    interior = x.reshape(n, groups, c // groups, t, h, w).permute(0, 1, 3, 4, 2, 5)
    written = ~torch.isnan(buf)
    assert written.sum() == x.numel()
    assert torch.equal(buf[:, :, pd : pd + t, ph : ph + h, :, pw : pw + w], interior)


@needs_kernel
def test_training_buffers_are_pooled_and_a_retained_graph_still_backpropagates() -> None:
    """The training convolution takes its padded buffers from a pool and hands them back when it is done; it saves
    its input (not a pooled buffer), so a second backward through a retained graph after another forward still
    gives the same gradient."""
    kernels.release_buffers()
    g = torch.Generator().manual_seed(3)
    weight = (torch.randn(96, 6, 3, 3, 3, generator=g) * 0.1).requires_grad_()
    x = torch.randn(1, 96, 3, 5, 28, generator=g).contiguous(memory_format=CL3D)
    y = kernels.fiber_conv3d(x, weight, [1, 1, 1], 16)
    y.sum().backward(retain_graph=True)
    first = weight.grad.clone()
    key = kernels._pool_key((1, 96, 3, 5, 28), 16, (1, 1, 1))  # the input's and the gradient's layout
    assert 1 <= len(kernels._buffer_pool[key]) <= kernels._POOL_PER_KEY
    kernels.fiber_conv3d(x * 2, weight, [1, 1, 1], 16)  # takes a pooled buffer and writes x * 2 into it
    weight.grad = None
    y.sum().backward()
    torch.testing.assert_close(weight.grad, first)
    kernels.release_buffers()
    assert not kernels._buffer_pool


@needs_kernel
def test_kept_buffers_follow_the_input_size_not_only_their_shape() -> None:
    """Rows of 28 and 27 positions take buffer rows of the same length: a buffer packed 28 wide holds data where a
    27-wide input needs zero padding, so the kept and pooled buffers are told apart by the input's size."""
    g = torch.Generator().manual_seed(5)
    scale, shift = _bn(96, g)
    w1, b1 = torch.randn(96, 6, 3, 3, 3, generator=g) * 0.2, torch.randn(96, generator=g)
    w2 = torch.randn(96, 6, 1, 3, 3, generator=g) * 0.2
    tail = KernelFiberTail(scale, shift, w1, b1, w2, None, 16)
    assert kernels._row_length(28 + 2) == kernels._row_length(27 + 2)
    for w in (28, 27):
        x = (torch.randn(1, 96, 3, 5, w, generator=g) * 3).contiguous(memory_format=CL3D)
        shortcut = torch.randn(1, 96, 3, 5, w, generator=g)
        expected = _reference(x, shortcut, scale, shift, w1, b1, w2, None, 16, 1)
        torch.testing.assert_close(tail(x, shortcut), expected, rtol=1e-4, atol=1e-4)
        x = x.clone().requires_grad_()
        got = kernels.fiber_conv3d(x, w1, [1, 1, 1], 16)
        torch.testing.assert_close(got, F.conv3d(x, w1, None, 1, 1, 1, 16), rtol=1e-4, atol=1e-4)
        got.sum().backward()  # hands the training buffers back to the pool for the next width


@needs_kernel
def test_a_smaller_batch_reuses_the_kept_buffers() -> None:
    """A smaller batch (the last of a long run) runs on the first samples of the buffers kept for a larger one:
    nothing new is kept, the results stay exact, and a larger batch again replaces them."""
    g = torch.Generator().manual_seed(6)
    scale, shift = _bn(96, g)
    w1, b1 = torch.randn(96, 6, 3, 3, 3, generator=g) * 0.2, torch.randn(96, generator=g)
    w2 = torch.randn(96, 6, 1, 3, 3, generator=g) * 0.2
    tail = KernelFiberTail(scale, shift, w1, b1, w2, None, 16)
    x = (torch.randn(3, 96, 3, 5, 20, generator=g) * 3).contiguous(memory_format=CL3D)
    shortcut = torch.randn(3, 96, 3, 5, 20, generator=g)
    expected = _reference(x, shortcut, scale, shift, w1, b1, w2, None, 16, 1)
    for n, kept_n in ((2, 2), (1, 2), (2, 2), (3, 3), (1, 3)):
        torch.testing.assert_close(tail(x[:n], shortcut[:n]), expected[:n], rtol=1e-4, atol=1e-4)
        (kept,) = tail._buffers_cache.values()  # one entry, as large as the largest batch so far
        assert {buf.shape[0] for buf in kept} == {kept_n}


@needs_kernel
def test_the_units_of_a_model_share_their_kept_buffers() -> None:
    """optimize_for_inference gives all kernel modules of a model one buffer cache: the units of a stage (same
    layout and sizes) use one set, and the model stays exact over batch sizes 2, 1, 2."""
    torch.manual_seed(0)
    model = mfnet.create_model("mfnet3d", num_classes=10).eval()
    x = torch.randn(2, 3, 8, 112, 112)
    fast = optimize_for_inference(model, x)
    users = [m for m in fast.modules() if isinstance(m, (KernelFiberTail, KernelFiberConv))]
    assert len(users) >= 8 and len({id(m._buffers_cache) for m in users}) == 1
    with torch.inference_mode():
        expected = model(x)
        for n in (2, 1, 2):
            got = fast(x[:n])
            assert (got - expected[:n]).abs().max() <= 1e-4 * expected.abs().max()
    assert 0 < len(users[0]._buffers_cache) < len(users)


@needs_kernel
def test_nan_propagates_through_the_tail() -> None:
    """relu(NaN) is NaN in PyTorch: the kernel's BN-ReLU packing and its ReLU after conv_m1 must keep it."""
    g = torch.Generator().manual_seed(0)
    scale, shift = torch.rand(96, generator=g) + 0.5, torch.rand(96, generator=g) - 0.5
    w1, w2 = torch.randn(96, 6, 3, 3, 3, generator=g), torch.randn(96, 6, 1, 3, 3, generator=g)
    tail = KernelFiberTail(scale, shift, w1, None, w2, None, 16)
    x_in = torch.randn(1, 96, 2, 4, 24, generator=g)
    x_in[0, 0, 0, 1, 5] = float("nan")
    got = tail(x_in.contiguous(memory_format=CL3D), torch.zeros(1, 96, 2, 4, 24))
    assert torch.isnan(got[0, :6, :, :3, 3:8]).all()  # the fiber of channel 0, around the NaN
    assert not torch.isnan(got[0, 6:]).any()  # other fibers never see it


@needs_kernel
def test_bn_relu_matches_pytorch() -> None:
    """The eval BN-ReLU pass of the fast path (odd positions count: a partial last block; NaN kept)."""
    x = torch.randn(2, 24, 3, 7, 9)
    x[1, 5, 2, 3, 4] = float("nan")
    x = x.contiguous(memory_format=CL3D)
    scale, shift = torch.rand(24) + 0.5, torch.randn(24)
    assert kernels.bn_relu_runs(x)
    assert not kernels.bn_relu_runs(x.contiguous())
    got = kernels.bn_relu(x, scale, shift)
    expected = torch.relu(x * scale.view(1, -1, 1, 1, 1) + shift.view(1, -1, 1, 1, 1))
    assert got.is_contiguous(memory_format=CL3D)
    torch.testing.assert_close(got, expected, equal_nan=True)


def test_a_failed_build_warns_once_and_the_fast_path_still_runs(monkeypatch, tmp_path, recwarn) -> None:
    """Without a compiler the operators cannot be built: one warning saying why and what to install, then oneDNN."""
    monkeypatch.setenv(native.KERNELS_SWITCH, "1")
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("MFNET_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(native, "_cpu_flags", lambda: {"avx2", "fma"})
    with pytest.warns(RuntimeWarning, match="could not build its native CPU operators.*Install a C\\+\\+ compiler"):
        assert native.load() is False
    assert native.load() is False  # once per process
    assert not [w for w in recwarn if "could not build" in str(w.message)]
    model = mfnet.create_model("mfnet3d", num_classes=3, widths=(96, 96, 96, 96), depths=(1, 1, 1, 1)).eval()
    fast = optimize_for_inference(model, torch.randn(1, 3, 4, 32, 32), check=True)
    assert fast.fastpath_info.kernel_units == 0 and fast.fastpath_info.fused_units == 4
