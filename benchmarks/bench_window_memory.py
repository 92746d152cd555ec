"""Peak memory of `mfnet predict VIDEO --window 4 --stride 4` against the video's length.

`python benchmarks/bench_window_memory.py [--long 600]` writes two 320x240 H.264 videos of the same frame size
(10 s and ``--long`` seconds, 25 fps) and an mfnet3d checkpoint (10 classes) into a temporary folder, then runs the
command on each in a fresh process, as a user would (`import torch` first, nothing set in the environment, the
CLI's defaults: batch 8, 2 loader workers). It reports the main process's peak RSS (`ru_maxrss`) and the largest
loader worker's, and checks the target: the long video's peak within 15% of the short one's (memory follows the
clip batch, not the video's length). Writes `<out>/window_memory.json` and `window_memory.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 0.15
_CHILD = """
import json, resource, sys
import torch
from mfnet.cli import main
status = main(sys.argv[1:])
print(json.dumps({
    "status": status,
    "main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
}))
"""


def write_video(path: Path, seconds: int, *, fps: int = 25, width: int = 320, height: int = 240) -> None:
    """A moving random texture, encoded frame by frame (never the whole video in memory)."""
    import av
    import numpy as np

    base = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for i in range(seconds * fps):
            frame = av.VideoFrame.from_ndarray(np.roll(base, i * 3, axis=1), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def measure(video: Path, weights: Path) -> dict:
    """Peak RSS (MiB) of one `mfnet predict --window` run in a fresh process, and its wall time."""
    argv = ["predict", str(video), "--weights", str(weights), "--window", "4", "--stride", "4"]
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, *argv], capture_output=True, text=True, check=False, env=dict(os.environ)
    )
    if done.returncode != 0:
        raise SystemExit(f"mfnet predict failed on {video.name}: {done.stderr.strip().splitlines()[-1:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - start
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", type=int, default=10, help="seconds of the short video (default: 10)")
    parser.add_argument("--long", type=int, default=600, help="seconds of the long video (default: 600)")
    parser.add_argument("--out", default="benchmarks/results/memory", help="output folder")
    args = parser.parse_args(argv)

    import torch

    import mfnet
    from mfnet.models.checkpoint import save_checkpoint

    results = {}
    with tempfile.TemporaryDirectory(prefix="mfnet-window-") as folder:
        weights = Path(folder) / "model.pt"
        torch.manual_seed(0)
        save_checkpoint(weights, mfnet.create_model("mfnet3d", num_classes=10), model_name="mfnet3d")
        for seconds in (args.short, args.long):
            video = Path(folder) / f"video_{seconds}s.mp4"
            write_video(video, seconds)
            results[seconds] = measure(video, weights)
            print(f"{seconds} s: {json.dumps(results[seconds])}", flush=True)
    short, long = results[args.short]["main_mb"], results[args.long]["main_mb"]
    change = long / short - 1
    verdict = "met" if change <= TARGET else "NOT met"
    lines = [
        "## Peak memory of `mfnet predict --window 4 --stride 4` (`benchmarks/bench_window_memory.py`)",
        "",
        "| video (320x240, 25 fps) | main process peak RSS | largest loader worker | wall |",
        "|---|---|---|---|",
    ]
    for seconds, r in results.items():
        lines.append(f"| {seconds} s | {r['main_mb']:.0f} MiB | {r['worker_mb']:.0f} MiB | {r['wall_s']:.0f} s |")
    lines += ["", f"- {args.long} s against {args.short} s: {change:+.1%} (target within {TARGET:.0%}: {verdict})"]
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "window_memory.json").write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1))
    (out / "window_memory.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
