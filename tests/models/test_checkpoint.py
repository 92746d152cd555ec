"""Checkpoints: the authors' layout key for key, inflation 2D -> 3D, our own format, and bad files."""

from __future__ import annotations

import logging
import pickle
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import mfnet
from mfnet.cli import main
from mfnet.errors import CheckpointError
from mfnet.models.checkpoint import (
    inflate_kernel,
    load_weights,
    model_from_checkpoint,
    read_checkpoint,
    save_checkpoint,
)


def authors_keys(num_classes: int, *, three_d: bool) -> OrderedDict[str, tuple[int, ...]]:
    """The key names and shapes of the authors' MFNet3D / MFNet2D checkpoints, written out from their layout."""
    t = (1,) if three_d else ()

    def kernel(kt: int, k: int) -> tuple[int, ...]:
        return ((kt,) if three_d else ()) + (k, k)

    keys: OrderedDict[str, tuple[int, ...]] = OrderedDict()

    def bn(prefix: str, c: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{prefix}.bn.{name}"] = (c,)

    def bn_ac_conv(prefix: str, cin: int, cout: int, k: tuple[int, ...], groups: int = 1) -> None:
        bn(prefix, cin)
        keys[f"{prefix}.conv.weight"] = (cout, cin // groups, *k)

    keys["conv1.conv.weight"] = (16, 3, *kernel(3, 5))
    bn("conv1", 16)
    cin = 16
    for stage, (depth, width) in enumerate(zip((3, 4, 6, 3), (96, 192, 384, 768), strict=True), start=2):
        for i in range(1, depth + 1):
            p = f"conv{stage}.B{i:02d}"
            c_in = cin if i == 1 else width
            bn_ac_conv(f"{p}.conv_i1", c_in, width // 4, (1, 1, *t) if three_d else (1, 1))
            bn_ac_conv(f"{p}.conv_i2", width // 4, c_in, (1, 1, *t) if three_d else (1, 1))
            bn_ac_conv(f"{p}.conv_m1", c_in, width, kernel(3, 3), groups=16)
            if i == 1:
                bn_ac_conv(f"{p}.conv_m2", width, width, (1, 1, 1) if three_d else (1, 1))
                bn_ac_conv(f"{p}.conv_w1", c_in, width, (1, 1, 1) if three_d else (1, 1))
            else:
                bn_ac_conv(f"{p}.conv_m2", width, width, kernel(1, 3), groups=16)
        cin = width
    bn("tail", 768)
    keys["classifier.weight"] = (num_classes, 768)
    keys["classifier.bias"] = (num_classes,)
    return keys


def write_authors_3d(path: Path, num_classes: int, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """A checkpoint as the authors released it: {'epoch', 'state_dict'}, 'module.' keys, legacy format."""
    gen = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for key, shape in authors_keys(num_classes, three_d=True).items():
        value = (
            torch.rand(shape, generator=gen) + 0.5
            if key.endswith("running_var")
            else torch.randn(shape, generator=gen) * 0.05
        )
        state[f"module.{key}"] = value
    torch.save({"epoch": 30, "state_dict": state}, path, _use_new_zipfile_serialization=False)
    return state


def test_authors_3d_checkpoint_loads_key_for_key(tmp_path: Path) -> None:
    path = tmp_path / "MFNet3D_UCF-101_Split-1_96.3.pth"
    state = write_authors_3d(path, 101)
    model = mfnet.create_model("mfnet3d", weights=path).eval()
    assert model.num_classes == 101  # taken from the checkpoint
    ours = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert set(ours) == {k[len("module.") :] for k in state}
    for key, value in state.items():
        assert torch.equal(ours[key[len("module.") :]], value), key


def test_logits_identical_to_the_same_weights(tmp_path: Path) -> None:
    """A model saved in the authors' layout and loaded again gives bit-identical logits."""
    torch.manual_seed(0)
    source = mfnet.create_model("mfnet3d", num_classes=400).eval()
    for m in source.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    state = {f"module.{k}": v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "MFNet3D_Kinetics-400_72.8.pth"
    torch.save({"state_dict": state}, path, _use_new_zipfile_serialization=False)
    loaded = mfnet.create_model("mfnet3d", weights=path).eval()
    clip = torch.randn(1, 3, 8, 64, 64)
    with torch.no_grad():
        assert torch.equal(source(clip), loaded(clip))


def test_inflation_from_the_authors_2d_checkpoint(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(1)
    flat = OrderedDict((k, torch.randn(s, generator=gen) * 0.05) for k, s in authors_keys(1000, three_d=False).items())
    for key in flat:
        if key.endswith("running_var"):
            flat[key] = flat[key].abs() + 0.5
    path = tmp_path / "MFNet2D_ImageNet1k-0000.pth"
    torch.save(flat, path)

    model_2d = mfnet.create_model("mfnet2d", weights=path)  # a flat 2D state dict loads into the 2D twin
    assert torch.equal(model_2d.state_dict()["conv1.conv.weight"], flat["conv1.conv.weight"])

    model = mfnet.create_model("mfnet3d", num_classes=400)
    report = load_weights(model, read_checkpoint(path), skip_classifier=True)
    assert report.skipped == ["classifier.weight", "classifier.bias"]
    assert len(report.loaded) == len(flat) - 2  # every other 2D tensor loads
    state = model.state_dict()
    for key, value in flat.items():
        if key.startswith("classifier"):
            continue
        got = state[key]
        if got.ndim == 5:
            assert torch.allclose(got.sum(dim=2), value, atol=1e-6), key  # sums over time to the 2D kernel
        else:
            assert torch.equal(got, value), key
    assert len(report.inflated) == sum(1 for v in flat.values() if v.ndim == 4)
    # without an explicit class count the 3D model takes the checkpoint's 1000 classes
    assert mfnet.create_model("mfnet3d", weights=path).num_classes == 1000


def test_inflated_conv_reproduces_2d_conv_on_still_frames() -> None:
    torch.manual_seed(0)
    w2d = torch.randn(8, 3, 5, 5)
    w3d = inflate_kernel(w2d, 3)
    image = torch.randn(1, 3, 20, 20)
    clip = image.unsqueeze(2).repeat(1, 1, 6, 1, 1)  # (N, C, T, H, W), identical frames
    out3d = F.conv3d(clip, w3d, padding=(1, 2, 2))
    out2d = F.conv2d(image, w2d, padding=2)
    for t in range(1, 5):  # interior frames: the temporal padding does not reach them
        assert torch.allclose(out3d[:, :, t], out2d, atol=1e-5)
    assert not torch.allclose(out3d[:, :, 0], out2d, atol=1e-3)


def test_authors_random_inflation_keeps_one_kernel_tap_and_cancelling_noise() -> None:
    w2d = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    w3d = inflate_kernel(w2d, 3, method="random", generator=torch.Generator().manual_seed(1))
    # Sum over time: W/3 (one W/3 tap and a cancelling pair u, -u), as in the authors' code.
    assert torch.allclose(w3d.sum(2), w2d / 3, atol=1e-6)
    # Per element: exactly the taps {W/3, u, -u}, |u| <= mean|W/3|, in a shuffled order.
    taps = w3d.permute(0, 1, 3, 4, 2).reshape(-1, 3)
    third = (w2d / 3).reshape(-1, 1)
    is_kernel = (taps - third).abs() < 1e-7
    assert bool((is_kernel.sum(1) >= 1).all())
    rest = taps.masked_fill(is_kernel & (is_kernel.cumsum(1) == 1), 0.0)  # drop the first W/3 tap
    assert torch.allclose(rest.sum(1), torch.zeros(len(taps)), atol=1e-6)
    assert float(rest.abs().max()) <= float((w2d / 3).abs().mean()) + 1e-7
    positions = is_kernel.float().argmax(1)
    assert set(positions.tolist()) == {0, 1, 2}  # shuffled per element, not always first
    again = inflate_kernel(w2d, 3, method="random", generator=torch.Generator().manual_seed(1))
    assert torch.equal(w3d, again)
    # Other lengths: one W/T tap per group of three, as the authors fill them.
    for time, copies in ((2, 2), (4, 2), (5, 3), (6, 2)):
        w = inflate_kernel(w2d, time, method="random", generator=torch.Generator().manual_seed(time))
        assert torch.allclose(w.sum(2), copies * w2d / time, atol=1e-6)


def test_average_methods_sum_to_the_2d_kernel() -> None:
    w2d = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(inflate_kernel(w2d, 3).sum(2), w2d, atol=1e-6)
    noisy = inflate_kernel(w2d, 3, method="average-noise", generator=torch.Generator().manual_seed(0))
    assert torch.allclose(noisy.sum(2), w2d, atol=1e-5)
    assert not torch.allclose(noisy[:, :, 0], noisy[:, :, 1])
    assert inflate_kernel(w2d, 1, method="random").shape == (8, 4, 1, 3, 3)
    with pytest.raises(CheckpointError):
        inflate_kernel(w2d, 3, method="bogus")
    model = mfnet.create_model("mfnet3d", num_classes=10)
    flat = {k: (v[:, :, v.shape[2] // 2] if v.ndim == 5 else v) for k, v in model.state_dict().items()}
    model2 = mfnet.create_model("mfnet3d", num_classes=10)
    report = load_weights(model2, mfnet.models.checkpoint.Checkpoint(Path("x.pth"), flat), inflate="random")
    assert report.inflated


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_our_format_round_trip(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(0)
    model = mfnet.create_model("mfnet3d", num_classes=6, fibers=8).eval()
    path = save_checkpoint(
        tmp_path / f"model{suffix}", model, model_name="mfnet3d", model_kwargs={"fibers": 8}, classes=list("abcdef")
    )
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file is renamed away
    loaded, meta = model_from_checkpoint(path)
    assert meta == {"model": "mfnet3d", "num_classes": 6, "model_kwargs": {"fibers": 8}, "classes": list("abcdef")}
    clip = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(clip), loaded.eval()(clip))
    if suffix == ".pt":
        assert set(torch.load(path, weights_only=True)) == {"state_dict", "mfnet"}


def test_bad_checkpoints_give_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        mfnet.create_model("mfnet3d", weights=tmp_path / "nope.pth")

    good = tmp_path / "good.pth"
    save_checkpoint(good, mfnet.create_model("mfnet3d", num_classes=5), model_name="mfnet3d")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        mfnet.create_model("mfnet3d", weights=truncated)

    code = tmp_path / "code.pth"
    code.write_bytes(
        pickle.dumps({"state_dict": {"x": Path("a")}}, protocol=2)
    )  # pickles a class: must not be unpickled
    with pytest.raises(CheckpointError, match=r"holds a Python object .*PosixPath.* could run code"):
        mfnet.create_model("mfnet3d", weights=code)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        mfnet.create_model("mfnet3d", weights=junk)

    with pytest.raises(CheckpointError, match="does not fit"):
        mfnet.create_model("mfnet3d", weights=good, multiplexer=False)
    with pytest.raises(CheckpointError, match="does not fit"):
        mfnet.create_model("mfnet2d", weights=tmp_path / "good.pth", fibers=8)
    with pytest.raises(CheckpointError, match="5 classes but the model has 7"):
        load_weights(mfnet.create_model("mfnet3d", num_classes=7), good)
    # an explicit class count fine-tunes: the classifier is skipped, the rest loads
    assert mfnet.create_model("mfnet3d", num_classes=7, weights=good).num_classes == 7


def test_cli_summary_reports_bad_weights_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    assert main(["summary", "mfnet3d", "--weights", str(bad), "--json"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mfnet: error: checkpoint") and "\n" not in err


def test_cli_summary_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "mfnet3d", "--num-classes", "400", "--input", "1x3x8x112x112", "--json"]) == 0
    import json

    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 7_996_368 and info["output"] == [1, 400]
    assert info["macs"] == 1_450_346_496  # conv1 runs on all 8 frames, the rest on 4


def test_loading_a_classifier_of_another_size_warns(tmp_path, caplog) -> None:
    """create_model(num_classes=8, weights=<5 classes>) fine-tunes: the new classifier is announced as untrained."""
    small = {"depths": (1, 1, 1, 1), "widths": (16, 16, 32, 32)}
    five = mfnet.create_model("mfnet3d", num_classes=5, **small)
    path = save_checkpoint(tmp_path / "five.pth", five, model_name="mfnet3d", model_kwargs=small)
    with caplog.at_level(logging.WARNING, logger="mfnet"):
        eight = mfnet.create_model("mfnet3d", num_classes=8, weights=path, **small)
    assert eight.num_classes == 8
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "5 classes, the model has 8" in warnings[0].getMessage()
    assert "randomly initialised" in warnings[0].getMessage()


@pytest.mark.parametrize("broken", ["nan", "inf", "int", "bool"])
def test_weights_that_would_load_silently_wrong_are_refused(tmp_path, broken: str) -> None:
    small = {"depths": (1, 1, 1, 1), "widths": (16, 16, 32, 32)}
    model = mfnet.create_model("mfnet3d", num_classes=3, **small)
    state = model.state_dict()
    key = "conv1.conv.weight"
    if broken in ("nan", "inf"):
        state[key] = state[key].clone()
        state[key].view(-1)[7] = float(broken)
    else:
        state[key] = state[key].to(torch.int32 if broken == "int" else torch.bool)
    torch.save({"state_dict": state}, tmp_path / "broken.pth")
    message = "NaN or infinite values in conv1.conv.weight" if broken in ("nan", "inf") else "floating point"
    with pytest.raises(CheckpointError, match=message):
        load_weights(mfnet.create_model("mfnet3d", num_classes=3, **small), tmp_path / "broken.pth")
