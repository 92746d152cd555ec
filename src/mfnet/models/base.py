"""The interface every mfnet classifier shares (after timm's models)."""

from __future__ import annotations

import torch
from torch import nn


class ClassifierBase(nn.Module):
    """A backbone, a global-average-pool head and a linear classifier.

    Subclasses build ``self.classifier`` (an ``nn.Linear``, or ``nn.Identity`` with no classes), set
    ``self.num_features`` and implement ``forward_features``.

    Layouts: video models (``input_ndim == 5``) take clips ``(N, C, T, H, W)``. Image models
    (``input_ndim == 4``) take ``(N, C, H, W)`` and also clips ``(N, C, T, H, W)``, which they classify
    frame by frame and average the logits over ``T`` (the paper's frame-based 2D baseline).
    """

    input_ndim: int = 5
    num_classes: int
    num_features: int
    classifier: nn.Module
    drop: nn.Dropout

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Maps the input to the last feature map, ``(N, C, T', H', W')`` or ``(N, C, H', W')``."""
        raise NotImplementedError  # every subclass defines it

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global-average-pools a feature map to ``(N, C)``; returns those features or the logits ``(N, K)``."""
        x = x.flatten(2).mean(-1)  # (N, C, ...) -> (N, C): the same as any fixed pooling over the whole map
        x = self.drop(x)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns logits ``(N, num_classes)``."""
        if self.input_ndim == 4 and x.ndim == 5:
            n, c, t, h, w = x.shape
            frames = x.transpose(1, 2).reshape(n * t, c, h, w)  # (N, C, T, H, W) -> (N*T, C, H, W)
            logits = self.forward_head(self.forward_features(frames))
            return logits.view(n, t, -1).mean(1)  # (N*T, K) -> (N, K)
        if x.ndim != self.input_ndim:
            raise ValueError(f"{type(self).__name__} takes {self.input_ndim}-D input, got shape {tuple(x.shape)}")
        return self.forward_head(self.forward_features(x))

    def clip_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled embeddings ``(N, C)`` of clips or images (frame features averaged for image models)."""
        if self.input_ndim == 4 and x.ndim == 5:
            n, c, t, h, w = x.shape
            frames = x.transpose(1, 2).reshape(n * t, c, h, w)
            return self.forward_head(self.forward_features(frames), pre_logits=True).view(n, t, -1).mean(1)
        return self.forward_head(self.forward_features(x), pre_logits=True)

    def _build_head(self, num_classes: int, *, drop_rate: float) -> None:
        """Sets ``num_classes``, the dropout and the classifier over ``self.num_features`` pooled features."""
        self.num_classes = num_classes
        self.drop = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def reset_classifier(self, num_classes: int) -> None:
        """Replaces the classifier with a freshly initialised one for ``num_classes`` (0: no classifier)."""
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.classifier, nn.Linear):
            init_classifier(self.classifier)


def bn_relu(channels: int, dim: int) -> nn.Sequential:
    """``BN -> ReLU`` as a ``Sequential`` with children ``bn`` and ``relu`` (the final ``tail`` of every family)."""
    # NOTE: the child names make the authors' keys `tail.bn.*`.
    tail = nn.Sequential()
    tail.add_module("bn", {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dim](channels))
    tail.add_module("relu", nn.ReLU(inplace=True))
    return tail


def init_classifier(linear: nn.Linear) -> None:
    """Small normal weights and zero bias for a classifier."""
    nn.init.normal_(linear.weight, std=0.01)
    nn.init.zeros_(linear.bias)


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal convolutions, unit BN, small classifiers: the initialisation of all mfnet models."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            init_classifier(m)


def first_conv_weight(model: nn.Module) -> torch.Tensor | None:
    """The weight of the model's first convolution, ``(O, C, T, kH, kW)`` or ``(O, C, kH, kW)``, or ``None``."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            return module.weight
    return None
