"""Every backend of the multi-fiber unit computes what ``MultiFiberUnit`` itself computes, the two entry points
compose in any order (the unit is compared with the model's own unit, not with a restatement of it), and neither
replaces a module of the user's model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import mfnet
from mfnet.fastpath import native, optimize_for_inference, prepare_for_training, to_channels_last
from mfnet.fastpath.fused import FusedConv
from mfnet.fastpath.unit import FUSED, KERNEL, REFERENCE, TRAINING, FiberBackend, InferencePlan, StemBackend
from mfnet.models.fiber import MultiFiberUnit
from mfnet.models.layers import ConvBnAct
from numerics import max_rel_diff, randomize_bn

CL3D = torch.channels_last_3d
TOL = 1e-4

# MultiFiberUnit arguments: the unit shapes of mfnet3d (6, 12 and 24 channels per fiber, first units with temporal
# and spatial strides), a unit without multiplexer, and a 2D unit
UNITS = {
    "conv2-first": dict(in_channels=16, mid_channels=96, out_channels=96, stride=(2, 1, 1), first=True),
    "conv2": dict(in_channels=96, mid_channels=96, out_channels=96),
    "conv3-first": dict(in_channels=96, mid_channels=192, out_channels=192, stride=(1, 2, 2), first=True),
    "conv3": dict(in_channels=192, mid_channels=192, out_channels=192),
    "conv4": dict(in_channels=384, mid_channels=384, out_channels=384),
    "no-multiplexer": dict(in_channels=96, mid_channels=96, out_channels=96, multiplexer=False),
}
# (N, T, H, W): odd widths, widths below and above the kernel's threshold, and 27/28 (same buffer row length)
SIZES = [(1, 4, 6, 28), (2, 3, 5, 27), (1, 4, 7, 13)]


def _unit(name: str, seed: int = 0) -> MultiFiberUnit:
    torch.manual_seed(seed)
    unit = MultiFiberUnit(kernel_m1=3, kernel_m2=(1, 3, 3), fibers=16, **UNITS[name])
    return randomize_bn(unit, seed)


def _inference_unit(unit: MultiFiberUnit, *, use_kernels: bool) -> MultiFiberUnit:
    """A copy of the eval ``unit`` with a backend holding its inference plan."""
    fast = copy.deepcopy(unit).eval()
    FiberBackend.of(fast).plan = InferencePlan(fast, use_kernels=use_kernels)
    return fast


def _selected(unit: MultiFiberUnit, x: torch.Tensor) -> str:
    return unit.backend.select_backend(unit, x)


def _input(name: str, size: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    n, t, h, w = size
    g = torch.Generator().manual_seed(seed)
    return to_channels_last(torch.randn(n, UNITS[name]["in_channels"], t, h, w, generator=g))


@pytest.mark.parametrize("name", list(UNITS))
def test_fused_backend_matches_the_unit(name: str) -> None:
    unit = _unit(name).eval()
    fast = _inference_unit(unit, use_kernels=False)
    with torch.no_grad():
        for size in SIZES:
            x = _input(name, size)
            assert _selected(fast, x) == FUSED
            assert max_rel_diff(fast(x), unit(x)) < TOL


@pytest.mark.kernel
@pytest.mark.parametrize("name", list(UNITS))
@pytest.mark.parametrize("avx512", [False, True], ids=["avx2", "avx512"])
@pytest.mark.parametrize("winograd", [False, True], ids=["direct", "winograd"])
def test_kernel_backend_matches_the_unit(name: str, avx512: bool, winograd: bool) -> None:
    if not native.load():
        pytest.skip("native operators not built here (MFNET_KERNELS=0?)")
    if (avx512 or winograd) and not native.avx512_available():
        pytest.skip("no AVX-512 on this CPU")
    unit = _unit(name).eval()
    try:
        native.set_avx512(avx512)
        native.set_winograd(winograd)
        fast = _inference_unit(unit, use_kernels=True)
        assert fast.backend.plan.has_kernels
        with torch.no_grad():
            for size in [*SIZES, SIZES[0]]:  # back to the first size: the kept buffers are reused
                x = _input(name, size)
                backend = _selected(fast, x)
                assert backend in (KERNEL, FUSED)
                if size[-1] >= 28:
                    assert backend == KERNEL
                assert max_rel_diff(fast(x), unit(x)) < TOL, (size, backend)
    finally:
        native.set_avx512()
        native.set_winograd()


@pytest.mark.parametrize("name", ["conv2-first", "conv2", "conv3", "no-multiplexer"])
@pytest.mark.parametrize("size", [(2, 3, 5, 28), (2, 4, 4, 14), (1, 2, 3, 9)])
def test_training_backend_matches_the_unit_forward_and_backward(name: str, size: tuple[int, ...]) -> None:
    """Outputs, input and parameter gradients and the BN running statistics after one step."""
    unit = _unit(name).train().to(memory_format=CL3D)
    fast = copy.deepcopy(unit)
    fast.backend = FiberBackend(fast_training=True)
    x = _input(name, size)
    got_x, ref_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    assert _selected(fast, got_x) == TRAINING
    got, expected = fast(got_x), unit(ref_x)
    assert max_rel_diff(got, expected) < TOL
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(2))
    got.backward(grad)
    expected.backward(grad)
    assert max_rel_diff(got_x.grad, ref_x.grad) < TOL
    for (key, p_ref), p_fast in zip(unit.named_parameters(), fast.parameters(), strict=True):
        assert max_rel_diff(p_fast.grad, p_ref.grad) < 1e-3, key  # sums over many positions: more rounding
    for (key, b_ref), b_fast in zip(unit.named_buffers(), fast.buffers(), strict=True):
        assert max_rel_diff(b_fast.float(), b_ref.float()) < 1e-5, key


def test_reference_backend_for_what_no_other_runs() -> None:
    unit = _unit("conv2").eval()
    fast = _inference_unit(unit, use_kernels=False)
    x = _input("conv2", SIZES[0])
    assert _selected(fast, x.double()) == REFERENCE
    assert _selected(fast, x.half()) == REFERENCE
    plain = copy.deepcopy(unit)
    plain.backend = FiberBackend()  # no plan, not prepared
    assert _selected(plain, x) == REFERENCE
    plain.train()
    assert _selected(plain, x) == REFERENCE  # training without prepare_for_training
    with torch.no_grad():
        torch.testing.assert_close(fast.double()(x.double()), unit.double()(x.double()))


def _count(model: nn.Module) -> tuple[int, int]:
    units = [m for m in model.modules() if isinstance(m, MultiFiberUnit)]
    return len(units), sum(isinstance(m.backend, FiberBackend) and m.backend.plan is not None for m in units)


@pytest.mark.slow
def test_a_model_trained_in_the_process_then_optimized_fuses_every_unit() -> None:
    """The bug of the class-swapping design: predict after train fused nothing."""
    torch.manual_seed(0)
    model = mfnet.create_model("mfnet3d", num_classes=10)
    prepare_for_training(model)
    assert isinstance(model.conv1.backend, StemBackend)  # the stem's convolution gets the faster gradients
    x = to_channels_last(torch.randn(2, 3, 4, 32, 32))
    nn.functional.cross_entropy(model(x), torch.tensor([1, 2])).backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.01 * p.grad
    model.eval()
    example = torch.randn(1, 3, 4, 64, 64)
    fast = optimize_for_inference(model, example, check=True)
    assert _count(fast) == (16, 16)
    assert fast.fastpath_info.fused_units == 16
    assert isinstance(fast.conv1, FusedConv)  # the stem, prepared for training too, is fused as well


@pytest.mark.slow
def test_prepare_and_optimize_compose_in_any_order_and_number() -> None:
    torch.manual_seed(0)
    small = dict(widths=(96, 192, 96, 96), depths=(2, 1, 1, 1))
    model = mfnet.create_model("mfnet3d", num_classes=5, **small).eval()
    x = torch.randn(1, 3, 4, 64, 64)
    with torch.no_grad():
        expected = model(x)
    keys = list(model.state_dict())
    once = optimize_for_inference(model, x)
    twice = optimize_for_inference(once, x)  # an optimized copy optimized again
    prepared = prepare_for_training(prepare_for_training(copy.deepcopy(model)))  # twice: idempotent
    assert list(prepared.state_dict()) == keys
    prepared_then_optimized = optimize_for_inference(prepared.eval(), x)
    optimized_then_prepared = prepare_for_training(optimize_for_inference(model, x))
    assert _count(prepared_then_optimized) == (5, 5) and _count(twice) == (5, 5)
    assert _count(optimized_then_prepared)[1] == 0  # training drops the inference plans (their weights go stale)
    again = optimize_for_inference(optimized_then_prepared.eval(), x)
    assert _count(again) == (5, 5)
    with torch.no_grad():
        for fast in (once, twice, prepared_then_optimized, again):
            assert max_rel_diff(fast(x), expected) < TOL


def test_prepare_for_training_replaces_no_module_and_keeps_hooks_and_keys() -> None:
    """Issue 17: references the user holds stay valid, hooks keep firing, checkpoints keep their keys."""
    torch.manual_seed(0)
    model = mfnet.create_model("mfnet3d", num_classes=5, widths=(96, 192, 96, 96), depths=(2, 1, 1, 1))
    before = dict(model.named_modules())
    keys = list(model.state_dict())
    unit, stem = model.conv2.B01, model.conv1
    fired: list[str] = []
    unit.register_forward_pre_hook(lambda module, args: fired.append("unit pre"))
    unit.register_forward_hook(lambda module, args, out: fired.append("unit"))
    stem.register_forward_hook(lambda module, args, out: fired.append("stem"))

    prepare_for_training(model)
    backend = unit.backend
    prepare_for_training(model)  # idempotent: the same backend, updated
    assert model.conv2.B01 is unit and type(unit) is MultiFiberUnit and unit.backend is backend
    assert model.conv1 is stem and type(stem) is ConvBnAct and isinstance(stem.backend, StemBackend)
    assert list(stem) == [stem.conv, stem.bn, stem.relu]  # the backend is not one of the stem's layers
    after = dict(model.named_modules())
    assert all(after[name] is module for name, module in before.items())
    assert {type(m) for name, m in after.items() if name not in before} == {FiberBackend}
    assert list(model.state_dict()) == keys

    x = to_channels_last(torch.randn(2, 3, 4, 32, 32))
    assert _selected(unit, x.requires_grad_()) == TRAINING
    nn.functional.cross_entropy(model(x), torch.tensor([1, 2])).backward()
    assert fired == ["stem", "unit pre", "unit"]
    fast = optimize_for_inference(model.eval(), torch.randn(1, 3, 4, 32, 32))
    fired.clear()  # the BN folding's fx trace calls the copy's modules, hooks included
    with torch.no_grad():
        fast(torch.randn(1, 3, 4, 32, 32))
    assert fired == ["unit pre", "unit"]  # the copy's unit carries the hooks (its stem is fused into one FusedConv)
    assert fast.fastpath_info.fused_units == 5 and _count(fast) == (5, 5)
    assert unit.backend is backend and backend.plan is None, "optimize_for_inference must not touch the model"


def test_prepare_for_training_leaves_a_plain_sequential_alone() -> None:
    seq = nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU())
    children = list(seq)
    prepare_for_training(seq)
    assert type(seq) is nn.Sequential and list(seq) == children and not hasattr(seq, "backend")
