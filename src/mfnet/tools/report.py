"""``mfnet report RUN_DIR``: the figures of a run and a short Markdown/HTML summary.

Reads what ``mfnet train`` (and ``mfnet eval --out RUN_DIR/eval``) left in the run directory::

    metrics.jsonl        -> figures/curves.png
    conv1_init.pt + model.pt (or the newest checkpoint) -> figures/filters.png
    eval/metrics.json    -> figures/per_class.png, figures/confusion.png
    eval/predictions.json + the videos -> figures/samples.png
    the paper's results + this run's + --results CSVs -> figures/accuracy_vs_gflops.png

and writes ``report.md`` and ``report.html`` beside them. Figures whose inputs are missing are skipped.
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mfnet.data.readers import open_video
from mfnet.engine.checkpoints import list_checkpoints
from mfnet.engine.metrics import read_metrics
from mfnet.errors import MfnetError
from mfnet.tools import plots
from mfnet.tools.results import ResultRow, paper_results, read_results, run_result

logger = logging.getLogger("mfnet")

FIGURES = "figures"


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor] | None:

    candidates = [run_dir / "model.pt", *reversed(list_checkpoints(run_dir))]
    for path in candidates:
        if path.exists():
            try:
                return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
            except Exception as err:
                logger.warning("cannot read %s for the filter figure: %s", path, err)
    return None


def _first_conv(state: dict[str, torch.Tensor]) -> torch.Tensor | None:
    for key, value in state.items():
        if key.endswith("weight") and value.ndim in (4, 5) and value.shape[1] == 3:
            return value
    return None


def _frame_strip(path: str, count: int = 6, height: int = 72) -> np.ndarray | None:
    """``count`` frames evenly spread over a video (or one image), resized to ``height`` rows, ``(F, h, w, 3)``."""

    try:
        with contextlib.closing(open_video(path)) as reader:
            n = reader.num_frames
            idx = np.linspace(0, n - 1, num=min(count, n)).round().astype(np.int64)
            frames = reader.read(idx)  # (F, H, W, 3) uint8
    except Exception:
        return None
    _, h, w, _ = frames.shape
    size = (height, max(1, round(w * height / h)))
    small = F.interpolate(frames.permute(0, 3, 1, 2).float(), size=size, mode="bilinear", antialias=True)
    return small.clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def _true_prob(prediction: dict[str, Any]) -> float:
    """The probability of the true class (0 when it is not among the stored top classes)."""
    return next((float(t["prob"]) for t in prediction.get("top", []) if t.get("class") == prediction["label"]), 0.0)


def pick_samples(predictions: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """The samples of paper Fig. 8: the hardest categories, each with an easy and a hard sample.

    Categories are ranked by video accuracy (lowest first; ties: lower mean probability of the true class). From
    each of the ``ceil(count / 2)`` hardest, the easy sample is the video with the highest probability of its true
    class and the hard sample the one with the lowest. Each returned record gains ``"difficulty"`` (``"easy"``,
    ``"hard"``, or ``"only"`` for a category of one video) and ``"category_accuracy"``.
    """
    by_class: dict[int, list[dict[str, Any]]] = {}
    for p in predictions:
        by_class.setdefault(int(p["label"]), []).append(p)

    def hardness(videos: list[dict[str, Any]]) -> tuple[float, float]:
        accuracy = sum(bool(v.get("correct")) for v in videos) / len(videos)
        return accuracy, sum(_true_prob(v) for v in videos) / len(videos)

    ranked = sorted(by_class.items(), key=lambda item: (hardness(item[1]), item[0]))
    picked: list[dict[str, Any]] = []
    for _, videos in ranked:
        if len(picked) >= count:
            break
        accuracy = hardness(videos)[0]
        ordered = sorted(videos, key=_true_prob)
        pairs = [("easy", ordered[-1]), ("hard", ordered[0])] if len(ordered) > 1 else [("only", ordered[0])]
        for difficulty, video in pairs[: count - len(picked)]:
            picked.append({**video, "difficulty": difficulty, "category_accuracy": accuracy})
    return picked


def write_figures(
    run_dir: str | Path,
    *,
    samples: int = 4,
    eval_dir: str | Path | None = None,
    results: list[str | Path] | None = None,
) -> dict[str, Path]:
    """Writes every figure whose inputs the run directory has; returns ``{figure name: path}``.

    ``results`` are more rows for the accuracy-against-GFLOPs chart: CSV files (see ``mfnet.tools.results``) or
    other evaluated run directories.
    """
    run_dir = Path(run_dir)
    out = run_dir / FIGURES
    written: dict[str, Path] = {}
    metrics_path = run_dir / "metrics.jsonl"
    if metrics_path.exists():
        records = read_metrics(metrics_path)
        if records:
            written["curves"] = plots.plot_curves(records, out / "curves.png", title=run_dir.name)
    state = _final_weights(run_dir)
    after = _first_conv(state) if state else None
    if after is not None:
        before_path = run_dir / "conv1_init.pt"
        before = torch.load(before_path, weights_only=True) if before_path.exists() else None
        written["filters"] = plots.plot_filters(before, after, out / "filters.png")
    eval_dir = Path(eval_dir) if eval_dir else run_dir / "eval"
    ev = _read_eval(eval_dir)
    if ev is not None:
        classes = ev.get("classes")
        if ev.get("per_class_accuracy"):
            written["per_class"] = plots.plot_per_class(ev["per_class_accuracy"], classes, out / "per_class.png")
        if ev.get("confusion_matrix"):
            written["confusion"] = plots.plot_confusion(
                np.asarray(ev["confusion_matrix"]), classes, out / "confusion.png"
            )
        preds_path = eval_dir / "predictions.json"
        if samples and preds_path.exists():
            chosen = []
            for p in pick_samples(json.loads(preds_path.read_text()), samples):
                strip = _frame_strip(p["video"])
                if strip is None:
                    continue
                mark = "correct" if p["correct"] else "wrong"
                chosen.append(
                    {
                        "frames": strip,
                        "label": p["label_name"],
                        "top": p["top"],
                        "title": f"{p['difficulty']} sample of '{p['label_name']}' (category accuracy "
                        f"{100 * p['category_accuracy']:.0f}%): {Path(p['video']).name}, predicted "
                        f"'{p['pred_name']}' ({mark})",
                    }
                )
            if chosen:
                written["samples"] = plots.plot_samples(chosen, out / "samples.png")
    rows = results_table(run_dir, ev, results)
    written["accuracy_vs_gflops"] = plots.plot_accuracy_vs_gflops(
        rows, out / "accuracy_vs_gflops.png", title="accuracy against cost (paper Figs. 4b and 6)"
    )
    return written


def results_table(
    run_dir: str | Path, evaluation: dict[str, Any] | None, results: list[str | Path] | None = None
) -> list[ResultRow]:
    """The paper's rows, the rows of ``results`` (CSV files, or other evaluated run directories) and this run's row.

    Raises:
        MfnetError: A ``results`` folder that is not an evaluated run (no ``recipe.json`` and ``eval/metrics.json``).
    """
    rows = paper_results()
    for path in results or []:
        path = Path(path)
        if not path.is_dir():
            rows += read_results(path)
            continue
        other = run_result(path, _read_eval(path / "eval") or {})
        if other is None:
            raise MfnetError(
                f"{path} is not an evaluated training run (it needs recipe.json and eval/metrics.json): run "
                f"`mfnet eval --out {path / 'eval'}` first, or give a results CSV"
            )
        rows.append(other)
    own = run_result(run_dir, evaluation) if evaluation else None
    if own is not None:
        rows.append(own)
    return rows


def _read_eval(eval_dir: Path) -> dict[str, Any] | None:
    path = eval_dir / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_report(
    run_dir: str | Path,
    *,
    samples: int = 4,
    eval_dir: str | Path | None = None,
    results: list[str | Path] | None = None,
) -> dict[str, Path]:
    """Regenerates the figures and writes ``report.md`` and ``report.html``; returns their paths and the figures'.

    ``results``: more rows for the accuracy-against-GFLOPs chart, CSV files or other evaluated run directories.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not ((run_dir / "metrics.jsonl").exists() or (run_dir / "recipe.json").exists()):
        raise MfnetError(
            f"{run_dir} is not a training run directory (no metrics.jsonl): pass the --out of `mfnet train`"
        )
    figures = write_figures(run_dir, samples=samples, eval_dir=eval_dir, results=results)
    recipe = json.loads((run_dir / "recipe.json").read_text()) if (run_dir / "recipe.json").exists() else {}
    records = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    epochs = [r for r in records if r.get("kind") == "epoch"]
    ev = _read_eval(Path(eval_dir) if eval_dir else run_dir / "eval")

    lines = [f"# Training report: {run_dir.name}", ""]
    if recipe:
        lines += [
            f"Recipe **{recipe.get('name')}**: model `{recipe.get('model')}`, {recipe.get('epochs')} epochs, global "
            f"batch {recipe.get('batch_size')}, base LR {recipe.get('base_lr')} at batch "
            f"{recipe.get('lr_reference_batch')} "
            f"({recipe.get('schedule')} schedule), clips {recipe.get('clip_length')}x{recipe.get('crop_size')}x"
            f"{recipe.get('crop_size')} at interval {recipe.get('frame_interval')}.",
            "",
        ]
    if epochs:
        keys = [
            k
            for k in (
                "train_loss",
                "train_top1",
                "val_loss",
                "val_clip_top1",
                "val_video_top1",
                "val_video_top5",
                "val_mean_class_accuracy",
            )
            if any(k in e for e in epochs)
        ]
        lines += ["| epoch | step | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
        for e in epochs:
            cells = [_cell(e.get(k), k) for k in keys]
            lines.append(f"| {e['epoch']:g} | {e['step']} | " + " | ".join(cells) + " |")
        lines.append("")
    if ev:
        lines += [
            f"Evaluation ({ev.get('videos')} videos, {ev.get('clips')} clips): video top-1 "
            f"**{100 * ev['video_top1']:.2f}%**, top-5 {100 * ev['video_top5']:.2f}%; clip top-1 "
            f"{100 * ev['clip_top1']:.2f}%, top-5 {100 * ev['clip_top5']:.2f}%; mean class accuracy "
            f"{_cell(ev.get('mean_class_accuracy'), 'acc')}%.",
            "",
        ]
        acc = [(a, i) for i, a in enumerate(ev.get("per_class_accuracy") or []) if a is not None]
        names = ev.get("classes") or [str(i) for i in range(len(ev.get("per_class_accuracy") or []))]
        if acc:
            acc.sort(key=lambda t: -t[0])
            lines += [
                "Best classes: " + ", ".join(f"{names[i]} ({100 * a:.0f}%)" for a, i in acc[:5]) + ".",
                "Worst classes: " + ", ".join(f"{names[i]} ({100 * a:.0f}%)" for a, i in acc[::-1][:5]) + ".",
                "",
            ]
    captions = {
        "curves": "Training and validation loss and accuracy (paper Fig. 4a).",
        "filters": "conv1 spatio-temporal filters before and after training (Fig. 5).",
        "per_class": "Per-class accuracy, sorted (Fig. 7).",
        "confusion": "Confusion matrix (video level).",
        "samples": "Top-5 predictions on an easy and a hard sample of the hardest categories (Fig. 8).",
        "accuracy_vs_gflops": "Top-1 accuracy against GFLOPs, circle area = parameters: the paper's models and "
        "this run (Figs. 4b and 6).",
    }
    for name, path in figures.items():
        lines += [f"![{captions[name]}]({path.relative_to(run_dir)})", "", f"*{captions[name]}*", ""]
    md = run_dir / "report.md"
    md.write_text("\n".join(lines))
    page = run_dir / "report.html"
    page.write_text(_to_html(lines, title=f"mfnet report: {run_dir.name}"))
    return {"markdown": md, "html": page, **figures}


def _cell(value: Any, key: str) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    return f"{value:.4f}" if "loss" in key else f"{100 * value:.2f}"


def _to_html(lines: list[str], *, title: str) -> str:
    """A small HTML rendering of the report's Markdown subset (headings, tables, images, emphasis)."""

    body: list[str] = []
    table: list[str] = []

    def inline(text: str) -> str:
        text = html.escape(text)
        text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
        text = re.sub(r"`(.+?)`", r"<code>\1</code>", text)
        return re.sub(r"\*(.+?)\*", r"<i>\1</i>", text)

    def flush() -> None:
        if table:
            rows = [r for r in table if not set(r.replace("|", "").strip()) <= {"-"}]
            cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
            out = ["<table>", "<tr>" + "".join(f"<th>{inline(c)}</th>" for c in cells[0]) + "</tr>"]
            out += ["<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in cells[1:]]
            body.append("\n".join([*out, "</table>"]))
            table.clear()

    for line in lines:
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        image = re.match(r"!\[(.*)\]\((.*)\)", line)
        if line.startswith("# "):
            body.append(f"<h1>{inline(line[2:])}</h1>")
        elif image:
            body.append(f'<img src="{html.escape(image.group(2))}" alt="{html.escape(image.group(1))}">')
        elif line:
            body.append(f"<p>{inline(line)}</p>")
    flush()
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}img{max-width:100%}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
