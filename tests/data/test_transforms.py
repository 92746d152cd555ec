"""Transforms: same parameters for every frame of a clip, sizes, normalisations, crops, HLS jitter."""

from __future__ import annotations

import colorsys

import pytest
import torch

from mfnet.data.transforms import eval_transform, hls_shift, normalize, train_transform


def _clip(frames: int = 6, height: int = 90, width: int = 120) -> torch.Tensor:
    """The same random image repeated: any per-frame difference after a transform is a bug."""
    image = torch.randint(0, 256, (1, height, width, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    return image.expand(frames, -1, -1, -1).contiguous()


def test_train_transform_uses_the_same_parameters_for_all_frames() -> None:
    transform = train_transform(crop_size=64, short_side=(64, 96))
    for seed in range(10):
        out = transform(_clip(), generator=torch.Generator().manual_seed(seed))
        assert out.shape == (3, 6, 64, 64) and out.dtype == torch.float32
        assert torch.equal(out, out[:, :1].expand_as(out)), "frames of one clip were augmented differently"


def test_train_transform_is_random_across_clips_and_reproducible() -> None:
    transform = train_transform(crop_size=64, short_side=(64, 96))
    outs = [transform(_clip(), generator=torch.Generator().manual_seed(s)) for s in range(6)]
    assert len({round(o.sum().item(), 2) for o in outs}) == 6
    again = transform(_clip(), generator=torch.Generator().manual_seed(3))
    assert torch.equal(again, outs[3])


def test_train_transform_flip_and_crop_follow_the_content() -> None:
    # A left-dark / right-light image: a flipped clip has its light side on the left.
    clip = torch.zeros(4, 64, 128, 3, dtype=torch.uint8)
    clip[:, :, 64:] = 255
    transform = train_transform(
        crop_size=64, short_side=(64, 64), aspect_ratio=(1, 1), hls_jitter=None, normalization="none"
    )
    flips = 0
    for seed in range(20):
        out = transform(clip, generator=torch.Generator().manual_seed(seed))
        left, right = out[:, :, :, :8].mean().item(), out[:, :, :, -8:].mean().item()
        assert left != right or left in (0.0, 1.0)
        flips += left > right
    assert 3 <= flips <= 17


def test_normalisations() -> None:
    pixel = torch.tensor([124.0, 117.0, 104.0]).view(3, 1, 1, 1)
    assert torch.allclose(normalize(pixel, "mfnet"), torch.zeros(3, 1, 1, 1), atol=1e-6)
    assert normalize(pixel + 10, "mfnet")[0].item() == pytest.approx(10 * 0.0167)
    white = torch.full((3, 1, 1, 1), 255.0)
    expected = [(1 - m) / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), strict=True)]
    assert normalize(white, "imagenet").flatten().tolist() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError):
        train_transform(normalization="bogus")


def test_eval_transform_short_side_and_three_crops() -> None:
    clip = torch.zeros(2, 48, 144, 3, dtype=torch.uint8)  # (T, H, W, C)
    clip[:, :, :48] = 30  # left third dark, middle medium, right third light
    clip[:, :, 48:96] = 120
    clip[:, :, 96:] = 240
    centre = eval_transform(resize=32, crop_size=32, normalization="none")
    out = centre(clip)
    assert out.shape == (3, 2, 32, 32)
    assert out.mean().item() * 255 == pytest.approx(120, abs=3)
    three = eval_transform(resize=32, crop_size=32, crops=3, normalization="none")
    assert three.num_views == 3
    means = [three(clip, view=v).mean().item() * 255 for v in range(3)]
    assert means == pytest.approx([30, 120, 240], abs=3)
    fixed = eval_transform(resize=(40, 40), crop_size=32)
    assert fixed(clip).shape == (3, 2, 32, 32)


def test_hls_shift_matches_colorsys_and_is_identity_at_zero() -> None:
    rgb = torch.randint(0, 256, (2, 3, 4, 5), generator=torch.Generator().manual_seed(0)).float()
    assert torch.allclose(hls_shift(rgb, 0, 0, 0), rgb, atol=1e-3)
    shifted = hls_shift(rgb, 10, -20, 15)
    for y, x in [(0, 0), (1, 3), (3, 4)]:
        r, g, b = (rgb[1, :, y, x] / 255).tolist()
        h, light, s = colorsys.rgb_to_hls(r, g, b)
        h = min(max(h * 180 + 10, 0), 180) / 180 % 1.0
        light = min(max(light * 255 - 20, 0), 255) / 255
        s = min(max(s * 255 + 15, 0), 255) / 255
        expected = [c * 255 for c in colorsys.hls_to_rgb(h, light, s)]
        assert shifted[1, :, y, x].tolist() == pytest.approx(expected, abs=1e-2)
