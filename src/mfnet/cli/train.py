"""``mfnet train``, ``mfnet eval``, ``mfnet recipes`` and ``mfnet report``: parsing and printing only.

The work is done by ``mfnet.engine.train.train``, ``mfnet.engine.evaluate.evaluate`` and
``mfnet.tools.report.write_report``. Under ``torchrun`` the same commands run distributed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from mfnet.cli._common import non_negative_int, parse_resize, positive_int, print_json
from mfnet.engine.distributed import cleanup, init_distributed, is_main_process
from mfnet.engine.evaluate import average_splits, evaluate, weights_per_split
from mfnet.engine.inputs import DataSpec, data_format_beside, resolve_data_spec, saved_data_spec
from mfnet.engine.recipes import RECIPES, apply_overrides, describe, resolve_recipe
from mfnet.engine.train import recipe_of_run, train
from mfnet.errors import MfnetError
from mfnet.tools.report import write_figures, write_report


def register(commands: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    """Adds ``train``, ``eval``, ``recipes`` and ``report`` to the ``mfnet`` parser."""
    p = commands.add_parser(
        "train",
        help="train a model with a recipe (also under torchrun)",
        description="Train a model with a named recipe. Run it under `torchrun --nproc-per-node N` for distributed "
        "data parallel training. RUN_DIR receives checkpoints, metrics.jsonl, TensorBoard logs, model.pt and figures.",
    )
    p.add_argument(
        "--recipe",
        help="a recipe name (see `mfnet recipes`) or a recipe file (.json/.yaml, e.g. a run's recipe.json); not "
        "needed with --resume",
    )
    _add_data_args(p)
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field, e.g. --set epochs=3 --set batch_size=16 (repeatable)",
    )
    p.add_argument("--out", type=Path, help="the run directory to create")
    p.add_argument(
        "--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR from its newest complete checkpoint"
    )
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--amp", action="store_true", help="mixed precision on GPU (bf16; --set amp_dtype=fp16)")
    p.add_argument(
        "--max-steps", type=positive_int, help="stop after this many optimizer steps in total (and checkpoint)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-figures", action="store_true", help="do not draw the figures at the end")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(handler=_train)

    p = commands.add_parser(
        "eval",
        help="evaluate a checkpoint: clip- and video-level accuracy",
        description="Evaluate a checkpoint with K clips x 1 or 3 crops per video: clip-level and video-level "
        "top-1/top-5 (softmax averaged over a video's clips and crops), mean class accuracy, per-class accuracy, "
        "confusion matrix and per-video predictions. With --splits 1,2,3 it reports the 3-split average.",
    )
    p.add_argument(
        "--weights",
        nargs="+",
        required=True,
        type=str,
        help="checkpoint(s); with --splits give one per split, or one path containing {split}",
    )
    _add_data_args(p)
    p.add_argument("--splits", help="evaluate splits, e.g. 1,2,3, and report their average (UCF-101/HMDB51)")
    p.add_argument("--subset", help="part of the annotations to evaluate (default: test, else val)")
    p.add_argument("--clips", type=positive_int, default=10, help="clips per video (default 10)")
    p.add_argument("--crops", type=int, choices=(1, 3), default=1, help="crops per clip (default 1)")
    p.add_argument(
        "--random-crop",
        action="store_true",
        help="one crop per clip at a seeded random position instead of the centre (the authors' test script)",
    )
    p.add_argument("--clip-length", type=positive_int, help="frames per clip (default: the checkpoint's clip spec)")
    p.add_argument("--frame-interval", type=positive_int, help="frame interval (default: the checkpoint's)")
    p.add_argument("--crop-size", type=positive_int, help="crop size (default: the checkpoint's)")
    p.add_argument(
        "--resize",
        type=parse_resize,
        metavar="N|WxH",
        help="N: short side before cropping, aspect kept; WxH (e.g. 256x256): every frame resized to that size, "
        "aspect not kept (the authors' protocol). Default: the checkpoint's clip spec; 256x256 for the authors' files",
    )
    p.add_argument("--batch-size", type=positive_int, default=8, help="clips per batch and process (default 8)")
    p.add_argument("--workers", type=non_negative_int, default=2, help="data loader workers (default 2)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", type=Path, help="write metrics.json, predictions.csv/json and scores.pt here")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(handler=_eval)

    p = commands.add_parser("recipes", help="list the training recipes, or show one (recipes show NAME|FILE)")
    sub = p.add_subparsers(title="recipes commands", metavar="RECIPES_COMMAND")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(handler=_recipes_list)
    show = sub.add_parser(
        "show",
        help="print every field of a recipe (a name, or a .json/.yaml file such as a run's recipe.json)",
        description="Prints every field of a built-in recipe or a recipe file. `mfnet recipes show NAME --json > "
        "my.json`, edited, is a recipe file for `mfnet train --recipe my.json`; unknown fields are refused by name.",
    )
    show.add_argument("name", help="a recipe name or file")
    show.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="show the recipe with these overrides",
    )
    show.add_argument("--json", action="store_true", help="print it as JSON")
    show.set_defaults(handler=_recipes_show)

    p = commands.add_parser("report", help="redraw a run's figures and write report.md / report.html")
    p.add_argument("run_dir", type=Path, help="the run directory of `mfnet train`")
    p.add_argument(
        "--samples", type=positive_int, default=4, help="sample videos in the predictions figure (default 4)"
    )
    p.add_argument("--eval-dir", type=Path, help="an `mfnet eval --out` folder (default: RUN_DIR/eval)")
    p.add_argument(
        "--results",
        type=Path,
        action="append",
        default=[],
        metavar="CSV_OR_RUN_DIR",
        help="more rows for the accuracy-against-GFLOPs chart: another evaluated run directory, or a CSV with "
        "dataset,model,params_m,gflops,top1,top5,source (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print the written paths as JSON")
    p.set_defaults(handler=_report)


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--format",
        help="annotation format (ucf101, hmdb51, kinetics-csv, list, folder, image-folder, ...); default: the recipe's",
    )
    p.add_argument("--annotations", type=Path, help="annotation file or folder")
    p.add_argument("--val-annotations", type=Path, help="a separate annotation file for validation/testing")
    p.add_argument("--data", "--root", dest="root", type=Path, help="folder the video paths start from")
    p.add_argument("--split", type=int, choices=(1, 2, 3), help="UCF-101 / HMDB51 split")


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="mfnet: %(message)s", stream=sys.stderr)


def _train(args: argparse.Namespace) -> int:

    _setup_logging()
    if args.resume is not None:
        if args.out is not None and args.out != args.resume:
            raise MfnetError("--resume RUN_DIR continues that directory: leave out --out or give the same path")
        run_dir = args.resume
        recipe = apply_overrides(recipe_of_run(run_dir), args.overrides)
        saved = saved_data_spec(run_dir)
    else:
        if not args.recipe or args.out is None:
            raise MfnetError("give --recipe NAME|FILE and --out RUN_DIR (or --resume RUN_DIR); see `mfnet recipes`")
        run_dir = args.out
        recipe = resolve_recipe(args.recipe, args.overrides)
        saved = {}
    if args.amp:
        recipe = apply_overrides(recipe, {"amp": True})
    spec = resolve_data_spec(
        saved,
        recipe,
        format=args.format,
        annotations=args.annotations,
        root=args.root,
        split=args.split,
        val_annotations=args.val_annotations,
    )
    if spec.split is not None and spec.split != recipe.split:
        recipe = apply_overrides(recipe, {"split": spec.split})
    result = train(
        recipe,
        out_dir=run_dir,
        data=spec,
        resume=args.resume is not None,
        device=args.device,
        max_steps=args.max_steps,
        progress=not args.no_progress,
        on_finish=None if args.no_figures else write_figures,
    )
    if not is_main_process():
        return 0  # under torchrun only rank 0 reports
    out = {
        "run_dir": str(result.run_dir),
        "model": str(result.model_path) if result.model_path else None,
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "finished": result.finished,
        "epochs": result.epochs_done,
        "steps": result.steps,
        "metrics": result.metrics,
    }
    if args.json:
        print_json(out)
    else:
        state = "finished" if result.finished else "stopped"
        print(f"{state} after {result.epochs_done} epochs ({result.steps} steps); run directory {result.run_dir}")
        for key, value in result.metrics.items():
            if isinstance(value, float):
                print(f"  {key:<28} {value:.4f}")
        if result.model_path:
            print(f"model: {result.model_path}")
    return 0


def _eval(args: argparse.Namespace) -> int:

    _setup_logging()
    if args.annotations is None and args.root is None:
        raise MfnetError("say where the data is: --annotations FILE and/or --data ROOT (see `mfnet eval --help`)")
    fmt = args.format or data_format_beside(args.weights[0])
    if fmt is None:
        raise MfnetError("give the annotation format with --format (ucf101, hmdb51, kinetics-csv, list, folder, ...)")
    splits, weights = weights_per_split(args.weights, splits=args.splits, split=args.split)
    ctx = init_distributed(args.device)
    try:
        results = _eval_splits(args, ctx, fmt, splits, weights)
    finally:
        cleanup(ctx)
    if len(results) > 1 and ctx.is_main:
        avg = average_splits(results)
        if args.json:
            print_json({"average": avg})
        else:
            print(f"average of {len(results)} splits: {_describe(avg)}")
    return 0


def _eval_splits(args: argparse.Namespace, ctx: Any, fmt: str, splits: list[int | None], weights: list[str]) -> list:

    results = []
    for split, w in zip(splits, weights, strict=True):
        spec = DataSpec(
            format=fmt, annotations=args.annotations, root=args.root, split=split, val_annotations=args.val_annotations
        )
        out_dir = None
        if args.out is not None:
            out_dir = args.out / f"split{split}" if len(splits) > 1 else args.out
        result = evaluate(
            w,
            spec,
            clips=args.clips,
            crops=args.crops,
            random_crop=args.random_crop,
            subset=args.subset,
            clip_length=args.clip_length,
            frame_interval=args.frame_interval,
            crop_size=args.crop_size,
            resize=args.resize,
            batch_size=args.batch_size,
            num_workers=args.workers,
            out_dir=out_dir,
            progress=not args.no_progress,
            ctx=ctx,
        )
        results.append(result)
        summary = {"weights": w, "split": split, **result.summary()}
        if not ctx.is_main:
            continue
        if args.json:
            print_json({**summary, "per_class_accuracy": result.to_json()["per_class_accuracy"]})
        else:
            label = f"split {split}: " if split is not None else ""
            print(f"{label}{w}: {_describe(summary)}")
    return results


def _describe(s: dict) -> str:
    parts = [
        f"video top-1 {100 * s['video_top1']:.2f}%",
        f"top-5 {100 * s['video_top5']:.2f}%",
        f"clip top-1 {100 * s['clip_top1']:.2f}%",
        f"top-5 {100 * s['clip_top5']:.2f}%",
        f"mean class acc {100 * s['mean_class_accuracy']:.2f}%",
    ]
    if "videos" in s:
        parts.append(f"{s['videos']} videos, {s['clips']} clips")
    return ", ".join(parts)


def _recipes_list(args: argparse.Namespace) -> int:

    if args.json:
        print_json({name: r.description for name, r in RECIPES.items()})
        return 0
    width = max(len(n) for n in RECIPES)
    for name, recipe in RECIPES.items():
        print(f"{name:<{width}}  {recipe.description}")
    return 0


def _recipes_show(args: argparse.Namespace) -> int:

    recipe = resolve_recipe(args.name, args.overrides)
    if args.json:
        print_json({**recipe.to_dict(), "scaled_lr": recipe.scaled_lr()})
    else:
        print(describe(recipe))
    return 0


def _report(args: argparse.Namespace) -> int:

    paths = write_report(args.run_dir, samples=args.samples, eval_dir=args.eval_dir, results=args.results)
    if args.json:
        print_json({k: str(v) for k, v in paths.items()})
    else:
        for name, path in paths.items():
            print(f"{name:<18} {path}")
    return 0
