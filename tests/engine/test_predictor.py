"""Tests of mfnet.engine.predictor."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import mfnet
from mfnet.data.readers import open_video
from mfnet.data.sampling import UniformClipSampler
from mfnet.data.video_writer import write_video
from mfnet.engine.predictor import ClipSpec, Predictor, _WindowSampler, average_by_video


def test_average_by_video_hand_computed() -> None:
    probs = torch.tensor([[0.2, 0.8], [0.6, 0.4], [1.0, 0.0], [0.1, 0.9], [0.3, 0.7]])
    index = torch.tensor([0, 0, 2, 0, 2])
    out = average_by_video(probs, index, 3)
    assert out.shape == (3, 2)
    assert torch.allclose(out[0], torch.tensor([0.3, 0.7]))  # (0.2+0.6+0.1)/3, (0.8+0.4+0.9)/3
    assert torch.allclose(out[2], torch.tensor([0.65, 0.35]))  # (1.0+0.3)/2, (0.0+0.7)/2
    assert all(math.isnan(v) for v in out[1].tolist())  # video 1 has no clip


def test_average_by_video_rejects_bad_index() -> None:
    with pytest.raises(ValueError):
        average_by_video(torch.ones(2, 3), torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError):
        average_by_video(torch.ones(2, 3), torch.tensor([0]), 3)


# -- the Predictor on real video files ----------------------------------------------------------------------------

FPS = 10
DARK, BRIGHT = 20, 230


def _plain(value: int, frames: int) -> np.ndarray:
    return np.full((frames, 48, 64, 3), value, dtype=np.uint8)


def brightness_logits(clips: torch.Tensor) -> torch.Tensor:
    """A stand-in classifier: class 1 for bright clips, class 0 for dark ones. ``(N, 3, T, H, W) -> (N, 2)``."""
    mean = clips.mean(dim=(1, 2, 3, 4))  # normalised: about -1.7 for DARK, +1.8 for BRIGHT
    return torch.stack([-mean, mean], dim=1) * 10


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("predict_videos")
    out = {
        "dark": write_video(root / "dark.mp4", _plain(DARK, 30), fps=FPS),
        "bright": write_video(root / "bright.mp4", _plain(BRIGHT, 25), fps=FPS),
        # 12 s: dark for 6 s, then bright for 6 s.
        "long": write_video(root / "long.mp4", np.concatenate([_plain(DARK, 60), _plain(BRIGHT, 60)]), fps=FPS),
    }
    full = write_video(root / "full.mkv", np.random.default_rng(0).integers(0, 255, (60, 48, 64, 3), np.uint8), fps=FPS)
    out["truncated"] = root / "truncated.mkv"
    out["truncated"].write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    out["corrupt"] = root / "corrupt.mp4"
    out["corrupt"].write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    return out


SPEC = ClipSpec(frames=8, interval=2, resize=64, crop_size=64)


def test_predict_averages_clips_and_reports_a_corrupt_file(videos: dict[str, Path]) -> None:
    predictor = Predictor(brightness_logits, spec=SPEC, num_clips=3, batch_size=4)
    order = [videos["dark"], videos["corrupt"], videos["bright"]]
    results = list(predictor.predict(order))
    assert [r.path for r in results] == order
    dark, corrupt, bright = results
    assert dark.ok and bright.ok and not corrupt.ok
    assert dark.topk(1)[0][0] == 0 and bright.topk(1)[0][0] == 1
    assert dark.topk(1)[0][1] > 0.99 and bright.topk(2)[1][1] < 0.01
    assert (dark.clips, bright.clips) == (3, 3)
    assert dark.seconds == pytest.approx(3.0) and bright.seconds == pytest.approx(2.5)
    assert "corrupt.mp4" in corrupt.error and corrupt.probs is None and corrupt.topk(5) == []


def test_predict_matches_the_mean_of_clip_softmax(videos: dict[str, Path]) -> None:
    seen: list[torch.Tensor] = []

    def recording(clips: torch.Tensor) -> torch.Tensor:
        logits = torch.randn(clips.shape[0], 4, generator=torch.Generator().manual_seed(len(seen)))
        seen.append(logits)
        return logits

    # 3 clips x 3 crops = 9 items; batches of 4 split the video across three forward passes.
    spec = ClipSpec(frames=8, interval=2, resize=64, crop_size=48, crops=3)
    (result,) = Predictor(recording, spec=spec, num_clips=3, batch_size=4).predict([videos["dark"]])
    expected = torch.cat(seen).softmax(-1).mean(0)
    assert sum(x.shape[0] for x in seen) == 9
    assert torch.allclose(result.probs, expected, atol=1e-6)
    assert result.clips == 3


def test_predict_with_workers_and_fixed_batch(videos: dict[str, Path]) -> None:
    sizes: list[int] = []

    def fixed(clips: torch.Tensor) -> torch.Tensor:
        sizes.append(clips.shape[0])
        assert clips.shape[0] == 2  # an exported graph with batch 2: batches are padded to it
        return brightness_logits(clips)

    predictor = Predictor(fixed, spec=SPEC, num_clips=3, batch_size=4, num_workers=2, fixed_batch=2)
    results = list(predictor.predict([videos["bright"], videos["corrupt"], videos["dark"]]))
    assert [r.ok for r in results] == [True, False, True]
    assert [r.topk(1)[0][0] for r in results if r.ok] == [1, 0]
    assert sizes and set(sizes) == {2}


def test_timeline_follows_the_video(videos: dict[str, Path]) -> None:
    predictor = Predictor(brightness_logits, spec=SPEC, num_clips=2, batch_size=4)
    timeline = predictor.timeline(videos["long"], window_s=3, stride_s=3)
    assert timeline.error is None and timeline.duration_s == pytest.approx(12.0)
    assert [w.start_s for w in timeline.windows] == pytest.approx([0, 3, 6, 9])
    assert [w.seconds for w in timeline.windows] == pytest.approx([3, 3, 3, 3])
    assert [w.topk(1)[0][0] for w in timeline.windows] == [0, 0, 1, 1]
    assert all(w.clips == 2 for w in timeline.windows)
    assert timeline.probs().shape == (4, 2)
    overlapping = predictor.timeline(videos["long"], window_s=4, stride_s=2)
    assert [w.start_s for w in overlapping.windows] == pytest.approx([0, 2, 4, 6, 8])
    # The window 4-8 s is half dark, half bright: its two clips disagree and the average is near 0.5.
    assert 0.3 < float(overlapping.windows[2].probs[1]) < 0.7
    short = predictor.timeline(videos["dark"], window_s=10)
    assert len(short.windows) == 1 and short.windows[0].seconds == pytest.approx(3.0)


def test_window_sampler_stays_inside_windows() -> None:
    sampler = _WindowSampler([0, 20, 40], [30, 30, 20], UniformClipSampler(2, 8, 2))
    assert sampler.clips_per_video == 6
    for clip_id in range(6):
        window = clip_id // 2
        frames = sampler(60, clip_id).frames
        lo, hi = [0, 20, 40][window], [0, 20, 40][window] + [30, 30, 20][window]
        assert frames.min() >= lo and frames.max() < hi and len(frames) == 8


def test_timeline_of_a_corrupt_file(videos: dict[str, Path]) -> None:
    timeline = Predictor(brightness_logits, spec=SPEC).timeline(videos["corrupt"], window_s=2)
    assert timeline.windows == [] and "corrupt.mp4" in timeline.error


def test_features_per_video_and_per_clip(videos: dict[str, Path]) -> None:
    model = mfnet.create_model("mfnet3d", num_classes=2, depths=(1, 1, 1, 1), widths=(32, 32, 64, 64))
    predictor = Predictor(model, spec=SPEC, num_clips=2, batch_size=4, device="cpu")
    paths = [videos["dark"], videos["corrupt"], videos["bright"]]
    per_video = predictor.features(paths)
    assert per_video.features.shape == (3, 64)
    assert per_video.video_index.tolist() == [0, 1, 2] and per_video.clip_id.tolist() == [-1, -1, -1]
    assert torch.isnan(per_video.features[1]).all() and not torch.isnan(per_video.features[[0, 2]]).any()
    assert list(per_video.errors) == [str(videos["corrupt"])]
    per_clip = predictor.features(paths, per_clip=True)
    assert per_clip.features.shape == (4, 64)
    assert per_clip.video_index.tolist() == [0, 0, 2, 2] and per_clip.clip_id.tolist() == [0, 1, 0, 1]
    # The video embedding is the mean of its clip embeddings.
    assert torch.allclose(per_clip.features[:2].mean(0), per_video.features[0], atol=1e-5)
    with torch.no_grad():  # and the same as clip_features of the plain model
        with open_video(videos["dark"]) as reader:
            frames = reader.read(UniformClipSampler(2, 8, 2)(reader.num_frames, 0).frames)
        clip = SPEC.transform()(frames)[None]  # (1, 3, 8, 64, 64)
        assert torch.allclose(model.eval().clip_features(clip)[0], per_clip.features[0], atol=1e-4)


def test_a_truncated_file_is_predicted_from_the_part_that_decodes(videos: dict[str, Path]) -> None:
    (result,) = Predictor(brightness_logits, spec=SPEC, num_clips=4).predict([videos["truncated"]])
    assert result.ok and result.clips == 4
    assert 1.0 < result.seconds < 5.0  # about half of the 6 s written
