"""Tests of mfnet.tools.export: BatchNorm folding, ONNX and ExportedProgram round trips, verification."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

import mfnet
from mfnet.engine.exported import load_exported
from mfnet.errors import MfnetError
from mfnet.tools.export import (
    ONNX_OPSET,
    export_model,
    fold_batchnorm,
    inference_model,
    verify_export,
)
from numerics import randomize_bn

SMALL = {"depths": (1, 2, 1, 1), "widths": (32, 32, 64, 64)}
SHAPE = (1, 3, 8, 64, 64)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(mfnet.create_model("mfnet3d", num_classes=5, **SMALL)).eval()


def test_fold_batchnorm_pairs_and_equivalence(model: nn.Module) -> None:
    prepared, folded = inference_model(model)
    # The stem, and in each of the 5 units conv_i1 -> conv_i2.bn and conv_m1 -> conv_m2.bn.
    assert len(folded) == 1 + 2 * 5
    assert folded[0] == "conv1.bn" and "conv2.B01.conv_m2.bn" in folded and "conv2.B01.conv_i2.bn" in folded
    # BNs that read a residual sum (or the network input) stay.
    assert not any(name.endswith(("conv_m1.bn", "conv_w1.bn", "conv_i1.bn")) or name == "tail.bn" for name in folded)
    assert isinstance(prepared.conv2.B01.conv_m2.bn, nn.Identity) and prepared.conv2.B01.conv_m1.conv.bias is not None
    assert isinstance(model.conv2.B01.conv_m2.bn, nn.BatchNorm3d)  # the original is untouched
    x = torch.randn(2, *SHAPE[1:], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, out = model(x), prepared(x)
    assert ref.abs().max() > 0.01  # a non-trivial output
    assert (out - ref).abs().max() < 1e-4


def test_fold_batchnorm_leaves_untraceable_models_alone() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x)) if x.sum() > 0 else x  # data-dependent: fx cannot trace it

    assert fold_batchnorm(Branchy().eval()) == []


@pytest.mark.slow
def test_onnx_round_trip_with_dynamic_batch(model: nn.Module, tmp_path: Path) -> None:
    meta = {"model": "mfnet3d", "num_classes": 5, "classes": list("abcde")}
    result = export_model(model, tmp_path / "m.onnx", format="onnx", input_shape=SHAPE, dynamic_batch=True, meta=meta)
    assert result.ok and result.max_abs_diff < 1e-4 and len(result.folded) == 11
    proto = onnx.load(str(result.path))
    assert proto.opset_import[0].version >= 17 and ONNX_OPSET >= 17
    assert json.loads({p.key: p.value for p in proto.metadata_props}["mfnet"]) == meta
    runner = load_exported(result.path)
    assert runner.meta == meta and runner.input_shape == (None, 3, 8, 64, 64)
    for batch in (1, 3):
        x = torch.randn(batch, *SHAPE[1:])
        with torch.no_grad():
            assert (runner(x) - model(x)).abs().max() < 1e-4


@pytest.mark.slow
def test_torch_export_round_trip(model: nn.Module, tmp_path: Path) -> None:
    result = export_model(model, tmp_path / "m.pt2", format="torch-export", input_shape=SHAPE, meta={"model": "x"})
    assert result.ok and result.max_abs_diff < 1e-4
    runner = load_exported(result.path)
    assert runner.meta == {"model": "x"} and runner.input_shape == SHAPE
    program = torch.export.load(str(result.path))
    x = torch.randn(SHAPE)
    with torch.no_grad():
        assert (program.module()(x) - model(x)).abs().max() < 1e-4
    # A different model is caught by the verification.
    other = randomize_bn(mfnet.create_model("mfnet3d", num_classes=5, **SMALL), seed=3).eval()
    assert verify_export(result.path, other, input_shape=SHAPE) > 1e-3


def test_export_errors(model: nn.Module, tmp_path: Path) -> None:
    with pytest.raises(MfnetError, match="unknown export format"):
        export_model(model, tmp_path / "m.x", format="tflite", input_shape=SHAPE)
    with pytest.raises(MfnetError, match="rejects input shape"):
        export_model(model, tmp_path / "m.pt2", format="torch-export", input_shape=(1, 3, 8, 64))
    with pytest.raises(MfnetError, match="no exported model"):
        load_exported(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(MfnetError, match="ONNX Runtime cannot load"):
        load_exported(tmp_path / "junk.onnx")
