"""``mfnet.tools.bench.worker``: a benchmark candidate stepped in its own process, and its failures."""

from __future__ import annotations

import os

import pytest

from mfnet.errors import MfnetError
from mfnet.models.macs import count_macs
from mfnet.tools.bench import Candidate
from mfnet.tools.bench.worker import CandidateProcess

pytestmark = pytest.mark.slow

SETTINGS = {"mode": "infer", "batch": 1, "threads": 1, "num_classes": 400, "seed": 0, "warmup": 1}


def test_worker_reports_the_candidate_and_times_its_steps():
    with CandidateProcess(Candidate("mfnet3d", (2, 32, 32), "plain"), **SETTINGS) as worker:
        assert worker._proc.pid != os.getpid()
        assert worker.params == 7_996_368
        from mfnet.tools.bench import build_benchmark_model

        assert worker.macs_per_clip == count_macs(build_benchmark_model("mfnet3d"), (1, 3, 2, 32, 32))
        assert worker.state_bytes > worker.params * 4 and worker.setup_s >= 0
        times = [worker.step() for _ in range(2)]
    assert all(wall > 0 and cpu > 0 for wall, cpu in times)
    assert worker._proc.returncode == 0  # closing its input ended it


def test_worker_errors_are_one_line():
    settings = SETTINGS | {"mode": "train"}  # BatchNorm cannot train on one value per channel
    with pytest.raises(MfnetError, match=r"mfnet3d@1x16x16\[plain\] cannot run on batch 1 \(Expected more") as err:
        CandidateProcess(Candidate("mfnet3d", (1, 16, 16), "plain"), **settings)
    assert "\n" not in str(err.value)


def test_a_worker_that_died_is_reported():
    worker = CandidateProcess(Candidate("mfnet3d", (2, 32, 32), "plain"), **SETTINGS)
    worker._proc.kill()
    worker._proc.wait()
    with pytest.raises(MfnetError, match="mfnet3d@2x32x32\\[plain\\]: the benchmark worker stopped"):
        worker.step()
    worker.close()
