"""Max pooling over frames on the kernel library, for channels-last clips (``mf_max_pool`` in ``csrc/fiber_conv.c``).

MF-Net's stem is followed by a ``1x3x3`` max pool with stride ``1x2x2``: PyTorch's channels-last CPU kernel took
1.5-2.1 ms for it at 16x224x224 on the 2-core test machine (about as long as a 231 M multiply-add convolution),
``mf_max_pool`` 0.8 ms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mfnet.tools import fiber_kernel


def _triple(v: int | tuple[int, ...]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


def max_pool_supported(pool: nn.Module) -> bool:
    """Whether ``KernelMaxPool`` can stand in for ``pool``: an ``nn.MaxPool3d`` that pools within frames (temporal
    kernel and stride 1, no temporal padding), without dilation, indices or ceil mode."""
    if type(pool) is not nn.MaxPool3d or pool.return_indices or pool.ceil_mode:
        return False
    kernel, stride = _triple(pool.kernel_size), _triple(pool.stride or pool.kernel_size)
    padding, dilation = _triple(pool.padding), _triple(pool.dilation)
    return kernel[0] == 1 and stride[0] == 1 and padding[0] == 0 and dilation == (1, 1, 1)


class KernelMaxPool(nn.Module):
    """``nn.MaxPool3d`` with a ``1 x kh x kw`` kernel on the kernel library: input and output ``(N, C, T, H, W)``
    channels-last-3d, float32, CPU, ``C`` a multiple of 8; anything else runs ``F.max_pool3d``. Same numbers
    (NaN propagates). Not for training."""

    def __init__(self, pool: nn.MaxPool3d) -> None:
        super().__init__()
        if not max_pool_supported(pool):
            raise ValueError(f"{pool} pools across frames or uses options the kernel does not have")
        self.kernel_size = _triple(pool.kernel_size)
        self.stride = _triple(pool.stride or pool.kernel_size)
        self.padding = _triple(pool.padding)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not fiber_kernel.scale_shift_relu_applies(x):  # float32, CPU, channels-last, C % 8 == 0, library loaded
            return F.max_pool3d(x, self.kernel_size, self.stride, self.padding)
        n, c, t, h, w = x.shape
        (_, kh, kw), (_, sh, sw), (_, ph, pw) = self.kernel_size, self.stride, self.padding
        h_out, w_out = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        out = torch.empty((n, c, t, h_out, w_out), memory_format=torch.channels_last_3d)
        sizes = (n, t, h, w, c, kh, kw, sh, sw, ph, pw, h_out, w_out)
        lib = fiber_kernel._library()
        fiber_kernel._parallel(lib.mf_max_pool, (x.data_ptr(), out.data_ptr(), *sizes), n * t * h_out)
        return out

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, fiber_conv.c"
