"""MF-Net 3D/2D: golden counts from the paper, shapes from the input, the common interface, every registered model."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import mfnet
from mfnet.models import MultiFiberUnit


def _tiny_input(model: nn.Module, batch: int = 2) -> torch.Tensor:
    shape = (batch, 3, 4, 64, 64) if model.input_ndim == 5 else (batch, 3, 64, 64)
    return torch.randn(shape)


@pytest.mark.parametrize("name", mfnet.list_models())
def test_every_model_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    model = mfnet.create_model(name, num_classes=7)
    x = _tiny_input(model)
    out = model(x)
    assert out.shape == (2, 7)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", mfnet.list_models())
def test_every_model_interface(name: str) -> None:
    model = mfnet.create_model(name, num_classes=5).eval()
    x = _tiny_input(model, batch=1)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape[:2] == (1, model.num_features)
        pooled = model.forward_head(features, pre_logits=True)
        assert pooled.shape == (1, model.num_features)
        assert torch.allclose(model.forward_head(features), model(x), atol=1e-5)
        assert torch.allclose(model.clip_features(x), pooled, atol=1e-6)
    model.reset_classifier(3)
    assert model.num_classes == 3 and model(x).shape == (1, 3)


def test_mfnet3d_golden_counts() -> None:
    with torch.device("meta"):  # shapes only: the count needs no real arithmetic
        model = mfnet.create_model("mfnet3d", num_classes=400)
    assert mfnet.count_params(model) == 7_996_368
    macs = mfnet.count_macs(model, (1, 3, 16, 224, 224))
    assert macs == 11_045_449_728  # the paper's "11.1 GFLOPs" (multiply-adds)


def test_mfnet2d_golden_counts() -> None:
    with torch.device("meta"):
        model = mfnet.create_model("mfnet2d", num_classes=1000)
    assert mfnet.count_params(model) == 5_716_488
    buffers = sum(b.numel() for n, b in model.named_buffers() if not n.endswith("num_batches_tracked"))
    assert abs(mfnet.count_params(model) + buffers - 5.75e6) < 0.01e6  # the paper's 5.8M counts BN statistics
    assert 859e6 <= mfnet.count_macs(model, (1, 3, 224, 224)) <= 861e6


def test_mfnet3d_layout_and_head_match_fixed_pooling() -> None:
    """Any clip the strides allow works; adaptive pooling equals the authors' AvgPool3d(8, 7, 7) at 16x224x224."""
    torch.manual_seed(0)
    model = mfnet.create_model("mfnet3d", num_classes=10).eval()
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 8, 112, 112)).shape == (1, 768, 4, 4, 4)
        assert model(torch.randn(1, 3, 32, 160, 160)).shape == (1, 10)
        features = model.forward_features(torch.randn(1, 3, 16, 224, 224))
        assert features.shape == (1, 768, 8, 7, 7)
        fixed = model.classifier(nn.AvgPool3d((8, 7, 7))(features).flatten(1))
        assert torch.allclose(model.forward_head(features), fixed, atol=1e-5)


def test_conv2_is_the_only_temporal_downsampling() -> None:
    model = mfnet.create_model("mfnet3d", num_classes=10)
    strides = {name: m.stride for name, m in model.named_modules() if isinstance(m, nn.Conv3d) and m.stride[0] != 1}
    assert set(strides) == {"conv2.B01.conv_m1.conv", "conv2.B01.conv_w1.conv"}
    kernels = {m.kernel_size for name, m in model.named_modules() if name.endswith("conv_m1.conv")}
    assert kernels == {(3, 3, 3)}
    second = {m.kernel_size for name, m in model.named_modules() if name.endswith("conv_m2.conv") and "B01" not in name}
    assert second == {(1, 3, 3)}


def test_image_model_classifies_clips_frame_by_frame() -> None:
    torch.manual_seed(0)
    model = mfnet.create_model("mfnet2d", num_classes=4).eval()
    clip = torch.randn(2, 3, 3, 64, 64)  # (N, C, T, H, W)
    with torch.no_grad():
        per_frame = torch.stack([model(clip[:, :, t]) for t in range(3)], dim=1)  # (N, T, K)
        assert torch.allclose(model(clip), per_frame.mean(1), atol=1e-5)


@pytest.mark.parametrize("fibers", [1, 2, 4, 8, 16])
def test_fiber_ablation_cuts_connections(fibers: int) -> None:
    unit = MultiFiberUnit(96, 96, 96, fibers=fibers, multiplexer=False, dim=3, kernel_m1=(3, 3, 3), kernel_m2=(1, 3, 3))
    assert unit.conv_m1.conv.groups == fibers
    # two 96->96 convs of 27 and 9 taps, each cut by the number of fibers, plus two BNs
    assert mfnet.count_params(unit) == (96 * 96 * 27 + 96 * 96 * 9) // fibers + 2 * 2 * 96


def test_ablation_variants_through_builder_arguments() -> None:
    counts = {f: mfnet.count_params(mfnet.create_model("mfnet3d", num_classes=400, fibers=f)) for f in (1, 4, 16)}
    assert counts[1] > counts[4] > counts[16] == 7_996_368
    no_mux = mfnet.create_model("mfnet3d", num_classes=400, multiplexer=False)
    assert not any("conv_i1" in name for name, _ in no_mux.named_parameters())
    assert mfnet.count_params(no_mux) < 7_996_368
    no_mux(torch.randn(1, 3, 4, 32, 32))


def test_unknown_model_and_arguments_are_clear() -> None:
    with pytest.raises(mfnet.MfnetError, match=r"unknown model 'mfnet3'.*mfnet3d"):
        mfnet.create_model("mfnet3")
    with pytest.raises(mfnet.MfnetError, match="does not take these arguments"):
        mfnet.create_model("mfnet3d", widht=3)


def test_the_stem_is_a_conv_bn_relu_sequential_with_the_authors_keys() -> None:
    model = mfnet.create_model("mfnet3d", num_classes=5)
    assert isinstance(model.conv1, nn.Sequential)
    assert [type(m) for m in model.conv1] == [nn.Conv3d, nn.BatchNorm3d, nn.ReLU]
    assert [k for k in model.state_dict() if k.startswith("conv1.")] == [
        "conv1.conv.weight",
        "conv1.bn.weight",
        "conv1.bn.bias",
        "conv1.bn.running_mean",
        "conv1.bn.running_var",
        "conv1.bn.num_batches_tracked",
    ]


def test_a_unit_pickled_before_the_backend_slot_still_runs() -> None:
    torch.manual_seed(0)
    unit = MultiFiberUnit(16, 32, 32, first=True, fibers=4).eval()
    old = copy.copy(unit)
    old.__dict__ = {k: v for k, v in unit.__dict__.items() if k != "backend"}  # as pickled by an older mfnet
    x = torch.randn(1, 16, 2, 5, 5)
    with torch.no_grad():
        expected = unit(x)
        for restored in (pickle.loads(pickle.dumps(old)), copy.deepcopy(old)):
            assert restored.backend is None
            torch.testing.assert_close(restored(x), expected)
