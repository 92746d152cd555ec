"""An explicit opt-in: keeping freed memory for the next step instead of handing it back to the system (glibc).

A forward pass of MF-Net allocates and frees activations of a few MB to a few tens of MB. With glibc's default
settings much of that memory goes back to the kernel when it is freed and comes back as fresh pages at the next
step, each page faulted in and zeroed. ``keep_freed_memory()`` raises glibc's trim threshold, fixes its mmap
threshold and turns its direct mmap() off, so that the allocator reuses that memory instead (what a caching
allocator does on a GPU).

The setting is process-wide and the process does not shrink until it exits: its resident memory grows to the
high-water mark of the work, so a long ``predict`` run holds more memory. Nothing in mfnet calls it; call it
yourself at the start of a training or benchmark process if you want it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30  # keep up to 1 GiB of freed memory at the top of the heap
MMAP_THRESHOLD = 32 << 20  # the largest value glibc accepts on 64-bit machines; larger blocks are mmap()ed

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

    Process-wide and idempotent. Does nothing (returns False) off Linux/glibc.
    """
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
