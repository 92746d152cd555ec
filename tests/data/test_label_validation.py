"""Labels are validated when annotations load: an out-of-range label is one error naming the file and line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mfnet.data.annotations import load_annotations
from mfnet.errors import DataError


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def _ucf101(tmp_path: Path, train: str, test: str = "") -> tuple[Path, Path]:
    lists, root = tmp_path / "ucfTrainTestlist", tmp_path / "UCF-101"
    _write(lists / "classInd.txt", "1 ApplyEyeMakeup\n2 YoYo\n")
    _write(lists / "trainlist01.txt", train)
    _write(lists / "testlist01.txt", test)
    root.mkdir()
    return lists, root


@pytest.mark.parametrize("label", ["0", "3", "-1"])
def test_ucf101_label_out_of_its_1_based_range(tmp_path: Path, label: str) -> None:
    lists, root = _ucf101(tmp_path, f"ApplyEyeMakeup/a.avi 1\nYoYo/b.avi {label}\n")
    with pytest.raises(DataError, match=re.escape(f"trainlist01.txt:2: label {label} is out of range")) as info:
        load_annotations("ucf101", lists, root)
    assert "1-based, 1 to 2" in str(info.value) and "\n" not in str(info.value)


def test_empty_lists_are_an_error(tmp_path: Path) -> None:
    lists, root = _ucf101(tmp_path, "", "\n\n")
    with pytest.raises(DataError, match="list no videos"):
        load_annotations("ucf101", lists, root)


@pytest.mark.parametrize("label", ["-5", "-2"])
def test_negative_labels_other_than_unlabelled(tmp_path: Path, label: str) -> None:
    listing = _write(tmp_path / "train.txt", f"a.mp4 0\nb.mp4 {label}\n")
    with pytest.raises(DataError, match=re.escape(f"train.txt:2: label {label} is negative")):
        load_annotations("list", listing, tmp_path)
    authors = _write(tmp_path / "kinetics_train_list.txt", f"0 1 a.mp4\n1 {label} b.mp4\n")
    with pytest.raises(DataError, match=re.escape(f"kinetics_train_list.txt:2: label {label} is negative")):
        load_annotations("mfnet-list", authors, tmp_path)


def test_minus_one_stays_unlabelled(tmp_path: Path) -> None:
    listing = _write(tmp_path / "test.txt", "a.mp4 0\nb.mp4 1\nc.mp4 -1\n")
    annotations = load_annotations("list", listing, tmp_path)
    assert [r.label for r in annotations.missing] == [0, 1, -1] and annotations.classes == ["0", "1"]


def test_a_stray_large_label_is_not_a_new_class_count(tmp_path: Path) -> None:
    lines = [f"v{i}.mp4 {i % 8}" for i in range(16)] + ["typo.mp4 57"]
    listing = _write(tmp_path / "train.txt", "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=re.escape("train.txt:17: label 57 makes 58 classes, but only 9")):
        load_annotations("list", listing, tmp_path)
    # With the 8 class names given, the same label is out of range, with its line.
    names = _write(tmp_path / "classes.txt", "\n".join(f"c{i}" for i in range(8)) + "\n")
    with pytest.raises(DataError, match=re.escape("train.txt:17: label 57 is out of range: labels run from 0 to 7")):
        load_annotations("list", listing, tmp_path, classes=names)
    # With 58 names given, 57 is a real class.
    many = _write(tmp_path / "many.txt", "\n".join(f"c{i}" for i in range(58)) + "\n")
    assert len(load_annotations("list", listing, tmp_path, classes=many).classes) == 58


def test_mfnet_list_label_beyond_its_mapping_table(tmp_path: Path) -> None:
    _write(tmp_path / "mapping_table.txt", "0 a\n1 b\n")
    listing = _write(tmp_path / "kinetics_val_list.txt", "0 0 a.mp4\n1 1 b.mp4\n2 2 c.mp4\n")
    with pytest.raises(DataError, match=re.escape("kinetics_val_list.txt:3: label 2 is out of range")):
        load_annotations("mfnet-list", listing, tmp_path)


def test_kinetics_csv_that_is_not_utf8(tmp_path: Path) -> None:
    csv = _write(tmp_path / "train.csv", b"label,youtube_id,time_start,time_end,split\ncaf\xe9,x,0,10,train\n")
    with pytest.raises(DataError, match=r"train.csv is not UTF-8 text \(byte 0xe9"):
        load_annotations("kinetics-csv", csv, tmp_path)


def test_kinetics_label_not_in_the_class_list(tmp_path: Path) -> None:
    csv = _write(tmp_path / "val.csv", "label,youtube_id,time_start,time_end,split\nabseiling,x,0,10,val\n")
    names = _write(tmp_path / "classes.txt", "archery\n")
    with pytest.raises(DataError, match=re.escape("val.csv:2: class 'abseiling' is not in the class list")):
        load_annotations("kinetics-csv", csv, tmp_path, classes=names)
