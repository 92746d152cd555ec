"""MF-ResNet-18, MF-MobileNet-v2, Table 1's baselines and the ResNeXt-26 models; the ablation variants of MF-Net.

Golden counts are computed on the meta device (shapes only, no arithmetic), which gives the same numbers as
real tensors (checked once below) in a fraction of the time.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mfnet
from mfnet.models import MultiFiberUnit


def _meta_model(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return mfnet.create_model(name, **kwargs)


def _bn_statistics(model: nn.Module) -> int:
    return sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))


# name, classes, input, params, MACs, the paper's params and MACs (None: no number to compare with)
GOLDEN = [
    ("mf_resnet18", 1000, (1, 3, 224, 224), 9_338_024, 1_570_529_280, 9.6e6, 1.6e9),
    ("mf_mobilenet_v2", 1000, (1, 3, 224, 224), 5_949_520, 571_781_952, 6.0e6, 578e6),
    ("resnet18", 1000, (1, 3, 224, 224), 11_689_512, 1_814_073_344, 11.7e6, 1.8e9),
    # Table 1 quotes 6.9M parameters from the MobileNet-v2 paper, which the network it describes does not have
    # (6.1M); its 585 M multiply-adds hold.
    ("mobilenet_v2_140", 1000, (1, 3, 224, 224), 6_108_776, 582_195_824, None, 585e6),
    # Table 1's ResNeXt-26 row is at 2D MF-Net's cost: compared with MF-Net 2D's 861 M multiply-adds.
    ("resnext26_2d", 1000, (1, 3, 224, 224), 7_320_392, 867_885_056, None, 861e6),
    ("resnext26_3d", 400, (1, 3, 16, 224, 224), 9_061_120, 11_436_130_304, None, None),
]


@pytest.mark.parametrize(("name", "classes", "shape", "params", "macs", "paper_params", "paper_macs"), GOLDEN)
def test_family_golden_counts(name, classes, shape, params, macs, paper_params, paper_macs) -> None:
    model = _meta_model(name, num_classes=classes)
    assert mfnet.count_params(model) == params
    assert mfnet.count_macs(model, shape) == macs
    if paper_params is not None:  # within 4% of the paper's Table 1 (its parameter counts include BN statistics)
        assert abs((params + _bn_statistics(model)) / paper_params - 1) < 0.04
    if paper_macs is not None:
        assert abs(macs / paper_macs - 1) < 0.04


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("mf_mobilenet_v2", (1, 3, 64, 64)),
        ("resnext26_3d", (1, 3, 4, 64, 64)),
        ("resnext26_2d", (1, 3, 64, 64)),
        ("mobilenet_v2_140", (1, 3, 64, 64)),
    ],
)
def test_meta_counts_equal_real_counts(name: str, shape: tuple[int, ...]) -> None:
    real = mfnet.create_model(name, num_classes=10)
    meta = _meta_model(name, num_classes=10)
    assert mfnet.count_params(real) == mfnet.count_params(meta)
    assert mfnet.count_macs(real, shape) == mfnet.count_macs(meta, shape)


def test_resnext26_is_about_mfnet_cost() -> None:
    resnext = _meta_model("resnext26_3d", num_classes=400)
    mf = _meta_model("mfnet3d", num_classes=400)
    shape = (1, 3, 16, 224, 224)
    assert 1.0 < mfnet.count_params(resnext) / mfnet.count_params(mf) < 1.2
    assert 1.0 < mfnet.count_macs(resnext, shape) / mfnet.count_macs(mf, shape) < 1.1
    resnext_2d = _meta_model("resnext26_2d", num_classes=1000)
    mf_2d = _meta_model("mfnet2d", num_classes=1000)
    ratio = mfnet.count_macs(resnext_2d, (1, 3, 224, 224)) / mfnet.count_macs(mf_2d, (1, 3, 224, 224))
    assert 0.97 < ratio < 1.03


# fibers -> (params, MACs) of mfnet3d with 400 classes at 16x224x224, with and without the multiplexer
ABLATION = {
    1: ((86_883_888, 114.44e9), (85_653_952, 112.32e9)),
    2: ((44_810_544, 59.30e9), (43_580_608, 57.18e9)),
    4: ((23_773_872, 31.72e9), (22_543_936, 29.60e9)),
    8: ((13_255_536, 17.94e9), (12_025_600, 15.82e9)),
    16: ((7_996_368, 11.05e9), (6_766_432, 8.93e9)),
}


@pytest.mark.parametrize("fibers", sorted(ABLATION))
@pytest.mark.parametrize("multiplexer", [True, False])
def test_mfnet3d_ablation_counts(fibers: int, multiplexer: bool) -> None:
    model = _meta_model("mfnet3d", num_classes=400, fibers=fibers, multiplexer=multiplexer)
    params, macs = ABLATION[fibers][0 if multiplexer else 1]
    assert mfnet.count_params(model) == params
    assert mfnet.count_macs(model, (1, 3, 16, 224, 224)) == pytest.approx(macs, rel=5e-4)
    groups = {m.groups for n, m in model.named_modules() if n.endswith("conv_m1.conv")}
    assert groups == {fibers}
    assert any(n.endswith("conv_i1.conv") for n, _ in model.named_modules()) == multiplexer


# fibers -> (params, MACs) of mfnet2d with 1000 classes at 224x224, with and without the multiplexer
ABLATION_2D = {
    1: ((43_520_808, 7_118_333_952), (42_290_872, 6_855_813_120)),
    2: ((23_358_504, 3_780_225_024), (22_128_568, 3_517_704_192)),
    4: ((13_277_352, 2_111_170_560), (12_047_416, 1_848_649_728)),
    8: ((8_236_776, 1_276_643_328), (7_006_840, 1_014_122_496)),
    16: ((5_716_488, 859_379_712), (4_486_552, 596_858_880)),
}


@pytest.mark.parametrize("fibers", sorted(ABLATION_2D))
@pytest.mark.parametrize("multiplexer", [True, False])
def test_mfnet2d_ablation_counts(fibers: int, multiplexer: bool) -> None:
    model = _meta_model("mfnet2d", num_classes=1000, fibers=fibers, multiplexer=multiplexer)
    params, macs = ABLATION_2D[fibers][0 if multiplexer else 1]
    assert mfnet.count_params(model) == params
    assert mfnet.count_macs(model, (1, 3, 224, 224)) == macs


def test_multiplexer_cost_is_two_1x1_convs_per_unit() -> None:
    with_mux = _meta_model("mfnet3d", num_classes=400)
    without = _meta_model("mfnet3d", num_classes=400, multiplexer=False)
    # per unit: C*mid/4 + mid/4*C weights and BNs over C and mid/4; summed over the 16 units
    expected = 0
    for c_in, width, depth in ((16, 96, 3), (96, 192, 4), (192, 384, 6), (384, 768, 3)):
        for i in range(depth):
            c = c_in if i == 0 else width
            expected += 2 * c * (width // 4) + 2 * c + 2 * (width // 4)
    assert mfnet.count_params(with_mux) - mfnet.count_params(without) == expected


@pytest.mark.parametrize("name", ["mf_resnet18", "mf_mobilenet_v2", "resnext26_3d", "resnext26_2d"])
def test_families_ablate_through_builder_arguments(name: str) -> None:
    base = _meta_model(name, num_classes=10)
    if name.startswith("resnext26"):
        # twice the groups at half the group width: the same middle widths, thinner groups
        width = base.stages.conv2.B01.conv_b.conv.out_channels // 32
        fewer = _meta_model(name, num_classes=10, cardinality=64, base_width=max(1, width // 2))
        if width == 1:  # the 2D model's 32x1d: 64x1d doubles the middle widths instead
            fewer = _meta_model(name, num_classes=10, cardinality=64, base_width=1, widths=(128, 256, 512, 1024))
        groups = {m.groups for n, m in fewer.named_modules() if n.endswith("conv_b.conv")}
        assert groups == {64} and mfnet.count_params(fewer) < mfnet.count_params(base)
        return
    no_mux = _meta_model(name, num_classes=10, multiplexer=False)
    assert not any("conv_i1" in n for n, _ in no_mux.named_parameters())
    assert mfnet.count_params(no_mux) < mfnet.count_params(base)
    one_fiber = _meta_model(name, num_classes=10, fibers=1)
    assert mfnet.count_params(one_fiber) > mfnet.count_params(base)


def test_mf_resnet18_layout() -> None:
    model = mfnet.create_model("mf_resnet18", num_classes=10).eval()
    assert model.input_ndim == 4 and model.num_features == 1024
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 96, 160)).shape == (1, 1024, 3, 5)
    units = [m for m in model.modules() if isinstance(m, MultiFiberUnit)]
    assert len(units) == 8  # ResNet-18: 2 units in each of 4 stages
    for unit in units:  # every second convolution is a grouped 3x3 (ResNet's basic-block shape)
        assert unit.conv_m2.conv.kernel_size == (3, 3) and unit.conv_m2.conv.groups == 16
        assert unit.conv_m1.conv.out_channels == 2 * unit.conv_m2.conv.out_channels
    assert sum(hasattr(u, "conv_w1") for u in units) == 4


def test_mf_mobilenet_v2_layout() -> None:
    model = mfnet.create_model("mf_mobilenet_v2", num_classes=10).eval()
    assert model.input_ndim == 4 and model.num_features == 1792
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 64, 96)).shape == (1, 1792, 2, 3)
    units = [m for m in model.modules() if isinstance(m, MultiFiberUnit)]
    assert len(units) == 17  # MobileNet-v2's 1 + 2 + 3 + 4 + 3 + 3 + 1 inverted residuals
    outs = [u.conv_m2.conv.out_channels for u in units]
    assert sorted(set(outs)) == [24, 32, 48, 88, 136, 224, 448]  # MobileNet-v2 1.4's widths
    for unit in units:
        dw = unit.conv_dw.conv
        assert dw.groups == dw.in_channels == dw.out_channels and dw.kernel_size == (3, 3)
        assert unit.conv_m1.conv.stride == (1, 1) and unit.conv_m1.conv.groups == 4
    assert [u.conv_dw.conv.stride[0] for u in units].count(2) == 4  # with the stem: output stride 32


def test_resnext26_layout() -> None:
    model = mfnet.create_model("resnext26_3d", num_classes=10).eval()
    assert model.input_ndim == 5 and model.num_features == 2048
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 8, 64, 64)).shape == (1, 2048, 4, 2, 2)
    convs = [m for n, m in model.named_modules() if n.endswith("conv_b.conv")]
    assert len(convs) == 8 and {c.groups for c in convs} == {32} and {c.kernel_size for c in convs} == {(3, 3, 3)}
    assert [c.out_channels // 32 for c in convs] == [2, 2, 4, 4, 8, 8, 16, 16]  # 32x2d
    layers = sum(isinstance(m, (nn.Conv3d, nn.Linear)) and "conv_w1" not in n for n, m in model.named_modules())
    assert layers == 26


def test_depthwise_unit_is_an_inverted_residual() -> None:
    """``kernel_dw`` with one fiber and no multiplexer is MobileNet-v2's inverted residual (pre-activation)."""
    c, hidden, out = 32, 192, 32
    unit = MultiFiberUnit(c, hidden, out, kernel_m1=1, kernel_m2=1, kernel_dw=3, fibers=1, multiplexer=False, dim=2)
    assert mfnet.count_params(unit) == c * hidden + 9 * hidden + hidden * out + 2 * (c + hidden + hidden)
    x = torch.randn(2, c, 10, 10)
    assert unit(x).shape == (2, out, 10, 10)
    strided = MultiFiberUnit(c, hidden, 48, kernel_m1=1, kernel_dw=3, stride=2, fibers=4, first=True, dim=2)
    assert strided(x).shape == (2, 48, 5, 5)
    assert strided.conv_m1.conv.stride == (1, 1) and strided.conv_dw.conv.stride == (2, 2)


def test_new_unit_options_leave_mfnet_unchanged() -> None:
    """Default options keep MF-Net's module names (the authors' checkpoint keys) and its first-unit convention."""
    unit = MultiFiberUnit(16, 96, 96, first=True, stride=(2, 1, 1), kernel_m1=(3, 3, 3), kernel_m2=(1, 3, 3))
    names = [n for n, _ in unit.named_children()]
    assert names == ["conv_i1", "conv_i2", "conv_m1", "conv_m2", "conv_w1"]
    assert unit.conv_m2.conv.kernel_size == (1, 1, 1) and unit.conv_m2.conv.groups == 1
    grouped = MultiFiberUnit(16, 96, 96, first=True, dense_first=False, kernel_m1=3, kernel_m2=3, dim=2)
    assert grouped.conv_m2.conv.kernel_size == (3, 3) and grouped.conv_m2.conv.groups == 16
    assert hasattr(grouped, "conv_w1")
    with pytest.raises(ValueError, match="not divisible"):
        MultiFiberUnit(16, 96, 100, first=True, dense_first=False, dim=2)
