"""A tiny UCF-101-style dataset of real H.264 videos shared by the engine tests (the tiny recipe: engine_helpers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mfnet.data.video_writer import write_video
from mfnet.engine.inputs import DataSpec

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
