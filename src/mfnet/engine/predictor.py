"""The one predictor: clip batching, multi-clip averaging and sliding windows over videos.

Evaluation, ``mfnet predict``, ``mfnet features`` and the demo all go through this module; the
video-level averaging of clip predictions (the paper's protocol) is written here and only here.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mfnet.data.annotations import VideoRecord
from mfnet.data.datasets import VideoClipDataset
from mfnet.data.loader import build_loader
from mfnet.data.readers import open_video
from mfnet.data.sampling import ClipIndices, UniformClipSampler
from mfnet.data.transforms import build_eval_transform, protocol_of_resize
from mfnet.engine.exported import load_exported
from mfnet.engine.input_spec import ResolvedSpec, input_spec_of
from mfnet.engine.input_spec import apply_overrides as spec_overrides
from mfnet.errors import MfnetError
from mfnet.fastpath import autocast_context, optimize_for_inference
from mfnet.models.checkpoint import model_from_checkpoint, read_checkpoint
from mfnet.models.hub import resolve_weights
from mfnet.models.weights import InputSpec


def average_by_video(clip_probs: torch.Tensor, video_index: torch.Tensor, num_videos: int) -> torch.Tensor:
    """Averages clip-level probabilities into video-level ones.

    The paper's test protocol: every clip (and crop) of a video is classified on its own, the softmax
    probabilities are averaged over that video's clips x crops, and the video's prediction is the argmax.

    Args:
        clip_probs: Per-clip class probabilities, ``(M, K)`` (softmax already applied).
        video_index: Video each clip belongs to, ``(M,)`` integers in ``[0, num_videos)``.
        num_videos: Number of videos ``V``.

    Returns:
        Video probabilities ``(V, K)``, float. A video with no clip gets a row of NaN (so it cannot be
        mistaken for a prediction; count such rows with ``torch.isnan(out[:, 0])``).

    Raises:
        ValueError: On mismatched shapes or an index outside ``[0, num_videos)``.
    """
    if clip_probs.ndim != 2 or video_index.ndim != 1 or clip_probs.shape[0] != video_index.shape[0]:
        raise ValueError(
            f"expected clip_probs (M, K) and video_index (M,), got {tuple(clip_probs.shape)} and "
            f"{tuple(video_index.shape)}"
        )
    index = video_index.to(device=clip_probs.device, dtype=torch.long)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_videos):
        raise ValueError(f"video_index must lie in [0, {num_videos}), got [{int(index.min())}, {int(index.max())}]")
    probs = clip_probs.float()
    sums = torch.zeros(num_videos, probs.shape[1], dtype=probs.dtype, device=probs.device)
    sums.index_add_(0, index, probs)  # (V, K): sum of each video's clip probabilities
    counts = torch.bincount(index, minlength=num_videos).to(probs.dtype)  # (V,)
    return sums / counts.unsqueeze(1)  # 0/0 -> NaN for videos without clips


# ----------------------------------------------------------------------------------------------------------------
# The predictor: videos in, per-video (or per-window) probabilities and embeddings out.
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ClipSpec:
    """How clips are cut from a video and pre-processed (the paper's test setting by default).

    Attributes:
        frames: Frames per clip ``T``.
        interval: Frames between consecutive clip frames.
        resize: Short side after resizing (``"keep-aspect"``), or ``(height, width)`` (``"authors"``).
        crop_size: Square crop ``H = W``.
        crops: Crops per clip: 1 (centre) or 3 (along the longer side).
        normalization: A normalisation of ``mfnet.data.transforms`` (``"mfnet"``, ``"imagenet"``, ``"none"``).
        test_protocol: ``"authors"`` or ``"keep-aspect"`` (see ``mfnet.data.transforms``); ``None``: the one
            ``resize`` implies (a pair is the authors' fixed size, a number keeps the aspect ratio).
    """

    frames: int = 16
    interval: int = 2
    resize: int | tuple[int, int] = 256
    crop_size: int = 224
    crops: int = 1
    normalization: str = "mfnet"
    test_protocol: str | None = None

    @classmethod
    def from_input_spec(cls, spec: InputSpec, *, crops: int = 1) -> ClipSpec:
        """The clips of a checkpoint's ``InputSpec`` (its test protocol chooses the resize)."""
        return cls(
            spec.frames, spec.interval, spec.eval_resize, spec.crop_size, crops, spec.normalization, spec.test_protocol
        )

    def transform(self) -> Any:
        """The evaluation transform: uint8 ``(T, H, W, C)`` -> float ``(C, T, crop, crop)``."""
        return build_eval_transform(
            self.test_protocol or protocol_of_resize(self.resize),
            resize=self.resize,
            crop_size=self.crop_size,
            crops=self.crops,
            normalization=self.normalization,
        )

    def input_shape(self, batch: int = 1) -> tuple[int, int, int, int, int]:
        """``(N, 3, T, H, W)`` of a batch of clips."""
        return (batch, 3, self.frames, self.crop_size, self.crop_size)


@dataclass
class VideoPrediction:
    """The prediction for one video (or one window of a video).

    Attributes:
        path: The video file.
        probs: Class probabilities ``(K,)`` averaged over clips x crops; ``None`` if the video failed.
        clips: Clips averaged (crops not counted).
        seconds: Duration of the video (of the window in window mode) in seconds; NaN if unknown.
        error: Why the video could not be used (one sentence), else ``None``.
        start_s: Start of the window in seconds (0 for whole videos).
    """

    path: Path
    probs: torch.Tensor | None
    clips: int
    seconds: float
    error: str | None = None
    start_s: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the video was predicted."""
        return self.error is None and self.probs is not None

    def topk(self, k: int) -> list[tuple[int, float]]:
        """The ``k`` most probable classes as ``(class index, probability)``, most probable first."""
        if self.probs is None:
            return []
        values, indices = self.probs.topk(min(k, self.probs.numel()))
        return [(int(i), float(v)) for v, i in zip(values, indices, strict=True)]


@dataclass
class Timeline:
    """Window predictions over one long video.

    Attributes:
        path: The video file.
        windows: One ``VideoPrediction`` per window, in time order (``start_s``, ``seconds`` = window length).
        duration_s: Length of the video in seconds.
        error: Why the video could not be used, else ``None``.
    """

    path: Path
    windows: list[VideoPrediction]
    duration_s: float
    error: str | None = None

    def probs(self) -> torch.Tensor:
        """Window probabilities ``(W, K)`` (NaN rows for windows that failed)."""
        rows = [w.probs for w in self.windows if w.probs is not None]
        k = rows[0].numel() if rows else 0
        return torch.stack([w.probs if w.probs is not None else torch.full((k,), float("nan")) for w in self.windows])


@dataclass
class VideoFeatures:
    """Pooled embeddings of videos (``model.clip_features``) and which video each row belongs to.

    Attributes:
        paths: The videos, in input order (failed ones included, see ``errors``).
        features: ``(V, C)`` video embeddings (mean over clips x crops; NaN rows for failed videos), or ``(M, C)``
            clip embeddings with ``per_clip=True``.
        video_index: Video of each row ``(rows,)``.
        clip_id: Clip of each row ``(rows,)`` (-1 for video rows).
        errors: ``{path: sentence}`` for the videos that failed.
    """

    paths: list[Path]
    features: torch.Tensor
    video_index: torch.Tensor
    clip_id: torch.Tensor
    errors: dict[str, str] = field(default_factory=dict)


@dataclass
class VideoEmbedding:
    """The pooled embedding(s) of one video.

    Attributes:
        path: The video file.
        features: ``(1, C)`` the mean over the video's clips x crops, or ``(M, C)`` one row per clip x crop with
            ``per_clip``; ``(0, C)`` (or ``(0, 0)``) when the video failed.
        clip_id: Clip of each row ``(rows,)`` (-1 for the video row).
        clips: Clips that decoded (crops not counted).
        seconds: Duration of the video in seconds; NaN if unknown.
        error: Why the video could not be used (one sentence), else ``None``.
    """

    path: Path
    features: torch.Tensor
    clip_id: torch.Tensor
    clips: int
    seconds: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the video gave an embedding."""
        return self.error is None


@dataclass
class DecodedVideo:
    """Every clip x crop of one video, decoded and pre-processed: what the decoding side hands the model side.

    Produced by ``decode_video`` (in a DataLoader worker, a Ray task, ...) and consumed by
    ``Predictor.predict_decoded`` / ``Predictor.features_decoded``.

    Attributes:
        path: The video file.
        clips: ``(M, 3, T, H, W)`` float32, ``M = num_clips x crops``, in item order; zeros where an item failed.
        ok: ``(M,)`` bool, the items that decoded.
        clip_id: ``(M,)`` clip of each item.
        errors: The distinct reasons of the failed items.
        seconds: Duration of the video in seconds; NaN if unknown.
    """

    path: Path
    clips: torch.Tensor
    ok: torch.Tensor
    clip_id: torch.Tensor
    errors: list[str]
    seconds: float


def decode_video(path: str | Path, *, spec: ClipSpec, num_clips: int) -> DecodedVideo:
    """Decodes and pre-processes the ``num_clips`` evenly spread clips (x crops) of one video, as ``predict`` does.

    Never raises for a bad file: failed items have ``ok`` False and their reason in ``errors``.

    Args:
        path: The video file (or frame folder).
        spec: Clip length, sampling interval, resize, crop and normalisation.
        num_clips: Clips per video.
    """
    path = Path(path)
    items = _prediction_items([path], UniformClipSampler(num_clips, spec.frames, spec.interval), spec)
    with _quiet_data_log():
        rows = [items[i] for i in range(len(items))]
    errors = list(dict.fromkeys(row["error"] for row in rows if row["error"]))
    return DecodedVideo(
        path,
        torch.stack([row["clip"] for row in rows]),
        torch.tensor([row["ok"] for row in rows], dtype=torch.bool),
        torch.tensor([row["clip_id"] for row in rows], dtype=torch.long),
        errors,
        float(rows[0]["seconds"]),
    )


def _prediction_items(paths: list[Path], sampler: Any, spec: ClipSpec, *, durations: bool = True) -> _PredictionItems:
    records = [VideoRecord(Path(p), -1, "all") for p in paths]
    dataset = VideoClipDataset(records, sampler=sampler, transform=spec.transform(), max_substitutions=0)
    return _PredictionItems(dataset, (3, spec.frames, spec.crop_size, spec.crop_size), durations=durations)


class _WindowSampler:
    """Clips of consecutive windows of one video, as one "video" with ``windows x clips`` clips.

    Clip ``w * clips + c`` is clip ``c`` of ``UniformClipSampler(clips)`` inside window ``w``, whose frames are
    ``[starts[w], starts[w] + lengths[w])``; so ``VideoClipDataset`` reads only the frames each window needs.
    """

    def __init__(self, starts: list[int], lengths: list[int], sampler: UniformClipSampler) -> None:
        self.starts, self.lengths, self.inner = starts, lengths, sampler
        self.clips_per_window = sampler.clips_per_video
        self.clips_per_video = len(starts) * self.clips_per_window
        self.frames_per_clip = sampler.frames_per_clip

    def __call__(self, num_frames: int, clip_id: int, rng: Any = None) -> ClipIndices:
        window, clip = divmod(clip_id, self.clips_per_window)
        length = max(1, min(self.lengths[window], num_frames - self.starts[window]))
        inner = self.inner(length, clip)
        return ClipIndices(np.minimum(inner.frames + self.starts[window], num_frames - 1), clip_id)


class _PredictionItems(torch.utils.data.Dataset):
    """``VideoClipDataset`` items for prediction: a clip that fails is reported, never replaced by another video.

    Items are ``{"clip", "video_index", "clip_id", "ok", "error", "seconds"}``; a failed item has a zero clip,
    ``ok=False`` and the reason in ``error``. ``seconds`` (the video's duration) is filled on the first item of
    each video and is ``-1`` on the others.
    """

    def __init__(self, dataset: VideoClipDataset, clip_shape: tuple[int, ...], *, durations: bool = True) -> None:
        self.dataset = dataset
        self.clip_shape = clip_shape
        self.durations = durations

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        video, part = divmod(index, self.dataset.items_per_video)
        clip_id = part // self.dataset.num_views
        path = self.dataset.records[video].path
        seconds = _duration_s(path) if part == 0 and self.durations else -1.0
        try:
            item = self.dataset[index]
        except MfnetError:
            item = None
        if item is None or item["substituted"]:
            return {
                "clip": torch.zeros(self.clip_shape),
                "video_index": video,
                "clip_id": clip_id,
                "ok": False,
                "error": _failure_reason(path, self.dataset.sampler, clip_id),
                "seconds": seconds,
            }
        return {
            "clip": item["clip"],
            "video_index": video,
            "clip_id": clip_id,
            "ok": True,
            "error": "",
            "seconds": seconds,
        }


def _duration_s(path: Path) -> float:
    try:
        with contextlib.closing(open_video(path)) as reader:
            return reader.num_frames / reader.fps if reader.fps > 0 else math.nan
    except Exception:  # reported by the item itself
        return math.nan


def _failure_reason(path: Path, sampler: Any, clip_id: int) -> str:
    """One sentence on why a clip of ``path`` cannot be read (found by reading it once more)."""
    try:
        with contextlib.closing(open_video(path)) as reader:
            num_frames = reader.num_frames
            if num_frames <= 0:
                return f"{path} has no decodable video frames: re-encode or remove it"
            reader.read(sampler(num_frames, clip_id).frames)
    except MfnetError as err:
        return str(err)
    except Exception as err:
        return f"cannot decode {path} ({type(err).__name__}: {err}): re-encode or remove it"
    return f"decoding {path} failed in a data worker: try again with --workers 0"


@contextlib.contextmanager
def _quiet_data_log() -> Iterator[None]:
    """Silences ``mfnet.data``'s substitution warnings (prediction reports failed files itself)."""
    logger = logging.getLogger("mfnet.data")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def prepare_for_inference(model: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """THE place where a PyTorch model is made ready for prediction: eval mode, device, fast path.

    Args:
        model: A classifier (not changed: a copy is prepared).
        example_input: A batch like those that will run, ``(N, C, T, H, W)``, on the target device.

    Returns:
        A module with the classifier's interface (``forward``, ``clip_features``) for inference only.
    """
    return optimize_for_inference(model, example_input)


EXPORTED_SUFFIXES = (".onnx", ".pt2")


@dataclass
class LoadedModel:
    """A model ready for ``Predictor``, loaded from a checkpoint or an exported artifact.

    Attributes:
        model: The classifier (``nn.Module``) or an ``ExportedRunner`` (ONNX Runtime / ExportedProgram).
        meta: The ``"mfnet"`` meta: ``model``, ``num_classes``, ``model_kwargs``, ``classes``, ``input_spec``.
        input_shape: For an exported graph, its input ``(N or None, 3, T, H, W)``; ``None`` for a checkpoint.
        input_spec: The clips the weights expect and where that came from (``mfnet.engine.input_spec``).
        path: The file the weights were read from.
    """

    model: Any
    meta: dict[str, Any]
    input_shape: tuple[int | None, ...] | None = None
    input_spec: ResolvedSpec | None = None
    path: Path | None = None

    @property
    def exported(self) -> bool:
        """Whether the model is an exported graph (fixed clip size, logits only)."""
        return self.input_shape is not None


def load_model(weights: str | Path, *, model_name: str | None = None) -> LoadedModel:
    """Loads weights for prediction: our checkpoints, the authors' files, or an exported ``.onnx`` / ``.pt2``.

    Args:
        weights: The file, a folder of ``mfnet weights convert``, a registered name (``mfnet3d.k400_authors``,
            fetched and checked by ``mfnet.models.hub.resolve_weights``) or ``hf-hub:ORG/NAME``.
        model_name: The registered model to build; default: the one the checkpoint names, else ``mfnet3d``
            (the authors' files name none). Ignored for exported graphs.

    Raises:
        CheckpointError, MfnetError: Missing file, unreadable file, or weights that do not fit the model.
    """
    resolved = resolve_weights(weights)
    path, record = resolved.path, resolved.record
    if path.suffix.lower() in EXPORTED_SUFFIXES:
        runner = load_exported(path)
        spec = input_spec_of(runner.meta, weights=path)
        return LoadedModel(runner, dict(runner.meta), runner.input_shape, spec, path)

    stored = read_checkpoint(path).meta or {}
    name = model_name or stored.get("model") or (record.architecture if record else None) or "mfnet3d"
    model, meta = model_from_checkpoint(path, model_name=name, **(record.arch_kwargs if record else {}))
    if record is not None and not meta.get("classes"):
        meta["classes"] = record.classes()
    spec = input_spec_of(meta, weights=path, record=record, image=getattr(model, "input_ndim", 5) == 4)
    return LoadedModel(model.eval(), meta, None, spec, path)


def clip_spec_for(
    loaded: LoadedModel, *, crops: int = 1, **overrides: Any
) -> tuple[ClipSpec, ResolvedSpec, int | None]:
    """The clips for a loaded model: its stored ``InputSpec`` with the user's ``overrides`` applied.

    An exported graph fixes the frames and the crop size (``overrides`` that differ raise ``MfnetError``) and
    possibly the batch.

    Returns:
        The predictor's ``ClipSpec``, the resolved spec with its note for the user, and the graph's fixed batch
        size (``None`` when any batch size runs).
    """
    resolved = loaded.input_spec or input_spec_of(loaded.meta, weights=loaded.path)
    fixed_batch = None
    if loaded.exported and loaded.input_shape is not None and len(loaded.input_shape) == 5:
        n, _, t, h, w = loaded.input_shape
        frames, size = overrides.get("frames"), overrides.get("crop_size")
        if (frames not in (None, t)) or (size not in (None, h)) or h != w:
            raise MfnetError(
                f"{loaded.path} takes clips of {t} frames of {h}x{w}: drop --frames/--size or re-export with "
                f"`mfnet export --input 1x3x{frames or t}x{size or h}x{size or w}`"
            )
        if (resolved.spec.frames, resolved.spec.crop_size) != (t, h):  # the graph is authoritative
            graph = spec_overrides(ResolvedSpec(resolved.spec, resolved.source, True), frames=t, crop_size=h)
            resolved = ResolvedSpec(graph.spec, resolved.source, resolved.stored, resolved.note)
        fixed_batch = n
    resolved = spec_overrides(resolved, **overrides)
    return ClipSpec.from_input_spec(resolved.spec, crops=crops), resolved, fixed_batch


class Predictor:
    """Runs a classifier over video files: multi-clip video predictions, sliding-window timelines, embeddings.

    Clips of several videos share a batch; a ``DataLoader`` with workers decodes them (``VideoClipDataset``
    with ``UniformClipSampler(num_clips)`` and the evaluation transform). A file that cannot be decoded is
    reported in its result (``error``) and the others go through.

    Args:
        model: A classifier (``nn.Module``), or any callable mapping clips ``(N, 3, T, H, W)`` to logits
            ``(N, K)`` (such as ``mfnet.engine.exported.ExportedRunner``; embeddings need an ``nn.Module``).
        spec: Clip length, sampling interval, resize, crop and normalisation.
        num_clips: Clips per video (per window in window mode), spread evenly.
        batch_size: Clips per forward pass.
        num_workers: DataLoader worker processes (0 decodes in this process).
        device: Where the model runs (default: CUDA if available, else CPU); ignored for a callable.
        fixed_batch: Batch size the callable requires (an exported graph without dynamic batch); batches are
            padded to it.
    """

    def __init__(
        self,
        model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
        *,
        spec: ClipSpec | None = None,
        num_clips: int = 10,
        batch_size: int = 8,
        num_workers: int = 0,
        device: str | torch.device | None = None,
        fixed_batch: int | None = None,
    ) -> None:
        if num_clips <= 0 or batch_size <= 0 or num_workers < 0:
            raise ValueError("num_clips and batch_size must be positive and num_workers non-negative")
        self.spec = spec or ClipSpec()
        self.num_clips = num_clips
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.fixed_batch = fixed_batch
        # An exported graph runs on the CPU (ONNX Runtime's CPU provider, a CPU ExportedProgram) unless told.
        on_gpu = isinstance(model, nn.Module) and torch.cuda.is_available()
        self.device = torch.device(device or ("cuda" if on_gpu else "cpu"))
        self._source = model
        self._model: Callable[[torch.Tensor], torch.Tensor] | None = None if isinstance(model, nn.Module) else model

    @classmethod
    def from_weights(
        cls,
        weights: str | Path,
        *,
        model_name: str | None = None,
        crops: int = 1,
        num_clips: int = 10,
        batch_size: int = 8,
        num_workers: int = 0,
        device: str | torch.device | None = None,
        **clip_overrides: Any,
    ) -> Predictor:
        """A predictor that cuts clips the way the weights expect (the ``InputSpec`` they carry).

        Args:
            weights: A checkpoint, a registered weights name, or an exported ``.onnx`` / ``.pt2``.
            model_name: The model to build (default: the checkpoint's).
            crops: Crops per clip, 1 or 3.
            **clip_overrides: ``frames``, ``interval``, ``crop_size``, ``resize``, ``normalization`` or
                ``test_protocol`` to use instead of the stored ones; what they change is logged in one line
                (as is the fallback to the paper's setting for checkpoints that store no spec).
        """
        loaded = load_model(weights, model_name=model_name)
        spec, resolved, fixed_batch = clip_spec_for(loaded, crops=crops, **clip_overrides)
        if resolved.note:
            logging.getLogger("mfnet").warning("%s", resolved.note)
        return cls(
            loaded.model,
            spec=spec,
            num_clips=num_clips,
            batch_size=batch_size,
            num_workers=num_workers,
            device=device,
            fixed_batch=fixed_batch,
        )

    # -- the model -----------------------------------------------------------------------------------------------

    @property
    def model(self) -> nn.Module | Callable[[torch.Tensor], torch.Tensor]:
        """The model as given (not the prepared copy that runs)."""
        return self._source

    def _module(self) -> Callable[[torch.Tensor], torch.Tensor]:
        if self._model is None:
            example = torch.zeros(self.spec.input_shape(self.batch_size), device=self.device)
            self._model = prepare_for_inference(self._source, example)
        return self._model

    @torch.no_grad()
    def _forward(self, clips: torch.Tensor, *, features: bool) -> torch.Tensor:
        """Logits ``(N, K)`` or embeddings ``(N, C)`` of clips ``(N, 3, T, H, W)``, on the CPU.

        A PyTorch model on a GPU runs under fp16 autocast (``mfnet.fastpath.autocast_context``: 1.5x the
        clips/s of fp32 for mfnet3d on an H100); on CPU in fp32.
        """
        with autocast_context(self.device, enabled=isinstance(self._source, nn.Module)):
            return self._forward_fp(clips, features=features)

    def _forward_fp(self, clips: torch.Tensor, *, features: bool) -> torch.Tensor:
        model = self._module()
        if features:
            if not hasattr(model, "clip_features"):
                raise MfnetError("embeddings need a PyTorch checkpoint (an exported model gives logits only)")
            return model.clip_features(clips.to(self.device)).float().cpu()
        if self.fixed_batch is None:
            return model(clips.to(self.device)).float().cpu()
        outs = []
        for chunk in clips.split(self.fixed_batch):
            pad = self.fixed_batch - chunk.shape[0]
            padded = torch.cat([chunk, chunk[:1].expand(pad, *chunk.shape[1:])]) if pad else chunk
            outs.append(model(padded)[: chunk.shape[0]].float().cpu())
        return torch.cat(outs)

    # -- running items -------------------------------------------------------------------------------------------

    def _items(self, paths: list[Path], sampler: Any, *, durations: bool = True) -> _PredictionItems:
        return _prediction_items(paths, sampler, self.spec, durations=durations)

    def _run(
        self,
        items: _PredictionItems,
        *,
        features: bool,
        progress: tqdm | None = None,
        on_items: Callable[[int], Any] | None = None,
    ) -> Iterator[_VideoOutputs]:
        """Runs every item through the model, yielding each video's outputs once all its items are done.

        ``progress`` is advanced by one per finished video; ``on_items`` is called with each batch's size.
        """
        loader = build_loader(items, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)
        per_video = items.dataset.items_per_video
        buffer: list[tuple[int, int, torch.Tensor | None, str, float]] = []  # (video, clip_id, output, error, s)
        with _quiet_data_log():
            for batch in loader:
                ok = batch["ok"]
                if on_items is not None:
                    on_items(ok.shape[0])
                outputs = iter(self._forward(batch["clip"][ok], features=features)) if ok.any() else iter(())
                for i in range(ok.shape[0]):
                    output = next(outputs) if ok[i] else None
                    buffer.append(
                        (
                            int(batch["video_index"][i]),
                            int(batch["clip_id"][i]),
                            output,
                            batch["error"][i],
                            float(batch["seconds"][i]),
                        )
                    )
                while len(buffer) >= per_video:
                    head, buffer = buffer[:per_video], buffer[per_video:]
                    yield _VideoOutputs.from_items(head)
                    if progress is not None:
                        progress.update(1)

    def _videos(
        self, paths: Sequence[str | Path], *, features: bool, progress: bool
    ) -> Iterator[tuple[Path, _VideoOutputs]]:
        """Each video's path and model outputs over ``num_clips`` evenly spread clips, in input order."""
        paths = [Path(p) for p in paths]
        if not paths:
            return
        sampler = UniformClipSampler(self.num_clips, self.spec.frames, self.spec.interval)
        bar = tqdm(total=len(paths), unit="video", disable=None if progress else True, leave=False)
        try:
            for video in self._run(self._items(paths, sampler), features=features, progress=bar):
                yield paths[video.video], video
        finally:
            bar.close()

    # -- public API ------------------------------------------------------------------------------------------------

    def predict(self, paths: Sequence[str | Path], *, progress: bool = False) -> Iterator[VideoPrediction]:
        """Predicts each video from ``num_clips`` evenly spread clips (x crops), yielding results in input order.

        Args:
            paths: Video files (or frame folders).
            progress: Show a progress bar over files on stderr.

        Yields:
            A ``VideoPrediction`` per path; a video whose clips all fail to decode has ``error`` set.
        """
        for path, video in self._videos(paths, features=False, progress=progress):
            yield _video_prediction(path, video.outputs, video.errors, video.seconds, self.spec.crops)

    def timeline(
        self, path: str | Path, *, window_s: float, stride_s: float | None = None, progress: bool = False
    ) -> Timeline:
        """Predicts consecutive windows of a long video, reading only the frames each window needs.

        Window ``w`` covers ``[w * stride_s, w * stride_s + window_s)`` seconds; windows are laid until the end
        of the video (a video shorter than one window gives one window over all of it). Each window is
        predicted from ``num_clips`` evenly spread clips inside it. Frames are decoded batch by batch, never the
        whole video at once.

        Args:
            path: The video.
            window_s: Window length in seconds.
            stride_s: Seconds between window starts (default: ``window_s``, no overlap).
            progress: Show a progress bar over windows on stderr.
        """
        path = Path(path)
        stride_s = window_s if stride_s is None else stride_s
        if window_s <= 0 or stride_s <= 0:
            raise MfnetError(f"--window and --stride must be positive seconds, got {window_s} and {stride_s}")
        try:
            with contextlib.closing(open_video(path)) as reader:
                num_frames, fps = reader.num_frames, reader.fps
        except MfnetError as err:
            return Timeline(path, [], math.nan, str(err))
        if num_frames <= 0:
            return Timeline(path, [], 0.0, f"{path} has no decodable video frames: re-encode or remove it")
        starts, lengths = _windows(num_frames, fps, window_s, stride_s)
        inner = UniformClipSampler(self.num_clips, self.spec.frames, self.spec.interval)
        items = self._items([path], _WindowSampler(starts, lengths, inner), durations=False)
        # One "video" whose items are the windows' clips: count progress in windows.
        items_per_window = self.num_clips * self.spec.crops
        bar = tqdm(total=len(starts), unit="window", disable=None if progress else True, leave=False)
        outputs = []
        try:
            for video in self._run(
                items, features=False, progress=None, on_items=lambda n: bar.update(n / items_per_window)
            ):
                outputs.append(video)
        finally:
            bar.close()
        (video,) = outputs
        windows = []
        window_of = video.clip_id // self.num_clips
        for w, (start, length) in enumerate(zip(starts, lengths, strict=True)):
            logits = video.outputs[window_of == w]
            prediction = _video_prediction(path, logits, video.errors, length / fps, self.spec.crops)
            prediction.start_s = start / fps
            windows.append(prediction)
        failed = [w.error for w in windows if w.error]
        return Timeline(path, windows, num_frames / fps, failed[0] if len(failed) == len(windows) else None)

    def features(self, paths: Sequence[str | Path], *, per_clip: bool = False, progress: bool = False) -> VideoFeatures:
        """Pooled embeddings (``model.clip_features``) of ``num_clips`` clips x crops per video.

        Args:
            paths: Video files.
            per_clip: Keep one row per clip and crop (else the mean over a video's clips x crops).
            progress: Show a progress bar over files on stderr.
        """
        paths = [Path(p) for p in paths]
        rows, videos, clips, errors = [], [], [], {}
        for index, video in enumerate(self.iter_features(paths, per_clip=per_clip, progress=progress)):
            if not video.ok:
                errors[str(video.path)] = video.error
            if per_clip:  # a failed video has no rows
                rows.append(video.features if video.ok else None)
                videos.append(torch.full((video.features.shape[0] if video.ok else 0,), index))
                clips.append(video.clip_id)
            else:
                rows.append(video.features if video.ok else None)
                videos.append(torch.tensor([index]))
                clips.append(torch.tensor([-1]))
        width = next((r.shape[1] for r in rows if r is not None and r.shape[0]), 0)
        if per_clip:
            rows = [r for r in rows if r is not None]
        rows = [r if r is not None else torch.full((1, width), math.nan) for r in rows]
        return VideoFeatures(
            paths,
            torch.cat(rows) if rows else torch.zeros(0, width),
            torch.cat(videos).long() if videos else torch.zeros(0, dtype=torch.long),
            torch.cat(clips).long() if clips else torch.zeros(0, dtype=torch.long),
            errors,
        )

    def iter_features(
        self, paths: Sequence[str | Path], *, per_clip: bool = False, progress: bool = False
    ) -> Iterator[VideoEmbedding]:
        """Like ``features`` but yields each video's ``VideoEmbedding`` as soon as it is done, in input order."""
        for path, video in self._videos(paths, features=True, progress=progress):
            yield _video_embedding(path, video, per_clip=per_clip, crops=self.spec.crops)

    # -- videos decoded elsewhere (Ray tasks): the same model code and the same averaging --------------------------

    def predict_decoded(self, videos: Sequence[DecodedVideo]) -> list[VideoPrediction]:
        """Predictions of videos decoded by ``decode_video`` (in other processes); the numbers of ``predict``.

        The good clips of all ``videos`` share batches of ``batch_size``.
        """
        outputs = self._run_decoded(videos, features=False)
        return [
            _video_prediction(v.path, out.outputs, out.errors, out.seconds, self.spec.crops)
            for v, out in zip(videos, outputs, strict=True)
        ]

    def features_decoded(self, videos: Sequence[DecodedVideo], *, per_clip: bool = False) -> list[VideoEmbedding]:
        """Embeddings of videos decoded by ``decode_video``; the numbers of ``iter_features``."""
        outputs = self._run_decoded(videos, features=True)
        return [
            _video_embedding(v.path, out, per_clip=per_clip, crops=self.spec.crops)
            for v, out in zip(videos, outputs, strict=True)
        ]

    def _run_decoded(self, videos: Sequence[DecodedVideo], *, features: bool) -> list[_VideoOutputs]:
        good = [v.clips[v.ok] for v in videos]  # (M_ok, 3, T, H, W) each
        flat = torch.cat(good) if good else torch.zeros(0)
        outs = (
            torch.cat([self._forward(chunk, features=features) for chunk in flat.split(self.batch_size)])
            if flat.shape[0]
            else torch.zeros(0, 0)
        )
        result, start = [], 0
        for index, (video, clips) in enumerate(zip(videos, good, strict=True)):
            n = clips.shape[0]
            out = outs[start : start + n] if n else torch.zeros(0, 0)
            result.append(_VideoOutputs(index, out, video.clip_id[video.ok], list(video.errors), video.seconds))
            start += n
        return result


@dataclass
class _VideoOutputs:
    """The model outputs of one video's items: the good ones stacked, the failures' reasons listed."""

    video: int
    outputs: torch.Tensor  # (M_ok, D) logits or embeddings of the items that decoded
    clip_id: torch.Tensor  # (M_ok,)
    errors: list[str]
    seconds: float

    @classmethod
    def from_items(cls, items: list[tuple[int, int, torch.Tensor | None, str, float]]) -> _VideoOutputs:
        good = [(clip, out) for _, clip, out, _, _ in items if out is not None]
        outputs = torch.stack([out for _, out in good]) if good else torch.zeros(0, 0)
        clip_id = torch.tensor([clip for clip, _ in good], dtype=torch.long)
        errors = list(dict.fromkeys(err for *_, err, _ in items if err))
        return cls(items[0][0], outputs, clip_id, errors, items[0][4])


def _video_embedding(path: Path, video: _VideoOutputs, *, per_clip: bool, crops: int) -> VideoEmbedding:
    """A video's embedding: the mean of its decoded clips x crops ``(M, C)``, or every row with ``per_clip``."""
    out = video.outputs  # (M_ok, C)
    if out.shape[0] == 0:
        reason = video.errors[0] if video.errors else f"no clip of {path} could be decoded: re-encode or remove it"
        return VideoEmbedding(path, out, torch.zeros(0, dtype=torch.long), 0, video.seconds, reason)
    clips = -(-out.shape[0] // max(1, crops))
    if per_clip:
        return VideoEmbedding(path, out, video.clip_id, clips, video.seconds)
    return VideoEmbedding(path, out.mean(0, keepdim=True), torch.tensor([-1]), clips, video.seconds)


def _video_prediction(
    path: Path, logits: torch.Tensor, errors: list[str], seconds: float, crops: int
) -> VideoPrediction:
    """Averages the softmax of a video's decoded clips x crops ``logits (M, K)`` (``average_by_video``)."""
    if logits.shape[0] == 0:
        reason = errors[0] if errors else f"no clip of {path} could be decoded: re-encode or remove it"
        return VideoPrediction(path, None, 0, seconds, reason)
    probs = logits.softmax(-1)  # (M, K)
    video = average_by_video(probs, torch.zeros(probs.shape[0], dtype=torch.long), 1)[0]  # (K,)
    return VideoPrediction(path, video, -(-probs.shape[0] // max(1, crops)), seconds)


def _windows(num_frames: int, fps: float, window_s: float, stride_s: float) -> tuple[list[int], list[int]]:
    """Start frame and length in frames of each window (the last ones may be cut by the end of the video)."""
    window = max(1, round(window_s * fps))
    stride = max(1, round(stride_s * fps))
    starts = list(range(0, max(1, num_frames - window + stride), stride))
    # A tail shorter than half a window is left out, unless the video is shorter than one window.
    starts = [s for s in starts if s == 0 or num_frames - s >= window / 2]
    return starts, [min(window, num_frames - s) for s in starts]
