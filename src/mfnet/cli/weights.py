"""``mfnet weights``: list, inspect, download, import, convert and publish registered weights.

Argument parsing and printing only; the work is done by ``mfnet.models.weights`` (the records),
``mfnet.models.hub`` (cache, Hub, downloads, checksums) and ``mfnet.models.convert``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from mfnet.cli._common import print_json
from mfnet.errors import MfnetError
from mfnet.models.convert import convert_weights
from mfnet.models.hub import (
    cached_path,
    import_file,
    is_converted_folder,
    is_offline,
    resolve_record,
    resolve_weights,
    sha256_of,
)
from mfnet.models.weights import get_weights, list_weights


def register(commands: argparse._SubParsersAction, groups: dict[str, argparse._SubParsersAction]) -> None:
    """Adds ``weights list|info|download|import|convert|push``."""
    top = commands.add_parser(
        "weights",
        help="registered pretrained weights: list, info, download, import, convert, push",
        description="Pretrained weights by name (mfnet3d.k400_authors, ...): where they come from, what they expect, "
        "and a cache of checked files ($MFNET_HOME, else the platform cache folder; see docs/weights.md).",
    )
    top.set_defaults(handler=lambda args: _help(top))
    sub = top.add_subparsers(title="weights commands", metavar="WEIGHTS_COMMAND")

    p = sub.add_parser("list", help="the registered weights, with their input, size, accuracy and cache state")
    p.add_argument("--json", action="store_true", help="print one JSON object per record")
    p.set_defaults(handler=_list)

    p = sub.add_parser("info", help="everything a record holds, where its file is or would be cached")
    p.add_argument("name", help="a registered name (mfnet weights list)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_info)

    p = sub.add_parser(
        "download",
        help="fetch a record's file into the cache (Hub, then URLs) and check its sha256",
        description="Fetches the file (progress bar), checks its sha256 and caches it. Offline, or when no source "
        "works, says which file to put where.",
    )
    p.add_argument("name", help="a registered name")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=_download)

    p = sub.add_parser(
        "import",
        help="check a file you obtained elsewhere and cache it under a registered name",
        description="Checks PATH against the record (its sha256 when the record has one; the weights must load "
        "into the record's architecture) and copies it into the cache, so `--weights NAME` and "
        "`create_model(NAME, pretrained=True)` find it.",
    )
    p.add_argument("path", type=Path, help="the file (e.g. the authors' MFNet3D_Kinetics-400_72.8.pth)")
    p.add_argument("--as", dest="name", required=True, help="the registered name it is the file of")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=_import)

    p = sub.add_parser(
        "convert",
        help="turn a checkpoint into model.safetensors + config.json + a model card",
        description="Writes DIR/model.safetensors (with the clip spec), DIR/config.json (architecture, classes, clip "
        "spec, sha256) and DIR/README.md (a model card). `create_model(DIR)` and `--weights DIR` read it back; "
        "`mfnet weights push` uploads it.",
    )
    p.add_argument("path", help="a checkpoint file, or a registered name (its cached file)")
    p.add_argument("--out", type=Path, required=True, help="the folder to write")
    p.add_argument("--as", dest="name", default=None, help="the registered name the file is (default: PATH's name)")
    p.add_argument("--model", default=None, help="architecture when neither the file nor a record says it")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=_convert)

    p = sub.add_parser(
        "push",
        help="upload converted weights to a Hugging Face Hub repository",
        description="Uploads a folder written by `mfnet weights convert` (or converts the cached file of a "
        "registered name first) to the Hub model repository ORG/NAME, created if needed. Needs "
        "`pip install 'mfnet[hub]'` and a token (`hf auth login`).",
    )
    p.add_argument("source", help="a registered name or a converted folder")
    p.add_argument("--repo", required=True, help="the Hub repository, ORG/NAME")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--dry-run", action="store_true", help="prepare the folder and list what would be uploaded")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=_push)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _spec_text(spec: Any) -> str:
    resize = "x".join(map(str, spec.resize)) if isinstance(spec.resize, tuple) else str(spec.resize)
    return f"{spec.frames}x{spec.crop_size} /{spec.interval} r{resize}"


def _list(args: argparse.Namespace) -> int:

    records = [get_weights(n) for n in list_weights()]
    if args.json:
        for r in records:
            print_json({**r.to_dict(), "cached": cached_path(r).is_file()})
        return 0
    header = ("name", "classes", "input", "params", "MACs", "paper top-1", "ours", "cached")
    rows = [
        (
            r.name,
            str(r.num_classes),
            _spec_text(r.input_spec),
            f"{r.params / 1e6:.2f} M" if r.params else "-",
            f"{r.macs / 1e9:.2f} G" if r.macs else "-",
            f"{r.paper_metric.top1:.1f}%" if r.paper_metric else "-",
            f"{r.measured_metric.top1:.1f}%" if r.measured_metric else "-",
            "yes" if cached_path(r).is_file() else "no",
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _info(args: argparse.Namespace) -> int:

    record = get_weights(args.name)
    target = cached_path(record)
    info = {**record.to_dict(), "cache_path": str(target), "cached": target.is_file()}
    if args.json:
        print_json(info)
        return 0
    print(f"{record.name}: {record.description}")
    print(f"  architecture   {record.architecture} {json.dumps(record.arch_kwargs) if record.arch_kwargs else ''}")
    print(f"  classes        {record.num_classes}" + (f" ({record.labels} names)" if record.labels else ""))
    print(f"  input          {record.input_spec.describe()}")
    if record.params:
        print(f"  params         {record.params:,}")
    if record.macs:
        shape = "x".join(map(str, record.input_spec.input_shape()))
        print(f"  MACs           {record.macs:,} per {shape} clip")
    if record.paper_metric:
        m = record.paper_metric
        print(f"  paper          top-1 {m.top1}% on {m.dataset}" + (f" ({m.source})" if m.source else ""))
    if record.measured_metric:
        m = record.measured_metric
        print(f"  measured       top-1 {m.top1}% on {m.dataset} ({m.protocol})")
    else:
        print("  measured       not yet re-evaluated")
    print(f"  file           {record.file}")
    print(f"  sha256         {record.sha256 or 'not published (pinned when imported)'}")
    if record.hf_repo:
        print(f"  hub            hf-hub:{record.hf_repo} ({record.hf_file or record.file})")
    for url in record.urls:
        print(f"  url            {url}")
    for link in record.provenance:
        print(f"  provenance     {link}")
    print(f"  cache          {target} ({'present' if target.is_file() else 'absent'})")
    print(f"  licence        {record.license or 'unknown'}")
    return 0


def _download(args: argparse.Namespace) -> int:

    record = get_weights(args.name)
    resolved = resolve_record(record, offline=is_offline(), progress=True)
    out = {"name": record.name, "path": str(resolved.path), "source": resolved.source}
    if args.json:
        print_json({**out, "sha256": sha256_of(resolved.path)})
    else:
        print(f"{record.name}: {resolved.path} (from the {resolved.source}, checked)")
    return 0


def _import(args: argparse.Namespace) -> int:

    record = get_weights(args.name)
    target = import_file(args.path, record)
    digest = sha256_of(target)
    if args.json:
        print_json({"name": record.name, "path": str(target), "sha256": digest, "verified": record.sha256 is not None})
    else:
        check = "matches the record's sha256" if record.sha256 else "fits the architecture; sha256 pinned"
        print(f"imported {args.path} as {record.name}: {target} ({check}: {digest})")
    return 0


def _convert(args: argparse.Namespace) -> int:

    resolved = resolve_weights(args.path)
    record = get_weights(args.name) if args.name else resolved.record
    out = convert_weights(resolved.path, args.out, record=record, model_name=args.model)
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    if args.json:
        print_json({"out": str(out), "files": files, "name": record.name if record else None})
    else:
        print(f"converted {resolved.path} to {out}: {', '.join(files)}")
    return 0


def _push(args: argparse.Namespace) -> int:

    if args.repo.count("/") != 1:
        raise MfnetError(f"--repo {args.repo!r} must be ORG/NAME")
    folder = Path(args.source)
    with tempfile.TemporaryDirectory(prefix="mfnet-push-") as tmp:
        if not is_converted_folder(folder):
            resolved = resolve_weights(args.source)
            folder = convert_weights(resolved.path, Path(tmp) / "weights", record=resolved.record)
        files = sorted(p.name for p in folder.iterdir() if p.is_file())
        url = None
        if not args.dry_run:
            url = _upload(folder, args.repo, private=args.private)
        if args.json:
            print_json({"repo": args.repo, "files": files, "uploaded": not args.dry_run, "url": url})
        elif args.dry_run:
            print(f"would upload {', '.join(files)} from {folder} to https://huggingface.co/{args.repo}")
        else:
            print(f"uploaded {', '.join(files)} to {url}; load it with create_model('hf-hub:{args.repo}')")
    return 0


def _upload(folder: Path, repo: str, *, private: bool) -> str:
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise MfnetError("pushing needs the Hub client: pip install 'mfnet[hub]'") from None
    api = HfApi()
    try:
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model", commit_message="mfnet weights")
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise MfnetError(f"the upload to {repo} failed ({first}); log in with `hf auth login` and retry") from None
    return f"https://huggingface.co/{repo}"
