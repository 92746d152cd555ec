"""ResNeXt-26 baselines: a 3D one at 3D MF-Net's cost and a 2D one at 2D MF-Net's cost (paper Table 1).

``resnext26_3d`` (clips) -- the grouped-convolution counterpart of the 3D MF-Net, built for this package's
comparisons (the paper has no 3D ResNeXt-26 row)::

    conv1   Conv 3->16 (3x5x5, stride 1x2x2) -> BN -> ReLU           (N, 16, T, H/2, W/2)     as in MF-Net
    maxpool 1x3x3, stride 1x2x2                                      (N, 16, T, H/4, W/4)
    conv2   2 units, 64 mid / 256 out,  first stride 2x1x1           (N, 256, T/2, H/4, W/4)
    conv3   2 units, 128 mid / 512 out, first stride 1x2x2           (N, 512, T/2, H/8, W/8)
    conv4   2 units, 256 mid / 1024 out, first stride 1x2x2          (N, 1024, T/2, H/16, W/16)
    conv5   2 units, 512 mid / 2048 out, first stride 1x2x2          (N, 2048, T/2, H/32, W/32)
    tail    BN -> ReLU;  head: global average pool -> dropout -> Linear(2048, K)

Each unit is a pre-activation ResNeXt bottleneck (Fig. 1b of the paper)::

    x ──▶ BN-ReLU-Conv1x1x1 (C -> mid) ──▶ BN-ReLU-Conv3x3x3 (mid -> mid, 32 groups, stride)
      ──▶ BN-ReLU-Conv1x1x1 (mid -> out) ──▶ + shortcut (x, or BN-ReLU-Conv1x1x1 with the stride in a first unit)

26 layers: the stem, 8 units of 3 convolutions and the classifier. The widths are ResNeXt-26's 32x2d setting
(32 groups of 2, 4, 8, 16 channels), the stem and strides MF-Net's, so the only difference to MF-Net is the unit.
With 400 classes: 9,061,120 parameters and 11.44 G multiply-adds on a 16x224x224 clip (MF-Net: 7,996,368 and
11.05 G). The 32x4d widths would cost 15.7M / 21.0 G.

``resnext26_2d`` (images) -- the ImageNet row of Table 1: a 2D ResNeXt-26 at about the 2D MF-Net's 861 M
multiply-adds::

    conv1   Conv 3->32 (7x7, stride 2) -> BN -> ReLU                 (N, 32, H/2, W/2)
    maxpool 3x3, stride 2                                             (N, 32, H/4, W/4)
    conv2   2 units, 32 mid / 256 out, stride 1                       (N, 256, H/4, W/4)
    conv3   2 units, 64 mid / 512 out, first stride 2                 (N, 512, H/8, W/8)
    conv4   2 units, 128 mid / 1024 out, first stride 2               (N, 1024, H/16, W/16)
    conv5   2 units, 256 mid / 2048 out, first stride 2               (N, 2048, H/32, W/32)
    tail    BN -> ReLU;  head: global average pool -> dropout -> Linear(2048, K)

The same pre-activation unit in 2D; ResNeXt's 7x7 stem, depths (2, 2, 2, 2), output widths and 32 groups; the
group width (1 channel per group in conv2, doubling per stage: "32x1d") and the stem width (32) were chosen by
counting a grid so the multiply-adds match the 2D MF-Net's. With 1000 classes: 7,320,392 parameters and
0.868 G multiply-adds at 224x224 (+0.8% from 861 M); 32x2d would cost 9.9M / 1.45 G, a 64-channel stem
0.96 G.
"""

from __future__ import annotations

import torch
from torch import nn

from mfnet.models.base import ClassifierBase, bn_relu, init_weights
from mfnet.models.layers import BnActConv, ConvBnAct, Size
from mfnet.models.registry import register_model


class ResNeXtUnit(nn.Module):
    """A pre-activation ResNeXt bottleneck unit on clips ``(N, C, T, H, W)`` (or images with ``dim=2``).

    Args:
        in_channels: Channels ``C`` of the input.
        mid_channels: Channels of the grouped convolution (a multiple of ``groups``).
        out_channels: Channels of the output.
        stride: Stride of the grouped convolution and of the shortcut.
        groups: Groups (cardinality) of the middle convolution.
        first: Whether this is a stage's first unit (projection shortcut).
        dim: 3 for clips, 2 for images.
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        *,
        stride: Size = 1,
        groups: int = 32,
        first: bool = False,
        dim: int = 3,
    ) -> None:
        super().__init__()
        self.conv_a = BnActConv(in_channels, mid_channels, 1, dim=dim)
        self.conv_b = BnActConv(mid_channels, mid_channels, 3, stride=stride, groups=groups, dim=dim)
        self.conv_c = BnActConv(mid_channels, out_channels, 1, dim=dim)
        if first:
            self.conv_w1 = BnActConv(in_channels, out_channels, 1, stride=stride, dim=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.conv_w1(x) if hasattr(self, "conv_w1") else x
        return self.conv_c(self.conv_b(self.conv_a(x))) + shortcut


class ResNeXt2D(ClassifierBase):
    """A 2D pre-activation ResNeXt for images ``(N, 3, H, W)`` (clips are classified frame by frame).

    Args:
        num_classes: Classes of the classifier (0: none; ``forward`` then returns pooled features).
        depths: Units per stage conv2..conv5.
        widths: Output channels per stage.
        cardinality: Groups of every middle convolution.
        base_width: Channels per group in the first stage (doubling with every stage).
        stem_channels: Output channels of the 7x7 stem convolution.
        drop_rate: Dropout before the classifier.
    """

    input_ndim = 4

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        depths: tuple[int, ...] = (2, 2, 2, 2),
        widths: tuple[int, ...] = (256, 512, 1024, 2048),
        cardinality: int = 32,
        base_width: int = 1,
        stem_channels: int = 32,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_features = widths[-1]
        self.conv1 = ConvBnAct(3, stem_channels, 7, stride=2, dim=2)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.stages = nn.Sequential()
        in_channels = stem_channels
        for i, (depth, width) in enumerate(zip(depths, widths, strict=True)):
            mid = cardinality * base_width * 2**i
            stage = nn.Sequential()
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                unit = ResNeXtUnit(in_channels, mid, width, stride=stride, groups=cardinality, first=j == 0, dim=2)
                stage.add_module(f"B{j + 1:02d}", unit)
                in_channels = width
            self.stages.add_module(f"conv{i + 2}", stage)
        self.tail = bn_relu(in_channels, 2)
        self._build_head(num_classes, drop_rate=drop_rate)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W) -> (N, 2048, H/32, W/32)``."""
        return self.tail(self.stages(self.maxpool(self.conv1(x))))


class ResNeXt3D(ClassifierBase):
    """A 3D pre-activation ResNeXt on clips ``(N, 3, T, H, W)`` with MF-Net's stem and strides.

    Args:
        num_classes: Classes of the classifier (0: none; ``forward`` then returns pooled features).
        depths: Units per stage conv2..conv5.
        widths: Output channels per stage.
        cardinality: Groups of every middle convolution.
        base_width: Channels per group in the first stage (doubling with every stage).
        stem_channels: Output channels of conv1.
        drop_rate: Dropout before the classifier.
    """

    def __init__(
        self,
        num_classes: int = 400,
        *,
        depths: tuple[int, ...] = (2, 2, 2, 2),
        widths: tuple[int, ...] = (256, 512, 1024, 2048),
        cardinality: int = 32,
        base_width: int = 2,
        stem_channels: int = 16,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_features = widths[-1]
        self.conv1 = ConvBnAct(3, stem_channels, (3, 5, 5), stride=(1, 2, 2), dim=3)
        self.maxpool = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        self.stages = nn.Sequential()
        in_channels = stem_channels
        for i, (depth, width) in enumerate(zip(depths, widths, strict=True)):
            mid = cardinality * base_width * 2**i
            stage = nn.Sequential()
            for j in range(depth):
                stride = ((2, 1, 1) if i == 0 else (1, 2, 2)) if j == 0 else 1
                unit = ResNeXtUnit(in_channels, mid, width, stride=stride, groups=cardinality, first=j == 0)
                stage.add_module(f"B{j + 1:02d}", unit)
                in_channels = width
            self.stages.add_module(f"conv{i + 2}", stage)
        self.tail = bn_relu(in_channels, 3)
        self._build_head(num_classes, drop_rate=drop_rate)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, T, H, W) -> (N, 2048, T/2, H/32, W/32)``."""
        return self.tail(self.stages(self.maxpool(self.conv1(x))))


@register_model
def resnext26_3d(*, num_classes: int = 400, **kwargs) -> ResNeXt3D:
    """3D ResNeXt-26 (32x2d) at 3D MF-Net's cost, not a paper row: 9,061,120 params, 11.44 G MACs at 16x224x224."""
    return ResNeXt3D(num_classes, **kwargs)


@register_model
def resnext26_2d(*, num_classes: int = 1000, **kwargs) -> ResNeXt2D:
    """2D ResNeXt-26 (32x1d), Table 1's row at 2D MF-Net's cost: 7,320,392 params, 0.868 G MACs at 224x224."""
    return ResNeXt2D(num_classes, **kwargs)
