"""``mfnet weights`` and ``hubconf.py``: an authors'-layout file imported, then used by name everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import mfnet
from mfnet.cli import main
from mfnet.data.video_writer import write_video
from mfnet.engine.predictor import load_model
from mfnet.labels import load_labels
from mfnet.models.hub import cached_path, sha256_of
from mfnet.models.weights import WeightsRecord, get_weights, register_weights, unregister_weights

REPO = Path(__file__).resolve().parents[2]
NAME = "mfnet3d.ucf101_s1_authors"
CLIP = torch.randn(1, 3, 4, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def authors_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    """A full-size mfnet3d with 101 classes saved as the authors saved theirs, and its logits on ``CLIP``."""
    torch.manual_seed(0)
    model = mfnet.create_model("mfnet3d", num_classes=101).eval()
    torch.nn.init.normal_(model.classifier.weight, std=0.05)
    state = {f"module.{k}": v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path_factory.mktemp("authors") / "MFNet3D_UCF-101_Split-1_96.3.pth"
    torch.save({"epoch": 30, "state_dict": state}, path, _use_new_zipfile_serialization=False)
    with torch.no_grad():
        return path, model(CLIP)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MFNET_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MFNET_OFFLINE", raising=False)
    return tmp_path / "home"


def _last_json(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


@pytest.mark.slow
def test_import_then_use_by_name(
    authors_file: tuple[Path, torch.Tensor], home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, logits = authors_file
    record = get_weights(NAME)
    assert main(["weights", "list"]) == 0
    assert NAME in capsys.readouterr().out

    assert main(["weights", "import", str(path), "--as", NAME, "--json"]) == 0
    result = _last_json(capsys.readouterr().out)
    assert result["path"] == str(cached_path(record)) and result["sha256"] == sha256_of(path)
    assert Path(result["path"]).is_relative_to(home)

    listed = [json.loads(line) for line in (main(["weights", "list", "--json"]), capsys.readouterr().out)[1].split("\n")
              if line]  # fmt: skip
    assert {r["name"]: r["cached"] for r in listed}[NAME] is True
    assert main(["weights", "info", NAME]) == 0
    info = capsys.readouterr().out
    assert "present" in info and "96.3%" in info and "https://goo.gl/mML2gv" in info

    # by name: the same logits, the registry's classes and clip spec (and a note saying so)
    with torch.no_grad():
        assert torch.equal(mfnet.create_model(NAME, pretrained=True).eval()(CLIP), logits)
    loaded = load_model(NAME)
    assert loaded.meta["classes"] == load_labels("ucf101") and loaded.input_spec.spec == record.input_spec
    assert "registry record" in loaded.input_spec.note
    by_path = load_model(path)  # the authors' file under its released name: the same record is recognised
    assert by_path.meta["classes"] == load_labels("ucf101") and by_path.input_spec.spec == record.input_spec

    video = write_video(tmp_path / "v.mp4", np.full((12, 48, 64, 3), 90, dtype=np.uint8), fps=10)
    argv = ["predict", str(video), "--weights", NAME, "--clips", "1", "--frames", "4", "--size", "64", "--workers", "0"]
    assert main([*argv, "--json"]) == 0
    out, err = capsys.readouterr()
    assert _last_json(out)["topk"][0]["label"] in load_labels("ucf101")
    assert "registry record mfnet3d.ucf101_s1_authors" in err and "--frames 4" in err

    # convert the cached file, then load the folder by path and through predict
    out_dir = tmp_path / "converted"
    assert main(["weights", "convert", NAME, "--out", str(out_dir), "--json"]) == 0
    assert _last_json(capsys.readouterr().out)["files"] == ["README.md", "config.json", "model.safetensors"]
    with torch.no_grad():
        assert torch.equal(mfnet.create_model(str(out_dir)).eval()(CLIP), logits)
    assert main([*argv[:3], str(out_dir), *argv[4:], "--json"]) == 0
    out, err = capsys.readouterr()
    assert "stores no clip spec" not in err  # the converted folder carries the spec

    assert main(["weights", "push", NAME, "--repo", "someone/mfnet3d-ucf101", "--dry-run", "--json"]) == 0
    pushed = _last_json(capsys.readouterr().out)
    assert pushed["files"] == ["README.md", "config.json", "model.safetensors"] and pushed["uploaded"] is False

    # a changed cached file is refused by name
    cached = cached_path(record)
    cached.write_bytes(cached.read_bytes()[:-1] + b"\x01")
    assert main(["predict", str(video), "--weights", NAME]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sha256" in err


def test_import_refuses_a_file_of_another_model(
    authors_file: tuple[Path, torch.Tensor], home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = authors_file
    assert main(["weights", "import", str(path), "--as", "mfnet3d.k400_authors"]) == 2  # 101 classes, not 400
    err = capsys.readouterr().err
    assert err.startswith("mfnet: error:") and err.count("\n") == 1 and "400" in err
    assert not cached_path(get_weights("mfnet3d.k400_authors")).exists()


def test_offline_download_and_unknown_names(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MFNET_OFFLINE", "1")
    assert main(["weights", "download", "mfnet3d.k400_authors"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "MFNet3D_Kinetics-400_72.8.pth" in err
    assert str(home / "weights" / "mfnet3d.k400_authors" / "MFNet3D_Kinetics-400_72.8.pth") in err
    assert main(["weights", "info", "mfnet3d.kinetics"]) == 2
    assert "unknown weights 'mfnet3d.kinetics'" in capsys.readouterr().err
    assert main(["predict", "x.mp4", "--weights", "mfnet3d.k400_authors"]) == 2  # the video does not exist


def test_torch_hub_load_from_the_local_repo(
    authors_file: tuple[Path, torch.Tensor], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, logits = authors_file
    monkeypatch.setattr(torch.hub, "_hub_dir", str(home / "torch_hub"))  # torch.hub's own folder, kept in tmp
    image = torch.hub.load(str(REPO), "mfnet2d", source="local", num_classes=7)
    assert image.num_classes == 7 and image.input_ndim == 4
    small = torch.hub.load(str(REPO), "mfnet3d", source="local", num_classes=5, depths=[1, 1, 1, 1])
    assert small.num_classes == 5
    model = torch.hub.load(str(REPO), "mfnet3d", source="local", weights=str(path))
    with torch.no_grad():
        assert torch.equal(model.eval()(CLIP), logits)
    with pytest.raises(mfnet.MfnetError, match="not cached"):
        torch.hub.load(str(REPO), "mfnet3d", source="local", pretrained=True)


def test_download_from_a_file_url_then_from_the_cache(
    tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = {"depths": [1, 1, 1, 1], "widths": [32, 32, 64, 64]}
    model = mfnet.create_model("mfnet3d", num_classes=2, **small)
    served = tmp_path / "served" / "small.pth"
    served.parent.mkdir()
    torch.save(model.state_dict(), served)
    record = WeightsRecord(
        name="mfnet3d.cli_test", architecture="mfnet3d", num_classes=2, file="small.pth", arch_kwargs=small,
        sha256=sha256_of(served), urls=(served.as_uri(),),
    )  # fmt: skip
    register_weights(record)
    try:
        assert main(["weights", "download", record.name, "--json"]) == 0
        first = _last_json(capsys.readouterr().out)
        assert first["source"] == "url" and first["sha256"] == record.sha256
        assert main(["weights", "download", record.name, "--json"]) == 0
        assert _last_json(capsys.readouterr().out)["source"] == "cache"
    finally:
        unregister_weights(record.name)
