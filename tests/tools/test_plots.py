"""Each figure is produced, is a real PNG of a sensible size and is not blank."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import torch

from mfnet.tools import plots


def _check_png(path, min_w: int = 200, min_h: int = 150) -> None:
    assert path.exists() and path.stat().st_size > 2000
    img = mpimg.imread(path)
    assert img.shape[0] >= min_h and img.shape[1] >= min_w
    assert img[..., :3].std() > 0.02  # not a blank canvas


def test_curves(tmp_path) -> None:
    records = [
        {"kind": "train", "step": s, "epoch": s / 10, "loss": 2.0 / (1 + s), "top1": s / 30} for s in range(1, 30)
    ]
    records += [
        {
            "kind": "epoch",
            "step": 10 * e,
            "epoch": e,
            "train_loss": 1 / e,
            "train_top1": 0.3 * e,
            "val_loss": 1.2 / e,
            "val_clip_top1": 0.25 * e,
            "val_video_top1": 0.3 * e,
        }
        for e in (1, 2, 3)
    ]
    _check_png(plots.plot_curves(records, tmp_path / "curves.png", title="run"))


def test_filters_3d_and_2d(tmp_path) -> None:
    before = torch.randn(16, 3, 3, 5, 5)
    after = before + 0.5 * torch.randn(16, 3, 3, 5, 5)
    _check_png(plots.plot_filters(before, after, tmp_path / "f3.png"), min_w=150)
    _check_png(plots.plot_filters(None, torch.randn(16, 3, 5, 5), tmp_path / "f2.png"), min_w=80)
    tiles = plots._filter_tiles(after)
    assert tiles.shape == (16, 3, 5, 5, 3) and tiles.min() >= 0 and tiles.max() <= 1


def test_per_class_and_confusion(tmp_path) -> None:
    acc = [0.9, None, 0.1, 0.5, 1.0]
    _check_png(plots.plot_per_class(acc, ["a", "b", "c", "d", "e"], tmp_path / "pc.png"))
    _check_png(plots.plot_per_class(list(np.linspace(0, 1, 101)), None, tmp_path / "pc101.png"))
    cm = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    _check_png(plots.plot_confusion(cm, ["a", "b", "c"], tmp_path / "cm.png"))


def test_samples(tmp_path) -> None:
    rng = np.random.default_rng(0)
    samples = [
        {
            "frames": rng.integers(0, 255, (6, 40, 60, 3), dtype=np.uint8),
            "title": f"video {i}",
            "label": "b",
            "top": [{"name": n, "prob": p} for n, p in zip("bacde", (0.5, 0.2, 0.1, 0.1, 0.05), strict=True)],
        }
        for i in range(3)
    ]
    _check_png(plots.plot_samples(samples, tmp_path / "s.png"))
