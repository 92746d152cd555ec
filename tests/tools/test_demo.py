"""``mfnet demo``: a shortened real run (tiny sizes) writes its report and figures, resumes, and refuses mix-ups."""

from __future__ import annotations

import json

import pytest
import torch

from mfnet.cli import main
from mfnet.data.motion import MOTION_CLASSES
from mfnet.errors import MfnetError
from mfnet.tools.demo import DEFAULT_MINUTES, DemoConfig, pair_accuracy, run_demo

pytestmark = pytest.mark.slow

# Seconds instead of minutes: 2 videos per class, 8-frame 32x32 videos, 2-frame clips, one step per epoch.
TINY = DemoConfig(
    videos_per_class=2,
    video_frames=8,
    video_size=32,
    clip_length=2,
    frame_intervals=(2, 3),
    frame_interval=3,
    crop_size=32,
    short_side=(32, 34),
    resize=32,
    batch_size=8,
    epochs=1,
    test_clips=2,
    num_workers=0,
)


def test_pair_accuracy_counts_pairs_and_directions():
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    pred = torch.tensor([0, 0, 3, 3, 6, 5, 7, 7])  # right: 0, 3, 5, 7; right pair but wrong direction: 1, 2, 6
    probs = torch.nn.functional.one_hot(pred, 8).float()
    pair, direction = pair_accuracy(probs, labels)
    assert pair == pytest.approx(7 / 8)  # video 4 (rotate_clockwise -> grow) is in the wrong pair
    assert direction == pytest.approx(4 / 7)


def test_epochs_scale_with_the_budget():
    config = DemoConfig(epochs=12)
    assert config.epochs_for(DEFAULT_MINUTES) == 12
    assert config.epochs_for(DEFAULT_MINUTES / 2) == 6
    assert config.epochs_for(0.01) == 1


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    return run_demo(out, config=TINY, seed=1, progress=False)


def test_tiny_demo_writes_report_figures_and_results(tiny_run):
    out = tiny_run.out_dir
    assert tiny_run.data.num_train == 8 and tiny_run.data.num_test == 8
    assert [o.model for o in tiny_run.models] == ["mfnet3d", "mfnet2d"]
    assert tiny_run.input_shape == (1, 3, 2, 32, 32)
    report = (out / "report.md").read_text()
    assert "| mfnet3d |" in report and "| mfnet2d |" in report and "figures/demo.png" in report
    assert (out / "figures" / "demo.png").stat().st_size > 10_000
    for o in tiny_run.models:
        run = out / o.model
        assert (run / "model.pt").exists() and (run / "eval" / "metrics.json").exists()
        for name in ("curves", "filters", "per_class", "confusion", "samples"):
            assert (run / "figures" / f"{name}.png").exists(), name
        assert (run / "report.md").exists()
        metrics = json.loads((run / "eval" / "metrics.json").read_text())
        assert metrics["videos"] == 8 and metrics["clips"] == 16  # 8 test videos x 2 clips
        assert o.video_top1 == pytest.approx(metrics["video_top1"])
        assert 0.0 <= o.video_top1 <= 1.0 and 0.0 <= o.pair_top1 <= 1.0
        assert len(o.per_class) == len(MOTION_CLASSES) and o.epochs == 1 and o.train_clips_per_s > 0
        recipe = json.loads((run / "recipe.json").read_text())
        assert recipe["model"] == o.model and recipe["optimizer"] == "adamw" and recipe["clip_length"] == 2
    three_d, two_d = tiny_run.models
    assert three_d.params == 7_694_920 and two_d.params == 4_953_640  # 768 features -> 8 classes each
    assert three_d.macs_per_clip < two_d.macs_per_clip  # at 2 frames the 3D net's temporal stride halves its work
    record = json.loads((out / "demo.json").read_text())
    assert record["settings"]["epochs_trained"] == 1
    assert {m["model"] for m in record["results"]["models"]} == {"mfnet3d", "mfnet2d"}


def test_second_run_reuses_data_and_training(tiny_run):
    before = {o.model: (tiny_run.out_dir / o.model / "metrics.jsonl").read_text() for o in tiny_run.models}
    again = run_demo(tiny_run.out_dir, config=TINY, seed=1, progress=False)
    assert again.data.reused
    for o in again.models:  # nothing trained again: the finished runs were resumed at their end
        assert (again.out_dir / o.model / "metrics.jsonl").read_text() == before[o.model]
        assert o.video_top1 == pytest.approx(next(p for p in tiny_run.models if p.model == o.model).video_top1)


def test_other_settings_in_the_same_directory_are_refused(tiny_run):
    with pytest.raises(MfnetError, match="other settings"):
        run_demo(tiny_run.out_dir, config=TINY, seed=2, progress=False)


def test_cli_rejects_a_bad_budget(capsys, tmp_path):
    assert main(["demo", "--out", str(tmp_path / "d"), "--minutes", "0"]) == 2
    assert "--minutes: '0' is out of range" in capsys.readouterr().err
