"""Clip transforms: uint8 frames ``(T, H, W, C)`` in, normalised float ``(C, T, H, W)`` out.

Every random parameter (scale, aspect ratio, crop position, flip, colour offsets) is drawn once per clip from
the ``torch.Generator`` passed in, so all frames of a clip get the same treatment and a dataset can make the
result reproducible. Resizing, cropping and flipping use ``torchvision.transforms.v2.functional`` on uint8
frames; the HLS colour jitter of the authors' code is written here (torchvision has none).

Normalisations (on 0-255 values): ``"mfnet"`` is the authors' ``(x - [124, 117, 104]) * 0.0167``;
``"imagenet"`` is ``(x / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]``; ``"none"`` gives ``x / 255``.

Geometry comes in named protocols, one for testing and one for training, that recipes and checkpoints name:

* test ``"authors"``: every frame is resized to a fixed ``(H, W)`` (default 256x256 for 224 crops), the aspect
  ratio not kept, then the centre crop (or a random crop, as the authors' released test script draws) is taken:
  what the paper and the authors' test code do, and what the released checkpoints were trained for;
* test ``"keep-aspect"``: the short side is resized to ``resize`` (256) keeping the aspect ratio, then the centre
  crop (on a 16:9 frame it keeps about half the width);
* train ``"authors"``: each frame is squashed to a square, the width/height ratio jittered in [0.64, 1.56]
  (the authors' ``aspect_ratio=[0.8, 1.25]`` applied to the width and, inverted, to the height) and the short side
  drawn in [224, 288], then a random 224 crop;
* train ``"keep-aspect"``: the video's own aspect ratio jittered in [0.8, 1.25], short side in [224, 288].

:func:`build_eval_transform` and :func:`build_train_transform` turn a protocol name and sizes into a transform.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torchvision.transforms.v2 import functional as F

NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    # (mean, std) on 0-255 values.
    "mfnet": ((124.0, 117.0, 104.0), (1 / 0.0167,) * 3),
    "imagenet": ((0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255)),
    "none": ((0.0, 0.0, 0.0), (255.0, 255.0, 255.0)),
}


TEST_PROTOCOLS: dict[str, str] = {
    "authors": "every frame resized to a fixed size, aspect ratio not kept (the paper's and authors' 256x256)",
    "keep-aspect": "short side resized, aspect ratio kept",
}
TRAIN_PROTOCOLS: dict[str, str] = {
    "authors": "frames squashed to a square, w/h jittered in [0.64, 1.56], short side drawn, random crop",
    "keep-aspect": "the video's aspect ratio kept, w/h jittered in [0.8, 1.25], short side drawn, random crop",
}
# Width/height jitter ranges of the training protocols (log-uniform within them).
TRAIN_ASPECT_RATIOS: dict[str, tuple[float, float]] = {"authors": (0.64, 1.5625), "keep-aspect": (0.8, 1.25)}

Resize = int | tuple[int, int]


def check_protocol(protocol: str, *, kind: Literal["test", "train"] = "test") -> str:
    """Returns ``protocol`` if it names a test (or train) protocol; else raises ``ValueError`` naming the choices."""
    known = TEST_PROTOCOLS if kind == "test" else TRAIN_PROTOCOLS
    if protocol not in known:
        raise ValueError(f"unknown {kind} protocol {protocol!r}: use one of {', '.join(known)}")
    return protocol


def default_resize(protocol: str, crop_size: int) -> Resize:
    """The resize that goes with a crop: ``crop * 8/7`` (256 for 224), square for ``"authors"``."""
    side = round(crop_size * 8 / 7)
    return (side, side) if check_protocol(protocol) == "authors" else side


def protocol_of_resize(resize: Resize | Sequence[int]) -> str:
    """The test protocol a resize implies: a fixed ``(H, W)`` is the authors', a short side keeps the aspect."""
    return "keep-aspect" if isinstance(resize, int) else "authors"


def parse_resize(text: str) -> Resize:
    """``"256"`` -> ``256`` (a short side); ``"340x256"`` (width x height) -> ``(256, 340)`` as ``(H, W)``.

    Raises:
        ValueError: Text that is neither a positive integer nor ``WxH``.
    """
    parts = text.lower().replace(" ", "").split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or min(sizes) <= 0:
        raise ValueError(f"invalid resize {text!r}: write a short side (256) or width x height (256x256)")
    return sizes[0] if len(sizes) == 1 else (sizes[1], sizes[0])


def format_resize(resize: Resize | Sequence[int]) -> str:
    """``256`` -> ``"256"``, ``(256, 340)`` -> ``"340x256"`` (width x height, as ``--resize`` takes it)."""
    return str(resize) if isinstance(resize, int) else f"{resize[1]}x{resize[0]}"


def describe_test_protocol(protocol: str, *, crop_size: int, resize: Resize | Sequence[int], crops: int = 1) -> str:
    """One line for people: ``authors (frames resized to 256x256, aspect not kept; centre crop 224x224)``."""
    where = "centre crop" if crops == 1 else "3 crops"
    if protocol == "authors":
        height, width = (resize, resize) if isinstance(resize, int) else resize
        how = f"frames resized to {width}x{height}, aspect not kept"
    else:
        how = f"short side resized to {resize}, aspect kept"
    return f"{protocol} ({how}; {where} {crop_size}x{crop_size})"


def normalize(clip: torch.Tensor, normalization: str | tuple[Sequence[float], Sequence[float]]) -> torch.Tensor:
    """Normalises a float clip ``(C, T, H, W)`` of 0-255 values with a named or ``(mean, std)`` normalisation."""
    mean, std = NORMALIZATIONS[normalization] if isinstance(normalization, str) else normalization
    mean_t = torch.tensor(mean, dtype=clip.dtype).view(-1, 1, 1, 1)
    std_t = torch.tensor(std, dtype=clip.dtype).view(-1, 1, 1, 1)
    return (clip - mean_t) / std_t


def _check_normalization(normalization: str | tuple) -> None:
    if isinstance(normalization, str) and normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}: use one of {sorted(NORMALIZATIONS)}")


def _to_tchw(frames: torch.Tensor) -> torch.Tensor:
    if frames.dim() != 4 or frames.shape[-1] not in (1, 3):
        raise ValueError(f"frames must be (T, H, W, C), got {tuple(frames.shape)}")
    return frames.permute(0, 3, 1, 2)  # (T, H, W, C) -> (T, C, H, W), a view


def _finish(clip_tchw: torch.Tensor, normalization: str | tuple) -> torch.Tensor:
    """(T, C, H, W) uint8 or float 0-255 -> normalised contiguous float (C, T, H, W), in three passes."""
    mean, std = NORMALIZATIONS[normalization] if isinstance(normalization, str) else normalization
    frames, channels, height, width = clip_tchw.shape
    out = torch.empty((channels, frames, height, width), dtype=torch.float32)
    out.copy_(clip_tchw.permute(1, 0, 2, 3))  # (T, C, H, W) -> (C, T, H, W)
    out.sub_(torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1, 1))
    return out.div_(torch.tensor(std, dtype=torch.float32).view(-1, 1, 1, 1))


def _resize(clip: torch.Tensor, size: list[int]) -> torch.Tensor:
    """Antialiased bilinear resize of ``(T, C, H, W)``; a no-op when the size is already right."""
    return clip if list(clip.shape[-2:]) == size else F.resize(clip, size, antialias=True)


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


class TrainTransform:
    """The paper's training augmentation, identical for all frames of a clip.

    1. random short-side scale ``s`` in ``short_side`` with aspect-ratio jitter ``r`` in ``aspect_ratio``
       (log-uniform; the width is scaled by ``sqrt(r)`` and the height by ``1/sqrt(r)``). With ``square=True``
       (the authors' protocol) the frame is first taken as a square, so its width/height becomes ``r``, and the
       short side after the jitter is ``s``; ``aspect_draw="authors"`` draws ``r`` as their ``RandomScale``
       does: ``q`` uniform in ``[sqrt(low), sqrt(high)]``, inverted with probability 0.5, ``r = q**2``;
    2. random ``crop_size`` square crop;  3. horizontal flip with probability 0.5;
    4. HLS colour jitter: offsets drawn uniformly in ``±hls_jitter`` (OpenCV units: hue 0-180, lightness and
       saturation 0-255), added and clipped, as in the authors' code;  5. normalisation.

    Defaults follow the paper (224 crops of frames scaled to 224-288); the demo uses e.g. ``crop_size=64,
    short_side=(64, 80)``.
    """

    num_views = 1

    def __init__(
        self,
        *,
        crop_size: int = 224,
        short_side: tuple[int, int] = (224, 288),
        aspect_ratio: tuple[float, float] = (0.8, 1.25),
        square: bool = False,
        aspect_draw: Literal["log-uniform", "authors"] = "log-uniform",
        flip: bool = True,
        hls_jitter: tuple[float, float, float] | None = (15, 35, 25),
        normalization: str | tuple = "mfnet",
    ) -> None:
        _check_normalization(normalization)
        if short_side[0] > short_side[1] or aspect_ratio[0] > aspect_ratio[1]:
            raise ValueError("short_side and aspect_ratio must be (low, high) ranges")
        self.crop_size = crop_size
        self.short_side = short_side
        self.aspect_ratio = aspect_ratio
        self.square = square
        if aspect_draw not in ("log-uniform", "authors"):
            raise ValueError(f"unknown aspect_draw {aspect_draw!r}: use log-uniform or authors")
        self.aspect_draw = aspect_draw
        self.flip = flip
        self.hls_jitter = hls_jitter
        self.normalization = normalization

    def __call__(
        self, frames: torch.Tensor, *, generator: torch.Generator | None = None, view: int = 0
    ) -> torch.Tensor:
        """Augments uint8 frames ``(T, H, W, C)`` into a normalised float clip ``(C, T, size, size)``."""
        clip = _to_tchw(frames)
        height, width = clip.shape[-2:]
        short = _uniform(*self.short_side, generator)
        if self.aspect_draw == "authors":
            q = _uniform(math.sqrt(self.aspect_ratio[0]), math.sqrt(self.aspect_ratio[1]), generator)
            ratio = (1 / q if float(torch.rand((), generator=generator)) > 0.5 else q) ** 2
        else:
            ratio = math.exp(_uniform(math.log(self.aspect_ratio[0]), math.log(self.aspect_ratio[1]), generator))
        if self.square:  # the authors': a square, w/h = ratio, then the short side scaled to `short`
            new_h = max(self.crop_size, round(short * max(1.0, 1.0 / ratio)))
            new_w = max(self.crop_size, round(short * max(1.0, ratio)))
        else:
            scale = short / min(height, width)
            new_h = max(self.crop_size, round(height * scale / math.sqrt(ratio)))
            new_w = max(self.crop_size, round(width * scale * math.sqrt(ratio)))
        top = int(torch.randint(new_h - self.crop_size + 1, (), generator=generator))
        left = int(torch.randint(new_w - self.crop_size + 1, (), generator=generator))
        flip = self.flip and bool(torch.rand((), generator=generator) < 0.5)
        offsets = [_uniform(-v, v, generator) for v in self.hls_jitter] if self.hls_jitter else None
        clip = _resize(clip, [new_h, new_w])  # uint8 (T, C, H, W)
        clip = clip[..., top : top + self.crop_size, left : left + self.crop_size]
        if flip:
            clip = F.horizontal_flip(clip)
        if offsets is not None:
            clip = hls_shift(clip.float(), *offsets)
        return _finish(clip, self.normalization)

    def __repr__(self) -> str:
        return (
            f"TrainTransform(crop_size={self.crop_size}, short_side={self.short_side}, "
            f"aspect_ratio={self.aspect_ratio}, square={self.square}, aspect_draw={self.aspect_draw!r}, "
            f"flip={self.flip}, hls_jitter={self.hls_jitter}, "
            f"normalization={self.normalization!r})"
        )


class EvalTransform:
    """Evaluation: resize, then one centre crop or three crops along the longer side (or one random crop).

    Args:
        resize: ``"keep-aspect"``: the short side after resizing (256); ``"authors"``: the fixed size every frame
            is resized to, ``(height, width)``, or one number for a square (256 -> 256x256).
        crop_size: the square crop (224).
        crops: 1 (centre) or 3 (start, centre, end of the longer side); a dataset asks for each with ``view``.
        normalization: see the module docstring.
        protocol: ``"authors"`` or ``"keep-aspect"`` (see the module docstring); by default the one ``resize``
            implies: a ``(height, width)`` pair is the authors', a number keeps the aspect ratio.
        random_crop: Take one crop at a position drawn from the generator instead of the centre, as the authors'
            released test script does (``crops`` must be 1).
    """

    def __init__(
        self,
        *,
        resize: Resize | Sequence[int] = 256,
        crop_size: int = 224,
        crops: int = 1,
        normalization: str | tuple = "mfnet",
        protocol: str | None = None,
        random_crop: bool = False,
    ) -> None:
        _check_normalization(normalization)
        if crops not in (1, 3):
            raise ValueError("crops must be 1 or 3")
        if random_crop and crops != 1:
            raise ValueError("a random crop is one crop: use crops=1 with random_crop")
        resize = resize if isinstance(resize, int) else (int(resize[0]), int(resize[1]))
        protocol = check_protocol(protocol or protocol_of_resize(resize))
        if protocol == "keep-aspect" and not isinstance(resize, int):
            raise ValueError(
                f"the keep-aspect protocol resizes the short side: give one number, not {format_resize(resize)}"
            )
        if protocol == "authors" and isinstance(resize, int):
            resize = (resize, resize)
        self.protocol = protocol
        self.resize = resize
        self.crop_size = crop_size
        self.num_views = crops
        self.normalization = normalization
        self.random_crop = random_crop

    def __call__(
        self, frames: torch.Tensor, *, generator: torch.Generator | None = None, view: int = 0
    ) -> torch.Tensor:
        """Turns uint8 frames ``(T, H, W, C)`` into crop ``view``, a normalised float clip ``(C, T, size, size)``."""
        clip = _to_tchw(frames)
        height, width = clip.shape[-2:]
        if isinstance(self.resize, int):
            scale = self.resize / min(height, width)
            size = [max(self.crop_size, round(height * scale)), max(self.crop_size, round(width * scale))]
        else:
            size = [max(self.crop_size, self.resize[0]), max(self.crop_size, self.resize[1])]
        clip = _resize(clip, size)
        new_h, new_w = size
        top, left = (new_h - self.crop_size) // 2, (new_w - self.crop_size) // 2
        if self.random_crop:
            top = int(torch.randint(new_h - self.crop_size + 1, (), generator=generator))
            left = int(torch.randint(new_w - self.crop_size + 1, (), generator=generator))
        if self.num_views == 3:
            position = [0, None, -1][view]
            if new_w >= new_h and position is not None:
                left = 0 if position == 0 else new_w - self.crop_size
            elif position is not None:
                top = 0 if position == 0 else new_h - self.crop_size
        clip = clip[..., top : top + self.crop_size, left : left + self.crop_size]
        return _finish(clip, self.normalization)

    def __repr__(self) -> str:
        return (
            f"EvalTransform(protocol={self.protocol!r}, resize={self.resize}, crop_size={self.crop_size}, "
            f"crops={self.num_views}, random_crop={self.random_crop}, normalization={self.normalization!r})"
        )

    def describe(self) -> str:
        """One line for people, see :func:`describe_test_protocol`."""
        return describe_test_protocol(self.protocol, crop_size=self.crop_size, resize=self.resize, crops=self.num_views)


def train_transform(**kwargs: object) -> TrainTransform:
    """The paper's training augmentation; keyword arguments as ``TrainTransform``."""
    return TrainTransform(**kwargs)  # type: ignore[arg-type]


def eval_transform(**kwargs: object) -> EvalTransform:
    """Evaluation resize and crop(s); keyword arguments as ``EvalTransform``."""
    return EvalTransform(**kwargs)  # type: ignore[arg-type]


def build_eval_transform(
    protocol: str,
    *,
    crop_size: int = 224,
    resize: Resize | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    normalization: str | tuple = "mfnet",
    crops: int = 1,
    random_crop: bool = False,
) -> EvalTransform:
    """The evaluation transform of a named test protocol: the one place recipes, checkpoints and the CLI meet.

    Args:
        protocol: ``"authors"`` or ``"keep-aspect"``.
        crop_size: The square crop.
        resize: A short side (``"keep-aspect"``), or ``(height, width)`` / one number for a square
            (``"authors"``); default: ``crop_size * 8/7``, square for ``"authors"``.
        mean: Per-channel mean on 0-255 values; with ``std`` it replaces ``normalization``.
        std: Per-channel standard deviation on 0-255 values.
        normalization: A named normalisation (see the module docstring) when no ``mean``/``std`` is given.
        crops: 1 (centre) or 3.
        random_crop: One crop at a random position (the authors' released test script).

    Raises:
        ValueError: An unknown protocol, or a ``(height, width)`` resize with ``"keep-aspect"``.
    """
    check_protocol(protocol)
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither")
    norm = (tuple(mean), tuple(std)) if mean is not None and std is not None else normalization
    return EvalTransform(
        resize=default_resize(protocol, crop_size) if resize is None else resize,
        crop_size=crop_size,
        crops=crops,
        normalization=norm,
        protocol=protocol,
        random_crop=random_crop,
    )


def build_train_transform(
    protocol: str,
    *,
    crop_size: int = 224,
    short_side: tuple[int, int] = (224, 288),
    flip: bool = True,
    hls_jitter: tuple[float, float, float] | None = (15, 35, 25),
    normalization: str | tuple = "mfnet",
) -> TrainTransform:
    """The training augmentation of a named protocol (``"authors"`` or ``"keep-aspect"``), see the module docstring."""
    check_protocol(protocol, kind="train")
    return TrainTransform(
        crop_size=crop_size,
        short_side=short_side,
        aspect_ratio=TRAIN_ASPECT_RATIOS[protocol],
        square=protocol == "authors",
        aspect_draw="authors" if protocol == "authors" else "log-uniform",
        flip=flip,
        hls_jitter=hls_jitter,
        normalization=normalization,
    )


def hls_shift(clip: torch.Tensor, hue: float, lightness: float, saturation: float) -> torch.Tensor:
    """Shifts hue, lightness and saturation of float RGB frames ``(..., 3, H, W)`` with 0-255 values.

    Offsets are in OpenCV's 8-bit HLS units (hue 0-180, lightness and saturation 0-255); shifted values are
    clipped to their range (hue too, as the authors' code does). Returns float RGB in 0-255. Frames are processed
    a few at a time so the intermediate maps stay in the CPU cache (twice as fast as the whole clip at once).
    """
    height, width = clip.shape[-2:]
    frames = clip.reshape(-1, 3, height, width)
    out = torch.empty_like(frames)
    step = max(1, (1 << 18) // max(1, height * width))
    for start in range(0, frames.shape[0], step):
        out[start : start + step] = _hls_shift_frames(frames[start : start + step], hue, lightness, saturation)
    return out.reshape(clip.shape)


def _hls_shift_frames(clip: torch.Tensor, hue: float, lightness: float, saturation: float) -> torch.Tensor:
    rgb = clip * (1 / 255.0)
    r, g, b = rgb.unbind(-3)
    vmax = torch.maximum(torch.maximum(r, g), b)
    vmin = torch.minimum(torch.minimum(r, g), b)
    delta = vmax - vmin
    total = vmax + vmin
    light = total * 0.5
    sat = delta / torch.where(light < 0.5, total, 2 - total).clamp_(min=1e-12)  # 0 for greys
    inv = 60.0 / delta.clamp(min=1e-12)
    hue_deg = torch.where(vmax == r, (g - b) * inv, torch.where(vmax == g, (b - r) * inv + 120, (r - g) * inv + 240))
    # Shift in OpenCV units and clip (hue to [0, 180] as the authors do), then hue in units of 30 degrees.
    hue_30 = (hue_deg.remainder_(360).mul_(0.5).add_(hue)).clamp_(0, 180).mul_(1 / 15.0)
    light = light.add_(lightness / 255).clamp_(0, 1)
    sat = sat.add_(saturation / 255).clamp_(0, 1)
    chroma = sat.mul_(torch.minimum(light, 1 - light))
    out = torch.empty_like(rgb)
    for channel, n in enumerate((0.0, 8.0, 4.0)):  # the closed form of HLS -> RGB, channel by channel
        k = (hue_30 + n).remainder_(12)
        torch.minimum(k - 3, 9 - k, out=out.select(-3, channel))
    out.clamp_(-1, 1).mul_(chroma.unsqueeze(-3)).neg_().add_(light.unsqueeze(-3))
    return out.mul_(255)
