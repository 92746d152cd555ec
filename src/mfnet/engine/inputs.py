"""From a data location and a recipe to datasets and loaders, through ``mfnet.data``'s public functions.

``DataSpec(format, annotations, root, split)`` says where a dataset is; the formats are those of
``mfnet.data.annotations.load_annotations``; ``"image-folder"`` gives images for the 2D models (ImageNet). Items of
every dataset built here are dicts with ``"clip"`` (float ``(C, T, H, W)``, or ``(C, H, W)`` for images),
``"label"``, ``"video_index"`` and ``"substituted"`` (see ``mfnet.data.datasets``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from mfnet.data.annotations import load_annotations
from mfnet.data.datasets import ImageDataset, VideoClipDataset
from mfnet.data.loader import build_loader
from mfnet.data.sampling import RandomClipSampler, UniformClipSampler
from mfnet.data.transforms import build_eval_transform, build_train_transform, protocol_of_resize
from mfnet.engine.distributed import DistContext
from mfnet.engine.recipes import Recipe
from mfnet.errors import DataError

IMAGE_FORMATS = ("image-folder",)


@dataclass
class DataSpec:
    """Where a dataset is.

    Attributes:
        format: An annotation format of ``mfnet.data.annotations`` (``kinetics400``, ``ucf101``, ``hmdb51``,
            ``list``, ``image-folder``, ...).
        annotations: The annotation file or folder (``None`` for formats that need none).
        root: The folder the videos' relative paths start from.
        split: The UCF-101 / HMDB51 split (1, 2 or 3).
        val_annotations: A second annotation file for validation/testing (e.g. ``val.txt`` of the ``list``
            format, whose subset is named after the file); by default the validation videos come from
            ``annotations`` too.
    """

    format: str
    annotations: str | Path | None = None
    root: str | Path | None = None
    split: int | None = None
    val_annotations: str | Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (stored in a run directory so ``--resume`` needs no data arguments)."""
        return {
            "format": self.format,
            "annotations": str(self.annotations) if self.annotations is not None else None,
            "root": str(self.root) if self.root is not None else None,
            "split": self.split,
            "val_annotations": str(self.val_annotations) if self.val_annotations is not None else None,
        }


RUN_DATA_FILE = "data.json"  # where a training run keeps its DataSpec, so that --resume needs no data arguments


def save_data_spec(run_dir: str | Path, spec: DataSpec) -> Path:
    """Writes ``RUN_DIR/data.json``."""
    path = Path(run_dir) / RUN_DATA_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec.to_dict(), indent=2) + "\n")
    return path


def saved_data_spec(run_dir: str | Path) -> dict[str, Any]:
    """The ``DataSpec`` fields a run directory recorded (``{}`` for none)."""
    path = Path(run_dir) / RUN_DATA_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def data_format_beside(weights: str | Path) -> str | None:
    """The annotation format of the run a checkpoint belongs to (its folder's or its parent's ``data.json``)."""
    for folder in (Path(weights).parent, Path(weights).parent.parent):
        saved = saved_data_spec(folder)
        if saved:
            return saved.get("format")
    return None


def resolve_data_spec(saved: Mapping[str, Any], recipe: Recipe, **given: Any) -> DataSpec:
    """A ``DataSpec`` from the options given (``None``: not given), else a run's saved one, else the recipe's.

    Raises:
        DataError: Neither annotations nor a root folder are known.
    """

    def pick(key: str, default: Any = None) -> Any:
        return given.get(key) or saved.get(key) or default

    spec = DataSpec(
        format=pick("format", recipe.data_format),
        annotations=pick("annotations"),
        root=pick("root"),
        split=pick("split", recipe.split),
        val_annotations=pick("val_annotations"),
    )
    if spec.annotations is None and spec.root is None:
        raise DataError("say where the data is: --annotations FILE and/or --data ROOT (see `mfnet train --help`)")
    return spec


@dataclass
class TrainData:
    """The datasets of a training run."""

    train: Dataset | None
    val: Dataset | None
    classes: list[str] | None
    val_names: list[str] | None = None


@dataclass
class EvalData:
    """An evaluation dataset with a name (path) per video."""

    dataset: Dataset
    classes: list[str] | None
    video_names: list[str]
    subset: str


def _annotations(spec: DataSpec, *, val: bool = False, classes: list[str] | None = None) -> Any:

    annotations = spec.val_annotations if val and spec.val_annotations is not None else spec.annotations
    root = spec.root
    if root is None:
        if annotations is None:
            raise DataError("say where the data is: give the dataset root folder (--data ROOT)")
        root = Path(annotations) if Path(annotations).is_dir() else Path(annotations).parent
    return load_annotations(spec.format, annotations, root, split=spec.split, classes=classes)


def _records(ann: Any, subset: str, spec: DataSpec, *, any_subset: bool = False) -> list[Any]:
    records = ann.subset(subset)
    if not records and any_subset:
        records = list(ann.records)  # a separate validation file: take all of it
    if not records:
        subsets = ", ".join(ann.subsets) or "none"
        raise DataError(
            f"the {spec.format} annotations {spec.annotations} have no {subset!r} videos on disk (subsets: "
            f"{subsets}; missing files: {len(ann.missing)}): check the paths, or set train_subset / val_subset"
        )
    return records


def _dataset(spec: DataSpec, records: list[Any], *, sampler: Any, transform: Any, seed: int = 0) -> Dataset:

    if spec.format in IMAGE_FORMATS:
        return ImageDataset(records, transform=transform, seed=seed)
    return VideoClipDataset(records, sampler=sampler, transform=transform, seed=seed)


def build_datasets(spec: DataSpec, recipe: Recipe, *, train: bool = True, val: bool = True) -> TrainData:
    """The training and validation datasets of ``recipe`` on the data ``spec`` points to.

    Training clips: ``RandomClipSampler`` (``clip_length`` frames, ``frame_interval`` or one drawn from
    ``train_frame_intervals``) and the paper's augmentation; validation: ``val_clips`` uniform clips, centre crop.
    """

    ann = _annotations(spec)
    train_ds = val_ds = None
    val_names = None
    if train:
        sampler = RandomClipSampler(recipe.clip_length, recipe.train_frame_intervals or recipe.frame_interval)
        transform = build_train_transform(
            recipe.train_protocol,
            crop_size=recipe.crop_size,
            short_side=recipe.train_scale,
            flip=recipe.train_flip,
            normalization=recipe.normalization,
        )
        records = _records(ann, recipe.train_subset, spec)
        train_ds = _dataset(spec, records, sampler=sampler, transform=transform, seed=recipe.seed)
    if val:
        val_ann = ann if spec.val_annotations is None else _annotations(spec, val=True, classes=list(ann.classes))
        val_records = _records(val_ann, recipe.val_subset, spec, any_subset=spec.val_annotations is not None)
        sampler = UniformClipSampler(recipe.val_clips, recipe.clip_length, recipe.frame_interval)
        transform = build_eval_transform(
            recipe.test_protocol,
            crop_size=recipe.crop_size,
            resize=recipe.resize,
            normalization=recipe.normalization,
            random_crop=recipe.test_random_crop,
        )
        val_ds = _dataset(spec, val_records, sampler=sampler, transform=transform)
        val_names = [str(r.path) for r in val_records]
    return TrainData(train_ds, val_ds, list(ann.classes) if ann.classes else None, val_names)


def build_eval_dataset(
    spec: DataSpec,
    *,
    clips: int,
    crops: int,
    subset: str | None,
    clip_length: int,
    frame_interval: int,
    crop_size: int,
    resize: int | Sequence[int] | None,
    normalization: str = "mfnet",
    test_protocol: str | None = None,
    random_crop: bool = False,
) -> EvalData:
    """The test dataset: ``clips`` uniform clips x ``crops`` crops per video of ``subset`` (default: test or val).

    ``test_protocol`` (``"authors"`` or ``"keep-aspect"``, see ``mfnet.data.transforms``) with ``resize`` gives the
    geometry; without a protocol, a ``(H, W)`` resize is the authors' and a number keeps the aspect ratio.
    ``random_crop`` takes one crop per clip at a position drawn from the item's seeded generator (reproducible)
    instead of the centre, as the authors' released test script does.
    """

    ann = _annotations(spec, val=True)
    if subset is None:
        present = set(ann.subsets)
        subset = next((s for s in ("test", "val") if s in present), None) or ann.subsets[0]
    records = _records(ann, subset, spec, any_subset=spec.val_annotations is not None)
    dataset = _dataset(
        spec,
        records,
        sampler=UniformClipSampler(clips, clip_length, frame_interval),
        transform=build_eval_transform(
            test_protocol or ("keep-aspect" if resize is None else protocol_of_resize(resize)),
            crop_size=crop_size,
            resize=resize,
            crops=crops,
            normalization=normalization,
            random_crop=random_crop,
        ),
    )
    return EvalData(dataset, list(ann.classes) if ann.classes else None, [str(r.path) for r in records], subset)


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    seed: int,
    epoch: int,
    ctx: DistContext,
    drop_last: bool,
    shard_eval: bool = False,
) -> DataLoader:
    """A loader over this process's part of ``dataset``.

    Training (``shard_eval=False``) uses ``mfnet.data.loader.build_loader`` (its own seeding per epoch and worker,
    a ``DistributedSampler`` under ``torchrun``). Evaluation (``shard_eval=True``) gives each process the strided
    shard ``rank::world_size`` in order, without the padding a ``DistributedSampler`` would add.
    """

    if shard_eval and ctx.distributed:
        dataset = Subset(dataset, list(range(ctx.rank, len(dataset), ctx.world_size)))
    distributed = ctx.distributed and not shard_eval
    return build_loader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        seed=seed,
        epoch=epoch,
        distributed=distributed,
        drop_last=drop_last,
        pin_memory=ctx.device.type == "cuda",
    )


class _SkipBatches(Sampler[list[int]]):
    """A batch sampler without its first ``skip`` batches (their indices are drawn, not loaded)."""

    def __init__(self, batch_sampler: Any, skip: int) -> None:
        self.batch_sampler = batch_sampler
        self.skip = skip

    def __iter__(self) -> Iterator[list[int]]:
        batches = iter(self.batch_sampler)
        for _ in range(self.skip):
            next(batches, None)
        yield from batches

    def __len__(self) -> int:
        return max(0, len(self.batch_sampler) - self.skip)


def batches_after(loader: DataLoader, skip: int) -> Iterator[Any]:
    """The batches of ``loader`` (one epoch) after its first ``skip``, as they would have come without skipping.

    When the dataset seeds every item from ``(seed, epoch, index)`` (it has ``set_epoch``, as the datasets of
    ``mfnet.data`` do) only the indices of the skipped batches are drawn: a second loader with the same dataset,
    workers and generator runs the rest of the batch sampler. Any other dataset may draw its randomness from the
    worker processes, so its skipped batches are loaded and dropped, which keeps every later batch identical.
    """
    if skip <= 0:
        return iter(loader)
    if not hasattr(loader.dataset, "set_epoch"):
        batches = iter(loader)
        for _ in range(skip):
            next(batches)
        return batches
    rest = DataLoader(
        loader.dataset,
        batch_sampler=_SkipBatches(loader.batch_sampler, skip),
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        worker_init_fn=loader.worker_init_fn,
        generator=loader.generator,
        prefetch_factor=loader.prefetch_factor if loader.num_workers > 0 else None,
    )
    return iter(rest)


def video_names_of(dataset: Dataset) -> list[str] | None:
    """A name per video of a dataset that keeps ``records`` (``mfnet.data`` datasets do), else ``None``."""
    records: Sequence[Any] | None = getattr(dataset, "records", None)
    return [str(r.path) for r in records] if records is not None else None
