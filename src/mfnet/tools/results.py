"""The table behind the accuracy-against-cost charts (paper Figs. 4b and 6): published rows and the user's runs.

A row is a model's accuracy on a dataset with its cost: parameters (millions) and multiply-adds (G, the paper's
"GFLOPs") per image or clip. The paper's published rows ship with the package (``paper_results.csv``);
:func:`run_result` makes the row of an evaluated training run; :func:`read_results` reads a CSV of the same
columns (``dataset,model,params_m,gflops,top1,top5,source``; lines starting with ``#`` are comments).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from mfnet.errors import MfnetError
from mfnet.models.macs import count_macs, count_params
from mfnet.models.registry import build_model

COLUMNS = ("dataset", "model", "params_m", "gflops", "top1", "top5", "source")

# Annotation formats of mfnet.data.annotations -> the dataset names of the paper's rows.
DATASET_NAMES = {
    "kinetics-csv": "Kinetics-400",
    "kinetics-json": "Kinetics-400",
    "kinetics400": "Kinetics-400",
    "ucf101": "UCF-101",
    "hmdb51": "HMDB51",
    "image-folder": "ImageNet-1k",
}


@dataclass(frozen=True)
class ResultRow:
    """One model's accuracy and cost on one dataset.

    Attributes:
        dataset: The dataset's name (``Kinetics-400``, ``UCF-101``, ``HMDB51``, ``ImageNet-1k``, ...).
        model: The label drawn next to the circle.
        params_m: Parameters in millions (the circle's area).
        gflops: Multiply-adds in G per image or clip (the x axis).
        top1: Top-1 accuracy in percent (the y axis).
        top5: Top-5 accuracy in percent, or ``None``.
        source: Where the row comes from (``paper ...`` for the shipped rows, a run directory for the user's).
    """

    dataset: str
    model: str
    params_m: float
    gflops: float
    top1: float
    top5: float | None = None
    source: str = ""

    @property
    def published(self) -> bool:
        """Whether the row is one of the paper's."""
        return self.source.startswith("paper")


def _float(value: str | None, *, column: str, where: str) -> float | None:
    if value is None or not value.strip():
        return None
    try:
        return float(value)
    except ValueError:
        raise MfnetError(f"{where}: {column} must be a number, got {value!r}") from None


def parse_results(text: str, *, where: str = "results") -> list[ResultRow]:
    """Rows of a results CSV (see the module docstring); a missing column or a bad number raises ``MfnetError``."""
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    reader = csv.DictReader(io.StringIO("\n".join(lines)))
    missing = [c for c in COLUMNS[:5] if c not in (reader.fieldnames or [])]
    if missing:
        raise MfnetError(f"{where} lacks the columns {', '.join(missing)}: the header is {','.join(COLUMNS)}")
    rows = []
    for number, record in enumerate(reader, start=2):
        at = f"{where} line {number}"
        values = {c: _float(record.get(c), column=c, where=at) for c in ("params_m", "gflops", "top1", "top5")}
        if values["params_m"] is None or values["gflops"] is None or values["top1"] is None:
            raise MfnetError(f"{at}: params_m, gflops and top1 are needed")
        rows.append(
            ResultRow(
                dataset=record["dataset"].strip(),
                model=record["model"].strip(),
                params_m=values["params_m"],
                gflops=values["gflops"],
                top1=values["top1"],
                top5=values["top5"],
                source=(record.get("source") or "").strip(),
            )
        )
    return rows


def paper_results() -> list[ResultRow]:
    """The paper's published rows shipped with the package."""
    text = resources.files("mfnet.tools").joinpath("paper_results.csv").read_text()
    return parse_results(text, where="paper_results.csv")


def read_results(path: str | Path) -> list[ResultRow]:
    """The rows of a results CSV file."""
    path = Path(path)
    if not path.is_file():
        raise MfnetError(f"results file {path} does not exist: give a CSV with the header {','.join(COLUMNS)}")
    return parse_results(path.read_text(), where=str(path))


def run_result(run_dir: str | Path, evaluation: dict[str, Any]) -> ResultRow | None:
    """The row of an evaluated training run: its recipe's model counted at the recipe's input, its video top-1.

    Args:
        run_dir: The run directory (``recipe.json``, ``data.json``).
        evaluation: The run's ``eval/metrics.json`` (``video_top1``, ``video_top5``).

    Returns:
        The row, or ``None`` when the run has no recipe or the evaluation no accuracy.
    """

    run_dir = Path(run_dir)
    recipe_path = run_dir / "recipe.json"
    if not recipe_path.exists() or evaluation.get("video_top1") is None:
        return None
    recipe = json.loads(recipe_path.read_text())
    data = json.loads((run_dir / "data.json").read_text()) if (run_dir / "data.json").exists() else {}
    fmt = data.get("format") or recipe.get("data_format", "")
    with torch.device("meta"):  # shapes only: counting takes no time and no memory
        model = build_model(
            recipe["model"], num_classes=recipe.get("num_classes"), **(recipe.get("model_kwargs") or {})
        )
    crop = int(recipe.get("crop_size", 224))
    clip = int(recipe.get("clip_length", 16))
    image = getattr(model, "input_ndim", 5) == 4 and clip == 1
    shape = (1, 3, crop, crop) if image else (1, 3, clip, crop, crop)
    top5 = evaluation.get("video_top5")
    return ResultRow(
        dataset=DATASET_NAMES.get(fmt, fmt or "dataset"),
        model=f"{recipe['model']} ({run_dir.name})",
        params_m=count_params(model) / 1e6,
        gflops=count_macs(model, shape) / 1e9,
        top1=100 * float(evaluation["video_top1"]),
        top5=100 * float(top5) if top5 is not None else None,
        source=str(run_dir),
    )
