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


def test_geometry_fields_round_trip_and_validate() -> None:
    for name in ("kinetics400", "ucf101", "hmdb51", "kinetics400-authors", "ucf101-authors", "hmdb51-authors"):
        r = get_recipe(name)
        assert (r.test_protocol, r.resize, r.train_protocol) == ("authors", (256, 256), "authors")
        assert Recipe.from_dict(r.to_dict()) == r
    assert get_recipe("smoke").test_protocol == "keep-aspect" and get_recipe("smoke").resize == 64
    r = get_recipe("smoke", ["test_protocol=authors", "resize=340x256"])  # width x height, as on the command line
    assert r.resize == (256, 340) and Recipe.from_dict(r.to_dict()) == r
    assert get_recipe("smoke", ["test_protocol=authors", "resize=[128, 160]"]).resize == (128, 160)
    assert get_recipe("kinetics400", ["test_protocol=keep-aspect", "resize=256"]).resize == 256
    for bad in (["test_protocol=square"], ["train_protocol=bogus"], ["resize=256,256"], ["resize=1,2,3"]):
        with pytest.raises(MfnetError):
            get_recipe("smoke", bad)  # smoke keeps the aspect: a pair is refused with the reason


def test_authors_recipes_follow_their_scripts() -> None:
    k = get_recipe("kinetics400-authors")
    assert (k.base_lr, k.batch_size, k.lr_reference_batch, k.scaled_lr()) == (0.05, 128, 128, 0.05)
    assert k.lr_milestones == (75.0, 116.7, 141.7) and k.warmup_start_factor == 0.5
    u = get_recipe("ucf101-authors")
    assert (u.base_lr, u.batch_size, u.backbone_lr_mult, u.drop_rate, u.epochs) == (0.005, 32, 0.2, 0.0, 50)
    assert u.lr_milestones == (20.97, 41.94) and u.train_frame_intervals == () and u.frame_interval == 2
    h = get_recipe("hmdb51-authors")
    assert h.lr_milestones == (14.01, 28.01, 42.02) and h.epochs == 100
    i = get_recipe("imagenet")
    assert (i.base_lr, i.batch_size, i.schedule, i.epochs) == (0.5, 1024, "exp", 288)
    assert round(i.epochs * 1_281_167 / i.batch_size, -4) == 360_000  # the paper's iterations
    assert i.label_smoothing == 0.0 and i.warmup_epochs == 0.0  # extra regularisation is opt-in
