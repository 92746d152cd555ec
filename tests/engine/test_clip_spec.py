"""A model trained with ``mfnet train`` predicts with the clips it was trained on, from its checkpoint alone.

The run uses clips unlike the paper's (4 frames 3 apart, resize 36, crop 32): eval, predict, features (through the
classifier) and an ONNX file exported from the checkpoint must give the same video probabilities without any clip
option, and an option that changes the clips is reported in one line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from engine_helpers import tiny_cli_args
from safetensors.torch import load_file

from mfnet.cli import main
from mfnet.engine.input_spec import apply_overrides, input_spec_of, input_spec_of_recipe
from mfnet.engine.predictor import Predictor, average_by_video, load_model
from mfnet.engine.recipes import get_recipe
from mfnet.errors import MfnetError
from mfnet.models.checkpoint import model_from_checkpoint, read_checkpoint
from mfnet.models.weights import PAPER_INPUT, InputSpec

SPEC = {"clip_length": 4, "frame_interval": 3, "crop_size": 32, "resize": 36}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, ucf_root: Path) -> Path:
    out = tmp_path_factory.mktemp("spec") / "run"
    argv = [
        "train", "--recipe", "smoke", "--format", "ucf101", "--annotations", str(ucf_root), "--data", str(ucf_root),
        "--split", "1", *tiny_cli_args(**SPEC, epochs=2, drop_rate=0.0), "--out", str(out), "--no-progress",
        "--no-figures", "--json",
    ]  # fmt: skip
    assert main(argv) == 0
    return out


def _test_videos(ucf_root: Path) -> list[str]:
    return [str(ucf_root / line.split()[0]) for line in (ucf_root / "testlist01.txt").read_text().splitlines()]


def _predict(capsys: pytest.CaptureFixture[str], weights: Path, videos: list[str], *extra: str) -> tuple:
    """Video probabilities ``(V, 2)`` of ``mfnet predict --json`` and its stderr."""
    argv = ["predict", *videos, "--weights", str(weights), "--clips", "3", "--workers", "0", "--json", *extra]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["path"] for r in records] == videos
    probs = torch.zeros(len(records), 2)
    for i, record in enumerate(records):
        for top in record["topk"]:
            probs[i, top["index"]] = top["prob"]
    return probs, err


@pytest.mark.slow
def test_every_command_uses_the_checkpoints_clip_spec(
    run: Path, ucf_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_pt = run / "model.pt"
    stored = read_checkpoint(model_pt).meta["input_spec"]
    assert stored == {
        "frames": 4, "interval": 3, "crop_size": 32, "resize": 36, "normalization": "mfnet",
        "test_protocol": "keep-aspect",
    }  # fmt: skip
    # The checkpoint alone carries the spec: copy it away from its run folder (no recipe.json beside it).
    alone = tmp_path / "alone" / "model.pt"
    alone.parent.mkdir()
    shutil.copy(model_pt, alone)
    videos = _test_videos(ucf_root)
    capsys.readouterr()

    # eval: video probabilities over 3 clips
    assert main(["eval", "--weights", str(alone), "--format", "ucf101", "--annotations", str(ucf_root), "--data",
                 str(ucf_root), "--split", "1", "--clips", "3", "--workers", "0", "--no-progress",
                 "--out", str(tmp_path / "eval"), "--json"]) == 0  # fmt: skip
    predictions = json.loads((tmp_path / "eval" / "predictions.json").read_text())
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert [metrics[k] for k in ("clip_length", "frame_interval", "crop_size", "resize")] == [4, 3, 32, 36]
    eval_probs = torch.zeros(len(predictions), 2)
    for p in predictions:
        for top in p["top"]:
            eval_probs[p["video_index"], top["class"]] = top["prob"]
    names = [p["video"] for p in sorted(predictions, key=lambda p: p["video_index"])]
    assert [Path(n).name for n in names] == [Path(v).name for v in videos]
    capsys.readouterr()

    # predict, with no clip option: the same probabilities, and no note
    probs, err = _predict(capsys, alone, videos)
    assert torch.allclose(probs, eval_probs, atol=1e-4) and "note" not in err

    # features per clip, through the classifier, averaged per video: the same again
    out = tmp_path / "features.safetensors"
    assert main(["features", *videos, "--weights", str(alone), "--out", str(out), "--clips", "3", "--per-clip",
                 "--workers", "0"]) == 0  # fmt: skip
    tensors = load_file(str(out))
    model, _ = model_from_checkpoint(alone)
    with torch.no_grad():
        clip_probs = model.eval().classifier(tensors["features"]).softmax(1)
    feature_probs = average_by_video(clip_probs, tensors["video_index"], len(videos))
    assert torch.allclose(feature_probs, eval_probs, atol=1e-4)

    # export with no --input: the graph takes the spec's clips, carries the spec, and predicts the same
    onnx = tmp_path / "model.onnx"
    assert main(["export", "--weights", str(alone), "--out", str(onnx), "--dynamic-batch", "--json"]) == 0
    exported = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert exported["input"] == [1, 3, 4, 32, 32] and exported["ok"]
    assert torch.allclose(_predict(capsys, onnx, videos)[0], eval_probs, atol=1e-4)

    # an export to another clip size says so, and the file carries the clips it takes
    other_onnx = tmp_path / "other.onnx"
    assert main(["export", "--weights", str(alone), "--out", str(other_onnx), "--input", "1x3x8x64x64"]) == 0
    err = capsys.readouterr().err
    assert "--input 1x3x8x64x64 changes the clips of the checkpoint" in err
    assert load_model(other_onnx).input_spec.spec == InputSpec(8, 3, 64, 72, "mfnet", "keep-aspect")

    # the Python predictor
    predictor = Predictor.from_weights(alone, num_clips=3)
    got = torch.stack([p.probs for p in predictor.predict(videos)])
    assert torch.allclose(got, eval_probs, atol=1e-4)

    # an option that changes the clips is said in one line; the paper's 16x224 would give other numbers
    other, err = _predict(capsys, alone, videos, "--frames", "16", "--size", "224")
    assert "--frames 16" in err and "--size 224" in err and "the checkpoint's clip spec" in err
    assert not torch.allclose(other, eval_probs, atol=1e-3)


def test_input_spec_of_recipe_and_fallbacks(tmp_path: Path) -> None:
    recipe = get_recipe("smoke", SPEC)
    spec = input_spec_of_recipe(recipe)
    assert spec == InputSpec(4, 3, 32, 36, "mfnet", "keep-aspect")
    assert InputSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert input_spec_of({"input_spec": spec.to_dict()}).source == "the checkpoint"
    # an older run: the recipe.json beside the checkpoint
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "recipe.json").write_text(json.dumps(recipe.to_dict()))
    older = input_spec_of({"model": "mfnet3d"}, weights=tmp_path / "run" / "model.pt")
    assert older.spec == spec and older.stored and older.note is None
    # nothing stored: the paper's test setting, said so
    bare = input_spec_of(None, weights=tmp_path / "elsewhere" / "x.pth")
    assert bare.spec == PAPER_INPUT and bare.spec.eval_resize == (256, 256)
    assert "stores no clip spec" in bare.note and "16 frames every 2" in bare.note
    # a crop given alone scales the resize with it
    scaled = apply_overrides(bare, crop_size=112)
    assert scaled.spec.resize == (128, 128) and "--size 112" in scaled.note
    same = apply_overrides(older, frames=4)
    assert same.note is None
    with pytest.raises(MfnetError, match="unknown clip setting frame"):
        apply_overrides(older, frame=8)
