"""torch.hub entry points of mfnet, over the same model and weights registries as ``mfnet.create_model``.

    import torch
    model = torch.hub.load("<owner>/mfnet", "mfnet3d", pretrained=True)              # mfnet3d.k400_authors
    model = torch.hub.load("<owner>/mfnet", "mfnet3d", weights="mfnet3d.ucf101_s1_authors")
    model = torch.hub.load("/path/to/mfnet", "mfnet3d", source="local", num_classes=101)

``pretrained=True`` loads the architecture's default registered weights; ``weights=`` takes any registered name, a
checkpoint path, a converted folder or ``hf-hub:ORG/NAME``. Files are found, downloaded and sha256-checked as
described in ``docs/weights.md``. ``torch.hub.list`` shows one entry point per architecture;
``mfnet.list_weights()`` lists the weights.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

dependencies = ["torch", "torchvision", "av", "numpy", "safetensors", "tqdm"]

try:
    import mfnet
except ImportError:  # a checkout that is not installed: use its source tree
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
    import mfnet


def _entry(architecture: str) -> Any:
    def load(pretrained: bool = False, weights: str | None = None, **kwargs: Any) -> Any:
        return mfnet.create_model(architecture, pretrained=pretrained, weights=weights, **kwargs)

    load.__name__ = architecture
    load.__doc__ = (
        f"``{architecture}``: ``pretrained=True`` loads its default registered weights, ``weights=`` a registered "
        "name, path or hf-hub:ORG/NAME; other keyword arguments go to the builder (num_classes, fibers, ...)."
    )
    return load


mfnet3d = _entry("mfnet3d")
mfnet2d = _entry("mfnet2d")
mf_resnet18 = _entry("mf_resnet18")
mf_mobilenet_v2 = _entry("mf_mobilenet_v2")
resnext26_2d = _entry("resnext26_2d")
resnext26_3d = _entry("resnext26_3d")
resnet18 = _entry("resnet18")
mobilenet_v2_140 = _entry("mobilenet_v2_140")
