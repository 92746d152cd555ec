"""The speed targets as a user meets them: one process, `import torch` then `import mfnet`, no environment variable.

`python benchmarks/bench_user_order.py` (also the first part of `benchmarks/bench_speed.py`). In one process per
variant (`torch` imported first, and `mfnet` first), both alive and their steps interleaved in one session, batch
1, fp32, `--threads` threads:

- inference: mfnet3d through `mfnet.optimize_for_inference` at 16x224x224 against torchvision's r3d_18 as shipped
  (eval, `torch.inference_mode`) at 16x112x112, in the same process; ONNX Runtime on `mfnet export`'s ONNX file of
  mfnet3d runs alone in a process of its own (one, the peer of both variants); one step of each per round, in
  turn, after warm-up, each starting ``--settle`` seconds after the last one ended (idle threads of both engines
  spin for a while after a step);
- training: one SGD step on 8 clips of 16x112x112, mfnet3d through `mfnet.prepare_for_training` against r3d_18 as
  shipped, in the same process.

The peer runs under whatever the process has: mfnet sets nothing. Writes `<out>/user_order.json` and
`user_order.md`, and prints the table and the target checks (mfnet3d >= 2.5x r3d_18 and >= 1.5x ONNX Runtime;
the mfnet-first figures within 5% of the torch-first ones).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_R3D, TARGET_ORT = 2.5, 1.5


def _worker(first: str, mode: str, threads: int) -> None:
    """The user's process: imports in the given order, prepares both models, then times one step per request."""
    if first == "mfnet":
        import mfnet
    import torch
    import torchvision

    import mfnet

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    steps = {}
    if mode == "infer":
        x = torch.randn(1, 3, 16, 224, 224)
        plain = mfnet.create_model("mfnet3d", num_classes=400).eval()
        fast = mfnet.optimize_for_inference(plain, x)
        with torch.inference_mode():
            expected = plain(x)
            max_rel_diff = float((fast(x) - expected).abs().max() / expected.abs().max())
        del plain
        r3d = torchvision.models.video.r3d_18(num_classes=400).eval()
        x_r3d = torch.randn(1, 3, 16, 112, 112)

        def mfnet_step() -> None:
            with torch.inference_mode():
                fast(x)

        def r3d_step() -> None:
            with torch.inference_mode():
                r3d(x_r3d)

        steps = {"mfnet3d": mfnet_step, "r3d_18": r3d_step}
    else:
        for name, model, prepare in (
            ("mfnet3d", mfnet.create_model("mfnet3d", num_classes=400), True),
            ("r3d_18", torchvision.models.video.r3d_18(num_classes=400), False),
        ):
            steps[name] = _train_step(torch, mfnet, model, prepare)
    for step in steps.values():
        for _ in range(2 if mode == "infer" else 1):
            step()
    ready = {"ready": list(steps)}
    if mode == "infer":
        ready["max_rel_diff"] = max_rel_diff
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        name = line.strip()
        start = time.perf_counter()
        steps[name]()
        print(json.dumps({"wall": time.perf_counter() - start}), flush=True)


def _train_step(torch, mfnet, model, prepare: bool):
    x = torch.randn(8, 3, 16, 112, 112)
    if prepare:
        model = mfnet.prepare_for_training(model)
        x = mfnet.fastpath.to_channels_last(x)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    labels = torch.randint(0, 400, (8,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), labels).backward()
        optimizer.step()

    return step


class _Process:
    """A worker process answering one JSON line per request line."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.ready = self.read()

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"a benchmark worker stopped: {' '.join(self.proc.args)}")
        return json.loads(line)

    def ask(self, request: str) -> float:
        self.proc.stdin.write(request + "\n")
        self.proc.stdin.flush()
        answer = self.read()
        return answer["wall"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def _onnx_process(threads: int) -> tuple[_Process, str]:
    """ONNX Runtime alone in its own process (mfnet's benchmark worker, the `onnxruntime` engine)."""
    spec = {
        "candidate": {"model": "mfnet3d", "clip_size": [16, 224, 224], "engine": "onnxruntime"},
        "mode": "infer",
        "batch": 1,
        "device": "cpu",
        "threads": threads,
        "num_classes": 400,
        "seed": 0,
        "warmup": 2,
    }
    code = "import torch; from mfnet.tools.bench.worker import serve; serve()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
    )
    proc.stdin.write(json.dumps(spec) + "\n")
    proc.stdin.flush()
    worker = _Process.__new__(_Process)
    worker.proc = proc
    worker.ready = worker.read()
    if "error" in worker.ready:
        raise SystemExit(f"ONNX Runtime: {worker.ready['error']}")
    return worker, '"step"'


def run(
    firsts: tuple[str, ...], mode: str, *, threads: int, repeats: int, onnx: bool, settle: float = 0.0
) -> tuple[dict[str, dict[str, list[float]]], dict[str, float]]:
    """Interleaved rounds of the variants in ``firsts`` (one user process each, all alive at once, and one ONNX
    Runtime process that serves as every variant's peer); returns the step times in seconds per variant and
    candidate, and (inference) each variant's fast path against its plain model (``max |diff| / max |plain|``).
    Each step starts ``settle`` seconds after the previous one ended, so that no candidate's idle threads
    (which spin for a while after a step, in both PyTorch and ONNX Runtime) are still busy when the next one starts.
    """
    users = {}
    try:
        for first in firsts:
            argv = [sys.executable, __file__, "--worker", first, "--mode", mode, "--threads", str(threads)]
            users[first] = _Process(argv)
        workers = [(first, name, user, name) for first, user in users.items() for name in user.ready["ready"]]
        if onnx and mode == "infer":
            ort, request = _onnx_process(threads)
            users["onnxruntime"] = ort
            workers.append((None, "onnxruntime", ort, request))
        times: dict[str, dict[str, list[float]]] = {first: {} for first in firsts}
        shared: list[float] = []  # ONNX Runtime's times, every variant's peer
        for first in firsts:
            for _, name, _, _ in workers:
                times[first][name] = shared if name == "onnxruntime" else []
        for r in range(repeats):
            for first, name, worker, request in workers[r % len(workers) :] + workers[: r % len(workers)]:
                time.sleep(settle)
                wall = worker.ask(request)
                times[firsts[0] if first is None else first][name].append(wall)
    finally:
        for proc in users.values():
            proc.close()
    agreement = {first: users[first].ready["max_rel_diff"] for first in firsts if "max_rel_diff" in users[first].ready}
    return times, agreement


def summarize(results: dict[str, dict[str, dict[str, list[float]]]], agreement: dict[str, float]) -> list[str]:
    """The table and the target lines (``agreement``: each variant's fast path against its plain model)."""
    lines = ["| variant | mode | candidate | median ms | min ms |", "|---|---|---|---|---|"]
    medians: dict[tuple[str, str, str], float] = {}
    for variant, modes in results.items():
        for mode, times in modes.items():
            for name, samples in times.items():
                medians[(variant, mode, name)] = statistics.median(samples) * 1e3
                lines.append(
                    f"| {variant} first | {mode} | {name} | {medians[(variant, mode, name)]:.0f} | "
                    f"{min(samples) * 1e3:.0f} |"
                )
    lines.append("")
    ratios: dict[tuple[str, str, str], float] = {}
    for variant in results:
        if variant in agreement:
            diff = agreement[variant]
            verdict = "met" if diff <= 1e-4 else "NOT met"
            lines.append(f"- {variant} first: fast path against the plain model, {diff:.1e} relative (1e-4: {verdict})")
        for mode, peer, goal in (("infer", "r3d_18", TARGET_R3D), ("infer", "onnxruntime", TARGET_ORT)):
            if (variant, mode, peer) in medians:
                ratio = medians[(variant, mode, peer)] / medians[(variant, mode, "mfnet3d")]
                ratios[(variant, mode, peer)] = ratio
                verdict = "met" if ratio >= goal else "NOT met"
                what = f"{variant} first, inference: mfnet3d@224 vs {peer}"
                lines.append(f"- {what}: {ratio:.2f}x (target {goal}x: {verdict})")
        if (variant, "train", "r3d_18") in medians:
            ratio = medians[(variant, "train", "r3d_18")] / medians[(variant, "train", "mfnet3d")]
            ratios[(variant, "train", "r3d_18")] = ratio
            step = medians[(variant, "train", "mfnet3d")]
            lines.append(f"- {variant} first, training step: mfnet3d {step:.0f} ms, {ratio:.2f}x faster than r3d_18")
    for key, ratio in ratios.items():
        other = ("mfnet", *key[1:])
        if key[0] == "torch" and other in ratios:
            change = ratios[other] / ratio - 1
            verdict = "within 5%" if abs(change) <= 0.05 else "NOT within 5%"
            lines.append(f"- mfnet first vs torch first, {key[1]} vs {key[2]}: {change:+.1%} ({verdict})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="threads of every candidate (default: 2)")
    parser.add_argument("--repeats", type=int, default=10, help="interleaved inference rounds (default: 10)")
    parser.add_argument("--train-repeats", type=int, default=5, help="interleaved training rounds (default: 5)")
    parser.add_argument(
        "--settle",
        type=float,
        default=0.5,
        help="seconds between steps, so that the last candidate's idle threads (PyTorch's and ONNX Runtime's spin "
        "for a while after a step) have gone quiet before the next one starts (default: 0.5)",
    )
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-onnx", action="store_true", help="no ONNX Runtime candidate")
    parser.add_argument("--torch-first-only", action="store_true", help="skip the mfnet-imported-first variant")
    parser.add_argument("--out", default="benchmarks/results/speed", help="output folder")
    parser.add_argument("--worker", choices=["torch", "mfnet"], help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["infer", "train"], default="infer", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.worker, args.mode, args.threads)
        return 0
    firsts = ("torch",) if args.torch_first_only else ("torch", "mfnet")
    infer, agreement = run(
        firsts, "infer", threads=args.threads, repeats=args.repeats, onnx=not args.skip_onnx, settle=args.settle
    )
    results: dict[str, dict[str, dict[str, list[float]]]] = {first: {"infer": infer[first]} for first in firsts}
    if not args.skip_train:
        train, _ = run(
            firsts, "train", threads=args.threads, repeats=args.train_repeats, onnx=False, settle=args.settle
        )
        for first in firsts:
            results[first]["train"] = train[first]
    lines = summarize(results, agreement)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    footer = (
        f"{args.threads} threads, {args.settle:g} s between steps, load average at the end {load:.1f} on "
        f"{os.cpu_count()} CPUs"
    )
    text = "## One process, user order (`benchmarks/bench_user_order.py`)\n\n" + "\n".join(lines) + f"\n\n{footer}\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "user_order.json").write_text(
        json.dumps({"threads": args.threads, "seconds": results, "max_rel_diff": agreement}, indent=1)
    )
    (out / "user_order.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
