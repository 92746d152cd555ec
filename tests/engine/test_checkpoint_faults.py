"""Training checkpoints under faults: a full disk during a save, and temporary files left by a killed save."""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from engine_helpers import tiny_cli_args

from mfnet.engine import checkpoints as ckpt
from mfnet.engine.optim import build_optimizer
from mfnet.engine.recipes import get_recipe
from mfnet.models import create_model

# Saves step 1, then step 2 with the process's file size limit at 4 KiB: writes beyond it fail with EFBIG
# (Python ignores SIGXFSZ), as they would on a full disk.
_FULL_DISK = textwrap.dedent(
    """
    import resource, sys
    from mfnet.engine import checkpoints as ckpt
    from mfnet.engine.optim import build_optimizer
    from mfnet.engine.recipes import get_recipe
    from mfnet.errors import CheckpointError
    from mfnet.models import create_model

    model = create_model("mfnet2d", num_classes=3, depths=(1, 1, 1, 1), widths=(16, 16, 32, 32))
    opt = build_optimizer(model, get_recipe("smoke"))
    common = dict(model=model, model_name="mfnet2d", model_kwargs={}, classes=None, optimizer=opt, scaler=None,
                  epoch=0, rng=[ckpt.capture_rng()], recipe={})
    ckpt.save_training_state(sys.argv[1], epoch_step=1, step=1, **common)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
    try:
        ckpt.save_training_state(sys.argv[1], epoch_step=2, step=2, **common)
    except CheckpointError as err:
        print(err)
        sys.exit(3)
    """
)


def test_full_disk_during_a_save_is_one_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK, str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    message = proc.stdout.strip()
    assert "\n" not in message and "cannot write checkpoint" in message and "--resume" in message
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step-000000001.pt"]  # no temporary file left
    assert ckpt.load_training_state(folder / "step-000000001.pt")["step"] == 1  # the previous one is intact


def test_stale_temporary_files_are_removed_by_the_next_save(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    stale = [folder / ".step-000000004.pt.k2j3h1.tmp", folder / ".step-000000006.pt.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    unrelated = folder / "notes.tmp"
    unrelated.write_text("mine")
    model = create_model("mfnet2d", num_classes=3, depths=(1, 1, 1, 1), widths=(16, 16, 32, 32))
    ckpt.save_training_state(
        tmp_path,
        model=model,
        model_name="mfnet2d",
        model_kwargs={},
        classes=None,
        optimizer=build_optimizer(model, get_recipe("smoke")),
        scaler=None,
        epoch=0,
        epoch_step=3,
        step=8,
        rng=[ckpt.capture_rng()],
        recipe={},
        epoch_sums={"count": 12, "loss": 7.5},
    )
    assert sorted(p.name for p in folder.iterdir()) == ["notes.tmp", "step-000000008.pt"]
    state = torch.load(folder / "step-000000008.pt", weights_only=True)
    assert state["epoch_sums"] == {"count": 12.0, "loss": 7.5}


@pytest.mark.slow
def test_full_disk_during_training_is_one_line_and_resumable(tmp_path: Path, ucf_root: Path) -> None:
    """``mfnet train`` with files limited to 64 KiB: the first checkpoint cannot be written."""
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "mfnet", "train", "--recipe", "smoke", "--format", "ucf101",
        "--annotations", str(ucf_root), "--data", str(ucf_root), "--split", "1",
        *tiny_cli_args(checkpoint_every_steps=1), "--out", str(run), "--no-progress", "--no-figures",
    ]  # fmt: skip

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))

    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=limit, timeout=600)
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert proc.returncode == 2, proc.stderr
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "cannot write checkpoint" in errors[0] and "--resume" in errors[0]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
