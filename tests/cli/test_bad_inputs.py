"""Table-driven bad-input suite: every command x every class of bad input -> exit status and one clear line.

Each row runs ``mfnet`` in this process on one bad input and asserts the exit status, that the failure is reported
in exactly one line of stderr (no traceback; notes such as the test protocol may precede it) and that the line
names the problem. Rows with a malicious weights file also assert
that its payload did not run. Classes of bad input: missing, empty, truncated, random bytes, wrong type (a
folder, a FIFO, a text file), wrong encoding, out-of-range numbers, NaN/inf, malicious payloads in every weights
format, and a full disk (in a child process with a file-size limit). New commands join the table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import mfnet
from malicious import Payload, pickled
from mfnet.cli import build_parser, main
from mfnet.cli._common import print_json
from mfnet.data.video_writer import numbered_frames, write_video
from mfnet.errors import MfnetError
from mfnet.models.checkpoint import make_meta, save_checkpoint
from mfnet.tools.export import export_model

pytestmark = pytest.mark.slow

SMALL = {"depths": [1, 1, 1, 1], "widths": [16, 16, 32, 32]}
CLIP = ["--frames", "4", "--size", "32", "--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Good files to start from, and bad ones of every class."""
    root = tmp_path_factory.mktemp("bad_inputs")
    f: dict[str, Path] = {"root": root, "marker": root / "payload-ran"}
    torch.manual_seed(0)
    model = mfnet.create_model("mfnet3d", num_classes=3, **SMALL).eval()
    f["ckpt"] = save_checkpoint(root / "good.pth", model, model_name="mfnet3d", model_kwargs=SMALL)
    f["video"] = write_video(root / "videos" / "v0.mp4", numbered_frames(12, 32, 32), gop_size=4)
    write_video(root / "videos" / "v1.mp4", numbered_frames(12, 32, 32), gop_size=4)
    # Weights files, bad in every way.
    f["missing.pth"] = root / "nothing-here.pth"
    f["empty.pth"] = _write(root / "empty.pth", b"")
    f["truncated.pth"] = _write(root / "truncated.pth", f["ckpt"].read_bytes()[: f["ckpt"].stat().st_size // 2])
    f["random.pth"] = _write(root / "random.pth", np.random.default_rng(0).bytes(4096))
    f["folder.pth"] = root / "folder.pth"
    f["folder.pth"].mkdir()
    f["fifo.pth"] = root / "fifo.pth"
    os.mkfifo(f["fifo.pth"])
    f["evil.pth"] = _write(root / "evil.pth", pickled({"state_dict": {}, "x": Payload(f["marker"])}))
    meta = make_meta("mfnet3d", num_classes=3, model_kwargs=SMALL, classes=None)
    state = model.state_dict()
    nan_state = {k: (v.clone().fill_(float("nan")) if k == "classifier.weight" else v) for k, v in state.items()}
    torch.save({"state_dict": nan_state, "mfnet": meta}, root / "nan.pth")
    f["nan.pth"] = root / "nan.pth"
    int_state = {k: (v.to(torch.int64) if v.is_floating_point() else v) for k, v in state.items()}
    torch.save({"state_dict": int_state, "mfnet": meta}, root / "int.pth")
    f["int.pth"] = root / "int.pth"
    plain = {k: v.contiguous() for k, v in state.items()}
    save_file(plain, root / "notjson.safetensors", metadata={"mfnet": "{model: mfnet3d"})
    f["notjson.safetensors"] = root / "notjson.safetensors"
    save_file(plain, root / "list.safetensors", metadata={"mfnet": "[1, 2]"})
    f["list.safetensors"] = root / "list.safetensors"
    f["random.safetensors"] = _write(root / "random.safetensors", np.random.default_rng(1).bytes(512))
    f["random.onnx"] = _write(root / "random.onnx", np.random.default_rng(2).bytes(512))
    f["empty.onnx"] = _write(root / "empty.onnx", b"")
    f["random.pt2"] = _write(root / "random.pt2", np.random.default_rng(3).bytes(512))
    good_pt2 = root / "good.pt2"
    export_model(model, good_pt2, format="torch-export", input_shape=(1, 3, 4, 32, 32), meta=meta)
    f["evil.pt2"] = _evil_pt2(good_pt2, root / "evil.pt2", f["marker"])
    # Videos, bad in every way.
    f["empty.mp4"] = _write(root / "bad" / "empty.mp4", b"")
    f["random.mp4"] = _write(root / "bad" / "random.mp4", np.random.default_rng(4).bytes(4096))
    f["truncated.mp4"] = _write(root / "bad" / "truncated.mp4", f["video"].read_bytes()[:600])
    f["text.mp4"] = _write(root / "bad" / "text.mp4", b"just some text\n")
    f["fifo.mp4"] = root / "bad" / "fifo.mp4"
    os.mkfifo(f["fifo.mp4"])
    f["novideos"] = root / "novideos"
    f["novideos"].mkdir()
    # Annotations, bad in every way.
    f["list"] = _write(root / "train.txt", "v0.mp4 0\nv1.mp4 1\n")
    f["list-negative"] = _write(root / "neg.txt", "v0.mp4 0\nv1.mp4 -5\n")
    f["list-stray"] = _write(root / "stray.txt", "".join(f"v{i % 2}.mp4 {i % 8}\n" for i in range(16)) + "v0.mp4 57\n")
    f["list-empty"] = _write(root / "empty.txt", "\n")
    f["list-fifo"] = root / "fifo.txt"
    os.mkfifo(f["list-fifo"])
    f["list-garbled"] = _write(root / "garbled.txt", np.random.default_rng(5).bytes(300))
    f["csv-latin1"] = _write(root / "k.csv", b"label,youtube_id,time_start,time_end,split\ncaf\xe9,x,0,10,train\n")
    ucf = root / "ucfTrainTestlist"
    _write(ucf / "classInd.txt", "1 A\n2 B\n")
    _write(ucf / "trainlist01.txt", "A/v0.avi 0\n")
    _write(ucf / "testlist01.txt", "A/v0.avi\n")
    f["ucf-zero"] = ucf
    return f


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _evil_pt2(source: Path, target: Path, marker: Path) -> Path:
    """The issue's attack: a real export whose first weight is a pickle that runs a command when loaded."""
    with zipfile.ZipFile(source) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    (config_name,) = [n for n in entries if n.endswith("data/weights/model_weights_config.json")]
    config = json.loads(entries[config_name])
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    entries[config_name] = json.dumps(config).encode()
    entries[config_name.replace("model_weights_config.json", first["path_name"])] = pickled(Payload(marker))
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return target


Args = Callable[[dict[str, Path]], list[str]]
WEIGHTS_CASES = [
    ("missing", "missing.pth", "does not exist"),
    ("empty", "empty.pth", "cannot be read"),
    ("truncated", "truncated.pth", "cannot be read"),
    ("random bytes", "random.pth", "cannot be read"),
    ("a folder", "folder.pth", "is a directory"),
    ("a FIFO", "fifo.pth", "not a regular file"),
    ("pickle payload .pth", "evil.pth", "could run code"),
    ("pickle payload .pt2", "evil.pt2", "could run code"),
    ("NaN weights", "nan.pth", "NaN or infinite"),
    ("integer weights", "int.pth", "floating point"),
    ("safetensors metadata not JSON", "notjson.safetensors", "not JSON"),
    ("safetensors metadata not an object", "list.safetensors", "not an object"),
    ("safetensors random bytes", "random.safetensors", "not a readable safetensors"),
    ("onnx random bytes", "random.onnx", "cannot load"),
    ("onnx empty", "empty.onnx", "cannot load"),
    ("pt2 random bytes", "random.pt2", "not an ExportedProgram"),
]
CHECKPOINT_ONLY = {"random.onnx", "empty.onnx", "random.pt2", "evil.pt2"}  # formats only predict runs


def _weights_rows() -> list[tuple[str, Args, int, str]]:
    rows: list[tuple[str, Args, int, str]] = []
    for label, key, message in WEIGHTS_CASES:
        rows.append(
            (
                f"predict --weights {label}",
                lambda f, k=key: ["predict", str(f["video"]), "--weights", str(f[k]), *CLIP],
                2,
                message,
            )
        )
        if key in CHECKPOINT_ONLY:
            continue
        rows.append(
            (f"summary --weights {label}", lambda f, k=key: ["summary", "mfnet3d", "--weights", str(f[k])], 2, message)
        )
        rows.append(
            (
                f"export --weights {label}",
                lambda f, k=key: ["export", "--weights", str(f[k]), "--out", str(f["root"] / "o.onnx")],
                2,
                message,
            )
        )
        rows.append(
            (
                f"features --weights {label}",
                lambda f, k=key: [
                    "features",
                    str(f["video"]),
                    "--weights",
                    str(f[k]),
                    "--out",
                    str(f["root"] / "o.npy"),
                    *CLIP,
                ],
                2,
                message,
            )
        )
    return rows


def _data(fmt: str, key: str) -> Args:
    return lambda f: ["--format", fmt, "--annotations", str(f[key]), "--root", str(f["video"].parent)]


def _run_data(fmt: str, key: str) -> Args:
    return lambda f: ["--format", fmt, "--annotations", str(f[key]), "--data", str(f["video"].parent)]


def _train(fmt: str, key: str, *extra: str) -> Args:
    out = ["--out", "{root}/run", "--no-progress"]
    return lambda f: [
        "train",
        "--recipe",
        "smoke",
        *_run_data(fmt, key)(f),
        *[a.format(root=f["root"]) for a in out],
        *[a.format(evil=f["evil.pth"]) for a in extra],
    ]


def _predict(*extra: str) -> Args:
    return lambda f: ["predict", str(f["video"]), "--weights", str(f["ckpt"]), *CLIP, *extra]


# (row name, argv from the files, exit status, text the one stderr line must contain)
ROWS: list[tuple[str, Args, int, str]] = [
    *_weights_rows(),
    # videos
    (
        "predict missing video",
        lambda f: ["predict", str(f["root"] / "none.mp4"), "--weights", str(f["ckpt"]), *CLIP],
        2,
        "does not exist",
    ),
    (
        "predict empty video",
        lambda f: ["predict", str(f["empty.mp4"]), "--weights", str(f["ckpt"]), *CLIP],
        1,
        "empty.mp4",
    ),
    (
        "predict random-bytes video",
        lambda f: ["predict", str(f["random.mp4"]), "--weights", str(f["ckpt"]), *CLIP],
        1,
        "random.mp4",
    ),
    (
        "predict truncated video",
        lambda f: ["predict", str(f["truncated.mp4"]), "--weights", str(f["ckpt"]), *CLIP],
        1,
        "truncated.mp4",
    ),
    (
        "predict text file as video",
        lambda f: ["predict", str(f["text.mp4"]), "--weights", str(f["ckpt"]), *CLIP],
        1,
        "text.mp4",
    ),
    (
        "predict FIFO as video",
        lambda f: ["predict", str(f["fifo.mp4"]), "--weights", str(f["ckpt"]), *CLIP],
        2,
        "not a regular file",
    ),
    (
        "predict folder without videos",
        lambda f: ["predict", str(f["novideos"]), "--weights", str(f["ckpt"]), *CLIP],
        2,
        "holds no video files",
    ),
    # numbers: out of range, NaN, inf, not numbers
    ("predict --window nan", _predict("--window", "nan"), 2, "--window: 'nan' is out of range"),
    ("predict --window inf", _predict("--window", "inf"), 2, "--window: 'inf' is out of range"),
    ("predict --window -1", _predict("--window", "-1"), 2, "--window: '-1' is out of range"),
    ("predict --stride 0", _predict("--window", "1", "--stride", "0"), 2, "--stride: '0' is out of range"),
    ("predict --clips 0", _predict("--clips", "0"), 2, "--clips: '0' is out of range"),
    ("predict --topk -2", _predict("--topk", "-2"), 2, "--topk: '-2' is out of range"),
    ("predict --batch-size x", _predict("--batch-size", "x"), 2, "--batch-size: 'x' is not a number"),
    ("predict --workers -1", _predict("--workers", "-1"), 2, "--workers: '-1' is out of range"),
    ("summary --input 1x3xfoo", lambda f: ["summary", "mfnet3d", "--input", "1x3xfoo"], 2, "invalid shape"),
    ("summary --input 0x3x16x32x32", lambda f: ["summary", "mfnet3d", "--input", "0x3x16x32x32"], 2, "invalid shape"),
    ("summary --num-classes 0", lambda f: ["summary", "mfnet3d", "--num-classes", "0"], 2, "out of range"),
    ("summary unknown model", lambda f: ["summary", "nonet"], 2, "nonet"),
    (
        "export --tolerance nan",
        lambda f: ["export", "--weights", str(f["ckpt"]), "--out", str(f["root"] / "o.onnx"), "--tolerance", "nan"],
        2,
        "--tolerance: 'nan' is out of range",
    ),
    (
        "export --input 1x3x4",
        lambda f: ["export", "--weights", str(f["ckpt"]), "--out", str(f["root"] / "o.onnx"), "--input", "1x3xfour"],
        2,
        "invalid shape",
    ),
    (
        "data check --frames-per-clip 0",
        lambda f: ["data", "check", *_data("list", "list")(f), "--frames-per-clip", "0"],
        2,
        "--frames-per-clip: '0' is out of range",
    ),
    (
        "data check --interval -3",
        lambda f: ["data", "check", *_data("list", "list")(f), "--interval", "-3"],
        2,
        "--interval: '-3' is out of range",
    ),
    (
        "data index --split 0",
        lambda f: ["data", "index", *_data("ucf101", "ucf-zero")(f), "--split", "0"],
        2,
        "--split: '0' is out of range",
    ),
    (
        "data make-motion --test-fraction 2",
        lambda f: ["data", "make-motion", "--out", str(f["root"] / "m"), "--test-fraction", "2"],
        2,
        "out of range",
    ),
    (
        "data make-motion --videos-per-class nan",
        lambda f: ["data", "make-motion", "--out", str(f["root"] / "m"), "--videos-per-class", "nan"],
        2,
        "not a number",
    ),
    ("demo --minutes inf", lambda f: ["demo", "--minutes", "inf", "--out", str(f["root"] / "d")], 2, "out of range"),
    ("bench --repeats 0", lambda f: ["bench", "--repeats", "0"], 2, "--repeats: '0' is out of range"),
    ("train --max-steps 0", _train("list", "list", "--max-steps", "0"), 2, "--max-steps: '0' is out of range"),
    (
        "eval --clips nan",
        lambda f: ["eval", "--weights", str(f["ckpt"]), *_run_data("list", "list")(f), "--clips", "nan"],
        2,
        "--clips: 'nan' is not a number",
    ),
    # annotations: missing, empty, wrong encoding, out-of-range labels
    (
        "data index missing annotations",
        lambda f: [
            "data",
            "index",
            "--format",
            "list",
            "--annotations",
            str(f["root"] / "none.txt"),
            "--root",
            str(f["root"]),
        ],
        2,
        "does not exist",
    ),
    ("data index FIFO as annotations", lambda f: ["data", "index", *_data("list", "list-fifo")(f)], 2, "a FIFO"),
    ("data index empty list", lambda f: ["data", "index", *_data("list", "list-empty")(f)], 2, "list no videos"),
    ("data index random bytes", lambda f: ["data", "index", *_data("list", "list-garbled")(f)], 2, "cannot parse"),
    (
        "data index non-UTF-8 CSV",
        lambda f: ["data", "index", *_data("kinetics-csv", "csv-latin1")(f)],
        2,
        "is not UTF-8 text",
    ),
    (
        "data index UCF-101 label 0",
        lambda f: ["data", "index", *_data("ucf101", "ucf-zero")(f)],
        2,
        "trainlist01.txt:1: label 0 is out of range",
    ),
    (
        "data index label -5",
        lambda f: ["data", "index", *_data("list", "list-negative")(f)],
        2,
        "neg.txt:2: label -5 is negative",
    ),
    (
        "data index stray label 57",
        lambda f: ["data", "index", *_data("list", "list-stray")(f)],
        2,
        "stray.txt:17: label 57 makes 58 classes",
    ),
    ("data check label 0", lambda f: ["data", "check", *_data("ucf101", "ucf-zero")(f)], 2, "label 0 is out of range"),
    ("train UCF-101 label 0", _train("ucf101", "ucf-zero"), 2, "trainlist01.txt:1: label 0 is out of range"),
    ("train label -5", _train("list", "list-negative"), 2, "neg.txt:2: label -5 is negative"),
    ("train non-UTF-8 CSV", _train("kinetics-csv", "csv-latin1"), 2, "is not UTF-8 text"),
    (
        "eval label -5",
        lambda f: ["eval", "--weights", str(f["ckpt"]), *_run_data("list", "list-negative")(f)],
        2,
        "label -5 is negative",
    ),
    *[
        (
            f"eval --weights {key}",
            lambda f, k=key: ["eval", "--weights", str(f[k]), *_run_data("list", "list")(f)],
            2,
            "could run code",
        )
        for key in ("evil.pth", "evil.pt2")
    ],
    (
        "train init_weights with a payload",
        lambda f: [
            *_train("list", "list", "--set", "init_weights={evil}", "--set", "batch_size=2")(f),
            "--val-annotations",
            str(f["list"]),
        ],
        2,
        "could run code",
    ),
    ("models --no-such-option", lambda f: ["models", "--no-such-option"], 2, "unrecognized arguments"),
    ("recipes --no-such-option", lambda f: ["recipes", "--no-such-option"], 2, "unrecognized arguments"),
    ("data make-motion without --out", lambda f: ["data", "make-motion"], 2, "--out"),
    ("weights info unknown", lambda f: ["weights", "info", "no-such-weights"], 2, "unknown weights"),
    ("weights download unknown", lambda f: ["weights", "download", "no-such-weights"], 2, "unknown weights"),
    (
        "weights import missing",
        lambda f: ["weights", "import", str(f["missing.pth"]), "--as", "mfnet3d.k400_authors"],
        2,
        "does not exist",
    ),
    (
        "weights import payload",
        lambda f: ["weights", "import", str(f["evil.pth"]), "--as", "mfnet3d.k400_authors"],
        2,
        "could run code",
    ),
    (
        "weights convert payload",
        lambda f: ["weights", "convert", str(f["evil.pth"]), "--out", str(f["root"] / "c")],
        2,
        "could run code",
    ),
    ("weights push unknown", lambda f: ["weights", "push", "no-such-weights", "--repo", "a/b"], 2, "does not exist"),
    ("weights list --no-such-option", lambda f: ["weights", "list", "--no-such-option"], 2, "unrecognized arguments"),
    ("report missing run", lambda f: ["report", str(f["root"] / "no-run")], 2, "no-run"),
    ("recipes show unknown", lambda f: ["recipes", "show", "nope"], 2, "nope"),
]


@pytest.mark.parametrize(("name", "argv", "status", "message"), ROWS, ids=[row[0] for row in ROWS])
def test_bad_input(name: str, argv: Args, status: int, message: str, env: dict[str, Path], capsys, monkeypatch) -> None:
    monkeypatch.setenv("MFNET_HOME", str(env["root"] / "home"))  # a weights cache of its own, never the user's
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(argv(env))
    err = capsys.readouterr().err
    lines = _error_lines(err)
    assert code == status, f"{name}: exit {code}, stderr: {err}"
    assert len(lines) == 1, f"{name}: the error is not one line: {err}"
    assert "Traceback" not in err and message in lines[0], f"{name}: {lines[0]!r} lacks {message!r}"
    assert lines[0].startswith("mfnet"), lines[0]
    assert not env["marker"].exists(), f"{name}: the malicious payload ran"


def _error_lines(stderr: str) -> list[str]:
    """The lines of stderr that report a failure; informational ``mfnet: <note>`` lines may precede them."""
    return [line for line in stderr.splitlines() if "error:" in line or line.startswith(("mfnet: failed", "Trace"))]


def _commands() -> list[str]:
    """Every command of the parser, as typed (``predict``, ``data index``, ...)."""
    parser = build_parser()
    names = []
    for action in parser._subparsers._group_actions:  # the top-level commands
        for name, sub in action.choices.items():
            groups = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
            inner = [f"{name} {child}" for g in groups for child in g.choices]
            names += inner or [name]
    return names


def test_every_command_has_rows() -> None:
    """A new command joins the table: each one must have at least one bad-input row."""
    covered = {row[0] for row in ROWS}
    missing = [c for c in _commands() if not any(name.startswith(c + " ") for name in covered)]
    assert not missing, f"commands without bad-input rows: {missing}"


def _run_limited(argv: list[str], limit_bytes: int, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m mfnet ARGV`` with files limited to ``limit_bytes``: writes beyond fail as on a full disk."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, resource.RLIM_INFINITY))

    return subprocess.run(
        [sys.executable, "-m", "mfnet", *argv], capture_output=True, text=True, cwd=cwd, preexec_fn=limit, timeout=300
    )


def test_full_disk_while_writing_features(env: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "features.npy"
    proc = _run_limited(
        [
            "features",
            str(env["video"]),
            "--weights",
            str(env["ckpt"]),
            "--out",
            str(out),
            "--clips",
            "100",
            "--per-clip",
            *CLIP,
        ],
        limit_bytes=2048,
        cwd=tmp_path,
    )
    lines = _error_lines(proc.stderr)
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "free some space" in lines[0]


def test_progress_bars_are_off_when_stderr_is_not_a_terminal(env: dict[str, Path]) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mfnet",
            "data",
            "check",
            *_data("list", "list")(env),
            "--frames-per-clip",
            "4",
            "--interval",
            "1",
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "checking videos" not in proc.stderr


def test_json_output_never_holds_nan(capsys) -> None:
    with pytest.raises(MfnetError, match="NaN or infinite"):
        print_json({"path": "v.mp4", "prob": float("nan")})
    assert capsys.readouterr().out == ""
