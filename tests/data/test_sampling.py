"""Clip samplers: spans, intervals, even spreading, segments and short videos."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mfnet.data.sampling import ClipIndices, RandomClipSampler, SegmentSampler, UniformClipSampler


def test_random_clip_has_16_frames_two_apart_inside_the_video() -> None:
    sampler = RandomClipSampler(16, 2)
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(200):
        clip = sampler(100, 0, rng)
        assert isinstance(clip, ClipIndices) and clip.clip_id == 0
        assert clip.frames.dtype == np.int64 and len(clip.frames) == 16
        assert np.all(np.diff(clip.frames) == 2)
        assert clip.frames[0] >= 0 and clip.frames[-1] <= 99
        starts.add(int(clip.frames[0]))
    assert min(starts) == 0 and max(starts) == 100 - 31  # every start in [0, 69] is possible
    assert len(starts) > 50


def test_random_clip_interval_drawn_per_clip_from_a_list() -> None:
    sampler = RandomClipSampler(8, [1, 2, 2, 3])
    rng = np.random.default_rng(1)
    intervals = [int(np.diff(sampler(200, 0, rng).frames)[0]) for _ in range(400)]
    counts = {k: intervals.count(k) for k in (1, 2, 3)}
    assert set(intervals) == {1, 2, 3}
    assert counts[2] > counts[1] and counts[2] > counts[3]  # 2 is drawn half the time


def test_short_videos_loop_or_pad() -> None:
    rng = np.random.default_rng(0)
    looped = RandomClipSampler(8, 2)(5, 0, rng).frames
    assert len(looped) == 8 and looped.max() < 5
    assert all((b - a) % 5 == 2 for a, b in itertools.pairwise(looped))
    padded = RandomClipSampler(8, 2, short="pad")(5, 0, rng).frames
    assert padded.tolist() == [0, 2, 4, 4, 4, 4, 4, 4]
    assert UniformClipSampler(2, 4, 2)(3, 1).frames.tolist() == [0, 2, 1, 0]


def test_uniform_clips_are_spread_evenly_and_deterministic() -> None:
    sampler = UniformClipSampler(num_clips=4, frames_per_clip=8, interval=2)
    assert sampler.clips_per_video == 4
    starts = [int(sampler(300, k).frames[0]) for k in range(4)]
    # Centres at 37.5, 112.5, 187.5, 262.5; a clip spans 15 frames.
    assert starts == [30, 105, 180, 255]
    assert sampler(300, 2).frames.tolist() == sampler(300, 2).frames.tolist()
    ends = [int(sampler(40, k).frames[-1]) for k in range(4)]
    assert max(ends) <= 39 and int(sampler(40, 0).frames[0]) == 0


def test_segment_sampler_one_snippet_per_segment() -> None:
    train = SegmentSampler(num_segments=4, frames_per_segment=2, random=True)
    rng = np.random.default_rng(0)
    for _ in range(50):
        frames = train(80, 0, rng).frames
        assert len(frames) == 8
        for segment in range(4):
            snippet = frames[2 * segment : 2 * segment + 2]
            assert 20 * segment <= snippet[0] and snippet[1] < 20 * (segment + 1)
            assert snippet[1] - snippet[0] == 1
    centred = SegmentSampler(num_segments=4, frames_per_segment=1, random=False)(80, 0)
    assert centred.frames.tolist() == [9, 29, 49, 69]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        RandomClipSampler(0)
    with pytest.raises(ValueError):
        UniformClipSampler(num_clips=0)
    with pytest.raises(ValueError):
        RandomClipSampler(8, 2)(0, 0, np.random.default_rng())
