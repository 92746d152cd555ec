"""MF-ResNet-18: ResNet-18 with its residual units replaced by multi-fiber units (paper Table 1, ImageNet).

::

    conv1   Conv 3->64 (7x7, stride 2) -> BN -> ReLU                 (N, 64, H/2, W/2)
    maxpool 3x3, stride 2                                             (N, 64, H/4, W/4)
    conv2   2 MF units,  128 out / 256 mid, stride 1                  (N, 128, H/4, W/4)
    conv3   2 MF units,  256 out / 512 mid, first stride 2            (N, 256, H/8, W/8)
    conv4   2 MF units,  512 out / 1024 mid, first stride 2           (N, 512, H/16, W/16)
    conv5   2 MF units, 1024 out / 2048 mid, first stride 2           (N, 1024, H/32, W/32)
    tail    BN -> ReLU;  head: global average pool -> dropout -> Linear(1024, K)

The paper gives only the totals (9.6M parameters, 1.6 GMACs at 224x224, against ResNet-18's 11.7M / 1.8G).
The design here was chosen by counting a grid of candidates (stems, widths, middle widths, fibers, the first
unit's second convolution): ResNet-18's stem, depths and strides; output widths twice ResNet-18's; middle
widths twice the output (so the multiplexer squeezes to half the output width); 16 fibers; and, unlike MF-Net,
the first unit of a stage keeps a grouped 3x3 second convolution (ResNet's basic-block shape; its projection
shortcut is the usual BN-ReLU-1x1). With 1000 classes: 9,338,024 learnable parameters (9,372,840 with the BN
running statistics that the paper's "5.8M" for MF-Net 2D also counts; -2.4% from 9.6M) and 1.571 G
multiply-adds at 224x224 (-1.8% from 1.6G). MF-Net's own convention (a dense 1x1 second convolution in first
units) gives 10.56M / 1.75G with these widths, and no width with middle = output width lands within 3% of both.
"""

from __future__ import annotations

import torch
from torch import nn

from mfnet.models.base import ClassifierBase, bn_relu, init_weights
from mfnet.models.fiber import fiber_stage
from mfnet.models.layers import ConvBnAct
from mfnet.models.registry import register_model


class MFResNet(ClassifierBase):
    """A 2D ResNet whose residual units are multi-fiber units, for images ``(N, 3, H, W)``.

    Clips ``(N, 3, T, H, W)`` are classified frame by frame with the logits averaged over ``T``.

    Args:
        num_classes: Classes of the classifier (0: none; ``forward`` then returns pooled features).
        depths: Units per stage conv2..conv5.
        widths: Output channels per stage.
        mid_ratio: Middle channels of every unit as a multiple of the stage's output width.
        fibers: Fibers per unit (1 gives a pre-activation ResNet with multiplexers).
        multiplexer: Whether units have the multiplexer.
        stem_channels: Output channels of the 7x7 stem convolution.
        drop_rate: Dropout before the classifier.
    """

    input_ndim = 4

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        depths: tuple[int, ...] = (2, 2, 2, 2),
        widths: tuple[int, ...] = (128, 256, 512, 1024),
        mid_ratio: int = 2,
        fibers: int = 16,
        multiplexer: bool = True,
        stem_channels: int = 64,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_features = widths[-1]
        self.conv1 = ConvBnAct(3, stem_channels, 7, stride=2, dim=2)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.stages = nn.Sequential()
        in_channels = stem_channels
        for i, (depth, width) in enumerate(zip(depths, widths, strict=True)):
            stage = fiber_stage(
                in_channels,
                width,
                depth,
                stride=1 if i == 0 else 2,
                kernel_m1=3,
                kernel_m2=3,
                fibers=fibers,
                multiplexer=multiplexer,
                dim=2,
                mid_channels=width * mid_ratio,
                dense_first=False,
            )
            self.stages.add_module(f"conv{i + 2}", stage)
            in_channels = width
        self.tail = bn_relu(in_channels, 2)
        self._build_head(num_classes, drop_rate=drop_rate)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W) -> (N, 1024, H/32, W/32)``."""
        return self.tail(self.stages(self.maxpool(self.conv1(x))))


@register_model
def mf_resnet18(*, num_classes: int = 1000, **kwargs) -> MFResNet:
    """MF-ResNet-18 (paper Table 1): 9,338,024 parameters and 1.571 G multiply-adds at 224x224, 1000 classes."""
    return MFResNet(num_classes, **kwargs)
