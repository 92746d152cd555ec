"""Writing small videos with PyAV, and frame numbers drawn into pixels so tests can check decoded indices.

``write_video`` turns uint8 frames ``(T, H, W, C)`` (RGB) into a real video file whose container follows the
suffix (``.mp4``, ``.avi``, ``.mkv``, ``.mov``, ``.webm``). ``stamp_frame_number`` draws an integer as a grid of
large black/white blocks that survive lossy compression, and ``read_frame_number`` reads it back from a
decoded frame, so a test can tell exactly which source frame a reader returned.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

# Default encoder per container suffix when ``codec`` is not given.
_DEFAULT_CODEC = {".mp4": "libx264", ".mkv": "libx264", ".mov": "libx264", ".avi": "mpeg4", ".webm": "libvpx-vp9"}
# Friendly names for FFmpeg encoders.
_CODEC_ALIASES = {"h264": "libx264", "x264": "libx264", "vp9": "libvpx-vp9", "vp8": "libvpx", "xvid": "mpeg4"}
# Pixel formats that each encoder accepts; everything else uses yuv420p.
_PIX_FMT = {"mjpeg": "yuvj420p", "cinepak": "rgb24"}

# Frame-number stamp: a BITS_ROWS x BITS_COLS grid of blocks covering the whole frame, most significant first.
BITS_ROWS = 4
BITS_COLS = 4
_DARK, _LIGHT = 24, 232
_SAMPLE_DTYPES = {"u8": np.uint8, "s16": np.int16, "s32": np.int32, "flt": np.float32, "dbl": np.float64}


def write_video(
    path: str | Path,
    frames: np.ndarray | torch.Tensor,
    *,
    fps: float = 25,
    codec: str | None = None,
    gop_size: int | None = 12,
    quality: int = 18,
    audio: bool = False,
    timestamps: list[float] | None = None,
    b_frames: int | None = None,
) -> Path:
    """Writes RGB frames to a video file with PyAV.

    Args:
        path: the output file; its suffix chooses the container (mp4, avi, mkv, mov, webm).
        frames: uint8 frames ``(T, H, W, 3)`` in RGB order. ``H`` and ``W`` should be even for 4:2:0 codecs.
        fps: the nominal frame rate.
        codec: an FFmpeg encoder name (``libx264``/``h264``, ``mpeg4``, ``msmpeg4v2``, ``mjpeg``, ``libvpx-vp9``/
            ``vp9``, ``cinepak``); ``None`` picks one by suffix (H.264 for mp4/mkv/mov, MPEG-4 Part 2 for avi,
            VP9 for webm).
        gop_size: the distance between key frames (small values make seeking tests meaningful); ``None`` keeps
            the encoder's default.
        quality: the constant-rate factor for libx264/VP9 and the quantiser scale for the MPEG-4 family
            (lower is better); frame-number stamps survive the default.
        audio: also write a quiet AAC (mp4/mkv/mov), MP3 (avi) or Opus (webm) audio track the length of the video.
        timestamps: optional presentation times in seconds, one per frame, for variable-frame-rate files
            (mkv/mp4); by default frame ``i`` is shown at ``i / fps``.
        b_frames: the most consecutive B-frames (frames decoded after a later frame, so decode order differs
            from display order); ``None`` keeps the encoder's default, 0 turns them off.

    Returns:
        The path written.
    """
    path = Path(path)
    array = frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {array.dtype} {tuple(array.shape)}")
    if timestamps is not None and len(timestamps) != len(array):
        raise ValueError("timestamps must give one time per frame")
    suffix = path.suffix.lower()
    codec = _CODEC_ALIASES.get(codec, codec) if codec else _DEFAULT_CODEC.get(suffix, "libx264")
    rate = Fraction(fps).limit_denominator(1001)
    height, width = array.shape[1:3]
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = _PIX_FMT.get(codec, "yuv420p")
        if gop_size is not None:
            stream.codec_context.gop_size = gop_size
        stream.options = _quality_options(codec, quality)
        if b_frames is not None:
            stream.codec_context.max_b_frames = b_frames
            if codec == "libx264":
                stream.options = {**stream.options, "bframes": str(b_frames)}
        if timestamps is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        audio_stream = _add_audio(container, suffix) if audio else None
        for index, image in enumerate(array):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            if timestamps is not None:
                frame.pts = round(timestamps[index] * 1000)
                frame.time_base = Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        if audio_stream is not None:
            duration = (timestamps[-1] + 1 / fps) if timestamps else len(array) / fps
            _write_audio(container, audio_stream, duration)
    return path


def _quality_options(codec: str, quality: int) -> dict[str, str]:
    if codec == "libx264":
        return {"crf": str(quality), "preset": "veryfast"}
    if codec.startswith("libvpx"):
        return {"crf": str(quality * 2), "b": "0", "deadline": "realtime", "cpu-used": "8"}
    if codec in ("mpeg4", "msmpeg4v2", "msmpeg4", "mjpeg"):
        return {"qscale": str(max(1, quality // 6)), "flags": "+qscale"}
    return {}


def _add_audio(container: av.container.OutputContainer, suffix: str) -> av.audio.stream.AudioStream:
    codec = {".avi": "mp3", ".webm": "libopus"}.get(suffix, "aac")
    sample_rate = 48000 if codec == "libopus" else 44100
    stream = container.add_stream(codec, rate=sample_rate)
    stream.layout = "mono"
    return stream


def _write_audio(container: av.container.OutputContainer, stream: av.audio.stream.AudioStream, seconds: float) -> None:
    rate = stream.codec_context.sample_rate
    samples = max(1, round(seconds * rate))
    chunk = 1024
    fmt = stream.codec_context.format.name
    for start in range(0, samples, chunk):
        count = min(chunk, samples - start)
        t = (np.arange(start, start + count) / rate).astype(np.float32)
        wave = (0.05 * np.sin(2 * math.pi * 440 * t)).astype(np.float32)
        dtype = _SAMPLE_DTYPES[fmt.rstrip("p")]
        scale = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1.0
        data = (wave * scale).astype(dtype)[None]
        frame = av.AudioFrame.from_ndarray(data, format=fmt, layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def stamp_frame_number(frame: np.ndarray, number: int) -> np.ndarray:
    """Draws ``number`` into a frame as a grid of big black/white blocks (in place) and returns the frame.

    Args:
        frame: uint8 ``(H, W, 3)``; the whole frame is covered by ``BITS_ROWS x BITS_COLS`` blocks, so the number
            survives heavy compression and chroma subsampling. At least 16x16 pixels.
        number: ``0 <= number < 2 ** (BITS_ROWS * BITS_COLS)``.
    """
    bits = BITS_ROWS * BITS_COLS
    if not 0 <= number < 2**bits:
        raise ValueError(f"frame number {number} does not fit in {bits} bits")
    height, width = frame.shape[:2]
    for bit in range(bits):
        row, col = divmod(bit, BITS_COLS)
        y0, y1 = row * height // BITS_ROWS, (row + 1) * height // BITS_ROWS
        x0, x1 = col * width // BITS_COLS, (col + 1) * width // BITS_COLS
        on = (number >> (bits - 1 - bit)) & 1
        frame[y0:y1, x0:x1] = _LIGHT if on else _DARK
    return frame


def read_frame_number(frame: np.ndarray | torch.Tensor) -> int:
    """Reads a number drawn by ``stamp_frame_number`` from a decoded frame.

    Args:
        frame: ``(H, W, C)`` (uint8 or float in 0-255) or ``(C, H, W)`` when ``C`` is 1 or 3 and ``W`` is not.
            Only the centre half of each block is looked at, so edges blurred by the codec do not matter.
    """
    array = frame.detach().cpu().float().numpy() if isinstance(frame, torch.Tensor) else np.asarray(frame, np.float32)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)
    gray = array.mean(axis=-1) if array.ndim == 3 else array
    height, width = gray.shape
    bits = BITS_ROWS * BITS_COLS
    number = 0
    for bit in range(bits):
        row, col = divmod(bit, BITS_COLS)
        y0, y1 = row * height // BITS_ROWS, (row + 1) * height // BITS_ROWS
        x0, x1 = col * width // BITS_COLS, (col + 1) * width // BITS_COLS
        dy, dx = (y1 - y0) // 4, (x1 - x0) // 4
        value = gray[y0 + dy : y1 - dy, x0 + dx : x1 - dx].mean()
        number = (number << 1) | int(value > (_DARK + _LIGHT) / 2)
    return number


def numbered_frames(num_frames: int, height: int = 48, width: int = 64, *, start: int = 0) -> np.ndarray:
    """Returns uint8 RGB frames ``(T, H, W, 3)`` where frame ``i`` shows the number ``start + i``."""
    frames = np.zeros((num_frames, height, width, 3), dtype=np.uint8)
    for index in range(num_frames):
        stamp_frame_number(frames[index], start + index)
    return frames
