"""LR schedules by step: warm-up, step, exponential, cosine; optimizer groups with multipliers."""

from __future__ import annotations

import math

import pytest
import torch

from mfnet.engine.optim import build_optimizer
from mfnet.engine.recipes import get_recipe
from mfnet.engine.schedule import LRSchedule
from mfnet.errors import MfnetError
from mfnet.models import create_model


def test_step_schedule_with_warmup() -> None:
    s = LRSchedule(
        base_lr=0.1,
        total_steps=100,
        steps_per_epoch=10,
        kind="step",
        milestones=(3, 6.5),
        gamma=0.1,
        warmup_epochs=0.5,
        warmup_start_factor=0.1,
    )
    assert s.warmup_steps == 5 and s.milestone_steps == (30, 65)
    assert s.lr(0) == pytest.approx(0.01)  # warm-up starts at 0.1 x
    assert s.lr(2) == pytest.approx(0.1 * (0.1 + 0.9 * 2 / 5))
    assert s.lr(5) == pytest.approx(0.1)
    assert s.lr(29) == pytest.approx(0.1)
    assert s.lr(30) == pytest.approx(0.01)
    assert s.lr(64) == pytest.approx(0.01)
    assert s.lr(65) == pytest.approx(0.001)


def test_exp_and_cosine() -> None:
    e = LRSchedule(base_lr=0.5, total_steps=100, steps_per_epoch=20, kind="exp", gamma=0.9)
    assert e.lr(0) == pytest.approx(0.5)
    assert e.lr(20) == pytest.approx(0.45)
    assert e.lr(10) == pytest.approx(0.5 * math.sqrt(0.9))
    c = LRSchedule(base_lr=1.0, total_steps=100, steps_per_epoch=10, kind="cosine")
    assert c.lr(0) == pytest.approx(1.0) and c.lr(50) == pytest.approx(0.5) and c.lr(100) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        LRSchedule(base_lr=1.0, total_steps=1, steps_per_epoch=1, kind="poly")


def test_optimizer_groups_follow_multipliers() -> None:
    recipe = get_recipe("ucf101", {"batch_size": 32})  # LR 0.005 at 128 -> 0.00125
    model = create_model("mfnet2d", num_classes=5, depths=(1, 1, 1, 1), widths=(32, 32, 64, 64))
    opt = build_optimizer(model, recipe)
    names = [g["name"] for g in opt.param_groups]
    assert names == ["backbone", "classifier"]
    assert len(opt.param_groups[1]["params"]) == 2  # classifier weight and bias
    s = LRSchedule(base_lr=recipe.scaled_lr(), total_steps=10, steps_per_epoch=5, kind="step", milestones=(1,))
    s.apply(opt, 0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.00125 * 0.2)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.00125)
    s.apply(opt, 5)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.000125)
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9 and opt.defaults["weight_decay"] == 1e-4
    assert isinstance(opt, torch.optim.SGD)


def test_adamw_option_and_unknown_optimizer() -> None:
    model = create_model("mfnet2d", num_classes=5, depths=(1, 1, 1, 1), widths=(32, 32, 64, 64))
    opt = build_optimizer(model, get_recipe("smoke", {"optimizer": "adamw", "backbone_lr_mult": 0.5}))
    assert isinstance(opt, torch.optim.AdamW) and [g["lr_mult"] for g in opt.param_groups] == [0.5, 1.0]
    with pytest.raises(MfnetError, match="unknown optimizer"):
        build_optimizer(model, get_recipe("smoke", {"optimizer": "lamb"}))


def test_constant_warmup_is_the_authors_half_lr_start() -> None:
    s = LRSchedule(
        base_lr=0.05,
        total_steps=1000,
        steps_per_epoch=100,
        milestones=(5.0,),
        warmup_epochs=1.0,
        warmup_start_factor=0.5,
        warmup_mode="constant",
    )
    assert [s.lr(i) for i in (0, 50, 99)] == pytest.approx([0.025] * 3)
    assert s.lr(100) == pytest.approx(0.05) and s.lr(500) == pytest.approx(0.005)
    with pytest.raises(ValueError, match="unknown warm-up"):
        LRSchedule(base_lr=0.1, total_steps=10, steps_per_epoch=1, warmup_mode="cosine")
    authors = get_recipe("ucf101-authors")
    assert (authors.warmup_mode, authors.warmup_start_factor) == ("constant", 0.5)
    assert get_recipe("kinetics400").warmup_mode == "linear"
    with pytest.raises(MfnetError, match="unknown warmup_mode"):
        get_recipe("smoke", ["warmup_mode=step"])
