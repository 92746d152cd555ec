"""Recipes: the paper's settings, typed overrides, round trip through JSON."""

from __future__ import annotations

import pytest

from mfnet.engine.recipes import RECIPES, Recipe, apply_overrides, describe, get_recipe, parse_overrides
from mfnet.errors import MfnetError


def test_paper_settings() -> None:
    k = get_recipe("kinetics400")
    assert (k.model, k.num_classes, k.clip_length, k.crop_size) == ("mfnet3d", 400, 16, 224)
    assert (k.base_lr, k.lr_reference_batch, k.momentum, k.nesterov, k.weight_decay) == (0.1, 1024, 0.9, True, 1e-4)
    assert k.schedule == "step" and k.lr_gamma == 0.1 and k.train_frame_intervals == (1, 2, 2, 3)
    assert k.grad_clip_norm == 0.0  # clipping off by default
    for name, classes in (("ucf101", 101), ("hmdb51", 51)):
        r = get_recipe(name)
        assert r.num_classes == classes and r.base_lr == 0.005 and r.batch_size == 128
        assert r.backbone_lr_mult == 0.2 and r.classifier_lr_mult == 1.0 and r.drop_rate > 0
        assert len(r.lr_milestones) == 3 and r.lr_gamma == 0.1 and r.split == 1
    i = get_recipe("imagenet")
    assert (i.model, i.base_lr, i.lr_reference_batch, i.schedule) == ("mfnet2d", 0.5, 1024, "exp")
    assert i.warmup_epochs > 0


def test_linear_lr_scaling() -> None:
    r = get_recipe("kinetics400", {"batch_size": 64})
    assert r.scaled_lr() == pytest.approx(0.1 * 64 / 1024)


def test_overrides_are_typed() -> None:
    r = get_recipe("ucf101", ["split=3", "epochs=2", "base_lr=0.01", "nesterov=false", "lr_milestones=1,1.5"])
    assert r.split == 3 and r.epochs == 2 and r.base_lr == 0.01 and r.nesterov is False
    assert r.lr_milestones == (1.0, 1.5)
    r = apply_overrides(r, ["init_weights=none", 'model_kwargs={"fibers": 8}', "train_scale=(64,80)"])
    assert r.init_weights is None and r.model_kwargs == {"fibers": 8} and r.train_scale == (64, 80)
    assert RECIPES["ucf101"].split == 1  # the built-in is untouched


@pytest.mark.parametrize("item", ["epochs=two", "nesterov=maybe", "no_such_field=1", "train_scale=1,2,3"])
def test_bad_overrides(item: str) -> None:
    with pytest.raises(MfnetError):
        get_recipe("smoke", [item])
    with pytest.raises(MfnetError):
        parse_overrides(["novalue"])
    with pytest.raises(MfnetError):
        get_recipe("no-such-recipe")


def test_json_round_trip_and_describe() -> None:
    r = get_recipe("kinetics400", {"epochs": 3})
    back = Recipe.from_dict(r.to_dict())
    assert back == r
    text = describe(r)
    assert "lr_milestones" in text and "epochs                 = 3" in text
