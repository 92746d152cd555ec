"""Learning-rate schedules by optimizer step: linear warm-up, then step, exponential or cosine decay.

The schedule is a pure function of the step, so resuming only needs the step counter: no scheduler state can
drift. Each optimizer parameter group carries an ``lr_mult`` (the backbone/classifier multipliers) and gets
``lr = base_lr * lr_mult * factor(step)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCHEDULES = ("step", "exp", "cosine", "constant")
WARMUP_MODES = ("linear", "constant")


@dataclass(frozen=True)
class LRSchedule:
    """The LR factor at every step of a run.

    Args:
        base_lr: The peak learning rate (already scaled to the global batch).
        total_steps: Optimizer steps of the whole run.
        steps_per_epoch: Optimizer steps per epoch (converts epoch-valued settings to steps).
        kind: ``step`` (x ``gamma`` at each milestone), ``exp`` (x ``gamma`` per epoch, applied smoothly per
            step), ``cosine`` (half cosine to 0 at ``total_steps``) or ``constant``.
        milestones: Epochs of the step decays.
        gamma: The step factor or the per-epoch exponential factor.
        warmup_epochs: Length of the warm-up.
        warmup_start_factor: LR factor at step 0 when warming up.
        warmup_mode: ``"linear"`` (from ``warmup_start_factor`` to 1) or ``"constant"`` (``warmup_start_factor``
            throughout the warm-up, as the authors' scripts run their first 100 iterations at half the LR).
    """

    base_lr: float
    total_steps: int
    steps_per_epoch: int
    kind: str = "step"
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.1
    warmup_mode: str = "linear"

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.kind!r}; choose one of {', '.join(SCHEDULES)}")
        if self.warmup_mode not in WARMUP_MODES:
            raise ValueError(f"unknown warm-up {self.warmup_mode!r}; choose one of {', '.join(WARMUP_MODES)}")
        if self.steps_per_epoch <= 0:
            raise ValueError("steps_per_epoch must be positive")

    @property
    def warmup_steps(self) -> int:
        """Steps of linear warm-up."""
        return round(self.warmup_epochs * self.steps_per_epoch)

    @property
    def milestone_steps(self) -> tuple[int, ...]:
        """The step decays' milestones in optimizer steps."""
        return tuple(round(m * self.steps_per_epoch) for m in self.milestones)

    def factor(self, step: int) -> float:
        """The multiplier of ``base_lr`` for the update made at ``step`` (0-based)."""
        if self.kind == "step":
            f = self.gamma ** sum(step >= m for m in self.milestone_steps)
        elif self.kind == "exp":
            f = self.gamma ** (step / self.steps_per_epoch)
        elif self.kind == "cosine":
            f = 0.5 * (1.0 + math.cos(math.pi * min(step, self.total_steps) / max(1, self.total_steps)))
        else:
            f = 1.0
        warm = self.warmup_steps
        if step < warm and self.warmup_mode == "constant":
            f *= self.warmup_start_factor
        elif step < warm:
            f *= self.warmup_start_factor + (1.0 - self.warmup_start_factor) * step / warm
        return f

    def lr(self, step: int) -> float:
        """The learning rate (multiplier 1) at ``step``."""
        return self.base_lr * self.factor(step)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Sets every group's ``lr`` for the update at ``step``; returns the LR of multiplier 1."""
        lr = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        return lr
