"""Annotation parsers: every dataset format becomes the same ``VideoRecord(path, label, subset)`` list.

``load_annotations(format, annotations, root, *, split=None, classes=None)`` parses one format and checks which
annotated videos exist under ``root``. Formats (see docs/data.md for the exact file layouts):

- ``ucf101``: the official ``ucfTrainTestlist`` folder (``classInd.txt``, ``trainlist0N.txt``, ``testlist0N.txt``).
- ``hmdb51``: the official split folder (``<class>_test_splitN.txt``, marks 1 train, 2 test, 0 unused).
- ``kinetics-csv``: a Kinetics-400/600/700 CSV file or a folder of them; ``kinetics-json``: the JSON variant.
- ``mfnet-list``: the paper authors' ``id label path`` lists with ``mapping_table.txt``.
- ``list``: generic ``path label`` lists (MMAction2; ``path frames label`` for frame folders too).
- ``folder``: a folder of class sub-folders (optionally inside ``train``/``val``/``test`` folders).
- ``image-folder``: the same for images (ImageNet-style ``train``/``val`` class folders) for the 2D models.
- ``ssv2``: Something-Something-v2 (``labels.json`` and ``train``/``validation``/``test`` JSON files).

Subsets are named ``train``, ``val`` and ``test`` (``validate``/``validation`` become ``val``; the official
UCF-101 and HMDB51 test lists are ``test``). Unlabelled test clips get label ``-1``. Annotated videos that are
not on disk are reported in ``Annotations.missing`` instead of failing.

Labels are validated as they load: a label outside the class list (a 0 in UCF-101's 1-based lists, a negative
label other than the ``-1`` that marks an unlabelled clip, a label beyond the class names given) is a
``DataError`` naming the file and line. Lists without class names take their class count from the largest label;
when that leaves more than half of the classes without any video, the largest label is reported as a likely typo
(pass the class names with ``classes`` to keep it). Annotations that list no video at all are an error too.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from mfnet.data.readers import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from mfnet.errors import DataError

FORMATS = ("ucf101", "hmdb51", "kinetics-csv", "kinetics-json", "mfnet-list", "list", "folder", "image-folder", "ssv2")
_SUBSET_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validate": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


class VideoRecord(NamedTuple):
    """One annotated video (or image, or frame folder).

    Attributes:
        path: the file or frame folder on disk.
        label: 0-based class index into ``Annotations.classes``; -1 when unlabelled.
        subset: ``train``, ``val``, ``test`` (or ``all`` when the format does not say).
    """

    path: Path
    label: int
    subset: str


@dataclass
class Annotations:
    """A parsed dataset.

    Attributes:
        records: the annotated videos that exist on disk.
        classes: class names, indexed by label.
        missing: the annotated videos that do not exist on disk.
    """

    records: list[VideoRecord]
    classes: list[str]
    missing: list[VideoRecord] = field(default_factory=list)

    def subset(self, name: str) -> list[VideoRecord]:
        """The records of one subset (``train``, ``val``, ``test``; aliases such as ``validation`` work)."""
        name = _SUBSET_NAMES.get(name.lower(), name.lower())
        return [record for record in self.records if record.subset == name]

    @property
    def subsets(self) -> list[str]:
        """Subset names present, in the order train, val, test, others."""
        order = {"train": 0, "val": 1, "test": 2}
        names = {r.subset for r in self.records} | {r.subset for r in self.missing}
        return sorted(names, key=lambda s: (order.get(s, 3), s))

    def counts(self) -> dict[str, dict[str, int]]:
        """``{subset: {class name (or "<unlabelled>"): videos on disk}}``."""
        result: dict[str, dict[str, int]] = {}
        for subset in self.subsets:
            counter = Counter(self._name(r.label) for r in self.records if r.subset == subset)
            result[subset] = dict(sorted(counter.items()))
        return result

    def _name(self, label: int) -> str:
        return self.classes[label] if 0 <= label < len(self.classes) else "<unlabelled>"


def load_annotations(
    format: str,
    annotations: str | Path | None,
    root: str | Path,
    *,
    split: int | None = None,
    classes: Sequence[str] | str | Path | None = None,
) -> Annotations:
    """Parses a dataset's annotations and checks its files.

    Args:
        format: one of ``FORMATS``.
        annotations: the annotation file or folder (``None`` for ``folder``/``image-folder``).
        root: the folder the videos live in (paths in the annotations are relative to it).
        split: the official split (1-3) for ``ucf101`` and ``hmdb51`` (default 1); not used by other formats.
        classes: class names (a list or a file with one name per line, or ``idx name`` lines) that fix the label
            order; by default the format's own list (``classInd.txt``, ``mapping_table.txt``, ...) or the sorted
            names found.

    Raises:
        DataError: unknown format, missing annotation file or root, malformed lines.
    """
    parser = _PARSERS.get(format)
    if parser is None:
        raise DataError(f"unknown annotation format {format!r}: use one of {', '.join(FORMATS)}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset root {root} is not a folder: pass the folder that holds the videos with --root")
    if annotations is None and format not in ("folder", "image-folder"):
        raise DataError(f"format {format} needs its annotation file or folder: pass it with --annotations")
    if annotations is not None and not Path(annotations).exists():
        raise DataError(f"annotation path {annotations} does not exist: check --annotations")
    if annotations is not None and not (Path(annotations).is_file() or Path(annotations).is_dir()):
        raise DataError(f"annotation path {annotations} is not a file or folder (a FIFO, socket or device)")
    if split is not None and format in ("ucf101", "hmdb51") and split not in (1, 2, 3):
        raise DataError(f"{format} has splits 1, 2 and 3, not {split}: pass --split 1, 2 or 3")
    fixed = _read_class_names(classes) if classes is not None else None
    entries, names = parser(Path(annotations) if annotations is not None else None, root, split or 1)
    if not entries:
        where = annotations if annotations is not None else root
        raise DataError(f"the {format} annotations {where} list no videos: check the files (they may be empty)")
    class_list = list(fixed) if fixed is not None else names
    if fixed is None:
        _check_label_gaps(entries, class_list)
    return _check_files(entries, class_list, root)


def _label_error(source: str, label: int, count: int, hint: str = "") -> DataError:
    where = f"{source}: " if source else ""
    return DataError(
        f"{where}label {label} is out of range: labels run from 0 to {count - 1} ({count} classes), or -1 for an "
        f"unlabelled clip{hint}; fix the label or pass the matching class list"
    )


def _negative_label(path: Path, number: int, label: int) -> DataError:
    return DataError(
        f"{path}:{number}: label {label} is negative: labels are 0-based class indices, and -1 marks an "
        "unlabelled clip; fix the line"
    )


def _check_label_gaps(entries: list[_Entry], classes: list[str]) -> None:
    """Class counts taken from the largest label: refuse one that leaves most classes without a video."""
    numbers = {label for _, label, _, _ in entries if isinstance(label, int)}
    if not numbers or len(numbers) * 2 >= len(classes) or classes != [str(i) for i in range(len(classes))]:
        return
    top = max(numbers)
    source = next(src for _, label, _, src in entries if label == top)
    below = sorted(numbers - {top})
    raise DataError(
        f"{source}: label {top} makes {top + 1} classes, but only {len(numbers)} of them have videos "
        f"(the others go up to {below[-1] if below else 'none'}): fix the label, or pass the class names "
        "(--classes FILE) if the classes really are that many"
    )


# --- helpers -----------------------------------------------------------------------------------------------------

# A parser returns (entries, class names); an entry is (relative path or absolute Path, label, subset, source) where
# the label is an int index or a class name (str) to be looked up in the final class list (None: unlabelled), and
# the source is "file:line" (or "" when the entry comes from a folder layout).
_Entry = tuple[object, int | str | None, str, str]


def _lines(path: Path) -> Iterable[tuple[int, str]]:
    """Non-empty stripped lines (any line ending, BOM removed) with 1-based line numbers."""
    with open(path, encoding="utf-8-sig", errors="replace", newline=None) as handle:
        for number, line in enumerate(handle, 1):
            text = line.strip()
            if text:  # no comment syntax: HMDB51 file names start with '#'
                yield number, text


def _bad_line(path: Path, number: int, line: str, expected: str) -> DataError:
    return DataError(f"{path}:{number}: cannot parse {line!r} (expected {expected}): is --format right?")


def _read_class_names(source: Sequence[str] | str | Path) -> list[str]:
    if not isinstance(source, (str, Path)):
        return list(source)
    path = Path(source)
    if not path.is_file():
        raise DataError(f"class list {path} does not exist: pass a file with one class name per line")
    table: dict[int, str] = {}
    plain: list[str] = []
    for _, line in _lines(path):
        first, _, rest = line.partition("\t") if "\t" in line else line.partition(" ")
        if first.isdigit() and rest.strip():
            table[int(first)] = rest.strip()
        plain.append(line)
    if table and len(table) == len(plain):
        base = min(table)
        return [table[i] for i in sorted(table) if i - base < len(table)]
    return plain


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not valid UTF-8 JSON ({str(err).splitlines()[0]}): re-download it") from None


def _subset_from_name(name: str) -> str:
    lowered = name.lower()
    for key in ("train", "val", "test"):
        if key in lowered:
            return key
    return "all"


def _check_files(entries: list[_Entry], classes: list[str], root: Path) -> Annotations:
    index = {name: i for i, name in enumerate(classes)}
    folded = {_fold(name): i for i, name in enumerate(classes)}
    resolver = _Resolver(root)
    records: list[VideoRecord] = []
    missing: list[VideoRecord] = []
    for location, label, subset, source in entries:
        if isinstance(label, str):
            found = index.get(label, folded.get(_fold(label)))
            if found is None:
                where = f"{source}: " if source else ""
                raise DataError(f"{where}class {label!r} is not in the class list: pass the matching class list")
            label_index = found
        elif label is None:
            label_index = -1
        else:
            label_index = label
            if not 0 <= label_index < len(classes):
                raise _label_error(source, label_index, len(classes))
        path = location if isinstance(location, Path) else resolver.resolve(str(location))
        if path is None:
            missing.append(VideoRecord(root / str(location), label_index, subset))
        else:
            records.append(VideoRecord(path, label_index, subset))
    return Annotations(records, classes, missing)


def _fold(name: str) -> str:
    """Class names compared without case, spaces, underscores or quotes."""
    return re.sub(r"[\s_'\"]+", "", name).lower()


class _Resolver:
    """Finds an annotated relative path under the root, ignoring case when the exact path is not there."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lower: dict[str, Path] | None = None

    def resolve(self, relative: str) -> Path | None:
        relative = relative.replace("\\", "/").lstrip("/")
        path = self.root / relative
        if path.exists():
            return path
        if self._lower is None:
            self._lower = {}
            for folder, dirs, files in os.walk(self.root):
                base = Path(folder)
                for name in files + dirs:
                    full = base / name
                    self._lower.setdefault(full.relative_to(self.root).as_posix().lower(), full)
        return self._lower.get(relative.lower())


# --- UCF-101 ------------------------------------------------------------------------------------------------------


def _parse_ucf101(annotations: Path, root: Path, split: int) -> tuple[list[_Entry], list[str]]:
    folder = annotations if annotations.is_dir() else annotations.parent
    class_file = folder / "classInd.txt"
    if not class_file.is_file():
        raise DataError(f"{folder} has no classInd.txt: pass the ucfTrainTestlist folder with --annotations")
    table: dict[int, str] = {}
    for number, line in _lines(class_file):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise _bad_line(class_file, number, line, "'<1-based index> <class name>'")
        table[int(parts[0])] = parts[1]
    classes = [table[i] for i in sorted(table)]
    by_name = {name.lower(): i for i, name in enumerate(classes)}
    entries: list[_Entry] = []
    train_file, test_file = folder / f"trainlist0{split}.txt", folder / f"testlist0{split}.txt"
    if not train_file.is_file() and not test_file.is_file():
        raise DataError(f"{folder} has neither trainlist0{split}.txt nor testlist0{split}.txt: check --split")
    if train_file.is_file():
        for number, line in _lines(train_file):
            parts = line.split()
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise _bad_line(train_file, number, line, "'<Class>/<video>.avi <1-based label>'")
            if not 1 <= int(parts[1]) <= len(classes):
                raise DataError(
                    f"{train_file}:{number}: label {parts[1]} is out of range: UCF-101 labels are 1-based, "
                    f"1 to {len(classes)} as in classInd.txt; fix the line"
                )
            entries.append((parts[0], int(parts[1]) - 1, "train", f"{train_file}:{number}"))
    if test_file.is_file():
        for number, line in _lines(test_file):
            relative = line.split()[0]
            folder_name = relative.replace("\\", "/").split("/")[0]
            label = by_name.get(folder_name.lower())
            if label is None:
                raise _bad_line(test_file, number, line, "'<Class>/<video>.avi' with a class of classInd.txt")
            entries.append((relative, label, "test", f"{test_file}:{number}"))
    return entries, classes


# --- HMDB51 -------------------------------------------------------------------------------------------------------

_HMDB_FILE = re.compile(r"^(?P<name>.+)_test_split(?P<split>[123])\.txt$")


def _parse_hmdb51(annotations: Path, root: Path, split: int) -> tuple[list[_Entry], list[str]]:
    folder = annotations if annotations.is_dir() else annotations.parent
    files = {}
    for path in folder.iterdir():
        match = _HMDB_FILE.match(path.name)
        if match and int(match["split"]) == split:
            files[match["name"]] = path
    if not files:
        raise DataError(f"{folder} has no <class>_test_split{split}.txt files: pass the HMDB51 split folder")
    classes = sorted(files)
    entries: list[_Entry] = []
    for label, name in enumerate(classes):
        for number, line in _lines(files[name]):
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise _bad_line(files[name], number, line, "'<video>.avi <0|1|2>'")
            if parts[1] != "0":
                subset = "train" if parts[1] == "1" else "test"
                entries.append((f"{name}/{parts[0]}", label, subset, f"{files[name]}:{number}"))
    return entries, classes


# --- Kinetics -----------------------------------------------------------------------------------------------------


_CLIP_NAME = re.compile(r"^(?P<id>.+)_(?P<start>\d{6})_(?P<end>\d{6})$")


class _ClipIndex:
    """Finds Kinetics clips anywhere under the root by file name (``<id>_<start>_<end>``, else ``<id>``)."""

    def __init__(self, root: Path) -> None:
        self.by_stem: dict[str, Path] = {}
        self.by_id: dict[str, Path] = {}
        for folder, dirs, files in os.walk(root):
            for name in files:
                stem, suffix = os.path.splitext(name)
                if suffix.lower() in VIDEO_SUFFIXES:
                    self._add(stem, Path(folder) / name)
            for name in dirs:  # frame folders named like clips
                if _CLIP_NAME.match(name):
                    self._add(name, Path(folder) / name)

    def _add(self, stem: str, path: Path) -> None:
        self.by_stem.setdefault(stem, path)
        match = _CLIP_NAME.match(stem)
        if match:
            self.by_id.setdefault(match["id"], path)

    def find(self, youtube_id: str, start: int, end: int) -> Path | None:
        """The clip's file: by its full name, else by the YouTube id alone (segment unknown or renamed)."""
        return (
            self.by_stem.get(f"{youtube_id}_{start:06d}_{end:06d}")
            or self.by_stem.get(youtube_id)
            or self.by_id.get(youtube_id)
        )


def _kinetics_entries(
    rows: Iterable[tuple[str, int, int, str | None, str, str]], root: Path
) -> tuple[list[_Entry], list[str]]:
    clips = _ClipIndex(root)
    entries: list[_Entry] = []
    names: set[str] = set()
    for youtube_id, start, end, label, subset, source in rows:
        path = clips.find(youtube_id, start, end)
        if label:
            names.add(label)
        relative = f"{label or subset}/{youtube_id}_{start:06d}_{end:06d}.mp4"
        entries.append((path if path is not None else relative, label or None, subset, source))
    return entries, sorted(names)


def _parse_kinetics_csv(annotations: Path, root: Path, split: int) -> tuple[list[_Entry], list[str]]:
    files = sorted(annotations.glob("*.csv")) if annotations.is_dir() else [annotations]
    if not files:
        raise DataError(f"{annotations} holds no .csv files: pass a Kinetics CSV file or its folder")
    rows: list[tuple[str, int, int, str | None, str, str]] = []
    for file in files:
        try:
            rows += _kinetics_csv_rows(file)
        except UnicodeDecodeError as err:
            raise DataError(
                f"{file} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}): "
                "save it as UTF-8 or re-download it"
            ) from None
    return _kinetics_entries(rows, root)


def _kinetics_csv_rows(file: Path) -> list[tuple[str, int, int, str | None, str, str]]:
    rows: list[tuple[str, int, int, str | None, str, str]] = []
    with open(file, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        fields = {(name or "").strip() for name in reader.fieldnames or []}
        if not {"youtube_id", "time_start", "time_end"} <= fields:
            raise DataError(
                f"{file} lacks youtube_id,time_start,time_end columns: is it a Kinetics CSV? check --format"
            )
        for number, row in enumerate(reader, 2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            try:
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            except ValueError:
                raise _bad_line(file, number, ",".join(row.values()), "integer time_start, time_end") from None
            subset = _SUBSET_NAMES.get(row.get("split", "").lower()) or _subset_from_name(file.stem)
            rows.append((row["youtube_id"], start, end, row.get("label") or None, subset, f"{file}:{number}"))
    return rows


def _parse_kinetics_json(annotations: Path, root: Path, split: int) -> tuple[list[_Entry], list[str]]:
    files = sorted(annotations.glob("*.json")) if annotations.is_dir() else [annotations]
    rows: list[tuple[str, int, int, str | None, str, str]] = []
    for file in files:
        data = _read_json(file)
        if not isinstance(data, dict):
            raise DataError(f"{file} is not a Kinetics JSON object of {{youtube_id: {{...}}}}: check --format")
        for youtube_id, info in data.items():
            notes = info.get("annotations") or {}
            segment = notes.get("segment") or [0, 10]
            subset = _SUBSET_NAMES.get(str(info.get("subset", "")).lower()) or _subset_from_name(file.stem)
            rows.append((youtube_id, int(segment[0]), int(segment[1]), notes.get("label") or None, subset, str(file)))
    return _kinetics_entries(rows, root)


# --- the authors' lists and generic lists -------------------------------------------------------------------------


def _parse_mfnet_list(annotations: Path, root: Path, split: int) -> tuple[list[_Entry], list[str]]:
    if annotations.is_dir():
        raise DataError(f"{annotations} is a folder: pass the list file itself (e.g. kinetics_train_list.txt)")
    entries: list[_Entry] = []
    subset = _subset_from_name(annotations.stem)
    top = -1
    for number, line in _lines(annotations):
        parts = line.split(maxsplit=2)
        if len(parts) != 3 or not parts[0].lstrip("-").isdigit() or not parts[1].lstrip("-").isdigit():
            raise _bad_line(annotations, number, line, "'<id> <0-based label or -1> <relative path>'")
        label = int(parts[1])
        if label < -1:
            raise _negative_label(annotations, number, label)
        top = max(top, label)
        entries.append((parts[2], label if label >= 0 else None, subset, f"{annotations}:{number}"))
    table = annotations.parent / "mapping_table.txt"
    classes = _read_class_names(table) if table.is_file() else [str(i) for i in range(top + 1)]
    return entries, classes


def _parse_list(annotations: Path, root: Path, split: int) -> tuple[list[_Entry], list[str]]:
    if annotations.is_dir():
        raise DataError(f"{annotations} is a folder: pass the list file ('<path> <label>' lines)")
    entries: list[_Entry] = []
    subset = _subset_from_name(annotations.stem)
    top = -1
    for number, line in _lines(annotations):
        parts = line.rsplit(maxsplit=1)
        if len(parts) < 2 or not parts[-1].lstrip("-").isdigit():
            raise _bad_line(annotations, number, line, "'<path> <label>' or '<frame folder> <frames> <label>'")
        label = int(parts[-1])
        if label < -1:
            raise _negative_label(annotations, number, label)
        top = max(top, label)
        path = parts[0]
        frames = re.match(r"^(.*\S)\s+\d+$", path)  # '<frame folder> <frames>' unless the path itself exists
        if frames and not (root / path).exists():
            path = frames.group(1)
        entries.append((path, label if label >= 0 else None, subset, f"{annotations}:{number}"))
    return entries, [str(i) for i in range(top + 1)]


# --- folders ------------------------------------------------------------------------------------------------------


def _folder_entries(root: Path, keep: Callable[[Path], bool]) -> tuple[list[_Entry], list[str]]:
    children = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    subset_dirs = {p: _SUBSET_NAMES[p.name.lower()] for p in children if p.name.lower() in _SUBSET_NAMES}
    groups = [(p, s) for p, s in subset_dirs.items()] if subset_dirs else [(root, "all")]
    found: list[tuple[Path, str, str]] = []
    for base, subset in groups:
        for class_dir in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for item in sorted(class_dir.iterdir()):
                if keep(item):
                    found.append((item, class_dir.name, subset))
    if not found:
        raise DataError(f"{root} has no class sub-folders with videos or images: check --root (or the format)")
    classes = sorted({name for _, name, _ in found})
    return [(path, name, subset, "") for path, name, subset in found], classes


def _is_video(path: Path) -> bool:
    if path.is_dir():  # a frame folder
        return any(child.suffix.lower() in IMAGE_SUFFIXES for child in path.iterdir())
    return path.suffix.lower() in VIDEO_SUFFIXES


def _parse_folder(annotations: Path | None, root: Path, split: int) -> tuple[list[_Entry], list[str]]:
    return _folder_entries(root, _is_video)


def _parse_image_folder(annotations: Path | None, root: Path, split: int) -> tuple[list[_Entry], list[str]]:
    return _folder_entries(root, lambda p: p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


# --- Something-Something-v2 ---------------------------------------------------------------------------------------


def _parse_ssv2(annotations: Path, root: Path, split: int) -> tuple[list[_Entry], list[str]]:
    folder = annotations if annotations.is_dir() else annotations.parent
    labels_file = folder / "labels.json"
    if not labels_file.is_file():
        raise DataError(f"{folder} has no labels.json: pass the Something-Something-v2 annotation folder")
    table = _read_json(labels_file)
    classes = [name for name, _ in sorted(table.items(), key=lambda kv: int(kv[1]))]
    if annotations.is_dir():
        files = [folder / f"{name}.json" for name in ("train", "validation", "test")]
        files = [f for f in files if f.is_file()]
    else:
        files = [annotations]
    suffix = ".webm"
    entries: list[_Entry] = []
    for file in files:
        subset = _subset_from_name(file.stem)
        for item in _read_json(file):
            template = item.get("template")
            name = template.replace("[", "").replace("]", "") if template else None
            entries.append((f"{item['id']}{suffix}", name, subset, f"{file} (id {item.get('id')})"))
    return entries, classes


_PARSERS: dict[str, Callable[[Path | None, Path, int], tuple[list[_Entry], list[str]]]] = {
    "ucf101": _parse_ucf101,
    "hmdb51": _parse_hmdb51,
    "kinetics-csv": _parse_kinetics_csv,
    "kinetics-json": _parse_kinetics_json,
    "mfnet-list": _parse_mfnet_list,
    "list": _parse_list,
    "folder": _parse_folder,
    "image-folder": _parse_image_folder,
    "ssv2": _parse_ssv2,
}
