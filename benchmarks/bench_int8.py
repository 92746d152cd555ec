"""int8 inference for mfnet3d, measured against the fp32 fast path (`python benchmarks/bench_int8.py`).

Issue 7 names int8 (PT2E quantisation) as a mode to explore. Two int8 engines a user could pick, each calibrated
on ``--calib`` random clips and timed in interleaved rounds in this one process (batch 1, 2 threads):

- ONNX Runtime on our ONNX export, statically quantised (QDQ, per-channel int8 weights, uint8 activations);
- PT2E: ``torch.export``, torchao's ``X86InductorQuantizer``, then ``torch.compile`` with Inductor's freezing
  (int8 oneDNN kernels, VNNI where the CPU has it). Needs ``torchao``, which is not a dependency of mfnet
  (``pip install torchao``); without it that row is left out.

Against them: ``optimize_for_inference`` (fp32) and ONNX Runtime fp32 on the same export. For each int8 engine the
script reports how far its logits are from the fp32 model's (max abs difference, relative to the largest fp32
logit) and how often its top-1 class agrees, on ``--clips`` random clips. The weights are random unless
``--checkpoint`` is given, so these are deviations, not a change of accuracy on a dataset.

Writes ``<out>/int8.json`` and ``<out>/int8.md`` (the table it prints).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads libgomp (see bench_speed.py)

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mfnet import optimize_for_inference
from mfnet.models import create_model
from mfnet.models.checkpoint import model_from_checkpoint
from mfnet.tools.export import export_model

Engine = Callable[[torch.Tensor], torch.Tensor]
_CPU = ["CPUExecutionProvider"]


def ort_engines(
    model: torch.nn.Module, shape: tuple[int, ...], calib: list[torch.Tensor], threads: int, folder: Path
) -> dict:
    """ONNX Runtime fp32 and static int8 (QDQ) sessions on our export (files written to ``folder``), as engines
    ``clip -> logits``."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32, pre, int8 = folder / "model.onnx", folder / "model-pre.onnx", folder / "model-int8.onnx"
    export_model(model, fp32, format="onnx", input_shape=shape)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    name = ort.InferenceSession(str(fp32), providers=_CPU).get_inputs()[0].name

    class Clips(CalibrationDataReader):
        def __init__(self) -> None:
            self.clips = iter(calib)

        def get_next(self) -> dict | None:
            clip = next(self.clips, None)
            return None if clip is None else {name: clip.numpy()}

    tic = time.perf_counter()
    quant_pre_process(str(fp32), str(pre))  # shape inference and graph optimisation, as ORT's docs advise
    quantize_static(
        str(pre),
        str(int8),
        Clips(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    prepare_s = time.perf_counter() - tic
    return {
        "ONNX Runtime fp32": (_runner(ort.InferenceSession(str(fp32), options, providers=_CPU), name), None),
        "ONNX Runtime int8 (static, QDQ)": (
            _runner(ort.InferenceSession(str(int8), options, providers=_CPU), name),
            prepare_s,
        ),
    }


def _runner(session: object, name: str) -> Engine:
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])  # type: ignore[attr-defined]


def pt2e_engine(model: torch.nn.Module, example: torch.Tensor, calib: list[torch.Tensor]) -> tuple[Engine, float]:
    """PT2E int8 with torchao's X86InductorQuantizer, compiled by Inductor with freezing; (engine, seconds)."""
    import torch._inductor.config as inductor_config
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    tic = time.perf_counter()
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(torch.export.export(model, (example,)).module(), quantizer)
    with torch.no_grad():
        for clip in calib:
            prepared(clip)
        inductor_config.freezing = True  # weights become constants: int8 oneDNN convolutions with packed weights
        compiled = torch.compile(convert_pt2e(prepared))
        compiled(example)
    return compiled, time.perf_counter() - tic


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for package in ("torch", "onnxruntime", "torchao"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", default="16x224x224", help="clip size TxHxW (default: 16x224x224)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds (default: 7)")
    parser.add_argument("--calib", type=int, default=4, help="calibration clips (default: 4)")
    parser.add_argument("--clips", type=int, default=8, help="clips for the logit comparison (default: 8)")
    parser.add_argument("--checkpoint", default=None, help="an mfnet3d checkpoint (default: random weights)")
    parser.add_argument("--out", default="benchmarks/results/int8", help="output folder")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    shape = (1, 3, *(int(s) for s in args.input.split("x")))
    if args.checkpoint:
        model, _ = model_from_checkpoint(args.checkpoint, model_name="mfnet3d")
    else:
        model = create_model("mfnet3d", num_classes=400)
    model.eval()
    calib = [torch.randn(shape) for _ in range(args.calib)]
    clips = [torch.randn(shape) for _ in range(args.clips)]
    example = clips[0]

    engines: dict[str, tuple[Engine, float | None]] = {}
    tic = time.perf_counter()
    fast = optimize_for_inference(model, example)
    engines["mfnet fast path fp32"] = (fast, time.perf_counter() - tic)
    with tempfile.TemporaryDirectory(prefix="mfnet-int8-") as folder:  # sessions keep their models in memory
        engines.update(ort_engines(model, shape, calib, args.threads, Path(folder)))
    try:
        engines["PT2E int8 (torchao, Inductor)"] = pt2e_engine(model, example, calib)
    except ImportError:
        print("PT2E int8 left out: torchao is not installed (pip install torchao)")

    times: dict[str, list[float]] = {label: [] for label in engines}
    with torch.no_grad():
        reference = [model(clip) for clip in clips]
        outputs = {label: [engine(clip) for clip in clips] for label, (engine, _) in engines.items()}  # and warm-up
        for _ in range(args.repeats):
            for label, (engine, _) in engines.items():
                tic = time.perf_counter()
                engine(example)
                times[label].append(time.perf_counter() - tic)

    scale = max(float(r.abs().max()) for r in reference)
    rows = []
    for label, (_, prepare_s) in engines.items():
        diff = max(float((o - r).abs().max()) for o, r in zip(outputs[label], reference, strict=True))
        agree = np.mean([int(o.argmax() == r.argmax()) for o, r in zip(outputs[label], reference, strict=True)])
        rows.append(
            {
                "engine": label,
                "latency_ms": statistics.median(times[label]) * 1e3,
                "min_ms": min(times[label]) * 1e3,
                "max_ms": max(times[label]) * 1e3,
                "prepare_s": prepare_s,
                "max_abs_diff_rel": diff / scale,
                "top1_agreement": float(agree),
            }
        )
    fast_ms = rows[0]["latency_ms"]
    versions = ", ".join(f"{k} {v}" for k, v in _versions().items() if v)
    lines = [
        f"mfnet3d, input 1x3x{args.input}, {args.threads} threads, {args.repeats} interleaved rounds; {versions}",
        "",
        "| engine | latency ms (min-max) | vs fast path | prepare s | logit diff (rel.) | top-1 agreement |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        prepare = "" if r["prepare_s"] is None else f"{r['prepare_s']:.1f}"
        lines.append(
            f"| {r['engine']} | {r['latency_ms']:.0f} ({r['min_ms']:.0f}-{r['max_ms']:.0f}) | "
            f"{fast_ms / r['latency_ms']:.2f}x | {prepare} | {r['max_abs_diff_rel']:.1e} | {r['top1_agreement']:.2f} |"
        )
    print("\n".join(lines))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"input": args.input, "threads": args.threads, "repeats": args.repeats, "versions": _versions()}
    (out / "int8.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    (out / "int8.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
