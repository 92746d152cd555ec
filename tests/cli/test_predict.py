"""Tests of ``mfnet predict``, ``mfnet features`` and ``mfnet export`` on videos the tests write."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import mfnet
from mfnet.cli import main
from mfnet.data.video_writer import write_video
from mfnet.models.checkpoint import save_checkpoint

SMALL = {"depths": [1, 1, 1, 1], "widths": [32, 32, 64, 64]}
CLASSES = ["alpha", "beta", "gamma", "delta"]
GAMMA = math.exp(3) / (3 + math.exp(3))  # softmax of the bias (0, 0, 3, 0): the known answer, 0.870049
CLIP_ARGS = ["--frames", "8", "--size", "64", "--workers", "0"]


def _plain(value: int, frames: int) -> np.ndarray:
    return np.full((frames, 48, 64, 3), value, dtype=np.uint8)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli_predict")
    out = {
        "a": write_video(root / "videos" / "a.mp4", _plain(30, 30), fps=10),
        "b": write_video(root / "videos" / "sub" / "b.avi", _plain(200, 25), fps=10),
        "long": write_video(root / "long.mp4", np.concatenate([_plain(20, 60), _plain(230, 60)]), fps=10),
    }
    (root / "videos" / "notes.txt").write_text("not a video")
    out["corrupt"] = root / "videos" / "corrupt.mp4"
    out["corrupt"].write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    # A model whose answer is known: zero classifier weights, bias favouring class 2 ("gamma").
    model = mfnet.create_model("mfnet3d", num_classes=4, **SMALL)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 0.0, 3.0, 0.0]))
    out["ckpt"] = save_checkpoint(root / "known.pth", model, model_name="mfnet3d", model_kwargs=SMALL, classes=CLASSES)
    # A model with non-trivial outputs, for export and ONNX prediction.
    torch.manual_seed(0)
    model = mfnet.create_model("mfnet3d", num_classes=4, **SMALL)
    torch.nn.init.normal_(model.classifier.weight, std=0.5)
    out["random"] = save_checkpoint(root / "random.pth", model, model_name="mfnet3d", model_kwargs=SMALL)
    torch.save(model.state_dict(), root / "plain_state.pth")  # no meta: read as the default mfnet3d, which it is not
    out["plain_state"] = root / "plain_state.pth"
    out["junk"] = root / "junk.pth"
    out["junk"].write_bytes(b"not a checkpoint")
    out["labels"] = root / "labels.txt"
    out["labels"].write_text("one\ntwo\nthree\nfour\n")
    return out


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_predict_json_schema_and_known_class(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["predict", str(files["a"]), str(files["b"]), "--weights", str(files["ckpt"]), "--clips", "2", "--json"]
    assert main([*argv, *CLIP_ARGS]) == 0
    records = _json_lines(capsys.readouterr().out)
    assert [r["path"] for r in records] == [str(files["a"]), str(files["b"])]
    for record, seconds in zip(records, (3.0, 2.5), strict=True):
        assert set(record) == {"path", "topk", "clips", "seconds"}
        assert record["clips"] == 2 and record["seconds"] == pytest.approx(seconds)
        assert len(record["topk"]) == 4 and all(set(t) == {"label", "index", "prob"} for t in record["topk"])
        assert record["topk"][0]["label"] == "gamma" and record["topk"][0]["index"] == 2
        assert record["topk"][0]["prob"] == pytest.approx(GAMMA, abs=1e-5)
        assert sum(t["prob"] for t in record["topk"]) == pytest.approx(1.0, abs=1e-5)


def test_predict_table_with_label_file(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["predict", str(files["a"]), "--weights", str(files["ckpt"]), "--labels", str(files["labels"])]
    assert main([*argv, "--topk", "2", "--clips", "1", *CLIP_ARGS]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(str(files["a"])) and "1 clips" in lines[0]
    assert "87.0%" in lines[1] and lines[1].endswith("three") and len(lines) == 3


def test_predict_folder_with_a_corrupt_file(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    folder = files["a"].parent
    argv = ["predict", str(folder), "--weights", str(files["ckpt"]), "--clips", "2", "--json", "--batch-size", "3"]
    assert main([*argv, "--frames", "8", "--size", "64", "--workers", "2"]) == 1
    captured = capsys.readouterr()
    records = _json_lines(captured.out)
    # Sorted, recursive, videos only (notes.txt is skipped); the corrupt file is reported and the rest go through.
    assert [Path(r["path"]).name for r in records] == ["a.mp4", "corrupt.mp4", "b.avi"]
    assert "error" in records[1] and "corrupt.mp4" in records[1]["error"]
    assert records[0]["topk"][0]["label"] == records[2]["topk"][0]["label"] == "gamma"
    assert "mfnet: failed:" in captured.err and "corrupt.mp4" in captured.err and "Traceback" not in captured.err


def test_predict_glob(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    pattern = str(files["a"].parent / "**" / "*.avi")
    assert main(["predict", pattern, "--weights", str(files["ckpt"]), "--clips", "1", "--json", *CLIP_ARGS]) == 0
    assert [Path(r["path"]).name for r in _json_lines(capsys.readouterr().out)] == ["b.avi"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{missing}", "--weights", "{ckpt}"], "does not exist"),
        (["{a}", "--weights", "{junk}"], "junk.pth"),
        (["{a}", "--weights", "{plain_state}"], "plain_state.pth"),
        (["{a}", "--weights", "{missing}"], "does not exist"),
        (["{a}", "--weights", "{ckpt}", "--labels", "kinetics400"], "400 names but the model has 4 classes"),
        (["{a}", "--weights", "{ckpt}", "--stride", "2"], "need --window"),
    ],
)
def test_predict_errors_are_one_sentence(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    names = {**{k: str(v) for k, v in files.items()}, "missing": str(files["a"].parent / "missing.mp4")}
    assert main(["predict", *(a.format(**names) for a in args), *CLIP_ARGS]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mfnet: error: ") and message in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_predict_windows_json_table_and_plot(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["predict", str(files["long"]), "--weights", str(files["ckpt"]), "--window", "4", "--stride", "2"]
    plot = tmp_path / "timeline.png"
    assert main([*argv, "--json", "--topk", "1", "--plot", str(plot), *CLIP_ARGS]) == 0
    (record,) = _json_lines(capsys.readouterr().out)
    assert record["seconds"] == pytest.approx(12.0) and record["window"] == 4 and record["stride"] == 2
    assert [w["start"] for w in record["windows"]] == [0, 2, 4, 6, 8]
    assert [w["end"] for w in record["windows"]] == [4, 6, 8, 10, 12]
    assert all(w["clips"] == 3 and w["topk"][0]["label"] == "gamma" for w in record["windows"])
    assert record["plot"] == str(plot) and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([*argv, "--clips", "1", *CLIP_ARGS]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "5 windows of 4 s" in lines[0] and len(lines) == 6 and "gamma 87.0%" in lines[1]


def test_features_npy_and_safetensors(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = [str(files["a"]), str(files["corrupt"]), str(files["b"])]
    out = tmp_path / "feats.npy"
    argv = ["features", *paths, "--weights", str(files["random"]), "--clips", "2"]
    assert main([*argv, "--out", str(out), *CLIP_ARGS]) == 1  # one video failed
    features = np.load(out)
    index = json.loads(out.with_suffix(".json").read_text())
    assert features.shape == (3, 64) and np.isnan(features[1]).all() and not np.isnan(features[[0, 2]]).any()
    assert index["paths"] == paths and index["video_index"] == [0, 1, 2] and list(index["errors"]) == [paths[1]]
    assert "wrote 3 x 64 video embeddings" in capsys.readouterr().out
    out = tmp_path / "clips.safetensors"
    assert main([*argv, "--per-clip", "--out", str(out), *CLIP_ARGS]) == 1
    with safe_open(str(out), framework="pt") as f:
        clip_features, video_index = f.get_tensor("features"), f.get_tensor("video_index")
        meta = json.loads(f.metadata()["index"])
    assert clip_features.shape == (4, 64) and video_index.tolist() == [0, 0, 2, 2] and meta["per_clip"] is True
    assert np.allclose(clip_features[:2].mean(0).numpy(), features[0], atol=1e-5)


@pytest.mark.slow
def test_export_onnx_then_predict_with_it(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx_path = tmp_path / "model.onnx"
    argv = ["export", "--weights", str(files["random"]), "--out", str(onnx_path), "--input", "1x3x8x64x64"]
    assert main([*argv, "--dynamic-batch", "--labels", str(files["labels"])]) == 0
    out = capsys.readouterr().out
    assert "folded 9 BatchNorm layers" in out and ": OK" in out
    diff = float(out.split("max abs difference vs PyTorch: ")[1].split()[0])
    assert diff < 1e-3
    videos = [str(files["a"]), str(files["b"])]
    predict = ["predict", *videos, "--clips", "2", "--json", "--workers", "0"]
    assert main([*predict, "--weights", str(files["random"]), "--frames", "8", "--size", "64"]) == 0
    torch_records = _json_lines(capsys.readouterr().out)
    assert main([*predict, "--weights", str(onnx_path), "--batch-size", "3"]) == 0  # clip size from the graph
    onnx_records = _json_lines(capsys.readouterr().out)
    for t, o in zip(torch_records, onnx_records, strict=True):
        assert [x["index"] for x in t["topk"]] == [x["index"] for x in o["topk"]]
        assert [x["prob"] for x in t["topk"]] == pytest.approx([x["prob"] for x in o["topk"]], abs=1e-4)
        assert o["topk"][0]["label"] in ("one", "two", "three", "four")  # names stored in the ONNX file
    assert main([*predict, "--weights", str(onnx_path), "--size", "32"]) == 2
    assert "takes clips of 8 frames of 64x64" in capsys.readouterr().err


def test_export_torch_export_json(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "model.pt2"
    argv = ["export", "--weights", str(files["random"]), "--format", "torch-export", "--out", str(path)]
    assert main([*argv, "--input", "2x3x8x64x64", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["ok"] is True and record["max_abs_diff"] < 1e-3 and record["input"] == [2, 3, 8, 64, 64]
    assert record["format"] == "torch-export" and record["folded_batchnorms"] == 9 and path.is_file()
    assert main(["export", "--weights", str(path), "--out", str(tmp_path / "again.onnx")]) == 2
    assert "already exported" in capsys.readouterr().err
