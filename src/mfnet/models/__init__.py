"""Models: the multi-fiber unit, every family built from it, the registry and checkpoint loading."""

from __future__ import annotations

# Importing the families registers their builders.
from mfnet.models import baselines as _baselines  # noqa: F401
from mfnet.models import mf_mobilenet as _mf_mobilenet  # noqa: F401
from mfnet.models import mf_resnet as _mf_resnet  # noqa: F401
from mfnet.models import mfnet as _mfnet  # noqa: F401
from mfnet.models import resnext as _resnext  # noqa: F401
from mfnet.models.base import ClassifierBase
from mfnet.models.factory import create_model
from mfnet.models.fiber import MultiFiberUnit
from mfnet.models.registry import list_models, register_model
from mfnet.models.weights import InputSpec, WeightsRecord, get_weights, list_weights, register_weights

__all__ = [
    "ClassifierBase",
    "InputSpec",
    "MultiFiberUnit",
    "WeightsRecord",
    "create_model",
    "get_weights",
    "list_models",
    "list_weights",
    "register_model",
    "register_weights",
]
