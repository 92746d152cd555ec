"""mfnet: Multi-Fiber Networks for efficient video recognition (Chen et al., ECCV 2018).

The public entry points::

    import mfnet
    model = mfnet.create_model("mfnet3d", num_classes=400, weights="MFNet3D_Kinetics-400_72.8.pth")
    model = mfnet.create_model("mfnet3d.k400_authors", pretrained=True)  # cached, downloaded or imported; checked
    mfnet.count_params(model), mfnet.count_macs(model, (1, 3, 16, 224, 224))
"""

from __future__ import annotations

from mfnet.errors import MfnetError
from mfnet.fastpath import optimize_for_inference, prepare_for_training
from mfnet.models import create_model, get_weights, list_models, list_weights
from mfnet.models.macs import count_macs, count_params

__version__ = "0.1.0"

__all__ = [
    "MfnetError",
    "__version__",
    "count_macs",
    "count_params",
    "create_model",
    "get_weights",
    "list_models",
    "list_weights",
    "optimize_for_inference",
    "prepare_for_training",
]
