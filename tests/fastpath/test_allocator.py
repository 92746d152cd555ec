"""Keeping freed memory: an explicit opt-in that sets glibc's thresholds; nothing in mfnet turns it on."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mfnet.fastpath import allocator

needs_glibc = pytest.mark.skipif(allocator._libc() is None, reason="needs Linux with glibc")


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


@needs_glibc
@pytest.mark.slow
def test_keep_freed_memory_stops_page_faults_between_steps() -> None:
    """A fresh process: after the opt-in, freeing and reallocating 64 MB of small tensors costs no page faults."""
    code = """
import resource, torch
from mfnet.fastpath import allocator
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step():
    xs = [torch.ones(1 << 20) for _ in range(16)]  # 16 x 4 MiB
    del xs
step(); before = faults(); step(); plain = faults() - before
print(allocator.keep_freed_memory(), allocator.freed_memory_kept())
kept = []
for _ in range(3):  # the least of three: other processes' memory pressure can take a few pages back
    step(); before = faults(); step(); kept.append(faults() - before)
print(plain, min(kept))
"""
    flags, counts = _run(code).split("\n")[:2]
    assert flags == "True True"
    plain, kept = map(int, counts.split())
    assert plain > 10_000  # 64 MiB of fresh pages
    assert kept < plain / 2


@pytest.mark.slow
def test_the_fast_path_never_turns_it_on() -> None:
    """Only the user's own call changes the allocator: preparing and optimizing a model leave it alone."""
    code = """
import torch, mfnet
from mfnet.fastpath import allocator
model = mfnet.create_model("mfnet3d", num_classes=3, widths=(96, 96, 96, 96), depths=(1, 1, 1, 1))
mfnet.prepare_for_training(model)
mfnet.optimize_for_inference(model, torch.randn(1, 3, 4, 32, 32))
print(allocator.freed_memory_kept())
"""
    assert _run(code).strip() == "False"
