"""``mfnet data index`` and ``mfnet data check``: count a dataset's videos, and find the broken ones."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from mfnet.cli._common import positive_int, print_json
from mfnet.data.annotations import FORMATS, load_annotations
from mfnet.data.check import check_videos
from mfnet.errors import DataError

if TYPE_CHECKING:
    from mfnet.data.annotations import Annotations


def register(commands: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    """Adds ``data index`` and ``data check`` to the ``mfnet data`` group."""

    data = groups["data"]
    index = data.add_parser(
        "index",
        help="count a dataset's videos per subset and class, and list annotated videos missing on disk",
        description="Parses a dataset's annotations and counts its videos per subset and class.",
    )
    check = data.add_parser(
        "check",
        help="decode every video of a dataset and list unreadable and too-short ones",
        description="Decodes every video (in parallel) and lists the unreadable ones and those shorter than a clip. "
        "Exits 1 when it finds any, 0 when the dataset is clean.",
    )
    for parser in (index, check):
        formats = ", ".join(FORMATS)
        parser.add_argument("--format", required=True, choices=FORMATS, metavar="FORMAT", help=f"one of: {formats}")
        parser.add_argument("--annotations", metavar="PATH", help="annotation file or folder (not for folder formats)")
        parser.add_argument("--root", metavar="DIR", required=True, help="folder holding the videos")
        parser.add_argument(
            "--split", metavar="N", type=positive_int, help="official split 1-3 of ucf101/hmdb51 (default 1)"
        )
        parser.add_argument("--classes", metavar="FILE", help="file of class names fixing the label order")
        parser.add_argument("--json", action="store_true", help="print one JSON object")
    index.add_argument("--per-class", action="store_true", help="also print the count of every class")
    index.set_defaults(handler=_index)
    check.add_argument("--subset", metavar="NAME", help="check only this subset (train, val, test)")
    check.add_argument("--frames-per-clip", metavar="T", type=positive_int, default=16, help="clip length (default 16)")
    check.add_argument(
        "--interval", metavar="K", type=positive_int, default=2, help="frames between clip frames (default 2)"
    )
    check.add_argument(
        "--workers", metavar="N", type=positive_int, help="decoding processes (default: CPU count, at most 8)"
    )
    check.add_argument("--quick", action="store_true", help="decode 3 frames per video instead of all")
    check.set_defaults(handler=_check)


def _load(args: argparse.Namespace) -> Annotations:

    return load_annotations(args.format, args.annotations, args.root, split=args.split, classes=args.classes)


def _index(args: argparse.Namespace) -> int:
    annotations = _load(args)
    counts = annotations.counts()
    missing_by_subset: dict[str, int] = {}
    for record in annotations.missing:
        missing_by_subset[record.subset] = missing_by_subset.get(record.subset, 0) + 1
    if args.json:
        print_json(
            {
                "format": args.format,
                "root": args.root,
                "split": args.split,
                "num_classes": len(annotations.classes),
                "classes": annotations.classes,
                "subsets": {
                    name: {
                        "videos": sum(counts.get(name, {}).values()),
                        "missing": missing_by_subset.get(name, 0),
                        "per_class": counts.get(name, {}),
                    }
                    for name in annotations.subsets
                },
                "missing": [str(r.path) for r in annotations.missing],
            }
        )
        return 0
    split = f" split {args.split}" if args.split else ""
    print(f"{args.format}{split} under {args.root}: {len(annotations.classes)} classes")
    for name in annotations.subsets:
        per_class = counts.get(name, {})
        videos = sum(per_class.values())
        spread = f", {min(per_class.values())}-{max(per_class.values())} per class" if per_class else ""
        print(f"  {name}: {videos} videos{spread}, {missing_by_subset.get(name, 0)} missing on disk")
        if args.per_class:
            for class_name, count in per_class.items():
                print(f"    {count:6d}  {class_name}")
    if annotations.missing:
        print(f"missing: {len(annotations.missing)} annotated videos are not under {args.root}, e.g.")
        for record in annotations.missing[:5]:
            print(f"  {record.path}")
    return 0


def _check(args: argparse.Namespace) -> int:

    annotations = _load(args)
    records = annotations.subset(args.subset) if args.subset else annotations.records
    if not records:
        raise DataError(f"no videos to check (subset {args.subset!r}): check --subset, --root and --annotations")
    span = (args.frames_per_clip - 1) * args.interval + 1
    results = check_videos([r.path for r in records], workers=args.workers, full=not args.quick)
    unreadable = [r for r in results if r.error]
    short = [r for r in results if not r.error and r.frames < span]
    if args.json:
        print_json(
            {
                "checked": len(results),
                "ok": len(results) - len(unreadable) - len(short),
                "clip_span_frames": span,
                "missing": len(annotations.missing),
                "unreadable": [{"path": str(r.path), "error": r.error} for r in unreadable],
                "too_short": [{"path": str(r.path), "frames": r.frames} for r in short],
            }
        )
    else:
        print(f"checked {len(results)} videos: {len(results) - len(unreadable) - len(short)} ok")
        print(f"unreadable: {len(unreadable)}")
        for r in unreadable:
            print(f"  {r.path}: {r.error}")
        print(f"shorter than a clip ({span} frames; they are looped when sampled): {len(short)}")
        for r in short:
            print(f"  {r.path}: {r.frames} frames")
        if annotations.missing:
            print(f"missing on disk (not checked): {len(annotations.missing)}")
    return 1 if unreadable or short else 0
