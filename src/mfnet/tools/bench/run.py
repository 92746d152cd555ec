"""``mfnet bench``: runs benchmark candidates in interleaved rounds and reports latency, throughput and memory.

The candidates and how each is prepared and stepped: ``mfnet.tools.bench.candidates``; the worker process that
runs one candidate alone: ``mfnet.tools.bench.worker``.
"""

from __future__ import annotations

import re
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import matplotlib.pyplot as plt
import torch
from matplotlib.ticker import FormatStrFormatter
from tqdm.auto import tqdm

from mfnet.errors import MfnetError
from mfnet.models import list_models
from mfnet.tools.bench.candidates import (
    ENGINES,
    MODES,
    PEER_MODELS,
    TRAIN_MAC_FACTOR,
    BenchReport,
    BenchRow,
    Candidate,
    _measure_memory,
    _prepare,
    _Prepared,
    build_benchmark_model,
    cannot_run,
    measure_matmul_gflops,
    parse_candidates,
)
from mfnet.tools.bench.worker import CandidateProcess

if TYPE_CHECKING:
    import matplotlib.axes


def run_benchmark(
    candidates: Sequence[Candidate],
    *,
    mode: str = "infer",
    batch: int = 1,
    device: str = "cpu",
    threads: int | None = None,
    warmup: int = 2,
    repeats: int = 5,
    num_classes: int = 400,
    memory: bool = True,
    seed: int = 0,
    progress: bool = True,
    isolate: bool | None = None,
) -> BenchReport:
    """Builds, warms up and times every candidate in interleaved rounds; returns the report.

    Args:
        candidates: What to time (see ``parse_candidates``).
        mode: ``"infer"`` (forward under ``inference_mode``) or ``"train"`` (forward, backward, SGD step).
        batch: Clips per step.
        device: ``"cpu"`` or ``"cuda"``; on CUDA the fast engine adds autocast (bf16/fp16).
        threads: CPU threads for PyTorch and ONNX Runtime (default: PyTorch's current setting).
        warmup: Untimed steps per candidate before the rounds.
        repeats: Timed rounds; each times one step of every candidate.
        num_classes: Classes of every classifier.
        memory: Measure peak memory (one extra step per candidate after the rounds).
        seed: Seed of the weights and inputs.
        progress: Show progress bars on stderr.
        isolate: Run each candidate in its own worker process (``mfnet.tools.bench.worker``), so that no
            candidate steps on a heap another one has shaped; the rounds stay interleaved. CPU only; default on.
    """

    if mode not in MODES:
        raise MfnetError(f"unknown benchmark mode {mode!r}: use infer or train")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise MfnetError("--device cuda was given but no CUDA GPU is visible; use --device cpu")
    if mode == "train" and any(c.engine in ("compile", "onnxruntime") for c in candidates):
        candidates = [c for c in candidates if c.engine not in ("compile", "onnxruntime")]
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        threads = torch.get_num_threads()
        prepared, peak = _time_candidates(
            candidates,
            mode=mode,
            batch=batch,
            device=device,
            threads=threads,
            warmup=warmup,
            repeats=repeats,
            num_classes=num_classes,
            memory=memory,
            seed=seed,
            progress=progress,
            isolate=torch.device(device).type == "cpu" and isolate is not False,
        )
    finally:
        torch.set_num_threads(previous_threads)
    rows = [_row(item, mode=mode, batch=batch, peak_gflops=peak) for item in prepared]
    return BenchReport(mode, _device_name(device, threads), threads, batch, repeats, peak, torch.__version__, rows)


def _time_candidates(
    candidates: Sequence[Candidate],
    *,
    mode: str,
    batch: int,
    device: str,
    threads: int,
    warmup: int,
    repeats: int,
    num_classes: int,
    memory: bool,
    seed: int,
    progress: bool,
    isolate: bool,
) -> tuple[list[_Prepared], float]:

    settings = {"mode": mode, "batch": batch, "threads": threads, "num_classes": num_classes, "seed": seed}
    prepared: list[_Prepared] = []
    try:
        for candidate in tqdm(candidates, desc="preparing", disable=None if progress else True, file=sys.stderr):
            prepared.append(
                _start_worker(candidate, settings, warmup)
                if isolate
                else _prepare_here(candidate, settings, warmup, device=device)
            )
        peak = measure_matmul_gflops(device=device)
        for round_index in tqdm(range(repeats), desc="timing", disable=None if progress else True, file=sys.stderr):
            shift = round_index % len(prepared)
            for item in prepared[shift:] + prepared[:shift]:  # rotate the order every round
                wall, cpu = item.timed_step(device)
                item.samples.append(wall)
                item.cpu_samples.append(cpu)
        peak = max(peak, measure_matmul_gflops(device=device))
    finally:
        for item in prepared:
            if item.worker is not None:
                item.worker.close()
    if memory:
        for item in prepared:
            item.peak_mem_mb = _measure_memory(item, device, **settings)
    return prepared, peak


def _prepare_here(candidate: Candidate, settings: dict, warmup: int, *, device: str) -> _Prepared:
    try:
        item = _prepare(candidate, device=device, **settings)
        for _ in range(warmup):
            item.step()
    except (RuntimeError, ValueError) as err:
        raise MfnetError(f"{cannot_run(candidate, settings['batch'], err)}; pick another --input") from None
    return item


def _start_worker(candidate: Candidate, settings: dict, warmup: int) -> _Prepared:
    try:
        worker = CandidateProcess(candidate, warmup=warmup, **settings)
    except MfnetError as err:
        raise MfnetError(f"{err}; pick another --input") from None
    return _Prepared(
        candidate, None, worker.params, worker.macs_per_clip, worker.state_bytes, worker.setup_s, worker=worker
    )


def _row(item: _Prepared, *, mode: str, batch: int, peak_gflops: float) -> BenchRow:
    samples_ms = [s * 1000 for s in item.samples]
    median = statistics.median(samples_ms)
    macs_per_step = item.macs_per_clip * batch * (TRAIN_MAC_FACTOR if mode == "train" else 1)
    gmacs = macs_per_step / (median / 1000) / 1e9
    return BenchRow(
        label=item.candidate.label,
        model=item.candidate.model,
        engine=item.candidate.engine,
        input_shape=[batch, 3, *item.candidate.clip_size],
        params=item.params,
        macs_per_clip=item.macs_per_clip,
        latency_ms=median,
        latency_ms_min=min(samples_ms),
        latency_ms_max=max(samples_ms),
        spread_pct=100 * (max(samples_ms) - min(samples_ms)) / median,
        cpu_ms=statistics.median(item.cpu_samples) * 1000,
        clips_per_s=batch / (median / 1000),
        gmacs_per_s=gmacs,
        peak_fraction=2 * gmacs / peak_gflops,
        peak_mem_mb=item.peak_mem_mb,
        setup_s=item.setup_s,
        samples_ms=samples_ms,
    )


def _device_name(device: str, threads: int) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name()
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = re.search(r"model name\s*:\s*(.+)", text).group(1).strip()
    except (OSError, AttributeError):
        model = "CPU"
    return f"{model} ({threads} threads)"


def format_table(report: BenchReport) -> str:
    """The report as a Markdown table, with each row's speed relative to the first row."""
    first = report.rows[0]
    header = (
        "| model | engine | input | params (M) | GMACs/clip | latency ms (min-max) | clips/s | x first "
        "| GMAC/s | % of peak | peak mem MB |"
    )
    lines = [header, "|" + "---|" * 11]
    for r in report.rows:
        lines.append(
            f"| {r.model} | {r.engine} | {'x'.join(map(str, r.input_shape))} | {r.params / 1e6:.2f} "
            f"| {r.macs_per_clip / 1e9:.2f} | {r.latency_ms:.0f} ({r.latency_ms_min:.0f}-{r.latency_ms_max:.0f}) "
            f"| {r.clips_per_s:.2f} | {first.latency_ms / r.latency_ms:.2f} | {r.gmacs_per_s:.1f} "
            f"| {100 * r.peak_fraction:.0f} | {r.peak_mem_mb:.0f} |"
        )
    lines.append(
        f"\n{report.mode}, batch {report.batch}, {report.device}, matmul peak {report.matmul_gflops:.0f} GFLOP/s, "
        f"{report.repeats} interleaved rounds, torch {report.torch_version}"
    )
    return "\n".join(lines)


def _label_offsets(
    ax: matplotlib.axes.Axes, points: list[tuple[str, float, float]], dpi: float
) -> list[tuple[str, float, float, float]]:
    """``(label, x, y, dy)`` for each point: the label's vertical offset in points, moved down from 3 until its box
    (7-point text to the right of the point) overlaps no label placed before it (points taken from the top)."""
    line = 10.0  # points per label line
    placed: list[tuple[float, float, float]] = []  # (x0, x1, y) of each label's box, in points on the figure
    out = []
    to_points = 72.0 / dpi
    for label, x, y in sorted(points, key=lambda p: -p[2]):
        px, py = (v * to_points for v in ax.transData.transform((x, y)))
        x0, x1 = px + 6, px + 6 + 3.8 * len(label)  # about 3.8 points per character at 7 points
        dy = 3.0
        while any(a < x1 and x0 < b and abs(py + dy - yb) < line for a, b, yb in placed):
            dy -= line
        placed.append((x0, x1, py + dy))
        out.append((label, x, y, dy))
    return out


def plot_efficiency(report: BenchReport, path: str | Path) -> Path:
    """Writes a PNG: clips/s against multiply-adds per clip (log-log), one labelled point per candidate.

    The dashed line is the machine's measured matrix-product peak: a model on it would turn every multiply-add
    into speed as well as a large matrix product does (training counts 3x the forward multiply-adds).
    """

    matplotlib.use("Agg")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    factor = (TRAIN_MAC_FACTOR if report.mode == "train" else 1) * report.batch
    gmacs = [r.macs_per_clip / 1e9 for r in report.rows]
    lo, hi = min(gmacs) / 1.5, max(gmacs) * 1.5
    peak_gmacs = report.matmul_gflops / 2
    ax.plot(
        [lo, hi],
        [peak_gmacs * report.batch / (lo * factor), peak_gmacs * report.batch / (hi * factor)],
        "k--",
        lw=0.8,
        label=f"matmul peak ({report.matmul_gflops:.0f} GFLOP/s)",
    )
    for r, g in zip(report.rows, gmacs, strict=True):
        ours = r.model in list_models()
        ax.scatter(g, r.clips_per_s, s=60, marker="o" if ours else "s", c="C0" if ours else "C1", zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi * 2.5)  # room for the labels
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(FormatStrFormatter("%g"))
        axis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.tick_params(which="minor", labelsize=7)
    ax.set_xlabel("multiply-adds per clip (G)")
    ax.set_ylabel(f"clips/s ({report.mode}, batch {report.batch})")
    ax.set_title(f"{report.mode}: {report.device}, torch {report.torch_version}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    points = [(r.label, g, r.clips_per_s) for r, g in zip(report.rows, gmacs, strict=True)]
    for label, g, clips, dy in _label_offsets(ax, points, fig.dpi):
        ax.annotate(label, (g, clips), textcoords="offset points", xytext=(6, dy), fontsize=7)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = [
    "ENGINES",
    "PEER_MODELS",
    "BenchReport",
    "BenchRow",
    "Candidate",
    "build_benchmark_model",
    "format_table",
    "measure_matmul_gflops",
    "parse_candidates",
    "plot_efficiency",
    "run_benchmark",
]
