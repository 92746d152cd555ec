"""Recipes as files: a run's recipe.json, an edited copy, YAML; unknown fields refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from engine_helpers import tiny_cli_args

from mfnet.cli import main
from mfnet.engine.recipes import get_recipe, load_recipe, resolve_recipe
from mfnet.errors import MfnetError


def test_json_and_yaml_files_round_trip(tmp_path: Path) -> None:
    recipe = get_recipe("ucf101", {"epochs": 3, "lr_milestones": "1,2"})
    path = tmp_path / "r.json"
    path.write_text(json.dumps({**recipe.to_dict(), "scaled_lr": recipe.scaled_lr()}))  # `recipes show --json`
    assert load_recipe(path) == recipe
    assert resolve_recipe(path, ["epochs=5"]).epochs == 5
    yaml = pytest.importorskip("yaml")
    ypath = tmp_path / "r.yaml"
    ypath.write_text(yaml.safe_dump({"name": "mine", "model": "mfnet3d", "epochs": 4, "train_scale": [64, 80]}))
    mine = load_recipe(ypath)
    assert (mine.name, mine.epochs, mine.train_scale, mine.batch_size) == ("mine", 4, (64, 80), 1024)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"epochs": 3, "learning_rate": 0.1}', "unknown recipe field 'learning_rate'"),
        ('{"epochs": "three"}', "invalid value 'three' for recipe field 'epochs'"),
        ("[1, 2]", "must hold one mapping"),
        ("{epochs: 3", "not valid JSON"),
    ],
)
def test_bad_files_are_refused_by_name(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(MfnetError, match=message) as err:
        load_recipe(path)
    assert str(path) in str(err.value)
    with pytest.raises(MfnetError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")


@pytest.mark.slow
def test_train_from_a_runs_recipe_file(tmp_path: Path, ucf_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--format", "ucf101", "--annotations", str(ucf_root), "--data", str(ucf_root), "--split", "1"]
    first = tmp_path / "first"
    argv = ["train", "--recipe", "smoke", *data, *tiny_cli_args(epochs=1), "--out", str(first), "--no-progress",
            "--no-figures", "--json"]  # fmt: skip
    assert main(argv) == 0
    edited = json.loads((first / "recipe.json").read_text())
    edited["frame_interval"] = 3
    copy = tmp_path / "edited.json"
    copy.write_text(json.dumps(edited))
    assert main(["recipes", "show", str(copy), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["frame_interval"] == 3
    second = tmp_path / "second"
    assert main(["train", "--recipe", str(copy), *data, "--out", str(second), "--no-progress", "--no-figures"]) == 0
    assert json.loads((second / "recipe.json").read_text()) == edited
    edited["no_such_field"] = 1
    copy.write_text(json.dumps(edited))
    capsys.readouterr()
    assert main(["train", "--recipe", str(copy), *data, "--out", str(tmp_path / "third")]) == 2
    assert "unknown recipe field 'no_such_field'" in capsys.readouterr().err
