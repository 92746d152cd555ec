"""Which test geometry a checkpoint gets: explicit resize, the run's recipe, the checkpoint, the authors' layout."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

import mfnet
from mfnet.engine.evaluate import evaluate
from mfnet.engine.input_spec import apply_overrides, input_spec_of
from mfnet.engine.inputs import DataSpec, build_datasets, build_eval_dataset
from mfnet.engine.recipes import get_recipe
from mfnet.models.weights import InputSpec


def test_explicit_resize_wins_and_its_form_names_the_protocol() -> None:
    stored = input_spec_of({"input_spec": InputSpec(resize=(256, 256), test_protocol="authors").to_dict()})
    short = apply_overrides(stored, resize=288)
    assert (short.spec.test_protocol, short.spec.eval_resize) == ("keep-aspect", 288)
    assert short.describe_geometry() == (
        "test protocol: keep-aspect (short side resized to 288, aspect kept; centre crop 224x224) [--resize]"
    )
    fixed = apply_overrides(input_spec_of(None), resize=(256, 340))
    assert (fixed.spec.test_protocol, fixed.spec.eval_resize) == ("authors", (256, 340))
    assert fixed.describe_geometry() == (
        "test protocol: authors (frames resized to 340x256, aspect not kept; centre crop 224x224) [--resize]"
    )


def test_checkpoint_then_run_recipe_then_paper_default(tmp_path: Path) -> None:
    stored = input_spec_of(
        {"input_spec": InputSpec(crop_size=112, resize=(128, 128), test_protocol="authors").to_dict()}
    )
    assert (stored.spec.test_protocol, stored.spec.eval_resize, stored.source) == (
        "authors",
        (128, 128),
        "the checkpoint",
    )
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.json").write_text(json.dumps(get_recipe("kinetics400").to_dict()))
    from_recipe = input_spec_of({}, weights=run / "model.pt")
    assert (from_recipe.spec.test_protocol, from_recipe.spec.eval_resize) == ("authors", (256, 256))
    (run / "recipe.json").write_text(json.dumps({"crop_size": 224, "resize": 256}))  # written before protocols
    old = input_spec_of({}, weights=run / "model.pt")
    assert (old.spec.test_protocol, old.spec.eval_resize) == ("keep-aspect", 256)
    authors = input_spec_of(None)  # the authors' files store nothing: the paper's test setting
    assert (authors.spec.test_protocol, authors.spec.eval_resize, authors.source) == (
        "authors",
        (256, 256),
        "the paper's defaults",
    )


def test_build_eval_dataset_uses_the_protocol(ucf_spec: DataSpec) -> None:
    common = {"clips": 1, "crops": 1, "subset": None, "clip_length": 4, "frame_interval": 1, "crop_size": 32}
    authors = build_eval_dataset(ucf_spec, resize=(37, 37), test_protocol="authors", **common)
    keep = build_eval_dataset(ucf_spec, resize=37, **common)
    assert authors.dataset.transform.protocol == "authors" and keep.dataset.transform.protocol == "keep-aspect"
    a, k = authors.dataset[0]["clip"], keep.dataset[0]["clip"]
    assert a.shape == k.shape == (3, 4, 32, 32) and not torch.equal(a, k)  # 40x48 frames: different crops
    # The authors' test script's random crop: seeded per item, so the same item gives the same crop.
    random = build_eval_dataset(ucf_spec, resize=(37, 37), test_protocol="authors", random_crop=True, **common)
    crops = [random.dataset[i]["clip"] for i in range(len(random.dataset))]
    assert all(torch.equal(c, random.dataset[i]["clip"]) for i, c in enumerate(crops))
    centres = [authors.dataset[i]["clip"] for i in range(len(authors.dataset))]
    assert any(not torch.equal(c, d) for c, d in zip(crops, centres, strict=True))


def test_an_authors_layout_checkpoint_is_evaluated_with_the_authors_geometry(
    ucf_spec: DataSpec, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(0)
    model = mfnet.create_model("mfnet3d", num_classes=2)
    weights = tmp_path / "authors_style.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, weights)
    with caplog.at_level(logging.INFO, logger="mfnet"):
        result = evaluate(
            weights, ucf_spec, clips=1, clip_length=4, crop_size=32, num_workers=0, progress=False, fast=False
        )
    assert result.extra["test_protocol"] == "authors" and result.extra["resize"] == (37, 37)
    assert "test protocol: authors (frames resized to 37x37, aspect not kept; centre crop 32x32)" in caplog.text
    short = evaluate(
        weights, ucf_spec, clips=1, clip_length=4, crop_size=32, resize=37, num_workers=0, progress=False, fast=False
    )
    assert short.extra["test_protocol"] == "keep-aspect" and short.extra["resize"] == 37


def test_training_datasets_follow_the_recipe_geometry(ucf_spec: DataSpec) -> None:
    small = {"clip_length": 4, "frame_interval": 1, "crop_size": 32, "train_scale": "32,40"}
    authors = build_datasets(ucf_spec, get_recipe("ucf101", {**small, "resize": "37x37"}))
    assert authors.train.transform.square and authors.train.transform.aspect_ratio == (0.64, 1.5625)
    assert (authors.val.transform.protocol, authors.val.transform.resize) == ("authors", (37, 37))
    keep = build_datasets(ucf_spec, get_recipe("smoke", {**small, "resize": 37}))
    assert not keep.train.transform.square and keep.train.transform.aspect_ratio == (0.8, 1.25)
    assert (keep.val.transform.protocol, keep.val.transform.resize) == ("keep-aspect", 37)
    assert authors.train[0]["clip"].shape == keep.train[0]["clip"].shape == (3, 4, 32, 32)
