"""``import mfnet`` and the fast path leave the process as they found it: environment, allocator, thread pools."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CODE = """
import os, sys, threading
import torch
torch.set_num_threads(2)
torch.randn(1 << 20).exp().sum()  # PyTorch's own pool is up
env = dict(os.environ)
def threads():
    return len(os.listdir("/proc/self/task")), threading.active_count()
before = threads()
import mfnet
from mfnet.fastpath import allocator, native
model = mfnet.create_model("mfnet3d", num_classes=3, widths=(96, 96, 96, 96), depths=(2, 1, 1, 1))
x = torch.randn(1, 3, 4, 48, 48)
fast = mfnet.optimize_for_inference(model.eval(), x)
with torch.no_grad():
    fast(x)
mfnet.prepare_for_training(model.train())
model(x.contiguous(memory_format=torch.channels_last_3d)).sum().backward()
assert dict(os.environ) == env, set(os.environ.items()) ^ set(env.items())
assert threads() == before, (threads(), before)
assert not allocator.freed_memory_kept()
assert torch.get_num_threads() == 2
print("ok", native.load())
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc")
def test_import_and_fast_path_change_nothing_in_the_process() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    out = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok")


def test_import_mfnet_sets_no_environment_variable() -> None:
    code = "import os; env = dict(os.environ); import mfnet; print(dict(os.environ) == env)"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
