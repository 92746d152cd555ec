"""Videos per second of ``mfnet features`` into a folder of shards: the local engine against ``--engine ray``.

It writes ``--videos`` generated H.264 videos and a manifest, then runs, on the same videos and settings:

- ``local``: ``mfnet features --manifest ... --out DIR`` (this process, 2 DataLoader decode workers);
- ``ray``: the same command with ``--engine ray`` on a local Ray cluster of ``--cpus`` CPUs (one CPU model actor
  with Ray's one thread, decode tasks on the other CPUs), started and warmed up by a 4-video job before the clock
  runs (a real cluster is up, its worker processes started, before a job comes);
- ``ray, --threads-per-worker CPUS``: the same with as many PyTorch threads in the actor as the local engine's
  model has (it then also uses the CPU time that decoding leaves idle).

Each rate is the job's own figure (``_summary.json``: videos / wall seconds of the run, the model load and, for
Ray, the actors' start included). It also measures the two rates a cluster is sized by, on one core each:

- ``decode_videos_per_s_per_core``: ``decode_video`` (open, seek, decode, resize, crop, normalise) of every clip;
- ``model_videos_per_s_per_actor``: ``Predictor.features_decoded`` on clips decoded beforehand, one thread;
- ``paper_decode_videos_per_s_per_core``: decoding at the paper's test setting (10 clips of 16 frames 2 apart,
  short side 256, 224 crop) of 10 s Kinetics-sized videos (340x256, 25 fps), for sizing GPU clusters.

The target is ``ray / local >= 0.8`` on one machine. Results go to ``benchmarks/results/scaleout.json``.
Usage: ``python benchmarks/bench_scaleout.py [--videos 200] [--cpus 2] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import mfnet
from mfnet.cli import main as mfnet_main
from mfnet.data.video_writer import write_video
from mfnet.engine.predictor import ClipSpec, Predictor, decode_video
from mfnet.models.checkpoint import save_checkpoint

RESULTS = Path(__file__).resolve().parent / "results" / "scaleout.json"


def _write_videos(folder: Path, count: int, *, frames: int, height: int, width: int) -> Path:
    """``count`` videos of moving textured noise and a manifest listing them; returns the manifest."""
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 200, (height, width * 2, 3), dtype=np.uint8)
    names = []
    for i in range(count):
        shift = 1 + i % 5
        clip = np.stack([np.roll(texture, shift * t, axis=1)[:, :width] for t in range(frames)])
        write_video(folder / f"v{i:04d}.mp4", clip, fps=25)
        names.append(f"v{i:04d}.mp4")
    manifest = folder / "videos.txt"
    manifest.write_text("\n".join(names) + "\n")
    return manifest


def _run(argv: list[str], out: Path) -> dict:
    status = mfnet_main([*argv, "--out", str(out)])
    if status != 0:
        raise SystemExit(f"mfnet {' '.join(argv)} exited with {status}")
    return json.loads((out / "_summary.json").read_text())


def _per_core_rates(paths: list[Path], model: torch.nn.Module, spec: ClipSpec, clips: int) -> dict[str, float]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        decoded = [decode_video(p, spec=spec, num_clips=clips) for p in paths]
        decode_s = time.perf_counter() - start
        predictor = Predictor(model, spec=spec, num_clips=clips, batch_size=8, device="cpu")
        predictor.features_decoded(decoded[:2])  # the fast path is prepared on the first call
        start = time.perf_counter()
        predictor.features_decoded(decoded)
        model_s = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    return {
        "decode_videos_per_s_per_core": round(len(paths) / decode_s, 2),
        "model_videos_per_s_per_actor": round(len(paths) / model_s, 2),
    }


def _paper_decode_rate(folder: Path, count: int = 4) -> float:
    """Videos/s of one core decoding the paper's 10 test clips (16x2 frames, 224 crop) of 10 s 340x256 videos."""
    manifest = _write_videos(folder, count, frames=250, height=256, width=340)
    paths = [folder / name for name in manifest.read_text().split()]
    spec = ClipSpec()  # 16 frames, interval 2, short side 256, 224 centre crop
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        for path in paths:
            decode_video(path, spec=spec, num_clips=10)
        return round(count / (time.perf_counter() - start), 2)
    finally:
        torch.set_num_threads(threads)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=200, help="generated videos (default 200)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster (default 2)")
    parser.add_argument("--frames", type=int, default=8, help="frames per clip (default 8)")
    parser.add_argument("--size", type=int, default=112, help="crop size (default 112)")
    parser.add_argument("--clips", type=int, default=2, help="clips per video (default 2)")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"results file (default {RESULTS})")
    args = parser.parse_args()
    import ray

    with tempfile.TemporaryDirectory(prefix="mfnet_scaleout_") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        manifest = _write_videos(root / "videos", args.videos, frames=48, height=128, width=170)
        print(f"wrote {args.videos} videos (48 frames of 170x128, H.264) in {time.perf_counter() - start:.1f} s")
        torch.manual_seed(0)
        model = mfnet.create_model("mfnet3d", num_classes=400)
        weights = save_checkpoint(root / "mfnet3d.pth", model, model_name="mfnet3d")
        argv = ["features", "--manifest", str(manifest), "--weights", str(weights), "--device", "cpu"]
        argv += ["--frames", str(args.frames), "--size", str(args.size), "--clips", str(args.clips)]
        local = _run(argv, root / "local")
        print(f"local: {local['videos_per_s']:.2f} videos/s ({local['seconds']:.1f} s)")
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        try:
            warm_up = root / "warm_up.txt"
            warm_up.write_text("\n".join(str(p) for p in sorted((root / "videos").glob("*.mp4"))[:4]) + "\n")
            _run([*argv, "--engine", "ray", "--manifest", str(warm_up)], root / "warm_up")
            distributed = _run([*argv, "--engine", "ray"], root / "ray")
            print(f"ray:   {distributed['videos_per_s']:.2f} videos/s ({distributed['seconds']:.1f} s)")
            threads = str(args.cpus)
            wide = _run([*argv, "--engine", "ray", "--threads-per-worker", threads], root / "ray_threads")
            print(f"ray, {threads} model threads: {wide['videos_per_s']:.2f} videos/s ({wide['seconds']:.1f} s)")
        finally:
            ray.shutdown()
        spec = ClipSpec(frames=args.frames, resize=round(args.size * 8 / 7), crop_size=args.size)
        sample = sorted((root / "videos").glob("*.mp4"))[:20]
        rates = _per_core_rates(sample, model, spec, args.clips)
        rates["paper_decode_videos_per_s_per_core"] = _paper_decode_rate(root / "paper")
    ratio = distributed["videos_per_s"] / local["videos_per_s"]
    ratio_wide = wide["videos_per_s"] / local["videos_per_s"]
    result = {
        "videos": args.videos,
        "video": "48 frames of 170x128 at 25 fps, H.264",
        "settings": {"model": "mfnet3d", "frames": args.frames, "size": args.size, "clips": args.clips},
        "local_videos_per_s": local["videos_per_s"],
        "ray_videos_per_s": distributed["videos_per_s"],
        "ray_over_local": round(ratio, 3),
        "ray_threads_per_worker_videos_per_s": wide["videos_per_s"],
        "ray_threads_per_worker_over_local": round(ratio_wide, 3),
        "ray_threads_per_worker": args.cpus,
        "target_ray_over_local": 0.8,
        "ray_cpus": args.cpus,
        **rates,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1min_at_end": round(os.getloadavg()[0], 2),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "ray": ray.__version__,
        },
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"ray / local = {ratio:.2f}, with --threads-per-worker {args.cpus}: {ratio_wide:.2f} (target >= 0.8); "
        f"per decode core {rates['decode_videos_per_s_per_core']} videos/s, per model actor "
        f"{rates['model_videos_per_s_per_actor']} videos/s; paper setting: "
        f"{rates['paper_decode_videos_per_s_per_core']} videos/s per decode core; written to {args.json}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
