"""The optimizer of a recipe: SGD (or AdamW) with a separate LR multiplier for the backbone and the classifier."""

from __future__ import annotations

import torch
from torch import nn

from mfnet.engine.recipes import Recipe
from mfnet.errors import MfnetError


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Trainable parameters of the backbone and of the classifier (names starting with ``classifier``)."""
    backbone: list[nn.Parameter] = []
    head: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (head if name.removeprefix("module.").startswith("classifier") else backbone).append(param)
    return backbone, head


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov, weight decay of ``recipe``) with two groups carrying ``lr_mult``.

    The group LRs are set by :class:`mfnet.engine.schedule.LRSchedule` before each step; the initial ``lr`` is
    the scaled base LR times the multiplier.
    """
    backbone, head = split_parameters(model)
    lr = recipe.scaled_lr()
    groups = [
        {
            "params": backbone,
            "lr_mult": recipe.backbone_lr_mult,
            "lr": lr * recipe.backbone_lr_mult,
            "name": "backbone",
        },
        {
            "params": head,
            "lr_mult": recipe.classifier_lr_mult,
            "lr": lr * recipe.classifier_lr_mult,
            "name": "classifier",
        },
    ]
    groups = [g for g in groups if g["params"]]
    if recipe.optimizer == "adamw":  # converges faster on short from-scratch runs such as `mfnet demo`
        return torch.optim.AdamW(groups, lr=lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer != "sgd":
        raise MfnetError(f"unknown optimizer {recipe.optimizer!r}: set optimizer=sgd or optimizer=adamw")
    return torch.optim.SGD(
        groups,
        lr=lr,
        momentum=recipe.momentum,
        nesterov=recipe.nesterov and recipe.momentum > 0,
        weight_decay=recipe.weight_decay,
    )
