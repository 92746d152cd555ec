"""Manifests: the list of videos a large ``predict`` / ``features`` job runs over, as ``(video_id, path)`` entries.

A manifest is one of:

- a text file with one path per line (blank lines and lines starting with ``#`` are skipped);
- a CSV file (``.csv``, or ``.tsv`` with tabs) whose header has a ``path`` column (also spelled ``video``,
  ``file`` or ``filename``) and, optionally, an ``id`` column (also ``video_id``, ``clip_id``, ``youtube_id``);
- any annotation format that ``mfnet data`` reads (``ucf101``, ``kinetics-csv``, ``list``, ``folder``, ...),
  through ``mfnet.data.annotations.load_annotations``.

Relative paths are taken relative to ``root`` (default: the manifest's folder). The ``video_id`` is the id column
where there is one, else the path as written in the manifest (relative paths stay relative, so an output folder
does not depend on where the dataset is mounted). Annotated videos missing on disk are kept: the job reports them
as failed rows instead of stopping.
"""

from __future__ import annotations

import csv
import glob
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from mfnet.data.annotations import FORMATS, load_annotations
from mfnet.data.readers import VIDEO_SUFFIXES
from mfnet.errors import DataError, VideoError

_GLOB_CHARS = frozenset("*?[")

MANIFEST_FORMATS = ("paths", *FORMATS)
_PATH_COLUMNS = ("path", "video", "file", "filename", "video_path")
_ID_COLUMNS = ("id", "video_id", "clip_id", "youtube_id", "key")


class ManifestEntry(NamedTuple):
    """One video of a job.

    Attributes:
        video_id: The key of the video in the output (unique in a manifest).
        path: The file (or frame folder) to read.
    """

    video_id: str
    path: Path


def entries_from_paths(paths: Sequence[str | Path]) -> list[ManifestEntry]:
    """Entries of plain paths (the id is the path as given)."""
    return [ManifestEntry(str(p), Path(p)) for p in paths]


def read_manifest(
    manifest: str | Path,
    *,
    format: str = "paths",
    root: str | Path | None = None,
    split: int | None = None,
    subset: str | None = None,
) -> list[ManifestEntry]:
    """Reads a manifest into entries, in file order, without repeats.

    Args:
        manifest: The text / CSV file, or the annotation file or folder of an annotation format.
        format: ``paths`` (text or CSV) or one of ``mfnet.data.annotations.FORMATS``.
        root: Folder that relative paths start from (default: the manifest's folder; required by annotation
            formats other than the folder ones, where it is the dataset root).
        split: The official split of ``ucf101`` / ``hmdb51``.
        subset: Keep only this subset of an annotation format (``train``, ``val``, ``test``).

    Raises:
        DataError: A missing or unreadable manifest, a CSV without a path column, an empty manifest, an id used
            twice, or what ``load_annotations`` raises.
    """
    if format not in MANIFEST_FORMATS:
        raise DataError(f"unknown manifest format {format!r}: use one of {', '.join(MANIFEST_FORMATS)}")
    manifest = Path(manifest)
    if format == "paths":
        if not manifest.is_file():
            raise DataError(f"manifest {manifest} is not a file: pass a text or CSV file of video paths")
        base = Path(root) if root is not None else manifest.parent
        rows = _read_csv(manifest) if manifest.suffix.lower() in (".csv", ".tsv") else _read_lines(manifest)
        entries = [ManifestEntry(video_id or text, _resolve(base, text)) for video_id, text in rows]
    else:
        entries = _read_annotations(manifest, format=format, root=root, split=split, subset=subset)
    if not entries:
        raise DataError(f"manifest {manifest} lists no videos: check the file (and --subset)")
    return _unique(entries, manifest)


def _resolve(base: Path, text: str) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def _read_lines(path: Path) -> list[tuple[str | None, str]]:
    rows = []
    with open(path, encoding="utf-8-sig", errors="replace") as handle:
        for line in handle:
            text = line.strip()
            if text and not text.startswith("#"):
                rows.append((None, text))
    return rows


def _read_csv(path: Path) -> list[tuple[str | None, str]]:
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        columns = {name.strip().lower(): name for name in reader.fieldnames or []}
        path_column = next((columns[c] for c in _PATH_COLUMNS if c in columns), None)
        if path_column is None:
            raise DataError(
                f"{path} has no path column (header: {', '.join(reader.fieldnames or []) or 'none'}): "
                f"name the column of video paths one of {', '.join(_PATH_COLUMNS)}"
            )
        id_column = next((columns[c] for c in _ID_COLUMNS if c in columns), None)
        rows = []
        for number, row in enumerate(reader, 2):
            text = (row.get(path_column) or "").strip()
            if not text:
                raise DataError(f"{path}:{number}: the {path_column} column is empty: give every row a path")
            video_id = (row.get(id_column) or "").strip() if id_column else ""
            rows.append((video_id or None, text))
        return rows


def _read_annotations(
    manifest: Path, *, format: str, root: str | Path | None, split: int | None, subset: str | None
) -> list[ManifestEntry]:
    folder_format = format in ("folder", "image-folder")
    if root is None:
        if not folder_format:
            raise DataError(f"format {format} needs the folder that holds the videos: pass it with --root")
        root = manifest
    annotations = load_annotations(format, None if folder_format else manifest, root, split=split)
    records = list(annotations.records) + list(annotations.missing)
    if subset is not None:
        wanted = set(r.path for r in annotations.subset(subset)) | {
            r.path for r in annotations.missing if r.subset == subset
        }
        records = [r for r in records if r.path in wanted]
    root = Path(root)
    return [ManifestEntry(_relative_id(r.path, root), r.path) for r in records]


def _relative_id(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _unique(entries: list[ManifestEntry], manifest: Path) -> list[ManifestEntry]:
    seen: dict[str, Path] = {}
    out = []
    for entry in entries:
        known = seen.get(entry.video_id)
        if known is not None:
            if known == entry.path:
                continue  # the same video listed twice
            raise DataError(f"{manifest}: id {entry.video_id!r} names both {known} and {entry.path}: make ids unique")
        seen[entry.video_id] = entry.path
        out.append(entry)
    return out


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (every video inside, recursively, sorted) and globs -> video paths, in order, no repeats.

    A file given by name is kept whatever its suffix (decoding will tell); folders and globs keep files with a
    video suffix. Raises ``VideoError`` for a path that does not exist or a folder / glob without videos.
    """

    def videos_in(paths: list[Path]) -> list[Path]:
        found = []
        for path in paths:
            if path.is_dir():
                found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
            elif path.suffix.lower() in VIDEO_SUFFIXES:
                found.append(path)
        return found

    out: list[Path] = []
    for text in inputs:
        path = Path(text)
        if path.is_file():
            found = [path]
        elif path.is_dir():
            found = videos_in([path])
            if not found:
                raise VideoError(f"folder {path} holds no video files ({', '.join(VIDEO_SUFFIXES)}): check the path")
        elif _GLOB_CHARS & set(text):
            found = videos_in([Path(p) for p in sorted(glob.glob(text, recursive=True))])
            if not found:
                raise VideoError(f"no video files match {text!r}: check the pattern (quote it to stop the shell)")
        elif path.exists():
            raise VideoError(f"{path} is not a regular file (a FIFO, socket or device): give a video file")
        else:
            raise VideoError(f"{path} does not exist: check the path")
        out += found
    return list(dict.fromkeys(out))
