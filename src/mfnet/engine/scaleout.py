"""Large ``predict`` / ``features`` jobs: a manifest in, a folder of resumable Parquet shards out.

``run_job`` skips the videos already in the output folder, runs the others through the one ``Predictor`` (the
``local`` engine: this process and its DataLoader workers; the ``ray`` engine: ``mfnet.engine.ray_engine``), writes
finished videos as shards (``mfnet.engine.shards``) and a summary. Both engines turn results into rows with the
same functions (``mfnet.engine.tables``), so their outputs agree row for row.

The rows and their columns: ``mfnet.engine.tables``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm.auto import tqdm

from mfnet.engine.manifest import ManifestEntry
from mfnet.engine.predictor import Predictor
from mfnet.engine.ray_engine import ray_tables
from mfnet.engine.shards import ShardFolder
from mfnet.engine.tables import JobOptions, embedding_table, prediction_table
from mfnet.errors import MfnetError

PROGRESS_VIDEOS = 8  # the local engine hands over results (and moves the progress bar) this many videos at a time
MAX_ERRORS_SHOWN = 10  # failures listed in the summary (all of them are rows in the shards)
ENGINES = ("local", "ray")


@dataclass
class JobSummary:
    """What a run did (``_summary.json``).

    Attributes:
        videos: Videos in the manifest.
        done: Videos computed by this run.
        failed: Videos of this run that failed (rows with ``status == "failed"``).
        skipped: Videos already in the folder (``--resume``), not run again.
        folder_ok: Videos of the manifest with good rows in the folder, this run's and earlier runs'.
        folder_failed: Videos of the manifest with failed rows in the folder.
        complete: Whether every video of the manifest has rows in the folder.
        shards: Shards this run wrote.
        seconds: Wall time of the run.
        videos_per_s: ``(done + failed) / seconds``.
        engine: ``local`` or ``ray``.
        task: ``predict`` or ``features``.
    """

    videos: int
    done: int = 0
    failed: int = 0
    skipped: int = 0
    folder_ok: int = 0
    folder_failed: int = 0
    complete: bool = False
    shards: int = 0
    seconds: float = 0.0
    videos_per_s: float = 0.0
    engine: str = "local"
    task: str = "features"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        data = asdict(self)
        data.update(data.pop("extra"))
        return data


def local_tables(
    entries: Sequence[ManifestEntry], predictor: Predictor, options: JobOptions, *, videos_per_table: int
) -> Iterator[pa.Table]:
    """Runs ``entries`` through ``predictor`` in this process, yielding tables of ``videos_per_table`` videos."""
    paths = [entry.path for entry in entries]
    results: Iterator[Any]
    if options.task == "predict":
        results = predictor.predict(paths)
    else:
        results = predictor.iter_features(paths, per_clip=options.per_clip)
    pending: list[tuple[ManifestEntry, Any]] = []
    for entry, result in zip(entries, results, strict=True):
        pending.append((entry, result))
        if len(pending) >= videos_per_table:
            yield _table(pending, options)
            pending = []
    if pending:
        yield _table(pending, options)


def _table(results: Sequence[tuple[ManifestEntry, Any]], options: JobOptions) -> pa.Table:
    if options.task == "predict":
        return prediction_table(results, topk=options.topk, classes=options.classes)
    return embedding_table(results)


# -- the job ------------------------------------------------------------------------------------------------------


def run_job(
    entries: Sequence[ManifestEntry],
    predictor: Predictor,
    options: JobOptions,
    out: str | Path,
    *,
    run: dict[str, Any],
    resume: bool = False,
    engine: str = "local",
    shard_size: int = 256,
    ray_options: dict[str, Any] | None = None,
    progress: bool = False,
    on_shard: Callable[[Path], None] | None = None,
) -> JobSummary:
    """Runs a job into an output folder of shards; see the module docstring for the rows.

    Args:
        entries: The videos (``mfnet.engine.manifest``).
        predictor: The model, clip spec, clips per video and batch size (the local engine also uses its device
            and DataLoader workers; Ray actors build the same predictor on their own device).
        options: What to compute.
        out: The output folder.
        run: Settings stored in ``_run.json`` (a resumed run must match them).
        resume: Skip the videos already in ``out``.
        engine: ``local`` or ``ray``.
        shard_size: Videos per shard (the most a killed run can lose).
        ray_options: Keyword arguments of ``mfnet.engine.ray_engine.ray_tables`` (``workers``,
            ``gpus_per_worker``, ``address``, ...).
        progress: Show a progress bar over videos on stderr.
        on_shard: Called with each shard's path once it is written.

    Returns:
        The summary (also written to ``out/_summary.json``, even when the run is interrupted).
    """
    if engine not in ENGINES:
        raise MfnetError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    if shard_size <= 0:
        raise MfnetError("--shard-size must be positive")
    folder = ShardFolder(out, run=run, resume=resume)
    done_before = folder.done
    todo = [entry for entry in entries if entry.video_id not in done_before]
    wanted = {entry.video_id for entry in entries}
    summary = JobSummary(len(entries), skipped=len(entries) - len(todo), engine=engine, task=options.task)
    start = time.perf_counter()
    failures: dict[str, str] = {}
    bar = tqdm(total=len(todo), unit="video", disable=not progress or not todo, leave=False)
    try:
        if todo:
            if engine == "local":
                tables = local_tables(todo, predictor, options, videos_per_table=min(shard_size, PROGRESS_VIDEOS))
            else:
                tables = ray_tables(todo, predictor, options, **(ray_options or {}))
            pending: list[pa.Table] = []
            pending_videos = 0
            for table in tables:  # whole videos each
                videos = len(set(table.column("video_id").to_pylist()))
                pending.append(table)
                pending_videos += videos
                bar.update(videos)
                if pending_videos >= shard_size:
                    _write_shard(folder, pa.concat_tables(pending), summary, failures, on_shard)
                    pending, pending_videos = [], 0
            if pending:
                _write_shard(folder, pa.concat_tables(pending), summary, failures, on_shard)
    finally:
        bar.close()
        summary.seconds = round(time.perf_counter() - start, 3)
        ran = summary.done + summary.failed
        summary.videos_per_s = round(ran / summary.seconds, 3) if summary.seconds > 0 and ran else 0.0
        counts = folder.counts(wanted)
        summary.folder_ok, summary.folder_failed = counts["ok"], counts["failed"]
        summary.complete = wanted <= folder.done
        summary.shards = len(folder.written)
        summary.extra["first_errors"] = [{"video_id": k, "error": v} for k, v in failures.items()]
        folder.write_summary(summary.to_dict())
    return summary


def _write_shard(
    folder: ShardFolder,
    table: pa.Table,
    summary: JobSummary,
    failures: dict[str, str],
    on_shard: Callable[[Path], None] | None,
) -> None:
    """Writes one shard and counts its videos into ``summary`` (only written videos count as done)."""
    path = folder.write(table)
    videos: dict[str, str] = {}
    columns = (table.column(c).to_pylist() for c in ("video_id", "status", "error"))
    for video_id, status, error in zip(*columns, strict=True):
        videos[video_id] = status
        if status != "ok" and video_id not in failures and len(failures) < MAX_ERRORS_SHOWN:
            failures[video_id] = error
    summary.done += sum(s == "ok" for s in videos.values())
    summary.failed += sum(s != "ok" for s in videos.values())
    if on_shard is not None:
        on_shard(path)


def run_settings(predictor: Predictor, options: JobOptions, **extra: Any) -> dict[str, Any]:
    """The settings a resumed run must share with the first one (``_run.json``)."""
    spec = asdict(predictor.spec)
    return {
        "task": options.task,
        "per_clip": options.per_clip,
        "topk": options.topk if options.task == "predict" else None,
        "clips": predictor.num_clips,
        "spec": {k: list(v) if isinstance(v, tuple) else v for k, v in spec.items()},
        **extra,
    }
