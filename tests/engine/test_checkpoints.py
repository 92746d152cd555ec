"""Training checkpoints: atomic files, keep-last-K, RNG capture/restore, loadable with weights_only."""

from __future__ import annotations

import random

import numpy as np
import torch

from mfnet.engine import checkpoints as ckpt
from mfnet.engine.optim import build_optimizer
from mfnet.engine.recipes import get_recipe
from mfnet.models import create_model


def _tiny():
    return create_model("mfnet2d", num_classes=3, depths=(1, 1, 1, 1), widths=(16, 16, 32, 32))


def test_rng_round_trip() -> None:
    state = ckpt.capture_rng()
    a = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.restore_rng(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_save_keep_last_and_load(tmp_path) -> None:
    model = _tiny()
    opt = build_optimizer(model, get_recipe("smoke"))
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    for step in (5, 10, 15, 20):
        ckpt.save_training_state(
            tmp_path,
            model=model,
            model_name="mfnet2d",
            model_kwargs={},
            classes=["a", "b", "c"],
            optimizer=opt,
            scaler=None,
            epoch=1,
            epoch_step=step,
            step=step,
            rng=[ckpt.capture_rng()],
            recipe={"name": "x"},
            keep=2,
        )
    (tmp_path / "checkpoints" / ".step-000000025.pt.tmp").write_bytes(b"half a file")  # a killed write
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-000000015.pt", "step-000000020.pt"]
    raw = torch.load(ckpt.checkpoint_path(tmp_path, 20), weights_only=True)
    assert raw["mfnet"]["model"] == "mfnet2d" and raw["step"] == 20 and raw["optimizer"]["state"]
    # the newest file is broken: load_latest falls back to the one before
    ckpt.checkpoint_path(tmp_path, 20).write_bytes(b"garbage")
    path, state = ckpt.load_latest(tmp_path)
    assert path.name == "step-000000015.pt" and state["epoch_step"] == 15
    fresh = _tiny()
    fresh.load_state_dict(state["state_dict"])
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q)
    assert ckpt.load_latest(tmp_path / "nothing") is None
