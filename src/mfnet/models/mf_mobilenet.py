"""MF-MobileNet-v2: MobileNet-v2 (width 1.4) with multi-fiber units embedded (paper Table 1, ImageNet).

Every inverted residual becomes a multi-fiber unit with a depthwise convolution in the middle::

    x ──▶ multiplexer (C -> mid/4 -> C, added to x) ──▶ BN-ReLU-Conv1x1 (C -> mid, N fibers)
      ──▶ BN-ReLU-Conv3x3 depthwise (mid, stride) ──▶ BN-ReLU-Conv1x1 (mid -> out, N fibers) ──▶ + shortcut

with ``mid = expansion x C``. As in MF-Net, the first unit of a stage has a dense 1x1 second convolution and a
BN-ReLU-1x1 projection shortcut. Stages follow MobileNet-v2 (expansion, channels at width 1.0, units, stride):
``(1, 16, 1, 1), (t, 24, 2, 2), (t, 32, 3, 2), (t, 64, 4, 2), (t, 96, 3, 1), (t, 160, 3, 2), (t, 320, 1, 1)``
after a 3x3 stride-2 stem, channels scaled by the width and rounded to multiples of 8; the head is a 1x1
convolution to 1792 channels, BN, ReLU, global average pool and the classifier.

The paper gives only the totals (6.0M parameters, 578M multiply-adds at 224x224, against 6.9M / 585M that it
quotes for MobileNet-v2 1.4, which has 6.11M / 582M when counted here). Sliced into fibers the unit gets much
cheaper, so the design was chosen by counting a grid of fibers (1, 2, 4, 8), expansions (6 to 12), first-unit
conventions and shortcuts: 4 fibers and expansion 8 with MF-Net's first-unit convention. With 1000 classes it
has 5,949,520 learnable parameters (6,022,264 with the BN running statistics that the paper's counts include;
-0.8% / +0.4% from 6.0M) and 571.8M multiply-adds at 224x224 (-1.1% from 578M). Other points of the grid:
2 fibers with MobileNet's expansion 6 give 5.77M / 568M, 8 fibers with expansion 10 give 6.23M / 596M. In the
first stage (expansion 1) the first fiber convolution is a grouped 1x1 that MobileNet-v2 does not have.
"""

from __future__ import annotations

import torch
from torch import nn

from mfnet.models.base import ClassifierBase, bn_relu, init_weights
from mfnet.models.fiber import MultiFiberUnit
from mfnet.models.layers import BnActConv, ConvBnAct
from mfnet.models.registry import register_model

# (expands: whether the stage uses ``expansion`` (else 1), channels at width 1.0, units, stride of the first unit)
STAGES: tuple[tuple[bool, int, int, int], ...] = (
    (False, 16, 1, 1),
    (True, 24, 2, 2),
    (True, 32, 3, 2),
    (True, 64, 4, 2),
    (True, 96, 3, 1),
    (True, 160, 3, 2),
    (True, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """MobileNet's channel rounding: the nearest multiple of ``divisor``, never more than 10% below ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class MFMobileNetV2(ClassifierBase):
    """MobileNet-v2 built from multi-fiber units, for images ``(N, 3, H, W)`` (clips go frame by frame).

    Args:
        num_classes: Classes of the classifier (0: none; ``forward`` then returns pooled features).
        width_mult: MobileNet's width multiplier (1.4 in the paper).
        expansion: Middle channels of a unit as a multiple of its input channels.
        fibers: Fibers per unit (every stage width must be divisible by it).
        multiplexer: Whether units have the multiplexer.
        drop_rate: Dropout before the classifier.
    """

    input_ndim = 4

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        width_mult: float = 1.4,
        expansion: int = 8,
        fibers: int = 4,
        multiplexer: bool = True,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        stem_channels = make_divisible(32 * width_mult)
        self.conv1 = ConvBnAct(3, stem_channels, 3, stride=2, dim=2)
        self.stages = nn.Sequential()
        in_channels = stem_channels
        for s, (expands, channels, depth, stride) in enumerate(STAGES):
            out_channels = make_divisible(channels * width_mult)
            stage = nn.Sequential()
            for i in range(depth):
                unit = MultiFiberUnit(
                    in_channels,
                    in_channels * (expansion if expands else 1),
                    out_channels,
                    kernel_m1=1,
                    kernel_m2=1,
                    kernel_dw=3,
                    stride=stride if i == 0 else 1,
                    fibers=fibers,
                    multiplexer=multiplexer,
                    first=i == 0,
                    dim=2,
                )
                stage.add_module(f"B{i + 1:02d}", unit)
                in_channels = out_channels
            self.stages.add_module(f"conv{s + 2}", stage)
        self.num_features = make_divisible(1280 * max(1.0, width_mult))
        self.conv_last = BnActConv(in_channels, self.num_features, 1, dim=2)
        self.tail = bn_relu(self.num_features, 2)
        self._build_head(num_classes, drop_rate=drop_rate)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W) -> (N, 1792, H/32, W/32)`` at width 1.4."""
        return self.tail(self.conv_last(self.stages(self.conv1(x))))


@register_model
def mf_mobilenet_v2(*, num_classes: int = 1000, **kwargs) -> MFMobileNetV2:
    """MF-MobileNet-v2 1.4 (paper Table 1): 5,949,520 parameters and 571.8M multiply-adds at 224x224, 1000 classes."""
    return MFMobileNetV2(num_classes, **kwargs)
