"""Video readers: exact frames by index from a video file (PyAV) or a folder of extracted frames.

A reader knows how many frames a video really has and returns the frames asked for as a uint8 tensor
``(T, H, W, C)`` in RGB order, in the order asked (indices may repeat). ``open_video`` picks the reader.

The PyAV reader never trusts the container header. Frame ``i`` is always the ``i``-th frame a sequential
decode from the start yields (the decoder's output order), whatever the container and codec, and however the
frames are reached. To seek, the reader needs every frame's presentation time in that order. For most files the
demuxed packets give it (no decoding, a few milliseconds for a typical clip): sorted packet times are the output
order. AVI carries no presentation times, and MPEG-4 Part 2 AVIs with packed B-frames (XVID/DivX, the format of
UCF-101 and HMDB51) yield frames whose times are out of order, so for AVI files, files without usable packet
times, and any file whose decoded times contradict its packets, the reader decodes the video once without colour
conversion and records the times in output order. A read then seeks to the key frame at or before the first
wanted frame and decodes forward only as far as the last wanted frame, seeking again across long gaps; if the
frames after a seek do not continue the recorded order, it decodes from the start instead. When fewer frames
decode than packets exist (a truncated file, a broken tail), the reader lowers ``num_frames`` to what really
decodes and raises ``VideoError`` so the caller can sample again; frames that fail to decode in the middle of a
video are replaced by the closest earlier frame that decoded.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import av
import numpy as np
import torch
from PIL import Image

from mfnet.errors import VideoError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ogv")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# Decoding through this many frames is cheaper than seeking back to a key frame (empirical, small GOPs).
_SEEK_GAP_FRAMES = 8


class VideoReader(Protocol):
    """What every reader offers."""

    path: Path

    @property
    def num_frames(self) -> int:
        """Frames that really decode (as far as the reader knows so far)."""
        ...

    @property
    def fps(self) -> float:
        """Nominal frames per second."""
        ...

    def read(self, indices: list[int] | tuple[int, ...] | np.ndarray) -> torch.Tensor:
        """Returns uint8 RGB frames ``(T, H, W, 3)`` for ``indices`` (0-based, any order, repeats allowed)."""
        ...

    def close(self) -> None:
        """Releases the file."""
        ...


def open_video(
    path: str | Path, *, num_threads: int = 1, fps: float | None = None, max_short_side: int | None = None
) -> VideoReader:
    """Opens a video file with PyAV, or a folder of frames (``img_00001.jpg``, ...) with ``FrameFolderReader``.

    Args:
        path: a video file or a folder of image files.
        num_threads: decoder threads per reader (1 suits DataLoader workers; 0 lets FFmpeg choose).
        fps: the frame rate of a frame folder (ignored for video files, which carry their own).
        max_short_side: video files whose short side is larger are scaled down to it (area filter) while
            their frames are converted to RGB, which is cheaper than resizing full frames later; e.g. 320 for
            training at 224 from 720p sources. ``None`` keeps the decoded size.

    Raises:
        VideoError: the path does not exist, is not a video, or has no video stream.
    """
    path = Path(path)
    if path.is_dir():
        return FrameFolderReader(path, fps=fps or 25.0)
    if not path.exists():
        raise VideoError(f"video {path} does not exist: check the dataset root and the annotation paths")
    if not path.is_file():
        raise VideoError(f"{path} is not a regular file (a FIFO, socket or device): give a video file")
    return PyAVReader(path, num_threads=num_threads, max_short_side=max_short_side)


class PyAVReader:
    """Reads frames of one video file with PyAV, seeking to key frames.

    Keep one reader per process (it holds an open file); use it as a context manager or call ``close``.
    """

    def __init__(self, path: str | Path, *, num_threads: int = 1, max_short_side: int | None = None) -> None:
        self.path = Path(path)
        self._num_threads = num_threads
        self._open()
        self._rgb_options = _rgb_options(self._stream.codec_context, max_short_side)
        self._pts: list[int] | None = None  # presentation times of the frames, in output order
        self._index_of: dict[int, int] = {}  # frame index by presentation time
        self._key_positions: list[int] = []  # frame indices of key frames, sorted
        self._decode_order = False  # whether ``_pts`` was recorded by decoding (else it comes from the packets)
        self._key_set: frozenset[int] = frozenset()
        self._seekable = True  # cleared when frames after a seek contradict the table
        self._decodable: int | None = None  # frames that really decode, once a read hit the end

    def _open(self) -> None:
        try:
            self._container = av.open(str(self.path), metadata_errors="ignore")
        except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
            raise VideoError(f"cannot open {self.path} as a video ({_reason(err)}): re-download or remove it") from None
        if not self._container.streams.video:
            self._container.close()
            raise VideoError(f"{self.path} has no video stream: remove it from the dataset")
        self._stream = self._container.streams.video[0]
        # One decoder thread by default: FFmpeg's own threads would compete with DataLoader workers, and a
        # decoder with threads that is inherited by a forked worker can deadlock when it is freed there.
        self._stream.thread_type = "AUTO" if self._num_threads != 1 else "SLICE"
        self._stream.codec_context.thread_count = self._num_threads

    def _rewind(self) -> None:
        """Back to the first packet: a seek to the start, or reopening the file when the container cannot seek."""
        try:
            self._container.seek(0, backward=True, any_frame=False)
        except av.FFmpegError:
            self._container.close()
            self._open()

    def __enter__(self) -> PyAVReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the file."""
        self._container.close()

    @property
    def header_frames(self) -> int:
        """The frame count the container header claims (0 when it says nothing); not to be trusted."""
        return int(self._stream.frames or 0)

    @property
    def fps(self) -> float:
        """Nominal frame rate from the stream (average, else guessed), else from the packet times."""
        rate = self._stream.average_rate or self._stream.guessed_rate or self._stream.base_rate
        if rate:
            return float(rate)
        pts = self._frame_pts()
        if len(pts) > 1 and self._stream.time_base:
            return float((len(pts) - 1) / ((pts[-1] - pts[0]) * self._stream.time_base))
        return 25.0

    @property
    def num_frames(self) -> int:
        """Frames that decode: counted from the packets, lowered if a read found the file shorter."""
        count = len(self._frame_pts())
        if not count:  # no packet timing: the count comes from decoding
            return self._decodable or 0
        return count if self._decodable is None else min(count, self._decodable)

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the frames."""
        return self._stream.codec_context.height, self._stream.codec_context.width

    def _frame_pts(self) -> list[int]:
        if self._pts is None:
            self._scan_packets()
        assert self._pts is not None
        return self._pts

    def _indexed_by_decoding(self) -> bool:
        """AVI has no presentation times (and may hold packed B-frames): its frames are indexed by decoding."""
        return "avi" in self._container.format.name.split(",")

    def _scan_packets(self) -> None:
        if self._indexed_by_decoding():
            self._scan_by_decoding()
            return
        entries: list[tuple[int, bool]] = []
        try:
            for packet in self._container.demux(self._stream):
                if packet.size == 0:
                    continue
                stamp = packet.pts if packet.pts is not None else packet.dts
                if stamp is None:  # no usable timing: record it by decoding
                    entries = []
                    break
                entries.append((stamp, bool(packet.is_keyframe)))
        except av.FFmpegError:
            pass  # a broken tail: keep the packets read so far
        entries.sort()
        pts = [stamp for stamp, _ in entries]
        if not entries or len(set(pts)) != len(pts):  # no timing, or duplicate stamps
            self._scan_by_decoding()
            return
        keys = [index for index, (_, key) in enumerate(entries) if key]
        self._set_table(pts, keys, decode_order=False)

    def _scan_by_decoding(self, collect: frozenset[int] = frozenset()) -> dict[int, np.ndarray]:
        """Decodes the whole video once and records the frame times in output order.

        Without unique times the table stays empty and every read decodes from the start, counting frames.
        Frames whose index is in ``collect`` are converted to RGB on the way and returned (the first read of a
        file indexed by decoding needs only this one pass).
        """
        pts: list[int | None] = []
        keys: list[int] = []
        found: dict[int, np.ndarray] = {}
        try:
            self._rewind()
            for frame in self._decode():
                if frame.key_frame:
                    keys.append(len(pts))
                if len(pts) in collect:
                    found[len(pts)] = frame.to_ndarray(**self._rgb_options)
                pts.append(frame.pts)
        except av.FFmpegError:
            pass  # a broken tail: the frames decoded so far are the video
        self._decodable = len(pts)
        if None in pts or len(set(pts)) != len(pts):
            self._set_table([], [], decode_order=True)
        else:
            self._set_table(pts, keys, decode_order=True)  # type: ignore[arg-type]
        return found

    def _set_table(self, pts: list[int], keys: list[int], *, decode_order: bool) -> None:
        self._pts = pts
        self._index_of = {stamp: index for index, stamp in enumerate(pts)}
        self._key_positions = (keys or [0]) if pts else []
        self._key_set = frozenset(self._key_positions)
        self._decode_order = decode_order

    def _decode(self) -> Iterator[av.VideoFrame]:
        """Decodes frames from the current position, skipping packets that fail to decode."""
        for packet in self._container.demux(self._stream):
            try:
                yield from packet.decode()
            except av.FFmpegError:
                continue

    def decode_all(self) -> int:
        """Decodes every frame (without colour conversion) and returns how many decode; for data checks.

        Raises:
            VideoError: the decoder fails in a way that cannot be skipped.
        """
        try:
            self._rewind()
            count = sum(1 for _ in self._decode())
        except av.FFmpegError as err:
            raise VideoError(f"cannot decode {self.path} ({_reason(err)}): re-encode or remove it") from None
        self._decodable = count if self._decodable is None else min(count, self._decodable)
        return count

    def read(self, indices: list[int] | tuple[int, ...] | np.ndarray) -> torch.Tensor:
        """Returns the frames at ``indices`` as uint8 RGB ``(T, H, W, 3)``.

        Raises:
            IndexError: an index outside ``[0, num_frames)``.
            VideoError: the video cannot be decoded, or decodes fewer frames than it has packets (``num_frames``
                is lowered to what decodes, so a new clip can be sampled).
        """
        wanted_list = [int(i) for i in np.asarray(indices).reshape(-1)]
        found: dict[int, np.ndarray] = {}
        if self._pts is None and self._indexed_by_decoding():  # one pass gives the index and the frames
            try:
                found = self._scan_by_decoding(frozenset(wanted_list))
            except av.FFmpegError as err:
                raise VideoError(f"cannot decode {self.path} ({_reason(err)}): re-encode or remove it") from None
        total = self.num_frames
        if total == 0:
            raise VideoError(f"{self.path} has no decodable video frames: re-download or remove it")
        if any(not 0 <= i < total for i in wanted_list):
            raise IndexError(f"frame indices must lie in [0, {total}) for {self.path}, got {wanted_list}")
        if not wanted_list:
            raise IndexError("read() needs at least one frame index")
        try:
            if not set(wanted_list) <= found.keys():
                found = self._read_sorted(sorted(set(wanted_list)))
        except av.FFmpegError as err:
            raise VideoError(f"cannot decode {self.path} ({_reason(err)}): re-encode or remove it") from None
        frames = [found[i] for i in wanted_list]
        return torch.from_numpy(np.stack(frames))

    def _read_sorted(self, wanted: list[int]) -> dict[int, np.ndarray]:
        if not self._pts or not self._seekable:  # no timing table, or seeks found unreliable: count from the start
            return self._read_sequential(wanted)
        # After a seek, frames in the recorded output order come one index apart; a packet table allows gaps
        # (packets that do not decode).
        gap = 1 if self._decode_order else len(self._pts)
        found: dict[int, np.ndarray] = {}
        position = 0  # the next wanted index (into ``wanted``) still to find
        cursor = 0  # the frame index the decoder yields next (as far as known)
        last_index, last_frame = -1, None  # the last frame decoded since the last seek
        frames = None
        no_more_seeks = False
        sought = -1  # the key frame of the last forward seek (a seek that lands early is not repeated)
        leading = False  # after a seek: frames before the first key frame (an open GOP's) are not trusted
        while position < len(wanted):
            target = wanted[position]
            before = bisect.bisect_right(self._key_positions, target) - 1
            key = self._key_positions[before] if before >= 0 else 0  # no key frame yet: decode from the start
            gap_ahead = key > cursor and key > sought and target - cursor >= _SEEK_GAP_FRAMES
            if frames is None or (not no_more_seeks and (cursor > target or gap_ahead)):
                frames, cursor, sought = self._seek_to(key), key, key
                last_index, last_frame, leading = -1, None, key > 0
            frame = next(frames, None)
            if frame is None and leading:  # no key frame after the seek
                return self._stop_seeking(wanted)
            if frame is None:  # end of stream before the wanted frames: the file is shorter than its packets
                self._decodable = last_index + 1 if last_index >= 0 else cursor
                raise VideoError(
                    f"{self.path} decodes only {self._decodable} of {len(self._pts)} frames "
                    "(truncated or corrupt): sample again or re-download it"
                )
            if leading and not frame.key_frame:
                continue
            index = self._index_of.get(frame.pts) if frame.pts is not None else None
            if leading and index not in self._key_set:  # the times after this seek do not name the frames
                return self._stop_seeking(wanted)
            leading = False
            if index is None or (last_index >= 0 and not last_index < index <= last_index + gap):
                # Times that contradict the table: a packet table is replaced by the decoder's own order;
                # with that order already recorded, the frames are counted from the start.
                if self._decode_order:
                    return self._stop_seeking(wanted)
                self._scan_by_decoding()
                return self._read_sorted(wanted)
            if last_index == -1 and index > target and cursor > 0 and not no_more_seeks:
                frames, cursor, no_more_seeks = self._seek_to(0), 0, True  # the seek overshot: start over
                continue
            while position < len(wanted) and wanted[position] <= index:
                # A wanted frame that did not decode (skipped index) gets the closest earlier frame.
                source = frame if wanted[position] == index or last_frame is None else last_frame
                found[wanted[position]] = source.to_ndarray(**self._rgb_options)
                position += 1
            last_index, last_frame, cursor = index, frame, index + 1
        return found

    def _stop_seeking(self, wanted: list[int]) -> dict[int, np.ndarray]:
        """Reads by counting frames from the start, now and from now on (the file's seeks are not reliable)."""
        self._seekable = False
        return self._read_sequential(wanted)

    def _seek_to(self, frame_index: int) -> Iterator[av.VideoFrame]:
        assert self._pts is not None
        if frame_index == 0:
            self._rewind()
        else:
            try:
                self._container.seek(self._pts[frame_index], stream=self._stream, backward=True, any_frame=False)
            except av.FFmpegError:
                self._rewind()  # the overshoot check of the caller then finds the frames by decoding forward
        return self._decode()

    def _read_sequential(self, wanted: list[int]) -> dict[int, np.ndarray]:
        self._rewind()
        found: dict[int, np.ndarray] = {}
        wanted_set = set(wanted)
        count = 0
        for frame in self._decode():
            if count in wanted_set:
                found[count] = frame.to_ndarray(**self._rgb_options)
                if len(found) == len(wanted_set):
                    return found
            count += 1
        self._decodable = count
        raise VideoError(f"{self.path} decodes only {count} frames (truncated or corrupt): sample again or remove it")


class FrameFolderReader:
    """Reads a folder of extracted frames (``img_00001.jpg`` ...), sorted by the number in their names."""

    def __init__(self, path: str | Path, *, fps: float = 25.0) -> None:
        self.path = Path(path)
        files = [p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise VideoError(f"frame folder {self.path} holds no images ({', '.join(IMAGE_SUFFIXES)}): extract it")
        self._files = sorted(files, key=_natural_key)
        self._fps = fps

    def __enter__(self) -> FrameFolderReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release."""

    @property
    def num_frames(self) -> int:
        """Number of image files."""
        return len(self._files)

    @property
    def fps(self) -> float:
        """The frame rate given when opening (frame folders carry none)."""
        return self._fps

    def read(self, indices: list[int] | tuple[int, ...] | np.ndarray) -> torch.Tensor:
        """Returns the frames at ``indices`` as uint8 RGB ``(T, H, W, 3)``; raises ``VideoError`` on a bad image."""
        wanted = [int(i) for i in np.asarray(indices).reshape(-1)]
        if not wanted or any(not 0 <= i < len(self._files) for i in wanted):
            raise IndexError(f"frame indices must lie in [0, {len(self._files)}) for {self.path}, got {wanted}")
        cache: dict[int, torch.Tensor] = {}
        for index in sorted(set(wanted)):
            file = self._files[index]
            cache[index] = read_image(file)
        return torch.stack([cache[i] for i in wanted])


def _rgb_options(codec_context: av.codec.context.CodecContext, max_short_side: int | None) -> dict:
    """Arguments of ``VideoFrame.to_ndarray``: RGB, scaled down when the short side exceeds ``max_short_side``."""
    height, width = codec_context.height, codec_context.width
    if not max_short_side or not height or not width or min(height, width) <= max_short_side:
        return {"format": "rgb24"}
    scale = max_short_side / min(height, width)
    size = {"width": max(2, round(width * scale / 2) * 2), "height": max(2, round(height * scale / 2) * 2)}
    return {"format": "rgb24", "interpolation": "AREA", **size}


def read_image(path: str | Path) -> torch.Tensor:
    """Decodes an image file (JPEG, PNG, ...) with Pillow into uint8 RGB ``(H, W, 3)``.

    Raises:
        VideoError: the file is missing or not a readable image.
    """
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise VideoError(f"cannot decode image {path} ({err}): re-extract or remove it") from None
    return torch.from_numpy(array.copy())


def _natural_key(path: Path) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name))


def _reason(err: BaseException) -> str:
    text = getattr(err, "strerror", None) or str(err)
    return text.split(":")[-1].strip() or type(err).__name__
