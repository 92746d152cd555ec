"""The fused training BatchNorm + ReLU computes what ``relu(nn.BatchNorm3d(x))`` computes, in float64 terms."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import mfnet
from mfnet.fastpath import native, prepare_for_training
from mfnet.fastpath.train_bn import bn_relu_train, bn_relu_train_runs
from mfnet.fastpath.unit import FiberBackend

pytestmark = pytest.mark.kernel
needs_kernel = pytest.mark.skipif(not native.load(), reason="native operators not built here (MFNET_KERNELS=0?)")
CL3D = torch.channels_last_3d


def _bn(channels: int) -> nn.BatchNorm3d:
    bn = nn.BatchNorm3d(channels, momentum=0.3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return bn


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


@needs_kernel
@pytest.mark.parametrize("shape", [(2, 16, 3, 5, 7), (3, 24, 5, 11, 13), (1, 96, 2, 3, 3)])
def test_matches_float64_batchnorm_relu(shape) -> None:
    """Several row blocks, a last partial block, a large mean against the spread (the shifted sums' case)."""
    torch.manual_seed(0)
    bn = _bn(shape[1])
    reference = copy.deepcopy(bn).double()
    x = (torch.randn(shape) * 2 + 6).contiguous(memory_format=CL3D)
    x_fused, x_ref = x.clone().requires_grad_(), x.double().requires_grad_()
    assert bn_relu_train_runs(x_fused, bn)
    y = bn_relu_train(x_fused, bn)
    y_ref = torch.relu(reference(x_ref))
    assert y.is_contiguous(memory_format=CL3D) and y.shape == x.shape
    grad = torch.randn(shape)
    y.backward(grad)
    y_ref.backward(grad.double())
    assert _rel(y, y_ref) < 1e-6
    assert _rel(x_fused.grad, x_ref.grad) < 1e-5
    assert _rel(bn.weight.grad, reference.weight.grad) < 1e-5
    assert _rel(bn.bias.grad, reference.bias.grad) < 1e-5
    assert _rel(bn.running_mean, reference.running_mean) < 1e-6
    assert _rel(bn.running_var, reference.running_var) < 1e-6
    assert int(bn.num_batches_tracked) == int(reference.num_batches_tracked) == 1


@needs_kernel
def test_runs_only_where_it_applies() -> None:
    wide = nn.BatchNorm3d(16)
    assert not bn_relu_train_runs(torch.randn(2, 12, 3, 4, 4).contiguous(memory_format=CL3D), nn.BatchNorm3d(12))
    assert not bn_relu_train_runs(torch.randn(2, 16, 3, 4, 4), wide)  # NCDHW
    assert not bn_relu_train_runs(torch.randn(1, 16, 1, 1, 1).contiguous(memory_format=CL3D), wide)  # one value
    assert not bn_relu_train_runs(torch.randn(2, 16, 3, 4, 4).contiguous(memory_format=CL3D), wide.eval())
    with torch.no_grad():
        assert not bn_relu_train_runs(torch.randn(2, 16, 3, 4, 4).contiguous(memory_format=CL3D), wide.train())


@needs_kernel
def test_prepared_model_uses_it_and_keeps_its_state_dict() -> None:
    model = mfnet.create_model("mfnet3d", num_classes=5)
    keys = list(model.state_dict())
    prepare_for_training(model)
    assert sum(isinstance(m, FiberBackend) and m.fast_training for m in model.modules()) == 16
    assert list(model.state_dict()) == keys


@needs_kernel
def test_nan_propagates_like_torch_relu() -> None:
    """A diverged batch must give NaN (the trainer stops on it), not zeros from the ReLU."""
    bn = _bn(16)
    x = torch.randn(2, 16, 2, 3, 3)
    x[0, 3, 1, 1, 1] = float("nan")
    y = bn_relu_train(x.contiguous(memory_format=CL3D).requires_grad_(), bn)
    assert torch.isnan(y[:, 3]).all() and not torch.isnan(y[:, 4]).any()
