"""``mfnet bench``: time mfnet models against torchvision's video networks, side by side."""

from __future__ import annotations

import argparse
import sys

from mfnet.cli._common import non_negative_int, parse_shape, positive_int, print_json
from mfnet.errors import MfnetError
from mfnet.tools.bench import format_table, parse_candidates, plot_efficiency, run_benchmark

DEFAULT_MODELS = "mfnet3d,r3d_18,mc3_18,r2plus1d_18,s3d"


def register(commands: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    """Adds ``mfnet bench``."""
    parser = commands.add_parser(
        "bench",
        help="benchmark speed: mfnet models vs torchvision video networks (latency, clips/s, GMAC/s, memory)",
        description=(
            "Times every model in its own worker process (on CPU): warm-up, then interleaved rounds (one step "
            "of each model per round), reporting medians and spread. Peers come from torchvision with random "
            "weights. A model may carry its own clip size: --models mfnet3d@16x224x224,r3d_18@16x112x112."
        ),
    )
    parser.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated names (default: {DEFAULT_MODELS})")
    parser.add_argument("--input", default=None, help="clip size TxHxW (default: 16x224x224 infer, 16x112x112 train)")
    parser.add_argument("--batch", type=positive_int, default=None, help="clips per step (default: 1 infer, 8 train)")
    parser.add_argument("--mode", choices=("infer", "train"), default="infer", help="what a step is (default: infer)")
    parser.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: PyTorch's setting)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default: cpu)")
    parser.add_argument(
        "--fast",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="use the fast path (optimize_for_inference / channels-last training; AMP on CUDA) (default: on)",
    )
    parser.add_argument("--plain", action="store_true", help="also time every model without the fast path")
    parser.add_argument("--onnx", action="store_true", help="also time our ONNX export in ONNX Runtime (infer)")
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile fast path (infer)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="interleaved timed rounds (default: 5)")
    parser.add_argument("--warmup", type=non_negative_int, default=2, help="untimed steps per model first (default: 2)")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory step")
    parser.add_argument(
        "--same-process",
        dest="isolate",
        action="store_false",
        help="time every model in this process instead of one worker process per model (CPU)",
    )
    parser.add_argument("--plot", default=None, metavar="PNG", help="write clips/s vs MACs per clip to this PNG")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``mfnet bench``."""

    train = args.mode == "train"
    size = parse_shape(args.input or ("16x112x112" if train else "16x224x224"))
    if len(size) != 3:
        raise MfnetError(f"--input {args.input!r} must be a clip size TxHxW, e.g. 16x224x224")
    batch = args.batch or (8 if train else 1)
    if batch <= 0 or args.repeats <= 0 or args.warmup < 0 or (args.threads is not None and args.threads <= 0):
        raise MfnetError("--batch, --repeats and --threads must be positive and --warmup not negative")
    engines = ["fast" if args.fast else "plain"]
    if args.plain and args.fast:
        engines.append("plain")
    if args.compile:
        engines.append("compile")
    if args.onnx:
        engines.append("onnxruntime")
    candidates = parse_candidates(args.models, default_size=size, engines=engines)
    report = run_benchmark(
        candidates,
        mode=args.mode,
        batch=batch,
        device=args.device,
        threads=args.threads,
        warmup=args.warmup,
        repeats=args.repeats,
        memory=args.memory,
        isolate=args.isolate,
    )
    if args.plot:
        plot_efficiency(report, args.plot)
    if args.json:
        print_json(report.to_dict())
    else:
        print(format_table(report))
        if args.plot:
            print(f"plot: {args.plot}", file=sys.stderr)
    return 0
