"""Multi-fiber units with their residual sums inside the convolutions give the unit's outputs and gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from mfnet.models.fiber import MultiFiberUnit
from mfnet.tools import fiber_kernel
from mfnet.tools.train_bn import enable_fused_bn_relu
from mfnet.tools.train_convs import enable_fast_backward
from mfnet.tools.train_units import FastMultiFiberUnit, enable_fused_sums

CL3D = torch.channels_last_3d


def _prepared(unit: MultiFiberUnit) -> MultiFiberUnit:
    fast = copy.deepcopy(unit)
    enable_fast_backward(fast)
    enable_fused_bn_relu(fast)
    assert enable_fused_sums(fast) == 1 and isinstance(fast, FastMultiFiberUnit)
    return fast


@pytest.mark.parametrize(
    ("first", "width", "grad_fn"),
    [
        (False, 28, "_FiberConv3dBackward"),  # conv_m2 (1x3x3, 28 wide) on the fiber kernel adds the shortcut
        (False, 14, "_FastBackwardBackward"),  # 14 wide: oneDNN's grouped conv_m2 adds it
        (True, 28, "_FastBackwardBackward"),  # a first unit: oneDNN adds the projection into the dense conv_m2
    ],
)
def test_sums_in_the_convolutions_match_the_unit(first: bool, width: int, grad_fn: str) -> None:
    if grad_fn == "_FiberConv3dBackward" and fiber_kernel.load() is None:
        pytest.skip("the fiber kernel could not be built here")
    torch.manual_seed(0)
    unit = MultiFiberUnit(96, 96, 96, kernel_m1=3, kernel_m2=(1, 3, 3), first=first).train()
    unit = unit.to(memory_format=CL3D)
    fast = _prepared(unit)
    x = torch.randn(2, 96, 4, 6, width).contiguous(memory_format=CL3D)
    x_ref, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y_fast = unit(x_ref), fast(x_fast)
    assert type(y_fast.grad_fn).__name__ == grad_fn  # the sum has no operator of its own
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-4, atol=1e-4)
    grad = torch.randn_like(y_ref)
    y_ref.backward(grad)
    y_fast.backward(grad)
    torch.testing.assert_close(x_fast.grad, x_ref.grad, rtol=1e-3, atol=1e-3)
    for (name, a), b in zip(unit.named_parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-3, msg=name)


def test_units_without_the_fused_modules_run_as_built() -> None:
    unit = MultiFiberUnit(16, 32, 16, kernel_m1=3, kernel_m2=3, fibers=4).train()
    plain = copy.deepcopy(unit)
    assert enable_fused_sums(unit) == 1  # its convolutions are plain BnActConv: the unit's own forward runs
    x = torch.randn(1, 16, 2, 5, 5)
    torch.testing.assert_close(unit(x), plain(x))
