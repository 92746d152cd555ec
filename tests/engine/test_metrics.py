"""Metrics and evaluation aggregation on hand-computed examples."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from mfnet.engine.evaluate import EvalResult, average_splits, scores_from_clips
from mfnet.engine.metrics import (
    MetricsLog,
    confusion_matrix,
    mean_class_accuracy,
    per_class_accuracy,
    read_metrics,
    topk_correct,
)


def test_topk_and_confusion() -> None:
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    target = torch.tensor([1, 1, 2, 2])
    assert topk_correct(scores, target, (1, 2, 5)) == {1: 2, 2: 3, 5: 4}
    cm = confusion_matrix(scores.argmax(1), target, 3)
    assert cm.tolist() == [[0, 0, 0], [1, 1, 0], [1, 0, 1]]
    acc = per_class_accuracy(cm)
    assert math.isnan(acc[0]) and acc[1] == 0.5 and acc[2] == 0.5
    assert mean_class_accuracy(cm) == 0.5


def test_video_level_aggregation_hand_computed() -> None:
    # video 0 (label 0): clips say [0.4, 0.6] and [0.9, 0.1] -> mean [0.65, 0.35] -> correct although clip 1 was wrong
    # video 1 (label 1): clips [0.8, 0.2], [0.7, 0.3], [0.1, 0.9] -> mean [0.533, 0.467] -> wrong
    # video 2 (label 1): clip [0.2, 0.8] -> correct
    probs = torch.tensor([[0.4, 0.6], [0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.1, 0.9], [0.2, 0.8]])
    labels = torch.tensor([0, 0, 1, 1, 1, 1])
    video = torch.tensor([0, 0, 1, 1, 1, 2])
    r = scores_from_clips(probs, labels, video, num_videos=3, classes=["a", "b"], video_names=["x", "y", "z"])
    s = r.summary()
    assert s["clips"] == 6 and s["videos"] == 3
    assert s["clip_top1"] == pytest.approx(3 / 6)  # clips 1, 5, 6 right
    assert s["video_top1"] == pytest.approx(2 / 3)
    assert s["video_top5"] == 1.0
    assert torch.allclose(r.video_probs[1], torch.tensor([1.6 / 3, 1.4 / 3]))
    assert r.confusion().tolist() == [[1, 0], [1, 1]]
    assert s["mean_class_accuracy"] == pytest.approx((1.0 + 0.5) / 2)
    preds = r.predictions()
    assert [p["correct"] for p in preds] == [True, False, True]
    assert preds[1]["pred_name"] == "a" and preds[1]["top"][0]["prob"] == pytest.approx(1.6 / 3)


def test_eval_result_files_round_trip(tmp_path) -> None:
    probs = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    r = scores_from_clips(probs, torch.tensor([0, 1, 1]), torch.tensor([0, 1, 2]), num_videos=4)
    paths = r.save(tmp_path)
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["videos"] == 3  # video 3 has no clip: not scored
    assert metrics["confusion_matrix"] == [[1, 0], [1, 1]]
    rows = list(csv.DictReader(paths["predictions_csv"].open()))
    assert [r_["correct"] for r_ in rows] == ["1", "1", "0"]
    back = EvalResult.load(tmp_path)
    assert torch.equal(back.clip_probs, r.clip_probs) and back.summary()["video_top1"] == pytest.approx(2 / 3)


def test_average_splits() -> None:
    one = scores_from_clips(torch.tensor([[0.9, 0.1]]), torch.tensor([0]), torch.tensor([0]))
    half = scores_from_clips(torch.tensor([[0.9, 0.1], [0.8, 0.2]]), torch.tensor([0, 1]), torch.tensor([0, 1]))
    avg = average_splits([one, half, half])
    assert avg["splits"] == 3 and avg["video_top1"] == pytest.approx((1 + 0.5 + 0.5) / 3)


def test_metrics_log(tmp_path) -> None:
    log = MetricsLog(tmp_path)
    for step in (1, 2, 3):
        log.log("train", step=step, epoch=step / 3, loss=1.0 / step)
    log.truncate_after(2)
    log.log("epoch", step=3, epoch=1, val_video_top1=0.5)
    log.close()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["kind"], r["step"]) for r in records] == [("train", 1), ("train", 2), ("epoch", 3)]
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())
    MetricsLog(tmp_path / "off", enabled=False).log("train", step=1, epoch=0, loss=1.0)
    assert not (tmp_path / "off").exists()
