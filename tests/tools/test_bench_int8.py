"""`benchmarks/bench_int8.py` on a small clip: every engine runs, is timed and is compared with the fp32 model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

pytest.importorskip("onnxruntime")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_int8.py"


def test_int8_benchmark_times_each_engine_and_measures_its_deviation(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_int8", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    argv = ["--input", "4x32x32", "--repeats", "2", "--calib", "1", "--clips", "2", "--out", str(tmp_path)]
    assert module.main(argv) == 0

    result = json.loads((tmp_path / "int8.json").read_text())
    rows = {row["engine"]: row for row in result["rows"]}
    assert {"mfnet fast path fp32", "ONNX Runtime fp32", "ONNX Runtime int8 (static, QDQ)"} <= set(rows)
    for row in rows.values():
        assert row["min_ms"] <= row["latency_ms"] <= row["max_ms"]
        assert 0.0 <= row["top1_agreement"] <= 1.0
    # fp32 engines compute the model's logits; int8 ones only approximate them
    assert rows["mfnet fast path fp32"]["max_abs_diff_rel"] < 1e-4
    assert rows["ONNX Runtime fp32"]["max_abs_diff_rel"] < 1e-4
    assert 0.0 < rows["ONNX Runtime int8 (static, QDQ)"]["max_abs_diff_rel"] < 0.5
    assert result["meta"]["versions"]["torch"]
    assert "| ONNX Runtime int8 (static, QDQ) |" in (tmp_path / "int8.md").read_text()
