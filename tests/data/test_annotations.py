"""Annotation parsers on fixture files that follow each official format, awkward cases included."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from mfnet.data.annotations import VideoRecord, load_annotations
from mfnet.errors import DataError


def _touch(root: Path, *relative: str) -> None:
    for rel in relative:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def _write(path: Path, text: str, *, crlf: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((text.replace("\n", "\r\n") if crlf else text).encode())
    return path


def _package_labels(name: str) -> list[str]:
    return resources.files("mfnet.labels").joinpath(name).read_text().split()


# --- UCF-101 ------------------------------------------------------------------------------------------------------


def test_ucf101_crlf_and_case_mismatch(tmp_path: Path) -> None:
    lists, root = tmp_path / "ucfTrainTestlist", tmp_path / "UCF-101"
    _write(lists / "classInd.txt", "1 ApplyEyeMakeup\n2 HandstandPushups\n3 YoYo\n", crlf=True)
    _write(
        lists / "trainlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nHandstandPushups/v_HandStandPushups_g08_c01.avi 2\n",
        crlf=True,
    )
    _write(
        lists / "testlist01.txt",
        "HandstandPushups/v_HandStandPushups_g01_c01.avi\nYoYo/v_YoYo_g01_c01.avi\nYoYo/v_YoYo_g02_c01.avi\n",
        crlf=True,
    )
    # On disk the folder is spelled HandStandPushups, unlike the lists.
    _touch(
        root,
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi",
        "HandStandPushups/v_HandStandPushups_g08_c01.avi",
        "HandStandPushups/v_HandStandPushups_g01_c01.avi",
        "YoYo/v_YoYo_g01_c01.avi",
    )
    annotations = load_annotations("ucf101", lists, root, split=1)
    assert annotations.classes == ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]
    assert [(r.path.relative_to(root).as_posix(), r.label, r.subset) for r in annotations.records] == [
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 0, "train"),
        ("HandStandPushups/v_HandStandPushups_g08_c01.avi", 1, "train"),
        ("HandStandPushups/v_HandStandPushups_g01_c01.avi", 1, "test"),
        ("YoYo/v_YoYo_g01_c01.avi", 2, "test"),
    ]
    assert [(r.path.name, r.label, r.subset) for r in annotations.missing] == [("v_YoYo_g02_c01.avi", 2, "test")]
    assert annotations.counts() == {
        "train": {"ApplyEyeMakeup": 1, "HandstandPushups": 1},
        "test": {"HandstandPushups": 1, "YoYo": 1},
    }
    with pytest.raises(DataError, match="split"):
        load_annotations("ucf101", lists, root, split=2)


def test_ucf101_full_split1_counts(tmp_path: Path) -> None:
    classes = _package_labels("ucf101.txt")
    assert len(classes) == 101
    lists, root = tmp_path / "lists", tmp_path / "videos"
    _write(lists / "classInd.txt", "".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)), crlf=True)
    train, test = [], []
    for n in range(9537):
        c = classes[n % 101]
        train.append(f"{c}/v_{c}_g{8 + n // 101 // 7:02d}_c{n // 101 % 7 + 1:02d}.avi {n % 101 + 1}")
    for n in range(3783):
        c = classes[n % 101]
        test.append(f"{c}/v_{c}_g{1 + n // 101 // 7:02d}_t{n // 101 % 7 + 1:02d}.avi")
    _write(lists / "trainlist01.txt", "\n".join(train) + "\n", crlf=True)
    _write(lists / "testlist01.txt", "\n".join(test) + "\n", crlf=True)
    _touch(root, *[line.split()[0] for line in train + test])
    annotations = load_annotations("ucf101", lists, root)
    assert len(annotations.classes) == 101 and not annotations.missing
    assert (len(annotations.subset("train")), len(annotations.subset("test"))) == (9537, 3783)
    assert len(annotations.counts()["train"]) == 101 and len(annotations.counts()["test"]) == 101


# --- HMDB51 -------------------------------------------------------------------------------------------------------


def test_hmdb51_full_split_counts_special_characters_and_missing(tmp_path: Path) -> None:
    classes = _package_labels("hmdb51.txt")
    assert len(classes) == 51
    splits, root = tmp_path / "testTrainMulti_7030_splits", tmp_path / "hmdb51"
    odd = "#20_Rhythm_clap_u_nm_np1_fr_goo_[HD]_!!(Take_2)"
    for c in classes:
        lines = [f"{odd}_{c}_{k}.avi {1 if k < 70 else 2 if k < 100 else 0} " for k in range(110)]
        for s in (1, 2, 3):
            _write(splits / f"{c}_test_split{s}.txt", "\n".join(lines) + "\n")
    # Only brush_hair is on disk: everything else is reported missing.
    _touch(root, *[f"brush_hair/{odd}_brush_hair_{k}.avi" for k in range(110)])
    annotations = load_annotations("hmdb51", splits, root, split=2)
    assert annotations.classes == sorted(classes)
    everything = annotations.records + annotations.missing
    assert sum(r.subset == "train" for r in everything) == 3570
    assert sum(r.subset == "test" for r in everything) == 1530
    assert len(annotations.records) == 100 and len(annotations.missing) == 5000
    first = annotations.records[0]
    assert first.path.name == f"{odd}_brush_hair_0.avi" and first.path.exists()
    assert first.label == 0 and first.subset == "train"


# --- Kinetics -----------------------------------------------------------------------------------------------------

TAB = "\t"
_K_LABELS = ["passing American football (in game)", "massaging person's head", "abseiling", "tying bow tie, knot"]


def _kinetics_disk(root: Path) -> None:
    _touch(
        root,
        "train/passing_American_football_(in_game)/aaaaaaaaaaa_000010_000020.mp4",  # underscores in the folder
        "train/massaging person's head/bbbbbbbbbbb_000001_000011.mp4",
        "val/abseiling/c-ccc_cccc_000000_000010.mp4",
        "train/tying bow tie, knot/eeeeeeeeeee_000005_000015.mp4",
        "test/ddddddddddd_000030_000040.mp4",
    )


def test_kinetics_csv_quoted_labels_is_cc_test_file_and_missing(tmp_path: Path) -> None:
    root, annotations_dir = tmp_path / "kinetics", tmp_path / "annotations"
    _kinetics_disk(root)
    _write(
        annotations_dir / "train.csv",
        "label,youtube_id,time_start,time_end,split,is_cc\n"
        '"passing American football (in game)",aaaaaaaaaaa,10,20,train,0\n'
        "massaging person's head,bbbbbbbbbbb,1,11,train,0\n"
        '"tying bow tie, knot",eeeeeeeeeee,5,15,train,1\n'
        "abseiling,zzzzzzzzzzz,0,10,train,0\n",  # not downloaded
        crlf=True,
    )
    _write(
        annotations_dir / "validate.csv", "label,youtube_id,time_start,time_end,split\nabseiling,c-ccc_cccc,0,10,val\n"
    )
    _write(annotations_dir / "test.csv", "youtube_id,time_start,time_end,split\nddddddddddd,30,40,test\n")
    annotations = load_annotations("kinetics-csv", annotations_dir, root)
    assert annotations.classes == sorted(_K_LABELS)
    found = {
        (r.path.name, annotations.classes[r.label] if r.label >= 0 else None, r.subset) for r in annotations.records
    }
    assert found == {
        ("aaaaaaaaaaa_000010_000020.mp4", "passing American football (in game)", "train"),
        ("bbbbbbbbbbb_000001_000011.mp4", "massaging person's head", "train"),
        ("eeeeeeeeeee_000005_000015.mp4", "tying bow tie, knot", "train"),
        ("c-ccc_cccc_000000_000010.mp4", "abseiling", "val"),
        ("ddddddddddd_000030_000040.mp4", None, "test"),
    }
    assert [r.path.name for r in annotations.missing] == ["zzzzzzzzzzz_000000_000010.mp4"]
    single = load_annotations("kinetics-csv", annotations_dir / "validate.csv", root, classes=annotations.classes)
    assert [(r.label, r.subset) for r in single.records] == [(annotations.classes.index("abseiling"), "val")]


def test_kinetics_json_variant(tmp_path: Path) -> None:
    root = tmp_path / "kinetics"
    _kinetics_disk(root)
    data = {
        "aaaaaaaaaaa": {
            "annotations": {"label": "passing American football (in game)", "segment": [10.0, 20.0]},
            "duration": 10.0,
            "subset": "train",
            "url": "https://www.youtube.com/watch?v=aaaaaaaaaaa",
        },
        "c-ccc_cccc": {"annotations": {"label": "abseiling", "segment": [0.0, 10.0]}, "subset": "validate"},
        "ddddddddddd": {"annotations": {}, "duration": 10.0, "subset": "test", "url": ""},
    }
    _write(tmp_path / "kinetics_val.json", json.dumps(data))
    annotations = load_annotations("kinetics-json", tmp_path / "kinetics_val.json", root)
    assert annotations.classes == ["abseiling", "passing American football (in game)"]
    assert sorted((r.path.name, r.label, r.subset) for r in annotations.records) == [
        ("aaaaaaaaaaa_000010_000020.mp4", 1, "train"),
        ("c-ccc_cccc_000000_000010.mp4", 0, "val"),
        ("ddddddddddd_000030_000040.mp4", -1, "test"),
    ]


# --- lists and folders: the same videos in several formats give the same records -------------------------------------


def _class_folders(root: Path) -> list[tuple[str, int]]:
    _touch(root, "abseiling/a1.mp4", "abseiling/a2.avi", "air drumming/b1.webm", "notes/readme.txt")
    frames = root / "air drumming" / "b2_frames"
    _touch(frames, "img_00001.jpg", "img_00002.jpg")
    return [
        ("abseiling/a1.mp4", 0),
        ("abseiling/a2.avi", 0),
        ("air drumming/b1.webm", 1),
        ("air drumming/b2_frames", 1),
    ]


def test_authors_list_generic_list_and_folder_agree(tmp_path: Path) -> None:
    root = tmp_path / "videos"
    videos = _class_folders(root)
    _write(tmp_path / "mapping_table.txt", "0\tabseiling\n1\tair drumming\n", crlf=True)
    _write(
        tmp_path / "kinetics_train_list.txt",
        "".join(f"{i}{TAB if i % 2 else ' '}{label}{TAB}{path}\n" for i, (path, label) in enumerate(videos)),
    )
    _write(
        tmp_path / "train_list_videos.txt",
        "".join(f"{path} 2 {label}\n" if "frames" in path else f"{path} {label}\n" for path, label in videos),
    )
    authors = load_annotations("mfnet-list", tmp_path / "kinetics_train_list.txt", root)
    generic = load_annotations("list", tmp_path / "train_list_videos.txt", root, classes=["abseiling", "air drumming"])
    folder = load_annotations("folder", None, root)
    assert authors.classes == generic.classes == folder.classes == ["abseiling", "air drumming"]
    expected = [VideoRecord(root / path, label, "train") for path, label in videos]
    assert authors.records == generic.records == expected
    assert [(r.path, r.label) for r in folder.records] == [(r.path, r.label) for r in expected]
    assert {r.subset for r in folder.records} == {"all"}


def test_authors_list_unlabelled_test_clips(tmp_path: Path) -> None:
    root = tmp_path / "videos"
    _touch(root, "test/x.avi")
    _write(tmp_path / "mapping_table.txt", "0\tabseiling\n1\tair drumming\n")
    _write(tmp_path / "kinetics_test_list.txt", "0\t-1\ttest/x.avi\n1\t-1\ttest/gone.avi\n")
    annotations = load_annotations("mfnet-list", tmp_path / "kinetics_test_list.txt", root)
    assert [(r.label, r.subset) for r in annotations.records] == [(-1, "test")]
    assert annotations.counts() == {"test": {"<unlabelled>": 1}}
    assert len(annotations.missing) == 1


def test_folder_with_subsets_and_image_folder(tmp_path: Path) -> None:
    root = tmp_path / "imagenet"
    _touch(root, "train/n01/a.JPEG", "train/n01/b.jpg", "train/n02/c.png", "val/n02/d.jpeg", "val/n02/e.txt")
    images = load_annotations("image-folder", None, root)
    assert images.classes == ["n01", "n02"]
    assert [(r.path.name, r.label, r.subset) for r in images.records] == [
        ("a.JPEG", 0, "train"),
        ("b.jpg", 0, "train"),
        ("c.png", 1, "train"),
        ("d.jpeg", 1, "val"),
    ]
    videos = tmp_path / "ds"
    _touch(videos, "train/jump/1.mp4", "validation/jump/2.mp4", "validation/run/3.mkv")
    annotations = load_annotations("folder", None, videos)
    assert [(r.label, r.subset) for r in annotations.records] == [(0, "train"), (0, "val"), (1, "val")]


def test_something_something_v2(tmp_path: Path) -> None:
    labels = {"Holding something next to something": "1", "Approaching something with your camera": "0"}
    _write(tmp_path / "labels.json", json.dumps(labels))
    _write(
        tmp_path / "train.json",
        json.dumps(
            [
                {
                    "id": "78687",
                    "label": "holding potato next to vicks vaporub bottle",
                    "template": "Holding [something] next to [something]",
                    "placeholders": ["potato", "vicks vaporub bottle"],
                }
            ]
        ),
    )
    _write(
        tmp_path / "validation.json",
        json.dumps(
            [
                {
                    "id": "42",
                    "label": "approaching door with your camera",
                    "template": "Approaching [something] with your camera",
                    "placeholders": ["door"],
                }
            ]
        ),
    )
    _write(tmp_path / "test.json", json.dumps([{"id": "7"}]))
    root = tmp_path / "20bn-something-something-v2"
    _touch(root, "78687.webm", "42.webm", "7.webm")
    annotations = load_annotations("ssv2", tmp_path, root)
    assert annotations.classes == ["Approaching something with your camera", "Holding something next to something"]
    assert [(r.path.name, r.label, r.subset) for r in annotations.records] == [
        ("78687.webm", 1, "train"),
        ("42.webm", 0, "val"),
        ("7.webm", -1, "test"),
    ]


# --- errors -------------------------------------------------------------------------------------------------------


def test_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown annotation format 'ucf'"):
        load_annotations("ucf", tmp_path, tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_annotations("ucf101", tmp_path / "nowhere", tmp_path)
    with pytest.raises(DataError, match="not a folder"):
        load_annotations("folder", None, tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"classInd\.txt"):
        load_annotations("ucf101", tmp_path, tmp_path)
    bad = _write(tmp_path / "list.txt", "a.mp4 1\nb.mp4 one\n")
    with pytest.raises(DataError, match=r"list.txt:2"):
        load_annotations("list", bad, tmp_path)
    csv_file = _write(tmp_path / "k.csv", "name,url\nx,y\n")
    with pytest.raises(DataError, match="youtube_id"):
        load_annotations("kinetics-csv", csv_file, tmp_path)
