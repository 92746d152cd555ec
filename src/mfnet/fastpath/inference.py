"""The fast path: the same model, computing the same numbers in less time (inference and training).

Inference (``optimize_for_inference``) works on a copy of the model, in one of these modes:

``"eager"``
    BatchNorms that read one convolution's output are folded into it (``mfnet.fastpath.fold``) and weights and
    activations use the layout the device's convolutions run fastest in (``preferred_memory_format``).
``"fused"`` (the default on CPU)
    ``"eager"``, and then the backend of every multi-fiber unit gets an ``InferencePlan``: BN-ReLU, convolution,
    ReLU and residual sum as oneDNN primitives with weights packed once, and, where the native operators were
    built, the multiplexer and the fiber convolutions on them (``mfnet.fastpath.unit``). In the copy the stem
    ``Conv -> BN -> ReLU``, the tail ``BN -> ReLU`` and the stem's max pool are replaced by their fused forms.
``"compile"``
    ``"eager"`` compiled by ``torch.compile`` (Inductor; on CPU with weight freezing); compiles on the first call
    (``FastpathInfo.compile_s``) and again for new shapes.

Training (``prepare_for_training``) puts the model in channels-last layout and attaches the training backend to
every multi-fiber unit and the stem (fused BN-ReLU, faster convolution gradients, sums inside the convolutions),
in place: no module of the model is replaced.

Neither changes anything outside the model: no environment variables, allocator settings or thread pools
(``mfnet.fastpath.allocator.keep_freed_memory`` is a separate, explicit opt-in).
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from mfnet.fastpath import kernels, native
from mfnet.fastpath.fold import fold_batchnorm
from mfnet.fastpath.fused import FusedBnReLU, FusedConv, bn_or_none, memory_format, to_channels_last
from mfnet.fastpath.max_pool import KernelMaxPool, max_pool_fits
from mfnet.fastpath.onednn import fused_ops_available
from mfnet.fastpath.unit import FiberBackend, InferencePlan, StemBackend, unit_fuses
from mfnet.models.fiber import MultiFiberUnit
from mfnet.models.layers import ConvBnAct

MODES = ("auto", "eager", "fused", "compile")

_BatchNorm = nn.modules.batchnorm._BatchNorm


@dataclass
class FastpathInfo:
    """What ``optimize_for_inference`` did, stored as ``fastpath_info`` on the returned module.

    Attributes:
        mode: The mode that was applied (``"eager"``, ``"fused"`` or ``"compile"``).
        folded: Names of the BatchNorms folded into the convolution before them.
        fused_units: Number of multi-fiber units that run as fused oneDNN primitives.
        kernel_units: How many of those have parts on the native operators (``mfnet.fastpath.kernels``).
        compile_s: Seconds spent compiling on the example input (``"compile"`` mode; else 0).
        memory_format: The layout of the weights; feed inputs in it too (``x.contiguous(memory_format=...)``).
        max_rel_diff: Largest difference of the logits on the example input, relative to the largest plain
            logit (NaN when not checked).
    """

    mode: str
    folded: list[str]
    fused_units: int = 0
    kernel_units: int = 0
    compile_s: float = 0.0
    max_rel_diff: float = float("nan")
    memory_format: torch.memory_format = torch.channels_last_3d


def to_layout(x: torch.Tensor, layout: torch.memory_format) -> torch.Tensor:
    """``x`` in channels-last (``layout`` is a channels-last format) or contiguous NC... layout; same values."""
    return x.contiguous() if layout == torch.contiguous_format else to_channels_last(x)


def preferred_memory_format(model: nn.Module, device: torch.device | str, ndim: int = 5) -> torch.memory_format:
    """The layout in which ``model``'s convolutions run fastest on ``device``, for inputs of ``ndim`` dimensions.

    Channels-last on CPU (oneDNN) and for dense models on CUDA. On CUDA, models with grouped convolutions stay in
    ``torch.contiguous_format`` (NCDHW), where cuDNN runs grouped convolutions faster.
    """
    if torch.device(device).type == "cuda" and any(
        isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 for m in model.modules()
    ):
        return torch.contiguous_format
    return memory_format(ndim)


@torch.no_grad()
def optimize_for_inference(
    model: nn.Module, example_input: torch.Tensor, *, mode: str = "auto", check: bool = False
) -> nn.Module:
    """A copy of ``model`` that computes the same outputs (within 1e-4 relative) faster, for inference only.

    The copy keeps the model's class and interface (``forward``, ``clip_features``, ``forward_features``,
    ``num_classes``, ...) except in ``"compile"`` mode, which returns the compiled module (the original
    attributes stay reachable through it). Gradients are off; the copy is in eval mode and not meant to be
    trained or saved (save the original model). Any model works, including one prepared for training.

    Args:
        model: A classifier (any mode; the original is not changed).
        example_input: A batch like the ones that will be run, ``(N, C, T, H, W)`` (or ``(N, C, H, W)`` for an
            image model), on the device to run on: the copy is moved there. It also picks, for ``"compile"``,
            the traced shape.
        mode: ``"auto"`` (``"fused"`` where oneDNN can run it, else ``"eager"``), ``"eager"``, ``"fused"`` or
            ``"compile"``; see the module docstring.
        check: Run the plain and the optimized model on ``example_input`` and raise if their logits differ
            by more than 1e-4 of the largest logit; the difference is stored in ``fastpath_info``.

    Returns:
        The optimized module, with a ``fastpath_info`` attribute (``FastpathInfo``).

    Raises:
        ValueError: On an unknown mode, ``"fused"`` where oneDNN cannot run, or a failed check.
    """
    if mode not in MODES:
        raise ValueError(f"unknown fast-path mode {mode!r}: use one of {', '.join(MODES)}")
    device = example_input.device
    fusable = fused_ops_available(device) and example_input.dtype == torch.float32
    if mode == "auto":
        mode = "fused" if fusable else "eager"
    if mode == "fused" and not fusable:
        raise ValueError(
            f"the fused fast path needs float32 on a CPU PyTorch with oneDNN, not {example_input.dtype} on "
            f"{device}; use mode='eager'"
        )
    fast = copy.deepcopy(model).eval().to(device)  # the copy runs where the example lives
    for module in fast.modules():
        if isinstance(module, FiberBackend):
            module.plan = None  # rebuilt below from the folded weights
    folded = fold_batchnorm(fast)
    for p in fast.parameters():
        p.requires_grad_(False)
    model_ndim = getattr(model, "input_ndim", example_input.ndim)  # an image model may take clips too
    layout = preferred_memory_format(fast, device, model_ndim)
    fast = fast.to(memory_format=layout)
    info = FastpathInfo(mode=mode, folded=folded, memory_format=layout)
    if mode == "fused":
        info.fused_units = fuse_modules(fast, n_dim=model_ndim - 2)
        kernels.share_kept_buffers(fast)
        info.kernel_units = sum(
            isinstance(m, FiberBackend) and m.plan is not None and m.plan.has_kernels for m in fast.modules()
        )
    elif mode == "compile":
        fast, info.compile_s = _compile(fast, to_layout(example_input, layout))
    if check:
        reference = copy.deepcopy(model).eval().to(device)
        expected = reference(example_input)
        got = fast(example_input)
        info.max_rel_diff = float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-12))
        if not info.max_rel_diff <= 1e-4:
            raise ValueError(f"the {mode} fast path differs from the model by {info.max_rel_diff:.2e} (relative)")
    fast.fastpath_info = info
    return fast


def _compile(model: nn.Module, example_input: torch.Tensor) -> tuple[nn.Module, float]:
    """``torch.compile`` (Inductor, weight freezing on CPU) and the seconds its first call took."""
    import torch._inductor.config as inductor_config

    compiled = torch.compile(model, dynamic=False)
    start = time.perf_counter()
    with _inductor_freezing(inductor_config, example_input.device.type == "cpu"), torch.inference_mode():
        compiled(example_input)
    return compiled, time.perf_counter() - start


@contextlib.contextmanager
def _inductor_freezing(config, enabled: bool) -> Iterator[None]:
    previous = config.freezing
    config.freezing = enabled
    try:
        yield
    finally:
        config.freezing = previous


def fuse_modules(model: nn.Module, *, n_dim: int) -> int:
    """Gives the parts of an (eval, BN-folded) model that have a fused form their inference backend, in place.

    A ``MultiFiberUnit`` that ``unit_fuses``: its ``FiberBackend`` (attached where it has none) gets an
    ``InferencePlan``; the unit stays. Replaced (this runs on ``optimize_for_inference``'s copy): a ``ConvBnAct``
    stem or a plain ``nn.Sequential`` ``Conv -> BN|Identity [-> ReLU]`` (torchvision's conv blocks) ->
    ``FusedConv``; an ``nn.Sequential`` ``BN -> ReLU`` (the tail) -> ``FusedBnReLU``; a ``MaxPool3d`` within frames
    (the stem's) -> ``KernelMaxPool`` where the native operators loaded. Anything else is kept. ``n_dim`` is 3 for
    a video model, 2 for an image model.

    Returns:
        The number of units with an inference plan.
    """
    count = 0
    for name, child in list(model.named_children()):
        replacement: nn.Module | None = None
        if isinstance(child, MultiFiberUnit):
            if unit_fuses(child, n_dim):
                FiberBackend.of(child).plan = InferencePlan(child)
                count += 1
                continue  # its parts are in the plan
        elif isinstance(child, ConvBnAct) or (
            isinstance(child, nn.Sequential) and type(child).forward is nn.Sequential.forward
        ):
            replacement = _fuse_sequential(child, n_dim)
        elif n_dim == 3 and max_pool_fits(child) and native.load():
            replacement = KernelMaxPool(child)
        if replacement is not None:
            setattr(model, name, replacement)
        else:
            count += fuse_modules(child, n_dim=n_dim)
    return count


def _fuse_sequential(seq: nn.Sequential, n_dim: int) -> nn.Module | None:
    layers = list(seq)
    if len(layers) == 3 and _is_conv(layers[0], n_dim) and _is_bn_or_identity(layers[1]) and _is_relu(layers[2]):
        return FusedConv.from_conv(layers[0], post_bn=bn_or_none(layers[1]), relu=True)
    if len(layers) == 2 and _is_conv(layers[0], n_dim) and _is_bn_or_identity(layers[1]):
        return FusedConv.from_conv(layers[0], post_bn=bn_or_none(layers[1]))
    if len(layers) == 2 and isinstance(layers[0], _BatchNorm) and _is_relu(layers[1]):
        return FusedBnReLU(layers[0])
    return None


def _is_conv(module: nn.Module, n_dim: int) -> bool:
    kind = nn.Conv3d if n_dim == 3 else nn.Conv2d
    # subclasses that only change __init__ (torchvision's) are fine
    return isinstance(module, kind) and type(module).forward is kind.forward and module.padding_mode == "zeros"


def _is_relu(module: nn.Module) -> bool:
    return type(module) is nn.ReLU


def _is_bn_or_identity(module: nn.Module) -> bool:
    return type(module) is nn.Identity or (isinstance(module, _BatchNorm) and module.running_var is not None)


# ---------------------------------------------------------------------------------------------------------
# Training


def prepare_for_training(model: nn.Module) -> nn.Module:
    """Makes ``model``'s training steps faster, in place; returns it.

    - every 3D ``MultiFiberUnit`` gets a training backend (``FiberBackend``, ``mfnet.fastpath.unit``) that runs
      each pre-activation ``BN -> ReLU`` as one fused operator, the 3D convolutions with faster CPU gradients
      (the 6- and 12-channel fiber convolutions on the native kernels) and the residual sums inside the
      convolutions (on GPUs and in eval mode the unit runs as built);
    - a ``ConvBnAct`` stem with a 3D convolution gets a ``StemBackend``, whose convolution gets the same faster
      gradients. Any other module, a plain ``nn.Sequential`` of another model included, is left as it is.

    No module is replaced: the units and the stem stay the same objects of the same classes, with their hooks.
    The backends hold no tensors, so the parameters keep their values, shapes and names (optimizers,
    checkpoints and ``state_dict`` keys are unaffected). Idempotent, and it composes with
    ``optimize_for_inference`` in either order.
    """
    ndim = getattr(model, "input_ndim", 5)
    model = model.to(memory_format=memory_format(ndim))
    if ndim == 5:
        _prepare_units(model)
    return model


def _prepare_units(model: nn.Module) -> None:
    """Attaches the training backend to every multi-fiber unit and ``ConvBnAct`` stem with a 3D convolution."""
    for module in list(model.modules()):  # listed first: attaching a backend adds a child
        if isinstance(module, MultiFiberUnit):
            backend = FiberBackend.of(module)
            backend.fast_training = True
            backend.plan = None  # an inference plan holds copies of the weights, which training changes
        elif isinstance(module, ConvBnAct) and type(module.conv) is nn.Conv3d and module.backend is None:
            module.backend = StemBackend()


def autocast_context(device: torch.device | str, *, enabled: bool = True) -> contextlib.AbstractContextManager:
    """Mixed precision for a training or inference step: fp16 autocast on CUDA, nothing elsewhere.

    fp16 rather than bf16: MF-Net's activations are BatchNorm-bounded and fp16 runs at least as fast. Training with
    it needs a ``torch.amp.GradScaler``. On CPU autocast is never used: without native bf16 it is slower than fp32.
    """
    device = torch.device(device)
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()
