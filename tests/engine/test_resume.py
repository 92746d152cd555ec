"""Exact resume: interrupted (or SIGKILLed) and resumed runs end with bit-identical weights."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from engine_helpers import tiny_cli_args, tiny_recipe

from mfnet.cli import main
from mfnet.engine import checkpoints as ckpt
from mfnet.engine.metrics import read_metrics
from mfnet.engine.train import train


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, ucf_spec) -> Path:
    run = tmp_path_factory.mktemp("uninterrupted")
    result = train(tiny_recipe(), out_dir=run, data=ucf_spec, progress=False)
    assert result.finished and result.steps == 6
    return run


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "model.pt", weights_only=True)["state_dict"]


def _assert_identical(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    losses = [
        [(r["step"], r["loss"]) for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"] for run in (a, b)
    ]
    assert losses[0] == losses[1]


def test_interrupt_mid_epoch_and_resume(tmp_path, ucf_spec, uninterrupted) -> None:
    first = train(tiny_recipe(), out_dir=tmp_path, data=ucf_spec, max_steps=4, progress=False)
    assert not first.finished and first.steps == 4 and first.model_path is None
    state = ckpt.load_training_state(first.checkpoint)
    assert (state["epoch"], state["epoch_step"], state["step"]) == (1, 1, 4)  # inside the second epoch
    assert state["optimizer"]["state"] and len(state["rng"]) == 1
    with pytest.raises(Exception, match="already holds a run"):
        train(tiny_recipe(), out_dir=tmp_path, data=ucf_spec, progress=False)
    second = train(tiny_recipe(), out_dir=tmp_path, data=ucf_spec, resume=True, progress=False)
    assert second.finished and second.steps == 6 and second.epochs_done == 2
    _assert_identical(uninterrupted, tmp_path)
    # The interrupted epoch's train_loss covers all its steps, before and after the resume.
    epochs = [
        [
            (r["epoch"], r["train_loss"], r["train_top1"])
            for r in read_metrics(run / "metrics.jsonl")
            if r["kind"] == "epoch"
        ]
        for run in (uninterrupted, tmp_path)
    ]
    assert epochs[0] == epochs[1] and len(epochs[0]) == 2


@pytest.mark.slow
def test_sigkill_then_resume(tmp_path, ucf_root, uninterrupted) -> None:
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "mfnet", "train", "--recipe", "smoke", "--format", "ucf101",
        "--annotations", str(ucf_root), "--data", str(ucf_root), "--split", "1",
        *tiny_cli_args(checkpoint_every_steps=1), "--out", str(run), "--no-progress", "--no-figures",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = run / "checkpoints"
    deadline = time.monotonic() + 240
    try:
        # kill while a checkpoint is being written if we catch one, else once step 3 is saved
        while time.monotonic() < deadline and proc.poll() is None:
            names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
            steps = [int(n[5:14]) for n in names if n.startswith("step-") and n.endswith(".pt")]
            if (steps and any(n.endswith(".tmp") for n in names)) or max(steps, default=0) >= 3:
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (run / "model.pt").exists()
    done = ckpt.list_checkpoints(run)
    assert done and all(ckpt.load_training_state(p)["step"] < 6 for p in done)
    assert main(["train", "--resume", str(run), "--no-progress", "--no-figures"]) == 0
    _assert_identical(uninterrupted, run)
