"""Keeping freed memory: glibc's thresholds are set once, can be turned off, and measurements can undo them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mfnet.tools import allocator

needs_glibc = pytest.mark.skipif(allocator._libc() is None, reason="needs Linux with glibc")


def _run(code: str, env_value: str | None) -> str:
    import os

    env = dict(os.environ)
    env.pop(allocator.ENV_VAR, None)
    if env_value is not None:
        env[allocator.ENV_VAR] = env_value
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


@needs_glibc
def test_keep_freed_memory_stops_page_faults_between_steps() -> None:
    """A fresh process: after the setting, freeing and reallocating 64 MB of small tensors costs no page faults."""
    code = """
import resource, torch
from mfnet.tools import allocator
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
    flags, counts = _run(code, None).split("\n")[:2]
    assert flags == "True True"
    plain, kept = map(int, counts.split())
    assert plain > 10_000  # 64 MiB of fresh pages
    assert kept < plain / 2


@needs_glibc
def test_environment_variable_turns_it_off() -> None:
    code = "from mfnet.tools import allocator; print(allocator.keep_freed_memory(), allocator.freed_memory_kept())"
    assert _run(code, "0").strip() == "False False"
    assert _run(code, "1").strip() == "True True"


def test_fast_path_turns_it_on() -> None:
    code = """
import torch, mfnet
from mfnet.tools import allocator
from mfnet.tools.fastpath import prepare_for_training
prepare_for_training(mfnet.create_model("mfnet3d", num_classes=3))
print(allocator.freed_memory_kept())
"""
    assert _run(code, None).strip() == str(allocator._libc() is not None)
