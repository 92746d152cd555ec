"""A PNG timeline of window predictions over a long video: class probabilities against time."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import torch


def plot_timeline(
    starts_s: Sequence[float],
    ends_s: Sequence[float],
    probs: torch.Tensor,
    classes: Sequence[str],
    path: str | Path,
    *,
    max_classes: int = 5,
    title: str | None = None,
) -> Path:
    """Draws the probability of the leading classes in every window and saves it as a PNG.

    The classes shown are those that rank first in some window, completed (or cut) to ``max_classes`` by
    their highest probability anywhere in the video. Each window is drawn at its centre time; a strip at
    the bottom colours each window by its top-1 class.

    Args:
        starts_s: Start time of each window in seconds, ``(W,)``.
        ends_s: End time of each window in seconds, ``(W,)``.
        probs: Window probabilities, ``(W, K)``.
        classes: The ``K`` class names.
        path: Output ``.png`` file.
        max_classes: Most classes drawn.
        title: Figure title (default: none).

    Returns:
        The path written.
    """

    matplotlib.use("Agg")

    probs = probs.detach().float().cpu()
    centres = [(s + e) / 2 for s, e in zip(starts_s, ends_s, strict=True)]
    top1 = probs.argmax(1).tolist()
    chosen = list(dict.fromkeys(top1))  # classes that win a window, in order of first appearance
    by_peak = probs.max(0).values.argsort(descending=True).tolist()
    chosen = sorted(chosen, key=lambda k: -float(probs[:, k].max()))[:max_classes]
    chosen += [k for k in by_peak if k not in chosen][: max_classes - len(chosen)]
    colours = {k: plt.cm.tab10(i % 10) for i, k in enumerate(chosen)}

    fig, (ax, strip) = plt.subplots(
        2, 1, figsize=(10, 4.2), sharex=True, gridspec_kw={"height_ratios": [6, 1]}, constrained_layout=True
    )
    for k in chosen:
        ax.plot(centres, probs[:, k].numpy(), marker="o", ms=3, color=colours[k], label=classes[k])
    ax.set_ylim(0, 1)
    ax.set_ylabel("probability")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    # Overlapping windows: each one colours the stretch nearer to its centre than to its neighbours'.
    cuts = [(a + b) / 2 for a, b in itertools.pairwise(centres)]
    for i, (start, end, k) in enumerate(zip(starts_s, ends_s, top1, strict=True)):
        left = max(start, cuts[i - 1]) if i > 0 else start
        right = min(end, cuts[i]) if i < len(cuts) else end
        strip.axvspan(left, right, color=colours.get(k, (0.8, 0.8, 0.8, 1.0)), alpha=0.8, lw=0)
    strip.set_yticks([])
    strip.set_ylabel("top-1", rotation=0, ha="right", va="center")
    strip.set_xlabel("time (s)")
    strip.set_xlim(min(starts_s, default=0.0), max(ends_s, default=1.0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
