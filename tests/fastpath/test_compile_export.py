"""``torch.compile`` and ``torch.export`` trace through the fast model, native operators included (their fake
implementations), and agree with the plain model."""

from __future__ import annotations

import pytest
import torch

import mfnet
from mfnet.fastpath import native, optimize_for_inference
from numerics import max_rel_diff

TOL = 1e-4


@pytest.fixture(scope="module")
def models() -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = mfnet.create_model("mfnet3d", num_classes=5, widths=(96, 192, 96, 96), depths=(2, 1, 1, 1)).eval()
    x = torch.randn(1, 3, 4, 64, 64)  # conv2 and conv3 28 and 16 wide: their units run on the native operators
    return model, optimize_for_inference(model, x), x


def test_export_traces_the_native_operators_and_agrees(models) -> None:
    model, fast, x = models
    program = torch.export.export(fast, (x,))
    if native.load():
        assert "mfnet" in str(program.graph)  # the operators are in the graph, not traced around
    with torch.no_grad():
        assert max_rel_diff(program.module()(x), model(x)) < TOL


@pytest.mark.slow
def test_compile_agrees(models) -> None:
    model, fast, x = models
    compiled = torch.compile(fast)
    with torch.no_grad():
        assert max_rel_diff(compiled(x), model(x)) < TOL
