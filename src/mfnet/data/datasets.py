"""Map-style datasets of clips (videos) and images that never stop a run on a bad file.

``VideoClipDataset`` glues records, a reader, a sampler and a transform. Item ``i`` is view ``v`` of clip
``c`` of video ``n``, with ``i = (n * clips_per_video + c) * num_views + v`` (``num_views`` is the transform's
number of crops), so ``len = videos x clips_per_video x num_views``. Items are dicts::

    {"clip": float (C, T, H, W), "label": int, "video_index": int, "clip_id": int, "substituted": bool}

Randomness: every item draws from its own generator seeded by ``(seed, epoch, index, attempt)``, so results do
not depend on the number of DataLoader workers, two workers never share a random stream (the authors' code
repeated clips across workers) and each epoch (``set_epoch``, done by ``build_loader``) draws new clips.

Bad files: a clip that fails to decode is retried with another clip of the same video (``max_retries``
attempts; a reader that finds a file shorter than its header lowers its frame count first). Then another video,
drawn at random, is used instead *with its own label* and ``video_index`` and ``"substituted": True``; each bad
file is logged once per process (logger ``mfnet.data``) and counted in ``substitutions``. A training loop sums
``batch["substituted"]`` to report the count per epoch (worker processes keep their own ``substitutions``).
Evaluation should drop substituted items. After ``max_substitutions`` bad videos in a row ``DataError`` is raised:
the dataset is mostly broken.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mfnet.data.annotations import VideoRecord
from mfnet.data.readers import VideoReader, open_video, read_image
from mfnet.errors import DataError, MfnetError, VideoError

LOGGER = logging.getLogger("mfnet.data")

# Anything a broken file can raise while opening, demuxing, decoding or transforming.
_DECODE_ERRORS = (MfnetError, OSError, RuntimeError, ValueError, IndexError, EOFError, MemoryError)


class _BadFile(DataError):
    """A file that cannot be opened at all: no point trying another clip of it."""


class _RobustDataset(torch.utils.data.Dataset):
    """Shared retry / substitute / seeding policy of the clip and image datasets."""

    def __init__(
        self,
        records: Sequence[VideoRecord],
        *,
        items_per_video: int,
        seed: int,
        max_retries: int,
        max_substitutions: int,
    ) -> None:
        if not records:
            raise DataError("the dataset has no videos: check the annotations, the subset and the root folder")
        self.records = list(records)
        self.items_per_video = items_per_video
        self.seed = seed
        self.epoch = 0
        self.max_retries = max(1, max_retries)
        self.max_substitutions = max_substitutions
        self.substitutions = 0  # counted in this process
        self._logged: set[str] = set()

    def __len__(self) -> int:
        return len(self.records) * self.items_per_video

    def set_epoch(self, epoch: int) -> None:
        """Chooses the epoch whose random clips and augmentations the items draw."""
        self.epoch = int(epoch)

    def _rng(self, index: int, attempt: int) -> tuple[np.random.Generator, torch.Generator]:
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, self.epoch, index, attempt])
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        return rng, generator

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} items")
        video_index, part = divmod(index, self.items_per_video)
        error: BaseException | None = None
        for substitution in range(self.max_substitutions + 1):
            if substitution:
                rng, _ = self._rng(index, 1000 + substitution)
                video_index = self._other_video(video_index, rng)
            for attempt in range(self.max_retries):
                rng, generator = self._rng(index, attempt + 1000 * substitution)
                try:
                    clip, clip_id = self._load(video_index, part, attempt, rng, generator)
                except _DECODE_ERRORS as err:
                    error = err
                    if not self._worth_retrying(err):
                        break
                    continue
                if substitution:
                    self.substitutions += 1
                record = self.records[video_index]
                return {
                    "clip": clip,
                    "label": record.label,
                    "video_index": video_index,
                    "clip_id": clip_id,
                    "substituted": bool(substitution),
                }
            self._log_once(self.records[video_index].path, error)
        if self.max_substitutions == 0:
            raise DataError(f"{error}".rstrip(".") + " (no substitutes allowed)")
        raise DataError(
            f"{self.max_substitutions + 1} videos in a row failed to decode (last: {error}): "
            "run `mfnet data check` and clean the dataset"
        )

    def _other_video(self, video_index: int, rng: np.random.Generator) -> int:
        if len(self.records) == 1:
            return video_index
        other = int(rng.integers(len(self.records) - 1))
        return other + 1 if other >= video_index else other

    @staticmethod
    def _worth_retrying(err: BaseException) -> bool:
        return not isinstance(err, _BadFile)  # another clip of a file that opens may decode

    def _log_once(self, path: Path, error: BaseException | None) -> None:
        key = str(path)
        if key not in self._logged:
            self._logged.add(key)
            LOGGER.warning("skipping unreadable video %s (%s); another video is used instead", path, error)

    def _load(
        self, video_index: int, part: int, attempt: int, rng: np.random.Generator, generator: torch.Generator
    ) -> tuple[torch.Tensor, int]:
        raise NotImplementedError


class VideoClipDataset(_RobustDataset):
    """Clips of videos: see the module docstring for items, seeding and the bad-file policy.

    Args:
        records: the videos (``Annotations.subset(...)`` or ``Annotations.records``).
        sampler: a clip sampler (``mfnet.data.sampling``).
        transform: maps uint8 ``(T, H, W, C)`` to float ``(C, T, H, W)``; called as ``transform(frames,
            generator=..., view=...)`` when it has ``num_views`` (the transforms of ``mfnet.data.transforms``),
            else ``transform(frames)``. ``None`` returns uint8 ``(C, T, H, W)``.
        reader_factory: opens a path (default ``open_video``).
        seed: base seed of the per-item generators.
        max_retries: clips tried per video before substituting another video.
        max_substitutions: bad videos tolerated for one item before ``DataError``.
        reader_cache: readers kept open per process (items of a batch often share a video).
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        *,
        sampler: Any,
        transform: Callable[..., torch.Tensor] | None,
        reader_factory: Callable[[Path], VideoReader] = open_video,
        seed: int = 0,
        max_retries: int = 3,
        max_substitutions: int = 10,
        reader_cache: int = 4,
    ) -> None:
        self.sampler = sampler
        self.transform = transform
        self.num_views = int(getattr(transform, "num_views", 1))
        super().__init__(
            records,
            items_per_video=sampler.clips_per_video * self.num_views,
            seed=seed,
            max_retries=max_retries,
            max_substitutions=max_substitutions,
        )
        self.reader_factory = reader_factory
        self.reader_cache = reader_cache
        self._readers: OrderedDict[int, VideoReader] = OrderedDict()
        self._readers_pid = os.getpid()
        self._frames_cache: tuple[tuple[int, int, int, int], torch.Tensor] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_readers"] = OrderedDict()  # open files do not travel to workers
        state["_frames_cache"] = None
        return state

    def _reader(self, video_index: int) -> VideoReader:
        if self._readers_pid != os.getpid():  # a forked worker must not share the parent's file handles
            self._readers, self._readers_pid = OrderedDict(), os.getpid()
        reader = self._readers.pop(video_index, None)
        if reader is None:
            reader = self.reader_factory(self.records[video_index].path)
        self._readers[video_index] = reader
        while len(self._readers) > self.reader_cache:
            _, old = self._readers.popitem(last=False)
            old.close()
        return reader

    def _drop_reader(self, video_index: int) -> None:
        reader = self._readers.pop(video_index, None)
        if reader is not None:
            reader.close()

    def _load(
        self, video_index: int, part: int, attempt: int, rng: np.random.Generator, generator: torch.Generator
    ) -> tuple[torch.Tensor, int]:
        clip_id, view = divmod(part, self.num_views)
        try:
            reader = self._reader(video_index)
            num_frames = reader.num_frames
        except _DECODE_ERRORS as err:
            self._drop_reader(video_index)
            raise _BadFile(str(err)) from None
        if num_frames <= 0:
            self._drop_reader(video_index)
            raise _BadFile(f"{self.records[video_index].path} has no decodable frames")
        try:
            key = (video_index, clip_id, num_frames, self.epoch)
            if self._frames_cache is not None and self._frames_cache[0] == key and attempt == 0:
                frames = self._frames_cache[1]  # another crop of the clip just read
            else:
                indices = self.sampler(num_frames, clip_id, rng)
                frames = reader.read(indices.frames)
                if self.num_views > 1 and not getattr(self.sampler, "random", False):
                    self._frames_cache = (key, frames)
        except VideoError:
            raise  # keep the reader: it remembers how many frames really decode
        except _DECODE_ERRORS:
            self._drop_reader(video_index)  # reopen on the next attempt: the decoder may be left in a bad state
            raise
        if self.transform is None:
            return frames.permute(3, 0, 1, 2).contiguous(), clip_id  # (T, H, W, C) -> (C, T, H, W)
        if hasattr(self.transform, "num_views"):
            return self.transform(frames, generator=generator, view=view), clip_id
        return self.transform(frames), clip_id


class ImageDataset(_RobustDataset):
    """Images for the 2D models: items like ``VideoClipDataset``'s with ``"clip"`` float ``(C, H, W)``.

    The transform sees the image as a one-frame clip ``(1, H, W, C)``, so the clip transforms serve both; the
    time axis is dropped afterwards. Unreadable images are substituted like bad videos.

    Args:
        records: the images (e.g. ``load_annotations("image-folder", None, root)``).
        transform: as for ``VideoClipDataset``; ``None`` returns uint8 ``(C, H, W)``.
        seed, max_retries, max_substitutions: as for ``VideoClipDataset``.
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        *,
        transform: Callable[..., torch.Tensor] | None,
        seed: int = 0,
        max_retries: int = 1,
        max_substitutions: int = 10,
    ) -> None:
        self.transform = transform
        self.num_views = int(getattr(transform, "num_views", 1))
        super().__init__(
            records,
            items_per_video=self.num_views,
            seed=seed,
            max_retries=max_retries,
            max_substitutions=max_substitutions,
        )

    def _load(
        self, video_index: int, part: int, attempt: int, rng: np.random.Generator, generator: torch.Generator
    ) -> tuple[torch.Tensor, int]:
        image = read_image(self.records[video_index].path)[None]  # (1, H, W, C)
        if self.transform is None:
            return image[0].permute(2, 0, 1).contiguous(), part
        if hasattr(self.transform, "num_views"):
            clip = self.transform(image, generator=generator, view=part)
        else:
            clip = self.transform(image)
        return clip[:, 0], part  # (C, 1, H, W) -> (C, H, W)
