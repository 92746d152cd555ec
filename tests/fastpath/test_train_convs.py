"""The faster CPU backward of 3D convolutions gives PyTorch's gradients, for every shape MF-Net uses and more."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import mfnet
from mfnet.fastpath import kernels, native, prepare_for_training, to_channels_last, unit
from mfnet.fastpath.train_convs import conv3d_train, conv3d_weight_grad
from mfnet.fastpath.unit import FiberBackend

CL3D = torch.channels_last_3d

# (in, out, kernel, stride, padding, groups, bias, batch, frames)
CASES = [
    (96, 96, 3, 1, 1, 16, False, 3, 4),  # conv_m1: 6 channels per group, clips meet in the flat frame batch
    (32, 64, (3, 3, 3), (1, 2, 2), 1, 16, False, 2, 5),  # first unit of a stage: spatial stride
    (16, 96, 3, (2, 1, 1), 1, 16, False, 2, 8),  # conv2's first conv_m1: temporal stride, 1 input channel/group
    (12, 24, (1, 3, 3), (1, 2, 2), (0, 1, 1), 4, True, 2, 3),  # conv_m2 with a bias
    (8, 8, 1, 1, 0, 1, False, 2, 2),  # multiplexer 1x1x1
    (8, 16, (3, 1, 1), 1, (1, 0, 0), 2, True, 1, 5),  # temporal only, one clip
    (8, 16, 5, 1, 2, 2, False, 2, 2),  # taps longer than the clip
    (48, 48, 3, 1, 1, 2, False, 3, 4),  # 24 input channels per group: temporal taps folded into the channels
    (48, 96, 3, (1, 2, 2), 1, 2, False, 2, 5),  # ... with a spatial stride (conv5's first conv_m1)
    (48, 48, 5, 1, 2, 2, False, 2, 2),  # ... taps longer than the clip
    (3, 16, (3, 5, 5), (1, 2, 2), (1, 2, 2), 1, False, 2, 4),  # the stem
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-k{c[2]}-s{c[3]}-g{c[5]}")
@pytest.mark.parametrize("layout", ["channels_last", "plain"])
def test_gradients_match_pytorch(case: tuple, layout: str) -> None:
    c_in, c_out, kernel, stride, padding, groups, bias, batch, frames = case
    torch.manual_seed(0)
    plain = nn.Conv3d(c_in, c_out, kernel, stride, padding, groups=groups, bias=bias)
    fast = copy.deepcopy(plain)
    fmt = CL3D if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(batch, c_in, frames, 9, 10).contiguous(memory_format=fmt)
    x_plain, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_plain, y_fast = plain(x_plain), conv3d_train(fast, x_fast)
    torch.testing.assert_close(y_fast, y_plain, rtol=0, atol=0)
    grad = torch.randn_like(y_plain)
    y_plain.backward(grad)
    y_fast.backward(grad)
    torch.testing.assert_close(x_fast.grad, x_plain.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad, rtol=1e-5, atol=1e-4)
    if bias:
        torch.testing.assert_close(fast.bias.grad, plain.bias.grad, rtol=1e-5, atol=1e-4)


def test_weight_grad_splits_per_tap_exactly_at_clip_edges() -> None:
    """Weights that only see one frame pair at a clip edge: the subtracted edge pairs must cancel exactly."""
    torch.manual_seed(1)
    x = torch.randn(4, 4, 3, 5, 5).contiguous(memory_format=CL3D)
    weight = torch.randn(8, 2, 3, 3, 3).contiguous(memory_format=CL3D)
    grad = torch.zeros(4, 8, 3, 5, 5)
    grad[:, :, 0] = 1.0  # only the first output frame of each clip: tap 0 reads frame -1 (padding)
    grad = grad.contiguous(memory_format=CL3D)
    got = conv3d_weight_grad(grad, x, weight, (1, 1, 1), (1, 1, 1), 2)
    expected = torch.ops.aten.convolution_backward(
        grad, x, weight, None, [1, 1, 1], [1, 1, 1], [1, 1, 1], False, [0, 0, 0], 2, [False, True, False]
    )[1]
    assert got[:, :, 0].abs().max() == 0  # nothing leaks in from the previous clip
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("avx512", [False, True])  # the fiber kernel's weight gradient, or the batched product
def test_one_input_channel_per_group_on_the_kernel_and_without(avx512: bool) -> None:
    """conv2's first conv_m1 (16 -> 96 channels, 16 groups, temporal stride 2) at 28-wide frames: its weight
    gradient runs on the fiber kernel where the AVX-512 loop is on, else as an im2col matrix product; both give
    PyTorch's gradients."""
    if avx512 and not (native.load() and native.avx512_available()):
        pytest.skip("needs the native operators and AVX-512F/VL")
    torch.manual_seed(2)
    plain = nn.Conv3d(16, 96, 3, (2, 1, 1), 1, groups=16, bias=False)
    fast = copy.deepcopy(plain)
    x = torch.randn(2, 16, 6, 5, 28).contiguous(memory_format=CL3D)
    try:
        if native.load():
            assert native.set_avx512(avx512) == avx512
        assert kernels.weight_grad_fits(fast.weight, 16, (2, 1, 1), (1, 1, 1)) == avx512
        x_plain, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
        y_plain, y_fast = plain(x_plain), conv3d_train(fast, x_fast)
        grad = torch.randn_like(y_plain)
        y_plain.backward(grad)
        y_fast.backward(grad)
    finally:
        native.set_avx512()
    torch.testing.assert_close(x_fast.grad, x_plain.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    ("groups", "layout"),
    [(1, "channels_last"), (4, "channels_last"), (1, "plain")],  # fused by oneDNN; plain: a sum of its own
)
def test_residual_sum_in_the_convolution(groups: int, layout: str) -> None:
    torch.manual_seed(3)
    plain = nn.Conv3d(8, 16, 1, groups=groups, bias=False)
    fast = copy.deepcopy(plain)
    fmt = CL3D if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(2, 8, 3, 5, 6).contiguous(memory_format=fmt)
    add = torch.randn(2, 16, 3, 5, 6).contiguous(memory_format=fmt)
    inputs = [(x.clone().requires_grad_(), add.clone().requires_grad_()) for _ in range(2)]
    y_plain = plain(inputs[0][0]) + inputs[0][1]
    y_fast = conv3d_train(fast, inputs[1][0], inputs[1][1])
    torch.testing.assert_close(y_fast, y_plain, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(y_plain)
    y_plain.backward(grad)
    y_fast.backward(grad)
    for a, b in zip(inputs[0], inputs[1], strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad, rtol=1e-5, atol=1e-4)
    bias = torch.randn(1, 16, 1, 1, 1)  # an addend of another shape is broadcast, by a sum of its own
    torch.testing.assert_close(conv3d_train(fast, x, bias), plain(x) + bias, rtol=1e-5, atol=1e-5)


def test_forward_only_paths_are_untouched() -> None:
    conv = nn.Conv3d(4, 8, 3, padding=1)
    x = torch.randn(1, 4, 3, 6, 6)
    with torch.no_grad():
        assert conv3d_train(conv, x).grad_fn is None
    assert type(conv3d_train(conv, x).grad_fn).__name__ == "_FastBackwardBackward"  # with gradients: the fast one
    conv.requires_grad_(False)
    assert conv3d_train(conv, x).grad_fn is None


def test_prepared_mfnet_has_the_gradients_of_channels_last_pytorch(monkeypatch: pytest.MonkeyPatch) -> None:
    """mfnet3d with the fast convolution backward against the same channels-last model with PyTorch's own.

    The fused BatchNorm + ReLU of ``prepare_for_training`` is switched off here: it is more accurate than
    PyTorch's channels-last BatchNorm (``test_train_bn.py``), so the two would differ by more than the
    convolutions do. ``test_unit.py`` compares the whole prepared unit with the plain one.
    """
    monkeypatch.setattr(unit, "bn_relu_train_runs", lambda x, bn: False)
    torch.manual_seed(0)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = mfnet.create_model("mfnet3d", num_classes=5, widths=(96, 192, 192, 192), depths=(1, 2, 1, 1))
        reference = reference.to(memory_format=CL3D).train()
        fast = prepare_for_training(copy.deepcopy(reference))
        assert sum(isinstance(m, FiberBackend) and m.fast_training for m in fast.modules()) == 5
        assert list(fast.state_dict()) == list(reference.state_dict())
        x = to_channels_last(torch.randn(2, 3, 8, 32, 32))
        labels = torch.tensor([1, 3])
        for model in (reference, fast):
            nn.functional.cross_entropy(model(x), labels).backward()
        for (name, a), b in zip(reference.named_parameters(), fast.parameters(), strict=True):
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
    finally:
        torch.set_num_threads(previous)
