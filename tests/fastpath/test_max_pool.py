"""The kernel library's max pooling computes what nn.MaxPool3d computes, and the fast path uses it for the stem."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mfnet
from mfnet.fastpath import native, optimize_for_inference
from mfnet.fastpath.max_pool import KernelMaxPool, max_pool_fits

needs_kernel = pytest.mark.skipif(not native.load(), reason="native operators not built here (MFNET_KERNELS=0?)")
CL3D = torch.channels_last_3d


@pytest.mark.kernel
@needs_kernel
@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "size"),
    [
        ((1, 3, 3), (1, 2, 2), (0, 1, 1), (1, 16, 4, 112, 112)),  # mfnet3d's stem pool
        ((1, 3, 3), (1, 2, 2), (0, 1, 1), (2, 8, 3, 9, 7)),  # odd sizes: the last windows are cut by the border
        ((1, 2, 3), (1, 1, 2), (0, 0, 1), (1, 24, 2, 5, 6)),
    ],
)
def test_matches_max_pool3d(kernel, stride, padding, size) -> None:
    pool = nn.MaxPool3d(kernel, stride, padding)
    x = torch.randn(size).contiguous(memory_format=CL3D)
    got = KernelMaxPool(pool)(x)
    assert got.is_contiguous(memory_format=CL3D)
    assert torch.equal(got, pool(x))


@pytest.mark.kernel
@needs_kernel
def test_nan_propagates() -> None:
    pool = nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))
    x = torch.randn(1, 8, 2, 6, 6)
    x[0, 3, 1, 2, 2] = float("nan")
    got = KernelMaxPool(pool)(x.contiguous(memory_format=CL3D))
    assert torch.equal(torch.isnan(got), torch.isnan(pool(x)))
    assert torch.isnan(got).sum() == 1  # the one window over (2, 2) (rows and columns 1-3), channel 3, frame 1


def test_other_inputs_and_pools_fall_back() -> None:
    pool = nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))
    kernel_pool = KernelMaxPool(pool)
    for x in (torch.randn(1, 8, 2, 6, 6), torch.randn(1, 3, 2, 6, 6).contiguous(memory_format=CL3D)):  # NCDHW; C=3
        assert torch.equal(kernel_pool(x), pool(x))
    assert not max_pool_fits(nn.MaxPool3d(3, 2, 1))  # pools across frames
    assert not max_pool_fits(nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1), ceil_mode=True))
    assert not max_pool_fits(nn.MaxPool2d(3, 2, 1))
    with pytest.raises(ValueError, match="frames"):
        KernelMaxPool(nn.MaxPool3d(3, 2, 1))


@pytest.mark.kernel
@needs_kernel
def test_fast_path_pools_on_the_kernel() -> None:
    model = mfnet.create_model("mfnet3d", num_classes=5, widths=(96, 96, 96, 96), depths=(1, 1, 1, 1)).eval()
    fast = optimize_for_inference(model, torch.randn(1, 3, 4, 64, 64), check=True)
    assert isinstance(fast.maxpool, KernelMaxPool)
