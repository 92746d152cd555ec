"""Keeping freed memory for the next step instead of handing it back to the operating system (glibc only).

A forward pass of MF-Net allocates and frees activations of a few MB to a few tens of MB. With glibc's default
settings much of that memory goes back to the kernel when it is freed and comes back as fresh pages at the next
step, each page faulted in and zeroed by the kernel: on the 2-core test machine that is 18k page faults and
~10% of an inference step at 16x224x224, and 64k page faults (0.19 s of system time) per training step at batch
8. Raising glibc's trim threshold and fixing its mmap threshold at the largest value glibc accepts lets the
allocator reuse the memory instead (what a caching allocator does on a GPU), and turning glibc's direct mmap()
off makes blocks above its 32 MiB mmap threshold (a batch of activations, the fiber kernel's buffers) come from
the reusable heap as well: RSS stays at the step's high-water mark, and the process does not shrink until it
exits.

The setting is process-wide. ``optimize_for_inference`` and ``prepare_for_training`` apply it on CPU; set the
environment variable ``MFNET_KEEP_FREED_MEMORY=0`` to leave glibc's defaults alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30  # keep up to 1 GiB of freed memory at the top of the heap
MMAP_THRESHOLD = 32 << 20  # the largest value glibc accepts on 64-bit machines; larger blocks are mmap()ed
ENV_VAR = "MFNET_KEEP_FREED_MEMORY"

_state = {"kept": False}


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None


def keep_freed_memory() -> bool:
    """Makes glibc keep freed memory for reuse (see the module docstring); returns whether it is now in effect.

    Idempotent. Does nothing (returns False) off Linux/glibc or when ``MFNET_KEEP_FREED_MEMORY=0``.
    """
    if os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "no", "off"):
        return _state["kept"]
    if _state["kept"]:
        return True
    libc = _libc()
    if libc is None:
        return False
    ok = (
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        and libc.mallopt(M_MMAP_MAX, 0) == 1  # blocks above the mmap threshold come from the heap too
    )
    _state["kept"] = ok
    return ok


def freed_memory_kept() -> bool:
    """Whether ``keep_freed_memory`` is in effect in this process."""
    return _state["kept"]
