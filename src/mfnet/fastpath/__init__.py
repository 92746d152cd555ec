"""The fast path: the same numbers as the plain model, in less time (``docs/speed.md``).

Public names: ``optimize_for_inference`` (a faster copy for inference), ``prepare_for_training`` (faster training
steps, in place), ``to_channels_last`` (the input layout both prefer), ``autocast_context`` (mixed precision on
GPUs), ``keep_freed_memory`` (an explicit, process-wide allocator opt-in) and ``kernels_available`` (whether the
native operators are built and loaded). Switches: the environment variables ``MFNET_KERNELS``,
``MFNET_KERNEL_AVX512`` and ``MFNET_KERNEL_WINOGRAD`` (``mfnet.fastpath.native``).

Nothing here changes the process on import or on a call (environment, allocator, thread pools): the native
operators run on PyTorch's own intra-op thread pool.
"""

from __future__ import annotations

from mfnet.fastpath.allocator import keep_freed_memory
from mfnet.fastpath.fused import to_channels_last
from mfnet.fastpath.inference import (
    FastpathInfo,
    autocast_context,
    optimize_for_inference,
    preferred_memory_format,
    prepare_for_training,
    to_layout,
)
from mfnet.fastpath.native import load as kernels_available

__all__ = [
    "FastpathInfo",
    "autocast_context",
    "keep_freed_memory",
    "kernels_available",
    "optimize_for_inference",
    "preferred_memory_format",
    "prepare_for_training",
    "to_channels_last",
    "to_layout",
]
