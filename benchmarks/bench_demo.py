"""The full default ``mfnet demo``, timed: wall time, CPU time and both models' accuracies, written to a JSON file.

It runs ``.venv/bin/mfnet demo --json`` in a fresh run directory (data generation included, like a first run of
``make demo``) as a child process, and records:

- ``wall_s``: wall-clock seconds of the whole command (start-up, data generation, both trainings, evaluation,
  reports); the target is at most 600 s on 2 CPU cores;
- ``cpu_s``: user + system CPU seconds of the command and its DataLoader workers (``resource.RUSAGE_CHILDREN``):
  on a machine shared with other jobs the wall time is inflated but the CPU time is not, and ``cpu_s / cores``
  estimates the wall time the demo would take alone on ``cores`` cores;
- the demo's own JSON (video accuracy, motion-pair and direction accuracy, parameters, MACs per clip, training
  clips/s of ``mfnet3d`` and ``mfnet2d``) and whether the targets were met (3D >= 90%, 2D direction accuracy
  within pairs near 50%).

Usage: ``python benchmarks/bench_demo.py [--out runs/bench-demo] [--json benchmarks/results/demo.json] [--minutes M]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

TARGET_WALL_S = 600.0
TARGET_3D_TOP1 = 0.90


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench-demo", help="demo run directory (removed first)")
    parser.add_argument("--json", default="benchmarks/results/demo.json", help="where to write the results")
    parser.add_argument("--minutes", type=float, default=None, help="pass --minutes to the demo")
    parser.add_argument("--keep", action="store_true", help="keep an existing run directory (measure a resume)")
    args = parser.parse_args()

    out = Path(args.out)
    if out.exists() and not args.keep:
        shutil.rmtree(out)
    exe = Path(sys.executable).with_name("mfnet")
    command = [str(exe) if exe.exists() else "mfnet", "demo", "--out", str(out), "--json"]
    if args.minutes is not None:
        command += ["--minutes", str(args.minutes)]
    print("running:", " ".join(command), file=sys.stderr, flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    tic = time.perf_counter()
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    wall_s = time.perf_counter() - tic
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        print(f"mfnet demo failed with status {proc.returncode}", file=sys.stderr)
        return proc.returncode
    demo = _relative_paths(json.loads(proc.stdout.strip().splitlines()[-1]), out)
    models = demo["models"]
    cores = os.cpu_count() or 1
    record = {
        "command": " ".join(["mfnet", *command[1:3], out.name, *command[4:]]),
        "wall_s": round(wall_s, 1),
        "cpu_s": round(cpu_s, 1),
        "cores": cores,
        "cpu_s_per_core": round(cpu_s / cores, 1),
        "load_average_after": list(os.getloadavg()),
        "demo": demo,
        "targets": {
            "wall_s_at_most": TARGET_WALL_S,
            "wall_ok": wall_s <= TARGET_WALL_S,
            "mfnet3d_video_top1_at_least": TARGET_3D_TOP1,
            "mfnet3d_ok": models["mfnet3d"]["video_top1"] >= TARGET_3D_TOP1,
            "mfnet2d_direction_top1": models["mfnet2d"]["direction_top1"],
        },
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record["targets"]))
    top1 = {name: 100 * m["video_top1"] for name, m in models.items()}
    print(
        f"wall {wall_s:.0f} s, CPU {cpu_s:.0f} s ({cores} cores); "
        f"mfnet3d {top1['mfnet3d']:.1f}%, mfnet2d {top1['mfnet2d']:.1f}% -> {path}"
    )
    return 0


def _relative_paths(value: object, out: Path) -> object:
    """The demo's JSON with paths under ``out`` written relative to it (no machine paths in committed results)."""
    if isinstance(value, dict):
        return {k: _relative_paths(v, out) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative_paths(v, out) for v in value]
    if isinstance(value, str) and value.startswith(str(out.resolve())):
        return str(Path(value).relative_to(out.resolve())) or "."
    if isinstance(value, str) and value.startswith(str(out)):
        return str(Path(value).relative_to(out)) or "."
    return value


if __name__ == "__main__":
    raise SystemExit(main())
