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
from mfnet.tools.report import write_report


def _fake_run(run) -> None:
    run.mkdir()
    records = [{"kind": "train", "step": s, "epoch": s / 2, "loss": 1.0 / s, "top1": 0.1 * s} for s in range(1, 5)]
    records += [
        {"kind": "epoch", "step": 2 * e, "epoch": e, "train_loss": 0.5 / e, "val_video_top1": 0.4 * e} for e in (1, 2)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "recipe.json").write_text(json.dumps({"name": "smoke", "model": "mfnet3d", "epochs": 2}))
    model = create_model("mfnet3d", num_classes=3, depths=(1, 1, 1, 1), widths=(32, 32, 64, 64))
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


def test_report_from_run_dir(tmp_path) -> None:
    run = tmp_path / "run"
    _fake_run(run)
    paths = write_report(run, samples=3)
    assert set(paths) == {"markdown", "html", "curves", "filters", "per_class", "confusion", "samples"}
    for name in ("curves", "filters", "per_class", "confusion", "samples"):
        assert paths[name].stat().st_size > 2000
    md = paths["markdown"].read_text()
    assert "video top-1 **66.67%**" in md and "Worst classes: c (0%)" in md and "figures/curves.png" in md
    page = paths["html"].read_text()
    assert page.count("<img ") == 5 and "<table>" in page
    assert main(["report", str(run)]) == 0


def test_report_rejects_other_folders(tmp_path) -> None:
    with pytest.raises(MfnetError, match="not a training run directory"):
        write_report(tmp_path)
    assert main(["report", str(tmp_path / "missing")]) == 2
