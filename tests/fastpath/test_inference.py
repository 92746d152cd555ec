"""The fast path computes what the plain model computes: every variant, inference and training."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import mfnet
from mfnet.fastpath import (
    autocast_context,
    optimize_for_inference,
    preferred_memory_format,
    prepare_for_training,
    to_channels_last,
    to_layout,
)
from mfnet.fastpath.fused import FusedConv
from mfnet.fastpath.onednn import fused_ops_available
from mfnet.fastpath.unit import FiberBackend
from mfnet.models.fiber import MultiFiberUnit
from numerics import max_rel_diff, randomize_bn

TOL = 1e-4  # relative to the largest plain output

needs_onednn = pytest.mark.skipif(not fused_ops_available(), reason="this PyTorch build has no oneDNN fusion ops")


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread: on a busy shared machine, OpenMP barriers with 2 threads stall far more than they gain."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _small3d(**kwargs) -> nn.Module:
    return randomize_bn(mfnet.create_model("mfnet3d", num_classes=10, **kwargs)).eval()


@pytest.mark.parametrize("mode", ["eager", pytest.param("fused", marks=needs_onednn)])
@pytest.mark.parametrize(
    "arch",
    [{}, {"multiplexer": False}, {"fibers": 1, "depths": (1, 2, 1, 1), "widths": (32, 64, 64, 128)}],
    ids=["mfnet3d", "no-multiplexer", "one-fiber"],
)
def test_video_model_matches_plain(mode, arch):
    model = _small3d(**arch)
    x = torch.randn(2, 3, 8, 64, 64, generator=torch.Generator().manual_seed(1))
    fast = optimize_for_inference(model, x, mode=mode, check=True)
    with torch.no_grad():
        assert max_rel_diff(fast(x), model(x)) < TOL
        assert max_rel_diff(fast.clip_features(x), model.clip_features(x)) < TOL
        # another clip size and batch than the example input
        y = torch.randn(1, 3, 4, 32, 64)
        assert max_rel_diff(fast(y), model(y)) < TOL
    info = fast.fastpath_info
    assert info.mode == mode and info.max_rel_diff < TOL
    # the stem BN, and in every unit conv_m2's BN (and conv_i2's with the multiplexer), are folded
    units = sum(arch.get("depths", (3, 4, 6, 3)))
    assert len(info.folded) == 1 + units * (1 if arch.get("multiplexer") is False else 2)
    assert info.fused_units == (units if mode == "fused" else 0)
    assert isinstance(fast, type(model)) and fast.num_classes == 10
    assert all(not p.requires_grad for p in fast.parameters())
    assert all(p.requires_grad for p in model.parameters()), "the original model must stay untouched"


@needs_onednn
@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (2, 3, 4, 64, 64)], ids=["images", "clips"])
def test_image_model_fused_matches_plain(shape):
    model = randomize_bn(mfnet.create_model("mfnet2d", num_classes=7)).eval()
    x = torch.randn(shape)
    fast = optimize_for_inference(model, x, mode="fused")
    assert fast.fastpath_info.fused_units == 16
    with torch.no_grad():
        assert max_rel_diff(fast(x), model(x)) < TOL
        assert max_rel_diff(fast.clip_features(x), model.clip_features(x)) < TOL


@needs_onednn
def test_fused_units_run_one_dnn_primitives_and_keep_channels_last():
    model = _small3d()
    x = torch.randn(1, 3, 4, 32, 32)
    fast = optimize_for_inference(model, x)  # auto: fused on this CPU
    assert fast.fastpath_info.mode == "fused"
    assert type(fast.conv2.B01) is MultiFiberUnit and isinstance(fast.conv1, FusedConv)
    assert isinstance(fast.conv2.B01.backend, FiberBackend) and fast.conv2.B01.backend.plan is not None
    assert model.conv2.B01.backend is None, "the original model must stay untouched"
    with torch.no_grad():
        features = fast.forward_features(x)
    assert features.is_contiguous(memory_format=torch.channels_last_3d)
    assert max_rel_diff(features, model.forward_features(x).detach()) < TOL


@needs_onednn
@pytest.mark.parametrize("groups", [1, 4])
def test_fused_conv_sums_into_the_shortcut_in_place(groups):
    """``add_in_place``: a dense convolution accumulates into ``add`` (returned); a grouped one adds as before."""
    torch.manual_seed(0)
    weight, bias = torch.randn(24, 16 // groups, 1, 1, 1), torch.randn(24)
    conv = FusedConv(weight, bias, padding=[0] * 3, stride=[1] * 3, dilation=[1] * 3, groups=groups)
    x = to_channels_last(torch.randn(2, 16, 3, 5, 7))
    shortcut = to_channels_last(torch.randn(2, 24, 3, 5, 7))
    expected = nn.functional.conv3d(x, weight, bias, groups=groups) + shortcut
    before = shortcut.clone()
    with torch.no_grad():
        target = shortcut.clone()
        got = conv(x, add=target, add_in_place=True)
        assert max_rel_diff(got, expected) < TOL
        assert (got.data_ptr() == target.data_ptr()) == (groups == 1)
        assert max_rel_diff(conv(x, add=shortcut), expected) < TOL
    assert torch.equal(shortcut, before)  # not in place: the shortcut is left as it was


@needs_onednn
def test_fused_model_survives_deepcopy_and_to():
    model = _small3d()
    x = torch.randn(1, 3, 4, 32, 32)
    fast = optimize_for_inference(model, x, mode="fused")
    twin = copy.deepcopy(fast).to("cpu", torch.float32)
    with torch.no_grad():
        assert torch.equal(twin(x), fast(x))


@needs_onednn
def test_torchvision_peer_matches_plain():
    from torchvision.models.video.resnet import BasicBlock, BasicStem, Conv3DSimple, VideoResNet

    # r3d_18's structure with one block per stage (faster to build)
    model = randomize_bn(VideoResNet(BasicBlock, [Conv3DSimple] * 4, [1, 1, 1, 1], BasicStem, num_classes=5)).eval()
    x = torch.randn(1, 3, 2, 32, 32)
    fast = optimize_for_inference(model, x, check=True)
    # Conv -> BN [-> ReLU] sequences (the stem, the blocks' convolutions) are fused; the residual sums stay eager
    assert isinstance(fast.stem, FusedConv) and isinstance(fast.layer2[0].conv1, FusedConv)
    with torch.no_grad():
        assert max_rel_diff(fast(x), model(x)) < TOL


@pytest.mark.slow  # Inductor compiles C++ kernels: 30-80 s on a busy 2-core machine
def test_compile_mode_matches_plain_and_reports_its_compile_time():
    model = _small3d(depths=(1, 1, 1, 1), widths=(32, 64, 64, 128))
    x = torch.randn(1, 3, 4, 32, 32)
    fast = optimize_for_inference(model, x, mode="compile")
    assert fast.fastpath_info.compile_s > 0
    with torch.inference_mode():
        assert max_rel_diff(fast(x), model(x)) < TOL


def test_unknown_mode_and_fused_on_other_dtypes_are_refused():
    model = _small3d()
    with pytest.raises(ValueError, match="unknown fast-path mode"):
        optimize_for_inference(model, torch.randn(1, 3, 4, 32, 32), mode="turbo")
    with pytest.raises(ValueError, match="float32"):
        optimize_for_inference(model.double(), torch.randn(1, 3, 4, 32, 32, dtype=torch.float64), mode="fused")


# Sizes that leave BN several values per channel in the last stage (training BN over 1-2 values is ill-conditioned).
@pytest.mark.parametrize("name,shape", [("mfnet3d", (2, 3, 4, 64, 64)), ("mfnet2d", (4, 3, 64, 64))])
def test_channels_last_training_step_matches_plain(name, shape):
    torch.manual_seed(0)
    plain = mfnet.create_model(name, num_classes=5).train()
    fast = prepare_for_training(copy.deepcopy(plain))
    x = torch.randn(shape)
    labels = torch.arange(shape[0]) % 5
    outputs = []
    for model, batch in ((plain, x), (fast, to_channels_last(x))):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loss = nn.functional.cross_entropy(model(batch), labels)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        optimizer.step()
        outputs.append((loss.detach(), grads, [p.detach().clone() for p in model.parameters()]))
    (loss_a, grads_a, params_a), (loss_b, grads_b, params_b) = outputs
    assert max_rel_diff(loss_b, loss_a) < TOL
    # Gradients agree less tightly, for two reasons that are not ours: ReLU makes them discontinuous (an entry
    # within float32 rounding of 0 can fall on the other side when a sum is taken in another order; plain fp32
    # against fp64 shows the same), and PyTorch's channels-last training BN normalises with ~20x the rounding
    # error of the NCHW kernel when a channel's mean is large against its spread. Measured L2 differences are
    # 6e-4 to 8e-3 (plain fp32 against fp64: up to 3e-3); the loss and the updated weights agree to 1e-4.
    flat_a, flat_b = torch.cat([g.flatten() for g in grads_a]), torch.cat([g.flatten() for g in grads_b])
    assert float((flat_b - flat_a).norm() / flat_a.norm()) < 2e-2
    assert max_rel_diff(torch.cat([p.flatten() for p in params_b]), torch.cat([p.flatten() for p in params_a])) < TOL
    assert fast.conv2.B02.conv_m1.conv.weight.is_contiguous(memory_format=torch.channels_last_3d) or name == "mfnet2d"
    # BN running statistics were updated identically
    assert torch.allclose(fast.tail.bn.running_mean, plain.tail.bn.running_mean, rtol=TOL, atol=1e-6)


def test_autocast_is_never_used_on_cpu():
    with autocast_context("cpu"):
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.float32


@pytest.mark.parametrize("name", mfnet.list_models())
def test_every_registered_model_matches_plain(name):
    """The default fast path on every family (mf_mobilenet_v2 has a depthwise conv inside its fiber units)."""
    model = randomize_bn(mfnet.create_model(name, num_classes=10)).eval()
    x = torch.randn((1, 3, 4, 64, 64) if model.input_ndim == 5 else (1, 3, 64, 64))
    fast = optimize_for_inference(model, x)
    with torch.no_grad():
        assert max_rel_diff(fast(x), model(x)) < TOL


def test_memory_format_follows_the_device_and_the_model():
    """cuDNN's grouped convolutions run faster in NCDHW; oneDNN's, and dense ones anywhere, in channels-last."""
    mf, dense = mfnet.create_model("mfnet3d", num_classes=10), torch.nn.Sequential(torch.nn.Conv3d(3, 8, 3))
    assert preferred_memory_format(mf, "cpu") == torch.channels_last_3d
    assert preferred_memory_format(mf, "cuda") == torch.contiguous_format
    assert preferred_memory_format(dense, "cuda") == torch.channels_last_3d
    assert preferred_memory_format(dense, "cpu", ndim=4) == torch.channels_last
    x = torch.randn(2, 3, 4, 8, 8)
    assert to_layout(x, torch.channels_last_3d).is_contiguous(memory_format=torch.channels_last_3d)
    assert to_layout(x.permute(0, 2, 1, 3, 4).transpose(1, 2), torch.contiguous_format).is_contiguous()
    fast = optimize_for_inference(mf, torch.randn(1, 3, 4, 64, 64))
    assert fast.fastpath_info.memory_format == torch.channels_last_3d


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the GPU machine)")
def test_the_copy_moves_to_the_example_device() -> None:
    """A model loaded on the CPU with an example on the GPU: the fast copy runs on the GPU (``Predictor`` relies on
    it), in NCDHW for MF-Net, and matches the model in fp32; the original stays on the CPU."""
    model = mfnet.create_model("mfnet3d", num_classes=5, widths=(96, 192, 96, 96), depths=(1, 2, 1, 1))
    model = randomize_bn(model).eval()
    x = torch.randn(2, 3, 4, 64, 64, device="cuda")
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        fast = optimize_for_inference(model, x, check=True)
    finally:
        torch.backends.cudnn.allow_tf32 = previous
    assert {t.device.type for t in [*fast.parameters(), *fast.buffers()]} == {"cuda"}
    assert fast.fastpath_info.memory_format == torch.contiguous_format
    assert fast.fastpath_info.max_rel_diff < TOL
    assert next(model.parameters()).device.type == "cpu"
    with torch.inference_mode(), autocast_context("cuda"):
        assert fast(x).shape == (2, 5)
