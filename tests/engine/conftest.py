"""A tiny UCF-101-style dataset of real H.264 videos, and a tiny recipe, shared by the engine tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mfnet.data.video_writer import write_video
from mfnet.engine.inputs import DataSpec
from mfnet.engine.recipes import Recipe, get_recipe

CLASSES = ("Bright", "Dark")
TRAIN_PER_CLASS = 6  # 12 training videos: 3 steps per epoch at batch 4
TEST_PER_CLASS = 2


def _frames(label: int, index: int) -> np.ndarray:
    """``(T, H, W, 3)`` uint8: bright or dark noise with a square that moves right (class 0) or down (class 1)."""
    rng = np.random.default_rng(100 * label + index)
    base = 170 if label == 0 else 70
    frames = np.clip(base + rng.normal(0, 25, (10, 40, 48, 3)), 0, 255).astype(np.uint8)
    for t in range(10):
        y, x = (8, 4 + 3 * t) if label == 0 else (4 + 2 * t, 10)
        frames[t, y : y + 10, x : x + 10] = (255, 40, 40)
    return frames


def make_ucf_like(root: Path) -> Path:
    """Writes ``classInd.txt``, ``trainlist01.txt``, ``testlist01.txt`` and the videos under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(CLASSES)))
    train, test = [], []
    for label, name in enumerate(CLASSES):
        for i in range(TRAIN_PER_CLASS + TEST_PER_CLASS):
            rel = f"{name}/v_{name}_g{i:02d}_c01.mp4"
            write_video(root / rel, _frames(label, i), fps=10)
            (train if i < TRAIN_PER_CLASS else test).append(rel)
            if i < TRAIN_PER_CLASS:
                train[-1] = f"{rel} {label + 1}"
    for split in (1, 2):  # split 2 lists the same videos (enough to exercise the 3-split averaging)
        (root / f"trainlist0{split}.txt").write_text("\n".join(train) + "\n")
        (root / f"testlist0{split}.txt").write_text("\n".join(test) + "\n")
    return root


@pytest.fixture(scope="session")
def ucf_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ucf_like(tmp_path_factory.mktemp("ucf_like"))


@pytest.fixture(scope="session")
def ucf_spec(ucf_root: Path) -> DataSpec:
    return DataSpec(format="ucf101", annotations=ucf_root, root=ucf_root, split=1)


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
    import json

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
