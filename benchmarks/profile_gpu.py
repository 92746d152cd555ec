"""Where mfnet3d's time goes on a CUDA GPU (`python benchmarks/profile_gpu.py --out DIR`).

Writes ``DIR/profile_gpu.md``: the top CUDA kernels of an inference and a training step (torch.profiler), the
clips/s of mfnet3d and r3d_18 over batch sizes, ``torch.compile`` variants, and single grouped convolutions
of conv2/conv3 against their dense (block-diagonal) equivalents.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from bench_gpu import time_cuda, variant_step  # run from the repository root: benchmarks/ is on sys.path
from torch import nn
from torch.profiler import ProfilerActivity, profile

from mfnet.fastpath.fold import fold_batchnorm
from mfnet.tools.bench import build_benchmark_model


def top_kernels(step, *, rows: int = 18) -> str:
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=90)


@torch.inference_mode()
def conv_times(c: int, t: int, hw: int, k: tuple[int, int, int], *, channels_last: bool) -> tuple[float, ...]:
    """Milliseconds of one 16-group convolution in fp16, its dense twin in fp16, and the grouped one in fp32."""
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    x = torch.randn(16, c, t, hw, hw, device="cuda").contiguous(memory_format=fmt)
    pad = tuple(s // 2 for s in k)
    grouped = nn.Conv3d(c, c, k, padding=pad, groups=16, bias=False).cuda().to(memory_format=fmt)
    dense = nn.Conv3d(c, c, k, padding=pad, bias=False).cuda().to(memory_format=fmt).half()
    g32 = time_cuda(lambda: grouped(x), repeats=20)
    grouped, xh = grouped.half(), x.half()
    return time_cuda(lambda: grouped(xh), repeats=20), time_cuda(lambda: dense(xh), repeats=20), g32


def model_and_input(name: str, batch: int, size: int, *, channels_last: bool, fold: bool = False):
    model = build_benchmark_model(name).cuda()
    if fold:
        model.eval()
        fold_batchnorm(model)
    x = torch.randn(batch, 3, 16, size, size, device="cuda")
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return model, x


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/gpu")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.backends.cudnn.benchmark = True
    report = []

    def emit(text: str) -> None:
        print(text, flush=True)
        report.append(text)

    half = torch.float16
    # 1. single convolutions: grouped (as in MF-Net) against a dense conv of the same shape
    emit("## single convolutions, batch 16, fp16 (ms)\n")
    emit("| conv | input | layout | grouped | dense | grouped fp32 |\n|---|---|---|---|---|---|")
    for label, c, t, hw, k in (
        ("conv2 3x3x3", 96, 8, 56, (3, 3, 3)),
        ("conv2 1x3x3", 96, 8, 56, (1, 3, 3)),
        ("conv3 3x3x3", 192, 8, 28, (3, 3, 3)),
        ("conv4 3x3x3", 384, 8, 14, (3, 3, 3)),
    ):
        for cl in (False, True):
            g16, d16, g32 = conv_times(c, t, hw, k, channels_last=cl)
            emit(f"| {label} | {c}x{t}x{hw}x{hw} | {'CL' if cl else 'NCDHW'} | {g16:.2f} | {d16:.2f} | {g32:.2f} |")

    # 2. batch sizes
    emit("\n## clips/s over batch size, inference fp16 autocast, 16x224x224\n")
    emit("| batch | mfnet3d NCDHW | mfnet3d CL | r3d_18 CL |\n|---|---|---|---|")
    for batch in (1, 4, 16, 32, 64):
        cells = []
        for name, cl in (("mfnet3d", False), ("mfnet3d", True), ("r3d_18", True)):
            model, x = model_and_input(name, batch, 224, channels_last=cl, fold=True)
            ms = time_cuda(variant_step(model, x, dtype=half, train=False))
            cells.append(f"{batch * 1000 / ms:.0f}")
            del model, x
        emit(f"| {batch} | " + " | ".join(cells) + " |")

    # 3. torch.compile
    emit("\n## torch.compile, mfnet3d inference batch 16, fp16 autocast, NCDHW, BN folded\n")
    for mode in ("default", "reduce-overhead"):
        model, x = model_and_input("mfnet3d", 16, 224, channels_last=False, fold=True)
        start = time.perf_counter()
        compiled = torch.compile(model, mode=mode)
        step = variant_step(compiled, x, dtype=half, train=False)
        step()
        torch.cuda.synchronize()
        compile_s = time.perf_counter() - start
        ms = time_cuda(step, repeats=20)
        emit(f"- {mode}: {ms:.1f} ms ({16000 / ms:.0f} clips/s), compile {compile_s:.0f} s")
        del model, compiled
        torch._dynamo.reset()

    # 4. profiles
    for title, train, cl, batch in (
        ("inference fp16 NCDHW", False, False, 16),
        ("training fp16 NCDHW", True, False, 8),
        ("training fp16 CL", True, True, 8),
    ):
        model, x = model_and_input("mfnet3d", batch, 224, channels_last=cl, fold=not train)
        emit(f"\n## top kernels: {title}, batch {batch}, 3 steps\n\n```")
        emit(top_kernels(variant_step(model, x, dtype=half, train=train)))
        emit("```")
        del model, x
    (out / "profile_gpu.md").write_text("\n".join(report) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
