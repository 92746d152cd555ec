"""MF-Net: the 3D network of the paper (Table 2) and its 2D twin that is trained on ImageNet and inflated.

::

    conv1   Conv 3->16 (3x5x5, stride 1x2x2) -> BN -> ReLU        (N, 16, T, H/2, W/2)
    maxpool 1x3x3, stride 1x2x2                                     (N, 16, T, H/4, W/4)
    conv2   3 MF units,  96 ch, first stride 2x1x1 (time only)      (N, 96, T/2, H/4, W/4)
    conv3   4 MF units, 192 ch, first stride 1x2x2                  (N, 192, T/2, H/8, W/8)
    conv4   6 MF units, 384 ch, first stride 1x2x2                  (N, 384, T/2, H/16, W/16)
    conv5   3 MF units, 768 ch, first stride 1x2x2                  (N, 768, T/2, H/32, W/32)
    tail    BN -> ReLU;  head: global average pool -> dropout -> Linear(768, K)

In every 3D unit the first convolution is 3x3x3 and the second 1x3x3. The 2D twin drops every temporal
kernel size and stride. With 400 classes the 3D network has 7,996,368 parameters and 11.05 G multiply-adds on
a 16x224x224 clip; the 2D network with 1000 classes has 5,716,488 parameters and ~0.86 G multiply-adds.
"""

from __future__ import annotations

from mfnet.models.base import ClassifierBase, bn_relu, init_weights
from mfnet.models.fiber import fiber_stage
from mfnet.models.layers import ConvBnAct, pool_layer
from mfnet.models.registry import register_model

STAGE_DEPTHS = (3, 4, 6, 3)
STAGE_WIDTHS = (96, 192, 384, 768)


class MFNet(ClassifierBase):
    """The multi-fiber network in 2D or 3D.

    Args:
        num_classes: Classes of the classifier (0: none; ``forward`` then returns pooled features).
        dim: 3 for clips ``(N, 3, T, H, W)``; 2 for images ``(N, 3, H, W)``.
        fibers: Fibers per unit (16 in the paper; 1 gives the pre-activation ResNet-style ablation).
        multiplexer: Whether units have the multiplexer (the paper's ablation turns it off).
        depths: Units per stage conv2..conv5.
        widths: Output (and middle) channels per stage.
        stem_channels: Output channels of conv1.
        drop_rate: Dropout before the classifier (the paper uses it only for fine-tuning).
    """

    def __init__(
        self,
        num_classes: int = 400,
        *,
        dim: int = 3,
        fibers: int = 16,
        multiplexer: bool = True,
        depths: tuple[int, ...] = STAGE_DEPTHS,
        widths: tuple[int, ...] = STAGE_WIDTHS,
        stem_channels: int = 16,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3, got {dim}")
        self.input_ndim = dim + 2
        self.num_features = widths[-1]
        three_d = dim == 3
        stem_kernel, stem_stride = ((3, 5, 5), (1, 2, 2)) if three_d else ((5, 5), (2, 2))
        # NOTE: module names (conv1.conv, conv1.bn, conv2..conv5, tail.bn, classifier) follow the authors' keys.
        self.conv1 = ConvBnAct(3, stem_channels, stem_kernel, stride=stem_stride, dim=dim)
        self.maxpool = pool_layer(dim)(
            kernel_size=(1, 3, 3) if three_d else 3,
            stride=(1, 2, 2) if three_d else 2,
            padding=(0, 1, 1) if three_d else 1,
        )
        in_channels = stem_channels
        for i, (depth, width) in enumerate(zip(depths, widths, strict=True)):
            if three_d:
                stride: tuple[int, ...] = (2, 1, 1) if i == 0 else (1, 2, 2)
                kernels = {"kernel_m1": (3, 3, 3), "kernel_m2": (1, 3, 3)}
            else:
                stride = (1, 1) if i == 0 else (2, 2)
                kernels = {"kernel_m1": (3, 3), "kernel_m2": (3, 3)}
            stage = fiber_stage(
                in_channels, width, depth, stride=stride, fibers=fibers, multiplexer=multiplexer, dim=dim, **kernels
            )
            self.add_module(f"conv{i + 2}", stage)
            in_channels = width
        self.tail = bn_relu(in_channels, dim)
        self._build_head(num_classes, drop_rate=drop_rate)
        init_weights(self)

    def forward_features(self, x):
        """``(N, 3, T, H, W) -> (N, 768, T/2, H/32, W/32)`` in 3D; ``(N, 3, H, W) -> (N, 768, H/32, W/32)`` in 2D."""
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.conv4(self.conv3(self.conv2(x))))
        return self.tail(x)


@register_model
def mfnet3d(*, num_classes: int = 400, **kwargs) -> MFNet:
    """3D MF-Net (paper Table 2): 7,996,368 parameters and 11.05 G multiply-adds at 16x224x224, 400 classes."""
    return MFNet(num_classes, dim=3, **kwargs)


@register_model
def mfnet2d(*, num_classes: int = 1000, **kwargs) -> MFNet:
    """2D MF-Net, the ImageNet twin used to initialise ``mfnet3d`` by inflation; on clips it works frame by frame."""
    return MFNet(num_classes, dim=2, **kwargs)
