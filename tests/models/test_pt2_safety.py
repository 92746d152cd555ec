"""Tests of mfnet.models.pt2_safety: a crafted ``.pt2`` is refused before anything in it runs.

Each malicious archive starts from a real ``mfnet export --format torch-export`` file and hides a payload that
creates a marker folder when unpickled or evaluated. The test shows that ``torch.export.load`` runs the payload
(where it does at load time), then that ``load_exported`` refuses the file with one line and nothing runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import mfnet
from malicious import Payload, pickled
from mfnet.engine.exported import load_exported
from mfnet.errors import CheckpointError
from mfnet.models.pt2_safety import check_pt2_archive
from mfnet.tools.export import export_model

SMALL = {"depths": (1, 1, 1, 1), "widths": (16, 16, 32, 32)}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = mfnet.create_model("mfnet3d", num_classes=3, **SMALL).eval()
    path = tmp_path_factory.mktemp("pt2") / "good.pt2"
    assert export_model(model, path, format="torch-export", input_shape=(1, 3, 4, 32, 32), dynamic_batch=True).ok
    return path


def _rewrite(source: Path, target: Path, edit: Callable[[str, dict[str, bytes]], None]) -> Path:
    """Copies the archive, letting ``edit(root, entries)`` change the entries (``{inner name: bytes}``)."""
    with zipfile.ZipFile(source) as archive:
        root = archive.namelist()[0].split("/", 1)[0] + "/"
        entries = {name[len(root) :]: archive.read(name) for name in archive.namelist()}
    edit(root, entries)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for name, data in entries.items():
            archive.writestr(root + name, data)
    return target


def _edit_json(entries: dict[str, bytes], name: str, change: Callable[[dict], None]) -> None:
    obj = json.loads(entries[name])
    change(obj)
    entries[name] = json.dumps(obj).encode()


def _pickled_weight(marker: Path) -> Callable[[str, dict[str, bytes]], None]:
    def edit(root: str, entries: dict[str, bytes]) -> None:
        _edit_json(
            entries,
            "data/weights/model_weights_config.json",
            lambda c: next(iter(c["config"].values())).update(use_pickle=True),
        )
        entries["data/weights/weight_0"] = pickled(Payload(marker))

    return edit


def _pickled_constant(marker: Path) -> Callable[[str, dict[str, bytes]], None]:
    def edit(root: str, entries: dict[str, bytes]) -> None:
        meta = {"path_name": "tensor_0", "is_param": False, "use_pickle": True, "tensor_meta": None}
        _edit_json(entries, "data/constants/model_constants_config.json", lambda c: c["config"].update(c0=meta))
        entries["data/constants/tensor_0"] = pickled(Payload(marker))

    return edit


def _sample_inputs(marker: Path) -> Callable[[str, dict[str, bytes]], None]:
    def edit(root: str, entries: dict[str, bytes]) -> None:
        entries["data/sample_inputs/model.pt"] = pickled(((Payload(marker),), {}))

    return edit


def _graph_call(marker: Path) -> Callable[[str, dict[str, bytes]], None]:
    def change(program: dict) -> None:
        program["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.mkdir"

    return lambda root, entries: _edit_json(entries, "models/model.json", change)


def _expression(marker: Path) -> Callable[[str, dict[str, bytes]], None]:
    def change(program: dict) -> None:
        text = json.dumps(program).replace("Symbol(", f"Max(__import__('os').mkdir({str(marker)!r}) or 1, Symbol(")
        program.clear()
        program.update(json.loads(text.replace("integer=True)", "integer=True))", 1)))

    return lambda root, entries: _edit_json(entries, "models/model.json", change)


def _guards(marker: Path) -> Callable[[str, dict[str, bytes]], None]:
    code = f"__import__('os').mkdir({str(marker)!r})"
    return lambda root, entries: _edit_json(entries, "models/model.json", lambda p: p.update(guards_code=[code]))


def _native_library(marker: Path) -> Callable[[str, dict[str, bytes]], None]:
    return lambda root, entries: entries.update({"data/aotinductor/model/model.so": b"\x7fELF"})


# The payloads torch.export.load runs while loading (the others run when the program is called or turned into a
# module, which a test does not do outside the refusal check).
RUNS_AT_LOAD = {"pickled weight": _pickled_weight, "pickled constant": _pickled_constant,
                "sample inputs": _sample_inputs, "expression": _expression}  # fmt: skip
ATTACKS = {**RUNS_AT_LOAD, "graph call": _graph_call, "guard code": _guards, "native library": _native_library}


@pytest.mark.parametrize("attack", sorted(RUNS_AT_LOAD))
def test_torch_export_load_runs_the_payload(attack: str, exported: Path, tmp_path: Path) -> None:
    """The threat is real: without the check, loading the crafted file runs its payload."""
    marker = tmp_path / "ran"
    evil = _rewrite(exported, tmp_path / "evil.pt2", RUNS_AT_LOAD[attack](marker))
    with contextlib.suppress(Exception):
        torch.export.load(str(evil))
    assert marker.exists()


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_crafted_archive_is_refused_before_anything_runs(attack: str, exported: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = _rewrite(exported, tmp_path / "evil.pt2", ATTACKS[attack](marker))
    with pytest.raises(CheckpointError, match="refused") as info:
        load_exported(evil)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_plain_export_passes_and_runs(exported: Path, tmp_path: Path) -> None:
    check_pt2_archive(exported)
    # Rewritten without changes (another zip writer), it still passes and loads.
    copy = _rewrite(exported, tmp_path / "copy.pt2", lambda root, entries: None)
    runner = load_exported(copy)
    assert runner(torch.zeros(2, 3, 4, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize(
    "content, message",
    [(b"", "not an ExportedProgram"), (os.urandom(256), "not an ExportedProgram"), (None, "refused")],
)
def test_not_an_archive(content: bytes | None, message: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.pt2"
    if content is None:  # the pre-2.7 layout, which torch reads with an unrestricted unpickler
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("version", "8.0")
            archive.writestr("serialized_state_dict.json", pickled({}))
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_exported(path)
