"""Classification metrics (top-k, confusion matrix, per-class accuracy) and the run's metric log.

The log writes one JSON object per line to ``RUN_DIR/metrics.jsonl`` (``{"kind": "train" | "val" | "epoch",
"step": ..., "epoch": ..., <metrics>}``) and the same scalars to TensorBoard event files in ``RUN_DIR/tb``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def topk_correct(scores: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, int]:
    """How many rows have their target among the ``k`` highest scores, for each ``k``.

    Args:
        scores: Logits or probabilities ``(M, K)``.
        target: Class indices ``(M,)``.
        ks: The ``k`` values; a ``k`` above ``K`` counts every row as correct.
    """
    if scores.numel() == 0:
        return {k: 0 for k in ks}
    kmax = min(max(ks), scores.shape[1])
    top = scores.topk(kmax, dim=1).indices  # (M, kmax), best first
    hits = top.eq(target.view(-1, 1).to(top.device))  # (M, kmax)
    return {k: int(hits[:, : min(k, kmax)].any(dim=1).sum()) for k in ks}


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(K, K)`` int64 counts; row = true class, column = predicted class."""
    index = target.long() * num_classes + pred.long()
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_accuracy(matrix: torch.Tensor) -> torch.Tensor:
    """Accuracy of each true class ``(K,)`` from a confusion matrix; NaN for a class with no sample."""
    totals = matrix.sum(dim=1).double()
    return matrix.diagonal().double() / totals  # 0/0 -> NaN


def mean_class_accuracy(matrix: torch.Tensor) -> float:
    """The mean of the per-class accuracies over the classes that have samples."""
    acc = per_class_accuracy(matrix)
    acc = acc[~torch.isnan(acc)]
    return float(acc.mean()) if acc.numel() else math.nan


class RunningMeans:
    """Sums and counts of a few scalars (loss, top-1, ...) over an epoch, reducible across processes."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def update(self, count: int, **sums: float) -> None:
        """Adds ``count`` samples whose metric totals are ``sums`` (e.g. ``loss=loss*count, top1=hits``)."""
        self.count += count
        for key, value in sums.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)

    def means(self) -> dict[str, float]:
        """Each metric divided by the sample count."""
        return {k: v / max(1, self.count) for k, v in self.sums.items()}


class MetricsLog:
    """Appends metric records to ``metrics.jsonl`` and TensorBoard (on the main process only).

    Args:
        run_dir: The run directory.
        enabled: False on non-main processes: every call is then a no-op.
        tensorboard: Whether to write TensorBoard event files under ``run_dir/tb``.
        resume_step: The step a resumed run continues from: TensorBoard events after it are dropped (they are
            logged again), as :meth:`truncate_after` does for the JSON lines.
    """

    def __init__(
        self, run_dir: str | Path, *, enabled: bool = True, tensorboard: bool = True, resume_step: int = 0
    ) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self._writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = resume_step + 1 if resume_step else None
            self._writer = SummaryWriter(log_dir=str(Path(run_dir) / "tb"), purge_step=purge)

    def truncate_after(self, step: int) -> None:
        """Drops records past ``step`` (after resuming from an earlier checkpoint the run logs them again)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [r for r in read_metrics(self.path) if int(r.get("step", 0)) <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        tmp.replace(self.path)

    def log(self, kind: str, *, step: int, epoch: float, **values: Any) -> None:
        """Writes one record ``{"kind", "step", "epoch", "time", **values}``."""
        if not self.enabled:
            return
        record = {"kind": kind, "step": int(step), "epoch": float(epoch), "time": time.time(), **values}
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self._writer.add_scalar(f"{kind}/{key}", value, global_step=int(step))

    def close(self) -> None:
        """Flushes and closes the TensorBoard writer."""
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (a trailing half-written line is ignored)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
