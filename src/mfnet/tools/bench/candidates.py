"""Side-by-side speed benchmark of mfnet models and torchvision's video networks, in one process.

Every candidate (a model, an input size and an engine) is built and warmed up first; then the timed steps
run in interleaved rounds (each round times one step of every candidate, in a rotating order), so that
load from other processes and CPU frequency changes hit all candidates alike. Reported per candidate:
median latency and its spread over rounds, clips/s, multiply-adds per clip, achieved GMAC/s, the fraction
of the machine's matrix-product peak (measured in the same process), and peak memory.

An inference step is one forward pass of a batch; a training step is forward, cross-entropy loss,
backward and an SGD update. A training step is counted as 3x the forward multiply-adds (forward, and the
two products of the backward pass).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torchvision.models
import torchvision.models.video
from torch import nn

from mfnet.errors import MfnetError
from mfnet.fastpath import (
    autocast_context,
    optimize_for_inference,
    prepare_for_training,
    to_channels_last,
    to_layout,
)
from mfnet.models import create_model, list_models
from mfnet.models.macs import count_macs, count_params
from mfnet.tools.export import export_model

if TYPE_CHECKING:
    from mfnet.tools.bench.worker import CandidateProcess

PEER_MODELS = ("r3d_18", "mc3_18", "r2plus1d_18", "s3d")
ENGINES = ("fast", "plain", "compile", "onnxruntime")
MODES = ("infer", "train")
TRAIN_MAC_FACTOR = 3  # forward + backward (gradients of inputs and of weights) in multiply-adds


@dataclass
class Candidate:
    """One thing to time: a model at an input size, run by one engine.

    Attributes:
        model: A registered mfnet name or a torchvision video model name.
        clip_size: ``(T, H, W)`` of its input clips.
        engine: ``"fast"`` (mfnet's fast path), ``"plain"`` (the model as built), ``"compile"`` (fast path
            compiled with ``torch.compile``) or ``"onnxruntime"`` (our ONNX export run by ONNX Runtime).
    """

    model: str
    clip_size: tuple[int, int, int]
    engine: str = "fast"

    @property
    def label(self) -> str:
        size = "x".join(map(str, self.clip_size))
        return f"{self.model}@{size}" + ("" if self.engine == "fast" else f"[{self.engine}]")


@dataclass
class BenchRow:
    """The measurements of one candidate (see ``Candidate``); times are per step of ``batch`` clips.

    ``latency_ms`` is the median wall-clock time over the rounds (``_min``/``_max`` and ``spread_pct`` show its
    spread); ``cpu_ms`` the median CPU time of the whole process over a step (all threads; less sensitive to
    other processes on a busy machine, but it includes threads that spin while waiting).
    """

    label: str
    model: str
    engine: str
    input_shape: list[int]
    params: int
    macs_per_clip: int
    latency_ms: float
    latency_ms_min: float
    latency_ms_max: float
    spread_pct: float
    cpu_ms: float
    clips_per_s: float
    gmacs_per_s: float
    peak_fraction: float
    peak_mem_mb: float
    setup_s: float
    samples_ms: list[float] = field(default_factory=list)


@dataclass
class BenchReport:
    """A whole benchmark run: the machine, the settings and one ``BenchRow`` per candidate."""

    mode: str
    device: str
    threads: int
    batch: int
    repeats: int
    matmul_gflops: float
    torch_version: str
    rows: list[BenchRow]

    def row(self, label: str) -> BenchRow:
        """The row of a candidate label (``"mfnet3d@16x224x224"``, ``"r3d_18@16x112x112[plain]"``)."""
        for row in self.rows:
            if row.label == label:
                return row
        raise KeyError(label)

    def speedup(self, label: str, baseline: str) -> float:
        """How many times faster (median latency per step) candidate ``label`` is than ``baseline``."""
        return self.row(baseline).latency_ms / self.row(label).latency_ms

    def to_dict(self) -> dict:
        """A JSON-able dict (``rows`` as a list of dicts)."""
        return asdict(self)


def parse_candidates(spec: str, *, default_size: tuple[int, int, int], engines: Sequence[str]) -> list[Candidate]:
    """``"mfnet3d,r3d_18@16x112x112"`` -> candidates; each model is run with every engine in ``engines``.

    A model's own size (``@TxHxW``) overrides ``default_size``. Engines that do not apply to a model
    (``"compile"`` and ``"onnxruntime"`` only run mfnet models) are skipped for it.
    """
    out = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, _, size_text = item.partition("@")
        size = default_size
        if size_text:
            try:
                size = tuple(int(s) for s in size_text.lower().split("x"))
            except ValueError:
                size = ()
            if len(size) != 3 or min(size) <= 0:
                raise MfnetError(f"invalid clip size {size_text!r} in {item!r}: write TxHxW, e.g. 16x112x112")
        check_model_name(name)
        for engine in engines:
            if engine not in ENGINES:
                raise MfnetError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
            if engine in ("compile", "onnxruntime") and name not in list_models():
                continue
            out.append(Candidate(name, size, engine))
    if not out:
        raise MfnetError("no models to benchmark: give --models, e.g. --models mfnet3d,r3d_18")
    return out


def check_model_name(name: str) -> None:
    """Raises ``MfnetError`` unless ``name`` is an mfnet model or a torchvision video model."""
    if name in list_models() or name in _peer_builders():
        return
    known = ", ".join([*list_models(), *sorted(_peer_builders())])
    raise MfnetError(f"unknown model {name!r} for the benchmark: use one of {known}")


def _peer_builders() -> dict[str, Callable[..., nn.Module]]:

    names = torchvision.models.list_models(module=torchvision.models.video)
    return {name: torchvision.models.get_model_builder(name) for name in names}


def build_benchmark_model(name: str, *, num_classes: int = 400) -> nn.Module:
    """An mfnet model or a torchvision video model with random weights (nothing is downloaded)."""
    if name in list_models():
        return create_model(name, num_classes=num_classes)
    return _peer_builders()[name](weights=None, num_classes=num_classes)


def measure_matmul_gflops(*, device: str = "cpu", size: int = 2048, repeats: int = 5) -> float:
    """The best fp32 matrix-product rate (GFLOP/s) of ``size x size`` matrices: the machine's practical peak."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    best = math.inf
    for _ in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------------------
# Steps


@dataclass
class _Prepared:
    candidate: Candidate
    step: Callable[[], None] | None  # None when the candidate runs in a worker process
    params: int
    macs_per_clip: int
    state_bytes: int  # model (and optimizer) tensors resident before a step
    setup_s: float
    samples: list[float] = field(default_factory=list)
    cpu_samples: list[float] = field(default_factory=list)
    peak_mem_mb: float = float("nan")
    worker: CandidateProcess | None = None

    def timed_step(self, device: str) -> tuple[float, float]:
        """Runs one step (here or in the worker); returns its wall-clock and process CPU seconds."""
        if self.worker is not None:
            return self.worker.step()
        _sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        self.step()
        _sync(device)
        return time.perf_counter() - start, time.process_time() - cpu_start


def _prepare(
    candidate: Candidate, *, mode: str, batch: int, device: str, threads: int, num_classes: int, seed: int
) -> _Prepared:
    torch.manual_seed(seed)
    model = build_benchmark_model(candidate.model, num_classes=num_classes).to(device)
    shape = (batch, 3, *candidate.clip_size)
    params = count_params(model)
    macs = count_macs(model, (1, 3, *candidate.clip_size))
    weight_bytes = _tensor_bytes(model)  # of the model as built: the same yardstick for every engine
    x = torch.randn(shape, device=device)
    start = time.perf_counter()
    fast = candidate.engine != "plain"
    if mode == "train":
        step = _train_step(model, x, num_classes=num_classes, fast=fast, device=device)
        state = weight_bytes + 2 * sum(p.numel() * p.element_size() for p in model.parameters())  # + grads, momentum
    elif candidate.engine == "onnxruntime":
        step = _onnx_step(model, x, threads=threads)
        state = weight_bytes
    else:
        if fast:
            model = optimize_for_inference(model, x, mode="compile" if candidate.engine == "compile" else "auto")
            x = to_layout(x, model.fastpath_info.memory_format)
        step = _infer_step(model.eval(), x, amp=fast, device=device)
        state = weight_bytes
    setup_s = time.perf_counter() - start
    return _Prepared(candidate, step, params, macs, state, setup_s)


def _tensor_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def _infer_step(model: nn.Module, x: torch.Tensor, *, amp: bool, device: str) -> Callable[[], None]:
    def step() -> None:
        with torch.inference_mode(), autocast_context(device, enabled=amp):
            model(x)

    return step


def _train_step(model: nn.Module, x: torch.Tensor, *, num_classes: int, fast: bool, device: str) -> Callable[[], None]:
    if fast:
        model = prepare_for_training(model)
        x = to_channels_last(x)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    labels = torch.randint(0, num_classes, (x.shape[0],), device=device)
    scaler = torch.amp.GradScaler(device, enabled=fast and torch.device(device).type == "cuda")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(device, enabled=fast):
            loss = nn.functional.cross_entropy(model(x), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def _onnx_step(model: nn.Module, x: torch.Tensor, *, threads: int) -> Callable[[], None]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise MfnetError("the onnxruntime engine needs onnxruntime: pip install 'mfnet[onnx]'") from None

    folder = tempfile.mkdtemp(prefix="mfnet-bench-")
    path = Path(folder) / "model.onnx"
    result = export_model(model.cpu(), path, format="onnx", input_shape=tuple(x.shape))
    if not result.ok:
        raise MfnetError(f"the ONNX export differs from PyTorch by {result.max_abs_diff:.2e}; cannot benchmark it")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ORT's threads wait the way PyTorch's OpenMP threads do: with OMP_WAIT_POLICY=PASSIVE (a shared machine) they
    # must not spin, or idle ORT threads would steal the cores from the next candidate; otherwise both spin.
    passive = os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"
    options.add_session_config_entry("session.intra_op.allow_spinning", "0" if passive else "1")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.cpu().numpy()}

    def step() -> None:
        session.run(None, feed)

    return step


# ---------------------------------------------------------------------------------------------------------
# Memory


def _rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS since the last reset) of this process in MiB, from /proc (Linux)."""
    status = Path("/proc/self/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
    hwm = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))
    return rss / 1024, hwm / 1024


def _measure_memory(
    prepared: _Prepared, device: str, *, mode: str, batch: int, threads: int, num_classes: int, seed: int
) -> float:
    """Peak memory of one step in MiB: the model's resident tensors plus the step's peak above them.

    On CUDA: ``torch.cuda.max_memory_allocated`` over the step. On CPU: the first step of the candidate in a fresh
    Python process (``_child_peak_memory``), where no memory freed by earlier steps or models can be reused, so
    the peak RSS increase (Linux ``VmHWM``) is all the step's own; plus the model's parameters and buffers (and,
    in training, gradients and momentum). NaN where it cannot be measured.
    """
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        prepared.step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    spec = json.dumps(
        {"candidate": asdict(prepared.candidate), "mode": mode, "batch": batch, "threads": threads}
        | {"num_classes": num_classes, "seed": seed}
    )
    code = f"from mfnet.tools.bench.candidates import _child_peak_memory; _child_peak_memory({spec!r})"
    try:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, check=True)
        return float(result.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return float("nan")


def cannot_run(candidate: Candidate, batch: int, err: Exception) -> str:
    """The one-line message for a candidate whose model fails on its input."""
    return f"{candidate.label} cannot run on batch {batch} ({err})"


def prepare_from_spec(spec: dict) -> _Prepared:
    """Builds a candidate on the CPU from a JSON-decoded spec (``Candidate`` fields under ``"candidate"``, and
    ``mode``, ``batch``, ``threads``, ``num_classes``, ``seed``), in a process of its own, with its thread count."""
    fields = dict(spec["candidate"], clip_size=tuple(spec["candidate"]["clip_size"]))
    torch.set_num_threads(spec["threads"])
    settings = {k: spec[k] for k in ("mode", "batch", "threads", "num_classes", "seed")}
    return _prepare(Candidate(**fields), device="cpu", **settings)


def _child_peak_memory(spec: str) -> None:
    """In a fresh process: builds one candidate, runs its first step and prints its peak memory in MiB."""
    prepared = prepare_from_spec(json.loads(spec))
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before, _ = _rss_mb()
    prepared.step()
    _, peak = _rss_mb()
    print(prepared.state_bytes / 2**20 + max(0.0, peak - before))
