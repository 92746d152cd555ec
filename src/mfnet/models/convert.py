"""Converting a checkpoint (the authors' ``.pth``, one of ours) into a self-describing folder.

``convert_weights(path, out_dir)`` writes::

    out_dir/model.safetensors   the weights, with the "mfnet" metadata (model, classes, input_spec) as JSON
    out_dir/config.json         architecture, arguments, classes, input spec, sha256 of the weights, metrics
    out_dir/README.md           a model card (what it is, how to use it, where it came from, licence, citation)

``create_model(out_dir)`` (or ``weights=out_dir``) reads the folder back, and ``mfnet weights push`` uploads it to
the Hugging Face Hub, where ``create_model("hf-hub:ORG/NAME")`` finds it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from mfnet.errors import CheckpointError
from mfnet.models.checkpoint import load_weights, read_checkpoint, save_checkpoint
from mfnet.models.hub import CONFIG_FILE, WEIGHTS_FILE, sha256_of
from mfnet.models.registry import build_model
from mfnet.models.weights import CITATION, PAPER_IMAGE_INPUT, PAPER_INPUT, InputSpec, WeightsRecord

CARD_FILE = "README.md"


def convert_weights(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    record: WeightsRecord | None = None,
    model_name: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    input_spec: InputSpec | None = None,
) -> Path:
    """Converts the checkpoint ``path`` into ``out_dir`` (safetensors + ``config.json`` + model card).

    The weights are loaded into their architecture first, so a file that does not fit is refused.

    Args:
        path: A checkpoint file (``weights_only`` pickle or safetensors).
        out_dir: The folder to write (created; existing files of the same names are replaced).
        record: The registry record the file is (its architecture, classes, input spec, metrics, licence).
        model_name: The architecture when there is no record and the checkpoint names none (default ``mfnet3d``).
        arch_kwargs: Builder arguments when neither the record nor the checkpoint gives them.
        input_spec: The clips the weights expect (default: the checkpoint's, the record's, else the paper's).

    Returns:
        ``out_dir``.
    """
    source = Path(path)
    checkpoint = read_checkpoint(source)
    meta = checkpoint.meta or {}
    name = model_name or meta.get("model") or (record.architecture if record else None) or "mfnet3d"
    kwargs = {**(arch_kwargs or {}), **(record.arch_kwargs if record else {}), **(meta.get("model_kwargs") or {})}
    model = build_model(name, num_classes=checkpoint.num_classes, **kwargs)
    load_weights(model, checkpoint)
    image = getattr(model, "input_ndim", 5) == 4
    if input_spec is None:
        stored = meta.get("input_spec")
        if stored:
            input_spec = InputSpec.from_dict(stored)
        else:
            input_spec = record.input_spec if record else (PAPER_IMAGE_INPUT if image else PAPER_INPUT)
    classes = meta.get("classes") or (record.classes() if record else None)
    if classes is not None and len(classes) != model.num_classes:
        raise CheckpointError(f"{source} has {model.num_classes} classes but {len(classes)} class names")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = save_checkpoint(
        out / WEIGHTS_FILE,
        model,
        model_name=name,
        model_kwargs=kwargs,
        classes=classes,
        input_spec=input_spec.to_dict(),
    )
    config: dict[str, Any] = {
        "library": "mfnet",
        "name": record.name if record else None,
        "architecture": name,
        "num_classes": model.num_classes,
        "arch_kwargs": kwargs,
        "classes": classes,
        "input_spec": input_spec.to_dict(),
        "weights_file": WEIGHTS_FILE,
        "sha256": sha256_of(weights),
        "source_file": source.name,
        "source_sha256": sha256_of(source),
        "params": sum(p.numel() for p in model.parameters()),
        "macs": record.macs if record else None,
        "paper_metric": dataclasses.asdict(record.paper_metric) if record and record.paper_metric else None,
        "measured_metric": dataclasses.asdict(record.measured_metric) if record and record.measured_metric else None,
        "license": record.license if record else "",
        "citation": record.citation if record else CITATION,
        "provenance": list(record.provenance) if record else [],
    }
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    (out / CARD_FILE).write_text(model_card(config, record))
    return out


def model_card(config: dict[str, Any], record: WeightsRecord | None) -> str:
    """A Hugging Face model card (YAML front matter + Markdown) for a converted folder."""
    title = config["name"] or f"{config['architecture']} ({config['num_classes']} classes)"
    spec = InputSpec.from_dict(config["input_spec"])
    arch = f"`{config['architecture']}`" + (f" {json.dumps(config['arch_kwargs'])}" if config["arch_kwargs"] else "")
    metric = config.get("paper_metric")
    lines = [
        "---",
        "library_name: mfnet",
        f"license: {'mit' if 'MIT' in (config.get('license') or '') else 'other'}",
        "tags: [video-classification, mfnet, multi-fiber-networks]",
        "---",
        "",
        f"# {title}",
        "",
        (record.description if record else f"A converted `{config['architecture']}` checkpoint."),
        "",
        "## Use",
        "",
        "```python",
        "import mfnet",
        f'model = mfnet.create_model("{config["name"] or "path/to/this/folder"}", pretrained=True)'
        if config["name"]
        else 'model = mfnet.create_model("path/to/this/folder")',
        "```",
        "",
        "```bash",
        f"mfnet predict video.mp4 --weights {config['name'] or 'path/to/this/folder'}",
        "```",
        "",
        "## Input",
        "",
        f"Clips of {spec.describe()}: `{'x'.join(map(str, spec.input_shape()))}` (N, C, T, H, W). mfnet reads this "
        "from the weights; `predict`, `eval`, `features` and `export` use it by default.",
        "",
        "## Facts",
        "",
        f"- architecture: {arch}",
        f"- classes: {config['num_classes']}",
        f"- parameters: {config['params']:,}",
    ]
    if config.get("macs"):
        lines.append(f"- multiply-adds per clip: {config['macs']:,}")
    if metric:
        lines.append(f"- reported top-1: {metric['top1']}% on {metric['dataset']} ({metric['source']})")
    lines += [
        f"- weights sha256: `{config['sha256']}` (converted from `{config['source_file']}`, sha256 "
        f"`{config['source_sha256']}`)",
    ]
    if config.get("provenance"):
        lines.append(f"- original links: {', '.join(config['provenance'])}")
    if config.get("license"):
        lines.append(f"- licence: {config['license']}")
    lines += ["", "## Citation", "", "```bibtex", config.get("citation") or CITATION, "```", ""]
    return "\n".join(lines)
