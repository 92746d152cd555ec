"""The weights registry and resolution: records, cache, file:// downloads with sha256, a Hub cache offline.

Nothing here touches the network: downloads are ``file://`` URLs and the Hub is a cache laid out in a temporary
folder as ``huggingface_hub`` writes it, read by a subprocess with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import mfnet
from mfnet.errors import CheckpointError, MfnetError
from mfnet.models.checkpoint import read_checkpoint, save_checkpoint
from mfnet.models.convert import convert_weights
from mfnet.models.hub import (
    ChecksumError,
    WeightsNotFoundError,
    cache_dir,
    cached_path,
    resolve_weights,
    sha256_of,
)
from mfnet.models.weights import (
    PAPER_INPUT,
    InputSpec,
    WeightsRecord,
    get_weights,
    list_weights,
    register_weights,
    unregister_weights,
)

SMALL = {"depths": [1, 1, 1, 1], "widths": [32, 32, 64, 64]}
TINY_SPEC = InputSpec(4, 3, 32, 36, "mfnet", "keep-aspect")
CLIP = torch.randn(1, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh weights cache for every test; downloads allowed unless a test switches them off."""
    monkeypatch.setenv("MFNET_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MFNET_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path / "home"


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small trained-looking mfnet3d checkpoint in the authors' layout (``module.`` keys, no metadata)."""
    torch.manual_seed(0)
    model = mfnet.create_model("mfnet3d", num_classes=3, **SMALL).eval()
    torch.nn.init.normal_(model.classifier.weight, std=0.5)
    state = {f"module.{k}": v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path_factory.mktemp("tiny") / "tiny_authors.pth"
    torch.save({"epoch": 3, "state_dict": state}, path)
    return path


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(CLIP)


@pytest.fixture
def tiny_record(tiny_file: Path) -> Iterator[WeightsRecord]:
    record = WeightsRecord(
        name="mfnet3d.tiny_test",
        architecture="mfnet3d",
        num_classes=3,
        file="tiny_authors.pth",
        arch_kwargs=SMALL,
        sha256=sha256_of(tiny_file),
        urls=(tiny_file.as_uri(),),
        input_spec=TINY_SPEC,
    )
    register_weights(record)
    yield record
    unregister_weights(record.name)


def _replace(record: WeightsRecord, **changes: object) -> WeightsRecord:
    unregister_weights(record.name)
    import dataclasses

    return register_weights(dataclasses.replace(record, **changes))


def test_registered_records_hold_what_they_promise() -> None:
    assert {"mfnet3d.k400_authors", "mfnet3d.ucf101_s1_authors", "mfnet3d.hmdb51_s1_authors",
            "mfnet2d.in1k_authors"} <= set(list_weights())  # fmt: skip
    for name in list_weights():
        record = get_weights(name)
        assert record.architecture in mfnet.list_models()
        with torch.device("meta"):
            model = mfnet.create_model(name)  # the architecture with the record's classes, random weights
        assert model.num_classes == record.num_classes
        assert mfnet.count_params(model) == record.params, name
        if record.labels:
            assert len(record.classes()) == record.num_classes
        assert record.paper_metric is not None and record.citation and record.license and record.provenance
        json.dumps(record.to_dict())
    k400 = get_weights("mfnet3d.k400_authors")
    assert k400.input_spec == PAPER_INPUT and k400.input_spec.eval_resize == (256, 256)
    assert k400.input_spec.test_protocol == "authors" and k400.paper_metric.top1 == 72.8
    with torch.device("meta"):
        assert (
            mfnet.count_macs(mfnet.create_model("mfnet3d.hmdb51_s1_authors"), (1, 3, 16, 224, 224))
            == get_weights("mfnet3d.hmdb51_s1_authors").macs
        )
    with pytest.raises(MfnetError, match=r"did you mean mfnet3d\.k400_authors"):
        get_weights("mfnet3d.k400_author")
    with pytest.raises(ValueError, match="twice"):
        register_weights(k400)


def test_file_url_with_the_right_hash_loads_and_is_cached(tiny_record: WeightsRecord, tiny_file: Path) -> None:
    model = mfnet.create_model("mfnet3d.tiny_test", pretrained=True)
    reference = mfnet.create_model("mfnet3d", weights=tiny_file, **SMALL)
    assert torch.equal(_logits(model), _logits(reference))
    cached = cached_path(tiny_record)
    assert cached.is_file() and sha256_of(cached) == tiny_record.sha256
    assert cached.parent.parent.parent == cache_dir()
    # a registered name as init weights of a fine-tune (recipe init_weights=NAME): the classifier is left new
    tuned = mfnet.create_model("mfnet3d", num_classes=5, weights="mfnet3d.tiny_test", **SMALL)
    assert tuned.num_classes == 5
    assert torch.equal(tuned.state_dict()["conv1.conv.weight"], reference.state_dict()["conv1.conv.weight"])
    # now offline: the cache answers
    os.environ["MFNET_OFFLINE"] = "1"
    try:
        assert resolve_weights("mfnet3d.tiny_test").source == "cache"
    finally:
        del os.environ["MFNET_OFFLINE"]


def test_file_url_with_a_wrong_hash_is_refused_and_not_cached(tiny_record: WeightsRecord) -> None:
    wrong = "0" * 64
    record = _replace(tiny_record, sha256=wrong)
    with pytest.raises(ChecksumError) as err:
        mfnet.create_model("mfnet3d.tiny_test", pretrained=True)
    message = str(err.value)
    assert wrong in message and sha256_of(Path(record.urls[0][len("file://") :])) in message
    assert "not cached" in message and "\n" not in message
    folder = cached_path(record).parent
    assert not cached_path(record).exists() and not any(folder.iterdir())  # no partial file either


def test_a_cached_file_that_changed_is_refused(tiny_record: WeightsRecord) -> None:
    path = resolve_weights("mfnet3d.tiny_test").path
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ChecksumError, match="delete it and download it again"):
        resolve_weights("mfnet3d.tiny_test")


def test_offline_and_missing_says_which_file_to_put_where(
    tiny_record: WeightsRecord, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MFNET_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as err:
        mfnet.create_model("mfnet3d.tiny_test", pretrained=True)
    message = str(err.value)
    assert "\n" not in message and "downloads are off" in message
    assert "tiny_authors.pth" in message and str(cached_path(tiny_record)) in message
    assert "mfnet weights import FILE --as mfnet3d.tiny_test" in message
    # the authors' records: no link mfnet can download, the authors' release named
    monkeypatch.delenv("MFNET_OFFLINE")
    with pytest.raises(WeightsNotFoundError, match=r"MFNet3D_Kinetics-400_72\.8\.pth from the authors' release"):
        mfnet.create_model("mfnet3d", pretrained=True)


def test_create_model_name_errors(tiny_record: WeightsRecord, tiny_file: Path) -> None:
    with pytest.raises(MfnetError, match="not both"):
        mfnet.create_model("mfnet3d.tiny_test", pretrained=True, weights=tiny_file)
    with pytest.raises(MfnetError, match="no pretrained weights are registered for 'resnext26_3d'"):
        mfnet.create_model("resnext26_3d", pretrained=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        mfnet.create_model("mfnet3d", weights="missing/model.pt")
    assert mfnet.create_model("mfnet3d.tiny_test").num_classes == 3  # the architecture, not the weights


def test_convert_then_create_model_from_the_folder(tiny_record: WeightsRecord, tiny_file: Path, tmp_path: Path) -> None:
    out = convert_weights(tiny_file, tmp_path / "converted", record=tiny_record)
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "mfnet3d" and config["arch_kwargs"] == SMALL and config["num_classes"] == 3
    assert config["input_spec"] == TINY_SPEC.to_dict() and config["sha256"] == sha256_of(out / "model.safetensors")
    assert config["source_sha256"] == tiny_record.sha256
    assert "mfnet3d.tiny_test" in (out / "README.md").read_text()
    assert read_checkpoint(out / "model.safetensors").meta["input_spec"] == TINY_SPEC.to_dict()
    reference = _logits(mfnet.create_model("mfnet3d", weights=tiny_file, **SMALL))
    assert torch.equal(_logits(mfnet.create_model(str(out))), reference)
    assert torch.equal(_logits(mfnet.create_model("mfnet3d", weights=out)), reference)
    # a changed weights file no longer matches its config.json
    data = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ChecksumError, match=r"does not match its config\.json"):
        mfnet.create_model(str(out))


def _hf_cache(root: Path, repo: str, files: dict[str, Path]) -> None:
    """Lays out ``files`` in a Hub cache under ``root`` as ``huggingface_hub`` writes it (blobs + snapshot links)."""
    folder = root / f"models--{repo.replace('/', '--')}"
    commit = hashlib.sha1(repo.encode()).hexdigest()
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    for name, source in files.items():
        blob = folder / "blobs" / sha256_of(source)
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, blob)
        link = folder / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


@pytest.mark.slow
def test_hub_cache_offline(tiny_file: Path, tmp_path: Path) -> None:
    pytest.importorskip("huggingface_hub")
    converted = convert_weights(tiny_file, tmp_path / "converted", model_name="mfnet3d", arch_kwargs=SMALL)
    hub = tmp_path / "hf"
    _hf_cache(hub, "someone/mfnet3d-tiny", {"tiny_authors.pth": tiny_file})
    _hf_cache(hub, "someone/mfnet3d-tiny-converted", {n: converted / n for n in ("config.json", "model.safetensors")})
    script = f"""
import json, sys, torch, mfnet
from mfnet.models.weights import InputSpec, WeightsRecord, register_weights
from mfnet.models.hub import resolve_weights
register_weights(WeightsRecord(name="mfnet3d.hub_test", architecture="mfnet3d", num_classes=3,
    file="tiny_authors.pth", arch_kwargs={SMALL!r}, sha256={sha256_of(tiny_file)!r}, hf_repo="someone/mfnet3d-tiny",
    urls=("file:///nonexistent/never-read.pth",)))
clip = torch.randn(1, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
a = mfnet.create_model("mfnet3d.hub_test", pretrained=True).eval()
b = mfnet.create_model("hf-hub:someone/mfnet3d-tiny-converted").eval()
with torch.no_grad():
    print(json.dumps({{"source": resolve_weights("mfnet3d.hub_test").source, "a": a(clip).tolist(),
                      "b": b(clip).tolist()}}))
try:
    mfnet.create_model("hf-hub:someone/absent")
except Exception as err:
    print(type(err).__name__, err)
"""
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1", "MFNET_HOME": str(tmp_path / "home"),
           "PYTHONPATH": os.pathsep.join(sys.path)}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    result = json.loads(lines[0])
    reference = _logits(mfnet.create_model("mfnet3d", weights=tiny_file, **SMALL))
    assert result["source"] == "hub"
    assert torch.allclose(torch.tensor(result["a"]), reference, atol=1e-6)
    assert torch.allclose(torch.tensor(result["b"]), reference, atol=1e-6)
    assert lines[1].startswith("WeightsNotFoundError hf-hub:someone/absent could not be loaded")
    assert not (tmp_path / "home" / "weights").exists()  # the Hub's own cache served it; nothing copied


def test_input_spec_round_trip_and_checks() -> None:
    spec = InputSpec(8, 4, 112, (128, 171), "imagenet", "keep-aspect")
    assert InputSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert InputSpec.from_dict({**spec.to_dict(), "future_field": 1}) == spec
    assert spec.input_shape(2) == (2, 3, 8, 112, 112) and InputSpec(frames=1).input_shape() == (1, 3, 224, 224)
    model = mfnet.create_model("mfnet3d", num_classes=3, **SMALL)
    path = save_checkpoint(
        Path(os.environ["MFNET_HOME"]) / "x.safetensors", model, model_name="mfnet3d", input_spec=spec.to_dict()
    )
    assert InputSpec.from_dict(read_checkpoint(path).meta["input_spec"]) == spec
