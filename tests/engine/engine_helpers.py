"""The tiny recipe shared by the engine tests (a uniquely named module: ``conftest`` is taken by two folders)."""

from __future__ import annotations

import json
from typing import Any

from mfnet.engine.recipes import Recipe, get_recipe

TINY: dict[str, Any] = {
    "num_classes": 2,
    "epochs": 2,
    "batch_size": 4,
    "clip_length": 4,
    "frame_interval": 2,
    "crop_size": 32,
    "resize": 32,
    "train_scale": (32, 40),
    "model_kwargs": {"depths": [1, 1, 1, 1], "widths": [32, 32, 64, 64]},
    "drop_rate": 0.5,
    "num_workers": 0,
    "log_every_steps": 1,
    "checkpoint_every_steps": 2,
    "keep_checkpoints": 2,
    "warmup_epochs": 0.5,
    "val_clips": 2,
    "base_lr": 0.05,
}


def tiny_recipe(**overrides: Any) -> Recipe:
    """The ``smoke`` recipe shrunk to a 40k-parameter mfnet3d on 4x32x32 clips."""
    return get_recipe("smoke", {**TINY, **overrides})


def tiny_cli_args(**overrides: Any) -> list[str]:
    """``--set`` arguments of :func:`tiny_recipe`."""
    args = []
    for key, value in {**TINY, **overrides}.items():
        if isinstance(value, dict):
            text = json.dumps(value)
        elif isinstance(value, (tuple, list)):
            text = ",".join(str(v) for v in value)
        else:
            text = str(value)
        args += ["--set", f"{key}={text}"]
    return args
