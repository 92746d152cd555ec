"""Reading checkpoints (ours and the authors'), loading them key for key, and inflating 2D weights to 3D.

This is the only module that knows the checkpoint layouts:

* **The authors' releases** (``MFNet3D_Kinetics-400_72.8.pth`` and the UCF-101 / HMDB51 fine-tunes): a dict with
  ``"state_dict"`` whose keys carry DataParallel's ``module.`` prefix and no ``num_batches_tracked``, saved by
  PyTorch 0.4 (the legacy, non-zip format). ``MFNet2D_ImageNet1k-0000.pth`` is a flat state dict with the same
  key names and 4-D kernels. Our modules keep the authors' names, so their keys load one to one.
* **Ours**: ``{"state_dict": ..., "mfnet": {"model", "num_classes", "model_kwargs", "classes"}, ...}`` written by
  ``save_checkpoint`` (training runs add optimizer and RNG state beside it), or a ``.safetensors`` file whose
  metadata holds the same ``"mfnet"`` entry as JSON.

Everything is read with ``torch.load(..., weights_only=True)``: a checkpoint never runs code.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from mfnet.errors import CheckpointError
from mfnet.models.registry import build_model

logger = logging.getLogger("mfnet")

INFLATE_METHODS = ("average", "random", "average-noise")
_CLASSIFIER_PREFIX = "classifier."
_IGNORED_SUFFIX = "num_batches_tracked"


@dataclass
class Checkpoint:
    """A state dict read from disk, with its ``mfnet`` metadata when it has one.

    Attributes:
        path: Where it was read from.
        state_dict: Tensors by key, with any ``module.`` prefix removed.
        meta: Our metadata (``model``, ``num_classes``, ``model_kwargs``, ``classes``), or ``None``.
    """

    path: Path
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any] | None = None

    @property
    def num_classes(self) -> int | None:
        """Classes of the stored classifier (from the metadata, else the classifier's shape)."""
        if self.meta and self.meta.get("num_classes") is not None:
            return int(self.meta["num_classes"])
        weight = self.state_dict.get(_CLASSIFIER_PREFIX + "weight")
        return int(weight.shape[0]) if weight is not None else None


@dataclass
class LoadReport:
    """What ``load_weights`` did with each tensor."""

    loaded: list[str] = field(default_factory=list)
    inflated: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # in the checkpoint, not used (a classifier of another size)

    def summary(self) -> str:
        """One line: counts of loaded and inflated tensors, and the skipped ones (left as initialised)."""
        text = f"loaded {len(self.loaded)} tensors ({len(self.inflated)} inflated from 2D)"
        if self.skipped:
            text += f"; skipped, left as initialised: {', '.join(self.skipped)}"
        return text


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Reads a checkpoint file; every failure is a ``CheckpointError`` with one sentence."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist: pass the path of a .pth, .pt or .safetensors file")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory: pass the checkpoint file inside it")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a regular file (a FIFO, socket or device): give a file")
    if path.suffix == ".onnx":
        raise CheckpointError(f"{path} is an ONNX model: only `mfnet predict` runs it; give a PyTorch checkpoint here")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))  # "Unsupported global: GLOBAL x" or "unsupported GLOBAL x"
        if found is None:  # not a pickle at all, or a damaged one
            raise CheckpointError(
                f"checkpoint {path} cannot be read, it is truncated or not a PyTorch checkpoint; "
                "download or save it again"
            ) from None
        raise CheckpointError(
            f"checkpoint {path} holds a Python object ({found.group(1)}) besides tensors and is not loaded because "
            "loading it could run code; re-save it as a plain state dict: torch.save(model.state_dict(), path)"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise CheckpointError(
            f"checkpoint {path} cannot be read, it is truncated or not a PyTorch checkpoint "
            f"({str(err).splitlines()[0] if str(err) else type(err).__name__}); download or save it again"
        ) from None
    return _from_object(path, obj)


def _read_safetensors(path: Path) -> Checkpoint:

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file ({err}); save it again") from None
    meta = _parse_meta(path, metadata["mfnet"]) if "mfnet" in metadata else None
    return Checkpoint(path, _strip_prefix(tensors), meta)


def _parse_meta(path: Path, text: str) -> dict[str, Any]:
    """The ``mfnet`` metadata of a safetensors file: a JSON object, else a ``CheckpointError``."""
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(
            f"checkpoint {path} has 'mfnet' metadata that is not JSON ({err.msg} at character {err.pos}); "
            "save it again with mfnet"
        ) from None
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"checkpoint {path} has 'mfnet' metadata that is a JSON {type(meta).__name__}, not an object; "
            "save it again with mfnet"
        )
    return meta


def _from_object(path: Path, obj: Any) -> Checkpoint:
    meta = None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        meta = obj.get("mfnet") if isinstance(obj.get("mfnet"), Mapping) else None
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"checkpoint {path} holds no state dict (expected tensors by name, or a dict with 'state_dict')"
        )
    if meta is not None and not all(isinstance(k, str) for k in meta):
        raise CheckpointError(f"checkpoint {path} has 'mfnet' metadata with non-text keys; save it again with mfnet")
    return Checkpoint(path, _strip_prefix(dict(obj)), dict(meta) if meta else None)


def _strip_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Removes DataParallel's ``module.`` prefix (the authors' files have it on every key)."""
    if all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict


def load_weights(
    model: nn.Module,
    checkpoint: Checkpoint | str | os.PathLike[str],
    *,
    skip_classifier: bool = False,
    inflate: str = "average",
) -> LoadReport:
    """Loads a checkpoint into ``model`` key for key, inflating 2D kernels into a 3D model.

    Args:
        model: The model to fill; its architecture must match the checkpoint's.
        checkpoint: A ``Checkpoint`` or a path.
        skip_classifier: Leave a classifier of another size as initialised instead of failing (fine-tuning, or
            inflating an ImageNet model for another label set).
        inflate: ``"average"``, ``"random"`` (the authors') or ``"average-noise"``, see ``inflate_kernel``.

    Raises:
        CheckpointError: The checkpoint is for another architecture or class count.
    """
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else read_checkpoint(checkpoint)
    if inflate not in INFLATE_METHODS:
        raise CheckpointError(f"unknown inflation method {inflate!r}: use one of {', '.join(INFLATE_METHODS)}")
    target = model.state_dict()
    source = {k: v for k, v in ckpt.state_dict.items() if not k.endswith(_IGNORED_SUFFIX)}
    for key, value in source.items():  # a broken file is reported before a mismatch with the model
        _check_values(ckpt.path, key, value)
    report = LoadReport()
    unexpected = sorted(set(source) - set(target))
    missing = sorted(k for k in set(target) - set(source) if not k.endswith(_IGNORED_SUFFIX))
    if unexpected or missing:
        raise CheckpointError(
            f"checkpoint {ckpt.path} does not fit {type(model).__name__}: {len(missing)} of its tensors are missing "
            f"(e.g. {', '.join(missing[:3]) or '-'}) and {len(unexpected)} are unknown "
            f"(e.g. {', '.join(unexpected[:3]) or '-'}); check the model name and its options (fibers, multiplexer)"
        )
    new_state: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        want = target[key].shape
        if value.shape == want:
            new_state[key] = value
        elif key.startswith(_CLASSIFIER_PREFIX):
            if not skip_classifier:
                raise CheckpointError(
                    f"checkpoint {ckpt.path} has a classifier for {value.shape[0]} classes but the model has "
                    f"{want[0]}: build the model with num_classes={value.shape[0]} (or omit it), or fine-tune"
                )
            report.skipped.append(key)
            continue
        elif value.ndim == 4 and len(want) == 5 and tuple(value.shape) == (want[0], want[1], want[3], want[4]):
            new_state[key] = inflate_kernel(value, want[2], method=inflate)
            report.inflated.append(key)
        else:
            raise CheckpointError(
                f"checkpoint {ckpt.path} does not fit {type(model).__name__}: {key} has shape {tuple(value.shape)} "
                f"but the model needs {tuple(want)}; check the model name and its options"
            )
        report.loaded.append(key)
    model.load_state_dict(new_state, strict=False)  # only num_batches_tracked and skipped keys stay as they are
    if report.skipped:
        logger.warning(
            "%s: its classifier is for %d classes, the model has %d: the classifier is left randomly initialised "
            "and must be trained (fine-tuning) before its outputs mean anything",
            ckpt.path.name,
            int(ckpt.state_dict[report.skipped[0]].shape[0]),
            int(target[report.skipped[0]].shape[0]),
        )
    logger.info("%s: %s", ckpt.path.name, report.summary())
    return report


def _check_values(path: Path, key: str, value: torch.Tensor) -> None:
    """Refuses tensors that would load silently wrong: integer or bool weights (all of ours are floating point
    except the ignored ``num_batches_tracked``), NaN or inf."""
    if not value.is_floating_point():
        raise CheckpointError(
            f"checkpoint {path} stores {key} as {str(value.dtype).removeprefix('torch.')}, but the model's weights "
            "are floating point: the file was converted wrongly; use the original checkpoint"
        )
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise CheckpointError(
            f"checkpoint {path} has {bad} NaN or infinite values in {key}: the training that wrote it diverged or "
            "the file is damaged; use an earlier checkpoint"
        )


def inflate_kernel(
    kernel: torch.Tensor, time: int, *, method: str = "average", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Turns a 2D kernel ``W`` ``(O, I, kH, kW)`` into a 3D kernel ``(O, I, time, kH, kW)``.

    * ``"average"`` (I3D-style): ``W / time`` at every tap, so the sum over time is ``W`` and on a clip of
      identical frames the 3D convolution reproduces the 2D one away from the temporal borders.
    * ``"random"`` (the authors' ``init_3d_from_2d_dict(method='random')``): every tap starts from
      ``W / time``; the taps after the first are filled in groups of three ``(u, W / time, -u)``, then a pair
      ``(u, -u)`` or a single ``W / time`` for the rest, with ``u`` uniform in ``±mean|W / time|``; finally the taps
      of every kernel element are shuffled independently. The noise cancels, so the sum over time is
      ``c * W / time`` with ``c`` the number of ``W / time`` taps: ``W / 3`` for the 3-tap kernels of MF-Net
      (one kernel tap and a cancelling pair), ``W / 2`` for 4 taps, ``W`` for 2 taps.
    * ``"average-noise"``: ``"average"`` plus uniform noise of the kernel's mean magnitude that cancels over time,
      so the sum over time stays ``W`` but the frames are not treated alike.

    A temporal size of 1 is a plain reshape. ``generator`` makes the random methods reproducible.
    """
    kernel = kernel.float() if not kernel.is_floating_point() else kernel
    if method not in INFLATE_METHODS:
        raise CheckpointError(f"unknown inflation method {method!r}: use one of {', '.join(INFLATE_METHODS)}")
    tap = kernel / time
    out = tap.unsqueeze(2).repeat(1, 1, time, 1, 1)  # (O, I, kH, kW) -> (O, I, T, kH, kW), W/T at every tap
    if time == 1 or method == "average":
        return out
    if method == "average-noise":
        scale = out.abs().mean()
        noise = (torch.rand(out.shape, generator=generator) * 2 - 1).to(out) * scale
        return out + noise - noise.mean(dim=2, keepdim=True)  # zero-sum noise over time
    scale = tap.abs().mean()
    index = 1
    while index < time:
        if time - index >= 3:  # (u, W/T, -u)
            noise = (torch.rand(tap.shape, generator=generator) * 2 - 1).to(tap) * scale
            out[:, :, index], out[:, :, index + 2] = noise, -noise
            index += 3
        elif time - index == 2:  # (u, -u)
            noise = (torch.rand(tap.shape, generator=generator) * 2 - 1).to(tap) * scale
            out[:, :, index], out[:, :, index + 1] = noise, -noise
            index += 2
        else:  # a last W/T tap
            index += 1
    order = torch.rand(out.shape, generator=generator).argsort(dim=2).to(out.device)  # a permutation per element
    return out.gather(2, order)


def make_meta(
    model_name: str,
    *,
    num_classes: int,
    model_kwargs: Mapping[str, Any] | None = None,
    classes: list[str] | None,
    input_spec: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``"mfnet"`` metadata entry of our checkpoints (``input_spec``: ``mfnet.models.weights.InputSpec``)."""
    meta = {
        "model": model_name,
        "num_classes": int(num_classes),
        "model_kwargs": dict(model_kwargs or {}),
        "classes": list(classes) if classes is not None else None,
    }
    if input_spec:
        meta["input_spec"] = dict(input_spec)
    return meta


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    model_name: str,
    model_kwargs: Mapping[str, Any] | None = None,
    classes: list[str] | None = None,
    extra: Mapping[str, Any] | None = None,
    input_spec: Mapping[str, Any] | None = None,
) -> Path:
    """Writes ``{"state_dict", "mfnet", **extra}`` atomically (a temporary file renamed over ``path``).

    ``input_spec`` (``InputSpec.to_dict()``) records the clips the weights expect, for predict, eval and export.

    A ``.safetensors`` path writes the tensors with the metadata as JSON (``extra`` is not allowed there).
    Every value must be loadable with ``torch.load(weights_only=True)``: tensors and plain Python types.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    num_classes = int(getattr(model, "num_classes", 0))
    meta = make_meta(
        model_name, num_classes=num_classes, model_kwargs=model_kwargs, classes=classes, input_spec=input_spec
    )
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if path.suffix == ".safetensors":
            if extra:
                raise ValueError("a .safetensors checkpoint holds only weights and metadata, not extra state")

            save_file(state, tmp, metadata={"mfnet": json.dumps(meta)})
        else:
            torch.save({"state_dict": state, "mfnet": meta, **dict(extra or {})}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def model_from_checkpoint(
    path: str | os.PathLike[str], *, model_name: str | None = None, **arch_kwargs: Any
) -> tuple[nn.Module, dict[str, Any]]:
    """Builds the model a checkpoint names (or ``model_name``) and loads it; returns ``(model, meta)``.

    ``meta`` is the checkpoint's ``"mfnet"`` entry, or one made up from ``model_name`` and the classifier's size
    for files without it (the authors').
    """

    ckpt = read_checkpoint(path)
    meta = dict(ckpt.meta or {})
    name = model_name or meta.get("model")
    if name is None:
        raise CheckpointError(f"checkpoint {ckpt.path} does not say which model it holds: pass the model name")
    kwargs = {**(meta.get("model_kwargs") or {}), **arch_kwargs}
    num_classes = ckpt.num_classes
    model = build_model(name, num_classes=num_classes, **kwargs)
    load_weights(model, ckpt)
    return model, make_meta(
        name,
        num_classes=num_classes or 0,
        model_kwargs=kwargs,
        classes=meta.get("classes"),
        input_spec=meta.get("input_spec"),
    )
