"""End-to-end training on generated videos: run directory, model, evaluation, figures, report, NaN stop."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from engine_helpers import tiny_recipe

from mfnet.cli import main
from mfnet.engine import checkpoints as ckpt
from mfnet.engine.evaluate import evaluate
from mfnet.engine.metrics import read_metrics
from mfnet.engine.predictor import average_by_video
from mfnet.engine.recipes import get_recipe
from mfnet.engine.train import DataSpec, DivergedError, train
from mfnet.models.checkpoint import model_from_checkpoint
from mfnet.tools.report import write_figures


@pytest.mark.slow
def test_train_evaluate_report(tmp_path, ucf_spec) -> None:
    run = tmp_path / "run"
    finished: list[Path] = []
    result = train(tiny_recipe(num_workers=2), out_dir=run, data=ucf_spec, progress=False, on_finish=finished.append)
    assert finished == [run]  # the app's callback (mfnet train draws the figures there)
    write_figures(run)
    assert result.finished and result.epochs_done == 2 and result.steps == 6
    assert {"train_loss", "train_top1", "val_clip_top1", "val_video_top1", "val_mean_class_accuracy"} <= set(
        result.metrics
    )
    assert 0.0 <= result.metrics["val_video_top1"] <= 1.0 and result.metrics["val_clips"] == 4 * 2

    records = read_metrics(run / "metrics.jsonl")
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    assert train_steps == [1, 2, 3, 4, 5, 6]
    assert all(r["lr"] > 0 and r["clips_per_s"] > 0 for r in records if r["kind"] == "train")
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1.0, 2.0]
    assert len(ckpt.list_checkpoints(run)) == 2  # keep_checkpoints
    assert any((run / "tb").iterdir())
    assert json.loads((run / "recipe.json").read_text())["batch_size"] == 4

    # the final model loads with the package's loader and gives the same logits
    model, meta = model_from_checkpoint(run / "model.pt")
    assert model.num_classes == 2 and meta["classes"] == ["Bright", "Dark"]
    assert meta["model_kwargs"]["depths"] == [1, 1, 1, 1]
    for name in ("curves", "filters", "per_class", "confusion", "samples"):
        assert (run / "figures" / f"{name}.png").stat().st_size > 2000, name

    # evaluation: 2 clips x 3 crops for each of the 4 test videos; video level = averaged clip softmax
    ev = evaluate(
        run / "model.pt", ucf_spec, clips=2, crops=3, num_workers=0, out_dir=tmp_path / "eval", progress=False
    )
    s = ev.summary()
    assert s["clips"] == 4 * 2 * 3 and s["videos"] == 4
    assert torch.allclose(ev.video_probs, average_by_video(ev.clip_probs, ev.clip_video, 4))
    assert torch.equal(ev.video_labels, torch.tensor([0, 0, 1, 1]))
    rows = list(csv.DictReader((tmp_path / "eval" / "predictions.csv").open()))
    assert len(rows) == 4 and rows[0]["video"].endswith(".mp4")
    assert ev.extra["clip_length"] == 4 and ev.extra["crop_size"] == 32  # from the run's recipe.json
    plain = evaluate(run / "model.pt", ucf_spec, clips=2, crops=3, num_workers=0, progress=False, fast=False)
    assert torch.allclose(plain.clip_probs, ev.clip_probs, atol=1e-4)  # the inference fast path changes nothing

    assert main(["report", str(run), "--eval-dir", str(tmp_path / "eval"), "--json"]) == 0
    assert "video top-1" in (run / "report.md").read_text() and (run / "report.html").exists()


def test_eval_cli_split_average(tmp_path, ucf_root, capsys) -> None:
    run = tmp_path / "run"
    train(
        tiny_recipe(epochs=1, eval_every_epochs=0),
        out_dir=run,
        data=DataSpec("ucf101", ucf_root, ucf_root, 1),
        progress=False,
    )
    (run / "data.json").write_text(json.dumps({"format": "ucf101"}))  # as `mfnet train` leaves it
    args = ["eval", "--weights", str(run / "model.pt"), "--annotations", str(ucf_root), "--data", str(ucf_root)]
    assert main([*args, "--splits", "1,2", "--clips", "1", "--workers", "0", "--json", "--no-progress"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line.get("split") for line in lines[:2]] == [1, 2] and lines[0]["videos"] == 4 and lines[0]["clips"] == 4
    average = lines[2]["average"]
    assert average["splits"] == 2
    assert average["video_top1"] == pytest.approx((lines[0]["video_top1"] + lines[1]["video_top1"]) / 2)
    assert main([*args, "--splits", "1,2", "--weights", "a", "b", "c"]) == 2  # 2 splits, 3 checkpoints


def test_train_2d_model_on_images(tmp_path) -> None:
    import matplotlib.image as mpimg

    for subset, count in (("train", 4), ("val", 2)):
        for label, name in enumerate(("cats", "dogs")):
            for i in range(count):
                image = torch.full((3, 40, 48), 60 + 120 * label, dtype=torch.uint8)
                image[:, 5 + 3 * i : 15 + 3 * i, 10:20] = 255
                (tmp_path / "img" / subset / name).mkdir(parents=True, exist_ok=True)
                mpimg.imsave(tmp_path / "img" / subset / name / f"{i}.png", image.permute(1, 2, 0).numpy())
    recipe = get_recipe(
        "imagenet",
        {
            "epochs": 1,
            "batch_size": 4,
            "crop_size": 32,
            "resize": 32,
            "train_scale": (32, 40),
            "warmup_epochs": 0,
            "model_kwargs": {"depths": [1, 1, 1, 1], "widths": [32, 32, 64, 64]},
            "num_workers": 0,
        },
    )
    spec = DataSpec(format="image-folder", root=tmp_path / "img")
    result = train(recipe, out_dir=tmp_path / "run", data=spec, progress=False)
    assert result.finished and result.steps == 2 and result.metrics["val_videos"] == 4
    model, meta = model_from_checkpoint(tmp_path / "run" / "model.pt")
    assert meta["model"] == "mfnet2d" and meta["classes"] == ["cats", "dogs"] and model.input_ndim == 4


class _Poisoned(torch.utils.data.Dataset):
    """Random clips that turn into NaN from epoch 1 on (the loader calls ``set_epoch``)."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        clip = torch.randn(3, 4, 32, 32, generator=torch.Generator().manual_seed(i))
        return {"clip": clip * (float("nan") if self.epoch >= 1 else 1.0), "label": i % 2, "video_index": i}


def test_nan_loss_stops_with_good_checkpoint(tmp_path) -> None:
    recipe = tiny_recipe(checkpoint_every_steps=0, eval_every_epochs=0)
    with pytest.raises(DivergedError, match="became nan at step 3"):
        train(recipe, out_dir=tmp_path, train_dataset=_Poisoned(), classes=["a", "b"], progress=False)
    _, state = ckpt.load_latest(tmp_path)
    assert state["step"] == 2 and state["epoch"] == 1  # the end of the good epoch
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_cli_errors_are_one_line(tmp_path, capsys) -> None:
    assert main(["train", "--recipe", "nope", "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err
    assert main(["train", "--recipe", "smoke", "--set", "epochs=x", "--data", str(tmp_path), "--out", "r"]) == 2
    assert main(["recipes", "show", "ucf101", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["backbone_lr_mult"] == 0.2
