"""Tests of manifests, the shard folder and the local engine of large jobs (mfnet.engine.manifest/shards/scaleout)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset
import pytest
import torch

import mfnet
from mfnet.data.video_writer import write_video
from mfnet.engine.manifest import ManifestEntry, entries_from_paths, read_manifest
from mfnet.engine.predictor import ClipSpec, Predictor
from mfnet.engine.scaleout import run_job, run_settings
from mfnet.engine.shards import ShardFolder, read_shards, shard_paths
from mfnet.engine.tables import JobOptions, embedding_table
from mfnet.errors import DataError

SPEC = ClipSpec(frames=8, interval=2, resize=64, crop_size=64)
SMALL = {"depths": (1, 1, 1, 1), "widths": (32, 32, 64, 64)}


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("shards")
    paths = []
    for i in range(5):
        frames = np.random.default_rng(i).integers(0, 255, (20, 48, 64, 3), dtype=np.uint8)
        paths.append(write_video(root / f"v{i}.mp4", frames, fps=10))
    corrupt = root / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    empty = root / "empty.mp4"
    empty.write_bytes(b"")
    return [*paths[:2], corrupt, *paths[2:], empty]


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.manual_seed(0)
    model = mfnet.create_model("mfnet3d", num_classes=3, **SMALL)
    return Predictor(model, spec=SPEC, num_clips=2, batch_size=4, device="cpu")


# -- manifests ------------------------------------------------------------------------------------------------------


def test_text_manifest_relative_paths_comments_and_repeats(tmp_path: Path) -> None:
    manifest = tmp_path / "list.txt"
    manifest.write_text("# videos\na.mp4\n\nsub/b.avi\n/abs/c.mp4\na.mp4\n")
    entries = read_manifest(manifest)
    assert entries == [
        ManifestEntry("a.mp4", tmp_path / "a.mp4"),
        ManifestEntry("sub/b.avi", tmp_path / "sub" / "b.avi"),
        ManifestEntry("/abs/c.mp4", Path("/abs/c.mp4")),
    ]
    assert read_manifest(manifest, root="/data")[0].path == Path("/data/a.mp4")


def test_csv_manifest_with_an_id_column_and_errors(tmp_path: Path) -> None:
    manifest = tmp_path / "videos.csv"
    manifest.write_text("video_id,label,path\nk1,3,x/1.mp4\nk2,4,x/2.mp4\n")
    assert read_manifest(manifest) == [
        ManifestEntry("k1", tmp_path / "x" / "1.mp4"),
        ManifestEntry("k2", tmp_path / "x" / "2.mp4"),
    ]
    manifest.write_text("id,label\nk1,3\n")
    with pytest.raises(DataError, match="no path column"):
        read_manifest(manifest)
    manifest.write_text("id,path\nk1,a.mp4\nk1,b.mp4\n")
    with pytest.raises(DataError, match="make ids unique"):
        read_manifest(manifest)
    with pytest.raises(DataError, match="is not a file"):
        read_manifest(tmp_path / "missing.txt")


def test_annotation_manifest_keeps_missing_videos(videos: list[Path], tmp_path: Path) -> None:
    root = videos[0].parent
    listing = tmp_path / "val_list.txt"
    listing.write_text("v0.mp4 0\nv1.mp4 1\ngone.mp4 1\n")
    entries = read_manifest(listing, format="list", root=root)
    assert [e.video_id for e in entries] == ["v0.mp4", "v1.mp4", "gone.mp4"]
    assert entries[2].path == root / "gone.mp4"  # reported as a failed row by the job, not dropped
    assert [e.video_id for e in read_manifest(listing, format="list", root=root, subset="val")] == [
        "v0.mp4",
        "v1.mp4",
        "gone.mp4",
    ]
    with pytest.raises(DataError, match="lists no videos"):
        read_manifest(listing, format="list", root=root, subset="train")
    with pytest.raises(DataError, match="--root"):
        read_manifest(listing, format="list")


# -- the shard folder -----------------------------------------------------------------------------------------------


def _table(ids: list[str], status: str = "ok") -> pa.Table:
    from mfnet.engine.predictor import VideoEmbedding

    results = [
        (ManifestEntry(i, Path(i)), VideoEmbedding(Path(i), torch.ones(1, 3), torch.tensor([-1]), 2, 1.0)) for i in ids
    ]
    table = embedding_table(results)
    return table.set_column(2, "status", pa.array([status] * len(ids)))


def test_shards_are_atomic_and_a_folder_is_resumed_only_on_request(tmp_path: Path) -> None:
    folder = ShardFolder(tmp_path / "out", run={"task": "features"}, resume=False)
    folder.write(_table(["a", "b"]))
    folder.write(_table(["c"], status="failed"))
    # A shard a killed run was writing: a temporary file, never read, removed when the folder is opened again.
    (tmp_path / "out" / ".tmp-part-x-000000.parquet").write_bytes(b"PAR1 half a shard")
    with pytest.raises(DataError, match="pass --resume"):
        ShardFolder(tmp_path / "out", run={"task": "features"}, resume=False)
    with pytest.raises(DataError, match="other settings"):
        ShardFolder(tmp_path / "out", run={"task": "predict"}, resume=True)
    again = ShardFolder(tmp_path / "out", run={"task": "features"}, resume=True)
    assert again.done == {"a", "b", "c"} and again.counts() == {"ok": 2, "failed": 1}
    assert not list((tmp_path / "out").glob(".tmp-*"))
    assert len(shard_paths(tmp_path / "out")) == 2
    assert read_shards(tmp_path / "out").column("video_id").to_pylist() == ["a", "b", "c"]


def test_a_failing_write_leaves_no_shard(tmp_path: Path) -> None:
    folder = ShardFolder(tmp_path / "out", run={}, resume=False)
    folder.write(_table(["a"]))
    with pytest.raises(AttributeError):  # pyarrow fails half-way: nothing must be left behind
        folder.write("not a table")  # type: ignore[arg-type]
    assert len(shard_paths(tmp_path / "out")) == 1 and not list((tmp_path / "out").glob(".tmp-*"))


# -- the local engine -----------------------------------------------------------------------------------------------


def _run(predictor: Predictor, videos: list[Path], out: Path, **kwargs: object) -> object:
    options = JobOptions(task="features")
    return run_job(entries_from_paths(videos), predictor, options, out, run=run_settings(predictor, options), **kwargs)


def test_local_job_rows_match_the_predictor_and_failures_are_rows(
    predictor: Predictor, videos: list[Path], tmp_path: Path
) -> None:
    summary = _run(predictor, videos, tmp_path / "out", shard_size=3)
    assert (summary.done, summary.failed, summary.skipped, summary.shards) == (5, 2, 0, 3) and summary.complete
    rows = {r["video_id"]: r for r in read_shards(tmp_path / "out").to_pylist()}
    assert sorted(rows) == sorted(str(p) for p in videos)
    reference = predictor.features(videos)
    for index, path in enumerate(videos):
        row = rows[str(path)]
        if path.name in ("corrupt.mp4", "empty.mp4"):
            assert row["status"] == "failed" and path.name in row["error"] and row["embedding"] is None
        else:
            assert row["status"] == "ok" and row["error"] is None and row["clips"] == 2 and row["clip_id"] == -1
            np.testing.assert_allclose(row["embedding"], reference.features[index].numpy(), atol=1e-6)
    # Any Parquet reader takes the folder as one table (the JSON files and temporary shards are skipped).
    assert pyarrow.dataset.dataset(tmp_path / "out", format="parquet").to_table().num_rows == len(videos)
    saved = json.loads((tmp_path / "out" / "_summary.json").read_text())
    assert saved["done"] == 5 and saved["failed"] == 2 and saved["folder_failed"] == 2


def test_interrupted_local_job_resumes_with_the_remaining_videos(
    predictor: Predictor, videos: list[Path], tmp_path: Path
) -> None:
    def stop(path: Path) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(predictor, videos, tmp_path / "out", shard_size=2, on_shard=stop)
    first = json.loads((tmp_path / "out" / "_summary.json").read_text())
    assert first["done"] + first["failed"] == 2 and not first["complete"]
    summary = _run(predictor, videos, tmp_path / "out", shard_size=2, resume=True)
    assert summary.skipped == 2 and summary.done + summary.failed == len(videos) - 2 and summary.complete
    ids = read_shards(tmp_path / "out", columns=["video_id"]).column("video_id").to_pylist()
    assert sorted(ids) == sorted(str(p) for p in videos)  # exactly one row per video
    per_clip = JobOptions(task="features", per_clip=True)
    run_job(
        entries_from_paths(videos[:2]),
        predictor,
        per_clip,
        tmp_path / "clips",
        run=run_settings(predictor, per_clip),
    )
    table = read_shards(tmp_path / "clips")
    assert table.column("clip_id").to_pylist() == [0, 1, 0, 1]
