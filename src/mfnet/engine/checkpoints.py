"""Training-state checkpoints: atomic, numbered by step, the last K kept, with every RNG state.

A training checkpoint is the package's model checkpoint (``{"state_dict", "mfnet"}``, written by
``mfnet.models.checkpoint.save_checkpoint`` as a temporary file renamed over the final name) plus the state
needed to continue exactly::

    "optimizer": optimizer.state_dict()        "scaler": GradScaler state (or {})
    "epoch": epoch in progress                 "epoch_step": optimizer steps already done in that epoch
    "step": optimizer steps done in total      "rng": [per-process RNG states] (torch, CUDA, numpy, random)
    "recipe": the recipe as a dict             "kind": "training-state"
    "epoch_sums": the running loss/accuracy sums of the epoch in progress ({"count": clips, "loss": ..., ...})

All values are tensors or plain Python types, so ``torch.load(path, weights_only=True)`` reads them. Files live in
``RUN_DIR/checkpoints/step-000001234.pt``; a SIGKILL at any moment leaves at worst a hidden ``.tmp`` file, never a
half-written checkpoint under a final name; the next save removes such leftovers, and :func:`load_latest` skips
anything it cannot read. A save that fails (a full disk) removes its temporary file, keeps the previous
checkpoints and raises ``CheckpointError``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mfnet.errors import CheckpointError
from mfnet.models.checkpoint import save_checkpoint

logger = logging.getLogger("mfnet")

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step-(\d{9})\.pt$")
_TEMPORARY = re.compile(r"^\.step-\d{9}\.pt\.(.*\.)?tmp$")  # a save's temporary file (see save_checkpoint)


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """``RUN_DIR/checkpoints/step-<step, 9 digits>.pt``."""
    return Path(run_dir) / CHECKPOINT_DIR / f"step-{step:09d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete training checkpoints of a run, oldest first (temporary files are ignored)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))  # type: ignore[union-attr]


def capture_rng() -> dict[str, Any]:
    """Every RNG state of this process as tensors and plain Python values."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "random": _to_lists(random.getstate()),
    }


def restore_rng(state: Mapping[str, Any]) -> None:
    """Puts back the RNG states captured by :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))
    np_state = state["numpy"]
    keys = np_state["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"]))
    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal), gauss))


def _to_lists(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_lists(v) for v in value]
    return value


def save_training_state(
    run_dir: str | Path,
    *,
    model: nn.Module,
    model_name: str,
    model_kwargs: Mapping[str, Any],
    classes: list[str] | None,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    epoch: int,
    epoch_step: int,
    step: int,
    rng: list[dict[str, Any]],
    recipe: Mapping[str, Any],
    keep: int = 3,
    input_spec: Mapping[str, Any] | None = None,
    epoch_sums: Mapping[str, float] | None = None,
) -> Path:
    """Writes ``RUN_DIR/checkpoints/step-<step>.pt`` atomically and deletes all but the newest ``keep`` files.

    Temporary files that a killed save left behind are removed first (only the main process saves).

    Args:
        model: The bare model (not the DDP wrapper).
        rng: One :func:`capture_rng` state per process, in rank order.
        keep: How many checkpoints to keep (at least 1).
        input_spec: The clips the weights expect (``InputSpec.to_dict()``), stored in the ``"mfnet"`` metadata.
        epoch_sums: The running sums of the epoch in progress (``count`` and metric totals), so that a resumed
            run reports the epoch's means over all its steps.

    Raises:
        CheckpointError: The file cannot be written (a full disk, no permission); the older checkpoints remain.
    """
    path = checkpoint_path(run_dir, step)
    remove_stale_temporaries(run_dir)
    extra = {
        "kind": "training-state",
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else {},
        "epoch": int(epoch),
        "epoch_step": int(epoch_step),
        "step": int(step),
        "rng": rng,
        "recipe": dict(recipe),
        "epoch_sums": {k: float(v) for k, v in (epoch_sums or {}).items()},
    }
    try:
        save_checkpoint(
            path,
            model,
            model_name=model_name,
            model_kwargs=model_kwargs,
            classes=classes,
            extra=extra,
            input_spec=input_spec,
        )
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError of its zip writer
        reason = (getattr(err, "strerror", None) or str(err).splitlines()[0] or type(err).__name__).strip()
        raise CheckpointError(
            f"cannot write checkpoint {path} ({reason}): the disk may be full or the folder not writable; free "
            f"space and continue with --resume (the older checkpoints are intact)"
        ) from None
    for old in list_checkpoints(run_dir)[: -max(1, keep)]:
        old.unlink(missing_ok=True)
    return path


def remove_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Deletes the hidden ``.step-*.tmp`` files of saves that never finished (a killed run); returns them."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if _TEMPORARY.match(p.name)]
    for leftover in stale:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(leftover)
    return stale


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Reads a training checkpoint (``weights_only``); a file that is not one raises ``CheckpointError``."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"training checkpoint {path} cannot be read ({type(err).__name__}); delete it") from None
    if not isinstance(state, dict) or state.get("kind") != "training-state":
        raise CheckpointError(f"{path} is not a training checkpoint of `mfnet train` (no optimizer or RNG state)")
    return state


def load_latest(run_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable training checkpoint of a run and its contents, or ``None`` when there is none."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_training_state(path)
        except CheckpointError as err:
            logger.warning("skipping %s", err)
    return None
