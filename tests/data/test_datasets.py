"""Datasets and loaders on real files: bad files substituted with their own labels, seeding across workers/epochs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mfnet.data.annotations import VideoRecord
from mfnet.data.datasets import ImageDataset, VideoClipDataset
from mfnet.data.loader import build_loader
from mfnet.data.readers import open_video
from mfnet.data.sampling import RandomClipSampler, UniformClipSampler
from mfnet.data.transforms import eval_transform
from mfnet.data.video_writer import numbered_frames, read_frame_number, write_video
from mfnet.errors import DataError


def _numbers(clip: torch.Tensor) -> list[int]:
    """Frame numbers of a uint8 clip (C, T, H, W)."""
    return [read_frame_number(clip[:, t].permute(1, 2, 0)) for t in range(clip.shape[1])]


def _good_records(video_dir: Path) -> list[VideoRecord]:
    return [VideoRecord(video_dir / f"v{k}.mp4", k, "train") for k in range(6)]


def _bad_records(tmp_path: Path) -> list[VideoRecord]:
    """Four broken videos: garbage, empty, missing, truncated mp4 (labels 6-9)."""
    garbage, empty, truncated = tmp_path / "garbage.mp4", tmp_path / "empty.avi", tmp_path / "truncated.mp4"
    garbage.write_bytes(b"\x00\x01garbage" * 50)
    empty.write_bytes(b"")
    whole = write_video(tmp_path / "whole.mp4", numbered_frames(30))
    truncated.write_bytes(whole.read_bytes()[:300])
    paths = [garbage, empty, tmp_path / "missing.mp4", truncated]
    return [VideoRecord(path, 6 + i, "train") for i, path in enumerate(paths)]


def test_clip_items_carry_exact_frames_and_labels(video_dir: Path) -> None:
    dataset = VideoClipDataset(_good_records(video_dir), sampler=UniformClipSampler(3, 8, 2), transform=None)
    assert len(dataset) == 18
    item = dataset[3 * 4 + 2]  # video 4, clip 2
    assert item["video_index"] == 4 and item["clip_id"] == 2 and item["label"] == 4
    assert item["substituted"] is False
    assert item["clip"].shape == (3, 8, 48, 64) and item["clip"].dtype == torch.uint8
    # 30 frames, 3 clips spanning 15 frames: clip 2 is centred at 25 and pushed inside, start 15.
    assert _numbers(item["clip"]) == [400 + 15 + 2 * i for i in range(8)]


def test_loader_with_two_workers_finishes_an_epoch_over_bad_files(video_dir: Path, tmp_path: Path, caplog) -> None:
    records = _good_records(video_dir) + _bad_records(tmp_path)
    dataset = VideoClipDataset(records, sampler=RandomClipSampler(8, 2), transform=None, seed=7)
    loader = build_loader(dataset, batch_size=3, shuffle=True, num_workers=2, seed=7, drop_last=False)
    with caplog.at_level(logging.WARNING, logger="mfnet.data"):
        batches = list(loader)
    assert sum(len(b["label"]) for b in batches) == 10
    substituted = sum(int(b["substituted"].sum()) for b in batches)
    assert substituted == 4  # the four broken videos, each replaced once
    for batch in batches:
        for clip, label, index in zip(batch["clip"], batch["label"], batch["video_index"], strict=True):
            numbers = _numbers(clip)
            # The clip comes from the video its label names: the substitute keeps its own label.
            assert int(label) == int(index) == numbers[0] // 100 < 6
            assert numbers == [numbers[0] + 2 * i for i in range(8)]
    good_indices = sorted(
        int(i) for b in batches for i, s in zip(b["video_index"], b["substituted"], strict=True) if not s
    )
    assert good_indices == list(range(6))


def test_bad_file_is_logged_once_and_counted(video_dir: Path, tmp_path: Path, caplog) -> None:
    records = _good_records(video_dir)[:2] + _bad_records(tmp_path)[:1]
    dataset = VideoClipDataset(records, sampler=RandomClipSampler(4, 1), transform=None)
    with caplog.at_level(logging.WARNING, logger="mfnet.data"):
        for epoch in range(3):
            dataset.set_epoch(epoch)
            assert [dataset[i]["substituted"] for i in range(3)] == [False, False, True]
    assert dataset.substitutions == 3
    assert len([r for r in caplog.records if "garbage.mp4" in r.getMessage()]) == 1


def test_truncated_file_is_resampled_within_the_frames_that_decode(tmp_path: Path) -> None:
    whole = write_video(tmp_path / "whole.avi", numbered_frames(60), codec="mpeg4", gop_size=10)
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.7)])
    with open_video(cut) as reader:
        assert reader.header_frames == 60
        packets = reader.num_frames
    assert 10 < packets < 60
    dataset = VideoClipDataset([VideoRecord(cut, 0, "train")], sampler=RandomClipSampler(8, 1), transform=None)
    for epoch in range(8):
        dataset.set_epoch(epoch)
        item = dataset[0]
        numbers = _numbers(item["clip"])
        assert not item["substituted"]
        expected = list(range(numbers[0], numbers[0] + 8))
        assert expected[-1] < packets
        # The packet cut in half may decode with error concealment (showing the previous frame's content).
        assert [n for n, e in zip(numbers, expected, strict=True) if e < packets - 1] == [
            e for e in expected if e < packets - 1
        ]


def test_too_many_bad_videos_raise_data_error(tmp_path: Path) -> None:
    dataset = VideoClipDataset(
        _bad_records(tmp_path), sampler=RandomClipSampler(4, 1), transform=None, max_substitutions=3
    )
    with pytest.raises(DataError, match="mfnet data check"):
        dataset[0]


def test_workers_and_epochs_draw_different_clips_and_runs_repeat(video_dir: Path) -> None:
    records = _good_records(video_dir) * 4  # 24 items, each video 4 times
    dataset = VideoClipDataset(records, sampler=RandomClipSampler(4, 1), transform=None, seed=3)

    def starts(loader) -> list[int]:
        return [_numbers(clip)[0] for batch in loader for clip in batch["clip"]]

    loader = build_loader(dataset, batch_size=4, shuffle=False, num_workers=2, seed=3)
    epoch0 = starts(loader)
    epoch1 = starts(loader)  # iterating again moves to the next epoch by itself
    assert loader.epoch == 1
    # Copies of a video served by different workers (and in different batches) get different clips.
    for k in range(6):
        copies = [epoch0[k + 6 * j] for j in range(4)]
        assert len(set(copies)) >= 3, copies
    assert sum(a != b for a, b in zip(epoch0, epoch1, strict=True)) >= 18
    # Same seed and epoch -> the same clips, whatever the number of workers.
    again = build_loader(dataset, batch_size=5, shuffle=False, num_workers=0, seed=3, epoch=1)
    assert starts(again) == epoch1


def test_shuffle_order_follows_seed_and_epoch(video_dir: Path) -> None:
    dataset = VideoClipDataset(_good_records(video_dir), sampler=RandomClipSampler(2, 1), transform=None)

    def order(seed: int, epoch: int) -> list[int]:
        loader = build_loader(dataset, batch_size=6, shuffle=True, num_workers=0, seed=seed, epoch=epoch)
        return [int(i) for b in loader for i in b["video_index"]]

    assert order(0, 0) == order(0, 0)
    assert sorted(order(0, 0)) == list(range(6))
    assert len({tuple(order(0, e)) for e in range(5)}) > 1


def test_three_crop_evaluation_views(video_dir: Path) -> None:
    transform = eval_transform(resize=48, crop_size=48, crops=3, normalization="none")
    dataset = VideoClipDataset(_good_records(video_dir)[:2], sampler=UniformClipSampler(2, 4, 1), transform=transform)
    assert len(dataset) == 2 * 2 * 3
    views = [dataset[i] for i in range(6)]  # video 0: clip 0 x 3 crops, clip 1 x 3 crops
    assert [v["clip_id"] for v in views] == [0, 0, 0, 1, 1, 1]
    assert all(v["clip"].shape == (3, 4, 48, 48) for v in views)
    assert not torch.equal(views[0]["clip"], views[2]["clip"])  # left and right crops differ


def test_image_dataset_for_2d_models(tmp_path: Path) -> None:
    records = []
    for k in range(3):
        path = tmp_path / f"img{k}.png"
        Image.fromarray(numbered_frames(1, 32, 32, start=k)[0]).save(path)
        records.append(VideoRecord(path, k, "train"))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really")
    records.append(VideoRecord(broken, 3, "train"))
    dataset = ImageDataset(records, transform=None)
    items = [dataset[i] for i in range(4)]
    assert items[1]["clip"].shape == (3, 32, 32) and read_frame_number(items[1]["clip"]) == 1
    assert items[3]["substituted"] and items[3]["label"] == items[3]["video_index"] < 3
    transformed = ImageDataset(records[:3], transform=eval_transform(resize=32, crop_size=24))[0]["clip"]
    assert transformed.shape == (3, 24, 24) and transformed.dtype == torch.float32
    assert np.isfinite(transformed.numpy()).all()


def test_training_batches_from_workers_have_the_model_input_layout(video_dir: Path) -> None:
    from mfnet.data.transforms import train_transform

    transform = train_transform(crop_size=32, short_side=(32, 40))
    dataset = VideoClipDataset(_good_records(video_dir), sampler=RandomClipSampler(8, 2), transform=transform)
    loader = build_loader(dataset, batch_size=3, shuffle=True, num_workers=2, seed=0)
    batches = list(loader)
    assert len(batches) == 2  # 6 videos, batches of 3 (drop_last when shuffling)
    for batch in batches:
        assert batch["clip"].shape == (3, 3, 8, 32, 32) and batch["clip"].dtype == torch.float32
        assert torch.isfinite(batch["clip"]).all()
        assert batch["label"].dtype == torch.int64 and batch["substituted"].dtype == torch.bool
    # The authors' normalisation (x - [124, 117, 104]) * 0.0167 maps 0-255 into [-124 * 0.0167, 151 * 0.0167].
    values = torch.cat([b["clip"].flatten() for b in batches])
    assert values.min() >= -124 * 0.0167 - 1e-4 and values.max() <= 151 * 0.0167 + 1e-4
