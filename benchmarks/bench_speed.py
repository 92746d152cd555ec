"""The speed benchmark (`python benchmarks/bench_speed.py`): the user-order run first, then every engine.

First, as a user meets it (``bench_user_order.py``): one process with ``import torch`` then ``import mfnet`` (and
again with mfnet first), no environment variable set, mfnet3d's fast path against r3d_18 as shipped in the same
process and ONNX Runtime in its own; its figures are the ones the README quotes. Then the engine table, each
candidate in a worker process of its own (``mfnet.tools.bench``): inference: mfnet3d at 1x3x16x224x224 (fast
path, plain, our ONNX export in ONNX Runtime, optionally torch.compile) against torchvision's r3d_18 / mc3_18 /
r2plus1d_18 at 1x3x16x112x112. Training: one SGD step on a batch of 8 clips of 16x112x112, mfnet3d against
r3d_18. Candidates are timed in interleaved rounds; the targets compare medians of the same run:

- mfnet3d inference at 224 >= 2.5x faster than r3d_18 at 112, and >= 1.5x faster than ONNX Runtime on our own
  export;
- mfnet3d training step >= 8x faster than r3d_18, with lower peak memory.

Each r3d_18 target is checked against r3d_18 as torchvision ships it (``[plain]``, the baseline of the issue's own
figures); the ratio against r3d_18 at its best engine (our fast path: BatchNorms folded, channels-last), a stricter
comparison, is reported beside it, not as a target. ``--rebuild`` rewrites ``speed.md`` from the JSON files of an
earlier run in ``--out``.

Writes ``<out>/speed_infer.json``, ``speed_train.json``, ``speed.md`` (tables and target checks) and
``speed_infer.png`` / ``speed_train.png`` (clips/s against multiply-adds per clip).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

from mfnet.tools.bench import BenchReport, BenchRow, Candidate, format_table, plot_efficiency, run_benchmark

_USER_ORDER = Path(__file__).with_name("bench_user_order.py")
MF = "mfnet3d@16x224x224"
MF_TRAIN = "mfnet3d@16x112x112"
R3D = "r3d_18@16x112x112"


def infer_candidates(*, compile: bool, peers: bool) -> list[Candidate]:
    out = [
        Candidate("mfnet3d", (16, 224, 224), "fast"),
        Candidate("mfnet3d", (16, 224, 224), "plain"),
        Candidate("mfnet3d", (16, 224, 224), "onnxruntime"),
        Candidate("r3d_18", (16, 112, 112), "fast"),
        Candidate("r3d_18", (16, 112, 112), "plain"),
    ]
    if compile:
        out.insert(3, Candidate("mfnet3d", (16, 224, 224), "compile"))
    if peers:
        out += [Candidate(name, (16, 112, 112), "plain") for name in ("mc3_18", "r2plus1d_18")]
    return out


def train_candidates() -> list[Candidate]:
    return [
        Candidate("mfnet3d", (16, 112, 112), "fast"),
        Candidate("mfnet3d", (16, 112, 112), "plain"),
        Candidate("r3d_18", (16, 112, 112), "fast"),
        Candidate("r3d_18", (16, 112, 112), "plain"),
    ]


def best(report: BenchReport, model_prefix: str) -> tuple[str, float]:
    """The fastest row (label, median latency) among the engines of one model and size."""
    rows = [r for r in report.rows if r.label.startswith(model_prefix)]
    row = min(rows, key=lambda r: r.latency_ms)
    return row.label, row.latency_ms


def check_targets(infer: BenchReport | None, train: BenchReport | None) -> list[str]:
    """The target lines of ``speed.md``. The first r3d_18 baseline (as shipped, where it ran) is the target; the ratio
    against r3d_18 at its best engine follows as a comparison, marked as such."""
    lines = []
    if infer is not None:
        fast = infer.row(MF).latency_ms
        for i, (label, how) in enumerate(_baselines(infer)):
            ratio = infer.row(label).latency_ms / fast
            lines.append((_comparison if i else _target)(f"mfnet3d@224 (fast) vs {label} ({how})", ratio, 2.5))
        lines.append(
            _target("mfnet3d@224 (fast) vs ONNX Runtime", infer.row(f"{MF}[onnxruntime]").latency_ms / fast, 1.5)
        )
        lines.append(f"- fast path vs plain mfnet3d: {infer.row(f'{MF}[plain]').latency_ms / fast:.2f}x")
    if train is not None:
        fast_row = train.row(MF_TRAIN)
        for i, (label, how) in enumerate(_baselines(train)):
            ratio = train.row(label).latency_ms / fast_row.latency_ms
            lines.append((_comparison if i else _target)(f"mfnet3d train step (fast) vs {label} ({how})", ratio, 8.0))
        for i, (label, _) in enumerate(_baselines(train)):
            r3d_mem = train.row(label).peak_mem_mb
            lower = fast_row.peak_mem_mb < r3d_mem
            verdict = ("lower" if lower else "not lower") if i else ("lower (met)" if lower else "NOT lower")
            prefix = "for comparison, " if i else ""
            lines.append(
                f"- {prefix}peak memory: mfnet3d {fast_row.peak_mem_mb:.0f} MB vs {label} {r3d_mem:.0f} MB: {verdict}"
            )
    return lines


def _baselines(report: BenchReport) -> list[tuple[str, str]]:
    """The r3d_18 rows the targets compare with, as (label, which): as torchvision ships it (``[plain]``, where it
    ran), then at its best engine, where that is another row."""
    out = []
    plain = f"{R3D}[plain]"
    if any(r.label == plain for r in report.rows):
        out.append((plain, "as shipped"))
    label, _ = best(report, R3D)
    if label != plain or not out:
        out.append((label, "best engine"))
    return out


def _target(what: str, ratio: float, goal: float) -> str:
    return f"- {what}: {ratio:.2f}x (target {goal}x: {'met' if ratio >= goal else 'NOT met'})"


def _comparison(what: str, ratio: float, goal: float) -> str:
    """A ratio reported beside a target (the stricter r3d_18 baseline), with the target's factor for scale."""
    side = "at or above" if ratio >= goal else "below"
    return f"- for comparison (not a target), {what}: {ratio:.2f}x ({side} {goal}x)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds (default: 7)")
    parser.add_argument("--train-repeats", type=int, default=5, help="interleaved rounds for training (default: 5)")
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile fast path")
    parser.add_argument("--peers", action="store_true", help="also time mc3_18 and r2plus1d_18 (inference)")
    parser.add_argument("--skip-infer", action="store_true")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/speed", help="output folder")
    parser.add_argument("--skip-user-order", action="store_true", help="skip the one-process user-order run")
    parser.add_argument("--rebuild", action="store_true", help="rewrite speed.md from the JSON files in --out")
    args = parser.parse_args()
    out = Path(args.out)
    if args.rebuild:
        return rebuild(out)
    out.mkdir(parents=True, exist_ok=True)
    infer = train = None
    sections = []
    if not args.skip_user_order:
        argv = ["--threads", str(args.threads), "--out", str(out), "--train-repeats", str(args.train_repeats)]
        _user_order().main(argv + (["--skip-train"] if args.skip_train else []))
        sections.append((out / "user_order.md").read_text().strip())
    if not args.skip_infer:
        infer = run_benchmark(
            infer_candidates(compile=args.compile, peers=args.peers), threads=args.threads, repeats=args.repeats
        )
        (out / "speed_infer.json").write_text(json.dumps(infer.to_dict(), indent=1))
        plot_efficiency(infer, out / "speed_infer.png")
        sections.append("## Inference\n\n" + format_table(infer))
    if not args.skip_train:
        train = run_benchmark(
            train_candidates(), mode="train", batch=8, threads=args.threads, warmup=1, repeats=args.train_repeats
        )
        (out / "speed_train.json").write_text(json.dumps(train.to_dict(), indent=1))
        plot_efficiency(train, out / "speed_train.png")
        sections.append("## Training step\n\n" + format_table(train))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    footer = f"settings: OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')}, "
    footer += f"load average at the end: {load:.1f} on {os.cpu_count()} CPUs"
    return write_summary(out, sections, infer, train, footer)


def _user_order():
    """``bench_user_order.py`` beside this script, as a module."""
    spec = importlib.util.spec_from_file_location("bench_user_order", _USER_ORDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_summary(
    out: Path, sections: list[str], infer: BenchReport | None, train: BenchReport | None, footer: str
) -> int:
    """Writes ``speed.md`` (the tables in ``sections``, the target checks, ``footer``) and prints it."""
    targets = check_targets(infer, train)
    text = "\n\n".join([*sections, "## Targets\n\n" + "\n".join(targets) + "\n\n" + footer]) + "\n"
    (out / "speed.md").write_text(text)
    print(text)
    return 0


def rebuild(out: Path) -> int:
    """``speed.md`` again from the JSON files of an earlier run in ``out`` (its last line, the run's settings and
    load, is kept)."""
    reports = {}
    for mode in ("infer", "train"):
        path = out / f"speed_{mode}.json"
        if path.exists():
            data = json.loads(path.read_text())
            reports[mode] = BenchReport(**{**data, "rows": [BenchRow(**row) for row in data["rows"]]})
    if not reports:
        print(f"error: no speed_infer.json or speed_train.json in {out}; run the benchmark first", file=sys.stderr)
        return 2
    titles = {"infer": "## Inference", "train": "## Training step"}
    sections = [f"{titles[mode]}\n\n{format_table(report)}" for mode, report in reports.items()]
    old = (out / "speed.md").read_text().strip().splitlines() if (out / "speed.md").exists() else []
    kept = old and old[-1].startswith(("settings: ", "OMP_WAIT_POLICY="))
    footer = old[-1] if kept else "rebuilt from the JSON files"
    if (out / "user_order.md").exists():
        sections.insert(0, (out / "user_order.md").read_text().strip())
    return write_summary(out, sections, reports.get("infer"), reports.get("train"), footer)


if __name__ == "__main__":
    raise SystemExit(main())
