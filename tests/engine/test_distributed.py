"""A real 2-process gloo DDP run under torchrun matches one process with 2 accumulated micro-batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from engine_helpers import TINY, tiny_cli_args

from mfnet.cli import main
from mfnet.engine.metrics import read_metrics
from mfnet.models import create_model

pytestmark = pytest.mark.slow


def test_torchrun_two_processes_match_single_process(tmp_path, ucf_root) -> None:
    data = ["--recipe", "smoke", "--format", "ucf101", "--annotations", str(ucf_root), "--data", str(ucf_root)]
    torch.manual_seed(0)  # both runs start from these weights, so that what each step changed can be measured
    start = create_model("mfnet3d", num_classes=2, **TINY["model_kwargs"]).state_dict()
    torch.save({"state_dict": start}, tmp_path / "start.pt")
    # dropout would differ per rank
    settings = tiny_cli_args(epochs=1, drop_rate=0.0, checkpoint_every_steps=0, init_weights=str(tmp_path / "start.pt"))
    flags = ["--no-progress", "--no-figures", "--device", "cpu"]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert main(["train", *data, *settings, "--set", "accumulate_steps=2", "--out", str(single), *flags]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "mfnet",
        "train",
        *data,
        *settings,
        "--out",
        str(ddp),
        *flags,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # each global batch of 4 is 2 clips per process under DDP and 2 interleaved micro-batches of 2 in one process:
    # the same clips, the same BN batches, the same averaged gradient
    logs = {name: read_metrics(run / "metrics.jsonl") for name, run in (("single", single), ("ddp", ddp))}
    steps = {name: [r for r in recs if r["kind"] == "train"] for name, recs in logs.items()}
    assert [r["step"] for r in steps["ddp"]] == [1, 2, 3]
    for a, b in zip(steps["single"], steps["ddp"], strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-4 * max(1.0, abs(a["loss"]))
        assert a["top1"] == b["top1"] and a["lr"] == b["lr"]
    wa = torch.load(single / "model.pt", weights_only=True)["state_dict"]
    wb = torch.load(ddp / "model.pt", weights_only=True)["state_dict"]
    keys = [k for k in wa if "running" not in k and wa[k].is_floating_point()]  # BN running stats: per process
    diff = torch.cat([(wa[k] - wb[k]).flatten() for k in keys]).norm()
    update = torch.cat([(wa[k] - start[k]).flatten() for k in keys]).norm()
    # Float sums in another order (all-reduce, 1 vs 2 threads, other CPUs' kernels) differ in the last bits, and
    # BatchNorm's backward over a few values per channel amplifies that over 3 steps. Measured, as a fraction of
    # what the 3 steps changed: 3e-5 to 2e-4 here, with or without our kernels; 8% in the stem alone on one CI
    # machine. Measured real differences: other BN batches 100%, other clips 125%, twice the step 150%.
    worst = sorted(((wa[k] - wb[k]).norm() / (wa[k] - start[k]).norm().clamp_min(1e-12), k) for k in keys)[-3:]
    assert diff < 0.2 * update, (diff.item(), update.item(), [(k, round(r.item(), 4)) for r, k in worst])
    # the distributed validation gathered every process's shard: 4 test videos x 2 clips
    val = [r for r in logs["ddp"] if r["kind"] == "epoch"][-1]
    assert val["val_clips"] == 8 and val["val_videos"] == 4
    assert not (ddp / "checkpoints").exists() or len(list((ddp / "checkpoints").iterdir())) >= 1

    # `mfnet eval` under torchrun: each process scores a shard, rank 0 prints the gathered result once
    args = [
        "eval",
        "--weights",
        str(ddp / "model.pt"),
        "--format",
        "ucf101",
        "--annotations",
        str(ucf_root),
        "--data",
        str(ucf_root),
        "--clips",
        "2",
        "--workers",
        "0",
        "--json",
        "--no-progress",
        "--device",
        "cpu",
    ]
    proc = subprocess.run([*cmd[:6], "-m", "mfnet", *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1 and lines[0]["clips"] == 8 and lines[0]["videos"] == 4
    assert main([*args, "--out", str(tmp_path / "eval1")]) == 0
    alone = json.loads((tmp_path / "eval1" / "metrics.json").read_text())
    assert lines[0]["video_top1"] == alone["video_top1"] and abs(lines[0]["loss"] - alone["loss"]) < 1e-4
