"""Training recipes: the paper's settings as named, typed, printable data.

A :class:`Recipe` is a flat dataclass; ``mfnet train --recipe NAME --set key=value`` and
:func:`apply_overrides` change single fields with the field's own type. A recipe can also be a file
(``mfnet train --recipe FILE.json|FILE.yaml``, :func:`load_recipe`), such as the ``recipe.json`` every run writes.
Two sets of built-in recipes exist, because the paper's text (Chen et al., ECCV 2018, Sec. 4) and the authors'
released scripts differ; every field where they do is listed in docs/training.md with the reason for mfnet's default:

* ``kinetics400``: the paper's text. ``mfnet3d`` from inflated ImageNet ``mfnet2d`` weights; SGD with Nesterov
  momentum 0.9, weight decay 1e-4, LR 0.1 at a global batch of 1024 (scaled linearly with the real batch), step
  decay x0.1 at the authors' 18, 28 and 34 million samples; 16-frame 224x224 clips with a frame interval drawn
  from ``[1, 2, 2, 3]``; the authors' geometry (frames squashed to a square in training, resized to 256x256 for
  testing).
* ``ucf101`` / ``hmdb51``: the paper's fine-tuning from Kinetics weights (split 1, 2 or 3 with ``--set split=N``):
  LR 0.005 at batch 128, x0.1 decays, backbone LR x0.2, dropout 0.5 before the classifier; authors' geometry.
* ``kinetics400-authors``, ``ucf101-authors``, ``hmdb51-authors``: the authors' scripts as released (LR 0.05 at
  batch 128 for Kinetics; 0.005 at batch 32 for the fine-tunes; decays at their sample counts; half the LR for
  the first 100 iterations; no dropout; a fixed frame interval of 2 for the fine-tunes).
* ``imagenet``: ``mfnet2d`` (or ``--set model=mf_resnet18`` / ``mf_mobilenet_v2`` / ``resnet18`` / ...) with the
  paper's schedule: LR 0.5 at batch 1024 decaying exponentially, 360,000 iterations (about 288 epochs). Extra
  regularisation is opt-in: ``--set label_smoothing=0.1 --set warmup_epochs=5``.
* ``smoke``: a tiny ``mfnet3d`` run (4x64x64 clips, 2 epochs) that finishes in minutes on a laptop CPU.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mfnet.data.transforms import TEST_PROTOCOLS, TRAIN_PROTOCOLS
from mfnet.engine.schedule import WARMUP_MODES
from mfnet.errors import MfnetError


@dataclass
class Recipe:
    """Everything a training run needs besides the data location and the output directory.

    Learning rates are given at ``lr_reference_batch`` and scaled linearly to the real global batch
    (``batch_size``, summed over all processes). Epoch-valued fields (``lr_milestones``, ``warmup_epochs``)
    are converted to optimizer steps with the real number of steps per epoch, so schedules are applied per step.
    """

    name: str = "custom"
    description: str = ""
    # --- model
    model: str = "mfnet3d"
    num_classes: int = 400
    init_weights: str | None = None  # a checkpoint path (2D weights are inflated for 3D models); None: random
    inflate: str = "average"
    drop_rate: float = 0.0
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # --- data
    data_format: str = "kinetics-csv"  # annotation format of mfnet.data.annotations
    split: int | None = None  # UCF-101 / HMDB51 split 1, 2 or 3
    train_subset: str = "train"
    val_subset: str = "val"
    clip_length: int = 16
    frame_interval: int = 2
    train_frame_intervals: tuple[int, ...] = ()  # drawn per clip when given, e.g. (1, 2, 2, 3)
    crop_size: int = 224
    # Evaluation geometry (see mfnet.data.transforms): "authors" resizes every frame to a fixed (H, W), aspect not
    # kept (the paper's 256x256); "keep-aspect" resizes the short side. `resize` is a short side or an (H, W) pair.
    test_protocol: str = "keep-aspect"
    resize: int | tuple[int, int] = 256
    test_random_crop: bool = False  # one random crop per clip instead of the centre (the authors' test script)
    # Training augmentation: "authors" squashes frames to a square and jitters w/h in [0.64, 1.56];
    # "keep-aspect" keeps the video's aspect ratio and jitters w/h in [0.8, 1.25].
    train_protocol: str = "keep-aspect"
    train_scale: tuple[int, int] = (224, 288)  # short side drawn in this range before the random crop
    train_flip: bool = True  # random horizontal flip in training (off where left/right is the label, as in the demo)
    normalization: str = "mfnet"  # see mfnet.data.transforms: mfnet | imagenet | none
    val_clips: int = 1  # clips per video for the validation pass after each epoch
    test_clips: int = 10  # clips per video for `mfnet eval` (the paper averages many clips)
    test_crops: int = 1
    # --- optimisation
    epochs: int = 100
    batch_size: int = 1024  # global batch per optimizer step (all processes together)
    accumulate_steps: int = 1  # micro-batches per optimizer step (gradient accumulation on small machines)
    optimizer: str = "sgd"  # sgd (the paper's) | adamw (uses weight_decay; momentum/nesterov are ignored)
    base_lr: float = 0.1
    lr_reference_batch: int = 1024
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    backbone_lr_mult: float = 1.0
    classifier_lr_mult: float = 1.0
    schedule: str = "step"  # step | exp | cosine | constant
    lr_milestones: tuple[float, ...] = ()  # epochs at which the step schedule multiplies the LR by lr_gamma
    lr_gamma: float = 0.1  # step factor, or the per-epoch factor of the exp schedule
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.1
    warmup_mode: str = "linear"  # linear: ramp from warmup_start_factor to 1; constant: the authors' LR/2 start
    label_smoothing: float = 0.0
    grad_clip_norm: float = 0.0  # 0: off
    # --- machinery
    amp: bool = False  # autocast on GPU only (never on CPU)
    amp_dtype: str = "bf16"  # bf16 | fp16 (fp16 uses a gradient scaler)
    sync_bn: bool = False
    channels_last: bool = True
    seed: int = 0
    deterministic: bool = False
    num_workers: int = 4
    log_every_steps: int = 10
    checkpoint_every_steps: int = 1000  # 0: only at the end of each epoch
    keep_checkpoints: int = 3
    eval_every_epochs: int = 1  # 0: no validation pass during training

    def __post_init__(self) -> None:
        if self.test_protocol not in TEST_PROTOCOLS:
            raise MfnetError(f"unknown test_protocol {self.test_protocol!r}: use one of {', '.join(TEST_PROTOCOLS)}")
        if self.train_protocol not in TRAIN_PROTOCOLS:
            raise MfnetError(f"unknown train_protocol {self.train_protocol!r}: use one of {', '.join(TRAIN_PROTOCOLS)}")
        if self.warmup_mode not in WARMUP_MODES:
            raise MfnetError(f"unknown warmup_mode {self.warmup_mode!r}: use one of {', '.join(WARMUP_MODES)}")
        if self.test_protocol == "keep-aspect" and not isinstance(self.resize, int):
            raise MfnetError(
                f"test_protocol keep-aspect resizes the short side but resize is {list(self.resize)}: give one "
                "number, or set test_protocol=authors for a fixed size"
            )

    def scaled_lr(self) -> float:
        """The base LR scaled linearly from ``lr_reference_batch`` to the real global ``batch_size``."""
        return self.base_lr * self.batch_size / self.lr_reference_batch

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        """The inverse of :meth:`to_dict`; unknown keys raise ``MfnetError``."""
        recipe = cls()
        return apply_overrides(recipe, {k: v for k, v in data.items()})


AUTHORS_GEOMETRY: dict[str, Any] = {"test_protocol": "authors", "resize": (256, 256), "train_protocol": "authors"}

# Training-set sizes that turn the authors' sample counts into epochs.
KINETICS400_TRAIN_VIDEOS = 240_000
UCF101_SPLIT1_TRAIN_VIDEOS = 9_537
HMDB51_SPLIT1_TRAIN_VIDEOS = 3_570


def _fine_tune(name: str, num_classes: int, data_format: str, milestones: tuple[float, ...], what: str) -> Recipe:
    return Recipe(
        name=name,
        description=f"Fine-tune mfnet3d from Kinetics-400 weights on {what} (split 1-3), as the paper says: LR 0.005 "
        "at batch 128, three x0.1 decays, backbone LR x0.2, dropout 0.5; authors' geometry.",
        model="mfnet3d",
        num_classes=num_classes,
        drop_rate=0.5,
        data_format=data_format,
        split=1,
        val_subset="test",
        epochs=50,
        batch_size=128,
        base_lr=0.005,
        lr_reference_batch=128,
        backbone_lr_mult=0.2,
        classifier_lr_mult=1.0,
        schedule="step",
        lr_milestones=milestones,
        lr_gamma=0.1,
        val_clips=1,
        **AUTHORS_GEOMETRY,
    )


def _fine_tune_authors(
    name: str, num_classes: int, data_format: str, *, samples: tuple[float, ...], videos: int, epochs: int, what: str
) -> Recipe:
    """The authors' ``train_ucf101.py`` / ``train_hmdb51.py``: batch 32, LR 0.005, decays at sample counts."""
    milestones = tuple(round(s / videos, 2) for s in samples if s / videos < epochs)
    return Recipe(
        name=name,
        description=f"Fine-tune mfnet3d from Kinetics-400 weights on {what} as the authors' script does: LR 0.005 at "
        f"batch 32, x0.1 at {', '.join(f'{s:.0f}' for s in samples)} samples ({len(milestones)} of them within "
        f"{epochs} epochs), backbone LR x0.2, no dropout.",
        model="mfnet3d",
        num_classes=num_classes,
        drop_rate=0.0,
        data_format=data_format,
        split=1,
        val_subset="test",
        frame_interval=2,
        epochs=epochs,
        batch_size=32,
        base_lr=0.005,
        lr_reference_batch=32,
        backbone_lr_mult=0.2,
        classifier_lr_mult=1.0,
        schedule="step",
        lr_milestones=milestones,
        lr_gamma=0.1,
        warmup_epochs=round(100 * 32 / videos, 3),  # their first 100 iterations at LR/2
        warmup_start_factor=0.5,
        warmup_mode="constant",
        val_clips=1,
        **AUTHORS_GEOMETRY,
    )


def _builtin() -> dict[str, Recipe]:
    recipes = [
        Recipe(
            name="kinetics400",
            description="Train mfnet3d on Kinetics-400 from inflated ImageNet mfnet2d weights (set init_weights=PATH) "
            "as the paper says: SGD Nesterov, LR 0.1 at batch 1024, step decay x0.1, 16x224x224 clips, authors' "
            "geometry.",
            model="mfnet3d",
            num_classes=400,
            data_format="kinetics-csv",
            train_frame_intervals=(1, 2, 2, 3),
            epochs=158,  # the authors' 38 M samples / ~240k videos
            batch_size=1024,
            base_lr=0.1,
            lr_reference_batch=1024,
            schedule="step",
            lr_milestones=(75.0, 117.0, 142.0),  # 18, 28, 34 M samples
            warmup_epochs=2.0,
            **AUTHORS_GEOMETRY,
        ),
        Recipe(
            name="kinetics400-authors",
            description="Train mfnet3d on Kinetics-400 as the authors' train_kinetics.py does: LR 0.05 at batch 128, "
            "x0.1 at 18, 28, 34 M samples, LR/2 for the first 100 iterations, 38 M samples in all.",
            model="mfnet3d",
            num_classes=400,
            data_format="kinetics-csv",
            train_frame_intervals=(1, 2, 2, 3),
            epochs=round(38e6 / KINETICS400_TRAIN_VIDEOS),
            batch_size=128,
            base_lr=0.05,
            lr_reference_batch=128,
            schedule="step",
            lr_milestones=tuple(round(s / KINETICS400_TRAIN_VIDEOS, 1) for s in (18e6, 28e6, 34e6)),
            warmup_epochs=round(100 * 128 / KINETICS400_TRAIN_VIDEOS, 3),
            warmup_start_factor=0.5,
            warmup_mode="constant",
            **AUTHORS_GEOMETRY,
        ),
        _fine_tune("ucf101", 101, "ucf101", (20.0, 35.0, 45.0), "UCF-101"),
        _fine_tune("hmdb51", 51, "hmdb51", (14.0, 28.0, 42.0), "HMDB51"),
        _fine_tune_authors(
            "ucf101-authors",
            101,
            "ucf101",
            samples=(2e5, 4e5, 6e5, 7e5),
            videos=UCF101_SPLIT1_TRAIN_VIDEOS,
            epochs=50,
            what="UCF-101",
        ),
        _fine_tune_authors(
            "hmdb51-authors",
            51,
            "hmdb51",
            samples=(5e4, 1e5, 1.5e5),
            videos=HMDB51_SPLIT1_TRAIN_VIDEOS,
            epochs=100,
            what="HMDB51",
        ),
        Recipe(
            name="imagenet",
            description="Train a 2D model (mfnet2d, mf_resnet18, mf_mobilenet_v2, resnet18, mobilenet_v2_140, "
            "resnext26_2d) on ImageNet-1k images with the paper's schedule: LR 0.5 at batch 1024 decaying "
            "exponentially, 360,000 iterations (288 epochs).",
            model="mfnet2d",
            num_classes=1000,
            data_format="image-folder",
            clip_length=1,
            frame_interval=1,
            epochs=288,  # 360,000 iterations x 1024 images / 1,281,167 images
            batch_size=1024,
            base_lr=0.5,
            lr_reference_batch=1024,
            schedule="exp",
            lr_gamma=0.976,  # the paper gives no rate: x0.001 over the run
            resize=256,
        ),
        Recipe(
            name="smoke",
            description="A laptop-CPU smoke test: mfnet3d on 4x64x64 clips, batch 8, 2 epochs, cosine LR.",
            model="mfnet3d",
            num_classes=8,
            data_format="ucf101",
            val_subset="test",
            clip_length=4,
            frame_interval=2,
            crop_size=64,
            resize=64,
            train_scale=(64, 80),
            epochs=2,
            batch_size=8,
            base_lr=0.05,
            lr_reference_batch=8,
            schedule="cosine",
            warmup_epochs=0.2,
            num_workers=2,
            log_every_steps=1,
            checkpoint_every_steps=50,
            test_clips=3,
        ),
    ]
    return {r.name: r for r in recipes}


RECIPES: dict[str, Recipe] = _builtin()


def list_recipes() -> list[str]:
    """Names of the built-in recipes."""
    return list(RECIPES)


def get_recipe(name: str, overrides: dict[str, Any] | list[str] | None = None) -> Recipe:
    """A fresh copy of built-in recipe ``name`` with ``overrides`` (``{"key": value}`` or ``["key=value"]``)."""
    if name not in RECIPES:
        raise MfnetError(f"unknown recipe {name!r}: choose one of {', '.join(RECIPES)} (run `mfnet recipes`)")
    recipe = dataclasses.replace(RECIPES[name], model_kwargs=dict(RECIPES[name].model_kwargs))
    return apply_overrides(recipe, overrides or {})


RECIPE_FILE_SUFFIXES = (".json", ".yaml", ".yml")


def is_recipe_file(name: str | Path) -> bool:
    """Whether ``name`` names a recipe file (a ``.json`` / ``.yaml`` path) rather than a built-in recipe."""
    return Path(name).suffix.lower() in RECIPE_FILE_SUFFIXES or Path(name).is_file()


def load_recipe(path: str | Path, overrides: dict[str, Any] | list[str] | None = None) -> Recipe:
    """Reads a recipe file (JSON, or YAML with PyYAML installed), such as the ``recipe.json`` a run writes.

    Every key must be a field of :class:`Recipe` (the ``scaled_lr`` that ``mfnet recipes show --json`` adds is
    ignored); fields left out keep :class:`Recipe`'s defaults. ``overrides`` are applied after the file.

    Raises:
        MfnetError: A missing or malformed file, an unknown field (named), or a value of the wrong type.
    """
    path = Path(path)
    if not path.is_file():
        raise MfnetError(f"recipe file {path} does not exist: give a .json or .yaml file, or a built-in recipe name")
    yaml_file = path.suffix.lower() in (".yaml", ".yml")
    if yaml_file:
        try:
            import yaml
        except ImportError:
            raise MfnetError(f"reading {path} needs PyYAML: pip install 'mfnet[yaml]', or use JSON") from None
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise MfnetError(f"recipe file {path} is not valid YAML ({first}): fix its syntax") from None
    else:
        try:
            data = json.loads(path.read_text())
        except ValueError as err:
            raise MfnetError(f"recipe file {path} is not valid JSON ({err}): fix its syntax") from None
    if not isinstance(data, dict):
        raise MfnetError(f"recipe file {path} must hold one mapping of recipe fields (key: value)")
    data.pop("scaled_lr", None)
    try:
        recipe = Recipe.from_dict(data)
    except MfnetError as err:
        raise MfnetError(f"{path}: {err}") from None
    return apply_overrides(recipe, overrides or {})


def resolve_recipe(name_or_path: str | Path, overrides: dict[str, Any] | list[str] | None = None) -> Recipe:
    """A built-in recipe by name, or a recipe file by path (see :func:`load_recipe`), with ``overrides``."""
    if is_recipe_file(name_or_path):
        return load_recipe(name_or_path, overrides)
    return get_recipe(str(name_or_path), overrides)


def parse_overrides(items: list[str]) -> dict[str, str]:
    """``["lr=0.1", "epochs=3"]`` -> ``{"lr": "0.1", "epochs": "3"}``; a malformed item raises ``MfnetError``."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MfnetError(f"invalid override {item!r}: write key=value, e.g. --set epochs=3")
        out[key.strip()] = value.strip()
    return out


def apply_overrides(recipe: Recipe, overrides: dict[str, Any] | list[str]) -> Recipe:
    """Returns a copy of ``recipe`` with fields replaced; string values are converted to the field's type."""
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    hints = typing.get_type_hints(Recipe)
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in hints:
            close = [f for f in hints if key.replace("-", "_") == f or key in f][:3]
            hint = f" (did you mean {', '.join(close)}?)" if close else "; run `mfnet recipes show NAME` for the fields"
            raise MfnetError(f"unknown recipe field {key!r}{hint}")
        changes[key] = _convert(key, value, hints[key])
    return dataclasses.replace(recipe, **changes)


def _convert(key: str, value: Any, hint: Any) -> Any:
    """Converts ``value`` (a string from the command line or a JSON value) to the type ``hint``."""
    try:
        return _convert_or_raise(value, hint)
    except (ValueError, TypeError, json.JSONDecodeError):
        raise MfnetError(f"invalid value {value!r} for recipe field {key!r} (expected {_type_name(hint)})") from None


def _convert_or_raise(value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        inner = [a for a in args if a is not type(None)]
        if int in inner and any(typing.get_origin(a) is tuple for a in inner):  # a size: 256, [256, 256], 340x256
            return _convert_size(value)
        return _convert_or_raise(value, inner[0])
    if origin is tuple:
        if isinstance(value, str):
            text = value.strip().strip("()[]")
            items: list[Any] = [p for p in text.replace(" ", "").split(",") if p] if text else []
        else:
            items = list(value)
        item_type = args[0]
        converted = tuple(_convert_or_raise(v, item_type) for v in items)
        if len(args) == 2 and args[1] is not Ellipsis and len(converted) != 2:
            raise ValueError("expected two values")
        return converted
    if origin is dict:
        parsed = json.loads(value) if isinstance(value, str) else dict(value)
        if not isinstance(parsed, dict):
            raise TypeError("expected a JSON object")
        return parsed
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if hint is int:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError("expected an integer")
        return int(value)
    if hint is float:
        return float(value)
    if hint is str:
        return str(value)
    raise TypeError(f"unsupported field type {hint}")


def _convert_size(value: Any) -> int | tuple[int, int]:
    """A short side (``256``) or an ``(H, W)`` pair (``[256, 340]``, ``"256,340"``, or ``"340x256"`` as W x H)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if "x" in text:
            width, height = (int(p) for p in text.split("x"))
            return (height, width)
        parts = [p for p in text.strip("()[]").replace(" ", "").split(",") if p]
        value = int(parts[0]) if len(parts) == 1 else parts
    if isinstance(value, bool):
        raise TypeError("expected a size")
    if isinstance(value, int | float):
        if isinstance(value, float) and not value.is_integer():
            raise ValueError("expected an integer")
        return int(value)
    items = [int(v) for v in value]
    if len(items) != 2:
        raise ValueError("expected a short side or two values (height, width)")
    return (items[0], items[1])


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def describe(recipe: Recipe) -> str:
    """The recipe as aligned ``key = value`` lines, with the scaled LR."""
    lines = [f"# {recipe.name}: {recipe.description}".rstrip(": ")]
    width = max(len(f.name) for f in dataclasses.fields(recipe))
    for f in dataclasses.fields(recipe):
        if f.name in ("name", "description"):
            continue
        lines.append(f"{f.name:<{width}} = {json.dumps(getattr(recipe, f.name))}")
    lines.append(f"# learning rate at the global batch {recipe.batch_size}: {recipe.scaled_lr():g}")
    return "\n".join(lines)
