"""``mfnet predict`` / ``mfnet features`` over manifests into folders of shards, on the local and the Ray engine.

The Ray tests run a real local cluster (``ray.init(num_cpus=2)``, one per module) and are marked slow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import mfnet
from mfnet.cli import main
from mfnet.data.video_writer import write_video
from mfnet.engine.shards import read_shards
from mfnet.models.checkpoint import save_checkpoint

SMALL = {"depths": [1, 1, 1, 1], "widths": [32, 32, 64, 64]}
CLIP_ARGS = ["--frames", "8", "--size", "64", "--clips", "2"]
NUM_GOOD = 6


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Six generated videos, a corrupt and a zero-byte one, listed in a manifest; a checkpoint with 3 classes."""
    root = tmp_path_factory.mktemp("scaleout")
    names = []
    for i in range(NUM_GOOD):
        frames = np.random.default_rng(i).integers(0, 255, (20, 48, 64, 3), dtype=np.uint8)
        write_video(root / "videos" / f"v{i}.mp4", frames, fps=10)
        names.append(f"videos/v{i}.mp4")
    (root / "videos" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    (root / "videos" / "empty.mp4").write_bytes(b"")
    names[2:2] = ["videos/corrupt.mp4"]
    names.append("videos/empty.mp4")
    (root / "videos.txt").write_text("\n".join(names) + "\n")
    torch.manual_seed(0)
    model = mfnet.create_model("mfnet3d", num_classes=3, **SMALL)
    torch.nn.init.normal_(model.classifier.weight, std=0.5)
    ckpt = save_checkpoint(root / "m.pth", model, model_name="mfnet3d", model_kwargs=SMALL, classes=["a", "b", "c"])
    return {"root": root, "manifest": root / "videos.txt", "ckpt": ckpt}


def _rows(folder: Path) -> dict[str, dict]:
    rows = read_shards(folder).to_pylist()
    by_id = {r["video_id"]: r for r in rows}
    assert len(by_id) == len(rows), "a video has two rows"
    return by_id


def _features(job: dict[str, Path], out: Path, *extra: str) -> int:
    argv = ["features", "--manifest", str(job["manifest"]), "--weights", str(job["ckpt"]), "--out", str(out)]
    return main([*argv, *CLIP_ARGS, *extra])


# -- local engine ---------------------------------------------------------------------------------------------------


def test_features_manifest_to_shards_with_failed_rows(
    job: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "feats"
    assert _features(job, out, "--shard-size", "3", "--workers", "0") == 1  # two videos failed
    captured = capsys.readouterr()
    assert "6 done, 2 failed, 0 skipped of 8 videos" in captured.out
    assert "mfnet: failed: videos/corrupt.mp4" in captured.err and "Traceback" not in captured.err
    rows = _rows(out)
    assert len(rows) == 8 and len(list(out.glob("part-*.parquet"))) == 3
    assert rows["videos/empty.mp4"]["status"] == "failed" and "empty.mp4" in rows["videos/empty.mp4"]["error"]
    assert rows["videos/v0.mp4"]["status"] == "ok" and len(rows["videos/v0.mp4"]["embedding"]) == 64
    summary = json.loads((out / "_summary.json").read_text())
    assert (summary["done"], summary["failed"], summary["skipped"], summary["complete"]) == (6, 2, 0, True)
    # The same videos written to .npy by the single-file path: the same numbers.
    npy = tmp_path / "feats.npy"
    assert _features(job, npy, "--workers", "0") == 1
    index = json.loads(npy.with_suffix(".json").read_text())
    matrix = np.load(npy)
    for path, row in zip(index["paths"], matrix, strict=True):
        video_id = str(Path(path).relative_to(job["root"]))
        if rows[video_id]["status"] == "ok":
            np.testing.assert_allclose(rows[video_id]["embedding"], row, atol=1e-6)


def test_predict_to_shards_and_resume_rules(
    job: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "preds"
    argv = ["predict", "--manifest", str(job["manifest"]), "--weights", str(job["ckpt"]), "--out", str(out)]
    assert main([*argv, *CLIP_ARGS, "--topk", "2", "--json"]) == 1
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["done"] == NUM_GOOD and summary["failed"] == 2 and summary["task"] == "predict"
    row = _rows(out)["videos/v1.mp4"]
    assert row["topk_label"][0] in ("a", "b", "c") and len(row["topk_index"]) == 2
    assert row["topk_prob"][0] >= row["topk_prob"][1] > 0
    # An existing folder needs --resume; a resumed run with other settings is refused; a finished one skips all.
    assert main([*argv, *CLIP_ARGS, "--topk", "2"]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main([*argv, *CLIP_ARGS, "--topk", "3", "--resume"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main([*argv, *CLIP_ARGS, "--topk", "2", "--resume"]) == 1  # failures recorded earlier still count
    assert "0 done, 0 failed, 8 skipped of 8 videos" in capsys.readouterr().out
    assert main(["predict", "--weights", str(job["ckpt"]), "--resume", *CLIP_ARGS, str(job["root"] / "videos")]) == 2
    assert "pass --out DIR" in capsys.readouterr().err
    assert main(["predict", "--weights", str(job["ckpt"])]) == 2
    assert "no videos given" in capsys.readouterr().err


def test_a_manifest_also_feeds_the_printing_commands(job: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["predict", "--manifest", str(job["manifest"]), "--weights", str(job["ckpt"]), "--json", "--workers", "0"]
    assert main([*argv, *CLIP_ARGS]) == 1
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    names = [Path(r["path"]).name for r in records]
    assert names == [Path(line).name for line in job["manifest"].read_text().split()]
    assert "error" in records[2] and "topk" in records[0]
    assert main([*argv, *CLIP_ARGS, "--manifest-format", "kinetics"]) == 2
    assert "unknown manifest format 'kinetics'" in capsys.readouterr().err


_KILL_AFTER_FIRST_SHARD = """
import os, signal, sys
from mfnet.engine import shards
write = shards.ShardFolder.write
def write_then_die(self, table):
    path = write(self, table)
    os.kill(os.getpid(), signal.SIGKILL)  # a hard kill: no cleanup, no summary
shards.ShardFolder.write = write_then_die
from mfnet.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_killed_run_resumes_with_only_the_remaining_videos(
    job: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "killed"
    argv = ["features", "--manifest", str(job["manifest"]), "--weights", str(job["ckpt"]), "--out", str(out)]
    argv += [*CLIP_ARGS, "--shard-size", "3", "--workers", "0"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    killed = subprocess.run([sys.executable, "-c", _KILL_AFTER_FIRST_SHARD, *argv], env=env, capture_output=True)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert len(_rows(out)) == 3 and not (out / "_summary.json").exists()
    assert main([*argv, "--resume"]) == 1
    assert "4 done, 1 failed, 3 skipped of 8 videos" in capsys.readouterr().out  # corrupt.mp4 was in shard 1
    assert len(_rows(out)) == 8


# -- Ray engine -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """One local Ray cluster of 2 CPUs for the module's tests; yields its address."""
    ray = pytest.importorskip("ray", reason="the Ray engine is the optional extra mfnet[ray]")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_ray_engine_agrees_with_the_local_engine(
    job: dict[str, Path], tmp_path: Path, ray_cluster: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _features(job, tmp_path / "local", "--workers", "0") == 1
    assert _features(job, tmp_path / "ray", "--engine", "ray", "--shard-size", "2") == 1  # some failed
    assert "6 done, 2 failed, 0 skipped of 8 videos" in capsys.readouterr().out
    local, distributed = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    assert sorted(local) == sorted(distributed) and len(local) == 8
    for video_id, row in local.items():
        other = distributed[video_id]
        assert (row["status"], row["error"], row["clips"]) == (other["status"], other["error"], other["clips"])
        if row["status"] == "ok":
            np.testing.assert_allclose(row["embedding"], other["embedding"], atol=1e-5)
    for name in ("corrupt.mp4", "empty.mp4"):
        assert distributed[f"videos/{name}"]["status"] == "failed" and name in distributed[f"videos/{name}"]["error"]
    # Predictions too.
    argv = ["predict", "--manifest", str(job["manifest"]), "--weights", str(job["ckpt"]), *CLIP_ARGS]
    assert main([*argv, "--out", str(tmp_path / "p_local"), "--workers", "0"]) == 1
    assert main([*argv, "--out", str(tmp_path / "p_ray"), "--engine", "ray"]) == 1
    local, distributed = _rows(tmp_path / "p_local"), _rows(tmp_path / "p_ray")
    for video_id, row in local.items():
        assert row["topk_index"] == distributed[video_id]["topk_index"]
        if row["status"] == "ok":
            np.testing.assert_allclose(row["topk_prob"], distributed[video_id]["topk_prob"], atol=1e-5)


@pytest.mark.slow
def test_ray_run_killed_part_way_resumes_with_the_remaining_videos(
    job: dict[str, Path], tmp_path: Path, ray_cluster: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ray_killed"
    argv = ["features", "--manifest", str(job["manifest"]), "--weights", str(job["ckpt"]), "--out", str(out)]
    argv += [*CLIP_ARGS, "--shard-size", "3", "--engine", "ray"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    # A second driver on the same cluster (--ray-address), killed right after its first shard.
    killed = subprocess.run(
        [sys.executable, "-c", _KILL_AFTER_FIRST_SHARD, *argv, "--ray-address", ray_cluster],
        env=env,
        capture_output=True,
    )
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    written = len(_rows(out))
    assert 3 <= written < 8
    assert main([*argv, "--resume"]) == 1
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["skipped"] == written and summary["done"] + summary["failed"] == 8 - written
    assert summary["complete"] and summary["folder_failed"] == 2
    assert sorted(_rows(out)) == sorted(job["manifest"].read_text().split())  # exactly one row per video


def _model_actor_pid() -> int | None:
    """The process of this test's Ray model actor (a descendant of this process), found in /proc."""
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if b"_ModelActor" not in (entry / "cmdline").read_bytes():
                continue
        except OSError:
            continue
        pid = int(entry.name)
        while pid > 1:
            try:
                pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                break
            if pid == me:
                return int(entry.name)
    return None


@pytest.mark.slow
def test_ray_restarts_a_model_actor_that_dies(
    job: dict[str, Path], tmp_path: Path, ray_cluster: str, capsys: pytest.CaptureFixture[str]
) -> None:
    names = job["manifest"].read_text().split()
    manifest = tmp_path / "many.csv"  # 40 rows over the 8 files, so that work remains when the actor is killed
    manifest.write_text("id,path\n" + "".join(f"k{i:02d},{job['root'] / names[i % 8]}\n" for i in range(40)))
    out = tmp_path / "restarted"
    killed: list[int] = []

    def kill_the_actor_after_the_first_shard() -> None:
        deadline = time.monotonic() + 300
        while not killed and time.monotonic() < deadline:
            time.sleep(0.2)
            pid = _model_actor_pid() if list(out.glob("part-*.parquet")) else None
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    killer = threading.Thread(target=kill_the_actor_after_the_first_shard, daemon=True)
    killer.start()
    argv = ["features", "--manifest", str(manifest), "--weights", str(job["ckpt"]), "--out", str(out)]
    assert main([*argv, *CLIP_ARGS, "--engine", "ray", "--shard-size", "4"]) == 1  # the two bad files
    killer.join(timeout=1)
    assert killed, "the model actor was not found"
    summary = json.loads((out / "_summary.json").read_text())
    assert (summary["done"], summary["failed"], summary["complete"]) == (30, 10, True)
    assert sorted(_rows(out)) == [f"k{i:02d}" for i in range(40)]
