"""Which test geometry a checkpoint gets: explicit resize, the run's recipe, the checkpoint, the authors' layout."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import mfnet
from mfnet.engine.evaluate import evaluate
from mfnet.engine.inputs import DataSpec, build_datasets, build_eval_dataset, resolve_test_geometry
from mfnet.engine.recipes import get_recipe


def test_explicit_resize_wins_and_its_form_names_the_protocol() -> None:
    recipe = {"test_protocol": "authors", "resize": [256, 256]}
    short = resolve_test_geometry(224, resize=288, recipe=recipe)
    assert (short.protocol, short.resize, short.source) == ("keep-aspect", 288, "--resize")
    fixed = resolve_test_geometry(224, resize=(256, 340), meta={"source_layout": "authors"})
    assert (fixed.protocol, fixed.resize) == ("authors", (256, 340))
    assert fixed.describe() == (
        "test protocol: authors (frames resized to 340x256, aspect not kept; centre crop 224x224) [--resize]"
    )


def test_recipe_then_checkpoint_then_authors_layout_then_default() -> None:
    run = get_recipe("kinetics400").to_dict()
    assert resolve_test_geometry(224, recipe=run).resize == (256, 256)
    old_run = {"crop_size": 224, "resize": 256}  # recipe.json written before protocols existed
    assert (resolve_test_geometry(224, recipe=old_run).protocol, resolve_test_geometry(224, recipe=old_run).resize) == (
        "keep-aspect",
        256,
    )
    # A clip spec in the checkpoint's metadata, at the top level or nested.
    for meta in ({"test_protocol": "authors", "resize": [256, 256]}, {"clip": {"test_protocol": "authors"}}):
        geometry = resolve_test_geometry(224, meta=meta)
        assert (geometry.protocol, geometry.resize, geometry.source) == (
            "authors",
            (256, 256),
            "the checkpoint's clip spec",
        )
    authors = resolve_test_geometry(112, meta={"model": "mfnet3d", "source_layout": "authors"})
    assert (authors.protocol, authors.resize, authors.source) == ("authors", (128, 128), "the authors' checkpoint")
    smoke = get_recipe("smoke").to_dict()  # 64 crops of a 64 short side: asked for 224 crops, 256 it is
    assert resolve_test_geometry(224, recipe=smoke).resize == 256
    assert resolve_test_geometry(64, recipe=smoke).resize == 64
    plain = resolve_test_geometry(224, meta={"model": "mfnet3d"})
    assert (plain.protocol, plain.resize, plain.source) == ("keep-aspect", 256, "default")


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
