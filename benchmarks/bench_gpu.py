"""GPU figures of issue 7 (`python benchmarks/bench_gpu.py --out DIR`, on a machine with a CUDA GPU).

Two parts, both written to ``DIR``:

1. ``gpu_variants.md`` (with ``--variants``): mfnet3d alone in every precision and memory layout (fp32 / bf16 /
   fp16 autocast, NCDHW / channels-last-3d), inference and training, timed with CUDA events, to pick the GPU
   fast path.
2. ``gpu_infer.json`` / ``gpu_train.json`` / ``gpu.md``: the side-by-side benchmark of ``mfnet.tools.bench``
   (interleaved rounds) of mfnet3d against torchvision's r3d_18, r2plus1d_18 and mc3_18 on the same clips, with
   the fast path (fp16 autocast, the layout of ``preferred_memory_format``; for mfnet3d also compiled) and
   without it, and the check of the issue's GPU target: a clips/s ratio of at least half the multiply-add ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from mfnet.tools.bench import BenchReport, Candidate, build_benchmark_model, format_table, run_benchmark

PEERS = ("r3d_18", "r2plus1d_18", "mc3_18")


def time_cuda(step: Callable[[], None], *, warmup: int = 3, repeats: int = 10) -> float:
    """Median milliseconds of ``step`` over ``repeats`` runs, timed with CUDA events after ``warmup`` runs."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def variant_step(model: nn.Module, x: torch.Tensor, *, dtype: torch.dtype | None, train: bool) -> Callable[[], None]:
    """One inference or SGD training step of ``model`` on ``x`` under autocast to ``dtype`` (None: fp32)."""
    labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9) if train else None
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    model.train(train)

    def step() -> None:
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            if not train:
                with torch.inference_mode():
                    model(x)
                return
            loss = nn.functional.cross_entropy(model(x), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def variants(out: Path, *, batch_infer: int, batch_train: int) -> str:
    lines = ["| mode | batch | input | precision | layout | ms/step | clips/s |", "|---|---|---|---|---|---|---|"]
    for train, batch, size in ((False, batch_infer, 224), (True, batch_train, 224), (True, batch_train * 4, 112)):
        for dtype in (None, torch.bfloat16, torch.float16):
            for channels_last in (False, True):
                model = build_benchmark_model("mfnet3d").cuda()
                x = torch.randn(batch, 3, 16, size, size, device="cuda")
                if channels_last:
                    model = model.to(memory_format=torch.channels_last_3d)
                    x = x.contiguous(memory_format=torch.channels_last_3d)
                ms = time_cuda(variant_step(model, x, dtype=dtype, train=train))
                name = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
                layout = "channels-last-3d" if channels_last else "NCDHW"
                mode = "train" if train else "infer"
                lines.append(
                    f"| {mode} | {batch} | 16x{size}x{size} | {name} | {layout} | {ms:.1f} | {batch * 1000 / ms:.0f} |"
                )
                print(lines[-1], flush=True)
                del model, x
                torch.cuda.empty_cache()
    text = "\n".join(lines) + "\n"
    (out / "gpu_variants.md").write_text(text)
    return text


def mac_ratio_lines(report: BenchReport, size: str) -> list[str]:
    """For each peer: its clips/s ratio to mfnet3d (both on the fast path) against half their MAC ratio."""
    mf = report.row(f"mfnet3d@{size}")
    lines = []
    for peer in PEERS:
        row = report.row(f"{peer}@{size}")
        speed = mf.clips_per_s / row.clips_per_s
        macs = row.macs_per_clip / mf.macs_per_clip
        verdict = "met" if speed >= macs / 2 else "NOT met"
        lines.append(
            f"- mfnet3d vs {peer}: {speed:.2f}x clips/s, MAC ratio {macs:.1f}x (target {macs / 2:.1f}x: {verdict})"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/gpu", help="output folder")
    parser.add_argument("--batch-infer", type=int, default=16)
    parser.add_argument("--batch-train", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--variants", action="store_true", help="also time mfnet3d in every precision and layout")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu: skipped, no CUDA GPU is visible (this benchmark is for a GPU machine)")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.backends.cudnn.benchmark = True
    start = time.perf_counter()
    sections = [
        f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN "
        f"{torch.backends.cudnn.version()}, cudnn.benchmark on"
    ]
    if args.variants:
        sections.append(
            "## mfnet3d variants (CUDA events, median of 10)\n\n"
            + variants(out, batch_infer=args.batch_infer, batch_train=args.batch_train)
        )
    size = "16x224x224"
    checks = []
    for mode, batch in (("infer", args.batch_infer), ("train", args.batch_train)):
        candidates = [
            Candidate(name, (16, 224, 224), engine) for name in ("mfnet3d", *PEERS) for engine in ("fast", "plain")
        ]
        if mode == "infer":
            candidates.insert(1, Candidate("mfnet3d", (16, 224, 224), "compile"))
        report = run_benchmark(candidates, mode=mode, batch=batch, device="cuda", warmup=3, repeats=args.repeats)
        (out / f"gpu_{mode}.json").write_text(json.dumps(report.to_dict(), indent=1))
        sections.append(f"## {mode}, batch {batch}\n\n" + format_table(report))
        checks += [f"{mode}:", *mac_ratio_lines(report, size)]
        print(sections[-1], flush=True)
    sections.append("## GPU target (clips/s ratio >= half the MAC ratio, fast path on both)\n\n" + "\n".join(checks))
    sections.append(f"total time {time.perf_counter() - start:.0f} s")
    text = "\n\n".join(sections) + "\n"
    (out / "gpu.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
