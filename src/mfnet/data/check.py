"""Data checks: decode every video of a dataset in parallel and list the unreadable and too-short ones."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from tqdm import tqdm

from mfnet.data.readers import FrameFolderReader, PyAVReader, open_video
from mfnet.errors import MfnetError


class VideoCheck(NamedTuple):
    """The result of checking one video.

    Attributes:
        path: the video.
        frames: frames that decode (packets counted when ``full`` is off), 0 when unreadable.
        header_frames: the frame count the container header claims (0 when absent or a frame folder).
        error: why it cannot be used, or ``None``.
    """

    path: Path
    frames: int
    header_frames: int
    error: str | None


def check_video(path: str | Path, *, full: bool = True) -> VideoCheck:
    """Opens a video and decodes all its frames (``full``) or its first, middle and last frames (quick)."""
    path = Path(path)
    try:
        with open_video(path) as reader:
            header = reader.header_frames if isinstance(reader, PyAVReader) else 0
            frames = reader.num_frames
            if frames <= 0:
                return VideoCheck(path, 0, header, "no decodable frames")
            if full and isinstance(reader, PyAVReader):
                frames = reader.decode_all()
            elif full and isinstance(reader, FrameFolderReader):
                for start in range(0, frames, 64):
                    reader.read(list(range(start, min(start + 64, frames))))
            else:
                reader.read(sorted({0, frames // 2, frames - 1}))
                frames = reader.num_frames
            if frames <= 0:
                return VideoCheck(path, 0, header, "no decodable frames")
            return VideoCheck(path, frames, header, None)
    except (MfnetError, OSError, RuntimeError, ValueError, IndexError, MemoryError) as err:
        return VideoCheck(path, 0, 0, str(err))


def _check_one(args: tuple[Path, bool]) -> VideoCheck:
    return check_video(args[0], full=args[1])


def check_videos(
    paths: Sequence[str | Path], *, workers: int | None = None, full: bool = True, progress: bool = True
) -> list[VideoCheck]:
    """Checks many videos in parallel processes, with a progress bar on stderr; results keep the input order.

    Args:
        paths: the videos (files or frame folders).
        workers: processes (default: the CPU count, at most 8); 0 or 1 checks in this process.
        full: decode every frame (finds broken tails) rather than three frames per video.
        progress: show a tqdm progress bar.
    """
    workers = min(os.cpu_count() or 1, 8) if workers is None else workers
    jobs = [(Path(p), full) for p in paths]
    bar = tqdm(total=len(jobs), desc="checking videos", unit="video", disable=None if progress else True, leave=False)
    results: list[VideoCheck] = []
    try:
        if workers <= 1 or len(jobs) < 2:
            for job in jobs:
                results.append(_check_one(job))
                bar.update()
        else:
            context = multiprocessing.get_context("spawn" if os.name != "posix" else "fork")
            with context.Pool(min(workers, len(jobs))) as pool:
                for result in pool.imap(_check_one, jobs, chunksize=4):
                    results.append(result)
                    bar.update()
    finally:
        bar.close()
    return results
