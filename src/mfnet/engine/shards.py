"""The output folder of a large job: Parquet shards written atomically, the run's settings and a summary.

Layout of ``OUT/``::

    _run.json                      the settings of the job (command, model, clip spec, ...); checked on --resume
    part-<run>-<000000>.parquet    result rows, one shard per finished group of videos
    _summary.json                  counts and speed of the last run (written when it ends or is interrupted)

A shard is written under a temporary name in the same folder, flushed to disk and renamed, so a shard is either
complete or absent: a run killed at any moment loses only the videos of the shard it was writing, and
``ShardFolder(..., resume=True)`` finds every video already written (``done``). The rows of one video are
always in one shard. Temporary files left by a killed run are removed when the folder is opened again. The
names of the other files start with ``_`` or ``.``, so Parquet readers (``pandas.read_parquet(OUT)``,
``pyarrow.dataset.dataset(OUT)``) read the folder as one table.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mfnet.errors import DataError

RUN_FILE = "_run.json"
SUMMARY_FILE = "_summary.json"
_TEMP_PREFIX = ".tmp-"


def shard_paths(folder: str | Path) -> list[Path]:
    """The complete shards of an output folder, oldest run first."""
    return sorted(Path(folder).glob("part-*.parquet"))


def read_shards(folder: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Every row of an output folder as one Arrow table (``.to_pandas()`` / ``.to_pylist()`` for other forms).

    Args:
        folder: The ``--out`` folder of ``mfnet predict`` / ``mfnet features``.
        columns: Read only these columns (default: all).

    Raises:
        DataError: The folder holds no shards, or a shard cannot be read.
    """
    paths = shard_paths(folder)
    if not paths:
        raise DataError(f"{folder} holds no result shards (part-*.parquet): check the path")
    tables = [_read(path, columns) for path in paths]
    return pa.concat_tables(tables, promote_options="default")


def _read(path: Path, columns: list[str] | None) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as err:
        raise DataError(f"result shard {path} cannot be read ({err}): delete it and rerun with --resume") from None


def _write_atomic(path: Path, write: Any) -> None:
    """Calls ``write(temp_path)``, flushes the file to disk and renames it to ``path`` (same folder)."""
    temp = path.with_name(f"{_TEMP_PREFIX}{path.name}")
    try:
        write(temp)
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj: dict[str, Any]) -> None:
    """Writes a JSON file so that readers see the old or the new content, never a part."""
    _write_atomic(path, lambda temp: temp.write_text(json.dumps(obj, indent=1, default=str) + "\n"))


class ShardFolder:
    """An output folder being filled by one run.

    Args:
        folder: The folder (created if needed).
        run: The job's settings, stored in ``_run.json``; a resumed run must have the same ones.
        resume: Continue a folder that already holds results (else such a folder is an error).

    Raises:
        DataError: The folder holds results and ``resume`` is off, or they were made with other settings, or a
            shard cannot be read.
    """

    def __init__(self, folder: str | Path, *, run: dict[str, Any], resume: bool) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise DataError(f"--out {self.folder} is a file: give a folder for the result shards")
        self.folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.folder.glob(f"{_TEMP_PREFIX}*"):
            leftover.unlink(missing_ok=True)  # a shard that a killed run did not finish
        existing = shard_paths(self.folder)
        run_file = self.folder / RUN_FILE
        if (existing or run_file.exists()) and not resume:
            raise DataError(
                f"{self.folder} already holds results: pass --resume to continue that run, or choose a new --out"
            )
        if run_file.exists():
            before = json.loads(run_file.read_text())
            changed = sorted(k for k in set(before) | set(run) if before.get(k) != run.get(k))
            if changed:
                detail = ", ".join(f"{k}: {before.get(k)!r} then {run.get(k)!r}" for k in changed[:4])
                raise DataError(
                    f"{self.folder} holds results made with other settings ({detail}): resume with the same "
                    "options, or choose a new --out"
                )
        write_json_atomic(run_file, run)
        self.run = run
        self.status: dict[str, str] = {}  # video_id -> "ok" / "failed", over every shard
        for path in existing:
            table = _read(path, ["video_id", "status"])
            self._record(table)
        # Unique per run (two runs may start in the same second), and sorting by name keeps runs in time order.
        self._run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self._sequence = 0
        self.written: list[Path] = []

    @property
    def done(self) -> set[str]:
        """The video ids that already have rows."""
        return set(self.status)

    def write(self, table: pa.Table) -> Path:
        """Writes one shard (whole videos only) atomically and records its videos; returns its path."""
        path = self.folder / f"part-{self._run_id}-{self._sequence:06d}.parquet"
        self._sequence += 1
        _write_atomic(path, lambda temp: pq.write_table(table, temp))
        self._record(table)
        self.written.append(path)
        return path

    def _record(self, table: pa.Table) -> None:
        ids, status = table.column("video_id").to_pylist(), table.column("status").to_pylist()
        self.status.update(zip(ids, status, strict=True))

    def counts(self, video_ids: set[str] | None = None) -> dict[str, int]:
        """``{"ok": n, "failed": n}`` over the videos in the folder (only ``video_ids`` if given)."""
        statuses = self.status.values() if video_ids is None else (self.status[v] for v in video_ids & self.done)
        counter = Counter(statuses)
        return {"ok": counter.get("ok", 0), "failed": counter.get("failed", 0)}

    def write_summary(self, summary: dict[str, Any]) -> Path:
        """Writes ``_summary.json`` atomically."""
        path = self.folder / SUMMARY_FILE
        write_json_atomic(path, summary)
        return path
