"""`benchmarks/bench_speed.py`: the issue's targets (r3d_18 as shipped), the stricter comparison, `--rebuild`."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from mfnet.tools.bench import BenchReport, BenchRow

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_speed.py"


@pytest.fixture(scope="module")
def bench_speed():
    spec = importlib.util.spec_from_file_location("bench_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(label: str, latency_ms: float, peak_mem_mb: float = 100.0) -> BenchRow:
    model, _, rest = label.partition("@")
    engine = rest.partition("[")[2].rstrip("]") or "fast"
    return BenchRow(
        label=label, model=model, engine=engine, input_shape=[1, 3, 16, 112, 112], params=1, macs_per_clip=10**9,
        latency_ms=latency_ms, latency_ms_min=latency_ms, latency_ms_max=latency_ms, spread_pct=0.0, cpu_ms=0.0,
        clips_per_s=1000 / latency_ms, gmacs_per_s=1.0, peak_fraction=0.01, peak_mem_mb=peak_mem_mb, setup_s=0.0,
    )  # fmt: skip


def _report(mode: str, rows: list[BenchRow]) -> BenchReport:
    return BenchReport(mode=mode, device="cpu", threads=2, batch=1, repeats=3, matmul_gflops=100.0,
                       torch_version="x", rows=rows)  # fmt: skip


def test_targets_are_checked_against_r3d_18_as_shipped_and_compared_with_its_best_engine(bench_speed) -> None:
    infer = _report("infer", [
        _row("mfnet3d@16x224x224", 150.0), _row("mfnet3d@16x224x224[plain]", 500.0),
        _row("mfnet3d@16x224x224[onnxruntime]", 240.0), _row("r3d_18@16x112x112", 350.0),
        _row("r3d_18@16x112x112[plain]", 460.0),
    ])  # fmt: skip
    train = _report("train", [
        _row("mfnet3d@16x112x112", 1500.0, 1500.0), _row("r3d_18@16x112x112", 9000.0, 2700.0),
        _row("r3d_18@16x112x112[plain]", 13000.0, 1400.0),
    ])  # fmt: skip
    lines = bench_speed.check_targets(infer, train)
    assert "- mfnet3d@224 (fast) vs r3d_18@16x112x112[plain] (as shipped): 3.07x (target 2.5x: met)" in lines
    assert (
        "- for comparison (not a target), mfnet3d@224 (fast) vs r3d_18@16x112x112 (best engine): 2.33x (below 2.5x)"
        in lines
    )
    assert "- mfnet3d@224 (fast) vs ONNX Runtime: 1.60x (target 1.5x: met)" in lines
    assert "- mfnet3d train step (fast) vs r3d_18@16x112x112[plain] (as shipped): 8.67x (target 8.0x: met)" in lines
    assert (
        "- for comparison (not a target), mfnet3d train step (fast) vs r3d_18@16x112x112 (best engine): 6.00x "
        "(below 8.0x)" in lines
    )
    assert "- peak memory: mfnet3d 1500 MB vs r3d_18@16x112x112[plain] 1400 MB: NOT lower" in lines
    assert "- for comparison, peak memory: mfnet3d 1500 MB vs r3d_18@16x112x112 2700 MB: lower" in lines


def test_a_plain_r3d_18_that_is_also_the_fastest_is_checked_once(bench_speed) -> None:
    infer = _report("infer", [
        _row("mfnet3d@16x224x224", 100.0), _row("mfnet3d@16x224x224[plain]", 300.0),
        _row("mfnet3d@16x224x224[onnxruntime]", 200.0), _row("r3d_18@16x112x112", 400.0),
        _row("r3d_18@16x112x112[plain]", 300.0),
    ])  # fmt: skip
    lines = [line for line in bench_speed.check_targets(infer, None) if "r3d_18" in line]
    assert lines == ["- mfnet3d@224 (fast) vs r3d_18@16x112x112[plain] (as shipped): 3.00x (target 2.5x: met)"]


def test_rebuild_rewrites_the_summary_from_the_json_files(bench_speed, tmp_path, capsys) -> None:
    train = _report("train", [_row("mfnet3d@16x112x112", 1000.0), _row("r3d_18@16x112x112[plain]", 9000.0)])
    (tmp_path / "speed_train.json").write_text(json.dumps(train.to_dict()))
    (tmp_path / "speed.md").write_text("old\n\nOMP_WAIT_POLICY=PASSIVE, load average at the end: 0.5 on 2 CPUs\n")
    assert bench_speed.rebuild(tmp_path) == 0
    text = (tmp_path / "speed.md").read_text()
    assert text.startswith("## Training step\n\n| model |")
    assert "vs r3d_18@16x112x112[plain] (as shipped): 9.00x (target 8.0x: met)" in text
    assert text.rstrip().endswith("load average at the end: 0.5 on 2 CPUs")
    assert bench_speed.rebuild(tmp_path / "nothing") == 2
    assert "run the benchmark first" in capsys.readouterr().err


def test_user_order_summary_checks_the_targets_and_the_import_order() -> None:
    path = SCRIPT.with_name("bench_user_order.py")
    spec = importlib.util.spec_from_file_location("bench_user_order", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    infer = {"mfnet3d": [0.15, 0.16, 0.17], "r3d_18": [0.42] * 3, "onnxruntime": [0.20] * 3}
    lines = module.summarize(
        {"torch": {"infer": infer, "train": {"mfnet3d": [1.5], "r3d_18": [9.0]}}, "mfnet": {"infer": infer}},
        {"torch": 2.1e-7, "mfnet": 3e-4},
    )
    text = "\n".join(lines)
    assert "torch first, inference: mfnet3d@224 vs r3d_18: 2.62x (target 2.5x: met)" in text
    assert "torch first, inference: mfnet3d@224 vs onnxruntime: 1.25x (target 1.5x: NOT met)" in text
    assert "torch first, training step: mfnet3d 1500 ms, 6.00x faster than r3d_18" in text
    assert "mfnet first vs torch first, infer vs r3d_18: +0.0% (within 5%)" in text
    assert "torch first: fast path against the plain model, 2.1e-07 relative (1e-4: met)" in text
    assert "mfnet first: fast path against the plain model, 3.0e-04 relative (1e-4: NOT met)" in text
