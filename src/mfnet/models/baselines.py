"""The plain 2D baselines of Table 1 (and Fig. 2): ResNet-18 and MobileNet-v2 (width 1.4), for images.

Both are the standard networks, built from torchvision's definitions and wrapped in the package's classifier
interface (``forward_features``, ``forward_head``, ``reset_classifier``, frame-by-frame clips), so they are
trained, counted and compared like the multi-fiber models they are the reference for:

* ``resnet18``: 7x7 stem, max-pool, basic blocks (2, 2, 2, 2) with widths 64-512 -> ``(N, 512, H/32, W/32)``.
  With 1000 classes 11,689,512 parameters and 1.814 G multiply-adds at 224x224 (paper: 11.7M, 1.8G).
* ``mobilenet_v2_140``: MobileNet-v2 at width 1.4 (channels rounded to multiples of 8, a 1792-channel last
  1x1 convolution) -> ``(N, 1792, H/32, W/32)``. With 1000 classes 6,108,776 parameters and 582 M
  multiply-adds at 224x224 (paper: 6.9M, 585M, quoted from the MobileNet-v2 paper; the network it describes
  has 6.1M parameters, and no width rule gives 6.9M at 585M multiply-adds).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import mobilenet_v2 as tv_mobilenet_v2
from torchvision.models import resnet18 as tv_resnet18

from mfnet.models.base import ClassifierBase, init_classifier
from mfnet.models.registry import register_model


class ResNet2D(ClassifierBase):
    """ResNet-18 (basic blocks) for images ``(N, 3, H, W)``; clips are classified frame by frame.

    Args:
        num_classes: Classes of the classifier (0: none; ``forward`` then returns pooled features).
        drop_rate: Dropout before the classifier.
    """

    input_ndim = 4

    def __init__(self, num_classes: int = 1000, *, drop_rate: float = 0.0) -> None:
        super().__init__()
        net = tv_resnet18(weights=None)
        self.conv1 = nn.Sequential(net.conv1, net.bn1, net.relu)
        self.maxpool = net.maxpool
        self.stages = nn.Sequential(net.layer1, net.layer2, net.layer3, net.layer4)
        self.num_features = 512
        self._build_head(num_classes, drop_rate=drop_rate)
        if isinstance(self.classifier, nn.Linear):
            init_classifier(self.classifier)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W) -> (N, 512, H/32, W/32)``."""
        return self.stages(self.maxpool(self.conv1(x)))


class MobileNetV2(ClassifierBase):
    """MobileNet-v2 at a width multiplier for images ``(N, 3, H, W)``; clips are classified frame by frame.

    Args:
        num_classes: Classes of the classifier (0: none; ``forward`` then returns pooled features).
        width: The width multiplier (1.4 in Table 1).
        drop_rate: Dropout before the classifier (MobileNet-v2 uses 0.2).
    """

    input_ndim = 4

    def __init__(self, num_classes: int = 1000, *, width: float = 1.4, drop_rate: float = 0.2) -> None:
        super().__init__()
        net = tv_mobilenet_v2(weights=None, width_mult=width)
        self.features = net.features  # ends with the 1x1 conv -> BN -> ReLU6 to `last_channel`
        self.num_features = net.last_channel
        self._build_head(num_classes, drop_rate=drop_rate)
        if isinstance(self.classifier, nn.Linear):
            init_classifier(self.classifier)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W) -> (N, 1792, H/32, W/32)`` at width 1.4."""
        return self.features(x)


@register_model
def resnet18(*, num_classes: int = 1000, **kwargs) -> ResNet2D:
    """ResNet-18, Table 1's baseline: 11,689,512 parameters, 1.814 G multiply-adds at 224x224."""
    return ResNet2D(num_classes, **kwargs)


@register_model
def mobilenet_v2_140(*, num_classes: int = 1000, **kwargs) -> MobileNetV2:
    """MobileNet-v2 (width 1.4), Table 1's baseline: 6,108,776 parameters, 582 M multiply-adds at 224x224."""
    return MobileNetV2(num_classes, **kwargs)
