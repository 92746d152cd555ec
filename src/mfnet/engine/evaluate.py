"""Evaluation: clip-level and video-level accuracy, per-class accuracy, confusion matrix, per-video predictions.

The paper's accuracy is video-level: each of a video's K clips (x crops) is classified, the softmax
probabilities are averaged (``mfnet.engine.predictor.average_by_video``, the one place that does it) and the
argmax is the video's prediction. Clip-level numbers score every clip on its own.

``evaluate(weights, data, clips=K, crops=1|3)`` evaluates a checkpoint on a dataset; ``run_evaluation(model,
dataset)`` evaluates a model in memory (used after each training epoch); both work under ``torchrun``, each process
scoring a shard of the clips.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from mfnet.engine.distributed import DistContext, all_gather_objects, cleanup, init_distributed
from mfnet.engine.input_spec import ResolvedSpec
from mfnet.engine.input_spec import apply_overrides as spec_overrides
from mfnet.engine.inputs import DataSpec, build_eval_dataset, make_loader
from mfnet.engine.metrics import confusion_matrix, mean_class_accuracy, per_class_accuracy, topk_correct
from mfnet.engine.predictor import average_by_video, load_model, prepare_for_inference
from mfnet.errors import MfnetError
from mfnet.fastpath import to_channels_last

logger = logging.getLogger("mfnet")


@dataclass
class EvalResult:
    """Scores of a model on a dataset.

    Attributes:
        clip_probs: Softmax of every clip (and crop) ``(M, K)``.
        clip_labels: True class of every clip ``(M,)``.
        clip_video: Video index of every clip ``(M,)``.
        video_probs: Averaged probabilities per video ``(V, K)`` (NaN rows for videos with no clip).
        video_labels: True class per video ``(V,)``.
        loss: Mean cross-entropy over clips.
        classes: Class names, when known.
        video_names: A name (path) per video, when known.
    """

    clip_probs: torch.Tensor
    clip_labels: torch.Tensor
    clip_video: torch.Tensor
    video_probs: torch.Tensor
    video_labels: torch.Tensor
    loss: float
    classes: list[str] | None = None
    video_names: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Classes ``K``."""
        return int(self.clip_probs.shape[1])

    def _scored_videos(self) -> torch.Tensor:
        return ~torch.isnan(self.video_probs[:, 0]) if self.video_probs.numel() else torch.zeros(0, dtype=torch.bool)

    def confusion(self) -> torch.Tensor:
        """Video-level confusion matrix ``(K, K)``: rows true class, columns predicted class."""
        keep = self._scored_videos()
        pred = self.video_probs[keep].argmax(1)
        return confusion_matrix(pred, self.video_labels[keep], self.num_classes)

    def per_class_accuracy(self) -> torch.Tensor:
        """Video-level accuracy of each class ``(K,)`` (NaN for a class without videos)."""
        return per_class_accuracy(self.confusion())

    def summary(self) -> dict[str, Any]:
        """The headline numbers (fractions in [0, 1])."""
        m = max(1, self.clip_probs.shape[0])
        clip = topk_correct(self.clip_probs, self.clip_labels, (1, 5))
        keep = self._scored_videos()
        v = max(1, int(keep.sum()))
        video = topk_correct(self.video_probs[keep], self.video_labels[keep], (1, 5))
        return {
            "clips": int(self.clip_probs.shape[0]),
            "videos": int(keep.sum()),
            "loss": self.loss,
            "clip_top1": clip[1] / m,
            "clip_top5": clip[5] / m,
            "video_top1": video[1] / v,
            "video_top5": video[5] / v,
            "mean_class_accuracy": mean_class_accuracy(self.confusion()),
        }

    def predictions(self, top: int = 5) -> list[dict[str, Any]]:
        """One record per scored video: index, name, label, prediction, correctness and the top classes."""
        out = []
        k = min(top, self.num_classes)
        for i in torch.nonzero(self._scored_videos()).flatten().tolist():
            probs, idx = self.video_probs[i].topk(k)
            label = int(self.video_labels[i])
            out.append(
                {
                    "video_index": i,
                    "video": self.video_names[i] if self.video_names else str(i),
                    "label": label,
                    "label_name": self._name(label),
                    "pred": int(idx[0]),
                    "pred_name": self._name(int(idx[0])),
                    "correct": int(idx[0]) == label,
                    "top": [
                        {"class": int(c), "name": self._name(int(c)), "prob": float(p)}
                        for p, c in zip(probs, idx, strict=True)
                    ],
                }
            )
        return out

    def _name(self, index: int) -> str:
        return self.classes[index] if self.classes and index < len(self.classes) else str(index)

    def to_json(self) -> dict[str, Any]:
        """Summary, per-class accuracy and confusion matrix as a JSON-able dict."""
        per_class = self.per_class_accuracy().tolist()
        return {
            **self.summary(),
            "classes": self.classes,
            "per_class_accuracy": [None if math.isnan(a) else a for a in per_class],
            "confusion_matrix": self.confusion().tolist(),
            **self.extra,
        }

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Writes ``metrics.json``, ``predictions.csv`` / ``predictions.json`` and ``scores.pt`` to ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "metrics": out / "metrics.json",
            "predictions_csv": out / "predictions.csv",
            "predictions_json": out / "predictions.json",
            "scores": out / "scores.pt",
        }
        paths["metrics"].write_text(json.dumps(self.to_json(), indent=1) + "\n")
        preds = self.predictions()
        paths["predictions_json"].write_text(json.dumps(preds, indent=1) + "\n")
        with paths["predictions_csv"].open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["video_index", "video", "label", "label_name", "pred", "pred_name", "correct", "top5"])
            for p in preds:
                top5 = " ".join(f"{t['name']}:{t['prob']:.4f}" for t in p["top"])
                writer.writerow(
                    [
                        p["video_index"],
                        p["video"],
                        p["label"],
                        p["label_name"],
                        p["pred"],
                        p["pred_name"],
                        int(p["correct"]),
                        top5,
                    ]
                )
        torch.save(
            {
                "clip_probs": self.clip_probs,
                "clip_labels": self.clip_labels,
                "clip_video": self.clip_video,
                "video_probs": self.video_probs,
                "video_labels": self.video_labels,
                "loss": self.loss,
                "classes": self.classes,
                "video_names": self.video_names,
            },
            paths["scores"],
        )
        return paths

    @classmethod
    def load(cls, out_dir: str | Path) -> EvalResult:
        """Reads back the ``scores.pt`` written by :meth:`save`."""
        state = torch.load(Path(out_dir) / "scores.pt", weights_only=True)
        return cls(**state)


def scores_from_clips(
    clip_probs: torch.Tensor,
    clip_labels: torch.Tensor,
    clip_video: torch.Tensor,
    *,
    num_videos: int | None = None,
    loss: float = math.nan,
    classes: list[str] | None = None,
    video_names: list[str] | None = None,
) -> EvalResult:
    """Builds an :class:`EvalResult` from clip probabilities ``(M, K)``, labels ``(M,)`` and video indices ``(M,)``."""
    clip_video = clip_video.long()
    num_videos = int(clip_video.max()) + 1 if num_videos is None and clip_video.numel() else (num_videos or 0)
    video_probs = average_by_video(clip_probs, clip_video, num_videos)
    video_labels = torch.full((num_videos,), -1, dtype=torch.long)
    video_labels[clip_video] = clip_labels.long()
    return EvalResult(
        clip_probs.float(), clip_labels.long(), clip_video, video_probs, video_labels, loss, classes, video_names
    )


@torch.no_grad()
def run_evaluation(
    model: nn.Module,
    dataset: Dataset,
    *,
    ctx: DistContext | None = None,
    batch_size: int = 8,
    num_workers: int = 2,
    num_classes: int | None = None,
    classes: list[str] | None = None,
    video_names: list[str] | None = None,
    num_videos: int | None = None,
    progress: bool = True,
    channels_last: bool = False,
) -> EvalResult:
    """Scores every item of ``dataset`` with ``model`` in eval mode (restoring its mode afterwards).

    Items are dicts with ``"clip"`` ``(C, T, H, W)`` (or ``(C, H, W)``), ``"label"`` and ``"video_index"``; each
    crop of a clip is an item of its own, so crops count as clips of their video. Items marked ``"substituted"``
    (an unreadable video replaced by another) are left out and counted in ``extra["substituted"]``. Under
    ``torchrun`` each process scores a strided shard and the scores are gathered on every process.
    """
    ctx = ctx or DistContext(device=next(model.parameters()).device)
    was_training = model.training
    model.eval()
    loader = make_loader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        seed=0,
        epoch=0,
        ctx=ctx,
        drop_last=False,
        shard_eval=True,
    )
    probs, labels, videos = [], [], []
    loss_sum = 0.0
    skipped = 0
    try:
        quiet = None if progress and ctx.is_main else True  # None: no bar when stderr is not a terminal
        for batch in tqdm(loader, desc="eval", disable=quiet, leave=False, unit="batch"):
            clip = batch["clip"]
            label = torch.as_tensor(batch["label"]).long()
            video = torch.as_tensor(batch.get("video_index", torch.arange(label.shape[0]))).long()
            if "substituted" in batch:  # another video stood in for an unreadable one: not a score of this video
                keep = ~torch.as_tensor(batch["substituted"]).bool()
                skipped += int((~keep).sum())
                clip, label, video = clip[keep], label[keep], video[keep]
                if not label.numel():
                    continue
            x = clip.to(ctx.device, non_blocking=True)
            if channels_last:
                x = to_channels_last(x)
            logits = model(x).float().cpu()
            loss_sum += float(F.cross_entropy(logits, label, reduction="sum"))
            probs.append(logits.softmax(1))
            labels.append(label)
            videos.append(video)
    finally:
        model.train(was_training)
    k = num_classes or getattr(model, "num_classes", 0)
    local = (
        torch.cat(probs) if probs else torch.zeros(0, k),
        torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long),
        torch.cat(videos) if videos else torch.zeros(0, dtype=torch.long),
        loss_sum,
        skipped,
    )
    gathered = all_gather_objects(ctx, local)
    clip_probs = torch.cat([g[0] for g in gathered])
    clip_labels = torch.cat([g[1] for g in gathered])
    clip_video = torch.cat([g[2] for g in gathered])
    loss = sum(g[3] for g in gathered) / max(1, clip_probs.shape[0])
    if num_videos is None:
        num_videos = getattr(dataset, "num_videos", None) or (int(clip_video.max()) + 1 if clip_video.numel() else 0)
    result = scores_from_clips(
        clip_probs, clip_labels, clip_video, num_videos=num_videos, loss=loss, classes=classes, video_names=video_names
    )
    result.extra["substituted"] = sum(g[4] for g in gathered)
    return result


def evaluate(
    weights: str | Path,
    data: DataSpec,
    *,
    clips: int = 10,
    crops: int = 1,
    random_crop: bool = False,
    subset: str | None = None,
    clip_length: int | None = None,
    frame_interval: int | None = None,
    crop_size: int | None = None,
    resize: int | tuple[int, int] | None = None,
    batch_size: int = 8,
    num_workers: int = 2,
    device: str | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    fast: bool = True,
    ctx: DistContext | None = None,
) -> EvalResult:
    """Evaluates a checkpoint on a dataset with ``clips`` clips x ``crops`` crops per video.

    Clip settings default to the clip spec the checkpoint stores (``mfnet.engine.input_spec``: for older runs the
    ``recipe.json`` of its run directory, else the paper's test setting); arguments given override it, and what they
    change is logged in one line. Works under ``torchrun``.

    Args:
        weights: A checkpoint of the package (``model.pt`` or a training checkpoint), or the authors' file.
        data: The dataset; ``subset`` chooses its part (default: the test/val part).
        clips: Clips per video, spread uniformly over it.
        crops: 1 (centre) or 3 (left/centre/right, or top/centre/bottom).
        random_crop: One crop per clip at a seeded random position instead of the centre (the authors' test
            script); needs ``crops=1``.
        out_dir: Where to write ``metrics.json``, ``predictions.csv/json`` and ``scores.pt`` (rank 0).
        resize: A short side (aspect kept) or ``(H, W)`` (the authors' fixed-size protocol); by default the
            checkpoint's clip spec (``mfnet.engine.input_spec.input_spec_of``: its stored spec, its run's recipe,
            its registry record, else the paper's 256x256 test setting).
        fast: Run the inference fast path of ``mfnet.engine.predictor.prepare_for_inference``.
        ctx: A process group already joined (e.g. by a caller evaluating several splits); by default the
            ``torchrun`` environment is joined and left here.

    Returns:
        The :class:`EvalResult` (on every process).
    """

    if crops not in (1, 3):
        raise MfnetError(f"crops must be 1 or 3, got {crops}")
    if random_crop and crops != 1:
        raise MfnetError("a random crop is one crop per clip: drop --crops 3 or --random-crop")
    own_ctx = ctx is None
    ctx = ctx or init_distributed(device)
    try:
        loaded = load_model(weights)
        if loaded.exported:
            raise MfnetError(f"{weights} is an exported graph: evaluate the .pt checkpoint it was exported from")
        model, meta = loaded.model, loaded.meta
        model.to(ctx.device)
        settings, resolved = _clip_settings(loaded, clip_length, frame_interval, crop_size, resize)
        if ctx.is_main:
            logger.info("%s", resolved.describe_geometry())
            if resolved.note:
                logger.warning("%s", resolved.note)
        built = build_eval_dataset(data, clips=clips, crops=crops, random_crop=random_crop, subset=subset, **settings)
        classes = meta.get("classes") or built.classes
        if built.classes and len(built.classes) != model.num_classes:
            raise MfnetError(
                f"the checkpoint has {model.num_classes} classes but the data has {len(built.classes)}: "
                "evaluate it on the dataset it was trained for"
            )
        if fast:  # the package's inference fast path (BN folding, channels-last, fused units)
            model = prepare_for_inference(model, built.dataset[0]["clip"][None].to(ctx.device))
        result = run_evaluation(
            model,
            built.dataset,
            ctx=ctx,
            batch_size=batch_size,
            num_workers=num_workers,
            classes=classes,
            video_names=built.video_names,
            num_videos=len(built.video_names),
            progress=progress,
        )
        result.extra.update(
            {"weights": str(weights), "clips_per_video": clips, "crops": crops, **settings, "subset": built.subset}
        )
        if out_dir is not None and ctx.is_main:
            result.save(out_dir)
        return result
    finally:
        if own_ctx:
            cleanup(ctx)


def _clip_settings(
    loaded: Any,
    clip_length: int | None,
    frame_interval: int | None,
    crop_size: int | None,
    resize: int | tuple[int, int] | None,
) -> tuple[dict[str, Any], ResolvedSpec]:
    """Clip settings: the checkpoint's clip spec with the given arguments applied, and where they came from."""
    resolved = spec_overrides(
        loaded.input_spec, frames=clip_length, interval=frame_interval, crop_size=crop_size, resize=resize
    )
    spec = resolved.spec
    settings = {
        "clip_length": spec.frames,
        "frame_interval": spec.interval,
        "crop_size": spec.crop_size,
        "resize": spec.eval_resize,
        "normalization": spec.normalization,
        "test_protocol": spec.test_protocol,
    }
    return settings, resolved


def weights_per_split(
    weights: Sequence[str], *, splits: str | None, split: int | None = None
) -> tuple[list[int | None], list[str]]:
    """Pairs checkpoints with the splits to evaluate them on.

    Args:
        weights: One checkpoint per split, or one path containing ``{split}`` (``runs/s{split}/model.pt``), or one
            checkpoint when ``splits`` is ``None``.
        splits: ``"1,2,3"`` (``--splits``) or ``None``.
        split: The one split to use when ``splits`` is ``None``.

    Raises:
        MfnetError: ``splits`` is not a list of numbers, or the counts do not match.
    """
    if not splits:
        if len(weights) != 1:
            raise MfnetError("several --weights need --splits (one checkpoint per split)")
        return [split], list(weights)
    try:
        numbers: list[int | None] = [int(s) for s in splits.split(",")]
    except ValueError:
        raise MfnetError(f"invalid --splits {splits!r}: write e.g. 1,2,3") from None
    if len(weights) == 1:
        return numbers, [weights[0].replace("{split}", str(s)) for s in numbers]
    if len(weights) == len(numbers):
        return numbers, list(weights)
    raise MfnetError(f"{len(numbers)} splits need {len(numbers)} --weights (or one path containing {{split}})")


def average_splits(results: list[EvalResult]) -> dict[str, float]:
    """The mean over splits of each headline number (the paper reports UCF-101 / HMDB51 as the 3-split average)."""
    if not results:
        raise ValueError("no split results to average")
    summaries = [r.summary() for r in results]
    keys = [k for k, v in summaries[0].items() if isinstance(v, float)]
    out = {k: sum(s[k] for s in summaries) / len(summaries) for k in keys}
    out["splits"] = len(results)
    return out
