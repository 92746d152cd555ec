"""Export a classifier for deployment (ONNX or a ``torch.export`` ExportedProgram) and verify the artifact.

The exported graph is the inference model: eval mode, with every BatchNorm whose input comes from one
convolution alone folded into that convolution. In mfnet's pre-activation units (``BN -> ReLU -> Conv``)
that is the stem (``conv1.conv -> conv1.bn``), ``conv_m1.conv -> conv_m2.bn`` and ``conv_i1.conv ->
conv_i2.bn``; a BN that reads a residual sum (``conv_m1.bn``, ``conv_w1.bn``, ``tail.bn``, ...) stays.

Verification runs the artifact (ONNX Runtime, or ``torch.export.load``) and the original PyTorch model
on the same random clip and reports the largest absolute difference of the logits; above the tolerance
(``DEFAULT_TOLERANCE``, 1e-3 on logits, float32) the export counts as failed.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mfnet.engine.exported import META_KEY, load_exported
from mfnet.errors import MfnetError
from mfnet.fastpath.fold import fold_batchnorm

FORMATS = ("onnx", "torch-export")
DEFAULT_TOLERANCE = 1e-3
ONNX_OPSET = 18
INPUT_NAME = "clip"
OUTPUT_NAME = "logits"


@dataclass
class ExportResult:
    """What ``export_model`` wrote and how well the artifact matches PyTorch.

    Attributes:
        path: The written file.
        format: ``"onnx"`` or ``"torch-export"``.
        input_shape: The example input ``(N, C, T, H, W)`` (or ``(N, C, H, W)``) the graph was traced with.
        dynamic_batch: Whether the batch dimension is dynamic.
        folded: Names of the BatchNorm layers folded into the convolution before them.
        max_abs_diff: Largest absolute difference between artifact and PyTorch logits on a random input.
        tolerance: The threshold ``max_abs_diff`` was checked against.
    """

    path: Path
    format: str
    input_shape: tuple[int, ...]
    dynamic_batch: bool
    folded: list[str] = field(default_factory=list)
    max_abs_diff: float = float("nan")
    tolerance: float = DEFAULT_TOLERANCE

    @property
    def ok(self) -> bool:
        """Whether the artifact matched PyTorch within the tolerance."""
        return self.max_abs_diff <= self.tolerance


def inference_model(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` ready to export: eval mode, no gradients, BatchNorms folded where possible.

    Returns:
        The copy and the names of its folded BatchNorm layers.
    """
    prepared = copy.deepcopy(model).eval()
    for p in prepared.parameters():
        p.requires_grad_(False)
    return prepared, fold_batchnorm(prepared)


def export_model(
    model: nn.Module,
    path: str | Path,
    *,
    format: str,
    input_shape: tuple[int, ...],
    dynamic_batch: bool = False,
    meta: dict[str, Any] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
) -> ExportResult:
    """Exports ``model`` for inference to ``path`` and verifies the written artifact against PyTorch.

    Args:
        model: The classifier (any mode; it is copied, put in eval mode and BN-folded).
        path: Output file (``.onnx`` for ONNX, ``.pt2`` for an ExportedProgram by convention).
        format: ``"onnx"`` (dynamo exporter, opset ``ONNX_OPSET``) or ``"torch-export"``.
        input_shape: Example input, ``(N, 3, T, H, W)`` for video models; ``T, H, W`` are fixed in the graph.
        dynamic_batch: Make the batch dimension dynamic (the graph then accepts any ``N >= 1``).
        meta: The checkpoint's ``"mfnet"`` meta (model name, classes, ...), stored in the artifact as JSON.
        tolerance: Largest accepted absolute difference of the logits.
        seed: Seed of the random verification input.

    Returns:
        The ``ExportResult`` (check ``ok``; the file is kept either way).

    Raises:
        MfnetError: On an unknown format, an input shape the model rejects, or an exporter failure.
    """
    if format not in FORMATS:
        raise MfnetError(f"unknown export format {format!r}: use one of {', '.join(FORMATS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    reference = copy.deepcopy(model).eval()
    prepared, folded = inference_model(model)
    # torch.export specialises a dimension of size 1, so a dynamic batch is traced with two samples.
    trace_shape = (max(2, input_shape[0]), *input_shape[1:]) if dynamic_batch else tuple(input_shape)
    example = torch.randn(trace_shape, generator=torch.Generator().manual_seed(seed + 1))
    try:
        with torch.no_grad():
            prepared(example)
    except (RuntimeError, ValueError) as err:
        raise MfnetError(
            f"the model rejects input shape {'x'.join(map(str, input_shape))} ({err}); give --input as "
            "NxCxTxHxW with T even and H, W multiples of 32"
        ) from None
    meta_json = json.dumps(meta or {})
    if format == "onnx":
        _export_onnx(prepared, example, path, dynamic_batch=dynamic_batch, meta_json=meta_json)
    else:
        _export_program(prepared, example, path, dynamic_batch=dynamic_batch, meta_json=meta_json)
    result = ExportResult(path, format, tuple(input_shape), dynamic_batch, folded, tolerance=tolerance)
    result.max_abs_diff = verify_export(
        path, reference, input_shape=input_shape, dynamic_batch=dynamic_batch, seed=seed
    )
    return result


def _batch_dim() -> torch.export.Dim:
    return torch.export.Dim("batch", min=1, max=65536)


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path, *, dynamic_batch: bool, meta_json: str) -> None:
    try:
        import onnx
    except ImportError:
        raise MfnetError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'mfnet[onnx]'") from None
    # The exporter reports its steps on stdout; keep stdout for the command's own output.
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                opset_version=ONNX_OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: _batch_dim()},) if dynamic_batch else None,
                external_data=False,
                verbose=False,
            )
        except Exception as err:
            raise MfnetError(f"ONNX export failed ({type(err).__name__}: {err}); try --format torch-export") from None
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, meta_json
    onnx.save(proto, str(path))


def _export_program(
    model: nn.Module, example: torch.Tensor, path: Path, *, dynamic_batch: bool, meta_json: str
) -> None:
    try:
        program = torch.export.export(
            model, (example,), dynamic_shapes=({0: _batch_dim()},) if dynamic_batch else None, strict=False
        )
    except Exception as err:
        raise MfnetError(f"torch.export failed ({type(err).__name__}: {err}); try --format onnx") from None
    torch.export.save(program, str(path), extra_files={META_KEY: meta_json})


def verify_export(
    path: str | Path, reference: nn.Module, *, input_shape: tuple[int, ...], dynamic_batch: bool = False, seed: int = 0
) -> float:
    """Largest absolute difference between an exported artifact's logits and ``reference``'s.

    Both run on the same random normal input of ``input_shape`` (and, with ``dynamic_batch``, also on a
    batch of another size, so that the dynamic dimension is exercised).

    Args:
        path: An ``.onnx`` file (run with ONNX Runtime on CPU) or an ExportedProgram (``torch.export.load``).
        reference: The PyTorch model, in eval mode.
        input_shape: ``(N, C, T, H, W)`` of the check input.
        dynamic_batch: Whether to check a second batch size (``N + 2``).
        seed: Seed of the random inputs.
    """
    runner = load_exported(path)
    generator = torch.Generator().manual_seed(seed)
    batches = [input_shape[0], input_shape[0] + 2] if dynamic_batch else [input_shape[0]]
    worst = 0.0
    for n in batches:
        x = torch.randn((n, *input_shape[1:]), generator=generator)
        with torch.no_grad():
            expected = reference(x)
        got = runner(x)
        if got.shape != expected.shape:
            return float("inf")
        worst = max(worst, float((got - expected).abs().max()))
    return worst
