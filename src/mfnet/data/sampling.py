"""Clip samplers: which frame indices of a video make a clip.

A sampler is called as ``sampler(num_frames, clip_id, rng)`` and returns a ``ClipIndices`` record. It has
``clips_per_video`` (how many clips a dataset draws from each video per epoch) and ``frames_per_clip``.

Videos shorter than a clip's span: ``short="loop"`` (default) plays the video again from its start (indices
wrap modulo the video length); ``short="pad"`` repeats the last frame. Either way the clip has the requested
number of frames.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np

ShortVideo = Literal["loop", "pad"]


class ClipIndices(NamedTuple):
    """Frame indices of one clip.

    Attributes:
        frames: 0-based frame indices in temporal order, ``(T,)`` int64.
        clip_id: which clip of the video this is (``0 <= clip_id < clips_per_video``).
    """

    frames: np.ndarray
    clip_id: int


def _fit(indices: np.ndarray, num_frames: int, short: ShortVideo) -> np.ndarray:
    if short == "loop":
        return indices % num_frames
    return np.minimum(indices, num_frames - 1)


def _check(num_frames: int) -> None:
    if num_frames <= 0:
        raise ValueError("cannot sample a clip from a video with no frames")


class RandomClipSampler:
    """One clip per video at a random start: ``frames_per_clip`` frames ``interval`` apart (training).

    Args:
        frames_per_clip: frames in a clip (16 in the paper).
        interval: frames between consecutive clip frames (2 in the paper), or a list to draw one per clip
            uniformly, such as ``[1, 2, 2, 3]`` which the authors used on Kinetics.
        short: what to do when a video is shorter than the clip's span (see the module docstring).
    """

    clips_per_video = 1

    def __init__(self, frames_per_clip: int = 16, interval: int | Sequence[int] = 2, *, short: ShortVideo = "loop"):
        self.frames_per_clip = frames_per_clip
        self.intervals = [interval] if isinstance(interval, int) else list(interval)
        if frames_per_clip <= 0 or not self.intervals or min(self.intervals) <= 0:
            raise ValueError("frames_per_clip and intervals must be positive")
        self.short = short

    def __call__(self, num_frames: int, clip_id: int, rng: np.random.Generator) -> ClipIndices:
        """Draws a clip from a video of ``num_frames`` frames using ``rng``."""
        _check(num_frames)
        interval = self.intervals[int(rng.integers(len(self.intervals)))]
        span = (self.frames_per_clip - 1) * interval + 1
        start = int(rng.integers(num_frames - span + 1)) if num_frames >= span else int(rng.integers(num_frames))
        if num_frames < span and self.short == "pad":
            start = 0
        indices = start + np.arange(self.frames_per_clip, dtype=np.int64) * interval
        return ClipIndices(_fit(indices, num_frames, self.short), clip_id)

    def __repr__(self) -> str:
        return f"RandomClipSampler(frames_per_clip={self.frames_per_clip}, interval={self.intervals})"


class UniformClipSampler:
    """``num_clips`` clips spread evenly over the video, always the same (evaluation, "dense" multi-clip testing).

    Clip ``k`` is centred at ``(k + 0.5) / num_clips`` of the video, moved inside the video if it would stick out.

    Args:
        num_clips: clips per video.
        frames_per_clip: frames in a clip.
        interval: frames between consecutive clip frames.
        short: what to do when a video is shorter than the clip's span.
    """

    def __init__(self, num_clips: int = 1, frames_per_clip: int = 16, interval: int = 2, *, short: ShortVideo = "loop"):
        if min(num_clips, frames_per_clip, interval) <= 0:
            raise ValueError("num_clips, frames_per_clip and interval must be positive")
        self.clips_per_video = num_clips
        self.frames_per_clip = frames_per_clip
        self.interval = interval
        self.short = short

    def __call__(self, num_frames: int, clip_id: int, rng: np.random.Generator | None = None) -> ClipIndices:
        """Returns clip ``clip_id`` of a video of ``num_frames`` frames (``rng`` is not used)."""
        _check(num_frames)
        span = (self.frames_per_clip - 1) * self.interval + 1
        if num_frames >= span:
            centre = (clip_id + 0.5) * num_frames / self.clips_per_video
            start = round(min(max(centre - span / 2, 0), num_frames - span))
        else:
            start = 0
        indices = start + np.arange(self.frames_per_clip, dtype=np.int64) * self.interval
        return ClipIndices(_fit(indices, num_frames, self.short), clip_id)

    def __repr__(self) -> str:
        return (
            f"UniformClipSampler(num_clips={self.clips_per_video}, frames_per_clip={self.frames_per_clip}, "
            f"interval={self.interval})"
        )


class SegmentSampler:
    """TSN-style sampling: the video is cut into ``num_segments`` equal segments and each gives a snippet.

    Training (``random=True``) takes each snippet at a random place in its segment; evaluation takes it in the
    middle. A clip has ``num_segments * frames_per_segment`` frames in temporal order.

    Args:
        num_segments: segments per video.
        frames_per_segment: consecutive frames per snippet (1 for RGB TSN).
        random: random (training) or centred (evaluation) snippets.
    """

    clips_per_video = 1

    def __init__(self, num_segments: int = 8, frames_per_segment: int = 1, *, random: bool = True) -> None:
        if min(num_segments, frames_per_segment) <= 0:
            raise ValueError("num_segments and frames_per_segment must be positive")
        self.num_segments = num_segments
        self.frames_per_segment = frames_per_segment
        self.frames_per_clip = num_segments * frames_per_segment
        self.random = random

    def __call__(self, num_frames: int, clip_id: int, rng: np.random.Generator | None = None) -> ClipIndices:
        """Returns the snippets of a video of ``num_frames`` frames (``rng`` is needed when ``random``)."""
        _check(num_frames)
        bounds = np.linspace(0, num_frames, self.num_segments + 1)
        starts = []
        for lo, hi in itertools.pairwise(bounds):
            room = max(hi - lo - self.frames_per_segment, 0)
            offset = rng.uniform(0, room) if self.random and rng is not None else room / 2
            starts.append(int(lo + offset))
        indices = (np.asarray(starts)[:, None] + np.arange(self.frames_per_segment)[None]).reshape(-1)
        return ClipIndices(np.minimum(indices, num_frames - 1).astype(np.int64), clip_id)

    def __repr__(self) -> str:
        return f"SegmentSampler(num_segments={self.num_segments}, frames_per_segment={self.frames_per_segment})"
