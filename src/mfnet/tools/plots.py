"""Figures of a training run (matplotlib, Agg backend, PNG), after the paper's figures.

* :func:`plot_curves`: training/validation loss and accuracy against epochs (paper Fig. 4a).
* :func:`plot_filters`: the first convolution's spatio-temporal filters before and after training (Fig. 5).
* :func:`plot_per_class`: per-class accuracy sorted descending with the best and worst classes named (Fig. 7).
* :func:`plot_confusion`: the row-normalised confusion matrix.
* :func:`plot_samples`: top-5 predictions on sample videos next to a strip of their frames (Fig. 8).
* :func:`plot_accuracy_vs_gflops`: top-1 accuracy against multiply-adds, circle area = parameters (Figs. 4b, 6).

Each function takes plain data (records, tensors, lists) and writes one PNG; ``mfnet.tools.report`` gathers the
data of a run directory and calls them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

_DPI = 110


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_curves(records: Sequence[dict[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Loss and top-1 accuracy against epochs from ``metrics.jsonl`` records.

    ``"train"`` records (logged every few steps) are drawn thin, ``"epoch"`` records give the per-epoch training
    means and the validation clip/video accuracy as markers.
    """
    steps = [r for r in records if r.get("kind") == "train"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    if steps:
        x = [r["epoch"] for r in steps]
        ax_loss.plot(x, [r["loss"] for r in steps], color="tab:blue", alpha=0.35, lw=1, label="train (steps)")
        ax_acc.plot(x, [100 * r["top1"] for r in steps], color="tab:blue", alpha=0.35, lw=1, label="train (steps)")
    series = [
        ("train_loss", ax_loss, "tab:blue", "train", 1),
        ("val_loss", ax_loss, "tab:red", "val (clip)", 1),
        ("train_top1", ax_acc, "tab:blue", "train", 100),
        ("val_clip_top1", ax_acc, "tab:orange", "val clip top-1", 100),  # drawn dashed below
        ("val_video_top1", ax_acc, "tab:red", "val video top-1", 100),
    ]
    for key, ax, color, label, scale in series:
        pts = [(r["epoch"], scale * r[key]) for r in epochs if isinstance(r.get(key), (int, float))]
        if pts:
            style = "--" if key == "val_clip_top1" else "-"
            ax.plot(*zip(*pts, strict=True), style, marker="o", color=color, lw=2, label=label)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="accuracy", ylim=(0, 102))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _filter_tiles(weight: torch.Tensor) -> np.ndarray:
    """``(O, 3, T, kH, kW)`` or ``(O, 3, kH, kW)`` -> ``(O, T, kH, kW, 3)`` in [0, 1], each filter scaled alone."""
    w = weight.detach().float().cpu()
    if w.ndim == 4:
        w = w.unsqueeze(2)  # (O, C, 1, kH, kW)
    w = w.permute(0, 2, 3, 4, 1)  # (O, C, T, kH, kW) -> (O, T, kH, kW, C)
    if w.shape[-1] != 3:
        w = w.mean(-1, keepdim=True).expand(*w.shape[:-1], 3)
    flat = w.reshape(w.shape[0], -1)
    lo, hi = flat.min(1).values, flat.max(1).values
    w = (w - lo.view(-1, 1, 1, 1, 1)) / (hi - lo).clamp_min(1e-12).view(-1, 1, 1, 1, 1)
    return w.numpy()


def _mosaic(tiles: np.ndarray, *, per_row: int = 4, pad: int = 1, gap: int = 3) -> np.ndarray:
    """``(O, T, kH, kW, 3)`` -> one image: ``per_row`` filters side by side, each its ``T`` frames left to right."""
    o, t, kh, kw, _ = tiles.shape
    per_row = min(per_row, o)
    rows = -(-o // per_row)
    block_w = t * (kw + pad) - pad  # one filter: its frames in a row
    out = np.ones((rows * (kh + gap) + gap, per_row * (block_w + gap) + gap, 3))
    for i in range(o):
        r, c = divmod(i, per_row)
        for j in range(t):
            y, x = gap + r * (kh + gap), gap + c * (block_w + gap) + j * (kw + pad)
            out[y : y + kh, x : x + kw] = tiles[i, j]
    return out


def plot_filters(before: torch.Tensor | None, after: torch.Tensor, path: str | Path) -> Path:
    """First-layer filters before and after training, one row per filter and one column per time step.

    Args:
        before: The initial weight (or ``None`` to draw only ``after``).
        after: The trained weight, ``(O, 3, T, kH, kW)`` (3D) or ``(O, 3, kH, kW)`` (2D).
    """
    panels = [("before training", before), ("after training", after)] if before is not None else [("trained", after)]
    t = after.shape[2] if after.ndim == 5 else 1
    per_row = 4 if t > 1 else 8
    mosaics = [(name, _mosaic(_filter_tiles(weight), per_row=per_row)) for name, weight in panels]
    height, width = mosaics[0][1].shape[:2]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 7 * height / width * len(panels) + 0.8))
    axes = np.atleast_1d(axes)
    for ax, (name, mosaic) in zip(axes, mosaics, strict=True):
        ax.imshow(mosaic, interpolation="nearest")
        ax.set_title(f"conv1 {name}: {after.shape[0]} filters, each {t} frame(s) left to right", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, path)


def plot_per_class(
    accuracy: Sequence[float], classes: Sequence[str] | None, path: str | Path, *, named: int = 5
) -> Path:
    """Per-class accuracy sorted descending; the ``named`` best and worst classes are written on the figure."""
    acc = np.asarray([np.nan if a is None else a for a in accuracy], dtype=float)
    names = list(classes) if classes else [str(i) for i in range(len(acc))]
    valid = np.flatnonzero(~np.isnan(acc))
    order = valid[np.argsort(-acc[valid], kind="stable")]
    k = len(order)
    fig, ax = plt.subplots(figsize=(max(6.0, min(16.0, 0.25 * k + 4)), 4.2))
    ax.bar(np.arange(k), 100 * acc[order], width=1.0 if k > 40 else 0.8, color="tab:blue")
    ax.set(xlim=(-0.6, k - 0.4), ylim=(0, 105), ylabel="accuracy (%)", title=f"per-class accuracy ({k} classes)")
    if k <= 40:
        ax.set_xticks(np.arange(k), [names[i] for i in order], rotation=70, ha="right", fontsize=7)
    else:
        ax.set_xticks([])
        ax.set_xlabel("classes, sorted by accuracy")
    best = ", ".join(f"{names[i]} ({100 * acc[i]:.0f}%)" for i in order[:named])
    worst = ", ".join(f"{names[i]} ({100 * acc[i]:.0f}%)" for i in order[::-1][:named])
    ax.text(
        0.99,
        0.97,
        f"best: {best}\nworst: {worst}",
        transform=ax.transAxes,
        ha="right",
        va="top",
        fontsize=7,
        bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.7"},
    )
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_confusion(matrix: torch.Tensor | np.ndarray, classes: Sequence[str] | None, path: str | Path) -> Path:
    """The confusion matrix normalised per true class (rows), class names on the axes when there are few."""
    m = np.asarray(matrix, dtype=float)
    rows = m.sum(1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    k = m.shape[0]
    size = min(12.0, max(4.5, 0.35 * k + 2))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set(xlabel="predicted class", ylabel="true class", title="confusion matrix (video level)")
    if k <= 30:
        names = list(classes) if classes else [str(i) for i in range(k)]
        ax.set_xticks(np.arange(k), names, rotation=70, ha="right", fontsize=7)
        ax.set_yticks(np.arange(k), names, fontsize=7)
        if k <= 12:
            for i in range(k):
                for j in range(k):
                    if m[i, j]:
                        color = "white" if norm[i, j] > 0.5 else "black"
                        ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7, color=color)
    return _save(fig, path)


def plot_samples(samples: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Top-5 predictions of sample videos, each beside a strip of its frames (paper Fig. 8).

    Args:
        samples: One dict per video: ``"frames"`` uint8 ``(F, H, W, 3)``, ``"title"`` (the video's name and true
            class), ``"label"`` (true class name) and ``"top"`` (list of ``{"name", "prob"}``, best first).
    """
    n = max(1, len(samples))
    fig = plt.figure(figsize=(12, 1.9 * n))
    grid = fig.add_gridspec(n, 2, width_ratios=(3, 1.3), wspace=0.05, hspace=0.45)
    for row, sample in enumerate(samples):
        ax_img = fig.add_subplot(grid[row, 0])
        frames = np.asarray(sample["frames"])
        strip = np.concatenate(list(frames), axis=1) if len(frames) else np.zeros((8, 8, 3), np.uint8)
        ax_img.imshow(strip)
        ax_img.set_xticks([])
        ax_img.set_yticks([])
        ax_img.set_title(sample.get("title", ""), fontsize=8, loc="left")
        ax_bar = fig.add_subplot(grid[row, 1])
        top = list(sample["top"])[::-1]
        colors = ["tab:green" if t["name"] == sample.get("label") else "tab:gray" for t in top]
        ax_bar.barh(np.arange(len(top)), [100 * t["prob"] for t in top], color=colors)
        ax_bar.set_yticks(np.arange(len(top)), [t["name"] for t in top], fontsize=7)
        ax_bar.yaxis.tick_right()
        ax_bar.set_xlim(0, 100)
        ax_bar.tick_params(axis="x", labelsize=7)
        if row == n - 1:
            ax_bar.set_xlabel("probability (%)", fontsize=8)
    return _save(fig, path)


def plot_accuracy_vs_gflops(rows: Sequence[Any], path: str | Path, *, title: str = "") -> Path:
    """Top-1 accuracy against GFLOPs (multiply-adds, log scale), one panel per dataset; circle area = parameters.

    Args:
        rows: ``mfnet.tools.results.ResultRow``-like records (``dataset``, ``model``, ``params_m``, ``gflops``,
            ``top1``, ``published``). The paper's rows are drawn in blue, the others (the user's runs) in orange.
        path: The PNG to write.
        title: A title over the panels.
    """
    datasets = list(dict.fromkeys(r.dataset for r in rows)) or ["(no results)"]
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.2 * len(datasets), 4.2), squeeze=False)
    largest = max((r.params_m for r in rows), default=1.0) or 1.0
    for ax, dataset in zip(axes[0], datasets, strict=True):
        subset = [r for r in rows if r.dataset == dataset]
        for row in subset:
            color = "tab:blue" if row.published else "tab:orange"
            area = 1600 * row.params_m / largest  # points^2, proportional to the parameters
            ax.scatter(row.gflops, row.top1, s=area, color=color, alpha=0.45, edgecolors=color, linewidths=1.2)
            ax.annotate(
                f"{row.model}\n{row.params_m:.1f}M",
                (row.gflops, row.top1),
                fontsize=7,
                ha="center",
                va="bottom",
                xytext=(0, math.sqrt(area) / 2 + 2),  # above the circle (its radius in points)
                textcoords="offset points",
            )
        if subset:
            ax.set_xscale("log")
            xs = [r.gflops for r in subset]
            ys = [r.top1 for r in subset]
            ax.set_xlim(min(xs) / 2, max(xs) * 2)
            ax.set_ylim(min(ys) - 4, max(ys) + 4)
        ax.set_title(dataset, fontsize=10)
        ax.set_xlabel("GFLOPs (multiply-adds, log scale)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(alpha=0.3)
    handles = [
        plt.Line2D([], [], marker="o", ls="", color="tab:blue", alpha=0.5, label="paper"),
        plt.Line2D([], [], marker="o", ls="", color="tab:orange", alpha=0.5, label="this run / yours"),
    ]
    axes[0][-1].legend(
        handles=handles, fontsize=8, loc="lower right", title="circle area = parameters", title_fontsize=7
    )
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def finite_or_none(value: float) -> float | None:
    """``value``, or ``None`` for NaN/inf (JSON has no NaN)."""
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None
