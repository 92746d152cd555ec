"""Max pooling within frames on the native operators, for channels-last clips (``mfnet::max_pool``).

MF-Net's stem is followed by a ``1x3x3`` max pool with stride ``1x2x2``, which PyTorch's channels-last CPU kernel
runs about as long as a whole convolution; ``mfnet::max_pool`` makes one pass over the input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mfnet.fastpath import kernels
from mfnet.models.layers import as_tuple


def max_pool_fits(pool: nn.Module) -> bool:
    """Whether ``KernelMaxPool`` can stand in for ``pool``: an ``nn.MaxPool3d`` that pools within frames (temporal
    kernel and stride 1, no temporal padding), without dilation, indices or ceil mode."""
    if type(pool) is not nn.MaxPool3d or pool.return_indices or pool.ceil_mode:
        return False
    kernel, stride = as_tuple(pool.kernel_size, 3), as_tuple(pool.stride or pool.kernel_size, 3)
    padding, dilation = as_tuple(pool.padding, 3), as_tuple(pool.dilation, 3)
    return kernel[0] == 1 and stride[0] == 1 and padding[0] == 0 and dilation == (1, 1, 1)


class KernelMaxPool(nn.Module):
    """``nn.MaxPool3d`` with a ``1 x kh x kw`` kernel on the kernel library: input and output ``(N, C, T, H, W)``
    channels-last-3d, float32, CPU, ``C`` a multiple of 8; anything else runs ``F.max_pool3d``. Same numbers
    (NaN propagates). Not for training."""

    def __init__(self, pool: nn.MaxPool3d) -> None:
        super().__init__()
        if not max_pool_fits(pool):
            raise ValueError(f"{pool} pools across frames or uses options the kernel does not have")
        self.kernel_size = as_tuple(pool.kernel_size, 3)
        self.stride = as_tuple(pool.stride or pool.kernel_size, 3)
        self.padding = as_tuple(pool.padding, 3)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not kernels.bn_relu_runs(x):  # the same conditions: float32, CPU, channels-last, C % 8 == 0, loaded
            return F.max_pool3d(x, self.kernel_size, self.stride, self.padding)
        n, c, t, h, w = x.shape
        (_, kh, kw), (_, sh, sw), (_, ph, pw) = self.kernel_size, self.stride, self.padding
        h_out, w_out = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        out = torch.empty((n, c, t, h_out, w_out), memory_format=torch.channels_last_3d)
        torch.ops.mfnet.max_pool(x, out, [kh, kw], [sh, sw], [ph, pw])
        return out

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, mfnet::max_pool"
