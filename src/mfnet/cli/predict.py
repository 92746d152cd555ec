"""``mfnet predict``, ``mfnet features`` and ``mfnet export``: use a trained model on videos, and ship it.

Argument parsing and printing only; the work is done by ``mfnet.engine.predictor`` (``Predictor``,
``load_model``) and ``mfnet.tools.export``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import save_file
from tqdm.auto import tqdm

from mfnet.cli._common import non_negative_int, parse_resize, parse_shape, positive_float, positive_int, print_json
from mfnet.engine.input_spec import apply_overrides as spec_overrides
from mfnet.engine.manifest import entries_from_paths, expand_inputs, read_manifest
from mfnet.engine.predictor import EXPORTED_SUFFIXES, Predictor, clip_spec_for, load_model
from mfnet.engine.scaleout import run_job, run_settings
from mfnet.engine.tables import JobOptions
from mfnet.errors import MfnetError
from mfnet.labels import class_names_for
from mfnet.tools.export import DEFAULT_TOLERANCE, export_model
from mfnet.tools.timeline import plot_timeline


def register(commands: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    """Adds ``predict``, ``features`` and ``export``."""
    p = commands.add_parser(
        "predict",
        help="label videos (files, folders, globs) with a trained model, or scan a long video in windows",
        description="Runs --clips evenly spread clips of each video through the model and prints the top classes "
        "of the averaged probabilities. With --window, predicts consecutive windows of each video instead "
        "(a timeline). --weights may be a checkpoint or an exported .onnx / .pt2 model. The exit status is 1 "
        "if any video failed to decode (the others are still predicted). With --out DIR the top classes go to "
        "a folder of Parquet shards instead (resumable with --resume; --engine ray runs the job on Ray).",
    )
    _add_inputs(p)
    p.add_argument("--labels", default=None, help="class names: kinetics400, ucf101, hmdb51 or a text file")
    p.add_argument("--topk", type=positive_int, default=5, help="classes shown per video (default 5)")
    p.add_argument(
        "--clips",
        type=positive_int,
        default=None,
        help="clips per video (default 10), or per window with --window (default 3)",
    )
    p.add_argument(
        "--window", type=positive_float, default=None, metavar="SECONDS", help="predict windows of this length"
    )
    p.add_argument(
        "--stride", type=positive_float, default=None, metavar="SECONDS", help="seconds between windows (--window)"
    )
    p.add_argument(
        "--plot",
        default=None,
        metavar="PNG_OR_DIR",
        help="with --window: write the timeline plot (a .png, or a folder)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per video")
    p.add_argument("--out", default=None, metavar="DIR", help="write Parquet shards of results to this folder")
    _add_clip_options(p)
    _add_scaleout_options(p)
    p.set_defaults(handler=_predict)

    p = commands.add_parser(
        "features",
        help="write pooled clip or video embeddings of videos to .npy or .safetensors",
        description="Writes the pooled embeddings (forward_features + global average pooling, before the "
        "classifier) of --clips clips per video: one row per video (mean over its clips) or, with --per-clip, "
        "one row per clip. A .npy file gets an index FILE.json beside it; a .safetensors file holds the index. "
        "Any other --out is a folder of Parquet shards (resumable with --resume; --engine ray runs the job on Ray).",
    )
    _add_inputs(p)
    p.add_argument("--out", required=True, help="output file, .npy or .safetensors, or a folder for Parquet shards")
    p.add_argument("--clips", type=positive_int, default=10, help="clips per video (default 10)")
    p.add_argument("--per-clip", action="store_true", help="one row per clip instead of one per video")
    _add_clip_options(p)
    _add_scaleout_options(p)
    p.set_defaults(handler=_features)

    p = commands.add_parser(
        "export",
        help="export a checkpoint to ONNX or torch.export and verify the result",
        description="Exports the inference model (eval mode, BatchNorms folded into the convolution before them "
        "where possible), then runs the exported file (ONNX Runtime, or torch.export.load) and PyTorch on the same "
        "random clip and prints the largest absolute difference of the logits; the command fails (exit 1) above "
        "--tolerance.",
    )
    p.add_argument("--weights", required=True, help="checkpoint to export (a path or a registered name)")
    p.add_argument("--model", default=None, help="model name (default: the checkpoint's, else mfnet3d)")
    p.add_argument("--format", choices=("onnx", "torch-export"), default="onnx", help="artifact format (default onnx)")
    p.add_argument("--out", required=True, help="output file (.onnx, or .pt2 for torch-export)")
    p.add_argument(
        "--input",
        type=parse_shape,
        default=None,
        help="input shape NxCxTxHxW (default: 1x3xTxSxS of the checkpoint's clip spec, else 1x3x16x224x224)",
    )
    p.add_argument("--dynamic-batch", action="store_true", help="let the exported graph take any batch size")
    p.add_argument("--labels", default=None, help="class names stored in the artifact (default: the checkpoint's)")
    p.add_argument(
        "--tolerance", type=positive_float, default=None, help="largest accepted logit difference (default 1e-3)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_export)


def _add_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="*", metavar="VIDEO", help="video files, folders (searched recursively) or globs")
    p.add_argument(
        "--weights",
        required=True,
        help="checkpoint (.pth/.pt/.safetensors), converted folder, exported .onnx / .pt2, or a registered name "
        "(mfnet weights list)",
    )
    p.add_argument("--model", default=None, help="model name (default: the checkpoint's, else mfnet3d)")


def _add_scaleout_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("manifests and large jobs (see docs/predict.md)")
    g.add_argument("--manifest", default=None, metavar="FILE", help="videos listed in a text/CSV file or annotations")
    g.add_argument(
        "--manifest-format",
        default="paths",
        metavar="FORMAT",
        help="paths (text or CSV, default) or an annotation format of `mfnet data` (ucf101, kinetics-csv, ...)",
    )
    g.add_argument("--root", default=None, metavar="DIR", help="folder relative manifest paths start from")
    g.add_argument("--split", type=int, default=None, help="official split of ucf101 / hmdb51 manifests")
    g.add_argument("--subset", default=None, help="only this subset of an annotation manifest (train, val, test)")
    g.add_argument("--resume", action="store_true", help="skip the videos already in the --out folder")
    g.add_argument(
        "--shard-size", type=positive_int, default=256, metavar="N", help="videos per Parquet shard (default 256)"
    )
    g.add_argument("--engine", choices=("local", "ray"), default="local", help="local (default) or ray")
    g.add_argument("--ray-address", default=None, help="Ray cluster to join (default: RAY_ADDRESS, else a local one)")
    g.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per Ray model actor (default 0: CPU)")
    g.add_argument(
        "--threads-per-worker",
        type=positive_int,
        default=None,
        help="PyTorch threads per CPU Ray model actor (default 1)",
    )


def _add_clip_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "clips and pre-processing (defaults: the clip spec stored in the checkpoint, else the paper's test setting)"
    )
    g.add_argument("--frames", type=positive_int, default=None, help="frames per clip (default: the checkpoint's)")
    g.add_argument(
        "--interval", type=positive_int, default=None, help="frames between clip frames (default: the checkpoint's)"
    )
    g.add_argument("--size", type=positive_int, default=None, help="crop size (default: the checkpoint's)")
    g.add_argument(
        "--resize",
        type=parse_resize,
        default=None,
        metavar="N|WxH",
        help="N: short side before cropping, aspect kept; WxH (e.g. 256x256): every frame resized to that size, "
        "aspect not kept (the authors' protocol). Default: the checkpoint's; with --size alone, scaled like the crop",
    )
    g.add_argument("--crops", type=int, choices=(1, 3), default=1, help="crops per clip: centre, or three (default 1)")
    g.add_argument("--normalization", default=None, help="mfnet, imagenet or none (default: the checkpoint's)")
    g.add_argument("--batch-size", type=positive_int, default=8, help="clips per forward pass (default 8)")
    g.add_argument(
        "--workers",
        type=non_negative_int,
        default=None,
        help="DataLoader worker processes (default 2); --engine ray: model actors",
    )
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")


# -- inputs -----------------------------------------------------------------------------------------------------


def input_paths(args: argparse.Namespace) -> list[Path]:
    """The videos named on the command line and in ``--manifest``, in order, no repeats."""
    return list(dict.fromkeys([*expand_inputs(args.inputs), *(e.path for e in _manifest_entries(args))]))


def _manifest_entries(args: argparse.Namespace) -> list[Any]:

    if not args.inputs and args.manifest is None:
        raise MfnetError("no videos given: name video files, folders or globs, or pass --manifest FILE")
    if args.manifest is None:
        if args.manifest_format != "paths" or args.subset is not None or args.split is not None:
            raise MfnetError("--manifest-format, --subset and --split describe a --manifest: pass one")
        return []
    return read_manifest(
        args.manifest, format=args.manifest_format, root=args.root, split=args.split, subset=args.subset
    )


def _no_folder_options(args: argparse.Namespace) -> None:
    if args.resume or args.engine != "local":
        raise MfnetError("--resume and --engine ray write a folder of shards: pass --out DIR")


def run_sharded(args: argparse.Namespace, task: str) -> int:
    """``predict`` / ``features`` into a folder of Parquet shards, on the local or the Ray engine."""

    if task == "predict" and args.window is not None:
        raise MfnetError("--window gives timelines, which are not written as shards: drop --out")
    entries = list(
        {e.video_id: e for e in [*entries_from_paths(expand_inputs(args.inputs)), *_manifest_entries(args)]}.values()
    )
    loaded = load_model(args.weights, model_name=args.model)
    if task == "features" and loaded.exported:
        raise MfnetError(f"{args.weights} is an exported graph that gives logits only: pass the PyTorch checkpoint")
    if args.engine == "ray" and loaded.exported:
        raise MfnetError(f"--engine ray runs PyTorch checkpoints: pass the checkpoint {args.weights} was exported from")
    num_clips = (10 if args.clips is None else args.clips) if task == "predict" else args.clips
    predictor = _predictor(args, loaded, num_clips)
    options = JobOptions(
        task=task,
        topk=args.topk if task == "predict" else 5,
        classes=class_names_for(args.labels, loaded.meta) if task == "predict" else None,
        per_clip=bool(getattr(args, "per_clip", False)),
    )
    run = run_settings(predictor, options, model=loaded.meta.get("model"), weights=Path(args.weights).name)
    ray_options = {
        "address": args.ray_address,
        "workers": 1 if args.workers is None else args.workers,
        "gpus_per_worker": args.gpus_per_worker,
        "threads_per_worker": args.threads_per_worker,
        "progress_bars": False,  # the command shows its own bar over videos
    }
    summary = run_job(
        entries,
        predictor,
        options,
        args.out,
        run=run,
        resume=args.resume,
        engine=args.engine,
        shard_size=args.shard_size,
        ray_options=ray_options if args.engine == "ray" else None,
        progress=len(entries) > 1,
    )
    for failure in summary.extra.get("first_errors", []):
        _fail_line(Path(failure["video_id"]), failure["error"])
    if getattr(args, "json", False):
        print_json(summary.to_dict())
    else:
        print(
            f"{summary.done} done, {summary.failed} failed, {summary.skipped} skipped of {summary.videos} videos "
            f"({summary.videos_per_s:.2f} videos/s, {args.engine} engine); results in {args.out} "
            f"({summary.folder_ok} ok, {summary.folder_failed} failed in all)"
        )
    return 1 if summary.folder_failed else 0


def _predictor(args: argparse.Namespace, loaded: Any, num_clips: int) -> Any:

    if num_clips <= 0 or args.batch_size <= 0 or (args.workers or 0) < 0:
        raise MfnetError("--clips and --batch-size must be positive, --workers >= 0")
    spec, resolved, fixed_batch = clip_spec_for(
        loaded,
        crops=args.crops,
        frames=args.frames,
        interval=args.interval,
        crop_size=args.size,
        resize=args.resize,
        normalization=args.normalization,
    )
    print(f"mfnet: {resolved.describe_geometry()}", file=sys.stderr)
    if resolved.note:
        print(f"mfnet: note: {resolved.note}", file=sys.stderr)
    try:
        spec.transform()
    except ValueError as err:
        raise MfnetError(f"{err}") from None
    return Predictor(
        loaded.model,
        spec=spec,
        num_clips=num_clips,
        batch_size=args.batch_size,
        num_workers=2 if args.workers is None else args.workers,
        device=args.device,
        fixed_batch=fixed_batch,
    )


def _name(classes: list[str] | None, index: int) -> str:
    if classes is None:
        return f"class {index}"
    if index >= len(classes):
        raise MfnetError(
            f"the model predicts class {index} but the label list has {len(classes)} names: pass the right --labels"
        )
    return classes[index]


def _topk_json(prediction: Any, k: int, classes: list[str] | None) -> list[dict[str, Any]]:
    return [{"label": _name(classes, i), "index": i, "prob": round(p, 6)} for i, p in prediction.topk(k)]


def _seconds(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 3)


def _fail_line(path: Path, error: str | None) -> None:

    tqdm.write(f"mfnet: failed: {path}: {error}", file=sys.stderr)  # keeps a progress bar intact


# -- predict ----------------------------------------------------------------------------------------------------


def _predict(args: argparse.Namespace) -> int:

    if args.topk <= 0:
        raise MfnetError("--topk must be positive")
    if args.window is None and (args.stride is not None or args.plot is not None):
        raise MfnetError("--stride and --plot need --window SECONDS")
    if args.out is not None:
        return run_sharded(args, "predict")
    _no_folder_options(args)
    paths = input_paths(args)
    loaded = load_model(args.weights, model_name=args.model)
    classes = class_names_for(args.labels, loaded.meta)
    if args.window is not None:
        return _predict_windows(args, loaded, paths, classes)
    predictor = _predictor(args, loaded, 10 if args.clips is None else args.clips)
    failed = 0
    for prediction in predictor.predict(paths, progress=len(paths) > 1):
        if not prediction.ok:
            failed += 1
            _fail_line(prediction.path, prediction.error)
            if args.json:
                print_json({"path": str(prediction.path), "error": prediction.error})
            continue
        if prediction.probs is not None and not bool(prediction.probs.isfinite().all()):
            raise MfnetError(f"the model gives NaN or infinite scores for {prediction.path}: its weights are broken")
        if args.json:
            record = {
                "path": str(prediction.path),
                "topk": _topk_json(prediction, args.topk, classes),
                "clips": prediction.clips,
                "seconds": _seconds(prediction.seconds),
            }
            tqdm.write(json.dumps(record), file=sys.stdout)
            continue
        lines = [f"{prediction.path}  ({prediction.clips} clips, {prediction.seconds:.1f} s)"]
        lines += [f"  {p:6.1%}  {_name(classes, i)}" for i, p in prediction.topk(args.topk)]
        tqdm.write("\n".join(lines), file=sys.stdout)
    return 1 if failed else 0


def _plot_path(plot: str | None, video: Path, many: bool) -> Path | None:
    if plot is None:
        return None
    target = Path(plot)
    if target.suffix.lower() == ".png" and not many:
        return target
    return target / f"{video.stem}.timeline.png"


def _predict_windows(args: argparse.Namespace, loaded: Any, paths: list[Path], classes: list[str] | None) -> int:

    predictor = _predictor(args, loaded, 3 if args.clips is None else args.clips)
    failed = 0
    for path in paths:
        timeline = predictor.timeline(path, window_s=args.window, stride_s=args.stride, progress=True)
        if timeline.error is not None:
            failed += 1
            _fail_line(path, timeline.error)
            if args.json:
                print_json({"path": str(path), "error": timeline.error})
            continue
        bad = [w for w in timeline.windows if not w.ok]
        failed += bool(bad)
        for w in bad:
            _fail_line(path, f"window at {w.start_s:.1f} s: {w.error}")
        plot = _plot_path(args.plot, path, len(paths) > 1)
        good = [w for w in timeline.windows if w.ok]
        if plot is not None and good:
            k = good[0].probs.numel()
            names = [_name(classes, i) for i in range(k)] if classes else [f"class {i}" for i in range(k)]
            starts = [w.start_s for w in good]
            plot_timeline(
                starts,
                [w.start_s + w.seconds for w in good],
                timeline.probs()[[w.ok for w in timeline.windows]],
                names,
                plot,
                title=path.name,
            )
        if args.json:
            print_json(
                {
                    "path": str(path),
                    "seconds": _seconds(timeline.duration_s),
                    "window": args.window,
                    "stride": args.stride or args.window,
                    "windows": [
                        {
                            "start": round(w.start_s, 3),
                            "end": round(w.start_s + w.seconds, 3),
                            "clips": w.clips,
                            "topk": _topk_json(w, args.topk, classes) if w.ok else [],
                            **({"error": w.error} if not w.ok else {}),
                        }
                        for w in timeline.windows
                    ],
                    "plot": str(plot) if plot is not None and good else None,
                }
            )
            continue
        print(f"{path}  ({timeline.duration_s:.1f} s, {len(timeline.windows)} windows of {args.window:g} s)")
        for w in good:
            top = ", ".join(f"{_name(classes, i)} {p:.1%}" for i, p in w.topk(args.topk))
            print(f"  {w.start_s:8.1f} - {w.start_s + w.seconds:8.1f} s  {top}")
        if plot is not None and good:
            print(f"  timeline plot: {plot}")
    return 1 if failed else 0


# -- features ---------------------------------------------------------------------------------------------------


def _features(args: argparse.Namespace) -> int:

    out = Path(args.out)
    if out.suffix.lower() not in (".npy", ".safetensors"):
        return run_sharded(args, "features")
    _no_folder_options(args)
    paths = input_paths(args)
    loaded = load_model(args.weights, model_name=args.model)
    if loaded.exported:
        raise MfnetError(f"{args.weights} is an exported graph that gives logits only: pass the PyTorch checkpoint")
    predictor = _predictor(args, loaded, args.clips)
    result = predictor.features(paths, per_clip=args.per_clip, progress=len(paths) > 1)
    for path, error in result.errors.items():
        _fail_line(Path(path), error)
    index = {
        "paths": [str(p) for p in result.paths],
        "video_index": result.video_index.tolist(),
        "clip_id": result.clip_id.tolist(),
        "per_clip": args.per_clip,
        "clips": args.clips,
        "model": loaded.meta.get("model"),
        "errors": result.errors,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    features = result.features.float().contiguous()
    if out.suffix.lower() == ".npy":
        np.save(out, features.numpy())
        index_path = out.with_suffix(".json")
        index_path.write_text(json.dumps(index, indent=1) + "\n")
        where = f"{out} (index {index_path})"
    else:
        tensors = {"features": features, "video_index": result.video_index, "clip_id": result.clip_id}
        save_file(tensors, str(out), metadata={"index": json.dumps(index)})
        where = str(out)
    rows, dim = features.shape
    print(f"wrote {rows} x {dim} {'clip' if args.per_clip else 'video'} embeddings of {len(paths)} videos to {where}")
    return 1 if result.errors else 0


# -- export -----------------------------------------------------------------------------------------------------


def _export(args: argparse.Namespace) -> int:

    if Path(args.weights).suffix.lower() in EXPORTED_SUFFIXES:
        raise MfnetError(f"{args.weights} is already exported: pass the PyTorch checkpoint it came from")
    loaded = load_model(args.weights, model_name=args.model)
    model, meta = loaded.model, dict(loaded.meta)
    resolved = loaded.input_spec
    video = getattr(model, "input_ndim", 5) == 5
    shape = args.input or (resolved.spec.input_shape(1) if video or resolved.spec.frames == 1 else (1, 3, 224, 224))
    allowed = (5,) if video else (4, 5)  # image models also take clips
    if len(shape) not in allowed or shape[1] != 3:
        raise MfnetError(f"--input {'x'.join(map(str, shape))} does not fit {meta.get('model')}: give NxCxTxHxW, C=3")
    spec = resolved.spec
    if args.input is not None:  # the graph's clip size is what the exported file will expect
        spec = spec_overrides(resolved, frames=shape[2] if len(shape) == 5 else None, crop_size=shape[-1]).spec
    if spec != resolved.spec:
        print(
            f"mfnet: note: --input {'x'.join(map(str, shape))} changes the clips of {resolved.source} "
            f"({resolved.spec.describe()}) to {spec.describe()}",
            file=sys.stderr,
        )
    elif resolved.note:
        print(f"mfnet: note: {resolved.note}", file=sys.stderr)
    meta["input_spec"] = spec.to_dict()
    if args.labels is not None:
        meta["classes"] = class_names_for(args.labels, meta)
    tolerance = DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
    result = export_model(
        model,
        args.out,
        format=args.format,
        input_shape=shape,
        dynamic_batch=args.dynamic_batch,
        meta=meta,
        tolerance=tolerance,
    )
    if args.json:
        print_json(
            {
                "path": str(result.path),
                "format": result.format,
                "model": meta.get("model"),
                "input": list(result.input_shape),
                "dynamic_batch": result.dynamic_batch,
                "folded_batchnorms": len(result.folded),
                "max_abs_diff": result.max_abs_diff,
                "tolerance": result.tolerance,
                "ok": result.ok,
            }
        )
    else:
        batch = "dynamic batch" if result.dynamic_batch else "fixed batch"
        size = "x".join(map(str, shape))
        print(f"exported {meta.get('model')} to {result.path} ({result.format}, input {size}, {batch})")
        print(f"folded {len(result.folded)} BatchNorm layers into the convolution before them")
        verdict = "OK" if result.ok else "FAILED"
        print(f"max abs difference vs PyTorch: {result.max_abs_diff:.3g} (tolerance {result.tolerance:g}): {verdict}")
    if not result.ok:
        print(
            f"mfnet: error: {result.path} differs from the PyTorch model by {result.max_abs_diff:.3g} > "
            f"{result.tolerance:g}: do not ship it; try the other --format",
            file=sys.stderr,
        )
        return 1
    return 0
