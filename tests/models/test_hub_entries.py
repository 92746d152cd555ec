"""``hubconf.py`` offers one torch.hub entry point per registered architecture."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import mfnet

HUBCONF = Path(__file__).resolve().parents[2] / "hubconf.py"


def test_every_registered_model_has_an_entry_point() -> None:
    spec = importlib.util.spec_from_file_location("mfnet_hubconf", HUBCONF)
    assert spec is not None and spec.loader is not None
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entries = {name for name in dir(hubconf) if not name.startswith("_") and callable(getattr(hubconf, name))}
    assert set(mfnet.list_models()) <= entries
    model = hubconf.resnext26_2d(num_classes=7)
    assert model.num_classes == 7 and model.input_ndim == 4
