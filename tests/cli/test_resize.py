"""``--resize N`` / ``--resize WxH`` of ``mfnet predict`` and ``mfnet eval``, and the protocol line they print."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import mfnet
from mfnet.cli import main
from mfnet.data.video_writer import write_video
from mfnet.engine.recipes import get_recipe

CLIP_ARGS = ["--frames", "4", "--size", "32", "--workers", "0", "--clips", "1"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli_resize")
    frames = np.random.default_rng(0).integers(0, 256, (12, 36, 64, 3), dtype=np.uint8)  # 16:9
    torch.manual_seed(0)
    model = mfnet.create_model("mfnet3d", num_classes=5)
    authors = root / "authors_layout.pth"  # the authors' release layout: `module.` keys, no mfnet metadata
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, authors)
    return {"video": write_video(root / "wide.mp4", frames, fps=10), "authors": authors}


def test_predict_defaults_to_the_authors_geometry_for_their_files(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["predict", str(files["video"]), "--weights", str(files["authors"]), "--json", *CLIP_ARGS]) == 0
    err = capsys.readouterr().err
    assert "test protocol: authors (frames resized to 37x37, aspect not kept; centre crop 32x32)" in err
    assert "[the paper's defaults]" in err


@pytest.mark.parametrize(
    ("resize", "line"),
    [
        ("40", "keep-aspect (short side resized to 40, aspect kept; centre crop 32x32) [--resize]"),
        ("48x40", "authors (frames resized to 48x40, aspect not kept; centre crop 32x32) [--resize]"),
    ],
)
def test_predict_resize_forms(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], resize: str, line: str
) -> None:
    argv = ["predict", str(files["video"]), "--weights", str(files["authors"]), "--resize", resize, "--json"]
    assert main([*argv, *CLIP_ARGS]) == 0
    assert line in capsys.readouterr().err


def test_bad_resize_is_one_line(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(files["video"]), "--weights", str(files["authors"]), "--resize", "wide"]) == 2
    err = capsys.readouterr().err
    assert "invalid resize 'wide'" in err and len(err.strip().splitlines()) == 1


def test_predict_takes_the_geometry_of_the_run(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    model = mfnet.create_model("mfnet3d", num_classes=5)
    run.mkdir()
    weights = run / "model.pt"
    torch.save(model.state_dict(), weights)  # a plain state dict: the run's recipe.json says how it was trained
    recipe = get_recipe("ucf101", {"crop_size": 32, "resize": "40x36"}).to_dict()
    (run / "recipe.json").write_text(json.dumps(recipe))
    assert main(["predict", str(files["video"]), "--weights", str(weights), "--json", *CLIP_ARGS]) == 0
    err = capsys.readouterr().err
    assert "authors (frames resized to 40x36, aspect not kept; centre crop 32x32) [the run's recipe.json]" in err
