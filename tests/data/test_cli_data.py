"""`mfnet data index` and `mfnet data check` end to end on real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mfnet.cli import main
from mfnet.data.video_writer import numbered_frames, write_video


@pytest.fixture()
def ucf_like(tmp_path: Path) -> tuple[Path, Path]:
    """A two-class UCF-101-style dataset: lists with CRLF, one good, one too short, one broken, one missing."""
    lists, root = tmp_path / "ucfTrainTestlist", tmp_path / "UCF-101"
    lists.mkdir()
    (lists / "classInd.txt").write_bytes(b"1 Archery\r\n2 YoYo\r\n")
    (lists / "trainlist01.txt").write_bytes(
        b"Archery/v_Archery_g01_c01.avi 1\r\nYoYo/v_YoYo_g01_c01.avi 2\r\nYoYo/v_YoYo_g02_c01.avi 2\r\n"
    )
    (lists / "testlist01.txt").write_bytes(b"Archery/v_Archery_g02_c01.avi\r\n")
    write_video(root / "Archery" / "v_Archery_g01_c01.avi", numbered_frames(40), codec="mpeg4")
    write_video(root / "YoYo" / "v_YoYo_g01_c01.avi", numbered_frames(10), codec="mpeg4")
    (root / "Archery" / "v_Archery_g02_c01.avi").write_bytes(b"RIFF....AVI garbage")
    return lists, root


def test_index_json_counts(ucf_like: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    lists, root = ucf_like
    args = ["data", "index", "--format", "ucf101", "--annotations", str(lists), "--root", str(root), "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_classes"] == 2 and result["classes"] == ["Archery", "YoYo"]
    assert result["subsets"]["train"] == {"videos": 2, "missing": 1, "per_class": {"Archery": 1, "YoYo": 1}}
    assert result["subsets"]["test"]["videos"] == 1
    assert [Path(p).name for p in result["missing"]] == ["v_YoYo_g02_c01.avi"]


def test_index_text(ucf_like: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    lists, root = ucf_like
    assert main(["data", "index", "--format", "ucf101", "--annotations", str(lists), "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "2 classes" in out and "train: 2 videos" in out and "1 missing on disk" in out


def test_check_lists_unreadable_and_short_videos(
    ucf_like: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    lists, root = ucf_like
    args = [
        "data",
        "check",
        "--format",
        "ucf101",
        "--annotations",
        str(lists),
        "--root",
        str(root),
        "--json",
        "--workers",
        "2",
    ]
    assert main(args) == 1  # problems found
    result = json.loads(capsys.readouterr().out)
    assert result["checked"] == 3 and result["ok"] == 1 and result["clip_span_frames"] == 31
    assert [Path(r["path"]).name for r in result["unreadable"]] == ["v_Archery_g02_c01.avi"]
    assert result["too_short"] == [{"path": str(root / "YoYo" / "v_YoYo_g01_c01.avi"), "frames": 10}]
    args = [
        "data",
        "check",
        "--format",
        "ucf101",
        "--annotations",
        str(lists),
        "--root",
        str(root),
        "--subset",
        "train",
        "--frames-per-clip",
        "4",
        "--interval",
        "1",
        "--quick",
    ]
    assert main(args) == 0
    assert "checked 2 videos: 2 ok" in capsys.readouterr().out


def test_bad_paths_give_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["data", "index", "--format", "ucf101", "--annotations", str(tmp_path / "x"), "--root", str(tmp_path)])
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("mfnet: error: annotation path") and err.count("\n") == 1 and "Traceback" not in err
    assert main(["data", "index", "--format", "folder", "--root", str(tmp_path / "none")]) == 2
    assert "is not a folder" in capsys.readouterr().err
