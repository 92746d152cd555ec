"""``mfnet demo`` (train 3D MF-Net and its 2D twin on synthetic motion videos) and ``mfnet data make-motion``."""

from __future__ import annotations

import argparse
import logging
import sys

from mfnet.cli._common import fraction, positive_float, positive_int, print_json
from mfnet.data.motion import MotionSpec, make_motion_dataset
from mfnet.tools.demo import DEFAULT_MINUTES, DemoConfig, format_table, run_demo


def register(commands: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    """Adds ``mfnet demo`` and ``mfnet data make-motion`` to the ``mfnet`` parser."""

    demo = commands.add_parser(
        "demo",
        help="offline demo: train 3D MF-Net and the frame-based 2D baseline on synthetic motion videos (CPU, minutes)",
        description="Generates a dataset whose 8 classes differ only by motion (left/right, up/down, clockwise/"
        "anticlockwise, grow/shrink), trains mfnet3d and its 2D twin (applied frame by frame) on the same 8x32x32 "
        "clips and budget, evaluates both at video level and writes a report with figures. About 10 minutes on 2 "
        "CPU cores by default; run it again to resume an interrupted run or reuse the data.",
    )
    demo.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    demo.add_argument(
        "--minutes",
        type=positive_float,
        default=DEFAULT_MINUTES,
        help=f"time budget the training is sized for; epochs scale with it (default: {DEFAULT_MINUTES:g})",
    )
    demo.add_argument("--data", default=None, help="motion dataset folder (generated if missing; default: OUT/data)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data and the training (default: 0)")
    demo.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    demo.add_argument("--json", action="store_true", help="print the results as one JSON object")
    demo.set_defaults(handler=_demo)

    make = groups["data"].add_parser(
        "make-motion",
        help="write the synthetic motion dataset (H.264 videos + UCF-101-style split lists)",
        description="Writes videos of 8 motion classes (move_right/left, move_down/up, rotate_clockwise/"
        "anticlockwise, grow/shrink) with random appearance shared by all classes, plus classInd.txt, "
        "trainlist01.txt and testlist01.txt. Load it with --format ucf101 --annotations DIR --root DIR.",
    )
    make.add_argument("--out", required=True, help="dataset folder")
    make.add_argument("--videos-per-class", type=positive_int, default=60, help="videos per class (default: 60)")
    make.add_argument("--test-fraction", type=fraction, default=0.25, help="share of test videos (default: 0.25)")
    make.add_argument("--frames", type=positive_int, default=32, help="frames per video (default: 32)")
    make.add_argument("--size", type=positive_int, default=64, help="height and width in pixels (default: 64)")
    make.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    make.add_argument("--overwrite", action="store_true", help="regenerate even if the folder holds a dataset")
    make.add_argument("--json", action="store_true", help="print a JSON summary")
    make.set_defaults(handler=_make_motion)


def _make_motion(args: argparse.Namespace) -> int:

    spec = MotionSpec(
        videos_per_class=args.videos_per_class,
        test_fraction=args.test_fraction,
        num_frames=args.frames,
        size=args.size,
        seed=args.seed,
    )
    data = make_motion_dataset(args.out, spec, overwrite=args.overwrite)
    summary = {
        "root": str(data.root),
        "classes": list(data.classes),
        "train_videos": data.num_train,
        "test_videos": data.num_test,
        "reused": data.reused,
    }
    if args.json:
        print_json(summary)
    else:
        state = "kept the existing" if data.reused else "wrote"
        print(f"{state} motion dataset in {data.root}: {data.num_train} training and {data.num_test} test videos")
        print(f"load it with: --format ucf101 --annotations {data.root} --root {data.root}")
    return 0


def _demo(args: argparse.Namespace) -> int:

    config = DemoConfig()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    print(
        f"mfnet demo: 3D MF-Net vs its 2D twin on {config.clip_length}x{config.crop_size}x{config.crop_size} clips "
        "(32x32 is the smallest size all of MF-Net's strides take, and it keeps training to minutes on a CPU)",
        file=sys.stderr,
    )
    result = run_demo(
        args.out, data_dir=args.data, minutes=args.minutes, seed=args.seed, config=config, device=args.device
    )
    if args.json:
        print_json(
            {
                "out": str(result.out_dir),
                "report": str(result.report),
                "figure": str(result.figure),
                "wall_s": result.wall_s,
                "input_shape": list(result.input_shape),
                "train_videos": result.data.num_train,
                "test_videos": result.data.num_test,
                "models": {
                    o.model: {
                        "video_top1": o.video_top1,
                        "clip_top1": o.clip_top1,
                        "pair_top1": o.pair_top1,
                        "direction_top1": o.direction_top1,
                        "params": o.params,
                        "macs_per_clip": o.macs_per_clip,
                        "train_clips_per_s": o.train_clips_per_s,
                        "train_s": o.train_s,
                        "epochs": o.epochs,
                    }
                    for o in result.models
                },
            }
        )
        return 0
    print()
    print(
        f"{result.data.num_train} training / {result.data.num_test} test videos, clips "
        f"{'x'.join(map(str, result.input_shape[2:]))}, {result.models[0].epochs} epochs per model"
    )
    for line in format_table(result.models):
        print(line.replace("**", ""))
    print()
    print(f"report: {result.report}   figure: {result.figure}   ({result.wall_s / 60:.1f} min)")
    return 0
