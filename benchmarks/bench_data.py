"""Decode + augment throughput of the data pipeline, in clips per second per worker (one process, one thread).

It writes test videos (340x256 and 1280x720, H.264 in mp4 and MPEG-4 Part 2 in avi), then times, per video:

- ``seek``: the pipeline's reader (key-frame seeking, packet index) reading a random 16x2 clip, decode only;
- ``seek+augment``: the same plus the paper's training transform (scale 224-288, 224 crop, flip, HLS jitter);
- ``sequential``: the naive way, decoding every frame of the video in order with PyAV and converting each to
  RGB before picking the clip's frames (what ``torchvision.io.read_video`` does);
- ``seek+eval``: a centre clip with the evaluation transform (short side 256, 224 centre crop).

Rates come from the median CPU time per clip (and the median wall time, printed too).
Usage: ``python benchmarks/bench_data.py [--seconds 10] [--clips 20] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import av
import numpy as np
import torch

from mfnet.data.readers import open_video
from mfnet.data.sampling import RandomClipSampler, UniformClipSampler
from mfnet.data.transforms import eval_transform, train_transform
from mfnet.data.video_writer import write_video

SIZES = {"340x256": (256, 340), "1280x720": (720, 1280)}
CODECS = {"h264": ("libx264", ".mp4"), "mpeg4": ("mpeg4", ".avi")}


def _frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """Moving gradients with texture, so the encoders have real motion to code."""
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 60, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    texture = texture[:height, :width]
    y, x = np.mgrid[0:height, 0:width]
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        base = ((x + 4 * t) % width * 180 // width + (y + 2 * t) % height * 60 // height).astype(np.uint8)
        frames[t] = np.roll(texture, 3 * t, axis=1) + base[..., None]
    return frames


def _seek(ctx: dict, sampler: Callable, transform: Callable | None) -> None:
    """The pipeline's way: packet index, seek to the key frame, decode the clip's frames only."""
    with open_video(ctx["path"]) as reader:
        clip = reader.read(sampler(reader.num_frames, 0, ctx["rng"]).frames)
    if transform is not None:
        transform(clip, generator=ctx["generator"])


def _sequential(ctx: dict, sampler: Callable) -> None:
    """The naive way: decode and convert every frame in order, then pick the clip's frames."""
    with av.open(str(ctx["path"])) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    indices = sampler(len(frames), 0, ctx["rng"]).frames
    torch.from_numpy(np.stack([frames[i] for i in indices]))


def _time(fn: Callable[[], None], repeats: int) -> tuple[float, float]:
    """Clips per second from the median CPU time and the median wall time of ``repeats`` calls.

    The CPU-time rate is what one worker with a core of its own delivers; it is far less disturbed by other jobs
    on a shared machine than the wall-clock rate.
    """
    fn()  # warm-up
    cpu, wall = [], []
    for _ in range(repeats):
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
    return 1.0 / float(np.median(cpu)), 1.0 / float(np.median(wall))


def run(seconds: float, clips: int, folder: Path) -> list[dict]:
    """Writes the videos into ``folder`` and returns one result row per video and method."""
    torch.set_num_threads(1)
    sampler = RandomClipSampler(16, 2)
    centre = UniformClipSampler(1, 16, 2)
    train = train_transform()
    evaluate = eval_transform()
    rows = []
    for size_name, (height, width) in SIZES.items():
        frames = _frames(round(seconds * 25), height, width)
        for codec_name, (codec, suffix) in CODECS.items():
            path = write_video(folder / f"{size_name}_{codec_name}{suffix}", frames, codec=codec, gop_size=50)
            ctx = {"path": path, "rng": np.random.default_rng(0), "generator": torch.Generator().manual_seed(0)}
            results = {
                "seek": _time(partial(_seek, ctx, sampler, None), clips),
                "seek+augment": _time(partial(_seek, ctx, sampler, train), clips),
                "seek+eval": _time(partial(_seek, ctx, centre, evaluate), clips),
                "sequential": _time(partial(_sequential, ctx, sampler), max(3, clips // 4)),
            }
            for method, (cpu_rate, wall_rate) in results.items():
                rows.append(
                    {
                        "video": f"{size_name} {codec_name}",
                        "seconds": seconds,
                        "method": method,
                        "clips_per_s": round(cpu_rate, 2),
                        "clips_per_s_wall": round(wall_rate, 2),
                        "file_mb": round(path.stat().st_size / 2**20, 2),
                    }
                )
            summary = ", ".join(f"{m} {c:.1f} ({w:.1f} wall)" for m, (c, w) in results.items())
            print(f"{size_name:>9} {codec_name:>6}: {summary} clips/s", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the test videos (25 fps)")
    parser.add_argument("--clips", type=int, default=20, help="clips timed per video and method")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        rows = run(args.seconds, args.clips, Path(folder))
    print("\n| video | method | clips/s per worker (CPU time) | clips/s (wall) |\n|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['video']} ({row['seconds']:.0f} s) | {row['method']} | {row['clips_per_s']:.1f} "
            f"| {row['clips_per_s_wall']:.1f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
