"""``mfnet bench`` and ``mfnet.tools.bench`` on tiny inputs: the report's schema and its arithmetic."""

from __future__ import annotations

import json

import pytest
import torch

from mfnet.cli import main
from mfnet.errors import MfnetError
from mfnet.models.macs import count_macs, count_params
from mfnet.tools.bench import Candidate, build_benchmark_model, parse_candidates, plot_efficiency, run_benchmark

pytestmark = pytest.mark.slow

ROW_KEYS = {
    "label",
    "model",
    "engine",
    "input_shape",
    "params",
    "macs_per_clip",
    "latency_ms",
    "latency_ms_min",
    "latency_ms_max",
    "spread_pct",
    "cpu_ms",
    "clips_per_s",
    "gmacs_per_s",
    "peak_fraction",
    "peak_mem_mb",
    "setup_s",
    "samples_ms",
}


def _check_row(row: dict, *, batch: int, repeats: int, train: bool = False) -> None:
    assert set(row) == ROW_KEYS
    assert len(row["samples_ms"]) == repeats
    assert row["latency_ms_min"] <= row["latency_ms"] <= row["latency_ms_max"]
    assert row["clips_per_s"] == pytest.approx(batch * 1000 / row["latency_ms"])
    factor = 3 if train else 1
    assert row["gmacs_per_s"] == pytest.approx(row["macs_per_clip"] * batch * factor / row["latency_ms"] / 1e6)
    assert 0 < row["peak_fraction"] < 5  # a fraction of the measured matmul peak (small models can beat it)
    assert row["peak_mem_mb"] > row["params"] * 4 / 2**20  # at least the weights


def test_bench_json_compares_models_and_engines(capsys):
    status = main(
        [
            "bench",
            "--models",
            "mfnet3d,mc3_18@2x32x32",
            "--input",
            "4x32x32",
            "--repeats",
            "2",
            "--warmup",
            "1",
            "--threads",
            "1",
            "--plain",
            "--json",
            "--same-process",  # the worker processes are tested with the training step
        ]
    )
    assert status == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mode"] == "infer" and report["batch"] == 1 and report["threads"] == 1
    assert report["matmul_gflops"] > 0
    labels = [r["label"] for r in report["rows"]]
    assert labels == ["mfnet3d@4x32x32", "mfnet3d@4x32x32[plain]", "mc3_18@2x32x32", "mc3_18@2x32x32[plain]"]
    for row in report["rows"]:
        _check_row(row, batch=1, repeats=2)
    mf, mc3 = report["rows"][0], report["rows"][2]
    assert mf["input_shape"] == [1, 3, 4, 32, 32] and mc3["input_shape"] == [1, 3, 2, 32, 32]
    model = build_benchmark_model("mfnet3d")
    assert mf["params"] == count_params(model) == 7_996_368
    assert mf["macs_per_clip"] == count_macs(model, (1, 3, 4, 32, 32))
    assert mc3["params"] == 11_695_440 and mc3["macs_per_clip"] == 442_474_496  # torchvision mc3_18, 400 classes


def test_bench_restores_thread_count_and_runs_a_training_step(tmp_path):
    before = torch.get_num_threads()
    report = run_benchmark(
        [Candidate("mfnet3d", (4, 32, 32)), Candidate("mfnet3d", (4, 32, 32), "plain")],
        mode="train",
        batch=2,
        threads=1,
        warmup=1,
        repeats=2,
        progress=False,
    )
    assert torch.get_num_threads() == before
    for row in report.to_dict()["rows"]:
        _check_row(row, batch=2, repeats=2, train=True)
    assert report.speedup("mfnet3d@4x32x32", "mfnet3d@4x32x32[plain]") == pytest.approx(
        report.rows[1].latency_ms / report.rows[0].latency_ms
    )
    png = plot_efficiency(report, tmp_path / "eff.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_runs_our_onnx_export_in_onnx_runtime():
    pytest.importorskip("onnxruntime")
    report = run_benchmark(
        parse_candidates("mfnet3d", default_size=(2, 32, 32), engines=["onnxruntime"]),
        threads=1,
        warmup=1,
        repeats=2,
        memory=False,
        progress=False,
        isolate=False,
    )
    (row,) = report.rows
    assert row.engine == "onnxruntime" and row.label == "mfnet3d@2x32x32[onnxruntime]"
    assert row.latency_ms > 0 and row.setup_s > 0 and row.macs_per_clip > 0


def test_parse_candidates_sizes_and_engines():
    found = parse_candidates("mfnet3d@8x64x64, r3d_18", default_size=(16, 112, 112), engines=["fast", "onnxruntime"])
    assert [(c.model, c.clip_size, c.engine) for c in found] == [
        ("mfnet3d", (8, 64, 64), "fast"),
        ("mfnet3d", (8, 64, 64), "onnxruntime"),
        ("r3d_18", (16, 112, 112), "fast"),  # ONNX Runtime only runs our own export
    ]
    with pytest.raises(MfnetError, match="unknown model 'resnet50'"):
        parse_candidates("resnet50", default_size=(16, 112, 112), engines=["fast"])
    with pytest.raises(MfnetError, match="TxHxW"):
        parse_candidates("mfnet3d@16x112", default_size=(16, 112, 112), engines=["fast"])


def test_bench_cli_errors_are_one_line(capsys):
    assert main(["bench", "--models", "nope3d", "--input", "4x32x32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mfnet: error: unknown model 'nope3d'") and "Traceback" not in err
    assert main(["bench", "--models", "mfnet3d", "--input", "1x4x32x32"]) == 2
    assert "TxHxW" in capsys.readouterr().err


def test_efficiency_plot_labels_of_neighbouring_points_do_not_overlap():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mfnet.tools.bench.run import _label_offsets

    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(1, 100)
    ax.set_ylim(1, 10)
    points = [("r3d_18@16x112x112[plain]", 40.7, 2.17), ("mc3_18@16x112x112[plain]", 43.3, 2.27), ("far", 2, 9)]
    offsets = {label: dy for label, _, _, dy in _label_offsets(ax, points, fig.dpi)}
    plt.close(fig)
    assert offsets["far"] == 3.0 and offsets["mc3_18@16x112x112[plain]"] == 3.0  # the higher one keeps its place
    # the lower label moves down until a line of text lies between the two labels' baselines
    to_points = 72.0 / fig.dpi
    gap = (ax.transData.transform((40.7, 2.27))[1] - ax.transData.transform((40.7, 2.17))[1]) * to_points
    assert gap + 3.0 - offsets["r3d_18@16x112x112[plain]"] >= 10.0
