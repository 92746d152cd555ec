"""From a data location and a recipe to datasets and loaders, through ``mfnet.data``'s public functions.

``DataSpec(format, annotations, root, split)`` says where a dataset is; the formats are those of
``mfnet.data.annotations.load_annotations`` (video datasets) plus ``"imagefolder"`` (ImageNet-style
``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg`` for the 2D models). Items of every dataset built here
are dicts with ``"clip"`` (float ``(C, T, H, W)``, or ``(C, H, W)`` for images), ``"label"`` and
``"video_index"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Dataset, Subset

from mfnet.engine.distributed import DistContext
from mfnet.engine.recipes import Recipe
from mfnet.errors import DataError

IMAGE_FOLDER = "imagefolder"


@dataclass
class DataSpec:
    """Where a dataset is.

    Attributes:
        format: An annotation format of ``mfnet.data.annotations`` (``kinetics400``, ``ucf101``, ``hmdb51``,
            ``list``, ...) or ``"imagefolder"``.
        annotations: The annotation file or folder (``None`` for formats that need none).
        root: The folder the videos' relative paths start from.
        split: The UCF-101 / HMDB51 split (1, 2 or 3).
    """

    format: str
    annotations: str | Path | None = None
    root: str | Path | None = None
    split: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (stored in a run directory so ``--resume`` needs no data arguments)."""
        return {
            "format": self.format,
            "annotations": str(self.annotations) if self.annotations is not None else None,
            "root": str(self.root) if self.root is not None else None,
            "split": self.split,
        }


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


class _ImageItems(Dataset):
    """Wraps a torchvision ``ImageFolder`` so items are ``{"clip": (C, H, W), "label", "video_index"}``."""

    def __init__(self, folder: Any) -> None:
        self.folder = folder
        self.num_videos = len(folder)

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, label = self.folder[index]
        return {"clip": image, "label": int(label), "video_index": index, "clip_id": 0}


def _image_folder(root: Path, subset: str, transform: Any) -> Any:
    from torchvision.datasets import ImageFolder

    folder = root / subset
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist: --root must hold {subset}/<class>/<image> files")
    return ImageFolder(str(folder), transform=transform)


def _image_transforms(recipe: Recipe, *, train: bool) -> Any:
    from torchvision import transforms as T

    from mfnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    norm = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if train:
        return T.Compose([T.RandomResizedCrop(recipe.crop_size), T.RandomHorizontalFlip(), *norm])
    return T.Compose([T.Resize(recipe.resize), T.CenterCrop(recipe.crop_size), *norm])


def _annotations(spec: DataSpec) -> Any:
    from mfnet.data.annotations import load_annotations

    return load_annotations(spec.format, spec.annotations, spec.root, split=spec.split)


def _records(ann: Any, subset: str, spec: DataSpec) -> list[Any]:
    records = [r for r in ann.records if r.subset == subset]
    if not records:
        subsets = sorted({r.subset for r in ann.records})
        raise DataError(
            f"the {spec.format} annotations {spec.annotations} have no {subset!r} videos (they have "
            f"{', '.join(subsets) or 'none'}): check the file, or set train_subset / val_subset with --set"
        )
    return records


def build_datasets(spec: DataSpec, recipe: Recipe, *, train: bool = True, val: bool = True) -> TrainData:
    """The training and validation datasets of ``recipe`` on the data ``spec`` points to."""
    if spec.format == IMAGE_FOLDER:
        root = Path(spec.root or ".")
        train_folder = (
            _image_folder(root, recipe.train_subset, _image_transforms(recipe, train=True)) if train else None
        )
        val_folder = _image_folder(root, recipe.val_subset, _image_transforms(recipe, train=False)) if val else None
        classes = (train_folder or val_folder).classes if (train_folder or val_folder) else None
        val_names = [p for p, _ in val_folder.samples] if val_folder else None
        return TrainData(
            _ImageItems(train_folder) if train_folder else None,
            _ImageItems(val_folder) if val_folder else None,
            classes,
            val_names,
        )
    from mfnet.data.datasets import VideoClipDataset
    from mfnet.data.sampling import RandomClipSampler, UniformClipSampler
    from mfnet.data.transforms import eval_transform, train_transform

    ann = _annotations(spec)
    train_ds = val_ds = None
    val_names = None
    if train:
        sampler = RandomClipSampler(recipe.clip_length, recipe.train_frame_intervals or recipe.frame_interval)
        transform = train_transform(crop_size=recipe.crop_size, scale=recipe.train_scale)
        train_ds = VideoClipDataset(
            _records(ann, recipe.train_subset, spec), sampler=sampler, transform=transform, seed=recipe.seed
        )
    if val:
        val_records = _records(ann, recipe.val_subset, spec)
        sampler = UniformClipSampler(recipe.val_clips, recipe.clip_length, recipe.frame_interval)
        transform = eval_transform(crop_size=recipe.crop_size, resize=recipe.resize)
        val_ds = VideoClipDataset(val_records, sampler=sampler, transform=transform)
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
    resize: int,
) -> EvalData:
    """The test dataset: ``clips`` uniform clips x ``crops`` crops per video of ``subset`` (default: test or val)."""
    if spec.format == IMAGE_FOLDER:
        recipe = Recipe(crop_size=crop_size, resize=resize)
        folder = _image_folder(Path(spec.root or "."), subset or "val", _image_transforms(recipe, train=False))
        return EvalData(_ImageItems(folder), list(folder.classes), [p for p, _ in folder.samples], subset or "val")
    from mfnet.data.datasets import VideoClipDataset
    from mfnet.data.sampling import UniformClipSampler
    from mfnet.data.transforms import eval_transform

    ann = _annotations(spec)
    if subset is None:
        present = {r.subset for r in ann.records}
        subset = next((s for s in ("test", "val", "validation") if s in present), None) or sorted(present)[0]
    records = _records(ann, subset, spec)
    dataset = VideoClipDataset(
        records,
        sampler=UniformClipSampler(clips, clip_length, frame_interval),
        transform=eval_transform(crop_size=crop_size, resize=resize, num_crops=crops),
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
    from mfnet.data.loader import build_loader

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


def video_names_of(dataset: Dataset) -> list[str] | None:
    """A name per video of a dataset that keeps ``records`` (``mfnet.data`` datasets do), else ``None``."""
    records: Sequence[Any] | None = getattr(dataset, "records", None)
    return [str(r.path) for r in records] if records is not None else None
