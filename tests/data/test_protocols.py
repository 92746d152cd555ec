"""Test and training geometry protocols on a decoded, non-square video: which source pixels end up in the crop.

The video's red channel is a ramp over the width and its green channel a ramp over the height, so each output
pixel says where in the source frame it came from. The expected positions are computed by hand from the resize
(half-pixel centres, ``x_src = (x + 0.5) * W / new_W - 0.5``) and the crop offsets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mfnet.data.readers import open_video
from mfnet.data.transforms import (
    TrainTransform,
    build_eval_transform,
    build_train_transform,
    default_resize,
    describe_test_protocol,
    format_resize,
    parse_resize,
)
from mfnet.data.video_writer import write_video

HEIGHT, WIDTH = 96, 192  # 2:1, wider than 16:9 so the two protocols differ a lot
TOLERANCE = 6.0  # in 0-255 units: H.264 at high quality plus bilinear rounding


@pytest.fixture(scope="module")
def ramp_frames(tmp_path_factory: pytest.TempPathFactory) -> torch.Tensor:
    """Four decoded frames ``(T, H, W, 3)`` of an mp4 whose red = 255 x / (W - 1) and green = 255 y / (H - 1)."""
    x = np.linspace(0, 255, WIDTH)[None, :].repeat(HEIGHT, 0)
    y = np.linspace(0, 255, HEIGHT)[:, None].repeat(WIDTH, 1)
    image = np.stack([x, y, np.full_like(x, 128)], axis=-1).round().astype(np.uint8)
    path = write_video(tmp_path_factory.mktemp("ramp") / "ramp.mp4", np.repeat(image[None], 4, 0), quality=4)
    reader = open_video(Path(path))
    try:
        return reader.read([0, 1, 2, 3])
    finally:
        reader.close()


def _source_ramp(offset: int, size: int, new: int, old: int) -> torch.Tensor:
    """The ramp value (0-255) at the source position of crop pixels ``0..size-1`` after a resize ``old -> new``."""
    index = torch.arange(size, dtype=torch.float64)
    source = ((offset + index + 0.5) * old / new - 0.5).clamp(0, old - 1)
    return source * 255 / (old - 1)


def _check_crop(clip: torch.Tensor, *, top: int, left: int, new_h: int, new_w: int, margin: int = 3) -> None:
    """``clip`` is ``(3, T, c, c)`` with values 0-1; compares red/green with the hand-computed resize and crop."""
    crop = clip.shape[-1]
    red = clip[0].mean(0).double() * 255  # (c, c)
    green = clip[1].mean(0).double() * 255
    want_x = _source_ramp(left, crop, new_w, WIDTH)[None, :].expand(crop, crop)
    want_y = _source_ramp(top, crop, new_h, HEIGHT)[:, None].expand(crop, crop)
    inner = (slice(margin, crop - margin), slice(margin, crop - margin))
    assert (red - want_x)[inner].abs().max() < TOLERANCE
    assert (green - want_y)[inner].abs().max() < TOLERANCE


def test_authors_test_protocol_squashes_then_takes_the_centre(ramp_frames: torch.Tensor) -> None:
    transform = build_eval_transform("authors", crop_size=64, normalization="none")
    assert transform.resize == (73, 73) == default_resize("authors", 64)  # 64 * 8/7, square
    out = transform(ramp_frames)
    assert out.shape == (3, 4, 64, 64)
    # 96x192 -> 73x73 (aspect not kept), centre crop at (4, 4): the crop spans about 88% of the width.
    _check_crop(out, top=4, left=4, new_h=73, new_w=73)
    assert 255 * (out[0, :, :, -1].mean() - out[0, :, :, 0].mean()) > 0.8 * 255


def test_keep_aspect_test_protocol_scales_the_short_side(ramp_frames: torch.Tensor) -> None:
    transform = build_eval_transform("keep-aspect", crop_size=64, normalization="none")
    assert transform.resize == 73
    out = transform(ramp_frames)
    # 96x192 -> 73x146 (short side 73), centre crop at (4, 41): about 44% of the width.
    _check_crop(out, top=4, left=41, new_h=73, new_w=146)
    assert 255 * (out[0, :, :, -1].mean() - out[0, :, :, 0].mean()) < 0.5 * 255


def test_a_fixed_non_square_resize_and_its_text_form(ramp_frames: torch.Tensor) -> None:
    assert parse_resize("256") == 256
    assert parse_resize("340x256") == (256, 340)  # width x height -> (H, W)
    assert format_resize((256, 340)) == "340x256"
    for bad in ("", "0", "256x", "axb", "1x2x3"):
        with pytest.raises(ValueError):
            parse_resize(bad)
    transform = build_eval_transform("authors", crop_size=64, resize=(80, 100), normalization="none")
    _check_crop(transform(ramp_frames), top=8, left=18, new_h=80, new_w=100)
    assert describe_test_protocol("authors", crop_size=224, resize=(256, 256)) == (
        "authors (frames resized to 256x256, aspect not kept; centre crop 224x224)"
    )
    with pytest.raises(ValueError, match="short side"):
        build_eval_transform("keep-aspect", crop_size=64, resize=(80, 100))
    with pytest.raises(ValueError, match="unknown test protocol"):
        build_eval_transform("square", crop_size=64)


def test_random_crop_option_and_mean_std(ramp_frames: torch.Tensor) -> None:
    transform = build_eval_transform("authors", crop_size=64, random_crop=True, normalization="none")
    lefts = set()
    for seed in range(8):
        generator = torch.Generator().manual_seed(seed)
        top = int(torch.randint(73 - 64 + 1, (), generator=generator))
        left = int(torch.randint(73 - 64 + 1, (), generator=generator))
        out = transform(ramp_frames, generator=torch.Generator().manual_seed(seed))
        _check_crop(out, top=top, left=left, new_h=73, new_w=73)
        lefts.add(left)
    assert len(lefts) > 1
    with pytest.raises(ValueError):
        build_eval_transform("authors", crop_size=64, crops=3, random_crop=True)
    plain = build_eval_transform("authors", crop_size=64, normalization="none")(ramp_frames)
    shifted = build_eval_transform("authors", crop_size=64, mean=(10, 10, 10), std=(255, 255, 255))(ramp_frames)
    assert torch.allclose(shifted, plain - 10 / 255, atol=1e-5)


def test_authors_training_squashes_then_scales_the_short_side(ramp_frames: torch.Tensor) -> None:
    exact = TrainTransform(
        crop_size=64,
        short_side=(64, 64),
        aspect_ratio=(1, 1),
        square=True,
        flip=False,
        hls_jitter=None,
        normalization="none",
    )
    # The whole 96x192 frame squashed into 64x64: the crop is the frame.
    _check_crop(exact(ramp_frames, generator=torch.Generator().manual_seed(0)), top=0, left=0, new_h=64, new_w=64)


def _resized_shape(clip: torch.Tensor) -> tuple[float, float]:
    """The (height, width) the frame was resized to, from the ramps' slopes inside the crop."""
    red = clip[0].mean(0).double() * 255
    green = clip[1].mean(0).double() * 255
    crop = clip.shape[-1]
    dx = (red[:, -3].mean() - red[:, 2].mean()) / (crop - 5)  # 0-255 units per output pixel
    dy = (green[-3].mean() - green[2].mean()) / (crop - 5)
    return float(255 * HEIGHT / (HEIGHT - 1) / dy), float(255 * WIDTH / (WIDTH - 1) / dx)


@pytest.mark.parametrize(
    ("protocol", "ratio_range"),
    [("authors", (0.64, 1.5625)), ("keep-aspect", (2 * 0.8, 2 * 1.25))],
)
def test_training_protocols_aspect_ranges(
    ramp_frames: torch.Tensor, protocol: str, ratio_range: tuple[float, float]
) -> None:
    transform = build_train_transform(
        protocol, crop_size=32, short_side=(40, 48), flip=False, hls_jitter=None, normalization="none"
    )
    ratios = []
    for seed in range(24):
        height, width = _resized_shape(transform(ramp_frames, generator=torch.Generator().manual_seed(seed)))
        ratios.append(width / height)
        if protocol == "authors":  # the short side after the jitter is the drawn one
            assert 40 * 0.95 <= min(height, width) <= 48 * 1.05
    assert ratio_range[0] * 0.93 <= min(ratios) and max(ratios) <= ratio_range[1] * 1.07
    middle = (ratio_range[0] * ratio_range[1]) ** 0.5
    assert min(ratios) < middle < max(ratios)
    with pytest.raises(ValueError, match="unknown train protocol"):
        build_train_transform("bogus")


def test_authors_training_draws_the_aspect_as_their_random_scale(ramp_frames: torch.Tensor) -> None:
    transform = build_train_transform(
        "authors", crop_size=32, short_side=(40, 48), flip=False, hls_jitter=None, normalization="none"
    )
    assert transform.aspect_draw == "authors" and transform.square
    for seed in range(8):
        # Replay the draws: short side, then q uniform in [0.8, 1.25], then the inversion; w/h = q**2.
        generator = torch.Generator().manual_seed(seed)
        short = 40 + 8 * float(torch.rand((), generator=generator))
        q = 0.8 + (1.25 - 0.8) * float(torch.rand((), generator=generator))
        ratio = (1 / q if float(torch.rand((), generator=generator)) > 0.5 else q) ** 2
        height, width = _resized_shape(transform(ramp_frames, generator=torch.Generator().manual_seed(seed)))
        assert width / height == pytest.approx(ratio, rel=0.05)
        assert min(height, width) == pytest.approx(short, rel=0.05)
