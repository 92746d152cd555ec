"""`mfnet report`: figures and a Markdown/HTML summary from a run directory's files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mfnet.cli import main
from mfnet.data.video_writer import write_video
from mfnet.engine.evaluate import scores_from_clips
from mfnet.errors import MfnetError
from mfnet.models import create_model
from mfnet.models.checkpoint import save_checkpoint
from mfnet.models.macs import count_macs, count_params
from mfnet.tools.plots import plot_accuracy_vs_gflops
from mfnet.tools.report import pick_samples, results_table, write_report
from mfnet.tools.results import paper_results, read_results, run_result

SMALL = {"depths": [1, 1, 1, 1], "widths": [32, 32, 64, 64]}


def _fake_run(run) -> None:
    run.mkdir()
    records = [{"kind": "train", "step": s, "epoch": s / 2, "loss": 1.0 / s, "top1": 0.1 * s} for s in range(1, 5)]
    records += [
        {"kind": "epoch", "step": 2 * e, "epoch": e, "train_loss": 0.5 / e, "val_video_top1": 0.4 * e} for e in (1, 2)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    recipe = {"name": "smoke", "model": "mfnet3d", "epochs": 2, "num_classes": 3, "data_format": "ucf101"}
    recipe.update({"model_kwargs": SMALL, "clip_length": 8, "crop_size": 32})
    (run / "recipe.json").write_text(json.dumps(recipe))
    model = create_model("mfnet3d", num_classes=3, **SMALL)
    torch.save(model.conv1.conv.weight.detach().clone(), run / "conv1_init.pt")
    with torch.no_grad():
        model.conv1.conv.weight.mul_(-1)
    save_checkpoint(run / "model.pt", model, model_name="mfnet3d", classes=["a", "b", "c"])
    videos = []
    for i in range(3):
        path = run / f"v{i}.mp4"
        write_video(path, np.full((8, 32, 32, 3), 60 * i, dtype=np.uint8), fps=8)
        videos.append(str(path))
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.1, 0.4]])
    result = scores_from_clips(
        probs, torch.tensor([0, 1, 2]), torch.arange(3), classes=["a", "b", "c"], video_names=videos
    )
    result.save(run / "eval")


@pytest.mark.slow
def test_report_from_run_dir(tmp_path) -> None:
    run = tmp_path / "run"
    _fake_run(run)
    paths = write_report(run, samples=3)
    figures = ("curves", "filters", "per_class", "confusion", "samples", "accuracy_vs_gflops")
    assert set(paths) == {"markdown", "html", *figures}
    for name in figures:
        assert paths[name].stat().st_size > 2000
    md = paths["markdown"].read_text()
    assert "video top-1 **66.67%**" in md and "Worst classes: c (0%)" in md and "figures/curves.png" in md
    assert "figures/accuracy_vs_gflops.png" in md
    page = paths["html"].read_text()
    assert page.count("<img ") == 6 and "<table>" in page
    extra = tmp_path / "mine.csv"
    extra.write_text("dataset,model,params_m,gflops,top1,top5,source\nUCF-101,my net,3.5,4.2,91.0,,lab\n")
    assert main(["report", str(run), "--results", str(extra)]) == 0
    other = tmp_path / "other"
    _fake_run(other)
    rows = results_table(run, None, [extra, other])
    assert [r.model for r in rows if not r.published] == ["my net", "mfnet3d (other)"]
    with pytest.raises(MfnetError, match="not an evaluated training run"):
        results_table(run, None, [tmp_path])
    assert main(["report", str(run), "--results", str(tmp_path)]) == 2


def test_report_rejects_other_folders(tmp_path) -> None:
    with pytest.raises(MfnetError, match="not a training run directory"):
        write_report(tmp_path)
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_the_paper_rows_and_a_run_row(tmp_path) -> None:
    rows = paper_results()
    kinetics = [r for r in rows if r.dataset == "Kinetics-400"]
    assert [(r.model, r.params_m, r.gflops, r.top1) for r in kinetics] == [("MF-Net 3D", 8.0, 11.1, 72.8)]
    imagenet = {r.model: (r.params_m, r.gflops, r.top1, r.top5) for r in rows if r.dataset == "ImageNet-1k"}
    assert imagenet["MF-Net 2D (N=16)"] == (5.8, 0.861, 74.6, 92.0)
    assert imagenet["ResNet-18 (reproduced)"] == (11.7, 1.8, 71.4, 90.2)
    assert all(r.published for r in rows)
    run = tmp_path / "run"
    _fake_run(run)
    evaluation = json.loads((run / "eval" / "metrics.json").read_text())
    own = run_result(run, evaluation)
    model = create_model("mfnet3d", num_classes=3, **SMALL)
    assert own is not None and not own.published and own.dataset == "UCF-101"
    assert own.params_m == pytest.approx(count_params(model) / 1e6)
    assert own.gflops == pytest.approx(count_macs(model, (1, 3, 8, 32, 32)) / 1e9)
    assert own.top1 == pytest.approx(100 * 2 / 3)
    path = plot_accuracy_vs_gflops([*rows, own], tmp_path / "chart.png")
    assert path.stat().st_size > 5000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dataset,model,params_m\nx,y,1\n", "lacks the columns gflops, top1"),
        ("dataset,model,params_m,gflops,top1\nx,y,one,2,3\n", "line 2: params_m must be a number"),
        ("dataset,model,params_m,gflops,top1\nx,y,1,2,\n", "line 2: params_m, gflops and top1 are needed"),
    ],
)
def test_bad_results_files_are_one_sentence(tmp_path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(MfnetError, match=message):
        read_results(path)
    with pytest.raises(MfnetError, match="does not exist"):
        read_results(tmp_path / "missing.csv")


def _prediction(label: int, prob_true: float, correct: bool) -> dict:
    other = (label + 1) % 4
    top = [{"class": label, "name": str(label), "prob": prob_true}, {"class": other, "name": str(other), "prob": 0.1}]
    return {"label": label, "correct": correct, "top": sorted(top, key=lambda t: -t["prob"]), "video": f"{label}"}


def test_fig8_takes_the_hardest_categories_with_an_easy_and_a_hard_sample() -> None:
    predictions = [
        # class 0: all right (easy category); class 1: 1 of 3 right; class 2: 2 of 3 right; class 3: 0 of 2 right
        *[_prediction(0, p, True) for p in (0.9, 0.8)],
        _prediction(1, 0.7, True),
        _prediction(1, 0.2, False),
        _prediction(1, 0.05, False),
        _prediction(2, 0.6, True),
        _prediction(2, 0.5, True),
        _prediction(2, 0.1, False),
        _prediction(3, 0.3, False),
        _prediction(3, 0.01, False),
    ]
    picked = pick_samples(predictions, 4)
    assert [(p["label"], p["difficulty"]) for p in picked] == [(3, "easy"), (3, "hard"), (1, "easy"), (1, "hard")]
    assert [p["top"][0]["prob"] if p["correct"] else None for p in picked][2] == 0.7  # the easy sample of class 1
    assert picked[3]["category_accuracy"] == pytest.approx(1 / 3)
    assert [p["label"] for p in pick_samples(predictions, 3)] == [3, 3, 1]
    single = pick_samples([_prediction(0, 0.9, True), _prediction(1, 0.2, False)], 2)
    assert [(p["label"], p["difficulty"]) for p in single] == [(1, "only"), (0, "only")]
